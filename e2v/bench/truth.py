"""Scorers against a case's ground-truth clip (synthetic worlds), from ``e2v.bench.pixel_metrics``.

The video is brought to the truth's frame count (evenly spaced frames) and size (area/linear resize) first.
``psnr`` and ``psnr_flat`` need a truth clip (``None`` without one); ``psnr_flat`` is the do-nothing baseline
(a flat mean-colour video vs the truth): a model earns its PSNR only above it. ``subject_match`` needs only subject
references: which colours move in the video vs the subjects' non-white colours.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
import torch

from e2v.bench.pixel_metrics import flat_video, psnr, subject_match
from e2v.bench.scorer import SUBJECT_KINDS_EXCLUDED, Sample, Scorer, to_signed_video
from e2v.registry import register

MATCH_SIDE = 64  # subject references are resized to this square before their colours are pooled


def aligned_to_truth(frames: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``frames`` resampled to ``truth``'s frame count and size (uint8 [F, H, W, 3])."""
    count, height, width = truth.shape[:3]
    if len(frames) != count:
        frames = frames[np.linspace(0, len(frames) - 1, count).round().astype(int)]
    if frames.shape[1:3] != (height, width):
        frames = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])
    return frames


class TruthScorer(Scorer):
    """A measure of the video against the case's truth clip (both [-1, 1] ``[3, F, H, W]``); None without one."""

    version = "1"
    range = (0.0, None)

    def measure(self, video: torch.Tensor, truth: torch.Tensor) -> float:
        raise NotImplementedError

    def score(self, sample: Sample) -> Optional[float]:
        if sample.truth is None:
            return None
        video = to_signed_video(aligned_to_truth(sample.frames, sample.truth))
        return self.measure(video, to_signed_video(sample.truth))


@register("scorer", "psnr")
class Psnr(TruthScorer):
    """PSNR (dB) of the video against the case's ground-truth clip."""

    name = "psnr"
    model = "pixels: PSNR vs the ground-truth clip (peak-to-peak 2 in [-1, 1])"

    def measure(self, video: torch.Tensor, truth: torch.Tensor) -> float:
        return psnr(video, truth)


@register("scorer", "psnr_flat")
class PsnrFlat(TruthScorer):
    """PSNR (dB) of the flat mean-colour video against the truth clip: the baseline ``psnr`` must beat."""

    name = "psnr_flat"
    model = "pixels: PSNR of the truth's flat mean-colour video vs the truth (baseline, independent of the model)"

    def measure(self, video: torch.Tensor, truth: torch.Tensor) -> float:
        return psnr(flat_video(truth), truth)


@register("scorer", "subject_match")
class SubjectMatch(Scorer):
    """Histogram intersection of the video's moving colours and the subject references' non-white colours."""

    name = "subject_match"
    version = "1"
    range = (0.0, 1.0)
    model = "pixels: colour-histogram intersection, moving foreground vs subject references (position-free)"

    def score(self, sample: Sample) -> Optional[float]:
        refs = sample.references_of(SUBJECT_KINDS_EXCLUDED, exclude=True)
        if not refs:
            return None
        square = torch.stack([to_signed_video(cv2.resize(ref, (MATCH_SIDE, MATCH_SIDE),
                                                         interpolation=cv2.INTER_NEAREST)[None])[:, 0] for ref in refs])
        return subject_match(to_signed_video(sample.frames), square)
