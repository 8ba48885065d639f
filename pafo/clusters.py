"""Preference clusters found on labelled training-side pairs (never test pairs), and a linear Bradley–Terry teacher
per cluster.

Why (spec §9): the baseline's learned g(φ) is shaped by majority labels and loses directions that minority users
need, while φ itself keeps them. A support-rate minority is also several tastes, so one minority teacher averages
opposing directions. So the teachers here live in a subspace of φ, not of g(φ), and there is one per preference
cluster, not per support group:

1. ``pair_subspace``: E = the top principal directions of the training-pair differences φ⁺ − φ⁻ (uncentred: the
   set {d, −d} is symmetric). The prompt half of φ cancels in a difference, so E spans response directions.
2. ``fit_soft_clusters`` (the default, spec §10): a *mixture* of C linear BT teachers a_c with weights π_c, fitted by
   soft EM on the mixture likelihood Π_u Σ_c π_c Π_{p∈u} σ(a_c·x_p). Each user has a posterior q_uc over the
   clusters and its direction is the posterior mean Σ_c q_uc a_c. EM runs in several nested subspaces (the first
   r directions of E for each r in ``sizes``) and from several k-means starts in each; every run is kept and ā_u is
   the mean of the user's posterior-mean direction over all runs. All runs are one batched computation (torch):
   one (pairs × runs·C) margin matrix per step, so the cost is linear in users and pairs. With the co-label view
   (``CoLabels``, ``colabel_weight``) the probability of a label under cluster c also counts the labels other users
   gave the same pair, each weighed by that user's posterior of being in c: same-taste users agree on most shared
   pairs, which places users where the text features cannot (weak on DSP).
3. ``fit_clusters`` (hard EM, PAFO v2): the *classification* likelihood, each user moved to the teacher that best
   explains the user's own training pairs. It is a known-inconsistent estimator for mixtures: on development seeds
   it scored the true partition worse than the wrong ones it found, and EM started from the truth drifted away
   (spec §10). Kept for comparison.

Averaging runs, not picking the best in-sample objective, is what helped on development seeds: wrong clusterings
often score higher in-sample. Test labels never reach this module: it is given the labelled pairs of
``pafo.methods.cluster_pairs`` (training pairs, and by default the validation pairs: one more pair per user).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg, sparse
from scipy.special import softmax
from sklearn.cluster import KMeans

__all__ = ["EM_KINDS", "ClusterFit", "CoLabels", "discover", "fit_clusters", "fit_soft_clusters", "nested_scales",
           "oriented_differences", "pair_subspace", "per_user_fit"]

#: The cluster steps: EM on the mixture likelihood (soft, the default) or on the classification likelihood (hard).
EM_KINDS = ("soft", "hard")
#: Users' sums of oriented differences in at most this many leading directions seed half of the k-means starts.
INIT_DIMENSIONS = 16


@dataclass
class ClusterFit:
    """What EM found. A *run* is one EM restart in one subspace size; every run is kept.

    Teachers are written in the coordinates of ``basis`` (E, all sizes' largest), so a run in a smaller nested
    subspace has zeros past its size and any run scores a pair as ``teachers[run, c] @ E(φ⁺ − φ⁻)``. With the
    teachers and the cluster weights frozen, :meth:`posterior` places any user (a new one too) from a few pairs.
    """

    teachers: np.ndarray       # (runs, C, r): each run's teacher directions in the basis's coordinates
    assignments: np.ndarray    # (runs, n_users): each user's (most probable) cluster per run; −1 without pairs
    directions: np.ndarray     # (n_users, r): ā_u, the mean over runs of the user's direction in each run
    objective: np.ndarray      # (runs,): training NLL + ridge of each run (soft: the mixture NLL)
    rounds: np.ndarray         # (runs,): EM rounds each run made before it converged
    basis: np.ndarray | None = None  # (r, D): E (scaled principal directions of φ), set by ``discover``
    log_weights: np.ndarray | None = None  # (runs, C): log π_c, each run's cluster weights
    sizes: np.ndarray | None = None  # (runs,): the subspace size each run used (hard EM: all r)
    em: str = "hard"

    @property
    def best(self) -> int:
        """The run with the lowest in-sample objective (for reporting clusters; ā_u averages all)."""
        return int(np.argmin(self.objective))

    @property
    def restarts(self) -> int:
        """Restarts per subspace size."""
        sizes = self.sizes if self.sizes is not None else np.zeros(len(self.teachers))
        return len(self.teachers) // len(np.unique(sizes))

    def posterior(self, x: np.ndarray, pair_users: np.ndarray, n_users: int) -> np.ndarray:
        """(runs, n_users, C): each run's q_uc ∝ π_c Π_p σ(a_c·x_p) over oriented differences ``x`` (pairs × r, in
        the basis's coordinates) with the teachers frozen; a user without pairs gets π. (The co-label view is
        not in it: a new user's pairs have no co-labellers' posteriors to weigh.)"""
        log_weights = self.log_weights if self.log_weights is not None else \
            np.full(self.teachers.shape[:2], -np.log(self.teachers.shape[1]))
        loglik = _user_log_likelihood(x, pair_users, n_users, self.teachers)  # (n_users, runs, C)
        return np.moveaxis(softmax(loglik + log_weights[None], axis=-1), 0, 1)

    def posterior_directions(self, x: np.ndarray, pair_users: np.ndarray, n_users: int) -> np.ndarray:
        """(n_users, r): the posterior-mean direction Σ_c q_uc a_c averaged over runs (0 for users without
        pairs): the soft cluster step's ā_u for any users' pairs, the fitted teachers frozen."""
        q = self.posterior(x, pair_users, n_users)
        directions = np.einsum("rnc,rcd->nd", q, self.teachers) / len(self.teachers)
        directions[np.bincount(pair_users, minlength=n_users) == 0] = 0.0
        return directions


def _user_log_likelihood(x: np.ndarray, pair_users: np.ndarray, n_users: int, teachers: np.ndarray) -> np.ndarray:
    """(n_users, runs, C): Σ_{p∈u} log σ(a·x_p) for every run's every teacher."""
    runs, n_clusters, dim = teachers.shape
    log_sigma = -_softplus(-(x @ teachers.reshape(-1, dim).T))
    to_user = sparse.csr_matrix((np.ones(len(x)), (pair_users, np.arange(len(x)))), shape=(n_users, len(x)))
    return np.asarray(to_user @ log_sigma).reshape(n_users, runs, n_clusters)


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
    shares = np.stack([np.bincount(a[users], minlength=n_clusters) for a in assignments]) / max(len(users), 1)
    return ClusterFit(teachers=teachers, assignments=assignments, directions=directions, objective=objective,
                      rounds=rounds, log_weights=np.log(np.maximum(shares, 1e-12)),
                      sizes=np.full(restarts, x.shape[1]), em="hard")


