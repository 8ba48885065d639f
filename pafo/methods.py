"""Training methods (spec §6): bt, baseline, reweight, groupdro and PAFO, each with its own config dataclass.

PAFO: group the users on training data, train a teacher per group on that group's pairs only, give every
training pair the margin of the teacher of its user's group (conditional supervision; optionally also on
``dense`` teacher-labelled pairs the user never labelled), then distil into one student with
``BT + λ·BCE(σ(m_S/τ), σ(m_T/τ))`` and keep the epoch chosen by the Pareto rule on validation pairs.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from threadpoolctl import threadpool_limits

from .clusters import ClusterFit, discover, oriented_differences, pair_differences
from .compare import DEFAULT_EPSILON
from .lexical import LexicalView
from .method_configs import (
    METHOD_CONFIGS,
    METHODS,
    BaselineConfig,
    BTConfig,
    GroupDROConfig,
    MixtureConfig,
    PAFOConfig,
    ReweightConfig,
    method_spec,
)
from .metrics import Group
from .models import RewardModel, WideRewardModel
from .training import (
    GroupDRO,
    Objective,
    PairSet,
    Progress,
    TrainConfig,
    TrainResult,
    never_stop,
    no_progress,
    pair_margins,
    train_model,
)

__all__ = [
    "CLUSTERS",
    "DENSE_PAIRS",
    "METHODS",
    "METHOD_CONFIGS",
    "NEW_USER_RULE",
    "TEACHERS",
    "BTConfig",
    "BaselineConfig",
    "GroupDROConfig",
    "MethodContext",
    "MixtureConfig",
    "PAFOConfig",
    "ReweightConfig",
    "SeedEvaluation",
    "cluster_pairs",
    "dense_pairs",
    "fit_method",
    "pareto_score",
    "preference_clusters",
    "student_config",
    "wide_model",
]



@dataclass
class MethodContext:
    """Everything a method needs; ``user_group`` (0/1 per user) is for losses and selection, never a model input."""

    features: torch.Tensor
    n_users: int
    user_group: np.ndarray
    train: PairSet
    val: PairSet
    prompt_responses: dict[int, np.ndarray]
    train_prompts_of_user: list[np.ndarray]
    train_config: TrainConfig
    seed: int = 0
    epsilon: float = DEFAULT_EPSILON  # the run's Pareto tolerance (RunSettings.epsilon), for PAFO's epoch selection
    progress: Progress = no_progress
    should_stop: object = never_stop
    span: tuple[float, float] = (0.0, 1.0)
    cache: dict = field(default_factory=dict)
    runner: object = None  # how the cluster step's EM runs are evaluated (pafo.clusters.LocalRuns by default)
    #: PAFO's fitted lexical view when ``features`` is [φ, its columns] (:mod:`pafo.lexical`); None: φ alone.
    lexical: LexicalView | None = None
    lexical_seconds: float = 0.0  # what fitting and applying the view cost (counted in the cluster step's time)

    @property
    def lexical_dim(self) -> int:
        """Columns of the lexical view at the end of every feature row (0 without one)."""
        return 0 if self.lexical is None else self.lexical.dim

    @property
    def encoder_dim(self) -> int:
        """Columns of φ, the encoder's features, that every model's g reads."""
        return self.features.shape[1] - self.lexical_dim

    @property
    def prompt_of_response(self) -> np.ndarray:
        """Prompt id of every feature row (−1 for rows no pair may use)."""
        prompts = np.full(len(self.features), -1, dtype=np.int64)
        for prompt, rows in self.prompt_responses.items():
            prompts[rows] = prompt
        return prompts

    def new_model(self, personalized: bool = True) -> RewardModel:
        """A fresh model on the features' device (initialised on the CPU, so its start is the same on any)."""
        torch.manual_seed(self.seed)
        return RewardModel(self.encoder_dim, self.n_users, hidden=self.train_config.hidden,
                           k=self.train_config.k, personalized=personalized,
                           normalise=self.train_config.normalise).to(self.features.device)

    def fit(self, model, train: PairSet, val: PairSet, stage: str, span, **kwargs) -> TrainResult:
        return train_model(model, self.features, train, val, kwargs.pop("config", self.train_config),
                           seed=self.seed, stage=stage, progress=self.progress, should_stop=self.should_stop,
                           span=span, **kwargs)


