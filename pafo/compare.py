"""Paired comparisons of two methods on the same users and test pairs, pooled over seeds, with a verdict.

A method's effect is judged by its difference to a reference (usually the baseline) *user by user*: both were
scored on the same test pairs of the same users, so most of the noise (which users and pairs happened to be drawn)
cancels in the difference. Uncertainty comes from a percentile bootstrap over users, stratified by seed and group
(each seed's majority and minority users are resampled on their own, so group sizes stay as observed); a pooled
statistic is the mean of its per-seed values. Everything is a fraction (0.005 is half a percentage point).

Verdict rule (documented in the README; :class:`VerdictRule` holds its parameters, each declared once here):
- ``noise`` whenever a group has fewer than ``min_users`` users or ``min_pairs`` test pairs with an accuracy under
  both methods over the seeds, or fewer than ``min_seed_users`` users on some seed (its CI would be too rough: one
  user gives a zero-width interval; :mod:`pafo.sample_size` holds the rule);
- ``pareto``: the minority CI lies above 0 and the majority delta is ≥ −ε;
- ``worse``: one group's CI lies below −ε and the other group's CI does not lie above 0;
- ``tradeoff``: one group's CI lies above 0 and the other's below 0;
- ``noise``: anything else (including a missing group).
"Above x" means beyond x by more than ``tolerance`` (and "below x" below x − ``tolerance``), for every CI test.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import PafoInputError
from .jsonio import from_fields
from .metrics import COMPARED_METRICS, GROUPS, Users, resampled_ranks
from .sample_size import MIN_PAIRS, MIN_SEED_USERS, MIN_USERS, GroupCounts, shortfall

__all__ = ["CI_TOLERANCE", "COMPARED", "MIN_GROUP_PAIRS", "MIN_GROUP_USERS", "MSG_NO_COMMON_USERS", "VERDICTS",
           "VERDICT_WORDS", "Comparison", "Coverage", "Delta", "Sample", "VerdictRule", "describe_comparison",
           "describe_rule", "paired_comparison", "pooled_group_ci", "verdict"]

VERDICTS = ("pareto", "noise", "worse", "tradeoff")
#: How the app, the HTML report and the CLI say each verdict.
VERDICT_WORDS = {"pareto": "Pareto improvement", "noise": "within noise", "worse": "worse", "tradeoff": "trade-off"}
#: What a paired comparison estimates: the mean difference per group (the verdict's) and each metric of the
#: registry that enters the verdict table (:data:`pafo.metrics.COMPARED_METRICS`).
COMPARED = (*GROUPS, *(metric.compared_key for metric in COMPARED_METRICS))
MSG_NO_COMMON_USERS = "paired comparison of {method!r} with {reference!r}: no user has a test accuracy under both"
MSG_MISSING_ACCURACY = "paired comparison: per-user table of seed {seed} has no column {column!r}"

#: A CI bound must clear 0 (or −ε) by more than this to count as above (below) it: half the 0.1-point resolution
#: every printout uses, so a bound shown as 0.0 never counts as above 0 (a lower bound of 4e-17, float noise of a
#: zero difference, once gave "pareto").
CI_TOLERANCE = 0.0005
#: Below these per group (over the seeds) the bootstrap CI is too rough to judge (:mod:`pafo.sample_size`).
MIN_GROUP_USERS, MIN_GROUP_PAIRS = MIN_USERS, MIN_PAIRS
DEFAULT_EPSILON = 0.005
REASON_NO_ESTIMATE = "no paired estimate for a group"
REASON_PARETO = "the minority's CI lies above 0 and the majority's difference is ≥ −ε"
REASON_WORSE = "the {down}'s CI lies below −ε and the {other}'s does not lie above 0"
REASON_TRADEOFF = "the {up}'s CI lies above 0 and the {down}'s below 0"
REASON_NOISE = "no CI clears 0 (or −ε) by the tolerance"


@dataclass(frozen=True)
class Delta:
    """A paired difference (method − reference) and its percentile CI, as fractions; ``None`` where undefined."""

    delta: float | None
    ci: tuple[float | None, float | None] = (None, None)

    def to_json(self) -> dict:
        return {"delta": self.delta, "ci": list(self.ci)}

    @classmethod
    def from_json(cls, block: dict | None) -> Delta:
        return from_fields(cls, block, ci=lambda ci: tuple([*(ci or []), None, None][:2]))


@dataclass(frozen=True)
class Sample:
    """One group's fewest users and fewest test pairs over the seeds, each with the seed it was on, and its users
    and pairs in total (``None`` in a comparison stored before totals were recorded: the fewest count then)."""

    users: int
    pairs: int
    users_seed: int | None = None
    pairs_seed: int | None = None
    total_users: int | None = None
    total_pairs: int | None = None
    seeds: int = 1

    def to_json(self) -> dict:
        return {"users": self.users, "users_seed": self.users_seed, "pairs": self.pairs,
                "pairs_seed": self.pairs_seed, "total_users": self.total_users, "total_pairs": self.total_pairs,
                "seeds": self.seeds}

    @classmethod
    def from_json(cls, block: dict | None) -> Sample:
        return from_fields(cls, block, users=lambda n: int(n or 0), pairs=lambda n: int(n or 0),
                           seeds=lambda n: int(n or 1))

    def counts(self) -> GroupCounts:
        """The counts the sample-size rule reads."""
        total_users = self.users if self.total_users is None else self.total_users
        total_pairs = self.pairs if self.total_pairs is None else self.total_pairs
        return GroupCounts(total_users, total_pairs, self.seeds, self.users, self.users_seed)


@dataclass(frozen=True)
class Coverage:
    """The pairs and users a comparison used, of those evaluated (an audit with missing predictions)."""

    pairs: int
    of_pairs: int
    users: int
    of_users: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, block: dict | None) -> Coverage | None:
        return from_fields(cls, block) if block else None


@dataclass(frozen=True)
class VerdictRule:
    """The parameters of the verdict rule (module docstring); every comparison records the rule it used."""

    epsilon: float = DEFAULT_EPSILON
    tolerance: float = CI_TOLERANCE
    min_users: int = MIN_GROUP_USERS
    min_pairs: int = MIN_GROUP_PAIRS
    min_seed_users: int = MIN_SEED_USERS

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, block: dict | None) -> VerdictRule:
        """The rule a stored comparison names; a comparison stored before rules were recorded used the defaults."""
        return from_fields(cls, block)

    def shortfall(self, sample: dict[str, Sample], n_seeds: int = 1) -> str | None:
        """Why the groups are too small to judge (:func:`pafo.sample_size.shortfall`), or None. ``sample``: per
        group its :class:`Sample` over the seeds."""
        for group in ("minority", "majority"):
            reason = shortfall((sample.get(group) or Sample(0, 0)).counts(), group, min_users=self.min_users,
                               min_pairs=self.min_pairs, min_seed_users=self.min_seed_users)
            if reason:
                return reason
        return None

    def judge(self, majority: Delta, minority: Delta, sample: dict[str, Sample] | None = None,
              n_seeds: int = 1) -> tuple[str, str]:
        """(verdict, reason) from the two paired deltas and, when given, the group sizes behind them."""
        reason = self.shortfall(sample, n_seeds) if sample is not None else None
        if reason:
            return "noise", reason
        return _ci_verdict(majority, minority, self.epsilon, self.tolerance)


@dataclass
class Comparison:
    """One method against the reference on the same users and test pairs (:func:`paired_comparison`).

    ``deltas`` holds every compared statistic (:data:`COMPARED`: the group accuracies and the metrics of
    :mod:`pafo.metrics` that enter the verdict table), the sample sizes behind it, the rule and the verdict."""

    deltas: dict[str, Delta] = dataclasses.field(default_factory=dict)
    n_seeds: int = 0
    n_users: int = 0
    n_pairs: int | None = None
    sample: dict[str, Sample] | None = None
    rule: VerdictRule = VerdictRule()
    verdict: str = "noise"
    verdict_reason: str | None = None
    coverage: Coverage | None = None  # an audit: the pairs both models cover

    def delta(self, key: str) -> Delta:
        """One compared statistic (``Delta(None)`` when this comparison did not compute it)."""
        return self.deltas.get(key) or Delta(None)

    def to_json(self) -> dict:
        out = {key: delta.to_json() for key, delta in self.deltas.items()}
        out.update(n_seeds=self.n_seeds, n_users=self.n_users, n_pairs=self.n_pairs,
                   sample={g: s.to_json() for g, s in (self.sample or {}).items()}, rule=self.rule.to_dict(),
                   verdict=self.verdict, verdict_reason=self.verdict_reason)
        if self.coverage is not None:
            out["coverage"] = self.coverage.to_json()
        return out

    @classmethod
    def from_json(cls, block: dict) -> Comparison:
        """A stored comparison; one written before sample sizes or rules were recorded reads with the defaults."""
        comparison = from_fields(
            cls, block, n_seeds=lambda n: int(n or 0), n_users=lambda n: int(n or 0),
            sample=lambda sample: None if sample is None else {g: Sample.from_json(s) for g, s in sample.items()},
            rule=VerdictRule.from_json, coverage=Coverage.from_json)
        comparison.deltas = {key: Delta.from_json(block[key]) for key in COMPARED if key in block}
        return comparison


def verdict(majority: Delta | dict, minority: Delta | dict, epsilon: float = DEFAULT_EPSILON,
            tolerance: float = CI_TOLERANCE) -> str:
    """The CI part of the rule (module docstring) from two paired deltas (or their ``{"delta", "ci"}`` JSON)."""
    majority, minority = (d if isinstance(d, Delta) else Delta.from_json(d) for d in (majority, minority))
    return _ci_verdict(majority, minority, epsilon, tolerance)[0]


def _ci_verdict(majority: Delta, minority: Delta, epsilon: float, tolerance: float) -> tuple[str, str]:
    try:
        maj_lo, maj_hi = (float(v) for v in majority.ci)
        min_lo, min_hi = (float(v) for v in minority.ci)
        maj_delta = float(majority.delta)
    except (TypeError, ValueError):
        return "noise", REASON_NO_ESTIMATE
    if any(math.isnan(v) for v in (maj_lo, maj_hi, min_lo, min_hi, maj_delta)):
        return "noise", REASON_NO_ESTIMATE
    maj_up, min_up = maj_lo > tolerance, min_lo > tolerance
    if min_up and maj_delta >= -epsilon - 1e-12:  # a point estimate: only float slack, a drop of exactly ε is kept
        return "pareto", REASON_PARETO
    sides = (("majority", "minority", maj_hi, maj_up, min_hi, min_up),
             ("minority", "majority", min_hi, min_up, maj_hi, maj_up))
    for down, other, hi, _, _, other_up in sides:
        if hi < -epsilon - tolerance and not other_up:
            return "worse", REASON_WORSE.format(down=down, other=other)
    for up, down, _, up_ok, down_hi, _ in sides:
        if up_ok and down_hi < -tolerance:
            return "tradeoff", REASON_TRADEOFF.format(up=up, down=down)
    return "noise", REASON_NOISE


def _statistics(group: np.ndarray, support: np.ndarray, method: np.ndarray, reference: np.ndarray,
                ranks: tuple[np.ndarray, ...] | None = None) -> dict:
    """Each compared statistic (method − reference) of rows of users; arrays are (resamples × users): per group the
    mean over its users of the paired difference, and each compared metric of the registry (its difference of
    sizes for a signed measure of bias). ``ranks``: the rows' (support, method, reference) ranks, when known."""
    out = {}
    for name in GROUPS:
        mask = group == name
        count = mask.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = np.where(count > 0, ((method - reference) * mask).sum(-1) / count, np.nan)
    for metric in COMPARED_METRICS:
        values = [metric.sized(metric.compute(Users(accuracy, support, group,
                                                    None if ranks is None else (ranks[0], ranks[i]))))
                  for i, accuracy in enumerate((method, reference), start=1)]
        out[metric.compared_key] = values[0] - values[1]
    return out


