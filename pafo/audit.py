"""Audit any reward model from its predictions: ``pafo audit`` and the app's audit runs.

An audit measures personalized reward bias in models trained elsewhere. Each *source* is one model's margins
r(chosen) − r(rejected) on the dataset's pairs, from

- a predictions file (CSV, JSONL, JSON or Parquet) with ``user_id, prompt, chosen, rejected`` and either ``margin``
  or ``score_chosen, score_rejected``; an optional ``pair_id`` (the pair's row in the dataset: the row number,
  from 0, of a pairs file, or the ``pair`` column of a run's test_margins.csv) joins on instead of the texts;
- the ``--out-dir`` of ``pafo experiment`` (its test_margins.csv; NAME is then one of the run's methods);
- a local transformers sequence-classification reward model (:mod:`pafo.hf_reward`), whose margin is the same for
  every user.

Support rates, groups, per-user accuracies and every metric come from the code ``pafo experiment`` uses
(:func:`pafo.support.estimate_support`, :class:`pafo.support.GroupConfig`, :func:`pafo.metrics.evaluate`,
:func:`pafo.compare.paired_comparison`), so an audit of a run's own margins reproduces that run's figures. The
evaluated split is the test split, or every pair when a pairs file has no ``split`` column; every evaluated pair
must have exactly one prediction per model unless ``allow_missing`` is set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from .attributes import attribute_columns
from .config import dataclass_from_dict, option, validate_options
from .errors import PafoInputError, RunCancelled
from .jsonio import loads
from .method_configs import MAX_BOOTSTRAP, RunSettings
from .paths import atomic_write_text
from .registry import AUDIT_TARGET
from .slices import SliceSettings, check_slicings, compute_slices, slicing_block
from .sources import DataConfig, dataset_fingerprint, load_dataset
from .sources.files import read_table, require_columns
from .sources.pairs import PAIR_COLUMNS
from .support import GroupConfig, estimate_support, resolve_estimator

__all__ = [
    "AUDIT_TARGET",
    "SOURCE_KINDS",
    "AuditConfig",
    "AuditSettings",
    "Source",
    "audit_config_from_args",
    "check_sources",
    "evaluated_pairs",
    "headline",
    "log_loss",
    "match_predictions",
    "pairs_template",
    "parse_source",
    "predictions_from_run",
    "run_audit",
    "source_name",
    "verdict_line",
    "write_table",
]

SOURCE_KINDS = ("predictions", "model")
MARGIN, SCORES = "margin", ("score_chosen", "score_rejected")
TEXT_COLUMNS = ("prompt", "chosen", "rejected")
RUN_MARGINS = "test_margins.csv"
RUN_RESULT = "result.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
_DEFAULTS = RunSettings()

MSG_BAD_SOURCE = "--{kind}: expected NAME=PATH (e.g. mine=preds.csv), got {text!r}"
MSG_BAD_NAME = ("--{kind} {name}=…: a model name is 1-40 letters, digits, '_', '.' or '-' (starting with a letter "
                "or digit), so it can head a CSV column")
MSG_NO_SOURCES = "audit: give at least one --predictions NAME=FILE or --model NAME=FOLDER"
MSG_DUPLICATE_NAME = "audit: the model name {name!r} is given twice; give each --predictions/--model its own name"
MSG_BAD_REFERENCE = "--reference: {name!r} is not one of the audited models ({names})"
MSG_UNKNOWN_KIND = "audit config: source kind {kind!r} is not one of " + ", ".join(SOURCE_KINDS)
MSG_UNKNOWN_SECTION = "audit config: unknown section {key!r}; known: {known}"
MSG_NO_MARGIN = ("{path}: needs a 'margin' column, or both 'score_chosen' and 'score_rejected' (it has {count} "
                 "column(s)); "
                 "margin is the model's r(chosen) − r(rejected) for the row's user")
MSG_BOTH_MARGINS = ("{path}: has both 'margin' and 'score_chosen'/'score_rejected'; keep one of them so the margin "
                    "is unambiguous")
MSG_NOT_FINITE = ("{path}: {count} row(s) have a {field} that is not a finite number; first: row {row}; "
                  "every margin or score must be a number")
MSG_EMPTY_CELL = "{path}: row {row}: {field} is empty; every row needs {required}"
MSG_UNKNOWN_USER = ("{path}: {count} row(s) name users the dataset does not have; first: row {row}, user_id {user!r}; "
                    "check that the file belongs to the loaded dataset")
MSG_BAD_PAIR_ID = ("{path}: {count} row(s) have a pair_id that is not a pair of the dataset (ids are 0 to {last}); "
                   "first: row {row}")
MSG_PAIR_USER = "{path}: row {row}: pair_id {pair} is a pair of user {owner!r}, not of {user!r}"
MSG_PAIR_TEXT = "{path}: row {row}: pair_id {pair} has a different {field} in the dataset; check the pair ids"
MSG_UNKNOWN_PAIR = ("{path}: {count} row(s) match no pair of the dataset (same user_id, prompt, chosen and "
                    "rejected); first: row {row} (user {user!r}, prompt {prompt!r}); check the texts or add pair_id")
MSG_AMBIGUOUS = ("{path}: row {row} matches {count} pairs of the dataset with the same user and texts (pairs "
                 "{pairs}); add a pair_id column to say which")
MSG_EXTRA = ("{path}: {count} row(s) are {splits} pairs, not pairs of the evaluated {split} split; first: row {row} "
             "(pair {pair}); drop them, or evaluate all pairs with --split all")
MSG_DUPLICATE = ("{path}: {count} pair(s) have more than one prediction; first: pair {pair} (user {user!r}) at rows "
                 "{rows}; keep one row per pair and user")
MSG_MISSING = ("{path}: {count} of {total} {split} pairs have no prediction; first: pair {pair} (user {user!r}, "
               "prompt {prompt!r}); add them, or pass --allow-missing to audit the pairs that have one")
MSG_NOTHING_COVERED = "{path}: no row is a pair of the evaluated {split} split; check that it is the loaded dataset"
MSG_NOT_A_RUN = ("{path}: is a folder without {result}; give a predictions file, or the --out-dir of "
                 "`pafo experiment`")
MSG_RUN_METHOD = ("{path}: the run has no margins of method {method!r} (it has: {found}); name the source after one "
                  "of the run's methods, e.g. --predictions baseline={path}")
MSG_RUN_OTHER_DATA = ("{path}: the run was trained on other data than the loaded dataset; pass the run's data flags "
                      "(its result.json config.data)")
MSG_RUN_DAMAGED = "{path}: the run's files are damaged ({detail}); rerun the experiment"
MSG_RUN_UNTRUSTED = "{path}: the run folder cannot be audited: {detail}; rerun the experiment on this data"
MSG_NO_SPLIT = "--split test: the dataset has no test pairs"


@dataclass
class AuditSettings:
    """How an audit matches predictions, scores local models and reports uncertainty."""

    reference: str | None = option(None, "the model every other model is compared with (default: the first)")
    split: Literal["auto", "test", "all"] = option(
        "auto", "pairs to evaluate: auto = test pairs, or every pair when a pairs file has no split column")
    allow_missing: bool = option(False, "audit only the pairs a model has predictions for and report coverage per "
                                        "group, instead of failing on missing pairs")
    bootstrap: int = option(_DEFAULTS.bootstrap, "bootstrap resamples (over users) for confidence intervals", ge=10,
                            le=MAX_BOOTSTRAP)
    encoder: str = option(_DEFAULTS.encoder, "text encoder of the model support estimator (pairs without co-labels "
                                             "or personas); use the training run's to get its groups")
    device: Literal["auto", "cpu", "cuda"] = option("cpu", "where --model reward models and the model support "
                                                           "estimator's encoder run (auto: CUDA when available)")
    precision: Literal["auto", "fp32", "bf16"] = option("auto", "--model: bf16 only where the device computes it "
                                                                "natively (auto), or always fp32/bf16")
    batch_size: int = option(16, "--model: (prompt, response) texts per forward pass", ge=1, le=4096)
    max_length: int | None = option(None, "--model: truncate texts to this many tokens (default: the model's limit)",
                                    ge=8, le=1_000_000)

    def validate(self) -> AuditSettings:
        return validate_options(self)


@dataclass
class Source:
    """One audited model: its name, where its margins come from and the path of that file or folder."""

    name: str
    kind: Literal["predictions", "model"]
    path: str

    def validate(self) -> Source:
        if self.kind not in SOURCE_KINDS:
            raise PafoInputError(MSG_UNKNOWN_KIND.format(kind=self.kind))
        if not NAME_PATTERN.match(self.name):
            raise PafoInputError(MSG_BAD_NAME.format(kind=self.kind, name=self.name))
        return self


def source_name(label: str, taken: list[str] | tuple[str, ...] = ()) -> str:
    """A valid model name from a label such as a file stem or folder name (``preds v2`` → ``preds_v2``), unique
    among ``taken``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_.-")[:36] or "model"
    name, n = stem, 2
    while name in taken:
        name, n = f"{stem}_{n}", n + 1
    return name


