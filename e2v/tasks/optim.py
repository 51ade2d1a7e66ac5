"""Optimizer and scheduler from the recipe's callables (LightningCLI ``OptimizerCallable`` style)."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch


def configure_optimization(
    params: Iterable[torch.nn.Parameter], optimizer: Callable, lr_scheduler: Callable | None
) -> Any:
    """What ``configure_optimizers`` returns: the optimizer over the trainable ``params`` and a per-step scheduler."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    opt = optimizer(trainable)
    if lr_scheduler is None:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": lr_scheduler(opt), "interval": "step"}}
