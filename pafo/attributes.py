"""User attributes: who each user is (region, tier, age, an annotator pool...), for slicing results by them.

Attributes come from three places, all read the same way by :mod:`pafo.slices`:

- a file given with ``--user-attributes`` (CSV, JSONL, JSON or Parquet: ``user_id`` plus one column per attribute),
  validated against the loaded dataset: every user has exactly one row, no row names an unknown user, no value is
  empty; each fault is one message naming the file, the row and the fix;
- the dataset itself: the real per-annotator sources (PRISM's survey, MultiPref's evaluator pools, Community
  Alignment's annotator columns) put theirs in ``dataset.users`` and list them in ``dataset.meta["user_attributes"]``;
- built in: ``group`` (majority/minority by support rate), ``decile`` (the support-rate decile of the bias curve,
  :func:`pafo.metrics.support_deciles`) and, for simulated users, ``dominant`` (the judge their persona weighs most).

Values are kept as text (a CSV's ``3`` and a JSON's ``3`` are the same value). A number can be binned when slicing:
``age:quantiles=4`` cuts it into four quantile bins labelled ``Q1 (18–25)``..., each with the smallest and largest
value it holds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import PafoInputError

__all__ = [
    "BUILTIN_ATTRIBUTES",
    "MAX_LEVELS",
    "Dimension",
    "Slicing",
    "attach_attributes",
    "attribute_columns",
    "available_attributes",
    "cell_text",
    "dimension_labels",
    "parse_slicing",
    "read_attributes",
]

#: Attributes every run has, with what they mean (the CLI's help and the app's picker say the same).
BUILTIN_ATTRIBUTES = {"group": "support group (majority/minority)", "decile": "support-rate decile (1 = lowest)",
                      "dominant": "the judge a simulated user's persona weighs most"}
#: Columns of the per-user table an attribute may not be named like (it would be confused with them).
PER_USER_COLUMNS = ("user", "user_id", "seed", "group", "support_rate", "decile", "dominant", "n_train", "n_val",
                    "n_test")
RESERVED_PREFIXES = ("acc_", "margin_")
#: A categorical attribute with more distinct values than this is refused for slicing (a free-text column); bin a
#: number with ``:quantiles=K`` instead.
MAX_LEVELS = 50
MAX_QUANTILES = 20

MSG_ONLY_USER_ID = "{path}: has only a user_id column; add one column per attribute (e.g. region, tier)"
MSG_RESERVED = ("{path}: column {column!r} is a name the per-user table already uses; rename it (e.g. "
                "{column}_attr)")
MSG_DUPLICATE_USER = "{path}: user_id {user!r} is on rows {first} and {second}; keep one row per user"
MSG_EMPTY_VALUE = ("{path}: row {row}: {column} is empty (user {user!r}); fill it in (e.g. 'unknown') or drop the "
                   "column")
MSG_EMPTY_USER = "{path}: row {row}: user_id is empty; every row needs the user it describes"
MSG_NESTED = "{path}: row {row}: {column} holds a {kind}, not one value; give one value per cell"
MSG_UNKNOWN_USERS = ("{path}: {count} row(s) name users the dataset does not have; first: row {row}, user_id {user!r}; "
                     "check that the file belongs to the loaded dataset")
MSG_MISSING_USERS = ("{path}: {count} of the dataset's {total} users have no row; first: {user!r}; add a row for "
                     "every user (a value such as 'unknown' is fine)")
MSG_CLASH = ("{path}: column {column!r} is already an attribute of the {source} data; rename it or drop it from "
             "the file")
MSG_BAD_SPEC = ("--slice-by {text!r}: {detail}; write COL, COL1,COL2 for an intersection, or COL:quantiles=K to bin "
                "a number (e.g. region,age:quantiles=4)")
MSG_UNKNOWN_ATTRIBUTE = ("--slice-by {text!r}: no attribute {column!r}; this data has {available} (add more with "
                         "--user-attributes FILE)")
MSG_NOT_NUMERIC = ("--slice-by {text!r}: {column} has values that are not numbers (e.g. {value!r}), so it cannot be "
                   "cut into quantiles; slice by it as it is")
MSG_TOO_MANY_LEVELS = ("--slice-by {text!r}: {column} has {count} distinct values (more than {limit}): too many "
                       "slices to compare; bin a number with {column}:quantiles=4, or slice by a coarser column")


def cell_text(value) -> str | None:
    """A cell as text; None for an empty one (None, NaN, blank). 3.0 reads as "3", as a CSV would write it."""
    if value is None or value is pd.NA or (isinstance(value, float | np.floating) and math.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def _kind(value) -> str | None:
    """The JSON kind of a nested cell (a list or an object), else None."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple | np.ndarray):
        return "list"
    return None