def parse_source(kind: str, text: str) -> Source:
    """``NAME=PATH`` of a ``--predictions`` or ``--model`` flag (the path is made absolute for background runs)."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise PafoInputError(MSG_BAD_SOURCE.format(kind=kind, text=text))
    local = Path(path.strip()).expanduser()
    return Source(name.strip(), kind, str(local.resolve()) if local.exists() else path.strip()).validate()


@dataclass
class AuditConfig:
    """A whole audit; ``to_dict`` / ``from_dict`` give the JSON the run registry stores, hashes and runs."""

    data: DataConfig = field(default_factory=DataConfig)
    groups: GroupConfig = field(default_factory=GroupConfig)
    audit: AuditSettings = field(default_factory=AuditSettings)
    sources: list[Source] = field(default_factory=list)
    slices: SliceSettings = field(default_factory=SliceSettings)

    def validate(self) -> AuditConfig:
        self.data.validate()
        self.groups.validate()
        self.audit.validate()
        self.slices.validate()
        if not self.sources:
            raise PafoInputError(MSG_NO_SOURCES)
        names = [s.validate().name for s in self.sources]
        for name in names:
            if names.count(name) > 1:
                raise PafoInputError(MSG_DUPLICATE_NAME.format(name=name))
        if self.audit.reference is not None and self.audit.reference not in names:
            raise PafoInputError(MSG_BAD_REFERENCE.format(name=self.audit.reference, names=", ".join(names)))
        return self

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    @property
    def reference(self) -> str:
        return self.audit.reference or self.sources[0].name

    def to_dict(self) -> dict:
        values = {"target": AUDIT_TARGET, **dataclasses.asdict(self)}
        if not values["slices"]["slice_by"]:  # an audit without slicing keeps the dict it had before slices
            del values["slices"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> AuditConfig:
        known = ("data", "groups", "audit", "sources", "slices")
        unknown = [k for k in values if k not in known and k != "target"]
        if unknown:
            raise PafoInputError(MSG_UNKNOWN_SECTION.format(key=unknown[0], known=", ".join(known)))
        return cls(data=dataclass_from_dict(DataConfig, values.get("data") or {}),
                   groups=dataclass_from_dict(GroupConfig, values.get("groups") or {}),
                   audit=dataclass_from_dict(AuditSettings, values.get("audit") or {}),
                   sources=[dataclass_from_dict(Source, s) for s in values.get("sources") or []],
                   slices=dataclass_from_dict(SliceSettings, values.get("slices") or {})).validate()

    def fingerprint(self) -> str:
        """The dataset's fingerprint plus the content of every source (a predictions file, a run folder's or a
        model folder's files; :mod:`pafo.digests`, cached by stat): a file changed in any way is a new audit."""
        from .digests import file_digest, folder_digest

        digest = hashlib.sha256(dataset_fingerprint(self.data).encode())
        for source in self.sources:
            path = Path(source.path)
            try:
                content = folder_digest(path) if path.is_dir() else file_digest(path) if path.is_file() else None
            except OSError as exc:
                content = f"unreadable: {exc.strerror or exc}"  # loading it names the problem
            digest.update(json.dumps([source.name, source.kind, str(path), content]).encode())
        return digest.hexdigest()[:16]