def _stratified_indices(group: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples × users) row indices, each group's users resampled among themselves."""
    index = np.empty((n_resamples, len(group)), dtype=np.int64)
    for name in np.unique(group):
        rows = np.flatnonzero(group == name)
        index[:, rows] = rows[rng.integers(0, len(rows), size=(n_resamples, len(rows)))]
    return index


#: Resampled users evaluated at once by the paired bootstrap: memory stays at this many values per array,
#: whatever resamples × users is (the statistics are per resample, so blocks of resamples give the same result).
BOOTSTRAP_BLOCK = 2_000_000


def _bootstrap_statistics(group: np.ndarray, values: list[np.ndarray], index: np.ndarray) -> dict:
    """:func:`_statistics` of every resample (a row of ``index``), evaluated a block of resamples at a time.

    A resample's ranks (Spearman's) are counted from the positions of its users' values among the observed ones
    (:func:`pafo.metrics.resampled_ranks`) rather than sorted: the same ranks, at a fraction of the cost."""
    step = max(1, BOOTSTRAP_BLOCK // max(index.shape[1], 1))
    coded = ([np.unique(v, return_inverse=True) for v in values]
             if all(np.isfinite(v).all() for v in values) else None)
    blocks = []
    for part in (index[start:start + step] for start in range(0, len(index), step)):
        ranks = None if coded is None else tuple(resampled_ranks(inverse.ravel()[part], len(distinct))
                                                 for distinct, inverse in coded)
        blocks.append(_statistics(group[part], *(v[part] for v in values), ranks=ranks))
    return {name: np.concatenate([block[name] for block in blocks]) for name in blocks[0]}


def paired_comparison(per_seed: Sequence[pd.DataFrame], method: str, reference: str = "baseline", *,
                      n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                      rule: VerdictRule | None = None, pairs_column: str = "n_test") -> Comparison:
    """``method`` − ``reference`` per group, on user-accuracy spread and on |Spearman(support, accuracy)|.

    ``per_seed``: one per-user table per seed with columns ``group``, ``support_rate``, ``acc_<method>``,
    ``acc_<reference>`` and ``pairs_column`` (each user's test pairs behind those accuracies; the experiment's
    per-user table). Users without an accuracy under either are left out. Returns a :class:`Comparison`: a
    :class:`Delta` for each of ``COMPARED``, the seeds, users and pairs it rests on, ``sample`` (per group the
    fewest users and the fewest pairs over the seeds), the :class:`VerdictRule` used, the verdict and its reason.
    """
    rule = rule or VerdictRule()
    rng = np.random.default_rng(seed)
    estimates, samples = {k: [] for k in COMPARED}, {k: [] for k in COMPARED}
    sizes: list[dict] = []
    for i, table in enumerate(per_seed):
        table = _paired_rows(table, method, reference, pairs_column, i)
        sizes.append(_group_sizes(table, pairs_column, table["seed"].iloc[0] if "seed" in table and len(table) else i))
        if table.empty:
            continue
        group = table["group"].to_numpy(dtype=str)
        values = [table[c].to_numpy(dtype=float) for c in ("support_rate", f"acc_{method}", f"acc_{reference}")]
        point = _statistics(group[None], *(v[None] for v in values))
        boot = _bootstrap_statistics(group, values, _stratified_indices(group, n_resamples, rng))
        for name in COMPARED:
            estimates[name].append(point[name][0])
            samples[name].append(boot[name])
    n_users = sum(s[g]["users"] for s in sizes for g in s)
    if not n_users:
        raise PafoInputError(MSG_NO_COMMON_USERS.format(method=method, reference=reference))
    deltas = {name: _pooled(estimates[name], samples[name], confidence) for name in COMPARED}
    n_seeds = len(estimates["majority"])
    sample = {g: _smallest([s[g] for s in sizes]) for g in GROUPS}
    verdict_, reason = rule.judge(deltas["majority"], deltas["minority"], sample, n_seeds)
    return Comparison(deltas, n_seeds=n_seeds, n_users=n_users, n_pairs=sum(s[g]["pairs"] for s in sizes for g in s),
                      sample=sample, rule=rule, verdict=verdict_, verdict_reason=reason)


def _paired_rows(table: pd.DataFrame, method: str, reference: str, pairs_column: str, index: int) -> pd.DataFrame:
    """The users of one seed's table with an accuracy under both methods (and the columns the comparison reads)."""
    columns = [f"acc_{method}", f"acc_{reference}", "group", "support_rate", pairs_column]
    for column in columns:
        if column not in table.columns:
            raise PafoInputError(MSG_MISSING_ACCURACY.format(seed=index, column=column))
    return table[columns + (["seed"] if "seed" in table.columns else [])].dropna(subset=columns[:4])


def _group_sizes(table: pd.DataFrame, pairs_column: str, seed) -> dict:
    """Users and test pairs per group of one seed's paired rows."""
    pairs = pd.to_numeric(table[pairs_column], errors="coerce").fillna(0)
    seed = int(seed) if isinstance(seed, int | np.integer) else seed
    return {g: {"users": int((table["group"] == g).sum()), "pairs": int(pairs[table["group"] == g].sum()),
                "seed": seed} for g in GROUPS}


def _smallest(sizes: list[dict]) -> Sample:
    """The fewest users and the fewest pairs of one group over the seeds, each with the seed it was on, and the
    totals."""
    users, pairs = min(sizes, key=lambda b: b["users"]), min(sizes, key=lambda b: b["pairs"])
    return Sample(users["users"], pairs["pairs"], users["seed"], pairs["seed"],
                  total_users=sum(b["users"] for b in sizes), total_pairs=sum(b["pairs"] for b in sizes),
                  seeds=len(sizes))


def _pooled(estimates: list, samples: list, confidence: float) -> Delta:
    """A statistic's mean over seeds and the percentile CI of its pooled bootstrap (None where undefined)."""
    tail = (1 - confidence) / 2 * 100
    with np.errstate(invalid="ignore"):
        delta = float(np.mean(estimates)) if estimates else math.nan
        pooled = np.mean(np.stack(samples), axis=0) if samples else np.array([math.nan])
    finite = pooled[np.isfinite(pooled)]
    ci = [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))] if (
        finite.size and math.isfinite(delta)) else [math.nan, math.nan]
    return Delta(delta if math.isfinite(delta) else None, tuple(c if math.isfinite(c) else None for c in ci))


