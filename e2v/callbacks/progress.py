"""Progress lines for log files: when stdout is not a terminal (a batch job, ``nohup``, ``| tee``), the progress
bar leaves one carriage-returned line; this callback prints plain lines instead.

    step 120/6000 (2.0%)  loss 0.1623  2.13 steps/s  ETA 0:46:01

``e2v fit`` adds it to every run (it stays silent on a terminal, where the progress bar shows the same).
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import Any, Callable, TextIO

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


def batch_loss(outputs: Any) -> float | None:
    """The loss a ``training_step`` returned (a tensor, or a dict with ``loss``), as a float; None without one."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return float(loss.detach()) if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


class ProgressLog(Callback):
    """Prints ``step S/MAX (P%)  loss L  R steps/s  ETA H:MM:SS`` on rank 0 every ``every_seconds`` (and at the
    first and last step) when ``stream`` is not a terminal; loss is the mean over the steps since the last line,
    the rate and ETA are measured over the same steps (validation time excluded from the rate).

    Args:
        every_seconds: the least time between two lines.
        stream: where lines go (default: stdout); ``force`` prints even to a terminal.
        clock: the time source (tests pass a fake one).
    """

    def __init__(self, every_seconds: float = 30.0, stream: TextIO | None = None, force: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if every_seconds < 0:
            raise ValueError(f"every_seconds must be >= 0, got {every_seconds}")
        self.every_seconds = every_seconds
        self.stream = stream
        self.force = force
        self.clock = clock
        self._active = False
        self._losses: list[float] = []
        self._paused = 0.0  # validation seconds since the last line
        self._validation_start: float | None = None

    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = self._out()
        self._active = trainer.is_global_zero and (self.force or not (hasattr(out, "isatty") and out.isatty()))
        self._last_time, self._last_step, self._losses, self._paused = self.clock(), trainer.global_step, [], 0.0
        self._first = True

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = self.clock()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validation_start is not None:
            self._paused += self.clock() - self._validation_start
            self._validation_start = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._active:
            return
        loss = batch_loss(outputs)
        if loss is not None:
            self._losses.append(loss)
        now, step = self.clock(), trainer.global_step
        last = trainer.max_steps is not None and step >= trainer.max_steps > 0
        if step == self._last_step or not (self._first or last or now - self._last_time >= self.every_seconds):
            return
        self._out().write(self.line(step, trainer.max_steps, now - self._last_time - self._paused,
                                    step - self._last_step) + "\n")
        self._out().flush()
        self._last_time, self._last_step, self._losses, self._paused, self._first = now, step, [], 0.0, False

    def line(self, step: int, max_steps: int | None, seconds: float, steps: int) -> str:
        """One progress line for ``steps`` optimizer steps that took ``seconds`` (training only)."""
        parts = [f"step {step}/{max_steps} ({100 * step / max_steps:.1f}%)" if max_steps and max_steps > 0
                 else f"step {step}"]
        if self._losses:
            parts.append(f"loss {sum(self._losses) / len(self._losses):.4g}")
        rate = steps / seconds if seconds > 0 else float("inf")
        parts.append(f"{rate:.3g} steps/s")
        if max_steps and max_steps > 0 and 0 < rate < float("inf"):
            parts.append(f"ETA {datetime.timedelta(seconds=round((max_steps - step) / rate))}")
        return "  ".join(parts)
