"""Frozen components inside a LightningModule (frozen as in :mod:`e2v.modules.frozen`): built from registry specs,
never trained, kept out of checkpoints."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from e2v import registry
from e2v.modules.frozen import freeze


def build_frozen(kind: str, spec: Any) -> torch.nn.Module | None:
    """Build a registry component and freeze it (:func:`e2v.modules.frozen.freeze`: no gradients, eval mode even
    when the task is put in train mode)."""
    module = registry.build(kind, spec)
    return freeze(module) if module is not None else None


def strip_prefixes(state_dict: dict[str, Any], prefixes: Iterable[str]) -> None:
    """Drop the entries of frozen submodules (``"vae."``, ...) from a checkpoint's state dict, in place."""
    prefixes = tuple(f"{p}." for p in prefixes)
    for key in [k for k in state_dict if k.startswith(prefixes)]:
        del state_dict[key]


def restore_prefixes(module: torch.nn.Module, state_dict: dict[str, Any], prefixes: Iterable[str]) -> None:
    """Put the current weights of frozen submodules back into a loaded state dict so strict loading passes."""
    for prefix in prefixes:
        child = getattr(module, prefix, None)
        if child is not None:
            for key, value in child.state_dict().items():
                state_dict.setdefault(f"{prefix}.{key}", value)
