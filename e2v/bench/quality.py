"""Visual-quality scorers: CPU proxies for A2-Bench's image quality (MUSIQ) and aesthetic (LAION predictor).

Both are **classical proxies**, labelled as such in the report; learned predictors are plug-ins still to come.
Computed on sampled frames downscaled to a shorter side of at most ``QUALITY_SIDE`` pixels.

- ``image_quality`` = sharpness x exposure, per frame, averaged. Sharpness: ``1 - exp(-var(Laplacian) / 100)``
  (blur lowers it; a flat frame is 0). Exposure: ``1 - |mean luma - 0.5| / 0.5`` (black or white frames are 0).
- ``aesthetic`` = mean of colourfulness (Hasler-Süsstrunk M / 109, clipped to 1: 109 is their "extremely
  colourful") and contrast (luma standard deviation / 0.25, clipped to 1). A grey frame is 0.
"""

from __future__ import annotations

from typing import Callable, Optional

import cv2
import numpy as np

from e2v.bench.scorer import DEFAULT_SAMPLED_FRAMES, Sample, Scorer
from e2v.registry import register

QUALITY_SIDE = 256
SHARPNESS_SCALE = 100.0
COLOURFUL_MAX = 109.0
CONTRAST_FULL = 0.25


def resized(frame: np.ndarray, side: int = QUALITY_SIDE) -> np.ndarray:
    """``frame`` downscaled so its shorter side is at most ``side`` (smaller frames are kept as they are)."""
    height, width = frame.shape[:2]
    scale = side / min(height, width)
    if scale >= 1:
        return frame
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def sharpness(frame: np.ndarray) -> float:
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float64)
    return 1.0 - float(np.exp(-cv2.Laplacian(grey, cv2.CV_64F).var() / SHARPNESS_SCALE))


def exposure(frame: np.ndarray) -> float:
    luma = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).mean() / 255.0
    return 1.0 - abs(luma - 0.5) / 0.5


def colourfulness(frame: np.ndarray) -> float:
    """Hasler & Süsstrunk's colourfulness M (0 grey ... ~109 extremely colourful) of an RGB uint8 frame."""
    r, g, b = (frame[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def contrast(frame: np.ndarray) -> float:
    return float(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).std() / 255.0)


def frame_quality(frame: np.ndarray) -> float:
    return sharpness(frame) * exposure(frame)


def frame_aesthetic(frame: np.ndarray) -> float:
    return 0.5 * (min(colourfulness(frame) / COLOURFUL_MAX, 1.0) + min(contrast(frame) / CONTRAST_FULL, 1.0))


class FrameScorer(Scorer):
    """Mean of a per-frame measure in [0, 1] over sampled frames (shorter side at most QUALITY_SIDE)."""

    version = "1"
    range = (0.0, 1.0)

    def __init__(self, name: str, model: str, measure: Callable[[np.ndarray], float], frames: int) -> None:
        self.name, self.model, self.measure, self.frames = name, model, measure, frames

    def score(self, sample: Sample) -> Optional[float]:
        return float(np.mean([self.measure(resized(frame)) for frame in sample.sampled(self.frames)]))


@register("scorer", "image_quality")
def image_quality(frames: int = DEFAULT_SAMPLED_FRAMES) -> FrameScorer:
    """Proxy image quality: sharpness (Laplacian variance) x exposure, per frame (stand-in for MUSIQ)."""
    model = "proxy: sharpness (1 - exp(-var(Laplacian)/100)) x exposure (1 - |luma - 0.5|/0.5); not MUSIQ"
    return FrameScorer("image_quality", model, frame_quality, frames)


@register("scorer", "aesthetic")
def aesthetic(frames: int = DEFAULT_SAMPLED_FRAMES) -> FrameScorer:
    """Proxy aesthetics: mean of colourfulness and contrast (stand-in for the LAION aesthetic predictor)."""
    model = "proxy: mean of Hasler-Süsstrunk colourfulness/109 and luma contrast/0.25; not the LAION predictor"
    return FrameScorer("aesthetic", model, frame_aesthetic, frames)