def audit_config_from_args(args, data: DataConfig, groups: GroupConfig) -> AuditConfig:
    """An :class:`AuditConfig` from ``pafo audit``'s flags (data and groups parsed by the CLI's own helpers)."""
    from .config import dataclass_from_namespace

    if data.path and Path(data.path).exists():
        data.path = str(Path(data.path).resolve())
    sources = [parse_source(kind, text) for kind, text in getattr(args, "sources", None) or []]
    return AuditConfig(data=data, groups=groups, audit=dataclass_from_namespace(AuditSettings, args),
                       sources=sources, slices=dataclass_from_namespace(SliceSettings, args)).validate()


# ------------------------------------------------------------------------------------------- pairs and matching


def evaluated_pairs(dataset, split: str = "auto") -> tuple[str, pd.DataFrame]:
    """The split an audit evaluates and its pairs: test, or all pairs of a pairs file without a split column."""
    if split == "auto":
        split = "all" if dataset.meta.get("split_column") is False else "test"
    pairs = dataset.pairs if split == "all" else dataset.split("test")
    if not len(pairs):
        raise PafoInputError(MSG_NO_SPLIT)
    return split, pairs


def pairs_template(dataset, split: str = "auto") -> pd.DataFrame:
    """The evaluated pairs as a predictions file without margins (user_id, prompt, chosen, rejected, pair_id): what
    a model must score, e.g. for the simulated sources, whose pairs exist only once the loader made them."""
    _, pairs = evaluated_pairs(dataset, split)
    return dataset.pair_table().loc[pairs.index, ["user_id", *TEXT_COLUMNS]].assign(pair_id=pairs.index)


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a table atomically in the format its suffix names (.csv, .jsonl, .json or .parquet)."""
    from .paths import atomic_write_bytes
    from .sources.files import TABLE_SUFFIXES, UNKNOWN_FORMAT

    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise PafoInputError(UNKNOWN_FORMAT.format(path=path, suffix=suffix or "(none)"))
    if suffix in (".parquet", ".pq"):
        atomic_write_bytes(path, frame.to_parquet(index=False))
    else:
        text = {".csv": lambda: frame.to_csv(index=False),
                ".jsonl": lambda: frame.to_json(orient="records", lines=True, force_ascii=False),
                ".json": lambda: frame.to_json(orient="records", force_ascii=False)}[suffix]()
        atomic_write_text(path, text)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _short(text: object, limit: int = 60) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _margins_of(frame: pd.DataFrame, path: str) -> np.ndarray:
    """The margin column, or score_chosen − score_rejected, checked to be finite numbers."""
    has_margin, has_scores = MARGIN in frame, all(c in frame for c in SCORES)
    if has_margin and any(c in frame for c in SCORES):
        raise PafoInputError(MSG_BOTH_MARGINS.format(path=path))
    if not has_margin and not has_scores:
        raise PafoInputError(MSG_NO_MARGIN.format(path=path, count=len(frame.columns)))
    values = {}
    for column in (MARGIN,) if has_margin else SCORES:
        numbers = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(numbers)
        if bad.any():
            row = _first(bad)
            raise PafoInputError(MSG_NOT_FINITE.format(path=path, count=int(bad.sum()), field=column, row=row + 1))
        values[column] = numbers
    return values[MARGIN] if has_margin else values[SCORES[0]] - values[SCORES[1]]


def _text_columns(frame: pd.DataFrame, path: str, columns: list[str]) -> pd.DataFrame:
    """The key columns as strings, as the pairs loader reads them; an empty cell is an error naming its row."""
    out = pd.DataFrame(index=frame.index)
    for column in columns:
        values = frame[column].fillna("").astype(str)
        blank = (values.str.strip() == "").to_numpy()
        if blank.any():
            raise PafoInputError(MSG_EMPTY_CELL.format(path=path, row=_first(blank) + 1, field=column,
                                                       required=", ".join(columns)))
        out[column] = values.to_numpy()
    return out


def _pairs_by_id(frame: pd.DataFrame, keys: pd.DataFrame, table: pd.DataFrame, path: str) -> np.ndarray:
    """The pair of each row from its pair_id, checked against the row's user (and its texts, when given)."""
    ids = pd.to_numeric(frame["pair_id"], errors="coerce").to_numpy(dtype=float)
    valid = np.isfinite(ids) & (ids == np.round(ids))
    valid[valid] = np.isin(ids[valid].astype(np.int64), table.index.to_numpy())
    if not valid.all():
        row = _first(~valid)
        raise PafoInputError(MSG_BAD_PAIR_ID.format(path=path, count=int((~valid).sum()), last=int(table.index.max()),
                                                    row=row + 1))
    pairs = ids.astype(np.int64)
    for column in ["user_id", *(c for c in TEXT_COLUMNS if c in keys)]:
        expected = table.loc[pairs, column].to_numpy()
        wrong = expected != keys[column].to_numpy()
        if wrong.any():
            row = _first(wrong)
            if column == "user_id":
                raise PafoInputError(MSG_PAIR_USER.format(path=path, row=row + 1, pair=pairs[row],
                                                          owner=expected[row], user=keys[column].iloc[row]))
            raise PafoInputError(MSG_PAIR_TEXT.format(path=path, row=row + 1, pair=pairs[row], field=column))
    return pairs


