"""AdamW for the trainer, step for step the arithmetic of ``torch.optim.AdamW`` (single-tensor path, CPU).

Why not ``torch.optim.AdamW`` itself: its first ``step`` imports ``torch._dynamo`` (to switch compilation off), which
costs ~2 s of a ~10 s warm ``pafo experiment`` on this machine for models that train in about as long.
``tests/test_methods.py`` checks that both give bit-identical parameters over many steps.
"""

from __future__ import annotations

import torch

__all__ = ["AdamW"]


class AdamW:
    """Decoupled weight decay Adam over parameter groups (``params``, optional ``lr``, ``weight_decay``)."""

    def __init__(self, groups: list[dict], *, lr: float, weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.groups = [{"lr": lr, "weight_decay": weight_decay, **group} for group in groups]
        self.betas, self.eps = betas, eps
        self.state: dict[torch.Tensor, dict] = {}

    def zero_grad(self) -> None:
        for group in self.groups:
            for param in group["params"]:
                param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for group in self.groups:
            lr, decay = group["lr"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state.setdefault(param, {"step": 0, "m": torch.zeros_like(param),
                                                      "v": torch.zeros_like(param)})
                state["step"] += 1
                if decay != 0:
                    param.mul_(1 - lr * decay)
                state["m"].lerp_(param.grad, 1 - beta1)
                state["v"].mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                step_size = lr / (1 - beta1 ** state["step"])
                denom = (state["v"].sqrt() / (1 - beta2 ** state["step"]) ** 0.5).add_(self.eps)
                param.addcdiv_(state["m"], denom, value=-step_size)
