"""Unseen users: hold some users out of all training, then personalise each from a few of their own pairs.

A deployed reward model meets new users every day; a personalised one can only fit them from the few pairs they
give. ``run.unseen_users`` (a share of users) and ``run.shots`` (pair counts k) measure that:

1. **Hold out** (:func:`split_users`): the share of users, stratified by a first grouping of *all* users (support
   rates as today), leaves the seed's data before anything trains (:func:`user_subset`). The run then computes
   support rates and groups on the training users alone, as any run does.
2. **Group the new users** (:func:`heldout_support`): each held-out user's support rate is measured on their own
   training pairs *against the training population* (the same estimator as the run's), and the run's minority cut
   assigns the group. Groups are for reporting only; nothing below reads them.
3. **Personalise** (:class:`NewUsers`): with every shared part of a trained model frozen, each held-out user's
   first k pairs (their training pairs, then their validation pairs: they trained nothing) give

   - ``w_u``: the minimiser of Σ_p softplus(−(b + w_u)·Δg_p) + λ·|w_u|², the baseline's own loss and ridge prior.
     The trainer's penalty is ``user_l2`` × the mean over users of |w_u|², added to every batch's mean pair loss,
     so per user it weighs λ = ``user_l2`` × training pairs per user (:func:`ridge_of`). All users at once by
     damped Newton steps on (users × k × k) Hessians: a new user costs about a millisecond.
   - PAFO's cluster channel: ā_u = Σ_c q_uc a_c averaged over the EM runs, with q_uc ∝ π_c Π_p σ(a_c·x_p) over the
     same k pairs (:meth:`pafo.clusters.ClusterFit.posterior_directions`, teachers and π frozen).
   - the mixture's: the teacher of the user's most probable cluster in the lowest-objective run (its own rule).

   Every method sees the same k pairs of the same users (paired). ``bt`` has no user part and scores as is.
4. **Score** each held-out user's test pairs: one row per (k, user) with ``acc_<method>``
   (:func:`unseen_table`), pooled into the result's ``unseen`` block by :func:`pafo.results.pool_unseen`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from .clusters import ClusterFit, oriented_differences
from .dataset import PreferenceDataset
from .errors import PafoInputError
from .metrics import pair_correct
from .models import RewardModel, WideRewardModel, build_model
from .paths import atomic_write_bytes, atomic_write_text
from .support import BLOCK_ELEMENTS, MIN_COLABELLERS, NO_PERSONAS
from .training import PairSet, pair_margins

__all__ = [
    "MSG_TOO_FEW_USERS",
    "RULES",
    "NewUsers",
    "fit_user_vectors",
    "heldout_groups",
    "heldout_support",
    "ridge_of",
    "shot_pairs",
    "split_users",
    "unseen_table",
    "user_subset",
]

#: How a method's cluster channel places a new user: none (no channel), the posterior mean averaged over every EM
#: run (PAFO's wide student), or the most probable cluster's teacher in the best run (the mixture).
RULES = ("none", "posterior", "map")
#: The fields of a method's ClusterFit that a run folder keeps for new users (weights/<method>.clusters.safetensors).
STORED_FIT_ARRAYS = ("teachers", "log_weights", "basis", "objective")
#: The random stream of the hold-out draw (apart from the data's and the training's streams of the same seed).
HOLDOUT_STREAM = 22
MSG_TOO_FEW_USERS = ("--unseen-users {fraction:g}: the {group} group has only {count} users, too few to hold one "
                     "out and keep two to train on; use more users or leave out --unseen-users")
NEWTON_STEPS, NEWTON_TOL, BACKTRACKS, ARMIJO = 50, 1e-9, 30, 1e-4


# ------------------------------------------------------------------------------------------- holding users out


def split_users(strata: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training users, held-out users), sorted positions: ``fraction`` of each stratum's users held out (rounded,
    at least one), each stratum keeping at least two training users (a stratum of fewer than three is refused)."""
    rng = np.random.default_rng([seed, HOLDOUT_STREAM])
    held = []
    for group in sorted(set(strata.tolist())):
        rows = np.flatnonzero(strata == group)
        n_out = min(max(round(fraction * len(rows)), 1 if fraction > 0 else 0), len(rows) - 2)
        if n_out < (1 if fraction > 0 else 0):
            raise PafoInputError(MSG_TOO_FEW_USERS.format(fraction=fraction, count=len(rows), group=group))
        held.append(rng.choice(rows, size=n_out, replace=False))
    heldout = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(strata)), heldout), heldout