def _pairs_by_text(keys: pd.DataFrame, table: pd.DataFrame, path: str) -> np.ndarray:
    """The pair of each row from (user_id, prompt, chosen, rejected); a key shared by two pairs needs pair_id."""
    columns = ["user_id", *TEXT_COLUMNS]
    lookup = table[columns].reset_index(names="pair")
    merged = keys[columns].assign(row=np.arange(len(keys))).merge(lookup, how="left", on=columns)
    counts = merged.groupby("row")["pair"].count().to_numpy()
    if (counts == 0).any():
        row = _first(counts == 0)
        raise PafoInputError(MSG_UNKNOWN_PAIR.format(path=path, count=int((counts == 0).sum()), row=row + 1,
                                                     user=keys["user_id"].iloc[row],
                                                     prompt=_short(keys["prompt"].iloc[row])))
    if (counts > 1).any():
        row = _first(counts > 1)
        found = merged.loc[merged["row"] == row, "pair"].astype(int).tolist()
        raise PafoInputError(MSG_AMBIGUOUS.format(path=path, row=row + 1, count=len(found),
                                                  pairs=", ".join(map(str, found[:5]))))
    return merged["pair"].to_numpy(dtype=np.int64)


def _check_coverage(pairs: np.ndarray, dataset, table: pd.DataFrame, split: str, evaluated: pd.DataFrame,
                    path: str, allow_missing: bool) -> None:
    """Extra (other split), duplicated and missing rows, each an error naming how many and the first one."""
    outside = ~np.isin(pairs, evaluated.index.to_numpy())
    if outside.any():
        row = _first(outside)
        splits = "/".join(sorted(set(dataset.pairs.loc[pairs[outside], "split"])))
        raise PafoInputError(MSG_EXTRA.format(path=path, count=int(outside.sum()), splits=splits, split=split,
                                              row=row + 1, pair=pairs[row]))
    repeated = pd.Series(pairs).duplicated(keep=False).to_numpy()
    if repeated.any():
        pair = pairs[_first(repeated)]
        rows = np.flatnonzero(pairs == pair) + 1
        raise PafoInputError(MSG_DUPLICATE.format(path=path, count=int(pd.Series(pairs[repeated]).nunique()),
                                                  pair=pair, user=table.at[pair, "user_id"],
                                                  rows=", ".join(map(str, rows[:5]))))
    missing = evaluated.index.difference(pd.Index(pairs))
    if len(missing) and not allow_missing:
        pair = missing[0]
        raise PafoInputError(MSG_MISSING.format(path=path, count=len(missing), total=len(evaluated), split=split,
                                                pair=pair, user=table.at[pair, "user_id"],
                                                prompt=_short(table.at[pair, "prompt"])))
    if not len(pairs):
        raise PafoInputError(MSG_NOTHING_COVERED.format(path=path, split=split))