def pooled_group_ci(per_seed: Sequence[pd.DataFrame], column: str, *, n_resamples: int = 1000,
                    confidence: float = 0.95, seed: int = 0) -> dict:
    """CIs of one method's pooled group accuracies: the mean over seeds of each group's mean ``column``.

    The same seed- and group-stratified bootstrap over users as :func:`paired_comparison`, on the accuracies
    themselves rather than on differences. Returns ``{"majority": [lo, hi], "minority": [lo, hi], "gap": [lo,
    hi]}`` (gap = majority − minority); ``[None, None]`` where a group has no user with a value.
    """
    rng = np.random.default_rng(seed)
    samples: dict[str, list[np.ndarray]] = {"majority": [], "minority": []}
    users = dict.fromkeys(samples, 0)
    for table in per_seed:
        table = table[["group", column]].dropna()
        group, values = table["group"].to_numpy(dtype=str), table[column].to_numpy(dtype=float)
        for name in users:
            users[name] += int((group == name).sum())
        index = _stratified_indices(group, n_resamples, rng)
        for name in samples:
            mask = group[index] == name
            count = mask.sum(-1)
            with np.errstate(invalid="ignore", divide="ignore"):
                samples[name].append(np.where(count > 0, (values[index] * mask).sum(-1) / count, np.nan))
    # One user says nothing about the spread: no interval rather than a zero-width one (as pafo.metrics does).
    pooled = {name: np.mean(np.stack(parts), axis=0) if parts and users[name] >= 2 else np.array([np.nan])
              for name, parts in samples.items()}
    pooled["gap"] = pooled["majority"] - pooled["minority"]
    tail = (1 - confidence) / 2 * 100
    out = {}
    for name, values in pooled.items():
        finite = values[np.isfinite(values)]
        out[name] = ([float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]
                     if finite.size == values.size else [None, None])
    return out