def _check_columns(frame: pd.DataFrame, path: str) -> list[str]:
    from .sources.files import require_columns

    require_columns(frame, ["user_id"], path)
    columns = [str(c) for c in frame.columns if c != "user_id"]
    if not columns:
        raise PafoInputError(MSG_ONLY_USER_ID.format(path=path))
    for column in columns:
        if column in PER_USER_COLUMNS or column.startswith(RESERVED_PREFIXES):
            raise PafoInputError(MSG_RESERVED.format(path=path, column=column))
    return columns


def _cells(frame: pd.DataFrame, path: str, columns: list[str]) -> pd.DataFrame:
    """Every cell as text, refusing nested values and empty ones (named by row, column and user)."""
    users = [cell_text(v) for v in frame["user_id"]]
    blank = next((i for i, user in enumerate(users) if user is None), None)
    if blank is not None:
        raise PafoInputError(MSG_EMPTY_USER.format(path=path, row=blank + 1))
    out = {"user_id": users}
    for column in columns:
        values = []
        for row, value in enumerate(frame[column].tolist()):
            kind = _kind(value)
            if kind:
                raise PafoInputError(MSG_NESTED.format(path=path, row=row + 1, column=column, kind=kind))
            text = cell_text(value)
            if text is None:
                raise PafoInputError(MSG_EMPTY_VALUE.format(path=path, row=row + 1, column=column, user=users[row]))
            values.append(text)
        out[column] = values
    return pd.DataFrame(out)


def read_attributes(path: str, user_ids) -> pd.DataFrame:
    """The attributes file at ``path`` checked against the dataset's ``user_ids`` (in the dataset's user order):
    one row per dataset user, in that order, indexed like ``dataset.users``; every value as text."""
    from .sources.files import read_table

    path = str(path)
    frame = read_table(path)
    columns = _check_columns(frame, path)
    table = _cells(frame, path, columns)
    seen: dict[str, int] = {}
    for row, user in enumerate(table["user_id"]):
        if user in seen:
            raise PafoInputError(MSG_DUPLICATE_USER.format(path=path, user=user, first=seen[user] + 1,
                                                           second=row + 1))
        seen[user] = row
    ids = [str(u) for u in user_ids]
    known = set(ids)
    unknown = [row for row, user in enumerate(table["user_id"]) if user not in known]
    if unknown:
        raise PafoInputError(MSG_UNKNOWN_USERS.format(path=path, count=len(unknown), row=unknown[0] + 1,
                                                      user=table["user_id"][unknown[0]]))
    missing = [user for user in ids if user not in seen]
    if missing:
        raise PafoInputError(MSG_MISSING_USERS.format(path=path, count=len(missing), total=len(ids),
                                                      user=missing[0]))
    return table.set_index("user_id").loc[ids, columns].reset_index(drop=True)


def attach_attributes(dataset, path: str | None):
    """``dataset`` with the attributes of the file at ``path`` (if any) added to ``dataset.users`` and listed in
    ``dataset.meta["user_attributes"]``, after the source's own; a column both have is refused."""
    if not path:
        return dataset
    table = read_attributes(path, dataset.users["user_id"])
    own = list(dataset.meta.get("user_attributes") or [])
    clash = next((c for c in table.columns if c in own), None)
    if clash is not None:
        raise PafoInputError(MSG_CLASH.format(path=path, column=clash, source=dataset.name))
    table.index = dataset.users.index
    dataset.users = dataset.users.join(table)
    dataset.meta["user_attributes"] = [*own, *table.columns]
    dataset.meta["attributes_file"] = str(path)
    return dataset


def attribute_columns(dataset) -> list[str]:
    """The attribute columns of ``dataset.users`` that go into the per-user table: the source's and the file's,
    and ``dominant`` where personas are simulated."""
    columns = list(dataset.meta.get("user_attributes") or [])
    if "dominant" in dataset.users and dataset.users["dominant"].notna().any():
        columns.append("dominant")
    return columns