@dataclass
class SeedEvaluation:
    """One trained seed as a method's report hook (``MethodSpec.report``) and the diagnostics read it: the context
    (its trained models in ``ctx.cache``), the test pairs, the data and its groups, and each method's options by
    name (``options("pafo")``)."""

    ctx: MethodContext
    test: PairSet
    dataset: object  # PreferenceDataset
    support: object  # SupportResult
    groups: object  # Grouping
    options: Callable[[str], object]


#: Keys of ``MethodOutput.extra`` that the methods' report hook reads (pafo.diagnostics.method_report).
CLUSTERS, TEACHERS, DENSE_PAIRS = "clusters", "teachers", "n_dense_pairs"
#: Key of ``MethodOutput.extra``: how the model's cluster channel places a new user (pafo.unseen.RULES).
NEW_USER_RULE = "new_user_rule"


@dataclass
class MethodOutput:
    """A trained method: its model, the training result and what else the fit made (``extra``: the preference
    clusters, group teachers and pair counts under the keys above, and setup seconds)."""

    model: RewardModel
    result: TrainResult
    extra: dict = field(default_factory=dict)


def _split_span(span: tuple[float, float], parts: list[float]) -> list[tuple[float, float]]:
    edges = span[0] + (span[1] - span[0]) * np.cumsum([0, *parts]) / sum(parts)
    return list(itertools.pairwise(edges))


def baseline_output(ctx: MethodContext, span) -> MethodOutput:
    """The baseline, trained once per context and shared by PAFO (its teachers and student start from it)."""
    if "baseline" not in ctx.cache:
        model = ctx.new_model()
        ctx.cache["baseline"] = MethodOutput(model, ctx.fit(model, ctx.train, ctx.val, "baseline", span))
    return ctx.cache["baseline"]


def fit_bt(ctx: MethodContext, config: BTConfig, span) -> MethodOutput:
    model = ctx.new_model(personalized=False)
    return MethodOutput(model, ctx.fit(model, ctx.train, ctx.val, "bt", span))


def fit_reweight(ctx: MethodContext, config: ReweightConfig, span) -> MethodOutput:
    counts = np.bincount(ctx.train.group, minlength=2).astype(np.float64)
    weight = (len(ctx.train) / (2 * np.maximum(counts, 1)))[ctx.train.group].astype(np.float32)
    train = copy.copy(ctx.train)
    train.weight = weight
    model = ctx.new_model()
    return MethodOutput(model, ctx.fit(model, train, ctx.val, "reweight", span))


def fit_groupdro(ctx: MethodContext, config: GroupDROConfig, span) -> MethodOutput:
    model = ctx.new_model()
    objective = Objective(dro=GroupDRO(len(Group), config.dro_step))
    output = MethodOutput(model, ctx.fit(model, ctx.train, ctx.val, "groupdro", span, objective=objective))
    output.extra["group_weights"] = objective.dro.q.tolist()
    return output


def pareto_score(baseline_majority: float, epsilon: float):
    """Selection key: epochs keeping majority ≥ baseline − ε rank first, by minority accuracy, then overall."""

    def score(metrics: dict) -> tuple:
        qualifies = (metrics.get("majority") or 0.0) >= baseline_majority - epsilon - 1e-12
        if qualifies:
            return (1, metrics.get("minority") or 0.0, metrics["overall"])
        return (0, metrics["overall"], metrics.get("minority") or 0.0)

    return score


