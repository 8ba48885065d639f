"""Preference clusters (pafo.clusters), the wide student and the mixture method (issue 9)."""

from __future__ import annotations

import copy
import dataclasses
import inspect

import numpy as np
import pytest
import torch
from safetensors.torch import load, save
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score

from pafo import methods as methods_mod
from pafo.clusters import discover, fit_clusters, oriented_differences, pair_subspace
from pafo.methods import PAFOConfig, baseline_output, fit_method, preference_clusters
from pafo.models import WideRewardModel, build_model
from pafo.sources import DataConfig, load_dataset
from pafo.training import PairSet, pair_margins

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = PAFOConfig(restarts=4, clusters=3, subspaces="4,6")


@pytest.fixture
def ctx(method_ctx):
    return method_ctx


def _planted(n_users: int = 60, per_user: int = 12, dim: int = 5, seed: int = 0):
    """Oriented pair differences of users from two clusters with opposite tastes along the first axis."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n_users) % 2
    direction = np.where(truth == 0, 1.0, -1.0)[:, None] * np.eye(dim)[0] * 4
    users = np.repeat(np.arange(n_users), per_user)
    d = rng.standard_normal((len(users), dim))
    sign = np.where((d * direction[users]).sum(1) >= 0, 1.0, -1.0)  # each user labels by its cluster's taste
    return d * sign[:, None], users, truth


def test_em_recovers_planted_clusters():
    """Two clusters with opposite tastes are found exactly, and each user's direction points its cluster's way."""
    x, users, truth = _planted()
    fit = fit_clusters(x, users, len(truth), n_clusters=2, restarts=6, user_vectors=np.eye(len(truth), 3) + 1,
                       ridge=1.0, max_rounds=20, seed=0)
    for restart in range(6):
        assert adjusted_rand_score(truth, fit.assignments[restart]) == 1.0
    assert (np.sign(fit.directions[:, 0]) == np.where(truth == 0, 1, -1)).all()
    assert (fit.rounds <= 20).all() and np.isfinite(fit.objective).all()


def test_one_cluster_is_a_single_linear_bt_teacher():
    """C = 1 reduces to one teacher for everybody: the ridge logistic regression on all oriented differences.

    Σ softplus(−a·x) + ridge/2·|a|² is sklearn's objective on {(x, 1), (−x, 0)} with C = 1 / (2·ridge).
    """
    x, users, truth = _planted()
    ridge = 2.0
    fit = fit_clusters(x, users, len(truth), n_clusters=1, restarts=3, user_vectors=np.ones((len(truth), 2)),
                       ridge=ridge, max_rounds=20, seed=0)
    reference = LogisticRegression(C=1 / (2 * ridge), fit_intercept=False, tol=1e-10, max_iter=1000).fit(
        np.vstack([x, -x]), np.r_[np.ones(len(x)), np.zeros(len(x))]).coef_[0]
    np.testing.assert_allclose(fit.directions, np.broadcast_to(reference, fit.directions.shape), atol=1e-4)
    assert (fit.assignments == 0).all()


def test_subspace_is_whitened_and_ignores_the_prompt_half():
    """E spans pair differences only (the prompt half of φ cancels); its projections have unit mean square on
    average over the directions."""
    rng = np.random.default_rng(1)
    response, prompt = rng.standard_normal((40, 6)), rng.standard_normal((10, 6))
    features = np.hstack([response, prompt[np.arange(40) // 4]])
    chosen, rejected = np.arange(0, 40, 2), np.arange(1, 40, 2)  # pairs within a prompt
    basis = pair_subspace(features, chosen, rejected, 3)
    assert basis.shape == (3, 12) and np.abs(basis[:, 6:]).max() == 0
    x = oriented_differences(features, basis, chosen, rejected)
    np.testing.assert_allclose((x**2).mean(0).mean(), 1.0, rtol=1e-8)
    assert (x**2).mean(0)[0] > (x**2).mean(0)[-1]  # not whitened: principal directions keep their order


def _spy_discover(monkeypatch) -> list:
    seen = []
    original = methods_mod.discover

    def spy(features, chosen, rejected, users, n_users, **kwargs):
        seen.append((chosen.copy(), rejected.copy(), users.copy()))
        return original(features, chosen, rejected, users, n_users, **kwargs)

    monkeypatch.setattr(methods_mod, "discover", spy)
    return seen


def _flipped_val(ctx):
    flipped = copy.copy(ctx)
    flipped.cache = {}
    flipped.val = PairSet(ctx.val.rejected, ctx.val.chosen, ctx.val.users, group=ctx.val.group)
    return flipped


def test_em_without_cluster_val_never_sees_validation_or_test_labels(ctx, monkeypatch):
    """Regression: with cluster_val off, clusters come from training pairs only; flipping every validation label
    changes nothing."""
    seen = _spy_discover(monkeypatch)
    config = dataclasses.replace(FAST, cluster_val=False)
    base = baseline_output(ctx, (0.0, 1.0)).model
    first = preference_clusters(ctx, config, base)
    second = preference_clusters(_flipped_val(ctx), config, base)
    for chosen, rejected, users in seen:
        np.testing.assert_array_equal(chosen, ctx.train.chosen)
        np.testing.assert_array_equal(rejected, ctx.train.rejected)
        np.testing.assert_array_equal(users, ctx.train.users)
    np.testing.assert_array_equal(first.directions, second.directions)


def test_em_reads_training_and_validation_pairs_by_default_never_test(ctx, monkeypatch):
    """Issue 20 (second pass): by default the cluster step reads the training pairs followed by the validation
    pairs (so a validation label moves the users' directions) and no test pair."""
    seen = _spy_discover(monkeypatch)
    base = baseline_output(ctx, (0.0, 1.0)).model
    first = preference_clusters(ctx, FAST, base)
    chosen, rejected, users = seen[-1]
    np.testing.assert_array_equal(chosen, np.r_[ctx.train.chosen, ctx.val.chosen])
    np.testing.assert_array_equal(rejected, np.r_[ctx.train.rejected, ctx.val.rejected])
    np.testing.assert_array_equal(users, np.r_[ctx.train.users, ctx.val.users])
    second = preference_clusters(_flipped_val(ctx), FAST, base)
    assert not np.allclose(first.directions, second.directions)
    assert methods_mod.cluster_key(FAST) != methods_mod.cluster_key(dataclasses.replace(FAST, cluster_val=False))


def test_a_user_with_only_a_validation_pair_gets_a_direction(ctx):
    """The validation pairs place users: a user whose training pairs are removed keeps a direction from its
    validation pair with cluster_val on, and gets none (zero) without it."""
    base = baseline_output(ctx, (0.0, 1.0)).model
    lone = int(ctx.val.users[0])
    trimmed = copy.copy(ctx)
    trimmed.cache = {}
    trimmed.train = ctx.train.subset(np.flatnonzero(ctx.train.users != lone))
    on = preference_clusters(trimmed, FAST, base)
    off = preference_clusters(trimmed, dataclasses.replace(FAST, cluster_val=False), base)
    assert np.abs(on.directions[lone]).sum() > 0
    assert not off.directions[lone].any()


def test_wide_student_takes_user_ids_only_and_keeps_the_baseline_channel(ctx):
    """The student's forward has no group or cluster input; with β = 0 it is exactly the baseline."""
    assert list(inspect.signature(WideRewardModel.forward).parameters) == ["self", "features", "users"]
    base = baseline_output(ctx, (0.0, 1.0)).model
    no_teacher = PAFOConfig(restarts=4, clusters=3, subspaces="4,6", beta=0.0, calibrate=False)
    off = fit_method("pafo", ctx, no_teacher, (0.0, 1.0)).model
    np.testing.assert_allclose(pair_margins(off, ctx.features, ctx.val), pair_margins(base, ctx.features, ctx.val),
                               rtol=1e-5, atol=1e-6)
    on = fit_method("pafo", ctx, FAST, (0.0, 1.0)).model
    assert not np.allclose(pair_margins(on, ctx.features, ctx.val), pair_margins(base, ctx.features, ctx.val))


def test_wide_model_round_trips_through_safetensors_and_its_config(ctx):
    """A saved wide student (weights + JSON config, no pickle) rebuilds to the same margins."""
    model = fit_method("pafo", ctx, FAST, (0.0, 1.0)).model
    rebuilt = build_model(model.config())
    rebuilt.load_state_dict(load(save({k: v.contiguous() for k, v in model.state_dict().items()})))
    np.testing.assert_array_equal(pair_margins(model, ctx.features, ctx.val),
                                  pair_margins(rebuilt, ctx.features, ctx.val))
    assert torch.equal(rebuilt.shared_vector()[-model.rank:], torch.zeros(model.rank))


@pytest.mark.parametrize("em", ["soft", "hard"])
def test_mixture_scores_each_user_with_its_clusters_teacher_alone(ctx, em):
    """mixture: r = a_{c(u)}·Eφ with the lowest-objective run's clusters (soft EM: each user's most probable
    cluster there); the baseline channel is off."""
    output = fit_method("mixture", ctx, dataclasses.replace(FAST, cluster_em=em), (0.0, 1.0))
    fit = output.extra["clusters"]
    x = oriented_differences(ctx.features.numpy(), fit.basis, ctx.val.chosen, ctx.val.rejected)
    expected = (x * fit.teachers[fit.best][fit.assignments[fit.best][ctx.val.users]]).sum(1)
    np.testing.assert_allclose(pair_margins(output.model, ctx.features, ctx.val), expected, rtol=1e-4, atol=1e-5)


def test_distilled_student_is_the_baseline_architecture_chosen_by_teacher_agreement(ctx, monkeypatch):
    """student=distilled: a plain RewardModel trained from the baseline, its epoch chosen on teacher-labelled
    held-out pairs (not the 1-pair-per-user validation set)."""
    calls, original = [], methods_mod.MethodContext.fit

    def spy(self, model, train, val, stage, span, **kwargs):
        calls.append((stage, val))
        return original(self, model, train, val, stage, span, **kwargs)

    monkeypatch.setattr(methods_mod.MethodContext, "fit", spy)
    config = PAFOConfig(restarts=4, clusters=3, subspaces="4,6", student="distilled", dense=4, heldout=5)
    output = fit_method("pafo", ctx, config, (0.0, 1.0))
    assert type(output.model).__name__ == "RewardModel"
    stage, val = calls[-1]
    assert stage == "student" and len(val) == 5 * ctx.n_users
    teacher_margins = pair_margins(output.extra["teacher"], ctx.features, val)
    assert (teacher_margins >= 0).all()  # held-out pairs are oriented by the teacher: accuracy = agreement


def test_discover_is_deterministic(ctx):
    """Same seed and data → the same clusters and directions (k-means starts are seeded)."""
    features = ctx.features.numpy()
    args = (features, ctx.train.chosen, ctx.train.rejected, ctx.train.users, ctx.n_users)
    vectors = np.random.default_rng(0).standard_normal((ctx.n_users, 2))
    for em, sizes in (("soft", (4, 6)), ("hard", (6,))):
        kwargs = {"sizes": sizes, "em": em, "n_clusters": 3, "restarts": 4, "user_vectors": vectors, "ridge": 1.0,
                  "max_rounds": 20, "seed": 0}
        a, b = discover(*args, **kwargs), discover(*args, **kwargs)
        np.testing.assert_array_equal(a.directions, b.directions)
        np.testing.assert_array_equal(a.assignments, b.assignments)


@pytest.mark.parametrize("cluster_val", [False, True])
def test_calibration_rescales_margins_without_changing_any_sign(ctx, cluster_val):
    """The fitted temperature changes confidence, never a preference: same signs, one factor for every pair; where
    it is fitted on the model itself (clusters on training pairs only) the validation log-loss goes down."""
    config = dataclasses.replace(FAST, cluster_val=cluster_val)
    raw = fit_method("pafo", ctx, dataclasses.replace(config, calibrate=False), (0.0, 1.0)).model
    calibrated = fit_method("pafo", ctx, config, (0.0, 1.0)).model
    for pairs in (ctx.val, ctx.train):
        a, b = pair_margins(raw, ctx.features, pairs), pair_margins(calibrated, ctx.features, pairs)
        np.testing.assert_array_equal(np.sign(a), np.sign(b))
        ratio = b[a != 0] / a[a != 0]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)  # one temperature for every pair
    if not cluster_val:
        loss = [np.mean(np.logaddexp(0, -pair_margins(m, ctx.features, ctx.val))) for m in (raw, calibrated)]
        assert loss[1] <= loss[0] + 1e-9


