"""Progress in log files (issue 28.6): plain progress lines when stdout is not a terminal, and samples/s logged even
when an epoch has fewer batches than the log interval."""

import io
import itertools
import re

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from e2v.callbacks import ProgressLog, SamplesPerSecond

torch.set_num_threads(1)


class TinyRegression(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.net(batch["x"]), batch["y"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):  # 4 batches per epoch
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)
        return DataLoader([{"x": a, "y": b} for a, b in zip(x, y)], batch_size=4)


class MemoryLogger(Logger):
    def __init__(self):
        super().__init__()
        self.metrics = []

    name, version = "memory", 0

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class Terminal(io.StringIO):
    def isatty(self):
        return True


def fit(callbacks, logger=False, max_steps=10):
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=logger, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, callbacks=callbacks)
    trainer.fit(TinyRegression())


def test_progress_lines_in_a_log_file_not_on_a_terminal():
    ticks = itertools.count()
    log, terminal = io.StringIO(), Terminal()
    fit([ProgressLog(every_seconds=3, stream=log, clock=lambda: float(next(ticks))),
         ProgressLog(every_seconds=0, stream=terminal)])
    lines = log.getvalue().splitlines()
    # one clock tick per batch: the first step, then every 3 steps (3 s), and the last step
    assert [int(re.match(r"step (\d+)/10 ", line).group(1)) for line in lines] == [1, 4, 7, 10], lines
    assert re.fullmatch(r"step 4/10 \(40\.0%\)  loss \d\.\d+  1 steps/s  ETA 0:00:06", lines[1]), lines[1]
    assert terminal.getvalue() == ""  # the progress bar's place


def test_samples_per_second_logged_when_epochs_are_shorter_than_the_interval():
    logger = MemoryLogger()
    fit([SamplesPerSecond(log_every_n_steps=6)], logger=logger, max_steps=12)
    logged = [(step, m["train/samples_per_sec"]) for step, m in logger.metrics if "train/samples_per_sec" in m]
    assert [step for step, _ in logged] == [6, 12] and all(rate > 0 for _, rate in logged)
