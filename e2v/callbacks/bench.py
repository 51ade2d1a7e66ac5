"""Bench scores during training: the fixed validation triplets of :class:`SampleVideos`, generated every N steps,
scored with cheap bench scorers and logged as ``bench/NAME`` (the mean over the triplets) to every logger.

Each scoring also writes ``<run folder>/bench/step_<k>/report.{json,md,html}`` (the ``e2v bench`` report contract,
case ids ``sample_<i>``). References are the layout-ready ones the model saw (subjects white-padded, backgrounds
cropped to the frame); kinds come from the batch's ``ref_kinds`` (``object`` when absent); the batch's ``video``,
when present, is the truth clip for ``psnr``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import numpy as np

from e2v.bench.report import build_report, write_report
from e2v.bench.scorer import Sample
from e2v.bench.scorers import build_scorers
from e2v.callbacks.samples import SampleVideos
from e2v.datamodules.video_io import _to_uint8_frames
from e2v.loggers import run_dir

CHEAP_SCORERS = ("object_consistency", "background_consistency", "subject_match", "motion_smoothness",
                 "dynamic_degree", "psnr")


def _samples(results: Sequence[tuple[dict, dict]]) -> list[Sample]:
    samples = []
    for batch, out in results:
        kinds, truth = batch.get("ref_kinds"), batch.get("video")
        for i in range(out["video"].shape[0]):
            refs = _to_uint8_frames(out["refs"][i].float().cpu().transpose(0, 1))  # [N,3,H,W] -> [N,H,W,3]
            ref_kinds = list(kinds[i]) if kinds is not None else ["object"] * len(refs)
            samples.append(Sample(
                f"sample_{len(samples)}", out["caption"][i], _to_uint8_frames(out["video"][i].float().cpu()),
                list(zip(refs, ref_kinds)),
                None if truth is None else _to_uint8_frames(truth[i].float().cpu())))
    return samples


class Bench(SampleVideos):
    """Every ``every_n_steps`` steps (and at the end of fit), generate the first ``num_samples`` validation
    triplets and log the mean of each cheap bench scorer as ``bench/NAME``; writes no videos."""

    def __init__(
        self,
        every_n_steps: int = 100,
        num_samples: int = 4,
        steps: int = 20,
        guidance: float = 5.0,
        seed: int = 0,
        scorers: Optional[list[Any]] = None,
        at_fit_end: bool = True,
    ) -> None:
        super().__init__(every_n_steps=every_n_steps, num_samples=num_samples, steps=steps, guidance=guidance,
                         seed=seed, at_fit_end=at_fit_end)
        self.scorers = build_scorers(list(scorers or CHEAP_SCORERS))
        self.last_metrics: dict[str, float] = {}

    def _write(self, trainer: pl.Trainer, step: int, results: list[tuple[dict, dict]]) -> None:
        samples = _samples(results)
        cases = [(sample.case_id, {s.name: s(sample) for s in self.scorers}) for sample in samples]
        report = build_report(cases, {s.name: s.info() for s in self.scorers})
        write_report(run_dir(trainer) / "bench" / f"step_{step}", report, title=f"e2v bench, step {step}")
        self.last_metrics = {f"bench/{name}": float(value) for name, value in report["summary"].items()
                             if value is not None and np.isfinite(value)}
        for logger in trainer.loggers:
            logger.log_metrics(self.last_metrics, step=step)
