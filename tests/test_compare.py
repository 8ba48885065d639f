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
    assert result.verdict == expected
    majority = result.delta("majority")
    assert majority.ci[0] <= majority.delta <= majority.ci[1]
    assert result.delta("minority").delta == pytest.approx(mino, abs=0.02)
    assert result.n_seeds == 3 and result.n_users == 600


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
        assert result.delta(name).delta == 0.0
        assert result.delta(name).ci == (0.0, 0.0)
    assert result.verdict == "noise"


def test_same_seed_same_result():
    tables = _tables(0.01, 0.03, noise=0.05)
    assert paired_comparison(tables, "pafo", seed=3) == paired_comparison(tables, "pafo", seed=3)


def test_counted_ranks_of_resamples_equal_rankdata_and_the_comparison_is_unchanged(monkeypatch):
    """Issue 24: the paired bootstrap counts each resample's Spearman ranks from its users' positions among the
    observed values instead of sorting every resample (28 s of a 30,000-user run): the same ranks as
    scipy.stats.rankdata (ties averaged) and the same comparison, bit for bit."""
    from scipy import stats

    from pafo import compare as compare_module
    from pafo.metrics import resampled_ranks

    rng = np.random.default_rng(3)
    values = np.round(rng.random(300), 1)  # heavy ties
    distinct, inverse = np.unique(values, return_inverse=True)
    index = rng.integers(0, len(values), (40, len(values)))
    np.testing.assert_array_equal(resampled_ranks(inverse[index], len(distinct)),
                                  stats.rankdata(values[index], axis=-1))
    n = 400
    table = pd.DataFrame({"group": np.where(rng.random(n) < 0.3, "minority", "majority"),
                          "support_rate": np.round(rng.random(n), 2), "acc_m": rng.integers(0, 11, n) / 10,
                          "acc_baseline": rng.integers(0, 11, n) / 10, "n_test": 10})
    counted = paired_comparison([table], "m", n_resamples=300, seed=1).to_json()

    def sorting_every_resample(group, values, index):  # the statistics as they were: rankdata on every row
        return compare_module._statistics(group[index], *(v[index] for v in values))

    monkeypatch.setattr(compare_module, "_bootstrap_statistics", sorting_every_resample)
    assert counted == paired_comparison([table], "m", n_resamples=300, seed=1).to_json()
