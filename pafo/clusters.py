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
   one (units × runs·C) margin matrix per step, so the cost is linear in users and pairs; with a ``runner``
   (:class:`pafo.remote.RayRuns`) groups of runs are Ray tasks instead. With the co-label view
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

import itertools
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg, sparse
from scipy.special import softmax
from sklearn.cluster import KMeans

__all__ = ["EM_KINDS", "ClusterFit", "CoLabels", "LocalRuns", "discover", "em_runs", "fit_clusters",
           "fit_soft_clusters", "nested_scales", "oriented_differences", "pair_differences", "pair_subspace",
           "per_user_fit"]

#: The cluster steps: EM on the mixture likelihood (soft, the default) or on the classification likelihood (hard).
EM_KINDS = ("soft", "hard")
#: Users' sums of oriented differences in at most this many leading directions seed half of the k-means starts.
INIT_DIMENSIONS = 16
#: k-means starts run on a random sample of at most this many users (all users below it).
INIT_USERS = 10_000


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
        pairs): the soft cluster step's ā_u for any users' pairs, the fitted teachers frozen. Users are placed
        ``USER_BLOCK`` at a time (each user's posterior reads only its own pairs), so memory stays bounded."""
        pair_users = np.asarray(pair_users, dtype=np.int64)
        order = np.argsort(pair_users, kind="stable")  # each block's pairs keep their order
        edges = np.searchsorted(pair_users[order], np.arange(0, n_users + USER_BLOCK, USER_BLOCK))
        directions = np.zeros((n_users, self.teachers.shape[2]))
        for i, start in enumerate(range(0, n_users, USER_BLOCK)):
            rows = order[edges[i]:edges[i + 1]]
            size = min(USER_BLOCK, n_users - start)
            q = self.posterior(x[rows], pair_users[rows] - start, size)
            directions[start:start + size] = np.einsum("rnc,rcd->nd", q, self.teachers) / len(self.teachers)
        directions[np.bincount(pair_users, minlength=n_users) == 0] = 0.0
        return directions


def _user_log_likelihood(x: np.ndarray, pair_users: np.ndarray, n_users: int, teachers: np.ndarray) -> np.ndarray:
    """(n_users, runs, C): Σ_{p∈u} log σ(a·x_p) for every run's every teacher.

    log σ is evaluated once per distinct row of ``x`` (a pair labelled by many users is one row) and added into
    the users' rows a block of pairs at a time, in pair order: the sums a (users × pairs) product makes, without
    its pairs × runs·C matrix."""
    runs, n_clusters, dim = teachers.shape
    first, row_of_pair = _distinct_rows(x)
    log_sigma = torch.from_numpy(-_softplus(-(x[first] @ teachers.reshape(-1, dim).T)))
    out = torch.zeros((n_users, runs * n_clusters), dtype=torch.float64)
    # torch cannot wrap a read-only array (a run folder's arrays load read-only): copy only then.
    users = torch.as_tensor(np.require(pair_users, dtype=np.int64, requirements="W"))
    rows = torch.as_tensor(np.require(row_of_pair, requirements="W"))
    for start in range(0, len(x), PAIR_BLOCK):
        block = slice(start, start + PAIR_BLOCK)
        out.index_add_(0, users[block], log_sigma.index_select(0, rows[block]))
    return out.numpy().reshape(n_users, runs, n_clusters)


#: Pairs per block when differences of features are formed, so memory stays at a block × D, never pairs × D.
BLOCK = 65_536
#: Pairs per block when a per-pair value for every model (runs · C of them) is summed into its user's row.
PAIR_BLOCK = 8_192
#: Users per block when users are placed by frozen teachers: memory stays at a block × runs · C.
USER_BLOCK = 50_000


def _distinct_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first row of each distinct row of ``x`` (byte-identical rows are one), in the order ``np.unique`` sorts
    the rows' bytes, and each row's index among them: ``np.unique(rows as bytes, return_index, return_inverse)``.

    Sorting millions of wide byte strings is slow, so rows are grouped by a 64-bit hash of their words first and
    the groups checked byte for byte (a collision, never seen, falls back to the byte sort); only the distinct rows
    are then sorted by their bytes."""
    rows = np.ascontiguousarray(x)
    as_bytes = rows.view(np.dtype((np.void, rows.itemsize * rows.shape[1]))).ravel()
    if not rows.size or (rows.itemsize * rows.shape[1]) % 8:
        _, first, inverse = np.unique(as_bytes, return_index=True, return_inverse=True)
        return first, inverse.ravel()
    words = rows.view(np.uint64).reshape(len(rows), -1)
    key = np.zeros(len(rows), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in words.T:  # Horner's rule over the words, wrapping at 2⁶⁴
            key = key * np.uint64(0x9E3779B97F4A7C15) + column
            key ^= key >> np.uint64(29)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    if not all(np.array_equal(column, column[first][inverse]) for column in words.T):
        _, first, inverse = np.unique(as_bytes, return_index=True, return_inverse=True)
        return first, inverse.ravel()
    order = np.argsort(as_bytes[first], kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return first[order], rank[inverse]


def _distinct_pairs(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (first, second) index pairs, as two arrays, and each input pair's row among them."""
    code = first.astype(np.int64) * (int(max(first.max(initial=0), second.max(initial=0))) + 1) + second
    distinct, inverse = np.unique(code, return_inverse=True)
    width = int(max(first.max(initial=0), second.max(initial=0))) + 1
    return distinct // width, distinct % width, inverse.ravel()


def pair_differences(features: np.ndarray, first: np.ndarray, second: np.ndarray):
    """φ[first] − φ[second] in float64, one block of pairs at a time: (start, block)."""
    for start in range(0, len(first), BLOCK):
        rows = slice(start, start + BLOCK)
        yield start, np.asarray(features[first[rows]] - features[second[rows]], dtype=np.float64)


def pair_subspace(features: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, n_components: int) -> np.ndarray:
    """E: the top ``n_components`` principal directions of the pair differences, scaled by one factor so the
    projected differences have unit mean square averaged over the directions.

    d and −d have the same outer product, so the Gram matrix Σ_p d_p d_pᵀ is summed once per distinct unordered
    pair (times its count) and in blocks: memory is a block × D, whatever the number of labels."""
    low, high, inverse = _distinct_pairs(np.minimum(chosen, rejected), np.maximum(chosen, rejected))
    count = np.bincount(inverse, minlength=len(low)).astype(np.float64)
    gram = np.zeros((features.shape[1], features.shape[1]))
    nonzero = np.zeros(features.shape[1], dtype=bool)
    for start, diff in pair_differences(features, low, high):
        nonzero |= np.any(diff != 0, axis=0)
        gram += (diff * count[start:start + len(diff), None]).T @ diff
    used = np.flatnonzero(nonzero)  # the prompt half of φ is 0 in every difference
    gram = gram[np.ix_(used, used)]  # cheaper than an SVD of pairs × D; only the top block is computed
    k = min(n_components, len(used))
    values, vectors = linalg.eigh(gram, subset_by_index=(len(used) - k, len(used) - 1))
    top = vectors[:, ::-1].T
    values = values[::-1]
    top *= np.where(top.sum(1, keepdims=True) < 0, -1.0, 1.0)  # a fixed sign per direction
    # One scale for all directions: the projected differences have unit mean square on average, so a ridge means
    # the same on any encoder's scale, while low-variance (noisier) directions stay small and are shrunk more.
    scale = np.sqrt(max(float(values.mean()) / len(chosen), 1e-12))
    basis = np.zeros((len(top), features.shape[1]))
    basis[:, used] = top / scale
    return basis


def oriented_differences(features: np.ndarray, basis: np.ndarray, chosen: np.ndarray,
                         rejected: np.ndarray) -> np.ndarray:
    """E(φ⁺ − φ⁻) per pair, oriented so the user's label is always 'the first is better': computed once per
    distinct (chosen, rejected) and in blocks, so pairs labelled by several users get byte-identical rows."""
    first, second, inverse = _distinct_pairs(chosen, rejected)
    out = np.empty((len(first), len(basis)))
    for start, diff in pair_differences(features, first, second):
        out[start:start + len(diff)] = diff @ basis.T
    return out[inverse]


def _outer_per_user(x: np.ndarray, pair_users: np.ndarray, n_users: int, weight: np.ndarray | None = None,
                    distinct: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(n_users, r·r): Σ over each user's pairs of weight_p · x_p x_pᵀ, flattened; formed a block of pairs at a
    time (a block × r² ≤ ``BLOCK`` × 16 values), so memory never holds pairs × r². Each distinct row of ``x``
    (``distinct``: :func:`_distinct_rows`, if known) is formed once and its weights summed per user when the
    rows repeat (labels of the same pair by many users share it): unweighted whenever a row repeats, weighted
    when at most half the rows are distinct (the per-user weight matrix is then cheaper than the products)."""
    first, inverse = distinct if distinct is not None else _distinct_rows(x)
    if len(first) < len(x) and (weight is None or 2 * len(first) <= len(x)):
        counts = sparse.csr_matrix((np.ones(len(x)) if weight is None else weight, (pair_users, inverse)),
                                   shape=(n_users, len(first)))
        return counts @ _outer_per_user(x[first], np.arange(len(first)), len(first),
                                        distinct=(np.arange(len(first)), np.arange(len(first))))
    # index_add_ adds each pair's product into its user's row in pair order, as one sparse product over all pairs
    # would, and touches only the block's users (a sparse product per block would add a whole users × r² array).
    out = torch.zeros((n_users, x.shape[1] ** 2), dtype=torch.float64)
    users = torch.as_tensor(np.asarray(pair_users, dtype=np.int64))
    step = max(1, BLOCK * 16 // x.shape[1] ** 2)
    for start in range(0, len(x), step):
        rows = slice(start, start + step)
        part = np.asarray(x[rows], dtype=np.float64)
        outer = (part[:, :, None] * part[:, None, :]).reshape(len(part), -1)
        if weight is not None:
            outer *= weight[rows, None]
        out.index_add_(0, users[rows], torch.from_numpy(outer))
    return out.numpy()


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
        self.user_outer = _outer_per_user(x, pair_users, n_users)

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
    """Half the restarts from k-means on the normalised user vectors, half on each user's summed differences.

    With more than ``INIT_USERS`` users each restart's k-means runs on its own random sample of that many and
    every user then joins the nearest centre: a start needs the clusters' rough positions, not all users, and EM
    moves users afterwards anyway (smaller logs use every user, as before)."""
    starts = []
    for i in range(restarts):
        points = user_vectors if i % 2 == 0 else user_sums
        points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
        km = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed + i, max_iter=100)
        if len(points) > INIT_USERS:
            sample = np.random.default_rng(seed + i).choice(len(points), INIT_USERS, replace=False)
            starts.append(km.fit(points[sample]).predict(points))
        else:
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
    """Oriented pair differences grouped into *units* on one torch device: the pairs with the same difference
    (and, with co-labels, the same co-label cell) share every teacher margin, so margins, the M-step's gradients
    and its Hessian bound are computed once per unit, not once per pair. Only what depends on the labelling
    user too (the co-label view's leave-one-out blend) is evaluated per pair, in chunks, so memory stays at
    (users + units + chunk) × models, never pairs × models.

    A synthetic log of 30,000 users × 32 pairs holds ~1e6 pairs but a few thousand units; a log whose pairs are
    all distinct has as many units as pairs and costs what the per-pair computation did.
    """

    def __init__(self, x: np.ndarray, pair_users: np.ndarray, n_users: int, device: str,
                 colabels: CoLabels | None = None, chunk: int = 4_096):
        self.n_users, self.chunk = n_users, chunk
        unit, first = _units(x, colabels)
        n_units = len(first)
        tensor = lambda a, dtype=torch.float32: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
        self.x = tensor(x[first])  # (units, r)
        self.n_units = n_units
        counts = sparse.csr_matrix((np.ones(len(unit)), (pair_users, unit)), shape=(n_users, n_units))
        counts.sum_duplicates()
        self.user_units = _sparse(counts, device)  # (n_users, units): how many of a user's pairs are in a unit
        self.unit_users = _sparse(counts.T.tocsr(), device)  # its transpose
        dim = x.shape[1]
        if n_units <= n_users:  # Σ x xᵀ per unit: a model's Hessian bound is a Q-weighted sum of these rows
            self.outer = (self.x[:, :, None] * self.x[:, None, :]).reshape(n_units, dim * dim)
            self.outer_by_unit = True
        else:  # … or per user (the cheaper side): Σ over each user's pairs, in chunks of pairs
            self.outer = torch.zeros(n_users, dim * dim, dtype=torch.float32, device=device)
            users = tensor(pair_users, torch.long)
            for start in range(0, len(x), 65_536):
                part = tensor(x[start:start + 65_536])
                self.outer.index_add_(0, users[start:start + 65_536],
                                      (part[:, :, None] * part[:, None, :]).reshape(len(part), -1))
            self.outer_by_unit = False
        self.colabelled = colabels is not None
        if self.colabelled:
            key_of_unit = colabels.key[first]
            cell_of_unit = 2 * key_of_unit + (colabels.sign[first] > 0)
            self.key_of_unit = tensor(np.unique(key_of_unit, return_inverse=True)[1].ravel(), torch.long)
            self.cell_of_unit = tensor(np.unique(cell_of_unit, return_inverse=True)[1].ravel(), torch.long)
            # A pair nobody else labelled has θ = σ(a·x) exactly: it joins the per-unit sums, not the loop.
            lone = np.bincount(colabels.key, minlength=int(colabels.key.max()) + 1)[colabels.key] == 1
            lone_counts = sparse.csr_matrix((np.ones(int(lone.sum())), (pair_users[lone], unit[lone])),
                                            shape=(n_users, n_units))
            self.lone_user_units = _sparse(lone_counts, device)
            order = np.flatnonzero(~lone)
            order = order[np.argsort(pair_users[order], kind="stable")]  # each user's shared pairs, in pair order
            self.shared_users = tensor(pair_users[order], torch.long)
            self.shared_units = tensor(unit[order], torch.long)
            self._slots(pair_users[order], unit[order], tensor)

    def _slots(self, users: np.ndarray, units: np.ndarray, tensor) -> None:
        """The shared pairs as *slots*: slot j holds the j-th shared pair of every user with more than j of them.
        Users are ranked by their number of shared pairs (most first, ``by_count``), so slot j's users are the
        first ``len(slot_units[j])`` ranks and their posteriors and sums are a slice, not a gather or a scatter."""
        counts = np.bincount(users, minlength=self.n_users)
        by_count = np.argsort(-counts, kind="stable")
        rank = np.empty(self.n_users, dtype=np.int64)
        rank[by_count] = np.arange(self.n_users)
        slot = np.arange(len(users)) - (np.cumsum(counts) - counts)[users]  # users are sorted, pairs in order
        order = np.lexsort((rank[users], slot))  # by slot, then by the user's rank
        edges = np.searchsorted(slot[order], np.arange(int(counts.max(initial=0)) + 1))
        self.by_count, self.rank = tensor(by_count, torch.long), tensor(rank, torch.long)
        self.slot_units = [tensor(units[order[a:b]], torch.long) for a, b in itertools.pairwise(
            [*edges, len(order)])]

    def unit_mass(self, q: torch.Tensor) -> torch.Tensor:
        """(units, M): Σ over a unit's pairs of the labelling user's row of ``q`` (n_users × M)."""
        return self.unit_users @ q

    def hessian_bound(self, q: torch.Tensor, q_units: torch.Tensor) -> torch.Tensor:
        """(M, r·r): Σ_u q_um Σ_{p∈u} x_p x_pᵀ, computed per unit or per user (whichever is fewer)."""
        return (q_units if self.outer_by_unit else q).T @ self.outer


def _units(x: np.ndarray, colabels: CoLabels | None) -> tuple[np.ndarray, np.ndarray]:
    """Each pair's unit (pairs with byte-identical oriented differences and the same co-label cell) and each
    unit's first pair."""
    value = _distinct_rows(np.asarray(x, dtype=np.float64))[1].astype(np.int64)
    if colabels is not None:
        n_cells = 2 * (int(colabels.key.max()) + 1)
        value = value * n_cells + 2 * colabels.key + (colabels.sign > 0)
    _, first, unit = np.unique(value, return_index=True, return_inverse=True)
    return unit.ravel(), first


def _sparse(matrix: sparse.csr_matrix, device: str) -> torch.Tensor:
    """A scipy CSR matrix as a float32 torch CSR tensor on ``device`` (built from a valid scipy matrix, so torch's
    invariant checks are skipped; torch warns once that CSR support is 'beta': sparse @ dense is all EM uses)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.as_tensor(matrix.indptr, dtype=torch.long),
                                       torch.as_tensor(matrix.indices, dtype=torch.long),
                                       torch.as_tensor(matrix.data, dtype=torch.float32), size=matrix.shape,
                                       device=device, check_invariants=False)


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
                 n_clusters: int, colabel_weight: float = 0.0):
        self.pairs, self.has_pairs, self.mask, self.ridge, self.n_clusters = pairs, has_pairs, mask, ridge, n_clusters
        self.every_user_has_pairs = bool(has_pairs.all())
        self.runs = len(mask) // n_clusters
        self.colabel_weight = colabel_weight if pairs.colabelled else 0.0

    def margins(self, teachers: torch.Tensor) -> torch.Tensor:
        """(units, M): every teacher's margin a·x on every unit."""
        return self.pairs.x @ teachers.T

    def m_step(self, teachers: torch.Tensor, q: torch.Tensor, steps: int, margins: torch.Tensor | None = None,
               weight: torch.Tensor | None = None) -> torch.Tensor:
        """``steps`` bound-optimisation steps on Σ_u q_uc Σ_{p∈u} softplus(−a_c·x_p) + ridge/2·|a_c|² per model.

        Böhning's bound (the logistic Hessian ≤ XᵀX/4) gives one fixed matrix per M-step, so each step is a solve
        with one Cholesky factor and still lowers the objective. A unit's pairs share x and margin, so the
        gradient weighs each unit by its users' summed posteriors (``weight``: ``unit_mass(q)``, if known)."""
        dim = teachers.shape[1]
        weight = self.pairs.unit_mass(q) if weight is None else weight  # (units, M)
        bound = 0.25 * self.pairs.hessian_bound(q, weight).reshape(-1, dim, dim)
        inside = self.mask[:, :, None] & self.mask[:, None, :]
        diagonal = torch.where(self.mask, self.ridge[:, None], torch.ones_like(self.ridge)[:, None])
        bound = torch.where(inside, bound, torch.zeros_like(bound)) + torch.diag_embed(diagonal)
        factor = torch.linalg.cholesky(bound.double())
        x = self.pairs.x
        for i in range(steps):
            if margins is None or i > 0:
                margins = self.margins(teachers)
            grad = (-(weight * torch.sigmoid(-margins)).T @ x + self.ridge[:, None] * teachers) * self.mask
            teachers = teachers - torch.cholesky_solve(grad.double()[:, :, None], factor)[:, :, 0].to(teachers.dtype)
        return teachers

    def log_likelihood(self, margins: torch.Tensor, q: torch.Tensor | None = None,
                       mass: torch.Tensor | None = None) -> torch.Tensor:
        """(n_users, runs, C): Σ_{p∈u} log P(u's label on p | cluster c): σ(a_c·x_p), or with co-labels (and the
        current posteriors ``q``, whose ``unit_mass`` is ``mass`` if known) that probability blended with the
        labels other users gave the same pair, each weighted by their posterior of being in c
        (:meth:`colabel_log_likelihood`)."""
        if self.colabel_weight == 0 or q is None:
            loglik = self.pairs.user_units @ torch.nn.functional.logsigmoid(margins)
        else:
            loglik = self.colabel_log_likelihood(margins, q.reshape(len(q), -1), mass)
        return loglik.reshape(-1, self.runs, self.n_clusters)

    def colabel_log_likelihood(self, margins: torch.Tensor, q: torch.Tensor,
                               mass: torch.Tensor | None = None) -> torch.Tensor:
        """(n_users, M): Σ_{p∈u} log θ, θ = (σ(a_c·x_p) + w·A) / (1 + w·B), where B is the posterior mass in c of
        the *other* users who labelled the same pair and A the part of it that agrees with this label; w =
        ``colabel_weight``. A Beta prior centred on the teacher, updated by co-labellers: where nobody else
        labelled the pair it is σ(a_c·x_p). θ is clamped at 1e-6.

        The sums over a pair's labellers run per unit and per co-label cell; with α = σ + w·(mass of the pair's
        cell) and β = 1 + w·(mass of its key), both including the user itself, θ = (α − w·q_u) / (β − w·q_u):
        only that leave-one-out step is evaluated per pair, in chunks (into buffers made once: a fresh chunk-sized
        tensor per step cost page faults). Linear in labels."""
        pairs, w = self.pairs, self.colabel_weight
        mass = pairs.unit_mass(q) if mass is None else mass  # (units, M)
        cell = mass.new_zeros(int(pairs.cell_of_unit.max()) + 1, mass.shape[1]).index_add_(0, pairs.cell_of_unit,
                                                                                             mass)
        key = mass.new_zeros(int(pairs.key_of_unit.max()) + 1, mass.shape[1]).index_add_(0, pairs.key_of_unit, mass)
        sigma = torch.sigmoid(margins)
        loglik = pairs.lone_user_units @ torch.log(sigma.clamp_min(1e-6))
        alpha = sigma.add_(cell[pairs.cell_of_unit], alpha=w)
        beta = key[pairs.key_of_unit].mul_(w).add_(1.0)
        # Users in ``by_count`` order: slot j's users are a prefix, each adds its pairs' terms in pair order.
        weighted = q.index_select(0, pairs.by_count).mul_(w)
        loglik = loglik.index_select(0, pairs.by_count)
        width = min(pairs.chunk, len(pairs.slot_units[0])) if pairs.slot_units else 0
        theta, below = (q.new_empty(width, q.shape[1]) for _ in range(2))
        for units_of_slot in pairs.slot_units:
            for start in range(0, len(units_of_slot), pairs.chunk):
                units = units_of_slot[start:start + pairs.chunk]
                users, n = slice(start, start + len(units)), len(units)
                torch.index_select(alpha, 0, units, out=theta[:n]).sub_(weighted[users])
                torch.index_select(beta, 0, units, out=below[:n]).sub_(weighted[users])
                loglik[users].add_(theta[:n].div_(below[:n]).clamp_min_(1e-6).log_())
        return loglik.index_select(0, pairs.rank)

    def e_step(self, loglik: torch.Tensor, log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posteriors q (n_users, runs, C) and the new log π (runs, C) from users with pairs."""
        q = torch.softmax(loglik + log_weights[None], dim=-1)
        return q, torch.log(self._with_pairs(q).mean(0).clamp_min(1e-12))

    def _with_pairs(self, values: torch.Tensor) -> torch.Tensor:
        """The rows of users with pairs (``values`` itself when every user has some: no users × M copy)."""
        return values if self.every_user_has_pairs else values[self.has_pairs]

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
        mass = self.pairs.unit_mass(q.reshape(n_users, -1))  # of the current q: the E- and M-steps both read it
        teachers = self.m_step(torch.zeros(self.mask.shape, dtype=q.dtype, device=q.device), q.reshape(n_users, -1),
                               first_steps, weight=mass)
        log_weights = torch.full((self.runs, self.n_clusters), -float(np.log(self.n_clusters)), dtype=q.dtype,
                                 device=q.device)
        active = torch.ones(self.runs, dtype=torch.bool, device=q.device)
        rounds = torch.zeros(self.runs, dtype=torch.long, device=q.device)
        for _ in range(max_rounds):
            margins = self.margins(teachers)
            new_q, new_log_weights = self.e_step(self.log_likelihood(margins, q, mass), log_weights)
            moved = self._with_pairs(new_q - q).abs_().amax(dim=(0, 2)) > tol
            active &= moved
            if not active.any():
                break
            rounds += active
            q = new_q if bool(active.all()) else torch.where(active[None, :, None], new_q, q)
            log_weights = torch.where(active[:, None], new_log_weights, log_weights)
            mass = self.pairs.unit_mass(q.reshape(n_users, -1))
            updated = self.m_step(teachers, q.reshape(n_users, -1), steps, margins, weight=mass)
            teachers = torch.where(active.repeat_interleave(self.n_clusters)[:, None], updated, teachers)
        teachers = self.m_step(teachers, q.reshape(n_users, -1), last_steps, weight=mass)
        margins = self.margins(teachers)
        loglik = self.log_likelihood(margins)
        q = torch.softmax(self.log_likelihood(margins, q, mass) + log_weights[None], dim=-1)
        return teachers, log_weights, q, rounds, self.objective(loglik, log_weights, teachers)


class LocalRuns:
    """How the soft EM's runs are evaluated: here, all in one batch (one group). :class:`pafo.remote.RayRuns`
    splits them into groups evaluated as Ray tasks instead; the runs are independent, so both give the same
    clusters."""

    def groups(self, runs: int) -> int:
        """How many groups of runs to make (here: one, every run in one batched computation)."""
        return 1

    def __call__(self, function, shared: dict, parts: list[dict]) -> list:
        """``function(**shared, **part)`` for every part, in order."""
        return [function(**shared, **part) for part in parts]


def fit_soft_clusters(x: np.ndarray, pair_users: np.ndarray, n_users: int, *, n_clusters: int, restarts: int,
                      user_vectors: np.ndarray, sizes: tuple[int, ...] | None = None, ridge: float = 1.0,
                      max_rounds: int = 20, tol: float = 1e-4, seed: int = 0, device: str = "cpu",
                      colabels: CoLabels | None = None, colabel_weight: float = 0.0,
                      initial: np.ndarray | None = None, runner=None) -> ClusterFit:
    """Soft EM of module docstring step 2 over oriented training-pair differences ``x`` (pairs × r).

    ``sizes``: the nested subspace sizes (the first r columns of ``x``; default: all r); ``restarts`` runs in each,
    half from k-means on the normalised ``user_vectors`` (e.g. the baseline's b + w_u), half on each user's summed
    differences. ``initial`` (runs × n_users, clusters), when given, replaces the k-means starts (the reference test
    feeds both implementations the same ones). ``colabels`` with ``colabel_weight`` > 0 add the co-label view
    (``_SoftEM.colabel_probability``). Users without pairs get cluster −1 and a zero direction. ``runner``
    (default :class:`LocalRuns`) evaluates the runs, in groups of consecutive runs (e.g. as Ray tasks).
    """
    runner = runner or LocalRuns()
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
    shared = {"x": x, "pair_users": pair_users, "n_users": n_users, "n_clusters": n_clusters, "ridge": ridge,
              "max_rounds": max_rounds, "tol": tol, "device": device, "colabel_weight": colabel_weight,
              "colabels": colabels if colabel_weight > 0 else None}
    parts = [{"initial": initial[group], "size_of_run": size_of_run[group], "scale_of_run": scale_of_run[group]}
             for group in np.array_split(np.arange(runs), max(1, min(runs, runner.groups(runs))))]
    teachers, log_weights, q, rounds, objective = (np.concatenate(part, axis=1 if i == 2 else 0) for i, part in
                                                   enumerate(zip(*runner(em_runs, shared, parts), strict=True)))
    q = q.astype(np.float64)
    directions = np.einsum("nrc,rcd->nd", q, teachers) / runs
    directions[~has_pairs] = 0.0
    assignments = q.argmax(-1).T
    assignments[:, ~has_pairs] = -1
    return ClusterFit(teachers=teachers, assignments=assignments, directions=directions, objective=objective,
                      rounds=rounds, log_weights=log_weights, sizes=size_of_run, em="soft")


def em_runs(x: np.ndarray, pair_users: np.ndarray, n_users: int, *, initial: np.ndarray, size_of_run: np.ndarray,
            scale_of_run: np.ndarray, n_clusters: int, ridge: float, max_rounds: int, tol: float, device: str,
            colabels: CoLabels | None, colabel_weight: float) -> tuple[np.ndarray, ...]:
    """Soft EM of the runs started at ``initial`` (runs × n_users), each in its subspace size with its ridge scale,
    batched (:class:`_SoftEM`): their teachers (runs, C, r), log π (runs, C), final posteriors (n_users, runs, C,
    float32), rounds and objectives. A group of runs gives each run what the batch of all runs gives it."""
    runs, dim = len(initial), x.shape[1]
    has_pairs = np.bincount(pair_users, minlength=n_users) > 0
    # float32 for the pairs × models products (the bulk of the work), float64 for the Cholesky solves.
    tensor = lambda a, dtype=torch.float32: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
    pairs = _UserPairs(x, pair_users, n_users, device, colabels)
    mask = torch.arange(dim, device=device)[None, :] < tensor(np.repeat(size_of_run, n_clusters), torch.long)[:, None]
    ridge_of_model = tensor(np.repeat(ridge / scale_of_run**2, n_clusters))
    em = _SoftEM(pairs, tensor(has_pairs, torch.bool), mask, ridge_of_model, n_clusters, colabel_weight)
    start = np.zeros((n_users, runs, n_clusters), dtype=np.float32)
    start[np.arange(n_users)[:, None], np.arange(runs)[None, :], np.maximum(initial.T, 0)] = 1.0
    teachers, log_weights, q, rounds, objective = em.fit(tensor(start), max_rounds, tol)
    del start
    return (teachers.reshape(runs, n_clusters, dim).double().cpu().numpy(), log_weights.double().cpu().numpy(),
            q.cpu().numpy(), rounds.cpu().numpy(), objective.double().cpu().numpy())


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
             device: str = "cpu", runner=None) -> ClusterFit:
    """Steps 1 and 2 (``em="soft"``) or 3 (``em="hard"``, one size) of the module docstring on labelled training
    pairs (chosen, rejected, users). The basis has the largest of ``sizes`` directions; ``runner`` evaluates the
    soft EM's runs (:func:`fit_soft_clusters`)."""
    basis = pair_subspace(features, chosen, rejected, max(sizes))
    x = oriented_differences(features, basis, chosen, rejected)
    if em == "hard":
        fit = fit_clusters(x, users, n_users, n_clusters=n_clusters, restarts=restarts, user_vectors=user_vectors,
                           ridge=ridge, max_rounds=max_rounds, seed=seed)
    else:
        fit = fit_soft_clusters(x, users, n_users, n_clusters=n_clusters, restarts=restarts,
                                user_vectors=user_vectors, sizes=sizes, ridge=ridge, max_rounds=max_rounds, tol=tol,
                                colabels=CoLabels.of(chosen, rejected) if colabel_weight > 0 else None,
                                colabel_weight=colabel_weight, seed=seed, device=device, runner=runner)
    fit.basis = basis
    return fit


def per_user_fit(x: np.ndarray, pair_users: np.ndarray, n_users: int, ridge: float, steps: int = 8) -> np.ndarray:
    """Each user's own ridge BT direction, argmin Σ softplus(−a_u·x) + ridge/2·|a_u|² over the user's pairs, by
    Newton steps for all users at once (users without pairs get 0)."""
    dim = x.shape[1]
    to_user = sparse.csr_matrix((np.ones(len(x)), (pair_users, np.arange(len(x)))), shape=(n_users, len(x)))
    distinct = _distinct_rows(x)
    a = np.zeros((n_users, dim))
    for _ in range(steps):
        p = _sigmoid(np.einsum("nd,nd->n", a[pair_users], x))
        grad = -np.asarray(to_user @ ((1.0 - p)[:, None] * x)) + ridge * a
        hess = _outer_per_user(x, pair_users, n_users, p * (1.0 - p), distinct).reshape(-1, dim, dim)
        a -= np.linalg.solve(hess + ridge * np.eye(dim), grad[:, :, None])[:, :, 0]
    return a
