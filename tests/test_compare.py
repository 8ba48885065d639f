"""Paired comparisons and the verdict rule (pafo.compare), on constructed per-user tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pafo.compare import paired_comparison, verdict


def _tables(delta_majority: float, delta_minority: float, *, noise: float = 0.0, seeds: int = 3,
            users: int = 200) -> list[pd.DataFrame]:
    """Per-seed tables where the method shifts each group's accuracy by a known amount (plus paired noise)."""
    tables = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        group = np.where(np.arange(users) < users // 5, "minority", "majority")
        support = rng.uniform(0.3, 0.9, users)
        reference = np.clip(0.5 + 0.4 * support + rng.normal(0, 0.05, users), 0, 1)
        shift = np.where(group == "minority", delta_minority, delta_majority)
        method = np.clip(reference + shift + rng.normal(0, noise, users), 0, 1)
        tables.append(pd.DataFrame({"group": group, "support_rate": support, "acc_pafo": method,
                                    "acc_baseline": reference, "n_test": 20}))
    return tables


@pytest.mark.parametrize(("maj", "mino", "noise", "expected"), [
    (0.0, 0.05, 0.01, "pareto"),      # clear minority win, majority unchanged
    (-0.05, -0.05, 0.01, "worse"),    # clear loss on both groups
    (-0.04, 0.06, 0.01, "tradeoff"),  # minority up, majority clearly down
    (0.0, 0.0, 0.10, "noise"),        # no shift, only noise
])
def test_verdict_follows_the_documented_rule(maj, mino, noise, expected):
    """The verdict must come from the paired CIs, not from point estimates."""
    result = paired_comparison(_tables(maj, mino, noise=noise), "pafo", "baseline", n_resamples=400)
    assert result["verdict"] == expected
    assert result["majority"]["ci"][0] <= result["majority"]["delta"] <= result["majority"]["ci"][1]
    assert result["minority"]["delta"] == pytest.approx(mino, abs=0.02)
    assert result["n_seeds"] == 3 and result["n_users"] == 600


def test_pareto_allows_a_majority_dip_within_epsilon():
    """A majority delta of −0.3 points is within ε = 0.5 points: still Pareto when the minority CI is above 0."""
    block = {"delta": -0.003, "ci": [-0.006, -0.001]}
    assert verdict(block, {"delta": 0.03, "ci": [0.01, 0.05]}, epsilon=0.005) == "pareto"
    assert verdict(block, {"delta": 0.03, "ci": [0.01, 0.05]}, epsilon=0.001) == "tradeoff"


def test_missing_group_is_noise():
    assert verdict({"delta": None, "ci": [None, None]}, {"delta": 0.1, "ci": [0.05, 0.2]}) == "noise"


def test_identical_methods_give_zero_deltas():
    """Guards the pairing: a method compared with itself differs by exactly 0 on every statistic."""
    tables = [t.assign(acc_pafo=t["acc_baseline"]) for t in _tables(0, 0)]
    result = paired_comparison(tables, "pafo", "baseline", n_resamples=200)
    for name in ("majority", "minority", "user_std", "support_spearman_abs"):
        assert result[name]["delta"] == 0.0
        assert result[name]["ci"] == [0.0, 0.0]
    assert result["verdict"] == "noise"


def test_same_seed_same_result():
    tables = _tables(0.01, 0.03, noise=0.05)
    assert paired_comparison(tables, "pafo", seed=3) == paired_comparison(tables, "pafo", seed=3)
