"""Fairness and accuracy metrics over users (method spec, section 7).

scipy is imported inside the functions that need it: the CLI and the support module import this module for its
tie rule and deciles, and ``scipy.stats`` alone would add ~0.4 s to every ``pafo`` command's start.

Everything here is pure computation on numbers and small tables: no models, no files. The unit of fairness is the
*user*: a user's pairwise accuracy a_u on their test pairs, and group accuracies are means of a_u (each user weighs
equally), because the bias PAFO targets is that some users are served worse than others, however many pairs they
have. The pair-level (micro) accuracy is reported alongside for comparison with the usual reward-model number.

Conventions:
- Accuracies are fractions in [0, 1]; ``epsilon=0.005`` means half a percentage point.
- Undefined quantities are ``nan`` inside this module; :func:`evaluate` turns them into ``None`` so its result is
  strict JSON.
- Bad input raises :class:`pafo.errors.PafoInputError` (a ``ValueError``) with one of the message constants below.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from pafo.errors import PafoInputError

__all__ = [
    "ACCURACY_METRICS",
    "COMPARED_METRICS",
    "GROUPS",
    "LOG_LOSS_METRICS",
    "MAJORITY",
    "MINORITY",
    "MSG_BAD_ACCURACY",
    "MSG_BAD_CONFIDENCE",
    "MSG_BAD_CORRECT",
    "MSG_BAD_EPSILON",
    "MSG_BAD_FRACTION",
    "MSG_BAD_GROUP",
    "MSG_BAD_N_RESAMPLES",
    "MSG_EMPTY",
    "MSG_LENGTH_MISMATCH",
    "MSG_MISSING_COLUMN",
    "MSG_MISSING_KEY",
    "MSG_NEGATIVE",
    "MSG_NOT_FINITE",
    "MSG_NO_USERS",
    "UNFAIRNESS_METRICS",
    "USER_ACCURACY",
    "Group",
    "Metric",
    "Users",
    "accuracy_by_decile",
    "bootstrap_group_ci",
    "calibration",
    "evaluate",
    "gini",
    "gini_rows",
    "group_codes",
    "group_gap",
    "group_labels",
    "group_means",
    "pair_correct",
    "pareto_improvement",
    "per_user_accuracy",
    "resampled_ranks",
    "spearman_of_ranks",
    "spearman_rows",
    "support_deciles",
    "support_spearman",
    "user_accuracy",
    "worst_fraction_mean",
    "worst_fraction_rows",
]



class Group(enum.IntEnum):
    """A user's support group: the code in arrays and tensors (``PairSet.group``), ``label`` in tables and JSON."""

    MAJORITY = 0
    MINORITY = 1

    @property
    def label(self) -> str:
        return self.name.lower()


GROUPS = tuple(group.label for group in Group)
MAJORITY, MINORITY = GROUPS


def group_codes(labels: Any) -> np.ndarray:
    """``Group`` codes (ints) of group labels ("majority"/"minority")."""
    return np.where(np.asarray(labels) == MINORITY, Group.MINORITY, Group.MAJORITY).astype(np.int64)


def group_labels(codes: Any) -> np.ndarray:
    """Group labels of ``Group`` codes."""
    return np.asarray(GROUPS, dtype=object)[np.asarray(codes, dtype=np.int64)]


MSG_MISSING_COLUMN = "{table} table is missing column '{column}'; it needs columns {required}."
MSG_BAD_CORRECT = (
    "pairs column 'correct' must be bool or a number in [0, 1] (0.5 for a margin of exactly 0); found {value!r}."
)
MSG_BAD_ACCURACY = "per_user column 'accuracy' must lie in [0, 1]; found {value!r} for user {user!r}."
MSG_BAD_GROUP = "per_user column 'group' must be 'majority' or 'minority'; found {value!r} for user {user!r}."
MSG_NO_USERS = "per_user table has no user with an accuracy; every user needs at least one test pair."
MSG_EMPTY = "{name} needs at least one value; got none."
MSG_NOT_FINITE = "{name} values must be finite numbers; found {value!r}."
MSG_NEGATIVE = "gini needs non-negative values (accuracies); found {value!r}."
MSG_LENGTH_MISMATCH = "support and accuracy must have the same length; got {n_support} and {n_accuracy}."
MSG_BAD_FRACTION = "fraction must be in (0, 1]; got {fraction!r}."
MSG_BAD_CONFIDENCE = "confidence must be in (0, 1); got {confidence!r}."
MSG_BAD_N_RESAMPLES = "n_resamples must be a positive integer; got {n_resamples!r}."
MSG_BAD_EPSILON = "epsilon must be >= 0 (a fraction: 0.005 is half a point); got {epsilon!r}."
MSG_MISSING_KEY = "{name} result has no '{key}' accuracy; pass its group accuracies (majority and minority)."

