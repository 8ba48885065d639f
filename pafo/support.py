"""Preference support rates (spec §3) and majority / minority groups (spec §4).

The pair support s(u, p) is the share of the *other* users of the training population whose label on p equals
u's label; a user's support rate s(u) is the mean over u's training pairs. Three estimators, best first:

- ``exact``: persona weights known, every other user's label computed from the base scores (chunked sign matrix);
- ``colabel``: pairs labelled by at least 3 users, the share of the other labellers who agree;
- ``model``: a non-personalised Bradley–Terry model cross-fitted on the users outside u's fold, σ(margin).
"""

from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from .conditions import Is
from .config import OUT_OF_RANGE, check_range, option, validate_options
from .dataset import PreferenceDataset
from .errors import PafoInputError
from .metrics import pair_correct, support_deciles

__all__ = [
    "DEFAULT_MINORITY_QUANTILE",
    "GROUP_CUTS",
    "GroupConfig",
    "GroupResult",
    "SupportResult",
    "assign_groups",
    "colabel_support",
    "estimate_support",
    "exact_support",
    "model_support",
    "resolve_estimator",
    "support_table",
]

Estimator = Literal["auto", "exact", "colabel", "model"]

NO_PERSONAS = "estimator 'exact' needs persona weights; {name} has none, use 'colabel' or 'model'"
NO_COLABELS = "estimator 'colabel' needs pairs labelled by at least 3 users; {name} has none, use 'model'"
NO_EMBEDDINGS = ("estimator 'model' needs response embeddings; pass embeddings= or the encoder= of the run "
                 "(see pafo.encoders.embed_texts)")
# The bounds live on GroupConfig's fields (pafo.config); these names stay for callers matching messages.
BAD_QUANTILE = BAD_THRESHOLD = OUT_OF_RANGE
QUANTILE_BOUNDS, THRESHOLD_BOUNDS = {"gt": 0, "lt": 1}, {"ge": 0, "le": 1}
#: The default grouping rule: the minority is the lowest fifth of users by support rate.
DEFAULT_MINORITY_QUANTILE = 0.2
#: The two cuts of the grouping rule (GroupConfig's fields), of which one applies: the threshold when it is set.
GROUP_CUTS = ("minority_quantile", "minority_threshold")
EMPTY_GROUP = (
    "grouping left the {group} group empty ({rule} = {value}); choose a {hint} so both groups have users"
)
MIN_COLABELLERS = 3
# Above this many (pair × user) comparisons the exact estimator samples other users instead of using all.
MAX_COMPARISONS = 10**11
# Margins per block of the exact estimator (1 MB of float32): small enough that each worker thread's block stays in
# its core's cache between the matmul, the sign and the sum, large enough that per-block overhead is small.
BLOCK_ELEMENTS = 2**18


@dataclass
class GroupConfig:
    """How support rates are estimated and how users are split into majority and minority groups."""

    minority_quantile: float = option(
        DEFAULT_MINORITY_QUANTILE, "minority = users at or below this quantile of support rate", **QUANTILE_BOUNDS,
        label="minority quantile", grid=(0.1, 0.2, 0.3), active_when=Is("groups.minority_threshold", None))
    minority_threshold: float | None = option(None, "minority = users at or below this absolute support rate",
                                              **THRESHOLD_BOUNDS, label="minority threshold (support rate)")
    estimator: Literal["auto", "exact", "colabel", "model"] = option("auto", "support-rate estimator",
                                                                     label="support estimator")

    def validate(self) -> GroupConfig:
        return validate_options(self)

    def apply(self, user_support: pd.Series) -> GroupResult:
        return assign_groups(user_support, quantile=self.minority_quantile, threshold=self.minority_threshold)

    def cut(self) -> tuple[str, float]:
        """The cut that applies: ``("threshold", t)`` when a threshold is set, else ``("quantile", q)``."""
        if self.minority_threshold is not None:
            return "threshold", float(self.minority_threshold)
        quantile = self.minority_quantile
        return "quantile", float(DEFAULT_MINORITY_QUANTILE if quantile is None else quantile)

    def rule_text(self) -> str:
        """The rule in words, as every page says it: "support ≤ 0.300" or "lowest 20% support"."""
        rule, value = self.cut()
        return f"support ≤ {value:.3f}" if rule == "threshold" else f"lowest {100 * value:.0f}% support"