def nested_scales(x: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """For each size r, the factor that gives the first r coordinates of ``x`` unit mean square (so one ridge means
    the same in every nested subspace)."""
    return np.asarray([1.0 / np.sqrt(max(float((x[:, :r] ** 2).mean()), 1e-12)) for r in sizes])


class _UserPairs:
    """Oriented pair differences on one torch device, with the sums per user that EM needs."""

    def __init__(self, x: torch.Tensor, pair_users: torch.Tensor, n_users: int, chunk: int = 65_536):
        self.x, self.pair_users, self.n_users = x, pair_users, n_users
        dim = x.shape[1]
        # Σ x xᵀ over each user's pairs, flattened: a model's Hessian bound is a q-weighted sum of these rows.
        # Summed in chunks of pairs, so memory stays at (users + chunk) × r², never pairs × r².
        self.user_outer = torch.zeros(n_users, dim * dim, dtype=x.dtype, device=x.device)
        for start in range(0, len(x), chunk):
            part = x[start:start + chunk]
            self.user_outer.index_add_(0, pair_users[start:start + chunk],
                                       (part[:, :, None] * part[:, None, :]).reshape(len(part), -1))

    def per_user(self, values: torch.Tensor) -> torch.Tensor:
        """(n_users, M): a per-pair quantity (pairs × M) summed into its user's row."""
        out = torch.zeros(self.n_users, values.shape[1], dtype=values.dtype, device=values.device)
        return out.index_add_(0, self.pair_users, values)


@dataclass
class CoLabels:
    """Which training labels are on the same pair of responses: ``key`` numbers each distinct (unordered) pair,
    ``sign`` is +1 where the label prefers the pair's lower-numbered response, −1 otherwise."""

    key: np.ndarray
    sign: np.ndarray

    @classmethod
    def of(cls, chosen: np.ndarray, rejected: np.ndarray) -> CoLabels:
        low, high = np.minimum(chosen, rejected), np.maximum(chosen, rejected)
        key = np.unique(np.stack([low, high], 1), axis=0, return_inverse=True)[1].ravel()
        return cls(key=key, sign=np.where(chosen < rejected, 1.0, -1.0))


class _SoftEM:
    """Soft EM for many independent mixtures at once: ``runs`` mixtures of C linear BT teachers each, all over the
    same oriented differences, every (run, cluster) one row of a (M = runs·C) × r teacher matrix.

    A run in a nested subspace of size r_s keeps its teachers zero past r_s (``mask``) and its ridge is rescaled to
    the basis's coordinates (``ridge``: ridge / f_s², f_s from :func:`nested_scales`). Each run stops on its own
    (its posteriors moved less than ``tol``); converged runs are carried along unchanged, so the batch gives each
    run exactly what EM alone would.
    """

    def __init__(self, pairs: _UserPairs, has_pairs: torch.Tensor, mask: torch.Tensor, ridge: torch.Tensor,
                 n_clusters: int, colabels: tuple[torch.Tensor, torch.Tensor] | None = None,
                 colabel_weight: float = 0.0):
        self.pairs, self.has_pairs, self.mask, self.ridge, self.n_clusters = pairs, has_pairs, mask, ridge, n_clusters
        self.runs = len(mask) // n_clusters
        self.colabels = colabels if colabel_weight > 0 else None
        self.colabel_weight = colabel_weight

    def m_step(self, teachers: torch.Tensor, q: torch.Tensor, steps: int,
               margins: torch.Tensor | None = None) -> torch.Tensor:
        """``steps`` bound-optimisation steps on Σ_u q_uc Σ_{p∈u} softplus(−a_c·x_p) + ridge/2·|a_c|² per model.

        Böhning's bound (the logistic Hessian ≤ XᵀX/4) gives one fixed matrix per M-step, so each step is a solve
        with one Cholesky factor and still lowers the objective."""
        dim = teachers.shape[1]
        bound = 0.25 * (q.T @ self.pairs.user_outer).reshape(-1, dim, dim)
        inside = self.mask[:, :, None] & self.mask[:, None, :]
        diagonal = torch.where(self.mask, self.ridge[:, None], torch.ones_like(self.ridge)[:, None])
        bound = torch.where(inside, bound, torch.zeros_like(bound)) + torch.diag_embed(diagonal)
        factor = torch.linalg.cholesky(bound.double())
        weight = q[self.pairs.pair_users]  # (pairs, M): each pair weighs as its user's posterior
        x = self.pairs.x
        for i in range(steps):
            if margins is None or i > 0:
                margins = self.pairs.x @ teachers.T
            grad = (-(weight * torch.sigmoid(-margins)).T @ x + self.ridge[:, None] * teachers) * self.mask
            teachers = teachers - torch.cholesky_solve(grad.double()[:, :, None], factor)[:, :, 0].to(teachers.dtype)
        return teachers

    def log_likelihood(self, margins: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
        """(n_users, runs, C): Σ_{p∈u} log P(u's label on p | cluster c): σ(a_c·x_p), or with co-labels (and the
        current posteriors ``q``) that probability blended with the labels other users gave the same pair, each
        weighted by their posterior of being in c (:meth:`colabel_probability`)."""
        if self.colabels is None or q is None:
            log_p = torch.nn.functional.logsigmoid(margins)
        else:
            log_p = torch.log(self.colabel_probability(margins, q.reshape(len(q), -1)).clamp_min(1e-6))
        return self.pairs.per_user(log_p).reshape(-1, self.runs, self.n_clusters)

    def colabel_probability(self, margins: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """(pairs, M): θ = (σ(a_c·x_p) + w·A) / (1 + w·B), where B is the posterior mass in c of the *other*
        users who labelled the same pair and A the part of it that agrees with this label; w =
        ``colabel_weight``. A Beta prior centred on the teacher, updated by co-labellers: where nobody else
        labelled the pair it is σ(a_c·x_p). Sums run per distinct pair, so the cost is linear in labels."""
        key, sign = self.colabels
        weight = q[self.pairs.pair_users]  # (pairs, M)
        n_keys = int(key.max()) + 1
        per_key = weight.new_zeros(n_keys, weight.shape[1])
        mass = per_key.index_add(0, key, weight)[key] - weight
        signed = per_key.index_add(0, key, weight * sign[:, None])[key] - weight * sign[:, None]
        agree = 0.5 * (mass + sign[:, None] * signed)
        return (torch.sigmoid(margins) + self.colabel_weight * agree) / (1.0 + self.colabel_weight * mass)

    def e_step(self, loglik: torch.Tensor, log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posteriors q (n_users, runs, C) and the new log π (runs, C) from users with pairs."""
        q = torch.softmax(loglik + log_weights[None], dim=-1)
        return q, torch.log(q[self.has_pairs].mean(0).clamp_min(1e-12))

    def objective(self, loglik: torch.Tensor, log_weights: torch.Tensor, teachers: torch.Tensor) -> torch.Tensor:
        """(runs,): the mixture NLL of users with pairs plus each run's ridge term."""
        nll = -torch.logsumexp(loglik + log_weights[None], dim=-1)[self.has_pairs].sum(0)
        penalty = 0.5 * (self.ridge * (teachers**2).sum(1)).reshape(self.runs, self.n_clusters).sum(1)
        return nll + penalty

    def fit(self, q: torch.Tensor, max_rounds: int, tol: float, steps: int = 2, first_steps: int = 6,
            last_steps: int = 4):
        """EM from hard starting posteriors ``q`` (n_users, runs, C). Returns teachers (M, r), log π, the final
        posteriors, each run's rounds and objective."""
        n_users = q.shape[0]
        flat = q.reshape(n_users, -1)
        teachers = self.m_step(torch.zeros(self.mask.shape, dtype=q.dtype, device=q.device), flat, first_steps)
        log_weights = torch.full((self.runs, self.n_clusters), -float(np.log(self.n_clusters)), dtype=q.dtype,
                                 device=q.device)
        active = torch.ones(self.runs, dtype=torch.bool, device=q.device)
        rounds = torch.zeros(self.runs, dtype=torch.long, device=q.device)
        for _ in range(max_rounds):
            margins = self.pairs.x @ teachers.T
            new_q, new_log_weights = self.e_step(self.log_likelihood(margins, q), log_weights)
            moved = (new_q - q)[self.has_pairs].abs().amax(dim=(0, 2)) > tol
            active &= moved
            if not active.any():
                break
            rounds += active
            q = torch.where(active[None, :, None], new_q, q)
            log_weights = torch.where(active[:, None], new_log_weights, log_weights)
            updated = self.m_step(teachers, q.reshape(n_users, -1), steps, margins)
            teachers = torch.where(active.repeat_interleave(self.n_clusters)[:, None], updated, teachers)
        teachers = self.m_step(teachers, q.reshape(n_users, -1), last_steps)
        margins = self.pairs.x @ teachers.T
        loglik = self.log_likelihood(margins)
        q = torch.softmax(self.log_likelihood(margins, q) + log_weights[None], dim=-1)
        return teachers, log_weights, q, rounds, self.objective(loglik, log_weights, teachers)


def fit_soft_clusters(x: np.ndarray, pair_users: np.ndarray, n_users: int, *, n_clusters: int, restarts: int,
                      user_vectors: np.ndarray, sizes: tuple[int, ...] | None = None, ridge: float = 1.0,
                      max_rounds: int = 20, tol: float = 1e-4, seed: int = 0, device: str = "cpu",
                      colabels: CoLabels | None = None, colabel_weight: float = 0.0,
                      initial: np.ndarray | None = None) -> ClusterFit:
    """Soft EM of module docstring step 2 over oriented training-pair differences ``x`` (pairs × r).

    ``sizes``: the nested subspace sizes (the first r columns of ``x``; default: all r); ``restarts`` runs in each,
    half from k-means on the normalised ``user_vectors`` (e.g. the baseline's b + w_u), half on each user's summed
    differences. ``initial`` (runs × n_users, clusters), when given, replaces the k-means starts (the reference test
    feeds both implementations the same ones). ``colabels`` with ``colabel_weight`` > 0 add the co-label view
    (``_SoftEM.colabel_probability``). Users without pairs get cluster −1 and a zero direction.
    """
    dim = x.shape[1]
    sizes = tuple(sorted({min(int(r), dim) for r in (sizes or (dim,))}))
    has_pairs = np.bincount(pair_users, minlength=n_users) > 0
    n_clusters = max(1, min(n_clusters, int(has_pairs.sum())))
    scales = nested_scales(x, sizes)
    if initial is None:
        initial = _soft_starts(x, pair_users, n_users, has_pairs, user_vectors, sizes, n_clusters, restarts, seed)
    runs = len(initial)
    size_of_run = np.repeat(sizes, runs // len(sizes))
    scale_of_run = np.repeat(scales, runs // len(sizes))
    # float32 for the pairs × models products (the bulk of the work), float64 for the Cholesky solves.
    tensor = lambda a, dtype=torch.float32: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
    pairs = _UserPairs(tensor(x), tensor(pair_users, torch.long), n_users)
    mask = torch.arange(dim, device=device)[None, :] < tensor(np.repeat(size_of_run, n_clusters), torch.long)[:, None]
    ridge_of_model = tensor(np.repeat(ridge / scale_of_run**2, n_clusters))
    colabel_tensors = None if colabels is None else (tensor(colabels.key, torch.long), tensor(colabels.sign))
    em = _SoftEM(pairs, tensor(has_pairs, torch.bool), mask, ridge_of_model, n_clusters, colabel_tensors,
                 colabel_weight)
    start = np.zeros((n_users, runs, n_clusters), dtype=np.float32)
    start[np.arange(n_users)[:, None], np.arange(runs)[None, :], np.maximum(initial.T, 0)] = 1.0
    teachers, log_weights, q, rounds, objective = em.fit(tensor(start), max_rounds, tol)
    teachers = teachers.reshape(runs, n_clusters, dim).double().cpu().numpy()
    q = q.double().cpu().numpy()
    directions = np.einsum("nrc,rcd->nd", q, teachers) / runs
    directions[~has_pairs] = 0.0
    assignments = q.argmax(-1).T
    assignments[:, ~has_pairs] = -1
    return ClusterFit(teachers=teachers, assignments=assignments, directions=directions,
                      objective=objective.double().cpu().numpy(), rounds=rounds.cpu().numpy(),
                      log_weights=log_weights.double().cpu().numpy(), sizes=size_of_run, em="soft")


def _soft_starts(x: np.ndarray, pair_users: np.ndarray, n_users: int, has_pairs: np.ndarray,
                 user_vectors: np.ndarray, sizes: tuple[int, ...], n_clusters: int, restarts: int,
                 seed: int) -> np.ndarray:
    """(len(sizes)·restarts, n_users) k-means starts: ``restarts`` per size, each size with its own seeds."""
    users = np.flatnonzero(has_pairs)
    sums = sparse.csr_matrix((np.ones(len(x)), (pair_users, np.arange(len(x)))), shape=(n_users, len(x))) @ x
    starts = np.zeros((len(sizes) * restarts, n_users), dtype=np.int64)
    for i, size in enumerate(sizes):
        if n_clusters == 1:
            continue
        top = sums[users, : min(INIT_DIMENSIONS, size)]
        starts[i * restarts:(i + 1) * restarts, users] = _initial_assignments(
            user_vectors[users], top, n_clusters, restarts, seed + 1000 * i)
    return starts


def discover(features: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, users: np.ndarray, n_users: int, *,
             sizes: tuple[int, ...], n_clusters: int, restarts: int, user_vectors: np.ndarray, ridge: float,
             max_rounds: int, seed: int, em: str = "soft", tol: float = 1e-4, colabel_weight: float = 0.0,
             device: str = "cpu") -> ClusterFit:
    """Steps 1 and 2 (``em="soft"``) or 3 (``em="hard"``, one size) of the module docstring on labelled training
    pairs (chosen, rejected, users). The basis has the largest of ``sizes`` directions."""
    basis = pair_subspace(features, chosen, rejected, max(sizes))
    x = oriented_differences(features, basis, chosen, rejected)
    if em == "hard":
        fit = fit_clusters(x, users, n_users, n_clusters=n_clusters, restarts=restarts, user_vectors=user_vectors,
                           ridge=ridge, max_rounds=max_rounds, seed=seed)
    else:
        fit = fit_soft_clusters(x, users, n_users, n_clusters=n_clusters, restarts=restarts,
                                user_vectors=user_vectors, sizes=sizes, ridge=ridge, max_rounds=max_rounds, tol=tol,
                                colabels=CoLabels.of(chosen, rejected) if colabel_weight > 0 else None,
                                colabel_weight=colabel_weight, seed=seed, device=device)
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
