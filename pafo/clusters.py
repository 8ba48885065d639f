"""Preference clusters found on training pairs only, and a linear Bradley–Terry teacher per cluster.

Why (spec §9): the baseline's learned g(φ) is shaped by majority labels and loses directions that minority users
need, while φ itself keeps them. A support-rate minority is also several tastes, so one minority teacher averages
opposing directions. So the teachers here live in a subspace of φ, not of g(φ), and there is one per preference
cluster, not per support group:

1. ``pair_subspace``: E = the top principal directions of the training-pair differences φ⁺ − φ⁻ (uncentred: the
   set {d, −d} is symmetric). The prompt half of φ cancels in a difference, so E spans response directions.
2. ``fit_clusters``: hard EM with C linear BT teachers a_c in that subspace (ridge, no intercept): fit each teacher
   on the pairs of its users, then move every user to the teacher that best explains the user's *own training
   pairs*; repeat. Restarted from several k-means initialisations; every restart is kept and each user's teacher
   direction ā_u is the mean of its cluster's direction over restarts (averaging, not picking the best in-sample
   objective, is what helped on development seeds: wrong clusterings often score higher in-sample).

Validation and test labels never reach this module: it is given the training pairs only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg, sparse
from sklearn.cluster import KMeans

__all__ = ["ClusterFit", "discover", "fit_clusters", "oriented_differences", "pair_subspace", "per_user_fit"]


@dataclass
class ClusterFit:
    """What hard EM found: the subspace, each restart's clusters and teachers, and each user's mean direction."""

    teachers: np.ndarray       # (R, C, r): each restart's teacher directions in the subspace
    assignments: np.ndarray    # (R, n_users): each user's cluster per restart (−1: user without training pairs)
    directions: np.ndarray     # (n_users, r): ā_u, the mean over restarts of the user's cluster direction
    objective: np.ndarray      # (R,): training NLL + ridge of each restart
    rounds: np.ndarray         # (R,): EM rounds each restart ran before its assignments stopped changing
    basis: np.ndarray | None = None  # (r, D): E (scaled principal directions of φ), set by ``discover``

    @property
    def best(self) -> int:
        """The restart with the lowest in-sample objective (for reporting clusters; ā_u averages all)."""
        return int(np.argmin(self.objective))


def pair_subspace(features: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, n_components: int) -> np.ndarray:
    """E: the top ``n_components`` principal directions of the pair differences, scaled by one factor so the
    projected differences have unit mean square averaged over the directions."""
    diff = np.asarray(features[chosen] - features[rejected], dtype=np.float64)
    used = np.flatnonzero(np.any(diff != 0, axis=0))  # the prompt half of φ is 0 in every difference
    gram = diff[:, used].T @ diff[:, used]  # cheaper than an SVD of pairs × D; only the top block is computed
    k = min(n_components, len(used))
    values, vectors = linalg.eigh(gram, subset_by_index=(len(used) - k, len(used) - 1))
    top = vectors[:, ::-1].T
    values = values[::-1]
    top *= np.where(top.sum(1, keepdims=True) < 0, -1.0, 1.0)  # a fixed sign per direction
    # One scale for all directions: the projected differences have unit mean square on average, so a ridge means
    # the same on any encoder's scale, while low-variance (noisier) directions stay small and are shrunk more.
    scale = np.sqrt(max(float(values.mean()) / len(diff), 1e-12))
    basis = np.zeros((len(top), diff.shape[1]))
    basis[:, used] = top / scale
    return basis


def oriented_differences(features: np.ndarray, basis: np.ndarray, chosen: np.ndarray,
                         rejected: np.ndarray) -> np.ndarray:
    """E(φ⁺ − φ⁻) per pair, oriented so the user's label is always 'the first is better'."""
    return (np.asarray(features[chosen] - features[rejected], dtype=np.float64)) @ basis.T


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class _PairModels:
    """R·C linear BT models over one set of oriented pair differences; each pair belongs to one model per restart."""

    def __init__(self, x: np.ndarray, pair_users: np.ndarray, n_users: int, ridge: float):
        self.x, self.pair_users, self.ridge = x, pair_users, ridge
        # Sums a per-pair quantity into its user's row.
        self.to_user = sparse.csr_matrix((np.ones(len(x)), (pair_users, np.arange(len(x)))), shape=(n_users, len(x)))
        # Σ x xᵀ over each user's pairs, flattened: a cluster's Hessian bound is a sum of its users' rows.
        self.user_outer = self.to_user @ (x[:, :, None] * x[:, None, :]).reshape(len(x), -1)

    def fit(self, teachers: np.ndarray, assignments: np.ndarray, steps: int) -> np.ndarray:
        """``steps`` bound-optimisation steps on every (restart, cluster) model given the users' clusters.

        The logistic loss's Hessian is bounded by XᵀX/4 (Böhning's bound), so one fixed matrix per call serves
        every step and each step still lowers the objective: far cheaper than Newton's per-step Hessians.
        """
        n_restarts, n_clusters, dim = teachers.shape
        n_pairs = len(self.x)
        model_of_entry = (np.arange(n_restarts)[:, None] * n_clusters + assignments[:, self.pair_users]).ravel()
        pair_of_entry = np.tile(np.arange(n_pairs), n_restarts)
        member = sparse.csr_matrix((np.arange(1.0, len(model_of_entry) + 1), (model_of_entry, pair_of_entry)),
                                   shape=(n_restarts * n_clusters, n_pairs))
        order = member.data.astype(np.int64) - 1  # CSR sorts its entries: slot i holds entry order[i]
        member.data = np.ones(len(order))
        n_users = self.to_user.shape[0]
        model_of_user = (np.arange(n_restarts)[:, None] * n_clusters + assignments).ravel()
        users_of = sparse.csr_matrix((np.ones(assignments.size), (model_of_user, np.tile(np.arange(n_users),
                                                                                            n_restarts))),
                                     shape=(n_restarts * n_clusters, n_users))
        bound = 0.25 * (users_of @ self.user_outer).reshape(-1, dim, dim) + self.ridge * np.eye(dim)
        inverse = np.linalg.inv(bound)
        flat = teachers.reshape(-1, dim).copy()
        for _ in range(steps):
            margin = (self.x @ flat.T)[pair_of_entry, model_of_entry]
            member.data = -(1.0 - _sigmoid(margin))[order]
            grad = member @ self.x + self.ridge * flat
            flat -= np.einsum("mij,mj->mi", inverse, grad)
        return flat.reshape(n_restarts, n_clusters, dim)

    def user_loss(self, teachers: np.ndarray) -> np.ndarray:
        """(n_users, R, C): each user's summed BT loss on its own pairs under every model."""
        n_restarts, n_clusters, dim = teachers.shape
        losses = _softplus(-(self.x @ teachers.reshape(-1, dim).T))
        return np.asarray(self.to_user @ losses).reshape(-1, n_restarts, n_clusters)


