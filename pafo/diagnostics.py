"""Diagnostics beside the methods: what the preference clusters are, and how much a method could gain.

Nothing here is used for training or selection: cluster reports read test pairs to *describe* the clusters that
EM found on training pairs, and the ceilings read test pairs (and, on simulated data, the true personas) to show
the headroom. Each function says which.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import Ridge
from threadpoolctl import threadpool_limits

from .clusters import ClusterFit, fit_clusters, oriented_differences, per_user_fit
from .extras import CeilingRow, Ceilings, ClusterReport, ClusterRow, TeacherReport, TeacherStats
from .methods import CLUSTERS, DENSE_PAIRS, TEACHERS
from .metrics import USER_ACCURACY, Group, per_user_accuracy
from .training import PairSet, pair_margins

__all__ = [
    "ceiling_summary",
    "ceilings",
    "cluster_report",
    "method_report",
    "model_features",
    "predicted_scores",
    "representation_ceiling",
    "seed_diagnostics",
    "teacher_report",
    "true_cluster_model",
]


def method_report(output, seen, per_user: pd.DataFrame) -> list:
    """The ``MethodSpec.report`` hook of PAFO and the mixture: the typed extras their fit output carries (the
    teachers of PAFO's support groups, the preference clusters)."""
    extras = []
    if TEACHERS in output.extra:
        extras.append(teacher_report(output, seen))
    if CLUSTERS in output.extra:
        extras.append(cluster_report(output, seen.ctx, seen.test, per_user, seen.support, seen.groups))
    return extras


def teacher_report(output, seen) -> TeacherReport:
    """Each group teacher's test accuracy on its own group next to the baseline's: the advantage PAFO can transfer,
    with whether an epoch met the Pareto selection rule and the teacher-labelled pairs it added."""
    ctx, test = seen.ctx, seen.test
    baseline_margins = pair_margins(ctx.cache["baseline"].model, ctx.features, test)
    teachers = {}
    for group, teacher in output.extra[TEACHERS].items():
        rows = np.flatnonzero(ctx.user_group[test.users] == group)
        subset = test.subset(rows)
        accuracy = {}
        for name, margins in (("teacher", pair_margins(teacher.model, ctx.features, subset)),
                              ("baseline", baseline_margins[rows])):
            accuracy[name] = float(per_user_accuracy(margins, subset.users).mean())
        teachers[Group(group).label] = TeacherStats(
            accuracy["teacher"], accuracy["baseline"], accuracy["teacher"] - accuracy["baseline"],
            teacher.extra["n_train_pairs"], teacher.result.best_epoch, round(teacher.result.seconds, 3))
    return TeacherReport(bool(output.result.selected), teachers, output.extra[DENSE_PAIRS])


def seed_diagnostics(seen) -> list:
    """The diagnostics of a trained seed: the ceilings, whenever a baseline was trained on it (by itself or inside
    PAFO or the mixture); PAFO's options shape its true-cluster row."""
    if "baseline" not in seen.ctx.cache:
        return []
    with threadpool_limits(1):  # small matrices: see pafo.methods.preference_clusters
        rows = ceilings(seen.ctx, seen.test, seen.dataset, seen.options("pafo"))
    return [Ceilings({name: CeilingRow(**row) for name, row in ceiling_summary(rows, seen.ctx.user_group).items()})]


def cluster_report(output, ctx, test: PairSet, per_user: pd.DataFrame, support, groups) -> ClusterReport:
    """The clusters of the lowest-objective EM run (ā_u averages every run; with soft EM each user is counted in
    its most probable cluster there): per cluster its size, mean support rate, group (minority when the mean
    support is at or below the grouping threshold), and on its users' test pairs the accuracy of its own linear
    teacher, of the baseline and of the method (a description only)."""
    fit = output.extra[CLUSTERS]
    best = fit.best
    assigned = fit.assignments[best]
    x = oriented_differences(ctx.features.numpy(), fit.basis, test.chosen, test.rejected)
    baseline = per_user_accuracy(pair_margins(ctx.cache["baseline"].model, ctx.features, test), test.users)
    method = per_user.set_index("user")[USER_ACCURACY]
    rows = []
    for cluster in range(fit.teachers.shape[1]):
        users = np.flatnonzero(assigned == cluster)
        if not len(users):
            continue
        on_test = np.isin(test.users, users)
        teacher = per_user_accuracy(x[on_test] @ fit.teachers[best, cluster], test.users[on_test])
        mean_support = float(support.user_support.to_numpy()[users].mean())
        rows.append(ClusterRow(
            cluster=cluster, n_users=len(users), mean_support=mean_support,
            minority_share=float(np.mean(ctx.user_group[users] == 1)),
            group="minority" if mean_support <= groups.threshold else "majority",
            teacher_accuracy=float(teacher.mean()), baseline_accuracy=float(baseline[users].mean()),
            method_accuracy=float(method[users].mean())))
    sizes = fit.sizes if fit.sizes is not None else np.full(len(fit.teachers), fit.teachers.shape[2])
    return ClusterReport(em=fit.em, restarts=fit.restarts, subspace_sizes=sorted(int(r) for r in set(sizes)),
                         runs=int(fit.teachers.shape[0]), reported_restart=best,
                         mean_em_rounds=float(fit.rounds.mean()), clusters=rows)


def representation_ceiling(train: PairSet, test: PairSet, n_users: int, representations: dict[str, np.ndarray],
                           ridge: float = 0.5) -> dict[str, pd.Series]:
    """Per-user ridge logistic regressions on each user's own training pairs, over each representation (rows
    aligned with the feature rows), scored on that user's test pairs: how much a representation lets a user's few
    labels say. A diagnostic: it reads test labels and is never used by training."""
    out = {}
    for name, rows in representations.items():
        rows = np.asarray(rows, dtype=np.float64)
        directions = per_user_fit(rows[train.chosen] - rows[train.rejected], train.users, n_users, ridge)
        margins = np.einsum("nd,nd->n", rows[test.chosen] - rows[test.rejected], directions[test.users])
        out[name] = per_user_accuracy(margins, test.users)
    return out


def model_features(model, features: torch.Tensor) -> np.ndarray:
    """g(φ) of a trained model, for ``representation_ceiling``."""
    with torch.no_grad():
        return model.features(features).cpu().numpy()


def predicted_scores(rows: np.ndarray, scores: np.ndarray, fit_rows: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """The judges' scores predicted linearly (ridge) from a representation, fitted on ``fit_rows`` (e.g. the
    responses of training prompts): how much of each judge a representation keeps. An oracle diagnostic on
    simulated data, where the true scores exist."""
    return Ridge(alpha=alpha).fit(rows[fit_rows], scores[fit_rows]).predict(rows)


def true_cluster_model(ctx, base, fit: ClusterFit, dataset, config):
    """PAFO's wide student built from the *true* preference clusters (each user's dominant judge) instead of EM's:
    the headroom that better cluster discovery could reach. Oracle: reads the simulated personas."""
    from .methods import cluster_pairs, wide_model

    features = ctx.features.cpu().numpy()
    pairs = cluster_pairs(ctx, config)  # the pairs PAFO's own cluster step read
    x = oriented_differences(features, fit.basis, pairs.chosen, pairs.rejected)
    oracle = fit_clusters(x, pairs.users, ctx.n_users, n_clusters=0, restarts=1, ridge=config.cluster_ridge,
                          user_vectors=np.zeros((ctx.n_users, 1)), max_rounds=0,
                          initial=dataset.persona_weights.argmax(1))
    oracle.basis = fit.basis
    return wide_model(ctx, base, oracle, config.beta)


def ceilings(ctx, test: PairSet, dataset, pafo_config) -> dict[str, pd.Series]:
    """Per-user test accuracy of diagnostic models beside the baseline (each reads test labels; the oracle rows
    also the true personas of simulated data). Uses the context's trained baseline and, when PAFO ran, its
    clusters."""
    base = ctx.cache["baseline"].model
    features, g = ctx.features.cpu().numpy(), model_features(base, ctx.features)
    reps = {"per-user fit on the baseline's g(φ)": g}
    if dataset.base_scores is not None:
        seen = np.unique(np.r_[ctx.train.chosen, ctx.train.rejected])
        reps["oracle: per-user fit on the true judge scores"] = dataset.base_scores
        reps["oracle: per-user fit on judge scores predicted linearly from φ"] = predicted_scores(
            features, dataset.base_scores, seen)
        reps["oracle: per-user fit on judge scores predicted linearly from g(φ)"] = predicted_scores(
            g, dataset.base_scores, seen)
    out = representation_ceiling(ctx.train, test, ctx.n_users, reps)
    fits = [v for k, v in ctx.cache.items() if isinstance(k, tuple) and k[0] == "clusters"]
    if dataset.persona_weights is not None and fits:
        model = true_cluster_model(ctx, base, fits[0], dataset, pafo_config)
        out["oracle: PAFO with the true preference clusters"] = per_user_accuracy(
            pair_margins(model, ctx.features, test), test.users)
    return out


def ceiling_summary(ceilings_by_name: dict[str, pd.Series], user_group: np.ndarray) -> dict:
    """Mean accuracy per group of each ceiling row, for the result JSON."""
    out = {}
    for name, accuracy in ceilings_by_name.items():
        minority = user_group[accuracy.index.to_numpy()] == 1
        out[name] = {"majority": float(accuracy[~minority].mean()) if (~minority).any() else None,
                     "minority": float(accuracy[minority].mean()) if minority.any() else None,
                     "oracle": name.startswith("oracle")}
    return out
