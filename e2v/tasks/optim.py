"""Optimizer and scheduler from the recipe's callables (LightningCLI ``OptimizerCallable`` style)."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch


class WarmupCosineLR(torch.optim.lr_scheduler.LambdaLR):
    """Linear warmup over ``warmup_steps``, then a cosine decay to ``min_ratio`` x the base lr at ``total_steps``.

    ``total_steps=None`` takes the trainer's ``max_steps`` (filled in by :func:`configure_optimization`), so a
    ``--trainer.max_steps`` override stretches the schedule with it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int = 50, total_steps: int | None = None,
                 min_ratio: float = 0.05) -> None:
        if warmup_steps < 0 or not 0 <= min_ratio <= 1 or (total_steps is not None and total_steps < 1):
            raise ValueError(f"WarmupCosineLR: need warmup_steps >= 0, total_steps >= 1, 0 <= min_ratio <= 1; got "
                             f"{warmup_steps}, {total_steps}, {min_ratio}")
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.total_steps is None:
            return warm
        progress = min(1.0, max(0, step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return warm * (self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def configure_optimization(
    params: Iterable[torch.nn.Parameter], optimizer: Callable, lr_scheduler: Callable | None,
    max_steps: int | None = None,
) -> Any:
    """What ``configure_optimizers`` returns: the optimizer over the trainable ``params`` and a per-step scheduler
    (a :class:`WarmupCosineLR` without ``total_steps`` gets ``max_steps``)."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    opt = optimizer(trainable)
    if lr_scheduler is None:
        return opt
    scheduler = lr_scheduler(opt)
    if isinstance(scheduler, WarmupCosineLR) and scheduler.total_steps is None and max_steps and max_steps > 0:
        scheduler.total_steps = max_steps
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