@dataclass
class SupportResult:
    """Support rates of one dataset; ``user_support`` is indexed by user, ``pair_support`` by train pair."""

    estimator: str
    user_support: pd.Series
    pair_support: pd.Series
    sampled_users: int | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """The ``support`` block of ``pafo support --json``."""
        values = self.user_support.dropna().to_numpy()
        quantiles = np.quantile(values, [0.1, 0.5, 0.9]) if len(values) else [np.nan] * 3
        block = {"estimator": self.estimator,
                 "users": {"mean": float(values.mean()) if len(values) else None,
                           "p10": float(quantiles[0]), "p50": float(quantiles[1]), "p90": float(quantiles[2])}}
        if self.sampled_users:
            block["sampled_users"] = self.sampled_users
        if self.notes:
            block["notes"] = list(self.notes)
        return block


@dataclass
class GroupResult:
    """Majority / minority membership per user (index = user) and the rule that produced it."""

    groups: pd.Series
    rule: str
    threshold: float

    @property
    def minority_users(self) -> np.ndarray:
        return self.groups.index[self.groups == "minority"].to_numpy()

    @property
    def majority_users(self) -> np.ndarray:
        return self.groups.index[self.groups == "majority"].to_numpy()

    def summary(self) -> dict:
        return {"rule": self.rule, "threshold": float(self.threshold),
                "n_majority": len(self.majority_users), "n_minority": len(self.minority_users)}


def _per_user(pair_support: pd.Series, users: np.ndarray, n_users: int) -> pd.Series:
    means = pd.Series(pair_support.to_numpy(), index=users).groupby(level=0).mean()
    return means.reindex(range(n_users)).rename("support_rate")


