"""The method registry and the configuration dataclasses of training and methods, free of torch so the CLI and
app start fast.

Each field carries a one-line help (``pafo.config.option``); the CLI flags and the app's forms are built from them.
:data:`METHOD_SPECS` is the one list of methods: the experiment, the CLI, the Train form, the report's colours and
order, and the benchmarks all read it. Adding a method with options is one :class:`MethodSpec` and its config
dataclass here, plus its fit function in any module (named in ``fit``, imported when the method trains).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Literal

from .compare import DEFAULT_EPSILON
from .conditions import (
    CLUSTER_OPTIONS,
    DENSE_PAIRS,
    DISTILLATION,
    DISTILLATION_LOSS,
    DISTILLED_STUDENT,
    GROUP_TEACHERS,
    HARD_EM,
    PAFO_CLUSTERS,
    SOFT_EM,
    Above,
    Compared,
    Uses,
)
from .config import OUT_OF_RANGE, descriptive, option, validate_options
from .encoder_specs import DEFAULT_ENCODER, ENCODER_HELP
from .errors import PafoInputError

__all__ = [
    "METHODS",
    "METHOD_CONFIGS",
    "METHOD_SPECS",
    "UNKNOWN_METHOD",
    "BTConfig",
    "BaselineConfig",
    "GroupDROConfig",
    "MethodSpec",
    "MixtureConfig",
    "PAFOConfig",
    "ReweightConfig",
    "RunSettings",
    "TrainConfig",
    "method_sections",
    "method_spec",
]

# The bounds live on the fields (pafo.config.validate_options); these names stay for callers matching messages.
BAD_LAMBDA = BAD_TEMPERATURE = BAD_DENSE = BAD_CLUSTER_OPTION = BAD_FINETUNE_PATIENCE = BAD_STEP = OUT_OF_RANGE
# Limits of size: beyond them a model no longer fits the memory of the machines PAFO Studio targets.
MAX_HIDDEN = 16384
MAX_K = 1024
# EM's cost grows with restarts × subspace size²: beyond these one cluster step takes minutes on a laptop.
MAX_RESTARTS = 1000
MAX_SUBSPACE = 512
MAX_COLABEL_WEIGHT = 1000.0  # beyond it the teachers no longer matter where anyone else labelled the pair
MAX_LEXICAL_WEIGHT = 100.0  # beyond it φ no longer shapes the teachers' subspace
BAD_SUBSPACES = ("--subspaces: {value!r} is not a list of subspace sizes; give whole numbers from 1 to {limit} "
                 "separated by commas, e.g. 16,24,32")
# The bootstrap draws resamples × users floats at once; MAX_BOOTSTRAP_DRAWS bounds that product (checked by
# ExperimentConfig.validate) at 10,000 × 20,000, so one float64 array of draws stays ≤ 1.6 GB whatever the users.
MAX_BOOTSTRAP = 10_000
MAX_BOOTSTRAP_DRAWS = 200_000_000
BAD_DRAWS = ("--bootstrap {bootstrap} × --users {users} = {draws:,} resampled users, over the limit of {limit:,} "
             "(memory); lower --bootstrap to {fit} or fewer")
NO_METHODS = "--methods: give at least one method, e.g. baseline,pafo"
#: Unseen users: at most this share of users is held out (the rest must still train every method).
MAX_UNSEEN = 0.9
MAX_SHOTS = 1000
BAD_SHOTS = ("--shots: {value!r} is not a list of pair counts; give whole numbers from 1 to {limit} separated by "
             "commas, e.g. 1,4,8")


@dataclass
class TrainConfig:
    """Optimisation settings of one reward model."""

    epochs: int = option(40, "maximum training epochs", ge=1, le=100_000, label="max epochs")
    batch_size: int = option(256, "pairs per mini-batch", ge=1, label="pairs per batch")
    lr: float = option(3e-3, "AdamW learning rate", gt=0, label="learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay on the shared parameters (bounds the scale of g)", ge=0,
                                 label="weight decay")
    user_l2: float = option(0.3, "L2 prior on each user's deviation w_u (once per user, not per pair)", ge=0,
                            label="L2 on user vectors")
    hidden: int = option(128, "hidden width of the feature MLP g", ge=1, le=MAX_HIDDEN, label="hidden units of g")
    k: int = option(16, "dimension of g's output (and of b, w_u)", ge=1, le=MAX_K, label="feature size of g (k)")
    user_lr_scale: float = option(10.0, "learning-rate multiplier for the per-user vectors w_u (each gets few "
                                        "updates; 10 won on validation pairs, bench/RESULTS.md)", gt=0,
                                  label="learning-rate × for user vectors")
    normalise: bool = option(False, "unit-norm g(φ): reward scale lives in b + w_u, so the L2 prior on w_u binds",
                             label="unit-length features")
    patience: int = option(8, "stop after this many epochs without a better validation score", ge=1,
                           label="early-stop patience (epochs)")
    max_batches: int = option(64, "at most this many mini-batches per epoch: a larger training set gets "
                                  "proportionally larger batches, so the per-step cost of the user table (its "
                                  "prior and AdamW update, one row per user) does not grow with users × pairs",
                              ge=1, label="max batches per epoch")

    def validate(self) -> TrainConfig:
        return validate_options(self)

    def batch_for(self, n_pairs: int) -> int:
        """Pairs per mini-batch for ``n_pairs`` training pairs: ``batch_size``, raised so that one epoch has at
        most ``max_batches`` batches."""
        return max(self.batch_size, -(-n_pairs // self.max_batches))


@dataclass
class BTConfig:
    """Non-personalised Bradley–Terry reward model r(x, y) = a · g(φ)."""


@dataclass
class BaselineConfig:
    """The personalized reward model (b + w_u) · g(φ) trained on all training pairs."""


@dataclass
class ReweightConfig:
    """The personalized model with each group's pairs weighted to contribute equally."""