def available_attributes(columns) -> list[str]:
    """Every attribute a slicing may name, given the attribute columns at hand: the built-ins first."""
    builtin = [name for name in BUILTIN_ATTRIBUTES if name != "dominant"]
    return [*builtin, *(c for c in columns if c not in builtin)]


# ------------------------------------------------------------------------------------------- slicings


@dataclass(frozen=True)
class Dimension:
    """One attribute of a slicing, optionally binned into ``quantiles`` quantile bins."""

    column: str
    quantiles: int | None = None

    @property
    def spec(self) -> str:
        return self.column + (f":quantiles={self.quantiles}" if self.quantiles else "")


@dataclass(frozen=True)
class Slicing:
    """A way to cut users into slices: one attribute, or the intersection of several (``region,tier``)."""

    dimensions: tuple[Dimension, ...]
    text: str

    @property
    def columns(self) -> list[str]:
        return [d.column for d in self.dimensions]

    @property
    def spec(self) -> str:
        return ",".join(d.spec for d in self.dimensions)

    @property
    def title(self) -> str:
        return " × ".join(d.column for d in self.dimensions)


_NAME = re.compile(r"^[^\s,:=][^,:=]*$")


def parse_slicing(text: str) -> Slicing:
    """``region``, ``region,tier`` or ``age:quantiles=4,region`` as a :class:`Slicing` (syntax only: whether the
    columns exist is checked against the data by :func:`pafo.slices.check_slicings`)."""
    text = str(text).strip()
    if not text:
        raise PafoInputError(MSG_BAD_SPEC.format(text=text, detail="it is empty"))
    dimensions = []
    for part in (p.strip() for p in text.split(",")):
        column, _, options = part.partition(":")
        column = column.strip()
        if not column or not _NAME.match(column):
            raise PafoInputError(MSG_BAD_SPEC.format(text=text, detail=f"{part!r} is not a column name"))
        quantiles = None
        if options:
            key, _, value = options.partition("=")
            if key.strip() != "quantiles" or not value.strip().isdigit():
                raise PafoInputError(MSG_BAD_SPEC.format(text=text, detail=f"unknown option {options!r} (only "
                                                                           "quantiles=K)"))
            quantiles = int(value)
            if not 2 <= quantiles <= MAX_QUANTILES:
                raise PafoInputError(MSG_BAD_SPEC.format(text=text, detail=f"quantiles must be 2 to {MAX_QUANTILES}"))
        if column in (d.column for d in dimensions):
            raise PafoInputError(MSG_BAD_SPEC.format(text=text, detail=f"{column} is named twice"))
        dimensions.append(Dimension(column, quantiles))
    return Slicing(tuple(dimensions), text)


def _quantile_labels(values: pd.Series, dimension: Dimension, text: str) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & numbers.isna()
    if bad.any():
        raise PafoInputError(MSG_NOT_NUMERIC.format(text=text, column=dimension.column, value=values[bad].iloc[0]))
    labels = pd.Series(pd.NA, index=values.index, dtype=object)
    finite = numbers.notna()
    if not finite.any():
        return labels
    codes = pd.qcut(numbers[finite], dimension.quantiles, labels=False, duplicates="drop") if \
        numbers[finite].nunique() > 1 else pd.Series(0, index=numbers[finite].index)
    for code in sorted(pd.unique(codes)):
        members = numbers[finite][codes == code]
        labels.loc[members.index] = f"Q{int(code) + 1} ({members.min():g}–{members.max():g})"
    return labels


def dimension_labels(values: pd.Series, dimension: Dimension, text: str) -> pd.Series:
    """Each user's slice label on one dimension: its value as text, or its quantile bin; NA where unknown."""
    if dimension.quantiles:
        return _quantile_labels(values, dimension, text)
    labels = values.map(lambda v: v if isinstance(v, int | np.integer) else cell_text(v)).astype(object)
    count = labels.dropna().nunique()
    if count > MAX_LEVELS:
        raise PafoInputError(MSG_TOO_MANY_LEVELS.format(text=text, column=dimension.column, count=count,
                                                        limit=MAX_LEVELS))
    return labels