def _signed_points(value: float | None) -> str:
    """A fraction as signed percentage points with a true minus sign: 0.021 → "+2.1", −0.001 → "−0.1", 0 → "0.0"."""
    if value is None or not math.isfinite(value):
        return "–"
    text = f"{100 * value:+.1f}"
    return (text[1:] if text[1:] == "0.0" else text).replace("-", "−")


def describe_comparison(comparison: Comparison, *, verdict: bool = False) -> str:
    """The paired result in words: "minority +2.1 points [+0.8, +3.4], majority −0.1 [−0.6, +0.4] over 5 seeds ×
    300 users" (users per seed), led by the verdict's words when ``verdict``; a ``noise`` verdict says why ("too
    few users: minority has 2 (< 20)"), and a comparison on part of the pairs says how many it used."""
    parts = []
    for i, group in enumerate(("minority", "majority")):
        block = comparison.delta(group)
        lo, hi = block.ci
        unit = " points" if i == 0 else ""
        parts.append(f"{group} {_signed_points(block.delta)}{unit} [{_signed_points(lo)}, {_signed_points(hi)}]")
    n_seeds = comparison.n_seeds
    per_seed = round(comparison.n_users / max(n_seeds, 1))
    text = f"{', '.join(parts)} over {n_seeds} seed{'s' if n_seeds != 1 else ''} × {per_seed} users"
    coverage = comparison.coverage
    if coverage is not None and coverage.of_pairs and coverage.pairs != coverage.of_pairs:
        text += COVERAGE_WORDS.format(**coverage.to_json())
    if verdict:
        name, reason = comparison.verdict, comparison.verdict_reason
        why = f" ({reason})" if name == "noise" and reason and reason != REASON_NOISE else ""
        text = f"{VERDICT_WORDS.get(name, name)}{why}: {text}"
    return text


COVERAGE_WORDS = ", on the {pairs:,} of {of_pairs:,} pairs both models cover"
RULE_WORDS = ("rule: ε {epsilon:.2g} points, CI bounds must clear 0 (or −ε) by {tolerance:.2g} points, a group "
              "needs ≥ {min_users} users and ≥ {min_pairs} test pairs over the seeds and ≥ {min_seed_users} users on "
              "each")


def describe_rule(rule: VerdictRule | None = None) -> str:
    """The parameters of a comparison's rule in words (the CLI's verdict line, Compare's verdict help)."""
    rule = rule or VerdictRule()
    return RULE_WORDS.format(epsilon=100 * rule.epsilon, tolerance=100 * rule.tolerance, min_users=rule.min_users,
                             min_pairs=rule.min_pairs, min_seed_users=rule.min_seed_users)
