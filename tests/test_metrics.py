"""Tests for pafo.metrics: hand-computed values on small inputs, bootstrap behaviour, evaluate()'s contract."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from pafo import metrics
from pafo.metrics import (
    accuracy_by_decile,
    bootstrap_group_ci,
    evaluate,
    gini,
    group_gap,
    pareto_improvement,
    support_spearman,
    user_accuracy,
    worst_fraction_mean,
)
from pafo.results import MethodResult

# The same numbers should give the same metric whatever container they arrive in.
INPUT_KINDS = {
    "list": list,
    "ndarray": np.asarray,
    "series": pd.Series,
}


@pytest.fixture(params=list(INPUT_KINDS), ids=list(INPUT_KINDS))
def as_kind(request):
    return INPUT_KINDS[request.param]


def _per_user(acc_major, acc_minor, *, support_major=None, support_minor=None, n_pairs=10) -> pd.DataFrame:
    """A per_user table with the given user accuracies per group."""
    acc = list(acc_major) + list(acc_minor)
    groups = ["majority"] * len(acc_major) + ["minority"] * len(acc_minor)
    if support_major is None:
        support_major = np.linspace(0.6, 0.9, len(acc_major)) if len(acc_major) else []
    if support_minor is None:
        support_minor = np.linspace(0.2, 0.4, len(acc_minor)) if len(acc_minor) else []
    return pd.DataFrame({
        "user": np.arange(len(acc)),
        "group": groups,
        "support_rate": list(support_major) + list(support_minor),
        "n_pairs": n_pairs,
        "accuracy": acc,
    })


def _random_per_user(n_users: int, seed: int) -> pd.DataFrame:
    """Users drawn from one fixed distribution: 80% majority (accuracy ~0.8), 20% minority (~0.65)."""
    rng = np.random.default_rng(seed)
    n_minor = n_users // 5
    n_major = n_users - n_minor
    return _per_user(rng.beta(16, 4, n_major), rng.beta(13, 7, n_minor),
                     support_major=rng.uniform(0.5, 1.0, n_major), support_minor=rng.uniform(0.1, 0.5, n_minor))


# ----------------------------------------------------------------------------------------------- user_accuracy


def test_user_accuracy_counts_margin_tie_as_half():
    """Guards the tie rule: a margin of exactly 0 is scored 0.5, not 0 or 1."""
    pairs = pd.DataFrame({"user": [2, 0, 0, 2, 2, 1, 2], "correct": [1.0, 1.0, 0.5, 1.0, 0.5, 0.0, 0.0]})
    out = user_accuracy(pairs)
    assert list(out.columns) == ["user", "n_pairs", "accuracy"]
    assert out["user"].tolist() == [0, 1, 2]  # sorted by user
    assert out["n_pairs"].tolist() == [2, 1, 4]
    # user 0: (1 + 0.5) / 2; user 1: 0 / 1; user 2: (1 + 1 + 0.5 + 0) / 4
    assert out["accuracy"].tolist() == pytest.approx([0.75, 0.0, 0.625])


def test_user_accuracy_bool_column():
    pairs = pd.DataFrame({"user": [1, 1, 1, 0], "correct": [True, False, True, False]})
    out = user_accuracy(pairs)
    assert out["accuracy"].tolist() == pytest.approx([0.0, 2 / 3])
    assert out["n_pairs"].tolist() == [1, 3]


@pytest.mark.parametrize("bad", [1.5, -0.1, np.nan])
def test_user_accuracy_rejects_out_of_range(bad):
    pairs = pd.DataFrame({"user": [0, 0], "correct": [1.0, bad]})
    with pytest.raises(ValueError, match="correct"):
        user_accuracy(pairs)


@pytest.mark.parametrize("column", ["user", "correct"])
def test_user_accuracy_missing_column_named(column):
    pairs = pd.DataFrame({"user": [0], "correct": [True]}).drop(columns=column)
    with pytest.raises(ValueError, match=f"'{column}'"):
        user_accuracy(pairs)


# ----------------------------------------------------------------------------------------------- gini


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # Σ_i Σ_j |a_i − a_j| = |0.5 − 1| + |1 − 0.5| = 1.0;  2 n² ā = 2 · 4 · 0.75 = 6.0  →  1/6
        ([0.5, 1.0], 1.0 / 6.0),
        # ordered |diffs|: 2 · (1 + 2 + 1) = 8;  2 · 9 · 2 = 36  →  2/9
        ([1.0, 2.0, 3.0], 8.0 / 36.0),
        # 8 ordered cross pairs with |diff| 1 = 8;  2 · 16 · 0.5 = 16  →  0.5
        ([0.0, 1.0, 0.0, 1.0], 0.5),
        # one user has everything: 2 · 1 = 2;  2 · 4 · 0.5 = 4  →  0.5 = (n − 1) / n
        ([0.0, 1.0], 0.5),
        ([0.7, 0.7, 0.7, 0.7, 0.7], 0.0),
    ],
)
def test_gini_hand_computed(values, expected, as_kind):
    assert gini(as_kind(values)) == pytest.approx(expected, abs=1e-12)


def test_gini_all_zero_is_zero():
    """Guards the 0/0 case: all users at accuracy 0 are equal, so Gini is 0, not nan."""
    assert gini([0.0, 0.0, 0.0]) == 0.0


def test_gini_matches_double_sum_definition():
    """Guards the O(n log n) sorted formula against the literal double sum of the spec."""
    a = np.random.default_rng(3).uniform(0, 1, 57)
    brute = np.abs(a[:, None] - a[None, :]).sum() / (2 * a.size**2 * a.mean())
    assert gini(a) == pytest.approx(brute, rel=1e-12)


@pytest.mark.parametrize("bad", [[], [0.5, -0.1], [0.5, np.nan]])
def test_gini_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        gini(bad)


# ----------------------------------------------------------------------------------------------- worst fraction

TEN = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0]


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        (TEN, 0.1, 0.1),  # ceil(1.0) = 1 lowest: 0.1
        (TEN, 0.25, 0.2),  # ceil(2.5) = 3 lowest: (0.1 + 0.2 + 0.3) / 3
        (TEN, 1.0, 0.55),  # everyone: 5.5 / 10
        ([0.9, 0.3, 0.6, 0.8, 0.7], 0.1, 0.3),  # ceil(0.5) = 1: at least one user
    ],
)
def test_worst_fraction_mean_hand_computed(values, fraction, expected, as_kind):
    assert worst_fraction_mean(as_kind(values), fraction) == pytest.approx(expected, abs=1e-12)


def test_worst_fraction_mean_float_ceil():
    """Guards ceil(0.1 · 30): in floats 0.1 · 30 = 3.0000000000000004, which must still mean 3 users, not 4."""
    values = [0.01 * i for i in range(1, 31)]
    assert worst_fraction_mean(values, 0.1) == pytest.approx((0.01 + 0.02 + 0.03) / 3)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_worst_fraction_mean_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        worst_fraction_mean([0.5, 0.6], fraction)


# ----------------------------------------------------------------------------------------------- gap, spearman


def test_group_gap_hand_computed():
    assert group_gap(0.85, 0.70) == pytest.approx(0.15)
    assert group_gap(0.60, 0.75) == pytest.approx(-0.15)
    assert math.isnan(group_gap(None, 0.7))
    assert math.isnan(group_gap(0.8, float("nan")))


@pytest.mark.parametrize(
    ("support", "accuracy", "expected"),
    [
        # ranks x = 1 2 3 4, y = 2 1 3 4; Σd² = 1 + 1 = 2; ρ = 1 − 6 · 2 / (4 · 15) = 0.8
        ([0.1, 0.2, 0.3, 0.4], [0.6, 0.5, 0.8, 0.9], 0.8),
        # tied accuracies: y ranks 1.5 1.5 3 4; centred x −1.5 −0.5 0.5 1.5, y −1 −1 0.5 1.5;
        # Σxy = 1.5 + 0.5 + 0.25 + 2.25 = 4.5, Σx² = 5, Σy² = 4.5; ρ = 4.5 / √(5 · 4.5) = √0.9
        ([1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.7, 0.9], math.sqrt(0.9)),
        ([1.0, 2.0, 3.0], [0.9, 0.8, 0.7], -1.0),
    ],
)
def test_support_spearman_hand_computed(support, accuracy, expected, as_kind):
    assert support_spearman(as_kind(support), as_kind(accuracy)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("support", "accuracy"),
    [
        ([0.1, 0.2, 0.3], [0.7, 0.7, 0.7]),  # constant accuracy
        ([0.5, 0.5, 0.5], [0.6, 0.7, 0.8]),  # constant support
        ([0.5], [0.6]),  # one user
        ([], []),
    ],
)
def test_support_spearman_undefined_is_nan_without_warning(support, accuracy, recwarn):
    """Guards the nan-safe contract: constant input gives nan and no scipy ConstantInputWarning."""
    assert math.isnan(support_spearman(support, accuracy))
    assert len(recwarn) == 0


def test_support_spearman_drops_nan_pairs():
    assert support_spearman([0.1, np.nan, 0.2, 0.3], [0.5, 0.9, 0.6, 0.7]) == pytest.approx(1.0)


def test_support_spearman_length_mismatch():
    with pytest.raises(ValueError, match="same length"):
        support_spearman([0.1, 0.2], [0.5])


# ----------------------------------------------------------------------------------------------- deciles


def test_accuracy_by_decile_ties_hand_computed():
    """Guards tie handling: four users share support 0.2, so qcut drops duplicate edges and they stay together.

    Quantiles of [0.2, 0.2, 0.2, 0.2, 0.9]: q0..q0.7 = 0.2, q0.8 = 0.34, q0.9 = 0.62, q1 = 0.9, so the unique
    edges give three bins; the middle one (0.34, 0.62] is empty and left out.
    """
    per_user = pd.DataFrame({"support_rate": [0.2, 0.2, 0.9, 0.2, 0.2], "accuracy": [0.5, 0.7, 1.0, 0.6, 0.8]})
    rows = accuracy_by_decile(per_user)
    assert [r["decile"] for r in rows] == [1, 3]
    assert [r["n_users"] for r in rows] == [4, 1]
    assert rows[0]["accuracy"] == pytest.approx((0.5 + 0.7 + 0.6 + 0.8) / 4)
    assert rows[1]["accuracy"] == pytest.approx(1.0)
    assert (rows[0]["support_lo"], rows[0]["support_hi"]) == (0.2, 0.2)
    assert set(rows[0]) == {"decile", "support_lo", "support_hi", "n_users", "accuracy"}


def test_accuracy_by_decile_ties_never_split():
    """Guards that users with equal support land in one bin and every user is counted once."""
    rng = np.random.default_rng(1)
    support = np.concatenate([np.full(40, 0.5), np.full(25, 0.75), rng.uniform(0, 1, 35)])
    accuracy = rng.uniform(0.4, 1.0, support.size)
    rows = accuracy_by_decile(pd.DataFrame({"support_rate": support, "accuracy": accuracy}))
    assert sum(r["n_users"] for r in rows) == support.size
    assert len(rows) < 10
    deciles = [r["decile"] for r in rows]
    assert deciles == sorted(deciles)
    for lower, upper in itertools.pairwise(rows):
        assert lower["support_hi"] < upper["support_lo"]  # bins are disjoint and ordered
    tied = [r for r in rows if r["support_lo"] <= 0.5 <= r["support_hi"]]
    assert len(tied) == 1 and tied[0]["n_users"] >= 40


def test_accuracy_by_decile_ten_bins_with_distinct_support():
    per_user = pd.DataFrame({"support_rate": np.arange(100) / 100, "accuracy": np.linspace(0.5, 1.0, 100)})
    rows = accuracy_by_decile(per_user)
    assert [r["decile"] for r in rows] == list(range(1, 11))
    assert all(r["n_users"] == 10 for r in rows)


def test_accuracy_by_decile_constant_support_one_bin():
    """Guards all-equal support: qcut alone returns all-NaN bins; we return one bin with everyone."""
    rows = accuracy_by_decile(pd.DataFrame({"support_rate": [0.5] * 4, "accuracy": [0.6, 0.7, 0.8, 0.9]}))
    assert len(rows) == 1
    assert rows[0]["n_users"] == 4 and rows[0]["accuracy"] == pytest.approx(0.75)


def test_accuracy_by_decile_missing_column():
    with pytest.raises(ValueError, match="'support_rate'"):
        accuracy_by_decile(pd.DataFrame({"accuracy": [0.5]}))


# ----------------------------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("n_users", [20, 2000])
def test_bootstrap_ci_contains_estimate(n_users):
    per_user = _random_per_user(n_users, seed=7)
    ci = bootstrap_group_ci(per_user, n_resamples=500, seed=0)
    major = per_user.loc[per_user.group == "majority", "accuracy"].mean()
    minor = per_user.loc[per_user.group == "minority", "accuracy"].mean()
    for key, estimate in (("majority", major), ("minority", minor), ("gap", major - minor)):
        lo, hi = ci[key]
        assert lo <= estimate <= hi, key


def test_bootstrap_ci_narrows_with_more_users():
    """Guards that the bootstrap resamples users: 100x more users from the same distribution, ~10x narrower CIs."""
    small = bootstrap_group_ci(_random_per_user(20, seed=11), n_resamples=500, seed=0)
    large = bootstrap_group_ci(_random_per_user(2000, seed=11), n_resamples=500, seed=0)
    for key in ("majority", "minority", "gap"):
        assert large[key][1] - large[key][0] < 0.5 * (small[key][1] - small[key][0]), key


def test_bootstrap_ci_seeded():
    """Guards reproducibility: the same seed gives identical CIs; another seed resamples differently."""
    per_user = _random_per_user(40, seed=5)
    first = bootstrap_group_ci(per_user, n_resamples=300, seed=123)
    again = bootstrap_group_ci(per_user, n_resamples=300, seed=123)
    other = bootstrap_group_ci(per_user, n_resamples=300, seed=124)
    assert first == again
    assert first != other


def test_bootstrap_ci_lower_confidence_is_narrower():
    per_user = _random_per_user(100, seed=2)
    wide = bootstrap_group_ci(per_user, n_resamples=500, confidence=0.95, seed=0)
    narrow = bootstrap_group_ci(per_user, n_resamples=500, confidence=0.5, seed=0)
    assert narrow["gap"][1] - narrow["gap"][0] < wide["gap"][1] - wide["gap"][0]


@pytest.mark.parametrize("minority", [[], [0.6]], ids=["no-minority", "one-minority-user"])
def test_bootstrap_ci_too_few_users_is_nan(minority):
    """Guards degenerate groups: fewer than two users gives [nan, nan] (no crash from scipy) for it and the gap."""
    ci = bootstrap_group_ci(_per_user([0.7, 0.8, 0.9], minority), n_resamples=200)
    assert all(math.isnan(v) for v in ci["minority"] + ci["gap"])
    assert ci["majority"][0] <= 0.8 <= ci["majority"][1]


def test_bootstrap_ci_constant_group_is_point():
    """Guards constant accuracies: the CI is exactly [est, est] with est the group mean, so it contains it."""
    ci = bootstrap_group_ci(_per_user([0.7, 0.7, 0.7], [0.6, 0.6]), n_resamples=200)
    major, minor = float(np.mean([0.7, 0.7, 0.7])), float(np.mean([0.6, 0.6]))
    assert ci["majority"] == [major, major] and major == pytest.approx(0.7)
    assert ci["minority"] == [minor, minor]
    assert ci["gap"] == [major - minor, major - minor] and ci["gap"][0] == pytest.approx(0.1)


def test_bootstrap_ci_one_constant_group_still_resamples_gap():
    ci = bootstrap_group_ci(_per_user([0.6, 0.8, 0.9, 1.0], [0.5, 0.5]), n_resamples=300)
    assert ci["minority"] == [0.5, 0.5]  # mean of two equal floats is exact
    assert ci["gap"][0] < ci["gap"][1]
    assert ci["gap"][0] <= 0.825 - 0.5 <= ci["gap"][1]


@pytest.mark.parametrize(("kwargs", "match"),
                         [({"n_resamples": 0}, "n_resamples"), ({"confidence": 1.0}, "confidence")])
def test_bootstrap_ci_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_group_ci(_per_user([0.7, 0.8], [0.5, 0.6]), **kwargs)


# ----------------------------------------------------------------------------------------------- evaluate

HAND = _per_user(
    [0.8, 0.9, 1.0], [0.5, 0.6], support_major=[0.7, 0.8, 0.9], support_minor=[0.2, 0.3], n_pairs=[10, 10, 20, 10, 10]
)


def _leaves(obj):
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _leaves(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _leaves(value)
    else:
        yield obj


def test_evaluate_keys_exact_and_json():
    """Guards evaluate()'s contract with the app and CLI: exact keys, plain Python leaves, strict JSON."""
    out = evaluate(HAND, n_resamples=200)
    assert set(out) == {"accuracy", "accuracy_ci", "unfairness", "by_decile"}
    assert set(out["accuracy"]) == {"overall", "micro", "majority", "minority"}
    assert set(out["accuracy_ci"]) == {"majority", "minority", "gap"}
    assert all(len(v) == 2 for v in out["accuracy_ci"].values())
    assert set(out["unfairness"]) == {"group_gap", "user_std", "gini", "worst10", "support_spearman"}
    assert isinstance(out["by_decile"], list) and out["by_decile"]
    for leaf in _leaves(out):
        assert leaf is None or type(leaf) in (float, int), type(leaf)
    for value in (*out["accuracy"].values(), *out["unfairness"].values()):
        assert type(value) is float
    json.dumps(out, allow_nan=False)