def test_calibration_is_fitted_where_users_were_placed_without_their_validation_pair(ctx):
    """Regression (issue 20, second pass): with the validation labels in the cluster step, a temperature fitted on
    the model itself made PAFO overconfident (DSP test log-loss 0.83 against 0.64, development seeds). The
    temperature is fitted on a probe whose users are placed by their training pairs alone and then applied."""
    base = baseline_output(ctx, (0.0, 1.0)).model
    clusters = preference_clusters(ctx, FAST, base)
    x = oriented_differences(ctx.features.numpy(), clusters.basis, ctx.train.chosen, ctx.train.rejected)
    probe = methods_mod.wide_model(ctx, base, dataclasses.replace(
        clusters, directions=clusters.posterior_directions(x, ctx.train.users, ctx.n_users)), FAST.beta)
    expected = methods_mod.calibrate_temperature(probe, ctx.features, ctx.val)
    naive = methods_mod.wide_model(ctx, base, clusters, FAST.beta)
    in_sample = methods_mod.calibrate_temperature(naive, ctx.features, ctx.val)
    calibrated = fit_method("pafo", ctx, FAST, (0.0, 1.0)).model
    raw = fit_method("pafo", ctx, dataclasses.replace(FAST, calibrate=False), (0.0, 1.0)).model
    ratio = pair_margins(raw, ctx.features, ctx.train) / pair_margins(calibrated, ctx.features, ctx.train)
    np.testing.assert_allclose(np.median(ratio), expected, rtol=1e-4)
    assert not np.isclose(expected, in_sample)


