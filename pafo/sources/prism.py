"""The PRISM source (Kirk et al. 2024; hub id HannahRoseKirk/prism-alignment): real users rating several model
replies per turn, with a demographic survey per user.

Schema read (the dataset's own files; see the README's Data formats):

- ``utterances`` (long format, one row per rated reply): ``user_id``, ``conversation_id``, ``turn``,
  ``interaction_id`` (optional), ``user_prompt``, ``model_response``, ``score`` (1–100);
- or ``conversations``: ``user_id``, ``conversation_id`` and ``conversation_history``, a list of turns with
  ``turn``, ``role`` (``user`` or ``model``), ``content`` and, for replies, ``score``;
- ``survey``: one row per ``user_id`` with the demographics (age, gender, education, location, religion...).

Mapping: within one interaction (a user prompt and the replies rated for it: four models on the opening turn, two
replies later), every two replies with different scores make a pair, the higher-rated one chosen; equal scores are
no preference. The prompt is the turn's user message. The survey's scalar columns (objects such as ``location``
flattened to ``location_reside_country`` ...) become the users' attributes; free text is left out.

``--path``: a folder holding ``utterances.jsonl`` or ``conversations.jsonl`` and ``survey.jsonl`` (the hub's file
names; any of .jsonl/.json/.csv/.parquet), one of those files (the survey is looked for beside it), or the hub id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import PafoInputError
from .annotators import annotator_dataset, flatten_attributes, hub_part, local_folder, read_source, render_messages
from .files import TABLE_SUFFIXES, read_table

__all__ = ["HUB_ID", "load_prism", "prism_pairs"]

HUB_ID = "HannahRoseKirk/prism-alignment"
SCHEMA = "PRISM"
RATINGS = ("utterances", "conversations")
SURVEY = "survey"
SURVEY_DROP = ("user_id", "self_description", "system_string", "timestamp", "generated_datetime")
NO_RATINGS = ("{path}: holds no PRISM ratings file; put utterances.jsonl (or conversations.jsonl) and survey.jsonl "
              "in the folder, as on the hub")
NOT_PRISM = ("{path}: is not a PRISM ratings table (it needs user_id with user_prompt, model_response, score, or "
             "user_id with conversation_history; found: {found})")
BAD_SCORE = "{path}: row {row}: score {value!r} is not a number; PRISM scores are 1 to 100"


def _find(folder: Path, stem: str) -> Path | None:
    return next((folder / f"{stem}{suffix}" for suffix in TABLE_SUFFIXES if (folder / f"{stem}{suffix}").is_file()),
                None)


def _scores(values: pd.Series, path: str) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = np.flatnonzero(values.notna().to_numpy() & numbers.isna().to_numpy())
    if len(bad):
        raise PafoInputError(BAD_SCORE.format(path=path, row=bad[0] + 1, value=values.iloc[bad[0]]))
    return numbers.to_numpy(dtype=float)


def _long_from_conversations(frame: pd.DataFrame) -> pd.DataFrame:
    """conversations rows → one row per rated reply (the utterances layout)."""
    rows = []
    for record in frame.to_dict("records"):
        history = record.get("conversation_history")
        history = history.tolist() if isinstance(history, np.ndarray) else history or []
        prompts = {m.get("turn"): render_messages(m.get("content")) for m in history
                   if isinstance(m, dict) and m.get("role") == "user"}
        for message in history:
            if isinstance(message, dict) and message.get("role") != "user":
                rows.append({"user_id": record.get("user_id"), "conversation_id": record.get("conversation_id"),
                             "turn": message.get("turn"), "user_prompt": prompts.get(message.get("turn"), ""),
                             "model_response": message.get("content"), "score": message.get("score")})
    return pd.DataFrame(rows, columns=["user_id", "conversation_id", "turn", "user_prompt", "model_response", "score"])


def prism_pairs(frame: pd.DataFrame, path: str) -> pd.DataFrame:
    """(user_id, prompt, chosen, rejected) from PRISM ratings (utterances or conversations layout)."""
    if "conversation_history" in frame and "model_response" not in frame:
        frame = _long_from_conversations(frame)
    needed = ("user_id", "user_prompt", "model_response", "score")
    if not all(c in frame for c in needed):
        raise PafoInputError(NOT_PRISM.format(path=path, found=", ".join(map(str, frame.columns[:12]))))
    frame = frame.assign(score=_scores(frame["score"], path))
    keys = ["interaction_id"] if "interaction_id" in frame else \
        [c for c in ("user_id", "conversation_id", "turn") if c in frame] or ["user_id", "user_prompt"]
    rows = []
    for _, group in frame.dropna(subset=["score"]).groupby(keys, sort=False, dropna=False):
        replies = group[["model_response", "score"]].to_numpy()
        user, prompt = group["user_id"].iloc[0], group["user_prompt"].iloc[0]
        for i in range(len(replies)):
            for j in range(len(replies)):
                if replies[i][1] > replies[j][1]:
                    rows.append((user, prompt, replies[i][0], replies[j][0]))
    return pd.DataFrame(rows, columns=["user_id", "prompt", "chosen", "rejected"])


def _tables(path: str | None) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """The ratings table, the survey (None if there is none) and the name to report."""
    folder = local_folder(path)
    if folder is not None:
        ratings = next((found for stem in RATINGS if (found := _find(folder, stem))), None)
        if ratings is None:
            raise PafoInputError(NO_RATINGS.format(path=folder))
        survey = _find(folder, SURVEY)
        return read_table(ratings), read_table(survey) if survey else None, str(ratings)
    name, config = hub_part(path, HUB_ID)
    if Path(name).is_file():
        survey = _find(Path(name).parent, SURVEY)
        return read_table(name), read_table(survey) if survey else None, name
    ratings = read_source(name, HUB_ID, config if config in RATINGS else "utterances")
    return ratings, read_source(name, HUB_ID, SURVEY), name


def load_prism(path: str | None, *, test_fraction: float, val_fraction: float, seed: int,
               **_: object) -> object:
    """PRISM ratings as per-user pairs, with the survey's answers as user attributes."""
    ratings, survey, source = _tables(path)
    pairs = prism_pairs(ratings, source)
    attributes = None
    if survey is not None and "user_id" in survey:
        survey = survey.assign(user_id=survey["user_id"].astype(str)).drop_duplicates("user_id").set_index(
            "user_id", drop=False)
        attributes = flatten_attributes(survey, drop=SURVEY_DROP)
    pairs["user_id"] = pairs["user_id"].astype(str)
    return annotator_dataset(pairs, attributes, name="prism", source=source, schema=SCHEMA,
                             test_fraction=test_fraction, val_fraction=val_fraction, seed=seed,
                             notes={"ratings": len(ratings)})