def match_predictions(frame: pd.DataFrame, path: str, dataset, evaluated: pd.DataFrame, split: str, *,
                      allow_missing: bool = False, table: pd.DataFrame | None = None) -> pd.Series:
    """One model's margins indexed by pair (in the evaluated split's order) from a predictions table.

    Checks, in order: columns, finite margins, known users, each row's pair (by pair_id or texts), rows of other
    splits, duplicated pairs and missing pairs; each failure raises :class:`PafoInputError` naming the count and
    the first offending row (rows are numbered from 1, as in the file's data rows).
    """
    table = dataset.pair_table() if table is None else table
    by_id = "pair_id" in frame
    require_columns(frame, ["user_id"] if by_id else PAIR_COLUMNS, path)
    margins = _margins_of(frame, path)
    keys = _text_columns(frame, path, ["user_id", *(c for c in TEXT_COLUMNS if c in frame)])
    unknown = ~keys["user_id"].isin(set(dataset.users["user_id"])).to_numpy()
    if unknown.any():
        row = _first(unknown)
        raise PafoInputError(MSG_UNKNOWN_USER.format(path=path, count=int(unknown.sum()), row=row + 1,
                                                     user=keys["user_id"].iloc[row]))
    pairs = _pairs_by_id(frame, keys, table, path) if by_id else _pairs_by_text(keys, table, path)
    _check_coverage(pairs, dataset, table, split, evaluated, path, allow_missing)
    series = pd.Series(margins, index=pairs)
    return series.reindex(evaluated.index[evaluated.index.isin(pairs)])


# ------------------------------------------------------------------------------------------- run directories


def _verify_run(run_dir: Path) -> None:
    """The run folder is published whole and unchanged (its manifest's checksums of result.json and
    test_margins.csv, every path inside the folder): an edited margins file is never audited."""
    from .manifest import verify_manifest

    problem = verify_manifest(run_dir, required=(RUN_RESULT, RUN_MARGINS))
    if problem is not None:
        raise PafoInputError(MSG_RUN_DAMAGED.format(path=run_dir, detail=problem))


def _run_fingerprint(config: dict) -> str:
    """The dataset fingerprint of a run's config computed now (content of its data file as it is today)."""
    from .experiment import ExperimentConfig

    owner = AuditConfig if config.get("target") == AUDIT_TARGET else ExperimentConfig
    return owner.from_dict(config).fingerprint()


def _check_run_binding(run_dir: Path, result: dict) -> None:
    """The manifest names the config the folder's result states and the data fingerprint that config gives
    today: a run of other data, or of a data file edited since (same path, same options), is refused."""
    from .manifest import ManifestError, check_binding, own_binding

    try:
        wanted = own_binding(run_dir, result)
    except ManifestError as exc:
        raise PafoInputError(MSG_RUN_DAMAGED.format(path=run_dir, detail=exc)) from None
    config = result.get("config")
    try:
        now = _run_fingerprint(config) if isinstance(config, dict) else None
    except PafoInputError as exc:
        now = f"unavailable ({exc})"
    problem = check_binding(run_dir, config_hash=wanted[0] if wanted else "", fingerprint=str(now))
    if problem is not None:
        raise PafoInputError(MSG_RUN_UNTRUSTED.format(path=run_dir, detail=problem))


def _read_run(run_dir: Path) -> tuple[dict, pd.DataFrame]:
    _verify_run(run_dir)
    try:
        result = loads((run_dir / RUN_RESULT).read_text(encoding="utf-8"))
        margins = pd.read_csv(run_dir / RUN_MARGINS)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PafoInputError(MSG_RUN_DAMAGED.format(path=run_dir, detail=exc)) from None
    if not isinstance(result, dict):
        raise PafoInputError(MSG_RUN_DAMAGED.format(path=run_dir, detail=f"{RUN_RESULT} is not a JSON object"))
    _check_run_binding(run_dir, result)
    if "seed" in margins:  # a multi-seed run: its data options (config.data) are its first seed's
        margins = margins[margins["seed"] == ((result.get("config") or {}).get("data") or {}).get("seed", 0)]
    return result, margins