def user_subset(dataset: PreferenceDataset, users: np.ndarray) -> PreferenceDataset:
    """The dataset of ``users`` alone (positions, sorted): their pairs, renumbered, and their rows; the responses
    (so the feature rows) are unchanged."""
    position = np.full(dataset.n_users, -1, dtype=np.int64)
    position[users] = np.arange(len(users))
    pairs = dataset.pairs[position[dataset.pairs["user"].to_numpy()] >= 0].copy()
    pairs["user"] = position[pairs["user"].to_numpy()]
    return dataclasses.replace(
        dataset, pairs=pairs.reset_index(drop=True), users=dataset.users.iloc[users].reset_index(drop=True),
        persona_weights=None if dataset.persona_weights is None else dataset.persona_weights[users])


def _pairs_of(dataset: PreferenceDataset, users: np.ndarray, splits: tuple[str, ...]) -> pd.DataFrame:
    """The pairs of ``users`` in ``splits``, ``user`` renumbered to positions in ``users``, in split order then
    dataset order."""
    position = np.full(dataset.n_users, -1, dtype=np.int64)
    position[users] = np.arange(len(users))
    pairs = dataset.pairs[dataset.pairs["split"].isin(splits)]
    pairs = pairs[position[pairs["user"].to_numpy()] >= 0].assign(
        user=lambda p: position[p["user"].to_numpy()], rank=lambda p: p["split"].map(splits.index))
    return pairs.reset_index(names="pair").sort_values(["user", "rank", "pair"], kind="stable")