def test_evaluate_hand_computed():
    out = evaluate(HAND, n_resamples=200)
    acc, unfair = out["accuracy"], out["unfairness"]
    assert acc["overall"] == pytest.approx(3.8 / 5)  # (0.8 + 0.9 + 1.0 + 0.5 + 0.6) / 5, each user equal
    assert acc["micro"] == pytest.approx(48 / 60)  # (8 + 9 + 20 + 5 + 6) correct of 60 pairs
    assert acc["majority"] == pytest.approx(0.9)
    assert acc["minority"] == pytest.approx(0.55)
    assert unfair["group_gap"] == pytest.approx(0.35)
    # deviations from 0.76: 0.04 0.14 0.24 −0.26 −0.16; squares sum to 0.172; ddof=0 → √(0.172 / 5)
    assert unfair["user_std"] == pytest.approx(math.sqrt(0.0344))
    # unordered |diffs| of 0.5 0.6 0.8 0.9 1.0 sum to 2.6 → 5.2 ordered; 2 · 25 · 0.76 = 38
    assert unfair["gini"] == pytest.approx(5.2 / 38)
    assert unfair["worst10"] == pytest.approx(0.5)  # ceil(0.5) = 1 user
    assert unfair["support_spearman"] == pytest.approx(1.0)  # support and accuracy ranks agree exactly
    assert sum(r["n_users"] for r in out["by_decile"]) == 5