@dataclass
class GroupDROConfig:
    """The personalized model trained with online GroupDRO over {majority, minority}."""

    dro_step: float = option(0.01, "GroupDRO step size of the group weights", gt=0, label="GroupDRO step size",
                             grid=(0.003, 0.01, 0.03), active_when=Uses("groupdro"))

    def validate(self) -> GroupDROConfig:
        return validate_options(self)


@dataclass
class MixtureConfig:
    """Cluster mixture (MaxMin-RLHF style): each user scored by its preference cluster's teacher alone; it uses
    PAFO's cluster options, so both are compared on the same clusters."""


@dataclass
class PAFOConfig:
    """PAFO: teachers (per preference cluster, or per support group) combined into one student."""

    teachers: Literal["clusters", "groups"] = option(
        "clusters", "teachers per preference cluster found by EM on training pairs (clusters), or the paper's two "
                    "support groups (groups)", label="teachers", active_when=Uses("pafo"))
    student: Literal["wide", "distilled"] = option(
        "wide", "clusters: the student adds per-user weights over the teachers' channels to the baseline (wide), or "
                "is the baseline architecture distilled from that on dense pairs (distilled)", label="student",
        active_when=PAFO_CLUSTERS)
    clusters: int = option(8, "clusters: number of preference clusters C", ge=1, label="preference clusters",
                           grid=(4, 8, 12), active_when=CLUSTER_OPTIONS)
    cluster_em: Literal["soft", "hard"] = option(
        "soft", "clusters: EM on the mixture likelihood, each user weighing the teachers by their posterior (soft), "
                "or on the classification likelihood, each user in one cluster (hard: PAFO v2)", label="cluster EM",
        active_when=CLUSTER_OPTIONS)
    restarts: int = option(8, "clusters: EM restarts (soft EM: per subspace size); each user's teacher direction "
                               "is averaged over them", ge=1, le=MAX_RESTARTS, label="EM restarts",
                           grid=(8, 16, 40), active_when=CLUSTER_OPTIONS)
    subspaces: str = option("16,24,32", "clusters, soft EM: sizes of the nested subspaces of φ EM runs in "
                                        "(comma-separated; each user's direction is averaged over them)",
                            label="teachers' subspace sizes", grid=("32", "16,24,32", "16,24,32,48"),
                            active_when=SOFT_EM)
    subspace: int = option(32, "clusters, hard EM: dimension of the teachers' subspace of φ (top principal "
                               "directions of training-pair differences)", ge=1, le=MAX_SUBSPACE,
                           label="teachers' subspace size", grid=(16, 32, 64), active_when=HARD_EM)
    cluster_ridge: float = option(1.0, "clusters: ridge penalty of each cluster's linear BT teacher", ge=0,
                                  label="ridge of cluster teachers", grid=(0.3, 1, 3), active_when=CLUSTER_OPTIONS)
    em_rounds: int = option(20, "clusters: maximum EM rounds", ge=0, label="max EM rounds",
                            active_when=CLUSTER_OPTIONS)
    em_tol: float = option(1e-4, "clusters, soft EM: a restart stops once no user's posterior moves by more than "
                                 "this in a round", ge=0, lt=1, label="EM tolerance", active_when=SOFT_EM)
    colabel_weight: float = option(4.0, "clusters, soft EM: weight, per other labeller, of other users' labels on "
                                        "the same pair in a user's cluster posterior (0: off)", ge=0,
                                   le=MAX_COLABEL_WEIGHT, label="co-label weight", grid=(0, 2, 4, 8),
                                   active_when=SOFT_EM)
    lexical_weight: float = option(4.0, "clusters: weight of the lexical view (TF-IDF of the response text on its "
                                        "within-prompt principal directions, fitted on training-side texts) beside "
                                        "the embedding φ in the cluster step and the teachers' channel (0: φ alone)",
                                   ge=0, le=MAX_LEXICAL_WEIGHT, label="lexical view weight", grid=(0, 1, 4),
                                   active_when=CLUSTER_OPTIONS)
    cluster_val: bool = option(True, "clusters: EM also reads the validation pairs' labels (one more pair per user; "
                                     "no student picks its epoch on them: the wide one only fits its temperature "
                                     "there, the distilled one selects on teacher-labelled pairs)",
                               label="clusters read validation pairs", active_when=CLUSTER_OPTIONS)
    calibrate: bool = option(True, "clusters: divide the student's margins by one temperature fitted on "
                                   "validation pairs (BT log-loss; accuracy unchanged)",
                             label="calibrate margins", active_when=PAFO_CLUSTERS)
    heldout: int = option(20, "distilled student: teacher-labelled pairs per user held out to choose its epoch "
                              "by agreement with the teacher", ge=1, label="held-out teacher pairs per user",
                          active_when=DISTILLED_STUDENT)
    beta: float = option(3.0, "clusters: weight of the teachers' channel against the baseline's, in units of "
                              "their margins' spreads on training pairs", ge=0, label="β (weight of the teachers)",
                         grid=(1, 2, 3, 4), active_when=PAFO_CLUSTERS)
    # The options below shape distillation: the paper's two-group PAFO (teachers=groups) and the distilled student;
    # the default wide student is closed form and does not read them.
    lam: float = option(1.0, "distillation: λ, weight of the distillation term", flag="--lambda", ge=0,
                        label="λ (distillation weight)", grid=(0, 0.5, 1, 2), active_when=DISTILLATION)
    temperature: float = option(1.0, "distillation: τ, temperature of the tempered margins", gt=0,
                                label="τ (distillation temperature)", grid=(0.5, 1, 2), active_when=DISTILLATION_LOSS)
    condition: Literal["group", "group+agree"] = option(
        "group", "teachers=groups: targets from the user's group teacher (+agree: drop targets contradicting the "
                 "label)", label="teacher targets", active_when=GROUP_TEACHERS & Above("pafo.lam", 0))
    dense: int = option(40, "distillation: teacher-labelled extra pairs per user from the user's training prompts",
                        ge=0, le=10_000, label="extra teacher-labelled pairs per user", grid=(0, 40, 80),
                        active_when=DISTILLATION)
    distill: Literal["bce", "mse"] = option("bce", "distillation: loss on margins", label="distillation loss",
                                            active_when=DISTILLATION_LOSS)
    teacher_init: Literal["recentred", "baseline", "scratch"] = option(
        "recentred", "teachers=groups: teachers start from the baseline with b moved to their group's mean user "
                     "vector (recentred), from the baseline as is, or from scratch", label="teachers start from",
        active_when=GROUP_TEACHERS)
    teacher_user_l2: float | None = option(None, "teachers=groups: teachers' L2 on w_u (default: the baseline's)",
                                           ge=0, label="teachers' L2 on user vectors", active_when=GROUP_TEACHERS)
    finetune_patience: int = option(4, "distillation: teachers and student stop after this many epochs without a "
                                       "better validation score (both start from the trained baseline)", ge=1,
                                    label="fine-tune patience (epochs)", active_when=DISTILLATION)
    keep_initial: bool = option(False, "distillation: teachers and student keep their starting point (the "
                                       "baseline) when no epoch beats it on validation",
                                label="keep baseline if unbeaten", active_when=DISTILLATION)
    batches: Literal["random", "by_prompt"] = option(
        "by_prompt", "distillation: student batches of random pairs, or of the pairs of a few prompts at a time "
                     "(g then runs on fewer responses per step)", label="student batches",
        active_when=DISTILLED_STUDENT | (GROUP_TEACHERS & Above("pafo.dense", 0)))
    scale_batch: bool = option(True, "distillation: the student batch grows with its pair count, so an epoch takes "
                                     "as many steps as the baseline's (dense pairs cost little time)",
                               label="grow student batch", active_when=DENSE_PAIRS)

    def validate(self) -> PAFOConfig:
        validate_options(self)
        self.subspace_sizes()
        return self

    def subspace_sizes(self) -> tuple[int, ...]:
        """The soft EM's subspace sizes, ascending (``PafoInputError`` naming --subspaces when malformed)."""
        try:
            sizes = sorted({int(part) for part in str(self.subspaces).split(",") if part.strip()})
        except ValueError:
            sizes = []
        if not sizes or not all(1 <= size <= MAX_SUBSPACE for size in sizes):
            raise PafoInputError(BAD_SUBSPACES.format(value=self.subspaces, limit=MAX_SUBSPACE))
        return tuple(sizes)

    def cluster_sizes(self) -> tuple[int, ...]:
        """The subspace sizes the configured cluster step runs in (hard EM: the one ``subspace``)."""
        return self.subspace_sizes() if self.cluster_em == "soft" else (self.subspace,)


