"""The ``pairs`` source: any table of (user_id, prompt, chosen, rejected), optionally with a ``split`` column.

There are no base scores, so support rates come from the co-label or the model estimator. Without a ``split``
column, prompts are split into train and test first and validation pairs are drawn per user from train.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..dataset import SPLITS, PreferenceDataset, split_prompts
from ..errors import PafoInputError
from .files import read_table, require_columns

__all__ = ["PAIR_COLUMNS", "dataset_from_pairs", "load_pairs"]

PAIR_COLUMNS = ["user_id", "prompt", "chosen", "rejected"]
NEED_PATH = "--path: the pairs source needs a CSV, JSONL or Parquet file (columns user_id, prompt, chosen, rejected)"
EMPTY_CELL = "{source}: row {row}: {field} is empty; every row needs user_id, prompt, chosen and rejected text"
SAME_TEXT = "{source}: row {row}: chosen equals rejected; a preference needs two different responses"
BAD_SPLIT = "{source}: row {row}: the split is not one of train, val, test"


def _clean(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    frame = frame.copy()
    for column in PAIR_COLUMNS:
        frame[column] = frame[column].fillna("").astype(str)
        blank = np.flatnonzero(frame[column].str.strip().to_numpy() == "")
        if len(blank):
            raise PafoInputError(EMPTY_CELL.format(source=source, row=blank[0] + 1, field=column))
    same = np.flatnonzero((frame["chosen"] == frame["rejected"]).to_numpy())
    if len(same):
        raise PafoInputError(SAME_TEXT.format(source=source, row=same[0] + 1))
    if "split" in frame.columns:
        frame["split"] = frame["split"].fillna("").astype(str).str.strip().str.lower()
        bad = np.flatnonzero(~frame["split"].isin(SPLITS).to_numpy())
        if len(bad):
            raise PafoInputError(BAD_SPLIT.format(source=source, row=bad[0] + 1))
    return frame


def _assign_splits(pairs: pd.DataFrame, test_fraction: float, val_fraction: float, rng) -> np.ndarray:
    prompts = np.unique(pairs["prompt_id"])
    test_prompts = set(prompts[split_prompts(prompts, test_fraction, rng)])
    split = np.where(pairs["prompt_id"].isin(test_prompts), "test", "train").astype(object)
    for _, rows in pairs.index[split == "train"].to_series().groupby(pairs.loc[split == "train", "user"]):
        if len(rows) >= 2:
            n_val = int(min(max(round(len(rows) * val_fraction), 1), len(rows) - 1))
            split[rng.choice(rows.to_numpy(), size=n_val, replace=False)] = "val"
    return split


def load_pairs(path: str | None, *, test_fraction: float, val_fraction: float, seed: int,
               **_: object) -> PreferenceDataset:
    if not path:
        raise PafoInputError(NEED_PATH)
    source = str(path)
    frame = read_table(source)
    require_columns(frame, PAIR_COLUMNS, source)
    return dataset_from_pairs(_clean(frame, source), source, test_fraction=test_fraction, val_fraction=val_fraction,
                              seed=seed)


def dataset_from_pairs(frame: pd.DataFrame, source: str, *, test_fraction: float, val_fraction: float, seed: int,
                       name: str = "pairs") -> PreferenceDataset:
    """A dataset from a checked pairs table (user_id, prompt, chosen, rejected, optional split): responses are the
    distinct (prompt, text), users in order of first appearance, and splits by prompt unless the table has them."""
    texts = pd.concat([frame[["prompt", "chosen"]].set_axis(["prompt", "text"], axis=1),
                       frame[["prompt", "rejected"]].set_axis(["prompt", "text"], axis=1)], ignore_index=True)
    responses = texts.drop_duplicates(ignore_index=True)
    responses.insert(0, "prompt_id", pd.factorize(responses["prompt"])[0])
    key = pd.MultiIndex.from_frame(responses[["prompt", "text"]])
    user_codes, user_ids = pd.factorize(frame["user_id"])
    pairs = pd.DataFrame({
        "user": user_codes,
        "prompt_id": responses["prompt_id"].to_numpy()[key.get_indexer(pd.MultiIndex.from_frame(
            frame[["prompt", "chosen"]]))],
        "chosen": key.get_indexer(pd.MultiIndex.from_frame(frame[["prompt", "chosen"]])),
        "rejected": key.get_indexer(pd.MultiIndex.from_frame(frame[["prompt", "rejected"]])),
    })
    rng = np.random.default_rng(seed)
    pairs["split"] = frame["split"].to_numpy() if "split" in frame else _assign_splits(
        pairs, test_fraction, val_fraction, rng)
    users = pd.DataFrame({"user_id": list(map(str, user_ids)), "dominant": None})
    return PreferenceDataset(name=name, responses=responses, pairs=pairs, users=users,
                             meta={"source": source, "split_column": "split" in frame})