def _agreement_counts(directions, others, chunk: int) -> np.ndarray:
    """For each direction d, the number of persona rows w with d·w > 0 (ties count one half).

    Σ sign(d·w) = #(> 0) − #(< 0), so #(> 0) + ½·#(= 0) = (n + Σ sign) / 2: per block of directions one matmul into
    a reused buffer, one in-place sign and one float32 row sum, instead of two comparisons and two boolean (int64)
    reductions. The signs are integers, so the float32 sum is exact below 2**24 users and the counts equal the
    comparisons'. Blocks are shared out to up to ``torch.get_num_threads()`` threads, each running single-threaded
    torch on its own cache-sized buffer and taking the next block when done: unlike splitting every op across
    threads, one thread slowed by other processes on the machine does not hold the others at a barrier.
    """
    import torch

    n = len(others)
    counts = np.zeros(len(directions), dtype=np.float64)
    if len(directions) == 0:
        return counts
    if not _sign_sum_safe(directions, others):  # NaN / overflow: keep the comparisons' rule (NaN never agrees)
        for start in range(0, len(directions), chunk):
            margins = directions[start : start + chunk] @ others.T
            counts[start : start + chunk] = pair_correct(margins.numpy()).sum(1)
        return counts
    sum_dtype = torch.float32 if n < 2**24 else torch.float64
    starts = iter(range(0, len(directions), chunk))
    lock = threading.Lock()

    def work(single_threaded: bool) -> None:
        if single_threaded:
            torch.set_num_threads(1)  # this thread's OpenMP / MKL pool
        with torch.inference_mode():
            buffer = torch.empty((min(chunk, len(directions)), n), dtype=directions.dtype)
            while True:
                with lock:
                    start = next(starts, None)
                if start is None:
                    return
                block = directions[start : start + chunk]
                margins = buffer[: len(block)]
                torch.matmul(block, others.T, out=margins)
                torch.sign(margins, out=margins)
                counts[start : start + len(block)] = margins.sum(1, dtype=sum_dtype).numpy()

    threads = torch.get_num_threads()
    n_workers = min(threads, -(-len(directions) // chunk))
    if n_workers <= 1:
        work(single_threaded=False)
    else:
        with concurrent.futures.ThreadPoolExecutor(n_workers) as pool:
            try:
                for future in [pool.submit(work, True) for _ in range(n_workers)]:
                    future.result()
            finally:
                torch.set_num_threads(threads)  # the default that threads started later inherit
    return (counts + n) * 0.5


def _sign_sum_safe(directions, others) -> bool:
    """True when every d·w is finite: finite inputs and K·max|d|·max|w| below the float32 range."""
    import torch

    if not (bool(torch.isfinite(directions).all()) and bool(torch.isfinite(others).all())):
        return False
    if len(others) == 0:
        return True
    bound = directions.shape[1] * float(directions.abs().max()) * float(others.abs().max())
    return bound < float(torch.finfo(directions.dtype).max) / 2


def _lift_tiny_rows(weights: np.ndarray) -> np.ndarray:
    """Rows (float32) times a power of two, so that no non-zero entry is near float32's subnormal range.

    Dirichlet draws with a small α give some users weights below 1e-38; once in float32 those are subnormal, and
    every matmul vector that touches one is several times slower on x86 (a 10^5 × 10^4 case ran 3.5× slower with 3%
    of the users affected). Only rows whose smallest non-zero |w| is below 2**-90 are scaled, by 2**e with e chosen
    to lift it to 2**-90 or more but keep the row's largest |w| below 2**40. Scaling a row by 2**e scales every
    product and partial sum of its margins exactly unless the unscaled arithmetic itself underflowed, so the signs
    (all the estimator counts) are unchanged, short of margins that cancel to below ~1e-30 in float32 rounding.
    """
    magnitude = np.abs(weights)
    finite = np.isfinite(magnitude).all(axis=1)
    smallest = np.where(magnitude > 0, magnitude, np.inf).min(axis=1, initial=np.inf)
    tiny = finite & (smallest < 2.0**-90)
    if not tiny.any():
        return weights
    with np.errstate(divide="ignore"):
        up = np.ceil(-90 - np.log2(smallest[tiny].astype(np.float64)))
        cap = np.floor(40 - np.log2(magnitude[tiny].max(axis=1).astype(np.float64)))
    lifted = weights.copy()
    lifted[tiny] = np.ldexp(weights[tiny], np.maximum(np.minimum(up, cap), 0).astype(np.int32)[:, None])
    return lifted


def _distinct_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a float32 matrix and each row's index among them (as ``np.unique(axis=0)``, ~5x faster).

    Rows are compared as raw bytes (one void item per row), after adding +0.0 so that −0.0 and 0.0 are one value."""
    rows = np.asarray(values, dtype=np.float32) + np.float32(0.0)
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    distinct, inverse = np.unique(keys, return_inverse=True)
    return distinct.view(np.float32).reshape(-1, rows.shape[1]), inverse.ravel()


def exact_support(
    dataset: PreferenceDataset, *, max_comparisons: int = MAX_COMPARISONS, seed: int = 0, chunk: int | None = None
) -> SupportResult:
    """Exact pair and user support from persona weights: every other user labels every training pair."""
    if dataset.persona_weights is None or dataset.base_scores is None:
        raise PafoInputError(NO_PERSONAS.format(name=dataset.name))
    train = dataset.split("train")
    users = train["user"].to_numpy()
    diff = dataset.base_scores[train["chosen"].to_numpy()] - dataset.base_scores[train["rejected"].to_numpy()]
    # Many pairs share a score difference (DSP has 12 domain pairs), so each distinct one is scored once.
    directions, inverse = _distinct_rows(diff)
    weights = dataset.persona_weights.astype(np.float32)
    n_users, sampled, notes = len(weights), None, []
    if len(directions) * n_users > max_comparisons:
        sampled = max(2, int(max_comparisons // len(directions)))
        others = np.sort(np.random.default_rng(seed).choice(n_users, size=sampled, replace=False))
        notes.append(f"sampled {sampled} of {n_users} users as the labelling population")
    else:
        others = np.arange(n_users)
    chunk = chunk or max(1, BLOCK_ELEMENTS // max(len(others), 1))
    import torch

    with torch.inference_mode():
        # Lifting rows out of the subnormal range changes no sign, only the speed (see _lift_tiny_rows).
        population = torch.from_numpy(_lift_tiny_rows(weights[others]))
        counts = _agreement_counts(torch.from_numpy(_lift_tiny_rows(directions)), population, chunk)
    own = np.einsum("pk,pk->p", diff, dataset.persona_weights[users])
    own_agrees = np.where(own > 0, 1.0, np.where(own == 0, 0.5, 0.0))
    in_population = np.isin(users, others)
    agree = counts[inverse] - own_agrees * in_population
    pair_support = pd.Series(agree / (len(others) - in_population), index=train.index, name="pair_support")
    return SupportResult("exact", _per_user(pair_support, users, n_users), pair_support, sampled, notes)


def colabel_support(dataset: PreferenceDataset, *, min_labellers: int = MIN_COLABELLERS) -> SupportResult:
    """Share of the other labellers of the same pair (same prompt, same two responses) who agree."""
    train = dataset.split("train")
    low = np.minimum(train["chosen"], train["rejected"]).to_numpy()
    high = np.maximum(train["chosen"], train["rejected"]).to_numpy()
    key = pd.MultiIndex.from_arrays([low, high])
    frame = pd.DataFrame({"key": pd.factorize(key)[0], "chosen": train["chosen"].to_numpy()}, index=train.index)
    n_labels = frame.groupby("key")["chosen"].transform("size")
    same = frame.groupby(["key", "chosen"])["chosen"].transform("size")
    support = ((same - 1) / (n_labels - 1)).where(n_labels >= min_labellers)
    if support.notna().sum() == 0:
        raise PafoInputError(NO_COLABELS.format(name=dataset.name))
    pair_support = support.rename("pair_support")
    user_support = _per_user(pair_support, train["user"].to_numpy(), dataset.n_users)
    notes = [f"{int(support.notna().sum())} of {len(support)} training pairs have ≥{min_labellers} labellers"]
    return SupportResult("colabel", user_support, pair_support, None, notes)


def model_support(dataset: PreferenceDataset, embeddings: np.ndarray, *, folds: int = 5, seed: int = 0,
                  C: float = 1.0) -> SupportResult:  # noqa: N803 - scikit-learn's name for the inverse penalty
    """σ(margin) of a non-personalised Bradley–Terry model fitted on the users outside each user's fold."""
    from sklearn.linear_model import LogisticRegression

    train = dataset.split("train")
    users = train["user"].to_numpy()
    x = embeddings[train["chosen"].to_numpy()] - embeddings[train["rejected"].to_numpy()]
    fold_of_user = np.random.default_rng(seed).permutation(dataset.n_users) % folds
    fold = fold_of_user[users]
    pair_support = np.full(len(train), np.nan)
    for f in range(folds):
        held_out = fold == f
        if not held_out.any() or held_out.all():
            continue
        # Both orientations, so the logistic regression without intercept is a Bradley–Terry model.
        fit_x = np.vstack([x[~held_out], -x[~held_out]])
        fit_y = np.r_[np.ones((~held_out).sum()), np.zeros((~held_out).sum())]
        model = LogisticRegression(C=C, fit_intercept=False, max_iter=1000).fit(fit_x, fit_y)
        pair_support[held_out] = model.predict_proba(x[held_out])[:, 1]
    series = pd.Series(pair_support, index=train.index, name="pair_support")
    notes = [f"Bradley–Terry logistic model cross-fitted over {folds} user folds"]
    return SupportResult("model", _per_user(series, users, dataset.n_users), series, None, notes)


def _has_colabels(dataset: PreferenceDataset) -> bool:
    train = dataset.split("train")
    key = pd.MultiIndex.from_arrays([np.minimum(train["chosen"], train["rejected"]),
                                     np.maximum(train["chosen"], train["rejected"])])
    sizes = pd.Series(1, index=key).groupby(level=[0, 1]).transform("size")
    covered = pd.Series((sizes >= MIN_COLABELLERS).to_numpy(), index=train["user"].to_numpy()).groupby(level=0)
    return bool(covered.any().reindex(range(dataset.n_users), fill_value=False).all())


def resolve_estimator(dataset: PreferenceDataset, estimator: Estimator = "auto") -> str:
    """The estimator ``auto`` stands for: exact with personas, co-label when every user has co-labels, else model."""
    if estimator != "auto":
        return estimator
    if dataset.persona_weights is not None and dataset.base_scores is not None:
        return "exact"
    return "colabel" if _has_colabels(dataset) else "model"


def estimate_support(
    dataset: PreferenceDataset, estimator: Estimator = "auto", *, embeddings: np.ndarray | None = None,
    encoder: str | None = None, seed: int = 0
) -> SupportResult:
    """Support rates with the best estimator the data allows (or the one asked for).

    The one estimation path of runs, ``pafo support`` and the Support page: the model estimator reads response
    features, either ``embeddings`` (a run's own) or those of ``encoder`` (embedded here through the disk cache),
    so with the same encoder all three group the users alike.
    """
    estimator = resolve_estimator(dataset, estimator)
    if estimator == "exact":
        return exact_support(dataset, seed=seed)
    if estimator == "colabel":
        return colabel_support(dataset)
    if embeddings is None and encoder is not None:
        from .features import response_features

        embeddings = response_features(dataset, encoder).features
    if embeddings is None:
        raise PafoInputError(NO_EMBEDDINGS)
    return model_support(dataset, embeddings, seed=seed)


def assign_groups(user_support: pd.Series, *, quantile: float | None = DEFAULT_MINORITY_QUANTILE,
                  threshold: float | None = None) -> GroupResult:
    """Minority = users whose support rate is at or below the threshold (absolute, or the given quantile)."""
    values = user_support.dropna()
    if threshold is not None:
        rule, cut = "threshold", float(check_range("--minority-threshold", threshold, **THRESHOLD_BOUNDS))
    else:
        quantile = check_range("--minority-quantile", DEFAULT_MINORITY_QUANTILE if quantile is None else quantile,
                               **QUANTILE_BOUNDS)
        rule, cut = "quantile", float(np.quantile(values, quantile))
    groups = pd.Series(np.where(user_support <= cut, "minority", "majority"), index=user_support.index,
                       name="group")
    for group in ("minority", "majority"):
        if not (groups == group).any():
            value = threshold if rule == "threshold" else quantile
            hint = "higher threshold" if group == "minority" else "lower threshold"
            raise PafoInputError(EMPTY_GROUP.format(group=group, rule=rule, value=value,
                                                    hint=hint if rule == "threshold" else "quantile nearer 0.5"))
    return GroupResult(groups, rule, cut)


def support_table(dataset: PreferenceDataset, support: SupportResult, groups: GroupResult) -> pd.DataFrame:
    """One row per user: id, group, support rate, the judge that dominates a simulated persona (when known), pair
    counts and the support decile of the bias curve (``pafo.metrics.support_deciles``); the Support page and
    ``pafo support --csv`` show this table."""
    table = dataset.users[["user_id"]].assign(group=groups.groups, support_rate=support.user_support)
    if "dominant" in dataset.users and dataset.users["dominant"].notna().any():
        table["dominant"] = dataset.users["dominant"]
    table = table.join(dataset.user_pair_counts())
    table["decile"] = pd.array(support_deciles(support.user_support.to_numpy(dtype=float)), dtype="Int64")
    return table
