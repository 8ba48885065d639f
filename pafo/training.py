"""One trainer for every method: mini-batches of pairs over cached features, AdamW, validation-based selection.

A batch's loss is ``BT(labelled pairs, weighted) + λ · distillation(pairs with a teacher target) + user L2``;
GroupDRO replaces the BT mean by its adversarially weighted group mean. Which epoch is kept is decided by a
``select`` function of the validation metrics (overall accuracy, or PAFO's Pareto rule).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import MSG_DIVERGED, RunCancelled, TrainingDivergedError
from .method_configs import TrainConfig
from .metrics import Group, per_user_accuracy
from .models import RewardModel, bt_loss, distillation_loss
from .optim import AdamW

__all__ = [
    "PairSet",
    "Progress",
    "TrainConfig",
    "TrainResult",
    "group_accuracy",
    "never_stop",
    "no_progress",
    "pair_margins",
    "set_threads",
    "train_model",
]

Progress = Callable[[float, str, dict | None], None]


def no_progress(fraction: float, stage: str, metrics: dict | None = None) -> None:
    """The default progress callback: report nothing."""


def never_stop() -> bool:
    return False


def set_threads(n: int = 1) -> None:
    """One intra-op thread for training: these models are tiny, and OpenMP threads spin-waiting on a busy 2-core
    machine (the app, a second run) made an epoch 12× slower with 2 threads than with 1 (measured)."""
    torch.set_num_threads(n)


@dataclass
class PairSet:
    """Pairs as index arrays into the feature matrix, with optional weights and teacher targets.

    ``labelled`` marks pairs whose label a user gave (they get the BT loss); ``target`` holds teacher margins and
    ``target_mask`` where a target applies. ``group`` (0 majority, 1 minority) is used by losses and metrics
    only; it never reaches the model. ``block`` (e.g. the prompt of each pair), when given, makes each epoch's
    batches run through whole blocks in a random order (see ``epoch_order``).
    """

    chosen: np.ndarray
    rejected: np.ndarray
    users: np.ndarray
    group: np.ndarray | None = None
    weight: np.ndarray | None = None
    labelled: np.ndarray | None = None
    target: np.ndarray | None = None
    target_mask: np.ndarray | None = None
    block: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.chosen)

    def subset(self, rows: np.ndarray) -> PairSet:
        return PairSet(**{k: (v[rows] if isinstance(v, np.ndarray) else v) for k, v in vars(self).items()})


@dataclass
class TrainResult:
    model: RewardModel
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    selected: bool = True
    initial_val: dict | None = None

    @property
    def best_val(self) -> dict:
        """Validation metrics of the kept model (epoch 0: the starting model, kept because no epoch beat it)."""
        return self.initial_val if self.best_epoch == 0 else self.history[self.best_epoch - 1]["val"]


@torch.inference_mode()
def pair_margins(model: RewardModel, features: torch.Tensor, pairs: PairSet, batch_size: int = 4096) -> np.ndarray:
    """The model's margin r(x, y⁺, u) − r(x, y⁻, u) for every pair."""
    model.eval()
    out = []
    for start in range(0, len(pairs), batch_size):
        rows = slice(start, start + batch_size)
        # torch.tensor copies: pair columns may be read-only views (pandas copy-on-write), which torch warns about.
        chosen, rejected, users = (torch.tensor(index[rows], device=features.device)
                                   for index in (pairs.chosen, pairs.rejected, pairs.users))
        out.append(model.indexed_margin(features, chosen, rejected, users))
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, dtype=np.float32)


def _on(features: torch.Tensor, values: np.ndarray) -> torch.Tensor:
    """``values`` as a tensor on the features' device (a no-op copy-free view on the CPU)."""
    return torch.as_tensor(values, device=features.device)


def group_accuracy(margins: np.ndarray, pairs: PairSet) -> dict:
    """Validation accuracy, each user weighing equally: overall, majority and minority (None if no users)."""
    users, inverse = np.unique(pairs.users, return_inverse=True)
    per_user = per_user_accuracy(margins, pairs.users).to_numpy()  # sorted by user, as ``users``
    result = {"overall": float(per_user.mean()) if len(users) else None}
    if pairs.group is not None:
        group_of_user = np.zeros(len(users), dtype=int)
        group_of_user[inverse] = pairs.group
        for group in Group:
            chosen = per_user[group_of_user == group]
            result[group.label] = float(chosen.mean()) if len(chosen) else None
    return result