def _teacher(ctx: MethodContext, base: RewardModel, config: PAFOConfig, group: int, span) -> MethodOutput:
    """A teacher trained only on the training (and validation) pairs of users in ``group``."""
    rows = np.flatnonzero(ctx.user_group[ctx.train.users] == group)
    val_rows = np.flatnonzero(ctx.user_group[ctx.val.users] == group)
    train, val = ctx.train.subset(rows), ctx.val.subset(val_rows)
    assert set(np.unique(ctx.user_group[train.users])) == {group}, "a teacher saw another group's pairs"
    model = ctx.new_model() if config.teacher_init == "scratch" else copy.deepcopy(base)
    if config.teacher_init == "recentred":
        recentre(model, np.unique(train.users))
    train_config = finetune_config(ctx, config)
    if config.teacher_user_l2 is not None:
        train_config = dataclasses.replace(train_config, user_l2=config.teacher_user_l2)
    name = Group(group).label
    result = ctx.fit(model, train, val, f"teacher:{name}", span, config=train_config,
                     keep_initial=config.keep_initial)
    return MethodOutput(model, result, {"train_users": np.unique(train.users), "n_train_pairs": len(train)})


@torch.no_grad()
def recentre(model: RewardModel, users: np.ndarray) -> None:
    """Move b to the mean of ``users``' vectors b + w_u, keeping every b + w_u (so the function) unchanged.

    The L2 prior then shrinks the group's users towards their own group's taste instead of the population's.
    """
    index = torch.from_numpy(users).to(model.b.device)
    vectors = model.b + model.w.weight
    model.b.copy_(vectors[index].mean(0))
    model.w.weight.copy_(vectors - model.b)


def dense_pairs(ctx: MethodContext, per_user: int, rng: np.random.Generator) -> PairSet:
    """Up to ``per_user`` unlabelled response pairs per user, drawn from the prompts of the user's training pairs."""
    labelled = set(zip(ctx.train.users.tolist(), np.minimum(ctx.train.chosen, ctx.train.rejected).tolist(),
                       np.maximum(ctx.train.chosen, ctx.train.rejected).tolist(), strict=True))
    chosen, rejected, users = [], [], []
    for user, prompts in enumerate(ctx.train_prompts_of_user):
        candidates = [(a, b) for p in prompts for i, a in enumerate(ctx.prompt_responses[p])
                      for b in ctx.prompt_responses[p][i + 1:] if (user, min(a, b), max(a, b)) not in labelled]
        if not candidates:
            continue
        picks = rng.choice(len(candidates), size=min(per_user, len(candidates)), replace=False)
        chosen += [candidates[i][0] for i in picks]
        rejected += [candidates[i][1] for i in picks]
        users += [user] * len(picks)
    users_array = np.asarray(users, dtype=np.int64)
    return PairSet(np.asarray(chosen, dtype=np.int64), np.asarray(rejected, dtype=np.int64), users_array,
                   group=ctx.user_group[users_array])


def _teacher_targets(ctx: MethodContext, teachers: dict, pairs: PairSet) -> np.ndarray:
    """m_T for every pair from the teacher of the pair's user's group: the conditional supervision."""
    target = np.zeros(len(pairs), dtype=np.float32)
    for group, teacher in teachers.items():
        rows = np.flatnonzero(ctx.user_group[pairs.users] == group)
        target[rows] = pair_margins(teacher.model, ctx.features, pairs.subset(rows))
    return target


def _orient(pairs: PairSet, target: np.ndarray) -> PairSet:
    """Dense pairs are oriented by the teacher: its preferred response becomes 'chosen'."""
    flip = target < 0
    chosen, rejected = np.where(flip, pairs.rejected, pairs.chosen), np.where(flip, pairs.chosen, pairs.rejected)
    return PairSet(chosen, rejected, pairs.users, group=pairs.group, labelled=np.zeros(len(pairs), dtype=bool),
                   target=np.abs(target).astype(np.float32), target_mask=np.ones(len(pairs), dtype=np.float32))


def _concat(a: PairSet, b: PairSet) -> PairSet:
    return PairSet(**{k: np.concatenate([getattr(a, k), getattr(b, k)]) for k in
                      ("chosen", "rejected", "users", "group", "labelled", "target", "target_mask")})


