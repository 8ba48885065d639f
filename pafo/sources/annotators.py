"""What the real per-annotator sources share: binarised (user, prompt, chosen, rejected) rows plus one table of
attributes per user become a :class:`PreferenceDataset`.

Each loader (:mod:`.prism`, :mod:`.multipref`, :mod:`.helpsteer3`, :mod:`.community_alignment`) only maps its
schema to those two tables. Here: texts are deduplicated per prompt, prompts are split into train and test (by
prompt, as for every source), and annotators who end up without a training or a test pair are left out (their
count is in ``meta["dropped_users"]``): real annotators label few prompts, and a user without test pairs cannot be
evaluated. Their attributes go into ``dataset.users`` (listed in ``meta["user_attributes"]``), each as text, with
``unknown`` where a user has none.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ..attributes import MAX_LEVELS, PER_USER_COLUMNS, RESERVED_PREFIXES, cell_text
from ..dataset import PreferenceDataset
from ..errors import PafoInputError
from .files import is_remote, read_table
from .pairs import PAIR_COLUMNS, dataset_from_pairs

__all__ = ["UNKNOWN", "annotator_dataset", "flatten_attributes", "hub_part", "local_folder", "mode_per_user",
           "read_source", "render_messages"]

UNKNOWN = "unknown"
NO_PAIRS = ("{source}: no usable preference in the file ({detail}); check that it is in the {schema} schema "
            "(see the README's Data formats)")
TOO_FEW_USERS = ("{source}: after the train/test split by prompt only {count} annotator(s) have pairs on both sides "
                 "(of {total}); every evaluated user needs training and test pairs: give more data, or raise "
                 "--test-fraction")


def hub_part(path: str | None, default: str) -> tuple[str, str | None]:
    """(hub id, config) of a source's path: its hub id when no path is given, ``ORG/NAME:config`` split."""
    source = str(path or default)
    if "://" in source or not is_remote(source):
        return source, None
    name, _, config = source.partition(":")
    return name, config or None


def read_source(path: str | None, default_hub: str, config: str | None = None) -> pd.DataFrame:
    """A local file, or a config of a hub dataset (``config`` overrides one given in the path)."""
    name, given = hub_part(path, default_hub)
    if is_remote(name) and "://" not in name:
        chosen = config or given
        return read_table(f"{name}:{chosen}" if chosen else name)
    return read_table(name)


def render_messages(value) -> str:
    """A prompt from a chat context: a list of {role, content} turns as "role: content" lines (a single user turn as
    its text alone), or a string as it is."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list):
        turns = [m for m in value if isinstance(m, dict)]
        if len(turns) == 1 and str(turns[0].get("role", "user")) == "user":
            return str(turns[0].get("content") or "")
        return "\n\n".join(f"{m.get('role', 'user')}: {m.get('content') or ''}" for m in turns)
    return "" if value is None else str(value)


def _scalar_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Nested objects flattened one level (``location.reside_country`` → ``location_reside_country``); lists
    dropped."""
    out = {}
    for column in frame.columns:
        values = frame[column].tolist()
        if any(isinstance(v, dict) for v in values):
            keys = list(dict.fromkeys(k for v in values if isinstance(v, dict) for k in v))
            for key in keys:
                out[f"{column}_{key}"] = [v.get(key) if isinstance(v, dict) else None for v in values]
        elif not any(isinstance(v, list | tuple | np.ndarray) for v in values):
            out[str(column)] = values
    return pd.DataFrame(out, index=frame.index)