def _same_data(result: dict, data: DataConfig | None, dataset) -> bool:
    """Whether a run's dataset is the loaded one: same options, or (paths moved) the same content."""
    from .appstate import known_fields

    run_data = known_fields(DataConfig, (result.get("config") or {}).get("data"))
    if data is not None and run_data == dataclasses.asdict(data):
        return True
    try:
        return load_dataset(DataConfig(**run_data)).fingerprint() == dataset.fingerprint()
    except (PafoInputError, TypeError):
        return False


def predictions_from_run(run_dir: str | Path, method: str, dataset, data: DataConfig | None = None) -> pd.DataFrame:
    """A run's test margins of one method as a predictions table (user_id, prompt, chosen, rejected, pair_id,
    margin): what ``pafo audit`` reads from an ``--out-dir`` of ``pafo experiment``, and a file to export."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_RESULT).is_file():
        raise PafoInputError(MSG_NOT_A_RUN.format(path=run_dir, result=RUN_RESULT))
    result, margins = _read_run(run_dir)
    column = f"margin_{method}"
    if column not in margins:
        found = ", ".join(c.removeprefix("margin_") for c in margins.columns if c.startswith("margin_"))
        raise PafoInputError(MSG_RUN_METHOD.format(path=run_dir, method=method, found=found or "none"))
    if not _same_data(result, data, dataset):
        raise PafoInputError(MSG_RUN_OTHER_DATA.format(path=run_dir))
    texts = dataset.responses
    chosen, rejected = margins["chosen"].to_numpy(), margins["rejected"].to_numpy()
    return pd.DataFrame({"user_id": dataset.users["user_id"].to_numpy()[margins["user"].to_numpy()],
                         "prompt": texts["prompt"].to_numpy()[chosen], "chosen": texts["text"].to_numpy()[chosen],
                         "rejected": texts["text"].to_numpy()[rejected], "pair_id": margins["pair"].to_numpy(),
                         "margin": margins[column].to_numpy()})


# ------------------------------------------------------------------------------------------- sources


def _read_source(source: Source, dataset, data: DataConfig | None) -> tuple[pd.DataFrame, dict]:
    """A predictions source as a table, with what the result records about it."""
    path = Path(source.path)
    if path.is_dir():
        frame = predictions_from_run(path, source.name, dataset, data)
        return frame, {"kind": "run", "path": source.path, "method": source.name, "rows": len(frame)}
    frame = read_table(source.path)
    return frame, {"kind": "predictions", "path": source.path, "rows": len(frame)}


def _model_margins(source: Source, dataset, evaluated: pd.DataFrame, settings: AuditSettings, progress,
                   should_stop) -> tuple[pd.Series, dict]:
    """A local reward model's margin on every evaluated pair; each response is scored once."""
    from .hf_reward import score_texts

    started = time.perf_counter()
    needed = np.unique(evaluated[["chosen", "rejected"]].to_numpy())
    responses = dataset.responses.loc[needed]
    scores = score_texts(source.name, source.path, responses["prompt"].tolist(), responses["text"].tolist(),
                         device=settings.device, precision=settings.precision, batch_size=settings.batch_size,
                         max_length=settings.max_length, progress=progress, should_stop=should_stop)
    reward = pd.Series(scores.rewards, index=needed)
    margins = reward.loc[evaluated["chosen"]].to_numpy() - reward.loc[evaluated["rejected"]].to_numpy()
    info = {"kind": "model", "path": source.path, "device": scores.device, "precision": scores.precision,
            "chat_template": scores.chat_template, "max_length": scores.max_length, "n_texts": len(needed),
            "seconds": round(time.perf_counter() - started, 3)}
    return pd.Series(margins, index=evaluated.index), info


def check_sources(config: AuditConfig, dataset) -> None:
    """Read and match every predictions source and check every model folder, without scoring: the app calls it
    before starting an audit, so bad input is an error on the form instead of a failed run."""
    from .hf_reward import check_model_folder

    check_slicings(config.slices, attribute_columns(dataset))
    split, evaluated = evaluated_pairs(dataset, config.audit.split)
    table = dataset.pair_table()
    for source in config.sources:
        if source.kind == "model":
            check_model_folder(source.name, source.path)
            continue
        frame, _ = _read_source(source, dataset, config.data)
        match_predictions(frame, source.path, dataset, evaluated, split, allow_missing=config.audit.allow_missing,
                          table=table)


# ------------------------------------------------------------------------------------------- metrics


def log_loss(calibration: dict) -> dict:
    """The BT log-loss −log σ(margin) overall and per group: the pair-level figures of the experiment's
    ``calibration`` block (:func:`pafo.metrics.calibration`), lifted out because an audit's margins are its data."""
    return {key: (block or {}).get("log_loss") for key, block in calibration.items()}