def heldout_support(dataset: PreferenceDataset, train_users: np.ndarray, heldout: np.ndarray, estimator: str,
                    features: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each held-out user's support rate: the mean over their training pairs of the share of the *training*
    population that agrees with their label (spec §3, with the population fixed to the users the run trained on).
    ``estimator`` is the run's (exact, colabel or model); a user without a co-labelled pair falls back to model."""
    pairs = _pairs_of(dataset, heldout, ("train",))
    if estimator == "exact":
        per_pair = _exact_agreement(dataset, train_users, pairs)
    else:
        per_pair = _colabel_agreement(dataset, train_users, pairs) if estimator == "colabel" else \
            np.full(len(pairs), np.nan)
        users_missing = pd.Series(per_pair).groupby(pairs["user"].to_numpy()).count() == 0
        fallback = np.isin(pairs["user"].to_numpy(), users_missing.index[users_missing.to_numpy()])
        if fallback.any():
            per_pair[fallback] = _model_agreement(dataset, train_users, pairs[fallback], features, seed)
    means = pd.Series(per_pair).groupby(pairs["user"].to_numpy()).mean()
    return means.reindex(range(len(heldout))).to_numpy(dtype=float)


def _exact_agreement(dataset: PreferenceDataset, population: np.ndarray, pairs: pd.DataFrame) -> np.ndarray:
    """Share of the population whose persona labels each pair as the user did (ties count one half, as the exact
    estimator counts them), in blocks of pairs so memory stays at ~``BLOCK_ELEMENTS`` margins."""
    if dataset.persona_weights is None or dataset.base_scores is None:
        raise PafoInputError(NO_PERSONAS.format(name=dataset.name))
    diff = dataset.base_scores[pairs["chosen"].to_numpy()] - dataset.base_scores[pairs["rejected"].to_numpy()]
    weights = dataset.persona_weights[population]
    step = max(1, BLOCK_ELEMENTS // max(len(population), 1))
    return np.concatenate([(np.sign(diff[i:i + step] @ weights.T) + 1.0).mean(1) / 2.0
                           for i in range(0, len(diff), step)]) if len(diff) else np.zeros(0)


def _colabel_agreement(dataset: PreferenceDataset, population: np.ndarray, pairs: pd.DataFrame) -> np.ndarray:
    """Share of the population's labels on the same two responses that agree (NaN under the estimator's minimum
    of other labellers)."""
    theirs = _pairs_of(dataset, population, ("train",))
    key = pd.MultiIndex.from_arrays([np.minimum(theirs["chosen"], theirs["rejected"]),
                                     np.maximum(theirs["chosen"], theirs["rejected"])])
    votes = pd.Series(1.0, index=key).groupby(level=[0, 1]).sum()
    same = pd.Series(1.0, index=pd.MultiIndex.from_arrays([key.get_level_values(0), key.get_level_values(1),
                                                           theirs["chosen"].to_numpy()])).groupby(level=[0, 1, 2]).sum()
    low, high = np.minimum(pairs["chosen"], pairs["rejected"]), np.maximum(pairs["chosen"], pairs["rejected"])
    total = votes.reindex(pd.MultiIndex.from_arrays([low, high])).fillna(0).to_numpy()
    agree = same.reindex(pd.MultiIndex.from_arrays([low, high, pairs["chosen"]])).fillna(0).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total >= MIN_COLABELLERS - 1, agree / total, np.nan)


def _model_agreement(dataset: PreferenceDataset, population: np.ndarray, pairs: pd.DataFrame,
                     features: np.ndarray, seed: int) -> np.ndarray:
    """σ(margin) of a non-personalised Bradley–Terry model fitted on the population's training pairs."""
    from sklearn.linear_model import LogisticRegression

    theirs = _pairs_of(dataset, population, ("train",))
    x = features[theirs["chosen"].to_numpy()] - features[theirs["rejected"].to_numpy()]
    model = LogisticRegression(C=1.0, fit_intercept=False, max_iter=1000, random_state=seed).fit(
        np.vstack([x, -x]), np.r_[np.ones(len(x)), np.zeros(len(x))])
    return model.predict_proba(features[pairs["chosen"].to_numpy()] - features[pairs["rejected"].to_numpy()])[:, 1]


def heldout_groups(support: np.ndarray, threshold: float) -> np.ndarray:
    """The run's minority cut applied to new users: minority at or below it, as :func:`pafo.support.assign_groups`."""
    return np.where(support <= threshold, "minority", "majority")


def shot_pairs(dataset: PreferenceDataset, heldout: np.ndarray, k: int) -> PairSet:
    """Each held-out user's first ``k`` pairs (training pairs, then validation pairs, in the data's order; fewer
    when the user has fewer), users numbered by their position in ``heldout``."""
    pairs = _pairs_of(dataset, heldout, ("train", "val"))
    pairs = pairs[pairs.groupby("user").cumcount() < k]
    return _pair_set(pairs)


def test_pairs(dataset: PreferenceDataset, heldout: np.ndarray) -> PairSet:
    """The held-out users' test pairs, users numbered by their position in ``heldout``."""
    return _pair_set(_pairs_of(dataset, heldout, ("test",)))


test_pairs.__test__ = False  # a library function, not a pytest test


def _pair_set(pairs: pd.DataFrame) -> PairSet:
    return PairSet(*(pairs[c].to_numpy(np.int64, copy=True) for c in ("chosen", "rejected", "user")))


# ------------------------------------------------------------------------------------------- personalising


def ridge_of(user_l2: float, train: PairSet) -> float:
    """The per-user ridge λ the trainer's penalty amounts to: ``user_l2`` × training pairs per trained user."""
    return float(user_l2) * len(train) / max(len(np.unique(train.users)), 1)


@torch.no_grad()
def fit_user_vectors(model: RewardModel, features: torch.Tensor, pairs: PairSet, n_users: int,
                     ridge: float) -> torch.Tensor:
    """(n_users, k): each user's w_u = argmin Σ_{p∈u} softplus(−(b + w_u)·Δg_p) + ridge·|w_u|² with g and b frozen,
    by damped Newton steps for all users at once (users without pairs get 0, the model's fallback).

    A full Newton step overshoots when a user's labels contradict b (their margins start far on the wrong side,
    where the logistic curvature is tiny), so each user's step is halved until their objective falls enough
    (Armijo backtracking); the objective is strictly convex, so this converges to the one minimum."""
    k = model.b.shape[0]
    w = torch.zeros(n_users, k, dtype=torch.float64)
    if not len(pairs):
        return w
    g = RewardModel.features(model, features).double().cpu()  # the base channel (a wide model's unscaled g)
    delta = g[torch.tensor(pairs.chosen)] - g[torch.tensor(pairs.rejected)]  # copies: the arrays may be read-only
    users = torch.tensor(pairs.users)
    b = model.b.double().cpu()
    outer = delta[:, :, None] * delta[:, None, :]
    damping = 2.0 * max(ridge, 1e-6) * torch.eye(k, dtype=torch.float64)

    def objective(vectors: torch.Tensor) -> torch.Tensor:
        losses = torch.nn.functional.softplus(-((b + vectors[users]) * delta).sum(-1))
        return torch.zeros(n_users, dtype=torch.float64).index_add_(0, users, losses) + ridge * (vectors**2).sum(1)

    current = objective(w)
    for _ in range(NEWTON_STEPS):
        p = torch.sigmoid(((b + w[users]) * delta).sum(-1))
        grad = torch.zeros_like(w).index_add_(0, users, -(1 - p)[:, None] * delta) + 2.0 * ridge * w
        hessian = torch.zeros(n_users, k, k, dtype=torch.float64).index_add_(
            0, users, (p * (1 - p))[:, None, None] * outer) + damping
        step = torch.linalg.solve(hessian, grad)
        decrease = (grad * step).sum(1)  # > 0: the Newton direction goes downhill
        size = torch.ones(n_users, dtype=torch.float64)
        for _ in range(BACKTRACKS):
            trial = objective(w - size[:, None] * step)
            short = trial > current - ARMIJO * size * decrease
            if not short.any():
                break
            size = torch.where(short, size / 2, size)
        w -= size[:, None] * step
        current = objective(w)
        if float((size[:, None] * step).abs().max()) < NEWTON_TOL:
            break
    return w


@dataclass
class NewUsers:
    """What personalising new users with one trained model needs, frozen: the ridge of its user prior and, for a
    model with a cluster channel, the cluster fit and the rule that places a user in it (:data:`RULES`)."""

    ridge: float
    rule: Literal["none", "posterior", "map"] = "none"
    clusters: ClusterFit | None = None

    def best_cluster(self, features: np.ndarray, pairs: PairSet, n_users: int) -> np.ndarray:
        """Each user's most probable cluster in the lowest-objective EM run, from their pairs (−1 without pairs):
        what the cluster posterior recovers, for diagnostics (cluster recovery against shots)."""
        fit = self.clusters
        x = oriented_differences(features, fit.basis, pairs.chosen, pairs.rejected)
        cluster = fit.posterior(x, pairs.users, n_users)[fit.best].argmax(-1)
        return np.where(np.bincount(pairs.users, minlength=n_users) > 0, cluster, -1)

    def directions(self, features: np.ndarray, pairs: PairSet, n_users: int) -> np.ndarray:
        """(n_users, r): each user's cluster-channel weights from their pairs (0 without pairs)."""
        fit = self.clusters
        if self.rule == "posterior":
            x = oriented_differences(features, fit.basis, pairs.chosen, pairs.rejected)
            return fit.posterior_directions(x, pairs.users, n_users)
        cluster = self.best_cluster(features, pairs, n_users)
        return np.where((cluster >= 0)[:, None], fit.teachers[fit.best][np.maximum(cluster, 0)], 0.0)

    def personalise(self, model: RewardModel, features: torch.Tensor, pairs: PairSet, n_users: int) -> RewardModel:
        """A copy of ``model`` whose ``n_users`` users are the users of ``pairs``, each fitted from their own pairs
        (w_u, and the cluster channel by the rule); the shared parts are the model's own."""
        if model.w is None:  # one reward for everybody: nothing to personalise
            return model
        new = build_model({**model.config(), "n_users": n_users})
        state = {k: v for k, v in model.state_dict().items() if k not in ("w.weight", "a.weight")}
        new.load_state_dict(state, strict=False)
        with torch.no_grad():
            new.w.weight.copy_(fit_user_vectors(model, features, pairs, n_users, self.ridge).float())
            if isinstance(new, WideRewardModel):
                channel = np.zeros((n_users, new.rank)) if self.rule == "none" or self.clusters is None else \
                    self.directions(features.cpu().numpy(), pairs, n_users)
                new.a.weight.copy_(torch.from_numpy(channel).float())
        return new.eval()

    # -- stored beside a run's weights, so `pafo score --user-pairs` personalises as the run's evaluation did

    def save(self, folder: Path, method: str) -> None:
        """``<method>.newusers.json`` (ridge and rule) and, with a cluster channel, ``<method>.clusters.safetensors``
        (teachers, cluster weights, basis, objectives), each written atomically."""
        from safetensors.numpy import save

        atomic_write_text(folder / f"{method}.newusers.json",
                          json.dumps({"ridge": self.ridge, "rule": self.rule}, indent=2))
        if self.clusters is not None and self.rule != "none":
            fit = self.clusters
            arrays = {name: getattr(fit, name) for name in STORED_FIT_ARRAYS}
            atomic_write_bytes(folder / f"{method}.clusters.safetensors",
                               save({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()}))

    @classmethod
    def load(cls, folder: Path, method: str) -> NewUsers | None:
        """What :meth:`save` wrote (``None`` when the run stored nothing for ``method``: a run from before unseen
        users); ``ValueError`` when the files are damaged."""
        spec = folder / f"{method}.newusers.json"
        if not spec.is_file():
            return None
        stored = json.loads(spec.read_text(encoding="utf-8"))
        rule = stored.get("rule", "none")
        if rule not in RULES or not isinstance(stored.get("ridge"), int | float):
            raise ValueError(f"{spec.name} names no ridge or an unknown rule {rule!r}")
        clusters = None
        if rule != "none":
            from safetensors.numpy import load_file

            arrays = load_file(str(folder / f"{method}.clusters.safetensors"))
            teachers = arrays.pop("teachers")  # the rest are ClusterFit fields of their own names
            runs = len(teachers)
            clusters = ClusterFit(teachers=teachers, assignments=np.zeros((runs, 0), dtype=np.int64),
                                  directions=np.zeros((0, teachers.shape[-1])), rounds=np.zeros(runs, dtype=np.int64),
                                  em="soft", **arrays)
        return cls(float(stored["ridge"]), rule, clusters)


# ------------------------------------------------------------------------------------------- evaluating


def unseen_table(models: dict[str, tuple[RewardModel, NewUsers]], features: torch.Tensor,
                 dataset: PreferenceDataset, heldout: np.ndarray, groups: np.ndarray, support: np.ndarray,
                 shots: list[int], seed: int) -> pd.DataFrame:
    """One row per k and held-out user: who they are, their pairs and each method's test accuracy after
    personalising from their first k pairs (the same pairs for every method); for a method with a cluster channel
    also ``cluster_<method>``, the user's most probable cluster in its best EM run, and for simulated users their
    ``dominant`` judge (what cluster recovery is measured against)."""
    test = test_pairs(dataset, heldout)
    numpy_features = features.cpu().numpy()
    n = len(heldout)
    n_test = np.bincount(test.users, minlength=n)
    frames = []
    for k in shots:
        pairs = shot_pairs(dataset, heldout, k)
        frame = pd.DataFrame({"seed": seed, "shots": k, "user": np.arange(n),
                              "user_id": dataset.users["user_id"].to_numpy()[heldout], "group": groups,
                              "support_rate": support, "n_shots": np.bincount(pairs.users, minlength=n),
                              "n_test": n_test})
        for name, (model, new_users) in models.items():
            personal = new_users.personalise(model, features, pairs, n)
            correct = pd.Series(pair_correct(pair_margins(personal, features, test))).groupby(test.users).mean()
            frame[f"acc_{name}"] = correct.reindex(range(n)).to_numpy()
            if new_users.rule != "none" and new_users.clusters is not None:
                frame[f"cluster_{name}"] = new_users.best_cluster(numpy_features, pairs, n)
        if "dominant" in dataset.users and dataset.users["dominant"].notna().any():
            frame["dominant"] = dataset.users["dominant"].to_numpy()[heldout]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
