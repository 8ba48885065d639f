"""Reward models over frozen text features (spec §5) and the Bradley–Terry loss.

- ``bt``: r(x, y) = a · g(φ(x, y)), one reward for everybody.
- ``personalized``: r(x, y, u) = (b + w_u) · g(φ(x, y)), b shared, w_u a per-user deviation under an L2 penalty.
  Users with few pairs stay near b, which the majority's pairs shape: the mechanism of personalized reward bias.

The forward pass takes features and user indices only: a model never sees a group label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - PyTorch's usual alias
from torch import nn

__all__ = ["RewardModel", "WideRewardModel", "bt_loss", "build_model", "distillation_loss"]


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley–Terry negative log-likelihood, -log σ(r⁺ − r⁻), averaged (optionally weighted)."""
    losses = -F.logsigmoid(chosen - rejected)
    if weight is None:
        return losses.mean()
    return (losses * weight).sum() / weight.sum().clamp_min(1e-12)


def distillation_loss(student_margin: torch.Tensor, teacher_margin: torch.Tensor, *, temperature: float = 1.0,
                      kind: str = "bce", mask: torch.Tensor | None = None) -> torch.Tensor:
    """Margin-level supervision: BCE(σ(m_S/τ), σ(m_T/τ)) or MSE between margins, over the unmasked pairs."""
    if kind == "mse":
        losses = (student_margin - teacher_margin) ** 2
    else:
        target = torch.sigmoid(teacher_margin / temperature)
        losses = F.binary_cross_entropy_with_logits(student_margin / temperature, target, reduction="none")
    if mask is None:
        return losses.mean()
    return (losses * mask).sum() / mask.sum().clamp_min(1.0)


def _rows(table: nn.Embedding, users: torch.Tensor) -> torch.Tensor:
    """``table(users)`` by ``index_select``: the same rows and the same gradient (added in index order), but its
    backward adds the rows in one pass where the embedding's adds them one small tensor op at a time (issue 24:
    the user table's backward was a sixth of a training step at 30,000 users)."""
    return table.weight.index_select(0, users)