def student_pairs(ctx: MethodContext, teachers: dict, config: PAFOConfig) -> PairSet:
    """Training pairs with their conditional targets, plus the dense teacher-labelled pairs."""
    target = _teacher_targets(ctx, teachers, ctx.train)
    mask = (target > 0) if config.condition == "group+agree" else np.ones(len(target), dtype=bool)
    train = PairSet(ctx.train.chosen, ctx.train.rejected, ctx.train.users, group=ctx.train.group,
                    labelled=np.ones(len(ctx.train), dtype=bool), target=target,
                    target_mask=mask.astype(np.float32))
    if config.dense <= 0:
        return train
    extra = dense_pairs(ctx, config.dense, np.random.default_rng(ctx.seed + 1))
    pairs = _concat(train, _orient(extra, _teacher_targets(ctx, teachers, extra)))
    if config.batches == "by_prompt":
        pairs.block = ctx.prompt_of_response[pairs.chosen]
    return pairs


def finetune_config(ctx: MethodContext, config: PAFOConfig) -> TrainConfig:
    """The baseline's settings with PAFO's patience: teachers and student both start from the trained baseline."""
    return dataclasses.replace(ctx.train_config, patience=config.finetune_patience)


def student_config(ctx: MethodContext, config: PAFOConfig, n_pairs: int) -> TrainConfig:
    """The student's training settings: the baseline's, with PAFO's fine-tune patience.

    With ``scale_batch`` a batch holds the baseline's batch of labelled pairs plus their share of dense pairs, so
    dense pairs add rows per step, not steps (g runs once per distinct response, so extra rows are cheap). Each
    user vector then gets as many updates as in the baseline, on `factor` times the pairs; its learning rate grows
    by √factor, Adam's square-root rule for larger batches.
    """
    finetune = finetune_config(ctx, config)
    if not config.scale_batch:
        return finetune
    factor = max(n_pairs / max(len(ctx.train), 1), 1.0)
    return dataclasses.replace(finetune, batch_size=int(np.ceil(finetune.batch_size * factor)),
                               user_lr_scale=finetune.user_lr_scale * float(np.sqrt(factor)))


def fit_pafo(ctx: MethodContext, config: PAFOConfig, span) -> MethodOutput:
    """PAFO with preference-cluster teachers (default) or the paper's two support-group teachers."""
    if config.teachers == "groups":
        return _fit_pafo_groups(ctx, config, span)
    spans = _split_span(span, [2, 1, 2])
    base = baseline_output(ctx, spans[0])
    ctx.progress(spans[1][0], "pafo: preference clusters", None)
    clusters = preference_clusters(ctx, config, base.model)
    teacher = wide_model(ctx, base.model, clusters, config.beta)
    if config.calibrate:
        calibrate_held_out(ctx, base.model, clusters, config, teacher)
    extra = {CLUSTERS: clusters, "teacher": teacher,
             "setup_seconds": base.result.seconds + ctx.cache["clusters_seconds"]}
    if config.student == "wide":
        return MethodOutput(teacher, TrainResult(teacher), {**extra, NEW_USER_RULE: "posterior"})
    student, result, n_pairs = _distil(ctx, base.model, teacher, config, spans[2])
    extra.update({"n_student_pairs": n_pairs, DENSE_PAIRS: n_pairs - len(ctx.train)})
    return MethodOutput(student, result, extra)


def cluster_key(config: PAFOConfig) -> tuple:
    """The options the cluster step reads: two configs with the same key share one fit in ``ctx.cache``."""
    soft = config.cluster_em == "soft"
    return ("clusters", config.cluster_em, config.clusters, config.restarts, config.cluster_sizes(),
            config.cluster_ridge, config.em_rounds, config.em_tol if soft else None,
            config.colabel_weight if soft else None, bool(config.cluster_val), float(config.lexical_weight))


def cluster_pairs(ctx: MethodContext, config: PAFOConfig) -> PairSet:
    """The labelled pairs the cluster step reads: the training pairs, and the validation pairs with ``cluster_val``
    (one more pair per user at the default split: with ~7 pairs per user each pair places a user noticeably better;
    issue 20's second pass measured +1.1 / +0.7 minority points, synthetic / DSP, on development seeds). No
    student selects its epoch on validation labels (the wide one fits only a sign-preserving temperature there; the
    distilled one selects on teacher-labelled pairs). Test pairs never."""
    if not config.cluster_val or not len(ctx.val):
        return ctx.train
    return PairSet(np.r_[ctx.train.chosen, ctx.val.chosen], np.r_[ctx.train.rejected, ctx.val.rejected],
                   np.r_[ctx.train.users, ctx.val.users])