def flatten_attributes(frame: pd.DataFrame, drop: tuple[str, ...] = ()) -> pd.DataFrame:
    """The columns of a per-user table that can serve as attributes, as text: scalars (objects flattened), leaving
    out ``drop``, reserved names, constant columns and free text (more than ``MAX_LEVELS`` distinct values that are
    not all numbers)."""
    flat = _scalar_columns(frame.drop(columns=[c for c in drop if c in frame]))
    keep = {}
    for column in flat.columns:
        if column in PER_USER_COLUMNS or column.startswith(RESERVED_PREFIXES):
            continue
        values = flat[column].map(cell_text)
        distinct = values.dropna().unique()
        numeric = pd.to_numeric(pd.Series(distinct), errors="coerce").notna().all()
        if len(distinct) > 1 and (len(distinct) <= MAX_LEVELS or numeric):
            keep[column] = values
    return pd.DataFrame(keep, index=frame.index)


def mode_per_user(users: pd.Series, values: pd.Series) -> pd.Series:
    """Each user's most frequent value (ties: the first seen), for attributes recorded per row."""
    out = {}
    for user, part in values.groupby(users.to_numpy(), sort=False):
        counts = Counter(v for v in part.map(cell_text) if v is not None)
        out[user] = counts.most_common(1)[0][0] if counts else None
    return pd.Series(out, dtype=object)


def _keep_evaluable(dataset: PreferenceDataset) -> tuple[PreferenceDataset, int]:
    """The dataset without users lacking a training or a test pair; returns it and how many were dropped."""
    counts = dataset.user_pair_counts()
    keep = counts.index[(counts["n_train"] > 0) & (counts["n_test"] > 0)]
    dropped = dataset.n_users - len(keep)
    if not dropped:
        return dataset, 0
    code = pd.Series(np.arange(len(keep)), index=keep)
    pairs = dataset.pairs[dataset.pairs["user"].isin(keep)].copy()
    pairs["user"] = code.loc[pairs["user"]].to_numpy()
    dataset.pairs = pairs.reset_index(drop=True)
    dataset.users = dataset.users.loc[keep].reset_index(drop=True)
    return dataset, dropped


def annotator_dataset(rows: pd.DataFrame, attributes: pd.DataFrame | None, *, name: str, source: str,
                      schema: str, test_fraction: float, val_fraction: float, seed: int,
                      notes: dict | None = None) -> PreferenceDataset:
    """A dataset from binarised rows (user_id, prompt, chosen, rejected) and per-user ``attributes`` (indexed by
    user_id, one column per attribute; None: none)."""
    rows = rows[PAIR_COLUMNS].astype(str)
    usable = (rows["prompt"].str.strip() != "") & (rows["chosen"].str.strip() != "") & \
             (rows["rejected"].str.strip() != "") & (rows["chosen"] != rows["rejected"])
    rows = rows[usable].reset_index(drop=True)
    if rows.empty:
        raise PafoInputError(NO_PAIRS.format(source=source, schema=schema, detail="every row is a tie, empty, or "
                                             "compares a response with itself"))
    dataset = dataset_from_pairs(rows, source, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed,
                                 name=name)
    total = dataset.n_users
    dataset, dropped = _keep_evaluable(dataset)
    if dataset.n_users < 2:
        raise PafoInputError(TOO_FEW_USERS.format(source=source, count=dataset.n_users, total=total))
    columns: list[str] = []
    if attributes is not None and len(attributes.columns):
        table = attributes.reindex(dataset.users["user_id"].to_numpy())
        for column in attributes.columns:
            name = str(column) if str(column) not in PER_USER_COLUMNS and not str(column).startswith(
                RESERVED_PREFIXES) else f"{column}_attr"  # never shadow a column of the per-user table
            dataset.users[name] = table[column].map(cell_text).fillna(UNKNOWN).to_numpy()
            columns.append(name)
    dataset.meta.pop("split_column", None)  # the split is this loader's own: an audit evaluates its test pairs
    dataset.meta.update({"user_attributes": columns, "dropped_users": dropped, "source": source,
                         "pairs_from_file": len(rows), **(notes or {})})
    return dataset


def local_folder(path: str | None) -> Path | None:
    """``path`` as a local folder, or None (a file, a hub id, nothing)."""
    return Path(path) if path and Path(path).is_dir() else None
