"""Checkpoints written atomically: ``torch.save`` into a temp file beside the target, then ``os.replace``.

Lightning's own writer saves into the system temp folder and moves the file: across file systems that move is a
copy, so a full disk left a truncated ``.ckpt`` under its final name. Here a failed save leaves the previous file
(or none) and no temp file. ``e2v fit`` installs it on every strategy that writes full checkpoints.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from e2v.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose local saves are atomic (remote URLs such as ``s3://`` keep Lightning's
    transaction)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}")
        with atomic_path(path, suffix=".ckpt") as tmp:
            torch.save(checkpoint, tmp)


def install(trainer: Any) -> None:
    """Make ``trainer`` save full checkpoints atomically, unless the recipe chose its own checkpoint plugin."""
    strategy = trainer.strategy
    if type(getattr(strategy, "_checkpoint_io", None) or TorchCheckpointIO()) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