def preference_clusters(ctx: MethodContext, config: PAFOConfig, base: RewardModel) -> ClusterFit:
    """Preference clusters on the labelled pairs of :func:`cluster_pairs` (``pafo.clusters``: soft EM on the mixture
    likelihood by default, hard EM with ``cluster_em="hard"``), once per context and options."""
    key = cluster_key(config)
    if key not in ctx.cache:
        started = time.perf_counter()
        with torch.no_grad():
            user_vectors = base.user_vectors(torch.arange(ctx.n_users, device=base.b.device)).cpu().numpy()
        # One BLAS/OpenMP thread, as in training: the matrices are small, and spinning worker threads on a busy
        # 2-core machine cost more than they give.
        pairs = cluster_pairs(ctx, config)
        scale = view_scale(ctx, pairs, config.lexical_weight)
        features = ctx.features.cpu().numpy()
        with threadpool_limits(1):
            ctx.cache[key] = discover(features if scale is None else features * scale, pairs.chosen, pairs.rejected,
                                      pairs.users, ctx.n_users, em=config.cluster_em,
                                      sizes=config.cluster_sizes(), n_clusters=config.clusters,
                                      restarts=config.restarts, user_vectors=user_vectors,
                                      ridge=config.cluster_ridge, max_rounds=config.em_rounds, tol=config.em_tol,
                                      colabel_weight=config.colabel_weight, seed=ctx.seed,
                                      device=str(ctx.features.device), runner=ctx.runner)
        if scale is not None:  # the basis of the unscaled rows: E·diag(scale)
            ctx.cache[key].basis = ctx.cache[key].basis * scale
        # The lexical view exists for the cluster step alone, so its cost is the step's (PAFO's and the mixture's).
        ctx.cache["clusters_seconds"] = time.perf_counter() - started + ctx.lexical_seconds
    return ctx.cache[key]


def view_scale(ctx: MethodContext, pairs: PairSet, lexical_weight: float) -> np.ndarray | None:
    """Per-column weights (float32) of the feature rows in the cluster step; None for φ alone (used as is).

    With the lexical view each view is divided by the root mean square norm of its differences on ``pairs`` (so
    the two weigh the same whatever their scales) and the lexical one multiplied by ``lexical_weight``; a column
    of weight 0 drops out of the teachers' subspace (``pair_subspace`` skips columns that are 0 in every
    difference). Differences are formed a block of pairs at a time (``pair_differences``)."""
    if not ctx.lexical_dim:
        return None
    features, split = ctx.features.cpu().numpy(), ctx.encoder_dim
    squares = np.zeros(2)
    for _, difference in pair_differences(features, pairs.chosen, pairs.rejected):
        squares += (difference[:, :split] ** 2).sum(), (difference[:, split:] ** 2).sum()
    rms = np.sqrt(squares / max(len(pairs.chosen), 1))
    rms[rms == 0] = 1.0
    weights = np.r_[np.full(split, 1.0 / rms[0]), np.full(features.shape[1] - split, lexical_weight / rms[1])]
    return weights.astype(np.float32)


def _wide_shell(ctx: MethodContext, base: RewardModel, basis: np.ndarray) -> WideRewardModel:
    model = WideRewardModel(base.in_dim, base.n_users, rank=len(basis), lexical_dim=ctx.lexical_dim,
                            hidden=base.hidden, k=base.k, personalized=True, dropout=base.dropout,
                            normalise=base.normalise).to(base.b.device)
    model.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():
        model.basis.copy_(torch.from_numpy(basis).float())
    return model


def _spread(margins: np.ndarray) -> float:
    spread = float(np.std(margins))
    return spread if spread > 0 else 1.0