def _coverage(evaluated: pd.DataFrame, covered: pd.Index, user_group: pd.Series) -> dict:
    """Evaluated pairs and users with a prediction, overall and per group."""
    has = evaluated.index.isin(covered)
    frame = pd.DataFrame({"group": user_group.to_numpy()[evaluated["user"].to_numpy()], "has": has,
                          "user": evaluated["user"].to_numpy()})

    def block(part: pd.DataFrame) -> dict:
        users = part.groupby("user")["has"].any()
        return {"pairs": int(part["has"].sum()), "of_pairs": len(part), "users": int(users.sum()),
                "of_users": len(users)}

    return {**block(frame), **{g: block(frame[frame["group"] == g]) for g in ("majority", "minority")}}


def _model_result(margins: pd.Series, dataset, support, groups, evaluated: pd.DataFrame, user_group: np.ndarray,
                  settings: AuditSettings, seed: int) -> tuple[dict, pd.DataFrame]:
    """The experiment's metric blocks for one model's margins, plus log-loss and coverage."""
    from .experiment import _pair_set, _per_user_table
    from .metrics import calibration, evaluate, pair_correct

    covered = evaluated.loc[margins.index]
    values = margins.to_numpy(dtype=float)
    table = _per_user_table(dataset, support, groups, _pair_set(covered, user_group), values)
    metrics = evaluate(table, n_resamples=settings.bootstrap, seed=seed,
                       micro_accuracy=float(pair_correct(values).mean()))
    metrics["calibration"] = calibration(values, groups.groups.to_numpy()[covered["user"].to_numpy()])
    metrics["log_loss"] = log_loss(metrics["calibration"])
    metrics["coverage"] = _coverage(evaluated, margins.index, groups.groups)
    return metrics, table


# ------------------------------------------------------------------------------------------- the audit


def _support(dataset, config: AuditConfig):
    """Support rates and groups exactly as ``pafo experiment`` computes them (same estimator, encoder, seed)."""
    estimator = resolve_estimator(dataset, config.groups.estimator)
    embeddings = None
    if estimator == "model":  # only this estimator reads features; the others would embed for nothing
        from .device import resolve_device
        from .features import response_features

        device = resolve_device(config.audit.device)
        embeddings = response_features(dataset, config.audit.encoder, device=device).features
    support = estimate_support(dataset, estimator, embeddings=embeddings, seed=config.data.seed)
    return support, config.groups.apply(support.user_support)


def _source_margins(source: Source, dataset, config: AuditConfig, split: str, evaluated: pd.DataFrame,
                    table: pd.DataFrame, progress, should_stop) -> tuple[pd.Series, dict]:
    if source.kind == "model":
        return _model_margins(source, dataset, evaluated, config.audit, progress, should_stop)
    frame, info = _read_source(source, dataset, config.data)
    margins = match_predictions(frame, source.path, dataset, evaluated, split,
                                allow_missing=config.audit.allow_missing, table=table)
    return margins, info


def _paired(name: str, config: AuditConfig, margins: dict[str, pd.Series], dataset, support, groups,
            evaluated: pd.DataFrame, user_group: np.ndarray) -> dict:
    """``name`` against the reference on the pairs BOTH have a margin for (with --allow-missing a model may lack
    pairs, and a model that drops its wrong rows must not look better), with that coverage recorded."""
    from .compare import paired_comparison
    from .experiment import _pair_set, _per_user_table, per_user_frame

    reference = config.reference
    shared = margins[name].index[margins[name].index.isin(margins[reference].index)]
    pairs = _pair_set(evaluated.loc[shared], user_group)
    tables = {m: _per_user_table(dataset, support, groups, pairs, margins[m].loc[shared].to_numpy(dtype=float))
              for m in (reference, name)}
    frame = per_user_frame(dataset, tables).assign(n_test=tables[name]["n_pairs"].to_numpy())
    comparison = paired_comparison([frame], name, reference, n_resamples=config.audit.bootstrap,
                                   seed=config.data.seed)
    comparison["coverage"] = {"pairs": len(shared), "of_pairs": len(evaluated),
                              "users": int((tables[name]["n_pairs"] > 0).sum()),
                              "of_users": int(evaluated["user"].nunique())}
    return comparison