def test_evaluate_micro_passed_in_wins():
    assert evaluate(HAND, n_resamples=50, micro_accuracy=0.777)["accuracy"]["micro"] == pytest.approx(0.777)


def test_evaluate_nan_becomes_none():
    """Guards strict JSON when metrics are undefined: no minority users and constant accuracy."""
    per_user = _per_user([0.7, 0.7, 0.7], [])
    out = evaluate(per_user, n_resamples=50)
    assert out["accuracy"]["minority"] is None
    assert out["unfairness"]["group_gap"] is None
    assert out["unfairness"]["support_spearman"] is None
    assert out["accuracy_ci"]["minority"] == [None, None]
    assert out["accuracy_ci"]["majority"] == [out["accuracy"]["majority"]] * 2
    assert out["accuracy"]["majority"] == pytest.approx(0.7)
    json.dumps(out, allow_nan=False)


def test_evaluate_drops_users_without_accuracy():
    per_user = HAND.copy()
    per_user.loc[len(per_user)] = {"user": 99, "group": "minority", "support_rate": 0.1, "n_pairs": 0,
                                   "accuracy": np.nan}
    assert evaluate(per_user, n_resamples=50) == evaluate(HAND, n_resamples=50)


@pytest.mark.parametrize("column", ["user", "group", "support_rate", "n_pairs", "accuracy"])
def test_evaluate_missing_column_named(column):
    with pytest.raises(ValueError, match=f"'{column}'"):
        evaluate(HAND.drop(columns=column))