def wide_model(ctx: MethodContext, base: RewardModel, clusters: ClusterFit, beta: float) -> WideRewardModel:
    """The baseline plus each user's averaged cluster-teacher direction ā_u, in closed form (no training).

    r = (b + w_u)·g(φ) + β · (s_b / s_e) · ā_u·Eφ, where s_b and s_e are the spreads of the baseline's and of the
    teachers' margins on training pairs: β weighs the two in comparable units, and the baseline keeps its scale.
    """
    model = _wide_shell(ctx, base, clusters.basis)
    with torch.no_grad():
        model.a.weight.copy_(torch.from_numpy(clusters.directions).float())
        model.scales.copy_(torch.tensor([1.0, 0.0]))
        base_margins = pair_margins(model, ctx.features, ctx.train)
        model.scales.copy_(torch.tensor([0.0, 1.0]))
        teacher_margins = pair_margins(model, ctx.features, ctx.train)
        model.scales.copy_(torch.tensor([1.0, beta * _spread(base_margins) / _spread(teacher_margins)]))
    return model


def calibrate_temperature(model: WideRewardModel, features: torch.Tensor, val: PairSet) -> float:
    """Divide the model's margins by the one temperature that minimises BT log-loss on validation pairs.

    Adding the teachers' channel makes margins larger than the evidence supports; one scalar fitted on held-out
    pairs fixes the scale without changing any pair's sign (so accuracy is unchanged).
    """
    margins = pair_margins(model, features, val).astype(np.float64)
    if not len(margins) or not np.any(margins):
        return 1.0
    fit = minimize_scalar(lambda log_t: np.mean(np.logaddexp(0.0, -margins / np.exp(log_t))), bounds=(-4.0, 4.0),
                          method="bounded")
    temperature = float(np.exp(fit.x))
    with torch.no_grad():
        model.scales.div_(temperature)
    return temperature


def calibrate_held_out(ctx: MethodContext, base: RewardModel, clusters: ClusterFit, config: PAFOConfig,
                       model: WideRewardModel) -> float:
    """:func:`calibrate_temperature` on validation pairs the temperature has not seen through the clusters.

    When the cluster step read the validation labels (``cluster_val``), each user's ā_u has fitted its own
    validation pair, so the model looks surer there than on new pairs and a temperature fitted there would make it
    overconfident. The temperature is then fitted on a probe: the same wide model with each user placed by its
    training pairs alone (``ClusterFit.posterior_directions``, teachers frozen), and applied to the model."""
    if not config.cluster_val or not len(ctx.val):
        return calibrate_temperature(model, ctx.features, ctx.val)
    x = oriented_differences(ctx.features.cpu().numpy(), clusters.basis, ctx.train.chosen, ctx.train.rejected)
    probe = wide_model(ctx, base, dataclasses.replace(
        clusters, directions=clusters.posterior_directions(x, ctx.train.users, ctx.n_users)), config.beta)
    temperature = calibrate_temperature(probe, ctx.features, ctx.val)
    with torch.no_grad():
        model.scales.div_(temperature)
    return temperature


def fit_mixture(ctx: MethodContext, config: PAFOConfig, span) -> MethodOutput:
    """Each user scored by the teacher of its cluster, no baseline, no distillation (MaxMin-RLHF style).

    The clusters are PAFO's (same options, same fit): the run with the lowest in-sample objective, each user in its
    cluster there (soft EM: the most probable one, the MAP cluster). A hard choice of one teacher per user is what
    makes it a cluster mixture; PAFO instead adds the posterior-mean direction averaged over every run."""
    spans = _split_span(span, [2, 1])
    base = baseline_output(ctx, spans[0])
    clusters = preference_clusters(ctx, config, base.model)
    model = _wide_shell(ctx, base.model, clusters.basis)
    best = clusters.best
    assigned = clusters.assignments[best]
    directions = np.where((assigned >= 0)[:, None], clusters.teachers[best][np.maximum(assigned, 0)], 0.0)
    with torch.no_grad():
        model.a.weight.copy_(torch.from_numpy(directions).float())
        model.scales.copy_(torch.tensor([0.0, 1.0]))
    return MethodOutput(model, TrainResult(model), {
        CLUSTERS: clusters, NEW_USER_RULE: "map",
        "setup_seconds": base.result.seconds + ctx.cache["clusters_seconds"]})


