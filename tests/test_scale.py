"""Issue 24 (throughput): the rewritten steps give what the straightforward versions gave, on tiny data.

Each ``_reference_*`` below is the previous implementation (pairs × D differences, pairs × r² outer products, a
pairs × models margin matrix), kept here as the statement of what the blocked / per-unit code must equal. No test
here measures time.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from test_soft_em import reference_soft_em

from pafo import clusters
from pafo.clusters import (
    CoLabels,
    fit_clusters,
    fit_soft_clusters,
    oriented_differences,
    pair_subspace,
    per_user_fit,
)
from pafo.method_configs import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def _reference_pair_subspace(features, chosen, rejected, n_components):
    diff = np.asarray(features[chosen] - features[rejected], dtype=np.float64)
    used = np.flatnonzero(np.any(diff != 0, axis=0))
    values, vectors = np.linalg.eigh(diff[:, used].T @ diff[:, used])
    k = min(n_components, len(used))
    top, values = vectors[:, ::-1][:, :k].T, values[::-1][:k]
    top *= np.where(top.sum(1, keepdims=True) < 0, -1.0, 1.0)
    basis = np.zeros((k, diff.shape[1]))
    basis[:, used] = top / np.sqrt(values.mean() / len(diff))
    return basis


def _reference_per_user_fit(x, pair_users, n_users, ridge, steps=8):
    dim = x.shape[1]
    to_user = sparse.csr_matrix((np.ones(len(x)), (pair_users, np.arange(len(x)))), shape=(n_users, len(x)))
    outer = (x[:, :, None] * x[:, None, :]).reshape(len(x), -1)
    a = np.zeros((n_users, dim))
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.einsum("nd,nd->n", a[pair_users], x)))
        grad = -np.asarray(to_user @ ((1.0 - p)[:, None] * x)) + ridge * a
        hess = np.asarray(to_user @ ((p * (1.0 - p))[:, None] * outer)).reshape(-1, dim, dim)
        a -= np.linalg.solve(hess + ridge * np.eye(dim), grad[:, :, None])[:, :, 0]
    return a


def _labels(n_users=40, per_user=10, n_responses=30, dim=12, seed=0):
    """Features of responses (first 4 columns a shared 'prompt' part, equal for all) and user labels over a
    small pool of response pairs, so most pairs are labelled by several users, some in both orientations."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n_responses, dim)).astype(np.float32)
    features[:, :4] = 1.0
    pool = np.array([(a, b) for a in range(n_responses) for b in range(a + 1, n_responses)])[
        rng.choice(n_responses * (n_responses - 1) // 2, 25, replace=False)]
    picked = pool[rng.integers(0, len(pool), n_users * per_user)]
    flip = rng.random(len(picked)) < 0.5
    chosen, rejected = np.where(flip, picked[:, 1], picked[:, 0]), np.where(flip, picked[:, 0], picked[:, 1])
    return features, chosen, rejected, np.repeat(np.arange(n_users), per_user)


def test_blocked_pair_subspace_and_differences_equal_the_per_pair_versions(monkeypatch):
    """pair_subspace (Gram matrix once per distinct pair × its count) and oriented_differences (once per distinct
    ordered pair) give the per-pair computation's basis and rows, also when the blocks split the pairs."""
    features, chosen, rejected, _users = _labels()
    monkeypatch.setattr(clusters, "BLOCK", 7)  # several blocks, unevenly filled
    basis = pair_subspace(features, chosen, rejected, 5)
    np.testing.assert_allclose(basis, _reference_pair_subspace(features, chosen, rejected, 5), rtol=1e-9, atol=1e-12)
    assert not basis[:, :4].any()  # the shared 'prompt' columns cancel
    x = oriented_differences(features, basis, chosen, rejected)
    expected = np.asarray(features[chosen] - features[rejected], dtype=np.float64) @ basis.T
    np.testing.assert_allclose(x, expected, rtol=1e-12, atol=1e-12)
    same = (chosen[:, None] == chosen[None]) & (rejected[:, None] == rejected[None])
    i, j = np.nonzero(same & ~np.eye(len(chosen), dtype=bool))
    assert len(i) and np.array_equal(x[i], x[j])  # the same labelled pair gives byte-identical rows


def test_blocked_per_user_sums_equal_the_pairs_times_r2_versions(monkeypatch):
    """per_user_fit and hard EM's Hessian bounds sum Σ x xᵀ per user one block of pairs at a time: same result as
    the pairs × r² matrix."""
    rng = np.random.default_rng(1)
    users = np.sort(rng.integers(0, 25, 400))
    x = rng.standard_normal((400, 4))
    monkeypatch.setattr(clusters, "BLOCK", 3)  # blocks of 3 · 16 / 4² = 3 pairs
    np.testing.assert_allclose(per_user_fit(x, users, 27, ridge=0.5), _reference_per_user_fit(x, users, 27, 0.5),
                               rtol=1e-9, atol=1e-12)
    repeated = x[rng.integers(0, 30, 400)]  # few distinct rows: the weights are summed per user and row first
    np.testing.assert_allclose(per_user_fit(repeated, users, 27, ridge=0.5),
                               _reference_per_user_fit(repeated, users, 27, 0.5), rtol=1e-9, atol=1e-12)
    outer = sparse.csr_matrix((np.ones(400), (users, np.arange(400))), shape=(27, 400)) @ (
        x[:, :, None] * x[:, None, :]).reshape(400, -1)
    np.testing.assert_allclose(clusters._outer_per_user(x, users, 27), outer, rtol=1e-12, atol=1e-12)
    initial = rng.integers(0, 3, 27)
    fit = fit_clusters(x, users, 27, n_clusters=3, restarts=1, user_vectors=np.zeros((27, 1)), max_rounds=0,
                       initial=initial)
    assert fit.teachers.shape == (1, 3, 4) and np.isfinite(fit.objective).all()


def test_units_group_identical_pairs_and_lone_pairs_skip_the_colabel_loop():
    """Pairs with the same oriented difference and co-label cell are one unit; a pair nobody else labelled is
    'lone' (exactly σ), every other pair goes through the per-pair co-label loop."""
    features, chosen, rejected, users = _labels()
    basis = pair_subspace(features, chosen, rejected, 6)
    x = oriented_differences(features, basis, chosen, rejected)
    colabels = CoLabels.of(chosen, rejected)
    pairs = clusters._UserPairs(x, users, 40, "cpu", colabels)
    distinct = len(np.unique(np.stack([chosen, rejected], 1), axis=0))
    assert pairs.n_units == distinct < len(x) / 5
    lone = np.bincount(colabels.key)[colabels.key] == 1
    assert len(pairs.shared_users) == int((~lone).sum())
    plain = clusters._UserPairs(x, users, 40, "cpu")
    assert plain.n_units == distinct and not plain.colabelled


@pytest.mark.parametrize("weight", [0.0, 3.0])
def test_per_unit_soft_em_agrees_with_the_reference_loop_on_shared_and_lone_pairs(weight):
    """The per-unit EM (margins, gradients and bounds once per unit; the co-label blend per pair) equals the
    one-run-at-a-time per-pair reference on labels where most pairs are shared by several users, some users
    label the same pair twice, and a few pairs are labelled by one user only."""
    features, chosen, rejected, users = _labels(n_users=24, per_user=8, seed=4)
    rng = np.random.default_rng(2)
    lone = rng.choice(len(chosen), 6, replace=False)  # give a few labels pairs nobody else has
    chosen[lone], rejected[lone] = 30 + 2 * np.arange(6), 31 + 2 * np.arange(6)
    features = np.vstack([features, rng.standard_normal((12, features.shape[1])).astype(np.float32)])
    basis = pair_subspace(features, chosen, rejected, 4)
    x = oriented_differences(features, basis, chosen, rejected)
    colabels = CoLabels.of(chosen, rejected)
    assert (np.bincount(colabels.key)[colabels.key] == 1).sum() == 6
    n_users, n_clusters, sizes, restarts = 24, 2, (3, 4), 2
    initial = rng.integers(0, n_clusters, size=(len(sizes) * restarts, n_users))
    kwargs = {"n_clusters": n_clusters, "ridge": 1.0, "max_rounds": 8, "tol": 1e-3}
    fit = fit_soft_clusters(x, users, n_users, restarts=restarts, user_vectors=np.zeros((n_users, 2)),
                            sizes=sizes, initial=initial, colabels=colabels, colabel_weight=weight, **kwargs)
    ref = reference_soft_em(x, users, n_users, initial, sizes,
                            colabels=(colabels.key, colabels.sign, weight) if weight else None, **kwargs)
    np.testing.assert_array_equal(fit.rounds, ref["rounds"])
    np.testing.assert_allclose(fit.teachers, ref["teachers"], atol=2e-4, rtol=1e-3)
    np.testing.assert_allclose(fit.directions, ref["directions"], atol=2e-4, rtol=1e-3)
    np.testing.assert_allclose(fit.objective, ref["objective"], rtol=1e-4)
    np.testing.assert_array_equal(fit.assignments, ref["q"].argmax(-1).T)  # the same clusters


def test_batches_per_epoch_are_capped_by_growing_the_batch():
    """``max_batches`` leaves small training sets at ``batch_size`` (the default configs' results unchanged) and
    makes a large one's batches larger, so an epoch has at most ``max_batches`` steps."""
    config = TrainConfig()
    assert config.batch_for(2_100) == config.batch_size == 256
    assert config.batch_for(256 * config.max_batches) == 256
    big = 900_000
    assert -(-big // config.batch_for(big)) <= config.max_batches < -(-big // 256)


def test_paired_bootstrap_in_blocks_of_resamples_gives_the_same_comparison(monkeypatch):
    """The paired bootstrap evaluates its statistics a block of resamples at a time (memory bounded whatever
    resamples × users is); the comparison is identical to evaluating all resamples at once."""
    import pandas as pd

    from pafo import compare

    rng = np.random.default_rng(0)
    tables = [pd.DataFrame({"group": np.where(rng.random(300) < 0.25, "minority", "majority"),
                            "support_rate": rng.random(300), "acc_pafo": rng.random(300),
                            "acc_baseline": rng.random(300), "n_test": 20, "seed": seed}) for seed in range(2)]
    whole = compare.paired_comparison(tables, "pafo", n_resamples=200).to_json()
    monkeypatch.setattr(compare, "BOOTSTRAP_BLOCK", 7 * 300 + 5)  # 7 resamples per block, the last one short
    assert compare.paired_comparison(tables, "pafo", n_resamples=200).to_json() == whole


def test_per_user_outer_sums_count_repeated_rows_once():
    """Unweighted, Σ x xᵀ per user forms each distinct row once and counts it per user: the same sums as the
    per-pair outer products when many users label the same pairs."""
    rng = np.random.default_rng(3)
    pool = rng.standard_normal((6, 3))
    users = np.repeat(np.arange(10), 5)
    x = pool[rng.integers(0, 6, 50)]
    expected = sparse.csr_matrix((np.ones(50), (users, np.arange(50))), shape=(11, 50)) @ (
        x[:, :, None] * x[:, None, :]).reshape(50, -1)
    np.testing.assert_allclose(clusters._outer_per_user(x, users, 11), expected, rtol=1e-12, atol=1e-12)


def test_penalty_over_every_user_reads_the_table_with_the_same_value_and_gradient():
    """UserPenalty over all users reads the embedding table itself instead of gathering every row: the value and
    the gradient are bit-identical to the gathered version (so training results are unchanged)."""
    import torch

    from pafo.models import RewardModel
    from pafo.training import PairSet, UserPenalty

    torch.manual_seed(0)
    model = RewardModel(6, 5)
    torch.nn.init.normal_(model.w.weight)
    pairs = PairSet(np.zeros(9, dtype=int), np.ones(9, dtype=int), np.arange(9) % 5)
    penalty = UserPenalty.for_pairs(0.3, pairs, distilled=False)
    value = penalty(model)
    value.backward()
    gradient = model.w.weight.grad.clone()
    model.w.weight.grad = None
    gathered = penalty.strength * penalty.scale * model.user_penalty(torch.arange(5))
    gathered.backward()
    assert value.item() == gathered.item() and torch.equal(gradient, model.w.weight.grad)
    partial = UserPenalty.for_pairs(0.3, pairs.subset(np.flatnonzero(pairs.users < 3)), distilled=False)
    assert len(partial.users) == 3 and partial(model).item() != value.item()


def test_distinct_rows_are_numpy_unique_of_the_row_bytes():
    """_distinct_rows (a 64-bit hash of each row, then a byte check) numbers rows exactly as np.unique over the rows'
    bytes does, which the EM's unit order (and so its float sums) depends on; also for rows whose width is not a
    multiple of 8 bytes (the byte-sort fallback) and for -0.0 against 0.0 (different bytes, different rows)."""
    rng = np.random.default_rng(4)
    for rows in (rng.integers(-2, 3, (500, 3)).astype(np.float64), rng.integers(-2, 3, (300, 3)).astype(np.float32),
                 np.array([[0.0, 1.0], [-0.0, 1.0], [0.0, 1.0]])):
        first, inverse = clusters._distinct_rows(rows)
        view = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.itemsize * rows.shape[1]))).ravel()
        _, expected_first, expected_inverse = np.unique(view, return_index=True, return_inverse=True)
        assert np.array_equal(first, expected_first) and np.array_equal(inverse, expected_inverse.ravel())