def _sorted_unique(index: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(index, return_inverse=True)`` for indices into ``size`` rows, by counting instead of sorting
    (a batch holds tens of thousands of indices into a few thousand responses)."""
    if index.numel() > size:
        present = torch.zeros(size, dtype=torch.bool, device=index.device)
        present[index] = True
        rows = torch.nonzero(present).flatten()
        position = torch.empty(size, dtype=torch.long, device=index.device)
        position[rows] = torch.arange(len(rows), device=index.device)
        return rows, position[index]
    return torch.unique(index, return_inverse=True)


class RewardModel(nn.Module):
    """(b + w_u) · g(φ) with g a small MLP to R^k; ``personalized=False`` drops w_u (the ``bt`` model)."""

    #: Columns of PAFO's lexical view the model reads after φ (only a wide model's teacher channel has any).
    lexical_dim = 0

    def __init__(self, in_dim: int, n_users: int, *, hidden: int = 128, k: int = 16, personalized: bool = True,
                 dropout: float = 0.0, normalise: bool = False):
        super().__init__()
        self.in_dim, self.n_users, self.hidden, self.k = in_dim, n_users, hidden, k
        self.personalized, self.dropout, self.normalise = personalized, dropout, normalise
        self.g = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, k))
        self.b = nn.Parameter(torch.randn(k) / k**0.5)
        self.w = nn.Embedding(n_users, k) if personalized else None
        if self.w is not None:
            nn.init.zeros_(self.w.weight)

    def config(self) -> dict:
        """Constructor arguments, saved beside the weights so a model can be rebuilt without pickle."""
        return {"kind": "personalized" if self.personalized else "bt", "in_dim": self.in_dim,
                "n_users": self.n_users, "hidden": self.hidden, "k": self.k, "personalized": self.personalized,
                "dropout": self.dropout, "normalise": self.normalise}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """g(φ); with ``normalise`` its rows have unit norm, so a reward's scale lives in b + w_u alone and the L2
        prior on w_u really costs a user who must deviate far from b (it cannot be dodged by scaling g up).

        g reads the first ``in_dim`` columns of ``x`` (the encoder's φ); a run whose PAFO reads the lexical view
        feeds every model [φ, lexical view] (:mod:`pafo.lexical`), and only PAFO's teacher channel reads the rest."""
        h = self.g(x[..., : self.in_dim])
        return torch.nn.functional.normalize(h, dim=-1) if self.normalise else h

    @property
    def input_dim(self) -> int:
        """Columns a feature row must have: φ, then the lexical view's (if the model reads it)."""
        return self.in_dim + self.lexical_dim

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        if self.w is None:
            return self.b.expand(len(users), -1)
        return self.b + _rows(self.w, users)

    def shared_vector(self) -> torch.Tensor:
        """The user vector of a user the model never saw: b (w_u = 0, what the L2 prior falls back to)."""
        return self.b

    def forward(self, features: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Reward of each (prompt, response) feature row for the given users."""
        return (self.features(features) * self.user_vectors(users)).sum(-1)

    def margin(self, chosen: torch.Tensor, rejected: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """r(x, y⁺, u) − r(x, y⁻, u); g is applied once to both sides in one batch."""
        both = self.features(torch.cat([chosen, rejected]))
        vectors = self.user_vectors(users)
        return ((both[: len(users)] - both[len(users) :]) * vectors).sum(-1)

    def indexed_margin(self, features: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor,
                       users: torch.Tensor) -> torch.Tensor:
        """``margin`` for pairs given as row indices into ``features``, applying g once per distinct response.

        A batch's pairs share responses (each prompt has a handful, each labelled by many users), so this runs g on
        up to 3× fewer rows than ``margin``; the result is the same up to float rounding.
        """
        rows, inverse = _sorted_unique(torch.cat([chosen, rejected]), len(features))
        g = self.features(features.index_select(0, rows))
        diff = g.index_select(0, inverse[: len(chosen)]) - g.index_select(0, inverse[len(chosen) :])
        return (diff * self.user_vectors(users)).sum(-1)

    def user_penalty(self, users: torch.Tensor | None) -> torch.Tensor:
        """Mean squared norm of the given users' deviations w_u (0 for the non-personalised model); ``None``: all
        users, read from the table itself (the same value and gradient as ``users = 0..n−1``, without gathering
        and scattering back every row at each step)."""
        if self.w is None:
            return self.b.new_zeros(())
        return ((self.w.weight if users is None else _rows(self.w, users)) ** 2).sum(-1).mean()


class WideRewardModel(RewardModel):
    """The personalized model plus per-user weights over teacher channels: one model, user ids only.

    r(x, y, u) = c_b · (b + w_u) · g(φ) + c_e · a_u · (E ψ), with ψ = [φ, ℓ] (ℓ the ``lexical_dim`` columns of
    PAFO's lexical view, :mod:`pafo.lexical`; none by default), E (rank × (in_dim + lexical_dim)) a fixed basis of ψ
    and a_u a per-user vector over it (PAFO's cluster teachers' directions for u). The extra channels read ψ
    directly, so they can carry directions that the majority-shaped g(φ) lost. ``scales`` = (c_b, c_e); c_b = 0
    leaves the teacher channels alone (the ``mixture`` method).
    """

    def __init__(self, in_dim: int, n_users: int, *, rank: int = 32, lexical_dim: int = 0, **kwargs):
        super().__init__(in_dim, n_users, **kwargs)
        self.rank, self.lexical_dim = rank, lexical_dim
        self.register_buffer("basis", torch.zeros(rank, in_dim + lexical_dim))
        self.register_buffer("scales", torch.ones(2))
        self.a = nn.Embedding(n_users, rank)
        nn.init.zeros_(self.a.weight)

    def config(self) -> dict:
        return {**super().config(), "kind": "wide", "rank": self.rank, "lexical_dim": self.lexical_dim}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        teacher_input = x[..., : self.input_dim]
        return torch.cat([super().features(x) * self.scales[0], (teacher_input @ self.basis.T) * self.scales[1]],
                         dim=-1)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return torch.cat([super().user_vectors(users), _rows(self.a, users)], dim=-1)

    def shared_vector(self) -> torch.Tensor:
        """An unseen user has no teacher weights (a_u = 0): the baseline's shared reward."""
        return torch.cat([self.b, self.b.new_zeros(self.rank)])


def build_model(config: dict) -> RewardModel:
    """A model from its saved ``config()`` (the JSON beside its safetensors weights)."""
    config = dict(config)
    kind = config.pop("kind", "personalized")
    return WideRewardModel(**config) if kind == "wide" else RewardModel(**config)