def _initial_assignments(user_vectors: np.ndarray, user_sums: np.ndarray, n_clusters: int, restarts: int,
                         seed: int) -> np.ndarray:
    """Half the restarts from k-means on the normalised user vectors, half on each user's summed differences."""
    starts = []
    for i in range(restarts):
        points = user_vectors if i % 2 == 0 else user_sums
        points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
        km = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed + i, max_iter=100)
        starts.append(km.fit_predict(points))
    return np.stack(starts)


def fit_clusters(x: np.ndarray, pair_users: np.ndarray, n_users: int, *, n_clusters: int, restarts: int,
                 user_vectors: np.ndarray, ridge: float = 1.0, max_rounds: int = 20, seed: int = 0,
                 initial: np.ndarray | None = None) -> ClusterFit:
    """Hard EM of module docstring step 2 over oriented training-pair differences ``x`` (pairs × r).

    ``user_vectors`` (n_users × k, e.g. the baseline's b + w_u) seed half of the restarts; ``initial`` (a cluster
    per user), when given, seeds every restart instead (with ``max_rounds=0``: teachers of fixed clusters, e.g.
    the true ones for an oracle diagnostic). Users without pairs get cluster −1 and a zero direction.
    """
    has_pairs = np.bincount(pair_users, minlength=n_users) > 0
    users = np.flatnonzero(has_pairs)
    n_clusters = max(1, min(n_clusters, len(users)))
    models = _PairModels(x, pair_users, n_users, ridge)
    sums = np.asarray(models.to_user @ x)
    top = sums[:, : min(16, x.shape[1])]
    assignments = np.full((restarts, n_users), 0, dtype=np.int64)
    if initial is not None:
        n_clusters = int(initial.max()) + 1
        assignments[:, users] = initial[users]
    elif n_clusters > 1:
        assignments[:, users] = _initial_assignments(user_vectors[users], top[users], n_clusters, restarts, seed)
    teachers = models.fit(np.zeros((restarts, n_clusters, x.shape[1])), assignments, steps=8)
    rounds = np.zeros(restarts, dtype=np.int64)
    active = np.ones(restarts, dtype=bool) if n_clusters > 1 else np.zeros(restarts, dtype=bool)
    for _ in range(max_rounds):
        if not active.any():
            break
        moved = models.user_loss(teachers[active]).argmin(-1).T  # (active restarts, n_users)
        changed = (moved[:, users] != assignments[active][:, users]).any(1)
        active[np.flatnonzero(active)[~changed]] = False  # a restart whose users stay put has converged
        if not active.any():
            break
        rounds += active
        assignments[np.ix_(active, users)] = moved[changed][:, users]
        teachers[active] = models.fit(teachers[active], assignments[active], steps=3)
    teachers = models.fit(teachers, assignments, steps=8)
    loss = models.user_loss(teachers)
    chosen = np.take_along_axis(loss, assignments.T[:, :, None], -1)[:, :, 0]  # (n_users, R)
    objective = chosen[users].sum(0) + 0.5 * ridge * (teachers**2).sum((1, 2))
    directions = teachers[np.arange(restarts)[:, None], assignments].mean(0)  # (n_users, r)
    directions[~has_pairs] = 0.0
    assignments[:, ~has_pairs] = -1
    return ClusterFit(teachers=teachers, assignments=assignments,
                      directions=directions, objective=objective, rounds=rounds)


