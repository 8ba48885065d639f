"""The DSP source (Cheng et al. 2023): one query, four domain-styled responses plus the original ("normal").

Base scores are one-hot domain indicators (normal: all zero), so a persona prefers the response of the domain it
weighs more; pairs use two different domains unless ``include_normal``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..dataset import PreferenceDataset
from ..errors import PafoInputError
from ..paths import pafo_home
from ..simulate import simulate_population
from .files import INVALID_JSON, OFFLINE, TABLE_SUFFIXES, check_text_file, ensure_online, is_remote, read_json_records

__all__ = ["DOMAINS", "DSP_SHARES", "dsp_records", "load_dsp"]

DOMAINS = ("academy", "business", "entertainment", "literature")
DSP_SHARES = {"academy": 0.55, "business": 0.25, "entertainment": 0.12, "literature": 0.08}
NEED_PATH = "--path: the dsp source needs the DSP JSON file (e.g. ../shared/data/dsp_test_part_a.json) or its URL"
NOT_JSON = ("{path}: the dsp source reads the DSP JSON file, not a {suffix} table; give the DSP .json file, or use "
            "--dataset pairs for a table of (user_id, prompt, chosen, rejected)")
BAD_ITEM = (
    "{path}: item {row} has no {field}; each item must be "
    '{{"query": str, "responses": {{"academy", "business", "entertainment", "literature", "normal"}}}}'
)


def _load_with_datasets(source: str) -> list[dict]:
    import datasets

    datasets.disable_progress_bars()
    # datasets logs its own parse errors on stderr; ours (one line, with the fix) replaces them.
    datasets.utils.logging.get_logger().setLevel(logging.CRITICAL)
    try:
        table = datasets.load_dataset("json", data_files=source, split="train",
                                      cache_dir=str(pafo_home() / "datasets"))
    except Exception as exc:  # datasets wraps parse and connection errors in several types
        if is_remote(source):
            raise PafoInputError(OFFLINE.format(source=source, reason=type(exc).__name__)) from None
        read_json_records(Path(source))  # raises the precise message for a broken local file
        # The parser's own text can quote the file: name its kind only (pafo.sources.files: parse errors echo
        # nothing of a file's contents).
        raise PafoInputError(INVALID_JSON.format(path=source, line=1, column=1, reason=type(exc).__name__)) from None
    return table.to_list()


def dsp_records(source: str) -> list[dict]:
    """The DSP items of a local file or URL, validated (query and the four domain responses non-empty).

    The original answer ("normal") may be missing or empty (item 60 of the test split is); it is then dropped.
    """
    if is_remote(source):
        ensure_online(source)
    else:
        suffix = Path(source).suffix.lower()
        if suffix in TABLE_SUFFIXES and suffix not in (".json", ".jsonl"):
            raise PafoInputError(NOT_JSON.format(path=source, suffix=suffix))
        # A regular UTF-8 (JSON) file, or the message that says what it is not, before datasets tries to parse it.
        (check_text_file if suffix == ".jsonl" else read_json_records)(Path(source))
    records = _load_with_datasets(source)
    for row, item in enumerate(records):
        if not str(item.get("query") or "").strip():
            raise PafoInputError(BAD_ITEM.format(path=source, row=row, field='"query"'))
        responses = item.get("responses") or {}
        for domain in DOMAINS:
            if not str(responses.get(domain) or "").strip():
                raise PafoInputError(BAD_ITEM.format(path=source, row=row, field=f'responses["{domain}"]'))
    return records


def load_dsp(path: str | None, *, include_normal: bool, seed: int, **simulation) -> PreferenceDataset:
    """DSP responses with users simulated over its four domains (``simulation``: DataConfig's simulation fields,
    see :func:`pafo.simulate.simulate_population`)."""
    if not path:
        raise PafoInputError(NEED_PATH)
    records = dsp_records(str(path))
    domains = (*DOMAINS, "normal")
    responses = pd.DataFrame(
        [(i, item["query"], item["responses"].get(d) or "", d) for i, item in enumerate(records) for d in domains],
        columns=["prompt_id", "prompt", "text", "domain"],
    )
    responses = responses[responses["text"].str.strip() != ""].reset_index(drop=True)
    scores = np.zeros((len(responses), len(DOMAINS)))
    for k, domain in enumerate(DOMAINS):
        scores[responses["domain"].to_numpy() == domain, k] = 1.0
    eligible = np.ones(len(responses), dtype=bool) if include_normal else responses["domain"].to_numpy() != "normal"
    p, weights, pairs, user_table = simulate_population(
        responses["prompt_id"].to_numpy(), scores, list(DOMAINS), DSP_SHARES, np.random.default_rng(seed),
        eligible=eligible, name=str(path), **simulation)
    return PreferenceDataset(
        name="dsp", responses=responses, pairs=pairs, users=user_table, base_scores=scores,
        persona_weights=weights, judges=list(DOMAINS),
        meta={"shares": dict(zip(DOMAINS, p.round(6).tolist(), strict=True)), "alpha": simulation["alpha"],
              "source": str(path)},
    )