class GroupDRO:
    """Online GroupDRO (Sagawa et al. 2020): exponentiated-gradient weights on the groups' BT losses."""

    def __init__(self, n_groups: int = 2, step_size: float = 0.01):
        self.q = torch.full((n_groups,), 1.0 / n_groups)
        self.step_size = step_size

    def __call__(self, losses: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        self.q = self.q.to(losses.device)
        group_losses = torch.stack([
            losses[group == g].mean() if (group == g).any() else losses.new_zeros(()) for g in range(len(self.q))
        ])
        with torch.no_grad():
            self.q *= torch.exp(self.step_size * group_losses)
            self.q /= self.q.sum()
        return (self.q * group_losses).sum()


@dataclass
class Objective:
    """What a batch's loss is made of (see the module docstring). ``Objective()`` is plain BT, the baseline's
    loss; PAFO's distillation settings come from its config through :meth:`distillation`, never from here."""

    lam: float = 0.0  # 0: no distillation term
    temperature: float = 1.0
    distill: str = "bce"
    dro: GroupDRO | None = None

    @classmethod
    def distillation(cls, config) -> Objective:
        """BT + λ·distillation with a PAFO config's λ, τ and loss."""
        return cls(lam=config.lam, temperature=config.temperature, distill=config.distill)

    def __call__(self, model: RewardModel, features: torch.Tensor, batch: PairSet,
                 penalty: UserPenalty) -> torch.Tensor:
        margin = model.indexed_margin(features, _on(features, batch.chosen), _on(features, batch.rejected),
                                      _on(features, batch.users))
        labelled = (torch.ones(len(batch), device=features.device) if batch.labelled is None
                    else _on(features, batch.labelled).float())
        weight = labelled if batch.weight is None else labelled * _on(features, batch.weight)
        if self.dro is not None:
            losses = -torch.nn.functional.logsigmoid(margin)
            loss = self.dro(losses[labelled > 0], _on(features, batch.group)[labelled > 0])
        else:
            loss = bt_loss(margin, torch.zeros_like(margin), weight) if weight.sum() > 0 else margin.new_zeros(())
        if self.lam > 0 and batch.target is not None:
            mask = _on(features, batch.target_mask).float()
            loss = loss + self.lam * distillation_loss(margin, _on(features, batch.target),
                                                       temperature=self.temperature, kind=self.distill, mask=mask)
        return loss + penalty(model)


@dataclass
class UserPenalty:
    """L2 on the deviations w_u of the users being trained, counted once per user (a prior), not once per pair.

    The penalty is scaled by labelled / all pairs, so extra teacher-labelled pairs weigh as extra data: a user with
    more targets is shrunk less towards b, exactly as a user with more labels would be.
    """

    strength: float
    users: torch.Tensor
    scale: float = 1.0

    @classmethod
    def for_pairs(cls, strength: float, pairs: PairSet, *, distilled: bool) -> UserPenalty:
        """``distilled``: whether teacher targets carry a loss (λ > 0); only pairs with a loss count as data."""
        labelled = np.ones(len(pairs), dtype=bool) if pairs.labelled is None else pairs.labelled.astype(bool)
        users = torch.from_numpy(np.unique(pairs.users[labelled] if labelled.any() else pairs.users))
        with_loss = labelled.copy()
        if distilled and pairs.target_mask is not None:
            with_loss |= pairs.target_mask > 0
        return cls(strength, users, float(labelled.sum()) / max(int(with_loss.sum()), 1))

    def __call__(self, model: RewardModel) -> torch.Tensor:
        if self.users.device != model.b.device:
            self.users = self.users.to(model.b.device)
        every = model.w is not None and len(self.users) == model.w.num_embeddings  # sorted and distinct: 0..n−1
        return self.strength * self.scale * model.user_penalty(None if every else self.users)


def _parameter_groups(model: RewardModel, config: TrainConfig) -> list[dict]:
    """Shared parameters, and the per-user vectors with a larger step and no weight decay (the L2 prior is theirs):
    a user's vector is updated only by batches holding that user's few pairs, so at the shared rate it barely
    moves before early stopping."""
    user = [model.w.weight] if model.w is not None else []
    shared = [p for p in model.parameters() if all(p is not u for u in user)]
    groups = [{"params": shared}]
    if user:
        groups.append({"params": user, "lr": config.lr * config.user_lr_scale, "weight_decay": 0.0})
    return groups


def epoch_order(pairs: PairSet, rng: np.random.Generator) -> np.ndarray:
    """A random order of the pairs; with ``block``, blocks in random order and pairs shuffled inside each block, so
    a batch holds the pairs of a few prompts and g runs on their few responses only."""
    within = rng.permutation(len(pairs))
    if pairs.block is None:
        return within
    blocks, inverse = np.unique(pairs.block, return_inverse=True)
    rank = rng.permutation(len(blocks))[inverse]
    return within[np.argsort(rank[within], kind="stable")]


def _overall_score(metrics: dict) -> tuple:
    return (metrics["overall"],)


def train_model(
    model: RewardModel,
    features: torch.Tensor,
    train: PairSet,
    val: PairSet,
    config: TrainConfig,
    *,
    objective: Objective | None = None,
    select: Callable[[dict], tuple] = _overall_score,
    seed: int = 0,
    stage: str = "training",
    progress: Progress = no_progress,
    should_stop: Callable[[], bool] = never_stop,
    span: tuple[float, float] = (0.0, 1.0),
    keep_initial: bool = False,
) -> TrainResult:
    """Train ``model`` in place on ``train``; keep the epoch whose ``select(val metrics)`` is largest.

    ``keep_initial``: the starting model competes as epoch 0, so a fine-tune that never beats its starting point on
    validation returns it unchanged (``best_epoch`` 0).
    """
    objective = objective or Objective()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    penalty = UserPenalty.for_pairs(config.user_l2, train, distilled=objective.lam > 0)
    optimiser = AdamW(_parameter_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    start, best, best_state, history, stale = time.perf_counter(), None, None, [], 0
    initial_val = None
    if keep_initial:
        initial_val = group_accuracy(pair_margins(model, features, val), val)
        best, best_state = select(initial_val), copy.deepcopy(model.state_dict())
    batch_size = config.batch_for(len(train))
    for epoch in range(1, config.epochs + 1):
        model.train()
        order, total = epoch_order(train, rng), 0.0
        for begin in range(0, len(train), batch_size):
            if should_stop():
                raise RunCancelled(stage)
            loss = objective(model, features, train.subset(order[begin : begin + batch_size]), penalty)
            if not torch.isfinite(loss):  # NaN/inf would train on and report accuracies of a broken model
                raise TrainingDivergedError(MSG_DIVERGED.format(stage=stage, what=f"loss {loss.item()}", epoch=epoch))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * min(batch_size, len(train) - begin)
        val_margins = pair_margins(model, features, val)
        if not np.isfinite(val_margins).all():  # the last step can break the weights without a non-finite loss
            raise TrainingDivergedError(MSG_DIVERGED.format(stage=stage, what="non-finite margins", epoch=epoch))
        metrics = {"epoch": epoch, "loss": total / max(len(train), 1), "val": group_accuracy(val_margins, val)}
        history.append(metrics)
        score = select(metrics["val"])
        if best is None or score > best:
            best, best_state, stale, metrics["kept"] = score, copy.deepcopy(model.state_dict()), 0, True
        else:
            stale += 1
        progress(span[0] + (span[1] - span[0]) * epoch / config.epochs, stage, {"stage": stage, **metrics})
        if stale >= config.patience:
            break
    model.load_state_dict(best_state)
    kept = max((i + 1 for i, h in enumerate(history) if h.get("kept")), default=0)
    return TrainResult(model, history, kept, time.perf_counter() - start, initial_val=initial_val)