def _any_prompt_pairs(ctx: MethodContext, per_user: int, rng: np.random.Generator) -> PairSet:
    """``per_user`` random response pairs per user from any training prompt (unlabelled by that user)."""
    prompts = np.unique(np.concatenate([p for p in ctx.train_prompts_of_user if len(p)]))
    users = np.repeat(np.arange(ctx.n_users), per_user)
    picked = rng.choice(prompts, size=len(users))
    chosen, rejected = np.empty(len(users), dtype=np.int64), np.empty(len(users), dtype=np.int64)
    for i, prompt in enumerate(picked):
        chosen[i], rejected[i] = rng.choice(ctx.prompt_responses[int(prompt)], size=2, replace=False)
    return PairSet(chosen, rejected, users, group=ctx.user_group[users])


def _distil(ctx: MethodContext, base: RewardModel, teacher: RewardModel, config: PAFOConfig, span):
    """The baseline architecture distilled from the wide teacher: BT + λ·distillation on the labelled pairs and on
    ``dense`` teacher-labelled pairs per user, the epoch chosen by agreement with the teacher on ``heldout``
    further teacher-labelled pairs per user (1 labelled validation pair per user is too noisy to select on)."""
    rng = np.random.default_rng(ctx.seed + 1)
    own = dense_pairs(ctx, config.dense, rng)
    heldout = _any_prompt_pairs(ctx, config.heldout, rng)
    train_targets = pair_margins(teacher, ctx.features, ctx.train)
    train = PairSet(ctx.train.chosen, ctx.train.rejected, ctx.train.users, group=ctx.train.group,
                    labelled=np.ones(len(ctx.train), dtype=bool), target=train_targets,
                    target_mask=np.ones(len(ctx.train), dtype=np.float32))
    pairs = _concat(train, _orient(own, pair_margins(teacher, ctx.features, own)))
    if config.batches == "by_prompt":
        pairs.block = ctx.prompt_of_response[pairs.chosen]
    check = _orient(heldout, pair_margins(teacher, ctx.features, heldout))
    student = copy.deepcopy(base)
    objective = Objective.distillation(config)
    result = ctx.fit(student, pairs, check, "student", span, objective=objective,
                     config=student_config(ctx, config, len(pairs)), keep_initial=config.keep_initial)
    return student, result, len(pairs)


def _fit_pafo_groups(ctx: MethodContext, config: PAFOConfig, span) -> MethodOutput:
    spans = _split_span(span, [1, 1, 1, 2])
    base = baseline_output(ctx, spans[0])
    teachers = {g: _teacher(ctx, base.model, config, g, spans[1 + g]) for g in Group}
    pairs = student_pairs(ctx, teachers, config)
    baseline_val = base.result.best_val
    select = pareto_score(baseline_val["majority"], ctx.epsilon)
    objective = Objective.distillation(config)
    student = copy.deepcopy(base.model)
    result = ctx.fit(student, pairs, ctx.val, "student", spans[3], objective=objective, select=select,
                     config=student_config(ctx, config, len(pairs)), keep_initial=config.keep_initial)
    result.selected = select(result.best_val)[0] == 1
    extra = {TEACHERS: teachers, "n_student_pairs": len(pairs), DENSE_PAIRS: len(pairs) - len(ctx.train),
             "n_targets_dropped": int((pairs.target_mask == 0).sum()),
             "setup_seconds": base.result.seconds + sum(t.result.seconds for t in teachers.values())}
    return MethodOutput(student, result, extra)


def fit_baseline(ctx: MethodContext, config: BaselineConfig, span) -> MethodOutput:
    return baseline_output(ctx, span)


def fit_method(name: str, ctx: MethodContext, config, span: tuple[float, float]) -> MethodOutput:
    """Train the registered method ``name`` (:data:`pafo.method_configs.METHOD_SPECS`)."""
    return method_spec(name).fit_function()(ctx, config, span)