def run_audit(config: AuditConfig | dict, *, out_dir: str | Path | None = None,
              progress: Callable[[float, str, dict | None], None] = lambda *a: None,
              should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Audit every source on one dataset and return the result JSON (also written to ``out_dir``).

    The worker's target contract (see :mod:`pafo.worker`), so the app runs audits in the background like training.
    """
    from .experiment import per_user_frame

    config = AuditConfig.from_dict(config) if isinstance(config, dict) else config.validate()
    started = time.perf_counter()
    progress(0.0, "loading data", None)
    dataset = load_dataset(config.data)
    check_slicings(config.slices, attribute_columns(dataset))
    progress(0.05, "support rates", None)
    support, groups = _support(dataset, config)
    user_group_codes = np.where(groups.groups.to_numpy() == "minority", 1, 0)
    split, evaluated = evaluated_pairs(dataset, config.audit.split)
    table = dataset.pair_table()
    result = {"kind": "audit", "dataset": dataset.summary(), "support": support.summary(),
              "groups": groups.summary(), "split": split, "n_pairs": len(evaluated), "reference": config.reference,
              "config": config.to_dict(), "fingerprint": config.fingerprint(), "methods": {}}
    spans = np.linspace(0.1, 0.95, len(config.sources) + 1)
    tables, all_margins = {}, {}
    for i, source in enumerate(config.sources):
        if should_stop():
            raise RunCancelled()
        lo, hi = spans[i], spans[i + 1]
        progress(lo, f"{source.name}: reading", None)

        def batches(done: int, total: int, lo=lo, hi=hi, name=source.name) -> None:
            progress(lo + (hi - lo) * done / max(total, 1), f"{name}: scoring {done}/{total} texts", None)

        margins, info = _source_margins(source, dataset, config, split, evaluated, table, batches, should_stop)
        metrics, tables[source.name] = _model_result(margins, dataset, support, groups, evaluated, user_group_codes,
                                                     config.audit, config.data.seed)
        result["methods"][source.name] = {**metrics, "source": info}
        all_margins[source.name] = margins
    frame = per_user_frame(dataset, tables)
    # The pairs each user was judged on: all of them when the file has no split (n_test alone undercounted them).
    frame["n_judged"] = evaluated.groupby("user").size().reindex(range(len(frame)), fill_value=0).to_numpy()
    result["comparisons"] = {name: _paired(name, config, all_margins, dataset, support, groups, evaluated,
                                           user_group_codes)
                             for name in config.names if name != config.reference}
    if config.slices.slice_by:
        _add_slices(result, config, frame, evaluated, all_margins)
    result["per_user"] = frame.astype(object).where(frame.notna(), None).to_dict(orient="list")
    result["seconds"] = round(time.perf_counter() - started, 3)
    if out_dir is not None:
        _write_artifacts(Path(out_dir), result, evaluated, all_margins)
    progress(1.0, "done", None)
    return result


def _add_slices(result: dict, config: AuditConfig, frame: pd.DataFrame, evaluated: pd.DataFrame,
                margins: dict[str, pd.Series]) -> None:
    """The ``slices`` of every slicing asked for (pafo.slices), each model against the reference."""
    pairs = evaluated[["user"]].assign(**{f"margin_{name}": values.reindex(evaluated.index).to_numpy()
                                         for name, values in margins.items()})
    result["slices"] = compute_slices(frame, pairs, config.slices.slicings(), config.names, config.reference,
                                      n_resamples=config.audit.bootstrap, seed=config.data.seed)
    result["slicing"] = slicing_block(config.slices, config.reference, result["slices"])


def _write_artifacts(out_dir: Path, result: dict, evaluated: pd.DataFrame, margins: dict[str, pd.Series]) -> None:
    """test_margins.csv (the experiment's layout: one margin column per model, blank where missing),
    per_user.csv and, last, result.json."""
    from .experiment import _json_default, per_user_csv_text

    frame = evaluated[["user", "prompt_id", "chosen", "rejected"]].reset_index(names="pair")
    for name, values in margins.items():
        frame[f"margin_{name}"] = values.reindex(evaluated.index).to_numpy()
    atomic_write_text(out_dir / RUN_MARGINS, frame.to_csv(index=False))
    atomic_write_text(out_dir / "per_user.csv", per_user_csv_text(result))
    atomic_write_text(out_dir / RUN_RESULT, json.dumps(result, indent=2, allow_nan=False, default=_json_default))


def headline(result: dict) -> dict:
    """What ``pafo audit`` prints without --json: accuracy, unfairness and log-loss per model, and verdicts."""
    out = {name: {k: m[k] for k in ("accuracy", "unfairness", "log_loss")} for name, m in result["methods"].items()}
    for name, comparison in result.get("comparisons", {}).items():
        out[name]["verdict_vs_" + result["reference"]] = comparison["verdict"]
        out[name]["verdict_reason"] = comparison.get("verdict_reason")
    return out


def verdict_line(result: dict) -> str:
    """The stderr line after ``pafo audit --json FILE``: each model's verdict against the reference in words (a
    ``noise`` verdict with its reason, a comparison on part of the pairs with its coverage) and the rule used."""
    from .compare import describe_comparison, describe_rule

    comparisons = result.get("comparisons") or {}
    if not comparisons:  # one model: nothing to compare
        return ""
    parts = [f"{name} vs {result['reference']}: {describe_comparison(c, verdict=True)}"
             for name, c in comparisons.items()]
    return "; ".join([*parts, describe_rule(next(iter(comparisons.values()))["rule"])])