def discover(features: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, users: np.ndarray, n_users: int, *,
             subspace: int, n_clusters: int, restarts: int, user_vectors: np.ndarray, ridge: float,
             max_rounds: int, seed: int) -> ClusterFit:
    """Steps 1 and 2 of the module docstring on labelled training pairs (chosen, rejected, users)."""
    basis = pair_subspace(features, chosen, rejected, subspace)
    x = oriented_differences(features, basis, chosen, rejected)
    fit = fit_clusters(x, users, n_users, n_clusters=n_clusters, restarts=restarts, user_vectors=user_vectors,
                       ridge=ridge, max_rounds=max_rounds, seed=seed)
    fit.basis = basis
    return fit


def per_user_fit(x: np.ndarray, pair_users: np.ndarray, n_users: int, ridge: float, steps: int = 8) -> np.ndarray:
    """Each user's own ridge BT direction, argmin Σ softplus(−a_u·x) + ridge/2·|a_u|² over the user's pairs, by
    Newton steps for all users at once (users without pairs get 0)."""
    dim = x.shape[1]
    to_user = sparse.csr_matrix((np.ones(len(x)), (pair_users, np.arange(len(x)))), shape=(n_users, len(x)))
    outer = (x[:, :, None] * x[:, None, :]).reshape(len(x), -1)
    a = np.zeros((n_users, dim))
    for _ in range(steps):
        p = _sigmoid(np.einsum("nd,nd->n", a[pair_users], x))
        grad = -np.asarray(to_user @ ((1.0 - p)[:, None] * x)) + ridge * a
        hess = np.asarray(to_user @ ((p * (1.0 - p))[:, None] * outer)).reshape(-1, dim, dim)
        a -= np.linalg.solve(hess + ridge * np.eye(dim), grad[:, :, None])[:, :, 0]
    return a
