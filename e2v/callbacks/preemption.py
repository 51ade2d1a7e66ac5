"""SIGTERM (a pre-empted or cancelled job) during a fit: save a resumable checkpoint, then exit non-zero.

Lightning turns SIGTERM into ``SIGTERMException``, a ``SystemExit`` with code 0, and saves nothing: a pre-empted job
looked like a success to its scheduler. :class:`SaveOnSigterm` saves ``last.ckpt`` in the ModelCheckpoint's folder
(``DEFAULT_ROOT_DIR/checkpoints`` without one); ``e2v fit`` installs it and exits 143 (128 + SIGTERM) naming the
file to resume from (``--ckpt_path``).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

SIGTERM_EXIT = 143


class SaveOnSigterm(pl.Callback):
    """Saves a full training checkpoint when the fit stops for SIGTERM; ``saved`` is its path (None before)."""

    def __init__(self) -> None:
        self.saved: Path | None = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        folders = [cb.dirpath for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
        path = Path(folders[0] if folders else Path(trainer.default_root_dir) / "checkpoints") / "last.ckpt"
        trainer.save_checkpoint(path)
        self.saved = path