def test_per_user_fit_matches_sklearn_per_user():
    """The batched per-user fit behind the representation ceiling equals one sklearn regression per user."""
    from pafo.clusters import per_user_fit

    x, users, truth = _planted(n_users=6, per_user=10, dim=3)
    directions = per_user_fit(x, users, len(truth), ridge=0.5)
    for user in range(len(truth)):
        d = x[users == user]
        reference = LogisticRegression(C=1.0, fit_intercept=False, tol=1e-10, max_iter=1000).fit(
            np.vstack([d, -d]), np.r_[np.ones(len(d)), np.zeros(len(d))]).coef_[0]
        np.testing.assert_allclose(directions[user], reference, atol=1e-4)


def test_experiment_reports_ceilings_marked_as_diagnostics(ctx):
    """Ceilings read test labels (and true personas): each row says whether it is an oracle."""
    from pafo.diagnostics import ceiling_summary, ceilings

    fit_method("pafo", ctx, FAST, (0.0, 1.0))
    ds = load_dataset(DataConfig(users=30, prompts=16, responses_per_prompt=4, train_pairs=8, test_pairs=4, seed=0))
    test = PairSet(*(ds.split("test")[c].to_numpy(np.int64) for c in ("chosen", "rejected", "user")))
    summary = ceiling_summary(ceilings(ctx, test, ds, FAST), ctx.user_group)
    assert summary["per-user fit on the baseline's g(φ)"]["oracle"] is False
    assert summary["oracle: PAFO with the true preference clusters"]["oracle"] is True
    assert all(0 <= row["majority"] <= 1 for row in summary.values())