@dataclass(frozen=True)
class MethodSpec:
    """One training method: everything the experiment, CLI, forms, report and benchmarks know about it."""

    name: str  # in --methods, result JSON keys and run configs
    config: type  # its options dataclass (one without fields when it has none)
    fit: str  # "module:function" of its fit function, imported only when it trains (the CLI starts without torch)
    label: str = descriptive()  # one line for forms and the report
    colour: str = descriptive()  # its colour in every plot
    cost: float = descriptive(1.0)  # training time relative to the baseline, for the progress bar only
    needs_groups: bool = False  # trains on the majority/minority groups, so the grouping changes its result
    #: The experiment config section holding its options: its own name when its config has fields, or another
    #: method's section it shares (mixture reads PAFO's cluster options so both use the same clusters).
    shares_options_of: str | None = None
    #: "module:function" of its report hook ``(output, seen, per_user) -> [extra, ...]``: the typed extras
    #: (:mod:`pafo.extras`) its result block carries besides the metrics every method has (PAFO's teachers, the
    #: preference clusters), from its fit output and the seed it trained on (``pafo.methods.SeedEvaluation``).
    report: str | None = None

    @property
    def section(self) -> str | None:
        """Where its options live in :class:`pafo.experiment.ExperimentConfig` (``None``: it has none)."""
        if self.shares_options_of:
            return self.shares_options_of
        return self.name if dataclasses.fields(self.config) else None

    def fit_function(self):
        """The fit function ``(ctx, config, span) -> MethodOutput``."""
        return _named_function(self.fit)

    def report_extras(self, output, seen, per_user) -> list:
        """The typed extras of its result block on one seed (none without a ``report`` hook)."""
        return _named_function(self.report)(output, seen, per_user) if self.report else []


