"""Pixel metrics of a generated video against its ground-truth clip and references (synthetic worlds).

Videos are ``[3, F, H, W]`` in [-1, 1]; references ``[N, 3, H, W]`` in [-1, 1]. The subject measure ignores
positions: a model is never told where a subject is, so only *which colours move* can judge whether the
referenced subjects appear.
"""

from __future__ import annotations

import math

import torch

FOREGROUND_DISTANCE = 0.15  # in [0, 1] colour units: farther than this from the temporal median = moving
WHITE = 0.94  # in [0, 1]: reference pixels with every channel above this are the white canvas
HISTOGRAM_BINS = 8  # per channel (a joint 8 x 8 x 8 histogram)


def psnr(video: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of ``video`` against ``truth`` (both ``[3, F, H, W]`` in [-1, 1], peak-to-peak 2); with ``mask``
    (``bool [F, H, W]``) over the pixels where it is true only (NaN when it is empty)."""
    if video.shape != truth.shape:
        raise ValueError(f"video {tuple(video.shape)} and truth {tuple(truth.shape)} differ in shape")
    error = (video.float() - truth.float()).pow(2)
    if mask is not None:
        if not mask.any():
            return float("nan")
        error = error[:, mask]
    mse = error.mean().item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def flat_video(truth: torch.Tensor) -> torch.Tensor:
    """The honest do-nothing baseline: every pixel of every frame is the clip's mean colour. ``[3, F, H, W]``."""
    return truth.float().mean(dim=(1, 2, 3), keepdim=True).expand_as(truth)


def moving_foreground(video: torch.Tensor, distance: float = FOREGROUND_DISTANCE) -> torch.Tensor:
    """``bool [F, H, W]``: pixels whose colour is more than ``distance`` (max over channels, [0, 1] units) away
    from the video's own temporal median at that position."""
    unit = (video.float() + 1) / 2
    median = unit.median(dim=1, keepdim=True).values
    return (unit - median).abs().amax(dim=0) > distance


def colour_histogram(pixels: torch.Tensor, bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """Normalised joint colour histogram ``[bins**3]`` of ``pixels [n, 3]`` in [0, 1] (zeros when n = 0)."""
    index = (pixels.float().clamp(0, 1) * bins).long().clamp_max(bins - 1)
    flat = (index[:, 0] * bins + index[:, 1]) * bins + index[:, 2]
    counts = torch.bincount(flat, minlength=bins**3).float()
    return counts / counts.sum().clamp_min(1)


def subject_pixels(refs: torch.Tensor, white: float = WHITE) -> torch.Tensor:
    """The non-white pixels ``[n, 3]`` in [0, 1] of subject references ``[N, 3, H, W]`` (the subjects themselves)."""
    unit = (refs.float() + 1) / 2
    pixels = unit.permute(0, 2, 3, 1).reshape(-1, 3)
    return pixels[(pixels <= white).any(dim=1)]


def subject_match(video: torch.Tensor, subject_refs: torch.Tensor) -> float:
    """Histogram intersection (0..1) between the colours of ``video``'s moving foreground and the subject
    references' non-white pixels; 0 when nothing moves."""
    mask = moving_foreground(video)
    if not mask.any():
        return 0.0
    moving = ((video.float() + 1) / 2).permute(1, 2, 3, 0)[mask]  # [n, 3]
    return torch.minimum(colour_histogram(moving), colour_histogram(subject_pixels(subject_refs))).sum().item()
