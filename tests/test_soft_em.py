"""PAFO's default cluster step: soft EM on the mixture likelihood, batched over restarts and subspace sizes (issue 20).

``reference_soft_em`` below is the plain, one-run-at-a-time statement of the algorithm (each run in its own
subspace coordinates, one cluster at a time); the batched torch implementation must give the same teachers,
posteriors, rounds and objective.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli
from sklearn.metrics import adjusted_rand_score

from pafo.clusters import CoLabels, discover, fit_soft_clusters, nested_scales
from pafo.errors import PafoInputError
from pafo.methods import PAFOConfig, baseline_output, fit_method, preference_clusters

pytestmark = pytest.mark.usefixtures("single_thread")


def _softplus(z):
    return np.logaddexp(0.0, z)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _ref_m_step(xr, pair_users, a, q, ridge, steps):
    """``steps`` Böhning-bound Newton steps for each cluster's weighted ridge BT teacher, one cluster at a time."""
    for _ in range(steps):
        new = a.copy()
        for c in range(len(a)):
            w = q[pair_users, c]
            bound = 0.25 * (xr * w[:, None]).T @ xr + ridge * np.eye(xr.shape[1])
            grad = -((w * _sigmoid(-(xr @ a[c])))[:, None] * xr).sum(0) + ridge * a[c]
            new[c] = a[c] - np.linalg.solve(bound, grad)
        a = new
    return a


def _ref_loglik(xr, pair_users, n_users, a, colabels=None, q=None):
    """(n_users, C): Σ_{p∈u} log P(label p | c): σ(a_c·x_p), or with ``colabels`` (key, sign, w) blended with the
    other labels of the same pair, each weighing as its labeller's posterior q_vc of being in c."""
    prob = _sigmoid(np.stack([xr @ a_c for a_c in a], 1))  # (pairs, C)
    if colabels is not None:
        key, sign, w = colabels
        blended = prob.copy()
        for p in range(len(xr)):
            others = [o for o in np.flatnonzero(key == key[p]) if o != p]
            mass = sum(q[pair_users[o]] for o in others) if others else 0.0
            agree = sum(q[pair_users[o]] for o in others if sign[o] == sign[p]) if others else 0.0
            blended[p] = (prob[p] + w * agree) / (1 + w * mass)
        prob = blended
    return np.stack([np.bincount(pair_users, np.log(np.maximum(prob[:, c], 1e-6)), minlength=n_users)
                     for c in range(len(a))], 1)