#: The per-user table's column of each user's test accuracy (also the mean of a support decile's users).
USER_ACCURACY = "accuracy"
_PAIRS_COLUMNS = ("user", "correct")
_DECILE_COLUMNS = ("support_rate", USER_ACCURACY)
_CI_COLUMNS = ("group", USER_ACCURACY)
_PER_USER_COLUMNS = ("user", "group", "support_rate", "n_pairs", USER_ACCURACY)
# Slack for comparing accuracies that went through float arithmetic (e.g. 0.80 - 0.005 vs 0.795).
_FLOAT_TOL = 1e-12


# --------------------------------------------------------------------------------------------------- helpers


def _require_columns(table: pd.DataFrame, required: Iterable[str], name: str) -> None:
    """Fail early with the missing column's name instead of a KeyError deep inside pandas."""
    required = tuple(required)
    for column in required:
        if column not in table.columns:
            raise PafoInputError(MSG_MISSING_COLUMN.format(table=name, column=column, required=list(required)))


def _as_array(values: Any, name: str) -> np.ndarray:
    """A 1-d float array of finite values; lists, arrays and Series are all accepted."""
    array = np.asarray(values, dtype=float).ravel()
    if array.size == 0:
        raise PafoInputError(MSG_EMPTY.format(name=name))
    bad = array[~np.isfinite(array)]
    if bad.size:
        raise PafoInputError(MSG_NOT_FINITE.format(name=name, value=float(bad[0])))
    return array


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _plain(value: Any) -> Any:
    """Plain Python types for JSON: numpy scalars become int/float, nan becomes None, containers recurse."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _group_values(per_user: pd.DataFrame, group: str) -> np.ndarray:
    """Accuracies of one group's users, leaving out users without an accuracy."""
    values = per_user.loc[per_user["group"] == group, USER_ACCURACY].to_numpy(dtype=float)
    return values[np.isfinite(values)]


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


# --------------------------------------------------------------------------------------------------- per user


def pair_correct(margins: Any) -> np.ndarray:
    """1 for a positive margin, 0.5 for a tie (a coin flip), 0 otherwise: the convention of every accuracy here."""
    margins = np.asarray(margins)
    return (margins > 0) + 0.5 * (margins == 0)


def per_user_accuracy(margins: Any, users: Any) -> pd.Series:
    """Each user's share of correctly ordered pairs (``pair_correct``), indexed by user."""
    return pd.Series(pair_correct(margins)).groupby(np.asarray(users)).mean()


