"""The PersonalLLM source (Zollo et al. 2024; hub id namkoong-lab/PersonalLLM).

Each row has ``prompt``, ``response_1..8`` and one score column ``response_{k}_{rm}`` per response and reward
model. Each reward model is z-normalised and becomes a judge; Dirichlet personas over judges label the pairs.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from ..dataset import PreferenceDataset
from ..errors import PafoInputError
from ..simulate import simulate_population, zscore_columns
from .files import read_table, require_columns

__all__ = ["HUB_ID", "load_personalllm", "reward_model_columns"]

HUB_ID = "namkoong-lab/PersonalLLM"
NO_SCORES = (
    "{source}: no reward-model score columns named response_1_<model>; PersonalLLM rows need prompt, "
    "response_1..N and response_<k>_<model> scores"
)
BAD_SCORE = "{source}: row {row}, column {column}: the score is not a finite number; fix or drop the row"


def reward_model_columns(columns: list[str]) -> tuple[int, list[str]]:
    """(number of responses per prompt, reward-model names) found in the PersonalLLM column names."""
    n_responses = 0
    while f"response_{n_responses + 1}" in columns:
        n_responses += 1
    models = [m.group(1) for c in columns if (m := re.fullmatch(r"response_1_(.+)", c))]
    return n_responses, models


def _score(value, source: str, row: int, column: str) -> float:
    """One reward-model score; an inf or NaN (or text) would poison the z-normalisation of its whole column."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise PafoInputError(BAD_SCORE.format(source=source, row=row + 1, column=column))
    return number


def _long_tables(frame: pd.DataFrame, n: int, models: list[str], source: str) -> tuple[pd.DataFrame, np.ndarray]:
    responses, scores = [], []
    # Records keep the column names as they are (itertuples renames names that are not identifiers, e.g. "rm-a").
    for row, values in enumerate(frame.to_dict("records")):
        for k in range(1, n + 1):
            responses.append((row, values["prompt"], values[f"response_{k}"]))
            score_row = []
            for model in models:
                score_row.append(_score(values[f"response_{k}_{model}"], source, row, f"response_{k}_{model}"))
            scores.append(score_row)
    table = pd.DataFrame(responses, columns=["prompt_id", "prompt", "text"])
    table["text"] = table["text"].fillna("").astype(str)
    return table, np.asarray(scores, dtype=np.float64)


def load_personalllm(path: str | None, *, seed: int, **simulation) -> PreferenceDataset:
    """PersonalLLM responses with users simulated over its reward models (``simulation``: DataConfig's simulation
    fields, see :func:`pafo.simulate.simulate_population`)."""
    source = str(path or HUB_ID)
    frame = read_table(source)
    require_columns(frame, ["prompt", "response_1", "response_2"], source)
    n_responses, models = reward_model_columns(list(frame.columns))
    if not models:
        raise PafoInputError(NO_SCORES.format(source=source))
    responses, raw = _long_tables(frame, n_responses, models, source)
    scores = zscore_columns(raw)
    p, weights, pairs, user_table = simulate_population(
        responses["prompt_id"].to_numpy(), scores, models, {m: 1.0 / len(models) for m in models},
        np.random.default_rng(seed), name=source, **simulation)
    return PreferenceDataset(
        name="personalllm", responses=responses, pairs=pairs, users=user_table, base_scores=scores,
        persona_weights=weights, judges=models,
        meta={"shares": dict(zip(models, p.round(6).tolist(), strict=True)), "alpha": simulation["alpha"],
              "source": source},
    )