def test_posterior_directions_per_distinct_row_and_block_of_users_match_the_per_pair_product(monkeypatch):
    """ClusterFit.posterior places users from log σ once per distinct row and a block of users at a time (issue 24:
    the per-pair version held a pairs × runs·C matrix, 9 GB at 30,000 × 32): bit for bit the per-pair sums."""
    features, chosen, rejected, users = _labels()
    basis = pair_subspace(features, chosen, rejected, 4)
    x = oriented_differences(features, basis, chosen, rejected)
    rng = np.random.default_rng(5)
    fit = clusters.ClusterFit(teachers=rng.standard_normal((3, 2, 4)), assignments=None, directions=None,
                              objective=None, rounds=None, log_weights=np.log(rng.dirichlet(np.ones(2), 3)))
    to_user = sparse.csr_matrix((np.ones(len(x)), (users, np.arange(len(x)))), shape=(41, len(x)))
    log_sigma = -clusters._softplus(-(x @ fit.teachers.reshape(-1, 4).T))
    loglik = np.asarray(to_user @ log_sigma).reshape(41, 3, 2) + fit.log_weights[None]
    q = np.exp(loglik - loglik.max(-1, keepdims=True))
    q = np.moveaxis(q / q.sum(-1, keepdims=True), 0, 1)
    np.testing.assert_allclose(fit.posterior(x, users, 41), q, rtol=1e-12, atol=1e-15)
    expected = np.einsum("rnc,rcd->nd", q, fit.teachers) / 3
    expected[40] = 0.0  # user 40 has no pairs
    monkeypatch.setattr(clusters, "USER_BLOCK", 7)
    monkeypatch.setattr(clusters, "PAIR_BLOCK", 5)
    np.testing.assert_allclose(fit.posterior_directions(x, users, 41), expected, rtol=1e-12, atol=1e-15)