def user_accuracy(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per-user pairwise accuracy from one row per scored test pair.

    ``correct`` is bool, or a number in [0, 1] so a margin of exactly 0 can count as 0.5: a tie is a coin flip,
    and scoring it as wrong (or right) would reward models that collapse to constant rewards. Returns columns
    ``user, n_pairs, accuracy`` sorted by user.
    """
    _require_columns(pairs, _PAIRS_COLUMNS, "pairs")
    correct = pd.to_numeric(pairs["correct"], errors="coerce").astype(float)
    bad = ~correct.between(0.0, 1.0)  # also flags NaN, which between() treats as outside
    if bad.any():
        raise PafoInputError(MSG_BAD_CORRECT.format(value=pairs["correct"][bad].iloc[0]))
    frame = pd.DataFrame({"user": pairs["user"].to_numpy(), "correct": correct.to_numpy()})
    grouped = frame.groupby("user", sort=True)["correct"]
    out = pd.DataFrame({"n_pairs": grouped.size().astype(int), USER_ACCURACY: grouped.mean().astype(float)})
    return out.reset_index()[["user", "n_pairs", USER_ACCURACY]]


# --------------------------------------------------------------------------------------------------- unfairness


# Each computation below works on rows of users, ``(resamples × users)`` arrays: one row for a method's figure
# (evaluate), one row per bootstrap resample for its uncertainty (pafo.compare's paired comparison). The scalar
# functions are the one-row case of the same code.


def gini_rows(accuracy: np.ndarray) -> np.ndarray:
    """Gini coefficient Σ_i Σ_j |a_i − a_j| / (2 n² ā) of each row of user accuracies: 0 when everyone is served
    alike.

    Computed from the sorted values in O(n log n) (Σ_i Σ_j |a_i − a_j| = 2 Σ_i (2i − n − 1) a_(i), i from 1) so it
    stays cheap for many users. An all-zero row is defined as 0 (everyone equal), not 0/0.
    """
    n = accuracy.shape[-1]
    mean = accuracy.mean(-1)
    ranks = np.arange(1, n + 1, dtype=float)
    abs_diff_sum = 2.0 * np.sum((2.0 * ranks - n - 1.0) * np.sort(accuracy, axis=-1), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mean == 0.0, 0.0, np.maximum(abs_diff_sum, 0.0) / (2.0 * n * n * mean))


def gini(values: Any) -> float:
    """:func:`gini_rows` of one list of user accuracies (non-negative, finite)."""
    array = _as_array(values, "gini")
    if (array < 0).any():
        raise PafoInputError(MSG_NEGATIVE.format(value=float(array[array < 0][0])))
    return float(gini_rows(array[None])[0])


def _n_lowest(n: int, fraction: float) -> int:
    """ceil(fraction * n), at least 1, robust to float noise (0.1 * 30 is 3.0000000000000004, not 3)."""
    return max(1, math.ceil(round(fraction * n, 9)))


def worst_fraction_rows(accuracy: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Each row's mean of its lowest ceil(fraction * n) values (at least one): how the worst-served users fare."""
    if not (0.0 < fraction <= 1.0):
        raise PafoInputError(MSG_BAD_FRACTION.format(fraction=fraction))
    return np.sort(accuracy, axis=-1)[..., : _n_lowest(accuracy.shape[-1], fraction)].mean(-1)


def worst_fraction_mean(values: Any, fraction: float = 0.1) -> float:
    """:func:`worst_fraction_rows` of one list of values."""
    return float(worst_fraction_rows(_as_array(values, "worst_fraction_mean")[None], fraction)[0])


def group_gap(acc_majority: float | None, acc_minority: float | None) -> float:
    """Majority minus minority accuracy: positive when the minority is served worse; nan if either is missing."""
    if _is_missing(acc_majority) or _is_missing(acc_minority):
        return math.nan
    return float(acc_majority) - float(acc_minority)


def group_means(accuracy: np.ndarray, group: np.ndarray, name: str) -> np.ndarray:
    """Each row's mean accuracy over the users of group ``name`` (nan where the row has none). Rows with the same
    number of the group's users (one row; the bootstraps, which resample each group among itself) take the mean of
    those users' values, exactly as a plain mean of the group's users."""
    mask = group == name
    counts = mask.sum(-1)
    if counts.size and (counts == counts.flat[0]).all() and counts.flat[0] > 0:
        return accuracy[mask].reshape(*counts.shape, int(counts.flat[0])).mean(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (accuracy * mask).sum(-1) / counts, np.nan)


def spearman_rows(support: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Spearman ρ of every row of two (rows × users) arrays; nan where a row is constant or has fewer than two
    users (the rank correlation is undefined there)."""
    if support.shape[-1] == 0:
        return np.full(support.shape[:-1], np.nan)
    from scipy import stats  # here, not at import: the CLI imports this module as it starts

    return spearman_of_ranks(stats.rankdata(support, axis=-1), stats.rankdata(accuracy, axis=-1))


def spearman_of_ranks(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson's r of every row of two (rows × users) arrays of ranks: Spearman's ρ once the values are ranked."""
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    denominator = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(-1) / denominator, np.nan)


def support_spearman(support: Any, accuracy: Any) -> float:
    """Spearman ρ between users' support rates and accuracies: the personalization bias itself (0 is fair).

    Users with a non-finite support or accuracy are left out; nan when fewer than two users remain or either side
    is constant (:func:`spearman_rows`)."""
    support = np.asarray(support, dtype=float).ravel()
    accuracy = np.asarray(accuracy, dtype=float).ravel()
    if support.size != accuracy.size:
        raise PafoInputError(MSG_LENGTH_MISMATCH.format(n_support=support.size, n_accuracy=accuracy.size))
    keep = np.isfinite(support) & np.isfinite(accuracy)
    return float(spearman_rows(support[keep][None], accuracy[keep][None])[0])


def support_deciles(support: Any) -> np.ndarray:
    """Each user's 1-based support-rate decile, the bins of the bias curve: ``pd.qcut(support, 10,
    duplicates='drop')``, so users with equal support share a bin and heavy ties give fewer than ten; all-equal
    support is one bin. Float, with nan where the support is not finite."""
    support = np.asarray(support, dtype=float)
    out = np.full(support.shape, np.nan)
    finite = np.isfinite(support)
    if finite.any():
        values = support[finite]
        out[finite] = 1 + (0 if np.ptp(values) == 0 else pd.qcut(values, 10, labels=False, duplicates="drop"))
    return out


def accuracy_by_decile(per_user: pd.DataFrame, *, n_resamples: int = 0, seed: int = 0,
                       confidence: float = 0.95) -> list[dict]:
    """Mean user accuracy per support-rate decile, for the "accuracy vs support" plot.

    Bins are ``pd.qcut(support_rate, 10, duplicates='drop')``: users with equal support always share a bin, so
    heavy ties give fewer than ten bins. ``decile`` is the 1-based bin number after duplicate edges are dropped;
    bins that hold no user (possible with few users) are left out. ``support_lo`` / ``support_hi`` are the
    smallest and largest support rate actually in the bin (qcut's own edges are padded and less readable). Users
    with a non-finite support or accuracy are left out; if all supports are equal there is one bin. With
    ``n_resamples`` each row also gets ``ci``: a seeded percentile bootstrap over the bin's users of their mean
    (``[None, None]`` for a bin of one user), the bias curve's error bars.
    """
    _require_columns(per_user, _DECILE_COLUMNS, "per_user")
    support = per_user["support_rate"].to_numpy(dtype=float)
    accuracy = per_user[USER_ACCURACY].to_numpy(dtype=float)
    keep = np.isfinite(support) & np.isfinite(accuracy)
    support, accuracy = support[keep], accuracy[keep]
    if support.size == 0:
        return []
    codes = support_deciles(support).astype(int)
    rng = np.random.default_rng(seed)
    tail = (1 - confidence) / 2 * 100
    rows = []
    for code in np.unique(codes):
        in_bin = codes == code
        row = {
            "decile": int(code),
            "support_lo": float(support[in_bin].min()),
            "support_hi": float(support[in_bin].max()),
            "n_users": int(in_bin.sum()),
            USER_ACCURACY: float(accuracy[in_bin].mean()),
        }
        if n_resamples:
            values = accuracy[in_bin]
            means = values[rng.integers(0, values.size, size=(n_resamples, values.size))].mean(axis=1)
            row["ci"] = ([float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]
                         if values.size >= 2 else [None, None])
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------- uncertainty


def _mean_diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def _percentile_ci(samples: tuple[np.ndarray, ...], statistic, *, n_resamples: int, confidence: float,
                   rng: np.random.Generator) -> list[float]:
    """scipy's percentile bootstrap; each sample is resampled on its own (independent groups, not paired)."""
    from scipy import stats

    result = stats.bootstrap(samples, statistic, n_resamples=n_resamples, confidence_level=confidence,
                             method="percentile", vectorized=True, paired=False, rng=rng)
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def _degenerate_ci(values: tuple[np.ndarray, ...], estimate: float) -> list[float] | None:
    """The CI when bootstrapping cannot or need not run, else None.

    Fewer than two users in a group: [nan, nan], because one user says nothing about the spread and a zero-width
    interval would claim certainty. All groups constant: [est, est], which is what the percentile bootstrap gives
    (every resample equals the estimate); returning the reported estimate itself keeps the interval containing it,
    where scipy's resampled means can land one ulp away.
    """
    if any(v.size < 2 for v in values):
        return [math.nan, math.nan]
    if all(np.ptp(v) == 0 for v in values):
        return [estimate, estimate]
    return None


def bootstrap_group_ci(per_user: pd.DataFrame, *, n_resamples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> dict:
    """Percentile-bootstrap CIs over users for majority accuracy, minority accuracy and their gap.

    Users (not pairs) are resampled because the user is the unit of fairness; each group is resampled on its
    own, so the gap's CI reflects both groups' sampling noise with the group sizes fixed as observed. Seeded
    (one ``numpy`` Generator from ``seed``) so a run is reproducible. Degenerate cases (see ``_degenerate_ci``):
    a group with fewer than two users gives [nan, nan] for it and for the gap; constant accuracies give
    [est, est]. Returns ``{"majority": [lo, hi], "minority": [lo, hi], "gap": [lo, hi]}``.
    """
    _require_columns(per_user, _CI_COLUMNS, "per_user")
    if not (isinstance(n_resamples, (int, np.integer)) and n_resamples > 0):
        raise PafoInputError(MSG_BAD_N_RESAMPLES.format(n_resamples=n_resamples))
    if not (0.0 < confidence < 1.0):
        raise PafoInputError(MSG_BAD_CONFIDENCE.format(confidence=confidence))
    rng = np.random.default_rng(seed)
    majority, minority = _group_values(per_user, MAJORITY), _group_values(per_user, MINORITY)
    out = {}
    for name, values, statistic in (
        (MAJORITY, (majority,), np.mean),
        (MINORITY, (minority,), np.mean),
        ("gap", (majority, minority), _mean_diff),
    ):
        estimate = float(statistic(*values)) if all(v.size for v in values) else math.nan
        ci = _degenerate_ci(values, estimate)
        if ci is None:
            ci = _percentile_ci(values, statistic, n_resamples=int(n_resamples), confidence=confidence, rng=rng)
        out[name] = ci
    return out


# --------------------------------------------------------------------------------------------------- report


def _validate_per_user(per_user: pd.DataFrame) -> pd.DataFrame:
    """Check columns and values; drop users without an accuracy (they had no test pair to score)."""
    _require_columns(per_user, _PER_USER_COLUMNS, "per_user")
    table = per_user.copy()
    table[USER_ACCURACY] = pd.to_numeric(table[USER_ACCURACY], errors="coerce").astype(float)
    table = table[table[USER_ACCURACY].notna()]
    if table.empty:
        raise PafoInputError(MSG_NO_USERS)
    bad_group = ~table["group"].isin(GROUPS)
    if bad_group.any():
        row = table[bad_group].iloc[0]
        raise PafoInputError(MSG_BAD_GROUP.format(value=row["group"], user=row["user"]))
    bad_acc = ~table[USER_ACCURACY].between(0.0, 1.0)
    if bad_acc.any():
        row = table[bad_acc].iloc[0]
        raise PafoInputError(MSG_BAD_ACCURACY.format(value=row[USER_ACCURACY], user=row["user"]))
    return table


def _micro(table: pd.DataFrame) -> float:
    """Pair-level accuracy recovered from per-user accuracies weighted by their number of pairs."""
    n_pairs = pd.to_numeric(table["n_pairs"], errors="coerce").to_numpy(dtype=float)
    accuracy = table[USER_ACCURACY].to_numpy(dtype=float)
    keep = np.isfinite(n_pairs) & (n_pairs > 0)
    if not keep.any():
        return math.nan
    return float(np.sum(n_pairs[keep] * accuracy[keep]) / np.sum(n_pairs[keep]))


class Users(NamedTuple):
    """Rows of users, ``(resamples × users)`` arrays: each user's accuracy, support rate and group label. One row
    is a method's users as they are (:func:`evaluate`); a bootstrap draws many (:mod:`pafo.compare`)."""

    accuracy: np.ndarray
    support: np.ndarray
    group: np.ndarray
    #: Optional (support ranks, accuracy ranks) of every row, as ``scipy.stats.rankdata`` gives them: a bootstrap
    #: counts them from the resampled users (:func:`resampled_ranks`) instead of sorting every resample.
    ranks: tuple[np.ndarray, np.ndarray] | None = None


def resampled_ranks(codes: np.ndarray, n_codes: int) -> np.ndarray:
    """Average ranks (ties share their mean rank, ``scipy.stats.rankdata``'s default) of every row of ``codes``
    (rows × users): each value's position among the distinct values it was drawn from (``np.unique``'s inverse).
    Counting, not sorting: O(rows × (users + n_codes)), exactly rankdata's values."""
    rows = len(codes)
    offset = (np.arange(rows, dtype=np.int64) * n_codes)[:, None]
    counts = np.bincount((codes + offset).ravel(), minlength=rows * n_codes).reshape(rows, n_codes)
    average = np.cumsum(counts, axis=1) - (counts - 1) / 2.0
    return np.take_along_axis(average, codes, axis=1)


class Metric(NamedTuple):
    """One reported metric: its key in a result block, how tables show it and how it is computed.

    ``compute`` takes :class:`Users` (rows × users) and gives one value per row, so the same code gives a method's
    figure and the bootstrap of its paired difference. A metric with ``compared`` also enters the paired comparison
    with the reference (the verdict table): its difference method − reference (|method| − |reference| when
    ``by_size``) with a CI, under ``compared_key`` in each comparison, in a column named ``short``.
    """

    key: str
    label: str
    higher_is_better: bool
    unit: str  # "%": a fraction shown in percent; "pts": a difference of fractions, in points; "": a plain number
    by_size: bool = False  # a signed measure of bias, judged by its absolute value (its Δ is |m| − |reference|)
    compute: Callable[[Users], np.ndarray] | None = None
    compared: bool = False  # enters the paired comparison and the verdict table
    short: str | None = None  # its name in the verdict table's Δ column

    @property
    def compared_key(self) -> str:
        """Its key in a paired comparison: ``support_spearman_abs`` for a measure judged by its size."""
        return f"{self.key}_abs" if self.by_size else self.key

    def sized(self, values: np.ndarray) -> np.ndarray:
        """Values as the metric is judged: their size for a signed measure of bias."""
        return np.abs(values) if self.by_size else values


def _group_gap_rows(users: Users) -> np.ndarray:
    return group_means(users.accuracy, users.group, MAJORITY) - group_means(users.accuracy, users.group, MINORITY)


def _spearman_users(users: Users) -> np.ndarray:
    """:func:`spearman_rows` of support and accuracy, each row without its users whose support is not finite."""
    finite = np.isfinite(users.support) & np.isfinite(users.accuracy)
    if finite.all():
        if users.ranks is not None and users.support.shape[-1]:
            return spearman_of_ranks(*users.ranks)
        return spearman_rows(users.support, users.accuracy)
    return np.array([spearman_rows(s[keep][None], a[keep][None])[0]
                     for s, a, keep in zip(users.support, users.accuracy, finite, strict=True)])


#: Rows of ``accuracy`` (computed in :func:`evaluate`), ``unfairness`` and ``calibration`` blocks, in table order.
ACCURACY_METRICS = (
    Metric("overall", "Accuracy: overall, each user weighs equally", True, "%"),
    Metric("micro", "Accuracy: pair level (micro)", True, "%"),
    Metric(MAJORITY, "Accuracy: majority users", True, "%"),
    Metric(MINORITY, "Accuracy: minority users", True, "%"),
)
UNFAIRNESS_METRICS = (
    Metric("group_gap", "Group gap (majority − minority)", False, "pts", by_size=True, compute=_group_gap_rows),
    Metric("user_std", "Std of user accuracy", False, "pts", compute=lambda users: users.accuracy.std(-1),
           compared=True, short="user std"),
    Metric("gini", "Gini of user accuracy", False, "", compute=lambda users: gini_rows(users.accuracy)),
    Metric("worst10", "Worst-10% users' accuracy", True, "%",
           compute=lambda users: worst_fraction_rows(users.accuracy, 0.1)),
    Metric("support_spearman", "Spearman(support, accuracy) — the bias", False, "", by_size=True,
           compute=_spearman_users, compared=True, short="Spearman"),
)
#: The registry's metrics that enter the paired comparison with the reference, beside the group accuracies.
COMPARED_METRICS = tuple(metric for metric in UNFAIRNESS_METRICS if metric.compared)
LOG_LOSS_METRICS = (  # audits of given margins: −log σ(margin), mean over pairs (calibration below)
    Metric("overall", "BT log-loss: all pairs", False, ""),
    Metric(MAJORITY, "BT log-loss: majority users' pairs", False, ""),
    Metric(MINORITY, "BT log-loss: minority users' pairs", False, ""),
)


def evaluate(per_user: pd.DataFrame, *, n_resamples: int = 1000, seed: int = 0,
             micro_accuracy: float | None = None) -> dict:
    """All section-7 metrics for one method's test results, as strict-JSON-ready plain Python values.

    ``per_user`` has columns user, group ('majority' | 'minority'), support_rate, n_pairs, accuracy; users whose
    accuracy is missing (no test pairs) are left out. Accuracies are macro means over users (each user weighs
    equally); ``micro`` is the pair-level accuracy, taken from ``micro_accuracy`` when given, else the
    n_pairs-weighted mean. ``user_std`` is the population std (ddof=0): the users at hand are the population
    being described. Undefined values (an empty group, constant inputs to Spearman) are ``None``.
    """
    table = _validate_per_user(per_user)
    accuracy = table[USER_ACCURACY].to_numpy(dtype=float)
    users = Users(accuracy[None], table["support_rate"].to_numpy(dtype=float)[None],
                  table["group"].to_numpy(dtype=str)[None])
    majority, minority = (float(group_means(users.accuracy, users.group, name)[0]) for name in GROUPS)
    micro = _micro(table) if micro_accuracy is None else float(micro_accuracy)
    result = {
        "accuracy": {"overall": float(accuracy.mean()), "micro": micro, "majority": majority, "minority": minority},
        "accuracy_ci": bootstrap_group_ci(table, n_resamples=n_resamples, seed=seed),
        "unfairness": {metric.key: metric.compute(users)[0] for metric in UNFAIRNESS_METRICS},
        "by_decile": accuracy_by_decile(table, n_resamples=n_resamples, seed=seed),
    }
    return _plain(result)


def _group_accuracies(accuracies: Mapping, name: str) -> tuple[float | None, float | None]:
    """(majority, minority) of a method's group accuracies (``MethodResult.accuracy``, or a flat dict)."""
    for key in GROUPS:
        if key not in accuracies:
            raise PafoInputError(MSG_MISSING_KEY.format(name=name, key=key))
    return accuracies[MAJORITY], accuracies[MINORITY]


def pareto_improvement(method: Mapping, baseline: Mapping, *, epsilon: float = 0.005) -> bool:
    """True when ``method`` serves the minority strictly better and the majority not worse by more than epsilon.

    Takes each side's group accuracies (``{"majority": .., "minority": ..}``, as ``MethodResult.accuracy``). This is
    the acceptance rule for PAFO: a fairness gain bought with a real majority loss is not an improvement. A missing
    accuracy (None or nan) on either side gives False, since the improvement cannot be shown. The majority bound
    allows 1e-12 of float slack so a drop of exactly epsilon counts as "not beyond epsilon".
    """
    if _is_missing(epsilon) or epsilon < 0:
        raise PafoInputError(MSG_BAD_EPSILON.format(epsilon=epsilon))
    method_major, method_minor = _group_accuracies(method, "method")
    base_major, base_minor = _group_accuracies(baseline, "baseline")
    if any(_is_missing(v) for v in (method_major, method_minor, base_major, base_minor)):
        return False
    minority_up = float(method_minor) > float(base_minor)
    majority_kept = float(method_major) >= float(base_major) - epsilon - _FLOAT_TOL
    return bool(minority_up and majority_kept)


# --------------------------------------------------------------------------------------------------- calibration


def _calibration_of(margins: np.ndarray, bins: int) -> dict:
    """BT log-loss −log σ(m) and the expected calibration error of σ(m) over equal-width confidence bins."""
    from scipy import stats

    confidence = stats.logistic.cdf(np.abs(margins))  # P(the preferred side) the model claims
    correct = pair_correct(margins)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    gaps = [abs(correct[which == b].mean() - confidence[which == b].mean()) * np.mean(which == b)
            for b in range(bins) if (which == b).any()]
    return {"log_loss": float(np.mean(np.logaddexp(0.0, -margins))), "ece": float(np.sum(gaps)),
            "mean_confidence": float(confidence.mean()), "n_pairs": int(margins.size)}


def calibration(margins: Any, group_of_pair: Any, *, bins: int = 10) -> dict:
    """How well σ(margin) reads as the probability that the user prefers the chosen response, per group.

    ``margins`` are r(chosen) − r(rejected) on test pairs, ``group_of_pair`` each pair's user group. Log-loss
    is pair-level (the BT likelihood); ECE bins the claimed confidence max(σ(m), 1 − σ(m)) into ``bins``
    equal-width bins over [0.5, 1] and weighs each bin's |accuracy − confidence| by its share of pairs. A model
    whose margins are several times too large has a low error rate and a high log-loss: accuracy cannot see it.
    """
    margins = _as_array(margins, "margins")
    group_of_pair = np.asarray(group_of_pair).ravel()
    if group_of_pair.size != margins.size:
        raise PafoInputError(MSG_LENGTH_MISMATCH.format(n_support=group_of_pair.size, n_accuracy=margins.size))
    out = {"overall": _calibration_of(margins, bins)}
    for name in GROUPS:
        mask = group_of_pair == name
        out[name] = _calibration_of(margins[mask], bins) if mask.any() else None
    return out
