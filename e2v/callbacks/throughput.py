"""Training throughput (samples per second) as a logged metric; the learning rate comes from Lightning's
``LearningRateMonitor``."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


def batch_size(batch: Any) -> int:
    """Items in a batch: the leading size of its first tensor (dict values, list/tuple entries, or the tensor)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return value.shape[0]
    raise ValueError(f"cannot tell the batch size of a {type(batch).__name__} batch without a tensor in it")


class SamplesPerSecond(Callback):
    """Logs ``train/samples_per_sec`` (all ranks together) and ``train/step_time`` (seconds per optimizer step),
    measured over the batches since the last log (across epoch boundaries, so epochs shorter than the interval
    are measured too; validation time left out), every ``log_every_n_steps`` optimizer steps."""

    def __init__(self, log_every_n_steps: int = 10) -> None:
        if log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be >= 1, got {log_every_n_steps}")
        self.log_every_n_steps = log_every_n_steps
        self._start: float | None = None
        self._samples = 0
        self._first_step = 0
        self._validation_start: float | None = None

    def _restart(self, trainer: pl.Trainer) -> None:
        self._start, self._samples, self._first_step = time.perf_counter(), 0, trainer.global_step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._start is None:  # the first batch of this fit (a fresh one or a resumed one)
            self._restart(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is not None and self._validation_start is not None:
            self._start += time.perf_counter() - self._validation_start  # validation is no training time
        self._validation_start = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._samples += batch_size(batch) * trainer.world_size
        steps = trainer.global_step - self._first_step
        if steps < self.log_every_n_steps:
            return
        elapsed = time.perf_counter() - self._start
        metrics = {"train/samples_per_sec": self._samples / elapsed, "train/step_time": elapsed / steps}
        for logger in trainer.loggers:  # straight to the loggers, as LearningRateMonitor does
            logger.log_metrics(metrics, step=trainer.global_step)
        self._restart(trainer)