def test_prompts_of_users_are_pandas_unique_per_user_in_order_of_appearance():
    """build_context lists each user's training prompts without a Python call per user (issue 24: 4 s at 30,000
    users, 40 s at 300,000): the same arrays, in the same order (dense pairs draw from them in that order), as
    pandas' groupby-unique, with an empty array for a user without pairs."""
    import pandas as pd

    from pafo.experiment import _prompts_of_users

    rng = np.random.default_rng(6)
    pairs = pd.DataFrame({"user": rng.integers(0, 9, 200), "prompt_id": rng.integers(0, 15, 200)})
    pairs = pairs[pairs["user"] != 4]  # user 4 has no pairs
    unique = pairs.groupby("user")["prompt_id"].unique()
    expected = [np.asarray(unique.get(u, []), dtype=np.int64) for u in range(10)]
    got = _prompts_of_users(pairs, 10)
    assert len(got) == 10 and all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    assert len(got[4]) == 0 and len(got[9]) == 0


def test_keep_freed_memory_sets_glibcs_thresholds_once():
    """The run's process keeps freed memory in its heap (issue 24: 9.5 s of page faults in a 30,000 × 32 cluster
    step): mallopt accepts both thresholds on glibc, and the setting is made once per process."""
    import platform

    from pafo.allocator import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt only")
    assert keep_freed_memory() is True and keep_freed_memory.cache_info().currsize == 1
