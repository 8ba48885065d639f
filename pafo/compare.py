"""Paired comparisons of two methods on the same users and test pairs, pooled over seeds, with a verdict.

A method's effect is judged by its difference to a reference (usually the baseline) *user by user*: both were
scored on the same test pairs of the same users, so most of the noise (which users and pairs happened to be drawn)
cancels in the difference. Uncertainty comes from a percentile bootstrap over users, stratified by seed and group
(each seed's majority and minority users are resampled on their own, so group sizes stay as observed); a pooled
statistic is the mean of its per-seed values. Everything is a fraction (0.005 is half a percentage point).

Verdict rule (documented in the README; ε is ``epsilon``):
- ``pareto``: the minority CI lies above 0 and the majority delta is ≥ −ε;
- ``worse``: one group's CI lies below −ε and the other group's CI does not lie above 0;
- ``tradeoff``: one group's CI lies above 0 and the other's below 0;
- ``noise``: anything else (including a missing group).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .errors import PafoInputError

__all__ = ["COMPARED", "MSG_NO_COMMON_USERS", "VERDICTS", "VERDICT_WORDS", "describe_comparison", "paired_comparison",
           "pooled_group_ci", "verdict"]

VERDICTS = ("pareto", "noise", "worse", "tradeoff")
#: How the app, the HTML report and the CLI say each verdict.
VERDICT_WORDS = {"pareto": "Pareto improvement", "noise": "within noise", "worse": "worse", "tradeoff": "trade-off"}
COMPARED = ("majority", "minority", "user_std", "support_spearman_abs")
MSG_NO_COMMON_USERS = "paired comparison of {method!r} with {reference!r}: no user has a test accuracy under both"
MSG_MISSING_ACCURACY = "paired comparison: per-user table of seed {seed} has no column {column!r}"


def verdict(majority: dict, minority: dict, epsilon: float = 0.005) -> str:
    """The verdict of the module docstring from two ``{"delta": d, "ci": [lo, hi]}`` blocks."""
    try:
        maj_lo, maj_hi = (float(v) for v in majority["ci"])
        min_lo, min_hi = (float(v) for v in minority["ci"])
        maj_delta = float(majority["delta"])
    except (TypeError, KeyError, ValueError):
        return "noise"
    if any(math.isnan(v) for v in (maj_lo, maj_hi, min_lo, min_hi, maj_delta)):
        return "noise"
    if min_lo > 0 and maj_delta >= -epsilon - 1e-12:
        return "pareto"
    if (maj_hi < -epsilon and min_lo <= 0) or (min_hi < -epsilon and maj_lo <= 0):
        return "worse"
    if (maj_lo > 0 and min_hi < 0) or (min_lo > 0 and maj_hi < 0):
        return "tradeoff"
    return "noise"


def _ranks(values: np.ndarray) -> np.ndarray:
    return stats.rankdata(values, axis=-1)


def _rowwise_spearman(support: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Spearman ρ of every row of two (resamples × users) arrays; nan where a row is constant."""
    a, b = _ranks(support), _ranks(accuracy)
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    denominator = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(-1) / denominator, np.nan)


def _statistics(group: np.ndarray, support: np.ndarray, method: np.ndarray, reference: np.ndarray) -> dict:
    """Each compared statistic (method − reference) of rows of users; arrays are (resamples × users)."""
    out = {}
    for name in ("majority", "minority"):
        mask = group == name
        count = mask.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = np.where(count > 0, ((method - reference) * mask).sum(-1) / count, np.nan)
    out["user_std"] = method.std(-1) - reference.std(-1)
    out["support_spearman_abs"] = (np.abs(_rowwise_spearman(support, method))
                                   - np.abs(_rowwise_spearman(support, reference)))
    return out


def _stratified_indices(group: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples × users) row indices, each group's users resampled among themselves."""
    index = np.empty((n_resamples, len(group)), dtype=np.int64)
    for name in np.unique(group):
        rows = np.flatnonzero(group == name)
        index[:, rows] = rows[rng.integers(0, len(rows), size=(n_resamples, len(rows)))]
    return index


def paired_comparison(per_seed: Sequence[pd.DataFrame], method: str, reference: str = "baseline", *,
                      n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                      epsilon: float = 0.005) -> dict:
    """``method`` − ``reference`` per group, on user-accuracy spread and on |Spearman(support, accuracy)|.

    ``per_seed``: one per-user table per seed with columns ``group``, ``support_rate``, ``acc_<method>`` and
    ``acc_<reference>`` (the experiment's per-user table). Users without an accuracy under either are left out.
    Returns ``{stat: {"delta", "ci"}}`` for each of ``COMPARED``, ``n_seeds``, ``n_users`` and ``verdict``.
    """
    rng = np.random.default_rng(seed)
    estimates, samples, n_users = {k: [] for k in COMPARED}, {k: [] for k in COMPARED}, 0
    for i, table in enumerate(per_seed):
        columns = [f"acc_{method}", f"acc_{reference}", "group", "support_rate"]
        for column in columns:
            if column not in table.columns:
                raise PafoInputError(MSG_MISSING_ACCURACY.format(seed=i, column=column))
        table = table[columns].dropna()
        if table.empty:
            continue
        group = table["group"].to_numpy(dtype=str)
        values = [table[c].to_numpy(dtype=float) for c in ("support_rate", f"acc_{method}", f"acc_{reference}")]
        point = _statistics(group[None], *(v[None] for v in values))
        index = _stratified_indices(group, n_resamples, rng)
        boot = _statistics(group[index], *(v[index] for v in values))
        for name in COMPARED:
            estimates[name].append(point[name][0])
            samples[name].append(boot[name])
        n_users += len(table)
    if not n_users:
        raise PafoInputError(MSG_NO_COMMON_USERS.format(method=method, reference=reference))
    tail = (1 - confidence) / 2 * 100
    result = {}
    for name in COMPARED:
        with np.errstate(invalid="ignore"):
            delta = float(np.mean(estimates[name]))
            pooled = np.mean(np.stack(samples[name]), axis=0)
        finite = pooled[np.isfinite(pooled)]
        ci = [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))] if (
            finite.size and math.isfinite(delta)) else [math.nan, math.nan]
        result[name] = {"delta": delta if math.isfinite(delta) else None,
                        "ci": [c if math.isfinite(c) else None for c in ci]}
    result["n_seeds"] = len(estimates["majority"])
    result["n_users"] = n_users
    result["verdict"] = verdict(result["majority"], result["minority"], epsilon)
    return result


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


def describe_comparison(comparison: dict, *, verdict: bool = False) -> str:
    """The paired result in words: "minority +2.1 points [+0.8, +3.4], majority −0.1 [−0.6, +0.4] over 5 seeds ×
    300 users" (users per seed), led by the verdict's words when ``verdict``."""
    parts = []
    for i, group in enumerate(("minority", "majority")):
        block = comparison.get(group) or {}
        lo, hi = (block.get("ci") or [None, None])
        unit = " points" if i == 0 else ""
        parts.append(f"{group} {_signed_points(block.get('delta'))}{unit} "
                     f"[{_signed_points(lo)}, {_signed_points(hi)}]")
    n_seeds = int(comparison.get("n_seeds") or 0)
    per_seed = round((comparison.get("n_users") or 0) / max(n_seeds, 1))
    text = f"{', '.join(parts)} over {n_seeds} seed{'s' if n_seeds != 1 else ''} × {per_seed} users"
    if verdict:
        text = f"{VERDICT_WORDS.get(comparison.get('verdict'), comparison.get('verdict'))}: {text}"
    return text