def _named_function(name: str):
    """The function a "module:function" string names, imported when first called."""
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


#: Every method, in the order tables, legends and the Train form show them.
METHOD_SPECS = (
    MethodSpec("bt", BTConfig, "pafo.methods:fit_bt", "BT: one non-personalised reward for everyone",
               "#495057", cost=0.7),
    MethodSpec("baseline", BaselineConfig, "pafo.methods:fit_baseline",
               "Baseline: the personalized reward model every method is compared with", "#868E96"),
    MethodSpec("reweight", ReweightConfig, "pafo.methods:fit_reweight",
               "Reweight: each group's pairs weigh the same in the loss", "#FAB005", needs_groups=True),
    MethodSpec("groupdro", GroupDROConfig, "pafo.methods:fit_groupdro",
               "GroupDRO: online worst-group weighting of the loss", "#BE4BDB", cost=1.2, needs_groups=True),
    MethodSpec("mixture", MixtureConfig, "pafo.methods:fit_mixture",
               "Mixture: each user scored by their preference cluster's teacher alone", "#82C91E",
               shares_options_of="pafo", report="pafo.diagnostics:method_report"),
    MethodSpec("pafo", PAFOConfig, "pafo.methods:fit_pafo",
               "PAFO: preference-cluster teachers combined into one student", "#12B886", cost=1.5,
               report="pafo.diagnostics:method_report"),
)
METHODS = tuple(spec.name for spec in METHOD_SPECS)
METHOD_CONFIGS = {spec.name: spec.config for spec in METHOD_SPECS}
UNKNOWN_METHOD = "--methods: unknown method {name!r}; choose from " + ", ".join(METHODS)


