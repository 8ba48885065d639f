"""Slices: accuracy and paired comparisons for users cut by any attribute or intersection, Holm-corrected.

Besides the two support groups, a run can report every *slice* of users that shares an attribute value (``region =
EU``) or a combination of values (``region = EU, tier = gold``). Per slice and method:

- ``accuracy``: user-weighted like the groups' (each user's test accuracy counts once): per seed the mean over the
  slice's users, then the mean over seeds; ``ci``: a percentile bootstrap over users, stratified by seed and support
  group (the bootstrap of :mod:`pafo.compare`), pooled across seeds; ``log_loss``: the Bradley–Terry log-loss
  −log σ(margin) over the slice's test pairs (mean over seeds);
- ``comparisons.NAME`` (every method but the reference): ``delta`` (method − reference, paired user by user on the
  same test pairs, pooled like the accuracy), its ``ci``, ``p`` (two-sided, from the same paired bootstrap: t = Δ / SE
  with SE the bootstrap standard error, against Student's t with n − 1 degrees of freedom for n users (less one more
  per extra seed), so p can fall below 1/B as a correction for many slices needs), ``p_holm`` (Holm's step-down
  adjustment over every comparison of every slice and method of the run: the family-wise error rate stays below
  α = 0.05 however many slices are compared) and ``verdict``:

  - ``better``: p_holm < α and Δ > 0;
  - ``worse``: p_holm < α and Δ < −ε (ε the run's Pareto tolerance, 0.5 points by default);
  - ``noise``: anything else, and always for a *small* slice (fewer than :data:`MIN_SLICE_USERS` users or
    :data:`MIN_SLICE_PAIRS` test pairs over the seeds, or too few users on one seed: :mod:`pafo.sample_size`),
    which is marked ``"small": true`` with the ``reason``.

Everything is a fraction (0.005 is half a percentage point), as in :mod:`pafo.compare`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .attributes import (
    MSG_UNKNOWN_ATTRIBUTE,
    Slicing,
    available_attributes,
    dimension_labels,
    parse_slicing,
)
from .config import option, validate_options
from .errors import PafoInputError
from .jsonio import from_fields
from .metrics import support_deciles
from .sample_size import MIN_PAIRS, MIN_SEED_USERS, MIN_USERS, GroupCounts, shortfall

__all__ = [
    "ALPHA",
    "MAX_SLICINGS",
    "MIN_SLICE_PAIRS",
    "MIN_SLICE_USERS",
    "SLICE_VERDICTS",
    "SLICE_VERDICT_WORDS",
    "Slice",
    "SliceDelta",
    "SliceMethod",
    "SliceSettings",
    "bootstrap_p",
    "check_slicings",
    "compute_slices",
    "holm",
    "slicing_block",
    "support_slices",
]

#: Family-wise error rate of the Holm-adjusted verdicts.
ALPHA = 0.05
#: A slice below either size over the seeds (or with too few users on one seed) is *small*: its verdict is
#: ``noise`` whatever its p. The support groups' minimums: one rule, :mod:`pafo.sample_size`.
MIN_SLICE_USERS, MIN_SLICE_PAIRS = MIN_USERS, MIN_PAIRS
MAX_SLICINGS = 20
MAX_SLICES = 500  # slices of one run: more is no longer a comparison anyone can read (and costs bootstrap time)
SLICE_VERDICTS = ("better", "noise", "worse")
SLICE_VERDICT_WORDS = {"better": "better", "noise": "within noise", "worse": "worse"}

MSG_TOO_MANY_SLICINGS = "--slice-by: at most {limit} slicings per run (got {count})"
MSG_DUPLICATE_SLICING = "--slice-by {text!r} is given twice"
MSG_TOO_MANY_SLICES = ("--slice-by: {count} slices in all (more than {limit}); slice by fewer or coarser attributes, "
                       "or bin numbers into fewer quantiles")


@dataclass
class SliceSettings:
    """Slices of users by their attributes, each compared with the reference, Holm-adjusted over all of them."""

    slice_by: list[str] | None = option(  # noqa: RUF009 - option() returns a dataclasses.field (default None)
        None, "report accuracy and paired comparisons per slice of users: an attribute (region), an intersection "
              "(region,tier) or a number binned into quantiles (age:quantiles=4); attributes come from "
              "--user-attributes, the dataset, or are built in (group, decile, dominant)", flag="--slice-by",
        label="slice by")

    def validate(self) -> SliceSettings:
        validate_options(self)
        if isinstance(self.slice_by, str):  # a form or a hand-written config: one slicing per line
            self.slice_by = [line for line in self.slice_by.splitlines() if line.strip()]
        self.slice_by = [str(s).strip() for s in self.slice_by] if self.slice_by else None
        self.slicings()
        return self

    def slicings(self) -> list[Slicing]:
        """The parsed slicings, in the order given."""
        slicings = [parse_slicing(text) for text in self.slice_by or []]
        if len(slicings) > MAX_SLICINGS:
            raise PafoInputError(MSG_TOO_MANY_SLICINGS.format(limit=MAX_SLICINGS, count=len(slicings)))
        specs = [s.spec for s in slicings]
        duplicate = next((s for s in slicings if specs.count(s.spec) > 1), None)
        if duplicate is not None:
            raise PafoInputError(MSG_DUPLICATE_SLICING.format(text=duplicate.text))
        return slicings


def check_slicings(settings: SliceSettings, attribute_columns: Sequence[str]) -> None:
    """Every column the slicings name is an attribute of the data (checked before any training)."""
    available = available_attributes(attribute_columns)
    for slicing in settings.slicings():
        for column in slicing.columns:
            if column not in available:
                raise PafoInputError(MSG_UNKNOWN_ATTRIBUTE.format(text=slicing.text, column=column,
                                                                  available=", ".join(available)))


# ------------------------------------------------------------------------------------------- statistics


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family = the finite values given; None stays None).

    With the m p-values sorted, p_(i) becomes max over j ≤ i of min(1, (m − j + 1)·p_(j)); rejecting where the
    adjusted value is below α controls the family-wise error rate at α under any dependence.
    """
    values = np.array([math.nan if p is None else float(p) for p in pvalues], dtype=float)
    finite = np.flatnonzero(np.isfinite(values))
    out: list[float | None] = [None] * len(values)
    order = finite[np.argsort(values[finite], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * values[index]))
        out[index] = running
    return out