def _ref_posterior(loglik, log_pi):
    z = loglik + log_pi
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def reference_soft_em(x, pair_users, n_users, initial, sizes, n_clusters, ridge, max_rounds, tol, colabels=None):
    """One run at a time, one cluster at a time, in float64: the algorithm as written in pafo.clusters.

    A run in size r works in its own coordinates f·x[:, :r] (f: unit mean square) with the plain ridge; its
    teachers are written back into the full coordinates as f·a, zero-padded."""
    runs, dim = len(initial), x.shape[1]
    scales = dict(zip(sizes, nested_scales(x, sizes), strict=True))
    size_of_run = np.repeat(sizes, runs // len(sizes))
    has = np.bincount(pair_users, minlength=n_users) > 0
    out = {"teachers": np.zeros((runs, n_clusters, dim)), "q": np.zeros((n_users, runs, n_clusters)),
           "log_weights": np.zeros((runs, n_clusters)), "rounds": np.zeros(runs, int), "objective": np.zeros(runs)}
    for run in range(runs):
        r = size_of_run[run]
        f = scales[r]
        xr = f * x[:, :r]
        q = np.eye(n_clusters)[initial[run]]
        a = _ref_m_step(xr, pair_users, np.zeros((n_clusters, r)), q, ridge, 6)
        log_pi = np.full(n_clusters, -np.log(n_clusters))
        for _ in range(max_rounds):
            new_q = _ref_posterior(_ref_loglik(xr, pair_users, n_users, a, colabels, q), log_pi)
            if np.abs(new_q - q)[has].max() <= tol:
                break
            out["rounds"][run] += 1
            q, log_pi = new_q, np.log(new_q[has].mean(0))
            a = _ref_m_step(xr, pair_users, a, q, ridge, 2)
        a = _ref_m_step(xr, pair_users, a, q, ridge, 4)
        loglik = _ref_loglik(xr, pair_users, n_users, a)
        out["objective"][run] = (-np.logaddexp.reduce((loglik + log_pi)[has], axis=1).sum()
                                 + 0.5 * ridge * (a**2).sum())
        out["q"][:, run] = _ref_posterior(_ref_loglik(xr, pair_users, n_users, a, colabels, q), log_pi)
        out["teachers"][run, :, :r] = f * a
        out["log_weights"][run] = log_pi
    out["directions"] = np.einsum("nrc,rcd->nd", out["q"], out["teachers"]) / runs
    out["directions"][~has] = 0.0
    return out


def _mixture(n_users=90, per_user=20, dim=6, n_clusters=3, seed=0, noise=0.0):
    """Oriented pair differences of users in ``n_clusters`` clusters, each labelling by its cluster's direction
    (a fraction ``noise`` of labels flipped); users cycle through the clusters."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n_users) % n_clusters
    directions = 3.0 * np.linalg.qr(rng.standard_normal((dim, dim)))[0][:n_clusters]
    users = np.repeat(np.arange(n_users), per_user)
    d = rng.standard_normal((len(users), dim)) * np.linspace(1.5, 0.5, dim)
    sign = np.sign((d * directions[truth[users]]).sum(1))
    sign[rng.random(len(sign)) < noise] *= -1
    return d * sign[:, None], users, truth


def _vectors(n_users: int) -> np.ndarray:
    """Stand-in user vectors for the k-means starts (the baseline's b + w_u in PAFO)."""
    return np.random.default_rng(7).standard_normal((n_users, 3))


def test_soft_em_recovers_a_constructed_mixture():
    """Three clusters of users with different linear tastes, 20 pairs each (10% of labels flipped): the soft
    step's best run puts users in their true clusters (ARI ≥ 0.9), and so does most of its runs."""
    x, users, truth = _mixture(noise=0.1)
    vectors = np.random.default_rng(1).standard_normal((len(truth), 4))  # uninformative: half the starts are random
    fit = fit_soft_clusters(x, users, len(truth), n_clusters=3, restarts=6, user_vectors=vectors, sizes=(4, 6),
                            seed=0)
    assert adjusted_rand_score(truth, fit.assignments[fit.best]) >= 0.9
    scores = [adjusted_rand_score(truth, a) for a in fit.assignments]
    assert np.median(scores) >= 0.9
    assert fit.teachers.shape == (12, 3, 6) and np.all(fit.teachers[fit.sizes == 4][:, :, 4:] == 0)
    np.testing.assert_allclose(np.exp(fit.log_weights).sum(1), 1.0, rtol=1e-5)


def test_batched_soft_em_agrees_with_the_reference_loop():
    """The batched torch EM (all runs and sizes at once, float32 products) equals the one-run-at-a-time float64
    loop from the same starts: teachers, posteriors, weights, rounds and objective. Some runs stop early (tol)."""
    x, users, truth = _mixture(n_users=40, per_user=8, dim=5, noise=0.15, seed=3)
    rng = np.random.default_rng(0)
    sizes, n_clusters, restarts = (3, 5), 3, 4
    initial = rng.integers(0, n_clusters, size=(len(sizes) * restarts, len(truth)))
    kwargs = {"n_clusters": n_clusters, "ridge": 1.0, "max_rounds": 30, "tol": 1e-2}
    fit = fit_soft_clusters(x, users, len(truth), restarts=restarts, user_vectors=np.zeros((len(truth), 2)),
                            sizes=sizes, initial=initial, **kwargs)
    ref = reference_soft_em(x, users, len(truth), initial, sizes, **kwargs)
    assert (ref["rounds"] < kwargs["max_rounds"]).any()  # early stopping is exercised
    np.testing.assert_array_equal(fit.rounds, ref["rounds"])
    np.testing.assert_allclose(fit.teachers, ref["teachers"], atol=2e-4, rtol=1e-3)
    np.testing.assert_allclose(fit.log_weights, ref["log_weights"], atol=1e-4)
    np.testing.assert_allclose(fit.directions, ref["directions"], atol=2e-4, rtol=1e-3)
    np.testing.assert_allclose(fit.objective, ref["objective"], rtol=1e-4)
    np.testing.assert_array_equal(fit.assignments, ref["q"].argmax(-1).T)


def test_batched_colabel_view_agrees_with_the_reference_loop():
    """With co-labels (several users labelling the same pairs), the batched per-pair sums equal the reference's
    explicit loop over each pair's other labellers; and co-labels change the fit (they are used)."""
    rng = np.random.default_rng(5)
    n_users, per_user, dim, n_clusters = 30, 6, 4, 2
    truth = np.arange(n_users) % n_clusters
    pool = rng.standard_normal((20, dim))  # 20 distinct "pairs": users draw from them, so many are co-labelled
    picked = np.stack([rng.choice(len(pool), per_user, replace=False) for _ in range(n_users)]).ravel()
    users = np.repeat(np.arange(n_users), per_user)
    taste = np.where(truth == 0, 1.0, -1.0)[:, None] * np.eye(dim)[0]
    sign = np.sign((pool[picked] * taste[users]).sum(1))
    x = pool[picked] * sign[:, None]
    chosen, rejected = np.where(sign > 0, 2 * picked, 2 * picked + 1), np.where(sign > 0, 2 * picked + 1, 2 * picked)
    colabels = CoLabels.of(chosen, rejected)
    initial = rng.integers(0, n_clusters, size=(2, n_users))
    kwargs = {"n_clusters": n_clusters, "ridge": 1.0, "max_rounds": 6, "tol": 1e-3}
    fit = fit_soft_clusters(x, users, n_users, restarts=2, user_vectors=_vectors(n_users), sizes=(dim,),
                            initial=initial, colabels=colabels, colabel_weight=2.0, **kwargs)
    ref = reference_soft_em(x, users, n_users, initial, (dim,), colabels=(colabels.key, colabels.sign, 2.0),
                            **kwargs)
    np.testing.assert_array_equal(fit.rounds, ref["rounds"])
    np.testing.assert_allclose(fit.teachers, ref["teachers"], atol=2e-4, rtol=1e-3)
    np.testing.assert_allclose(fit.directions, ref["directions"], atol=2e-4, rtol=1e-3)
    plain = fit_soft_clusters(x, users, n_users, restarts=2, user_vectors=_vectors(n_users), sizes=(dim,),
                              initial=initial, **kwargs)
    assert not np.allclose(plain.directions, fit.directions, atol=1e-3)


def test_posterior_of_the_training_pairs_reproduces_the_fitted_directions():
    """The frozen fit (teachers, π per run, basis) is all a new user's posterior needs: on the training pairs
    ``posterior_directions`` gives back ā_u (the path issue 22 takes for unseen users)."""
    x, users, truth = _mixture(n_users=30, per_user=6, noise=0.1)
    fit = fit_soft_clusters(x, users, len(truth), n_clusters=3, restarts=2, user_vectors=_vectors(30),
                            sizes=(4, 6), seed=0)
    np.testing.assert_allclose(fit.posterior_directions(x, users, len(truth)), fit.directions, atol=1e-4)
    assert fit.posterior(x[:0], users[:0], 2).shape == (4, 2, 3)  # no pairs: the prior π
    np.testing.assert_allclose(fit.posterior(x[:0], users[:0], 2)[:, 0], np.exp(fit.log_weights), rtol=1e-6)


def test_users_without_pairs_get_no_direction_and_no_cluster():
    """A user with no training pairs has cluster −1 and a zero direction (the student falls back to the baseline)."""
    x, users, _truth = _mixture(n_users=30, per_user=6)
    keep = users != 7
    fit = fit_soft_clusters(x[keep], users[keep], 30, n_clusters=3, restarts=2, user_vectors=_vectors(30),
                            sizes=(6,), seed=0)
    assert (fit.assignments[:, 7] == -1).all() and not fit.directions[7].any()
    assert fit.directions[6].any()


def test_soft_em_is_deterministic_and_linear_in_users():
    """Same data and seed → identical fit; the memory it holds per user does not grow with the users² (no dense
    users × pairs matrix: it runs at 3,000 users × 8 pairs in a test)."""
    x, users, _truth = _mixture(n_users=3000, per_user=8, dim=8, n_clusters=4, noise=0.1)
    kwargs = {"n_clusters": 4, "restarts": 2, "user_vectors": _vectors(3000), "sizes": (4, 8), "seed": 0,
              "max_rounds": 5}
    a, b = fit_soft_clusters(x, users, 3000, **kwargs), fit_soft_clusters(x, users, 3000, **kwargs)
    np.testing.assert_array_equal(a.directions, b.directions)
    np.testing.assert_array_equal(a.assignments, b.assignments)


def test_subspaces_option_is_checked():
    """--subspaces must be whole numbers within bounds; the message names the flag and how to fix it."""
    assert PAFOConfig(subspaces="32, 16,24").validate().subspace_sizes() == (16, 24, 32)
    for bad in ("", "16,x", "0,8", "16,99999"):
        with pytest.raises(PafoInputError, match="--subspaces"):
            PAFOConfig(subspaces=bad).validate()
    assert PAFOConfig(cluster_em="hard", subspace=12).cluster_sizes() == (12,)


def test_pafo_uses_soft_em_by_default_and_hard_on_request(method_ctx):
    """The default cluster step is the soft mixture (posteriors, π per run, runs over every subspace size); hard
    EM (PAFO v2) stays selectable and gives a different fit; both are cached per option set in ctx.cache."""
    ctx = method_ctx
    base = baseline_output(ctx, (0.0, 1.0)).model
    soft = preference_clusters(ctx, PAFOConfig(restarts=3, clusters=3, subspaces="4,6"), base)
    hard = preference_clusters(ctx, PAFOConfig(restarts=3, clusters=3, subspace=6, cluster_em="hard"), base)
    assert soft.em == "soft" and sorted(set(soft.sizes)) == [4, 6] and len(soft.teachers) == 6
    assert hard.em == "hard" and len(hard.teachers) == 3 and soft.restarts == hard.restarts == 3
    assert not np.allclose(soft.directions, hard.directions)
    output = fit_method("mixture", ctx, PAFOConfig(restarts=3, clusters=3, subspaces="4,6"), (0.0, 1.0))
    assert output.extra["clusters"] is soft  # mixture and PAFO share one fit


def test_discover_soft_sizes_are_nested_in_one_basis(method_ctx):
    """The basis has the largest size's directions; a run in a smaller size only uses its leading ones."""
    ctx = method_ctx
    fit = discover(ctx.features.numpy(), ctx.train.chosen, ctx.train.rejected, ctx.train.users, ctx.n_users,
                   sizes=(3, 6), n_clusters=2, restarts=2, user_vectors=_vectors(ctx.n_users), ridge=1.0,
                   max_rounds=10, seed=0)
    assert fit.basis.shape[0] == 6
    assert np.all(fit.teachers[fit.sizes == 3][:, :, 3:] == 0) and fit.teachers[fit.sizes == 6][:, :, 3:].any()


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--subspaces", "16,x"], "--subspaces"), (["--colabel-weight", "-1"], "--colabel-weight"),
    (["--cluster-em", "kmeans"], "--cluster-em"), (["--em-tol", "2"], "--em-tol")])
def test_cluster_flags_are_checked_by_the_cli(flags, fragment, tmp_path, capsys):
    """A bad cluster option stops `pafo experiment` before any work: exit 2, one stderr line naming the flag."""
    code, out, err = run_cli(["experiment", "--encoder", "tfidf", "--users", "20", *flags,
                              "--json", tmp_path / "r.json"], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "r.json").exists()