def method_spec(name: str) -> MethodSpec:
    """The spec of a method by name (``PafoInputError`` naming the choices for an unknown one)."""
    for spec in METHOD_SPECS:
        if spec.name == name:
            return spec
    raise PafoInputError(UNKNOWN_METHOD.format(name=name))


def method_sections() -> dict[str, type]:
    """The experiment config's method sections, ``{section: config dataclass}``, in method order."""
    return {spec.name: spec.config for spec in METHOD_SPECS if spec.section == spec.name}


@dataclass
class RunSettings:
    """What to train and how to report it."""

    encoder: str = option(DEFAULT_ENCODER, ENCODER_HELP, label="encoder")
    methods: str = option("baseline,pafo", "comma-separated methods: " + ",".join(METHODS), label="methods")
    bootstrap: int = option(1000, "bootstrap resamples (over users) for confidence intervals", ge=10,
                            le=MAX_BOOTSTRAP, label="bootstrap resamples")
    epsilon: float = option(DEFAULT_EPSILON, "Pareto tolerance ε: the verdict's allowed drop of the majority "
                                             "(paired, vs the baseline), and with PAFO's teachers=groups the epoch "
                                             "selection's allowed drop of majority validation accuracy", ge=0, le=1,
                            label="ε (Pareto tolerance)", active_when=Compared() | GROUP_TEACHERS)
    unseen_users: float = option(0.0, "share of users held out of all training (stratified by group), then "
                                      "personalised from a few of their own pairs and scored (0: off)", ge=0,
                                 le=MAX_UNSEEN, label="unseen users (share held out)", grid=(0.1, 0.2, 0.3))
    shots: str = option("1,4,8", "unseen users: how many of each held-out user's own pairs personalise them "
                                 "(comma-separated; one learning-curve point each)",
                        label="shots (pairs per new user)", grid=("1,4,8", "1,2,4,8", "4"),
                        active_when=Above("run.unseen_users", 0))

    def validate(self) -> RunSettings:
        validate_options(self)
        self.method_list()
        self.shot_list()
        return self

    def shot_list(self) -> list[int]:
        """The shots k, ascending (``PafoInputError`` naming --shots when malformed)."""
        try:
            shots = sorted({int(part) for part in str(self.shots).split(",") if part.strip()})
        except ValueError:
            shots = []
        if not shots or not all(1 <= k <= MAX_SHOTS for k in shots):
            raise PafoInputError(BAD_SHOTS.format(value=self.shots, limit=MAX_SHOTS))
        return shots

    def method_list(self) -> list[str]:
        names = [m.strip() for m in self.methods.split(",") if m.strip()]
        if not names:
            raise PafoInputError(NO_METHODS)
        for name in names:
            method_spec(name)
        return list(dict.fromkeys(names))