def test_evaluate_bad_group_and_accuracy():
    with pytest.raises(ValueError, match="group"):
        evaluate(HAND.assign(group=["majority", "majority", "other", "minority", "minority"]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate(HAND.assign(accuracy=[0.8, 0.9, 1.2, 0.5, 0.6]))
    with pytest.raises(ValueError, match="no user"):
        evaluate(HAND.assign(accuracy=np.nan))


def test_error_messages_are_exported_constants():
    assert "MSG_MISSING_COLUMN" in metrics.__all__
    assert all(hasattr(metrics, name) for name in metrics.__all__)


# ----------------------------------------------------------------------------------------------- pareto

BASE = {"majority": 0.80, "minority": 0.60}


@pytest.mark.parametrize(
    ("majority", "minority", "expected"),
    [
        (0.80, 0.62, True),  # minority up, majority unchanged
        (0.81, 0.62, True),  # both up
        (0.797, 0.62, True),  # majority down 0.3 points, within 0.5
        (0.795, 0.62, True),  # majority down exactly epsilon: not "beyond" epsilon
        (0.794, 0.62, False),  # majority down 0.6 points
        (0.80, 0.60, False),  # minority not up
        (0.85, 0.59, False),  # minority down
        (0.79, 0.59, False),  # both down
        (None, 0.62, False),  # unknown majority
        (0.80, float("nan"), False),  # unknown minority
    ],
)
def test_pareto_improvement_truth_table(majority, minority, expected):
    assert pareto_improvement({"majority": majority, "minority": minority}, BASE) is expected


def test_pareto_improvement_reads_a_methods_group_accuracies():
    baseline = MethodResult(**evaluate(HAND, n_resamples=50)).accuracy
    better = MethodResult(**evaluate(HAND.assign(accuracy=[0.8, 0.9, 1.0, 0.6, 0.7]), n_resamples=50)).accuracy
    assert pareto_improvement(better, baseline)
    assert not pareto_improvement(baseline, better)


def test_pareto_improvement_epsilon():
    method = {"majority": 0.79, "minority": 0.65}
    assert not pareto_improvement(method, BASE)
    assert pareto_improvement(method, BASE, epsilon=0.02)
    assert not pareto_improvement({"majority": 0.799, "minority": 0.65}, BASE, epsilon=0.0)
    with pytest.raises(ValueError, match="epsilon"):
        pareto_improvement(method, BASE, epsilon=-0.01)
    with pytest.raises(ValueError, match="minority"):
        pareto_improvement({"majority": 0.8}, BASE)


def test_calibration_by_hand():
    """Log-loss is −log σ(m) per pair; a model that is right with margins far too large has a large ECE."""
    from pafo.metrics import calibration

    margins = np.array([2.0, -1.0, 0.5, 3.0])
    groups = np.array(["majority", "majority", "minority", "minority"])
    result = calibration(margins, groups)
    expected = np.mean([np.log1p(np.exp(-m)) for m in margins])
    assert result["overall"]["log_loss"] == pytest.approx(expected, rel=1e-12)
    assert result["minority"]["log_loss"] == pytest.approx(np.mean(np.log1p(np.exp(-margins[2:]))), rel=1e-12)
    assert result["majority"]["n_pairs"] == 2
    # Half right at claimed confidence ~1: the calibration error is about one half.
    overconfident = calibration(np.array([30.0, -30.0, 30.0, -30.0]), groups)
    assert overconfident["overall"]["ece"] == pytest.approx(0.5, abs=1e-6)
    honest = calibration(np.zeros(4), groups)
    assert honest["overall"]["ece"] == pytest.approx(0.0, abs=1e-12)
