"""Diagnostics beside the methods: what the preference clusters are, and how much a method could gain.

Nothing here is used for training or selection: cluster reports read test pairs to *describe* the clusters that
EM found on training pairs, and the ceilings read test pairs (and, on simulated data, the true personas) to show
the headroom. Each function says which.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression, Ridge

from .clusters import oriented_differences
from .training import PairSet, pair_margins

__all__ = ["cluster_report", "model_features", "predicted_scores", "representation_ceiling", "user_accuracy_of"]


def user_accuracy_of(margins: np.ndarray, users: np.ndarray) -> pd.Series:
    """Each user's share of pairs with a positive margin (a tie counts a half)."""
    correct = (margins > 0) + 0.5 * (margins == 0)
    return pd.Series(correct).groupby(users).mean()


def cluster_report(output, ctx, test: PairSet, per_user: pd.DataFrame, support, groups) -> dict:
    """The clusters of the lowest-objective EM restart (ā_u averages every restart): per cluster its size, mean
    support rate, group (minority when the mean support is at or below the grouping threshold), and on its users'
    test pairs the accuracy of its own linear teacher, of the baseline and of the method (a description only)."""
    fit = output.extra["clusters"]
    best = fit.best
    assigned = fit.assignments[best]
    x = oriented_differences(ctx.features.numpy(), fit.basis, test.chosen, test.rejected)
    baseline = user_accuracy_of(pair_margins(ctx.cache["baseline"].model, ctx.features, test), test.users)
    method = per_user.set_index("user")["accuracy"]
    rows = []
    for cluster in range(fit.teachers.shape[1]):
        users = np.flatnonzero(assigned == cluster)
        if not len(users):
            continue
        on_test = np.isin(test.users, users)
        teacher = user_accuracy_of(x[on_test] @ fit.teachers[best, cluster], test.users[on_test])
        mean_support = float(support.user_support.to_numpy()[users].mean())
        rows.append({
            "cluster": cluster, "n_users": len(users), "mean_support": mean_support,
            "minority_share": float(np.mean(ctx.user_group[users] == 1)),
            "group": "minority" if mean_support <= groups.threshold else "majority",
            "teacher_accuracy": float(teacher.mean()), "baseline_accuracy": float(baseline[users].mean()),
            "method_accuracy": float(method[users].mean()),
        })
    return {"restarts": int(fit.teachers.shape[0]), "reported_restart": best,
            "mean_em_rounds": float(fit.rounds.mean()), "clusters": rows}


def representation_ceiling(features: np.ndarray, train: PairSet, test: PairSet, n_users: int,
                           representations: dict[str, np.ndarray], c: float = 1.0) -> dict:
    """Per-user logistic regressions on each user's own training pairs, over each representation (rows aligned
    with ``features``), scored on that user's test pairs: how much a representation lets a user's few labels
    say. A diagnostic: it reads test labels and is never used by training."""
    out = {}
    for name, rows in representations.items():
        accuracy = np.full(n_users, np.nan)
        for user in range(n_users):
            tr, te = train.users == user, test.users == user
            if not tr.any() or not te.any():
                continue
            d = rows[train.chosen[tr]] - rows[train.rejected[tr]]
            x = np.vstack([d, -d])  # both orientations: a balanced problem with no intercept
            y = np.r_[np.ones(len(d)), np.zeros(len(d))]
            fit = LogisticRegression(C=c, fit_intercept=False, max_iter=200).fit(x, y)
            margins = (rows[test.chosen[te]] - rows[test.rejected[te]]) @ fit.coef_[0]
            accuracy[user] = user_accuracy_of(margins, np.zeros(te.sum(), dtype=int)).iloc[0]
        out[name] = accuracy
    return out


def model_features(model, features: torch.Tensor) -> np.ndarray:
    """g(φ) of a trained model, for ``representation_ceiling``."""
    with torch.no_grad():
        return model.features(features).numpy()


def predicted_scores(rows: np.ndarray, scores: np.ndarray, fit_rows: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """The judges' scores predicted linearly (ridge) from a representation, fitted on ``fit_rows`` (e.g. the
    responses of training prompts): how much of each judge a representation keeps. An oracle diagnostic on
    simulated data, where the true scores exist."""
    return Ridge(alpha=alpha).fit(rows[fit_rows], scores[fit_rows]).predict(rows)