def bootstrap_p(delta: float, samples: np.ndarray, df: float | None = None) -> float | None:
    """Two-sided p of ``delta`` ≠ 0 from its bootstrap ``samples``: t = delta / SE* (SE* their standard deviation)
    against Student's t with ``df`` degrees of freedom (the normal tail when None). A plug-in SE from few users is
    often too small, and the t tail makes up for it. None without a spread to judge (fewer than two finite samples);
    an exactly constant bootstrap gives 0 or 1."""
    from scipy import stats

    finite = samples[np.isfinite(samples)]
    if finite.size < 2 or not math.isfinite(delta):
        return None
    se = float(finite.std(ddof=1))
    if se == 0.0:
        return 1.0 if delta == 0 else 0.0
    tail = stats.norm if df is None else stats.t(max(df, 1))
    return float(2 * tail.sf(abs(delta) / se))


def _resampled_means(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The mean of the finite values of each resample (rows of ``index``); nan where a resample has none."""
    drawn = values[index]
    finite = np.isfinite(drawn)
    count = finite.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(finite, drawn, 0.0).sum(-1) / count, np.nan)


def _ci(samples: list[np.ndarray], confidence: float) -> list[float | None]:
    """Percentile CI of the mean over seeds of per-seed resampled statistics; [None, None] if any is undefined."""
    if not samples:
        return [None, None]
    pooled = np.mean(np.stack(samples), axis=0)
    if not np.isfinite(pooled).all():
        return [None, None]
    tail = (1 - confidence) / 2 * 100
    return [float(np.percentile(pooled, tail)), float(np.percentile(pooled, 100 - tail))]


def _plain(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _small_reason(users: dict, pairs: dict, min_users: int, min_pairs: int) -> str | None:
    """Why a slice is too small to judge, in the words of the groups' rule (:mod:`pafo.sample_size`), or None."""
    return shortfall(GroupCounts.of_seeds(users, pairs), "the slice", min_users=min_users, min_pairs=min_pairs)


@dataclass
class _SeedPart:
    """One seed's users of one slice: their support groups, accuracies per method and test-pair margins."""

    group: np.ndarray
    accuracy: dict[str, np.ndarray]
    margins: dict[str, np.ndarray] | None
    n_pairs: int


@dataclass
class SliceMethod:
    """One method on one slice: user-weighted accuracy, its bootstrap CI and the log-loss of its test pairs."""

    accuracy: float | None
    ci: list
    log_loss: float | None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SliceDelta:
    """One method against the reference on one slice: the paired difference, its CI, p and Holm's p, the verdict
    and, for a small slice, why it gets none."""

    delta: float | None
    ci: list
    p: float | None
    p_holm: float | None = None
    verdict: str = "noise"
    reason: str | None = None

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        if self.reason is None:
            del out["reason"]
        return out


@dataclass
class Slice:
    """One slice of users (``by``: its attribute values) of one slicing, with every method and comparison."""

    by: dict
    slicing: str
    n_users: int
    n_pairs: int
    methods: dict[str, SliceMethod]
    comparisons: dict[str, SliceDelta] = field(default_factory=dict)
    small: bool = False

    def to_json(self) -> dict:
        return {"by": self.by, "slicing": self.slicing, "n_users": self.n_users, "n_pairs": self.n_pairs,
                "methods": {name: m.to_json() for name, m in self.methods.items()},
                "comparisons": {name: c.to_json() for name, c in self.comparisons.items()}, "small": self.small}

    @classmethod
    def from_json(cls, entry: dict) -> Slice:
        read = from_fields(cls, entry, methods=lambda block: _each(SliceMethod, block),
                           comparisons=lambda block: _each(SliceDelta, block))
        read.slicing = read.slicing or ",".join(read.by)  # a slice stored before slicings were named
        return read


def _each(cls, block: dict | None) -> dict:
    return {name: from_fields(cls, value) for name, value in (block or {}).items()}


def _slice_block(parts: dict, methods: list[str], reference: str | None, n_resamples: int, rng, confidence: float,
                 min_users: int, min_pairs: int) -> tuple[dict, dict, bool, dict]:
    """One slice's methods and comparisons (p_holm and verdict are filled in later), whether it is small, plus
    the bootstrap samples of each comparison's delta."""
    from .compare import _stratified_indices  # scipy.stats comes with it: not at the CLI's start

    accuracy_samples = {m: [] for m in methods}
    delta_samples = {m: [] for m in methods if m != reference}
    points = {m: [] for m in methods}
    deltas = {m: [] for m in delta_samples}
    losses = {m: [] for m in methods}
    users = {seed: len(part.group) for seed, part in parts.items()}
    for part in parts.values():
        index = _stratified_indices(part.group, n_resamples, rng)
        for m in methods:
            values = part.accuracy[m]
            if np.isfinite(values).any():
                points[m].append(float(values[np.isfinite(values)].mean()))
                accuracy_samples[m].append(_resampled_means(values, index))
            if part.margins is not None:
                margins = part.margins[m][np.isfinite(part.margins[m])]
                if margins.size:
                    losses[m].append(float(np.mean(np.logaddexp(0.0, -margins))))
        for m in delta_samples:
            difference = part.accuracy[m] - part.accuracy[reference]
            if np.isfinite(difference).any():
                deltas[m].append(float(difference[np.isfinite(difference)].mean()))
                delta_samples[m].append(_resampled_means(difference, index))
    spread = sum(users.values()) >= 2  # one user says nothing about the spread: no interval
    methods_block = {m: SliceMethod(_plain(np.mean(points[m])) if points[m] else None,
                                    _ci(accuracy_samples[m], confidence) if spread else [None, None],
                                    _plain(np.mean(losses[m])) if losses[m] else None) for m in methods}
    reason = _small_reason(users, {seed: part.n_pairs for seed, part in parts.items()}, min_users, min_pairs)
    comparisons, pooled = {}, {}
    for m in delta_samples:
        delta = float(np.mean(deltas[m])) if deltas[m] else math.nan
        samples = np.mean(np.stack(delta_samples[m]), axis=0) if delta_samples[m] else np.array([])
        pooled[m] = samples
        df = sum(users.values()) - len(users)  # n users, less one mean per seed
        comparisons[m] = SliceDelta(_plain(delta), _ci(delta_samples[m], confidence) if spread else [None, None],
                                    bootstrap_p(delta, samples, df) if spread else None, reason=reason or None)
    return methods_block, comparisons, reason is not None, pooled


def _with_seed(table: pd.DataFrame | None) -> pd.DataFrame | None:
    if table is None:
        return None
    return table if "seed" in table else table.assign(seed=0)


def _users_table(users: pd.DataFrame) -> pd.DataFrame:
    """The per-user rows with ``seed``, each row's user position within its seed (``_pos``) and the built-in
    ``decile`` (support deciles are per seed: each seed has its own support rates)."""
    table = _with_seed(users).copy()
    table["_pos"] = table.groupby("seed").cumcount()
    if "decile" not in table and "support_rate" in table:
        table["decile"] = np.nan
        for _, rows in table.groupby("seed").groups.items():
            table.loc[rows, "decile"] = support_deciles(table.loc[rows, "support_rate"].to_numpy(dtype=float))
        table["decile"] = table["decile"].map(lambda v: int(v) if pd.notna(v) else pd.NA).astype(object)
    return table


def _slice_keys(table: pd.DataFrame, slicing: Slicing) -> pd.Series:
    """Each row's slice (a tuple of labels, one per dimension); NA where any label is unknown."""
    labels = [dimension_labels(table[d.column], d, slicing.text) for d in slicing.dimensions]
    known = np.logical_and.reduce([lab.notna().to_numpy() for lab in labels])
    keys = pd.Series([tuple(values) for values in zip(*labels, strict=True)], index=table.index, dtype=object)
    return keys.where(known, None)


def _sort_key(value):
    """Natural order of slice labels: numbers by value, then text."""
    return (0, float(value), "") if isinstance(value, int | float | np.integer) else (1, 0.0, str(value))


def _parts(table: pd.DataFrame, rows: pd.Index, pairs: pd.DataFrame | None, methods: list[str]) -> dict:
    """The per-seed parts of one slice."""
    parts = {}
    for seed, members in table.loc[rows].groupby("seed", sort=True):
        margins, n_pairs = None, int(pd.to_numeric(members.get("n_test", pd.Series(0)), errors="coerce").fillna(0)
                                     .sum())
        if pairs is not None:
            mine = pairs[(pairs["seed"] == seed) & pairs["user"].isin(members["_pos"])]
            margins = {m: mine[f"margin_{m}"].to_numpy(dtype=float) if f"margin_{m}" in mine else np.array([])
                       for m in methods}
            n_pairs = len(mine)
        parts[seed] = _SeedPart(group=members["group"].to_numpy(dtype=str),
                                accuracy={m: members[f"acc_{m}"].to_numpy(dtype=float) for m in methods},
                                margins=margins, n_pairs=n_pairs)
    return parts


def compute_slices(users: pd.DataFrame, pairs: pd.DataFrame | None, slicings: Sequence[Slicing],
                   methods: Sequence[str], reference: str | None, *, n_resamples: int = 1000, seed: int = 0,
                   confidence: float = 0.95, epsilon: float = 0.005, alpha: float = ALPHA,
                   min_users: int = MIN_SLICE_USERS, min_pairs: int = MIN_SLICE_PAIRS) -> list[Slice]:
    """The ``slices`` list of a run (see the module docstring), one entry per slice of every slicing.

    ``users``: the per-user table (one row per user and seed, in each seed's user order) with ``group``,
    ``support_rate``, ``acc_<method>`` for every method and the attribute columns; ``seed`` when several seeds.
    ``pairs`` (optional): the test pairs with ``user`` (the user's position in its seed), ``seed`` and
    ``margin_<method>``; without it, slices have no log-loss and ``n_pairs`` is the sum of the users' ``n_test``.
    ``reference``: the method every other is compared with (None: no comparisons).
    """
    methods = list(methods)
    reference = reference if reference in methods else None
    table, pairs = _users_table(users), _with_seed(pairs)
    rng = np.random.default_rng(seed)
    slices, samples = [], []
    for slicing in slicings:
        keys = _slice_keys(table, slicing)
        present = sorted({k for k in keys.dropna()}, key=lambda key: tuple(_sort_key(v) for v in key))
        if len(slices) + len(present) > MAX_SLICES:
            raise PafoInputError(MSG_TOO_MANY_SLICES.format(count=len(slices) + len(present), limit=MAX_SLICES))
        for key in present:
            rows = keys.index[keys.map(lambda k, key=key: k == key).to_numpy(dtype=bool)]
            parts = _parts(table, rows, pairs, methods)
            by_method, comparisons, small, pooled = _slice_block(parts, methods, reference, n_resamples, rng,
                                                                 confidence, min_users, min_pairs)
            slices.append(Slice(dict(zip(slicing.columns, (_json_value(v) for v in key), strict=True)),
                                slicing.spec, len(rows), sum(p.n_pairs for p in parts.values()), by_method,
                                comparisons, small))
            samples.append(pooled)
    _adjust(slices, alpha, epsilon)
    return slices


def _json_value(value):
    return int(value) if isinstance(value, int | np.integer) else str(value)


def _adjust(slices: list[Slice], alpha: float, epsilon: float) -> None:
    """Holm over every comparison of every slice, then each comparison's verdict."""
    blocks = [block for entry in slices for block in entry.comparisons.values()]
    for block, adjusted in zip(blocks, holm([b.p for b in blocks]), strict=True):
        block.p_holm = adjusted
        block.verdict = _verdict(block, alpha, epsilon)


def _verdict(block: SliceDelta, alpha: float, epsilon: float) -> str:
    if block.reason or block.p_holm is None or block.delta is None or block.p_holm >= alpha:
        return "noise"
    if block.delta > 0:
        return "better"
    return "worse" if block.delta < -epsilon - 1e-12 else "noise"


def slicing_block(settings: SliceSettings, reference: str | None, slices: list[Slice], *,
                  epsilon: float = 0.005) -> dict:
    """The ``slicing`` block that says how a run's ``slices`` were made and judged."""
    tests = sum(len(entry.comparisons) for entry in slices)
    return {"by": [s.spec for s in settings.slicings()], "reference": reference, "alpha": ALPHA,
            "epsilon": epsilon, "min_users": MIN_SLICE_USERS, "min_pairs": MIN_SLICE_PAIRS,
            "min_seed_users": MIN_SEED_USERS,
            "n_slices": len(slices), "n_tests": tests,
            "p_value": "two-sided, paired bootstrap over users: t = delta / bootstrap SE, Student's t with n - 1 df",
            "adjustment": f"Holm over all {tests} comparisons of the run"}


def support_slices(table: pd.DataFrame, slicings: Sequence[Slicing]) -> list[dict]:
    """``pafo support``'s slices: per slice its users, mean support rate and minority share (no models yet)."""
    table = _users_table(table.drop(columns=["decile"], errors="ignore"))
    out = []
    for slicing in slicings:
        keys = _slice_keys(table, slicing)
        for key in sorted({k for k in keys.dropna()}, key=lambda key: tuple(_sort_key(v) for v in key)):
            rows = table[keys.map(lambda k, key=key: k == key).to_numpy(dtype=bool)]
            support = pd.to_numeric(rows["support_rate"], errors="coerce")
            out.append({"by": dict(zip(slicing.columns, (_json_value(v) for v in key), strict=True)),
                        "n_users": len(rows), "support_rate": _plain(support.mean()),
                        "minority_share": _plain(float((rows["group"] == "minority").mean()))})
    return out
