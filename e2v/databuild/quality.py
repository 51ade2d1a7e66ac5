"""Clip quality filters (registry kind ``quality_filter``): each measures one number on a clip's frames
``uint8 [F, H, W, 3]`` and rejects the clip under its ``name`` (the report's rejection reason) when it fails.

The thresholds are per frame and per pixel, so they hold across resolutions; ``e2v data build`` writes every
measured value to the report, to tune them on a user's footage.
"""

from __future__ import annotations

import cv2
import numpy as np

from e2v.registry import register


def luma(frames: np.ndarray) -> np.ndarray:
    """``float32 [F, H, W]`` Rec. 601 luma in 0..255."""
    return frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def resized_luma(frames: np.ndarray, side: int) -> np.ndarray:
    """Luma resized (area) so the longest side is ``side``: measures that depend on scale read the same at any
    resolution."""
    scale = side / max(frames.shape[1:3])
    size = (max(1, round(frames.shape[2] * scale)), max(1, round(frames.shape[1] * scale)))
    return np.stack([cv2.resize(y, size, interpolation=cv2.INTER_AREA) for y in luma(frames)])


class _Filter:
    name = ""

    def measure(self, frames: np.ndarray) -> float:
        raise NotImplementedError

    def passes(self, value: float) -> bool:
        raise NotImplementedError

    def check(self, frames: np.ndarray) -> tuple[bool, float]:
        value = float(self.measure(frames))
        return self.passes(value), value


@register("quality_filter", "black")
class Black(_Filter):
    """Rejects black clips: their brightest pixels (each frame's 99th percentile of luma, the median over frames)
    below ``min_luma`` (0..255). Not the mean: a night-side earth or a lit subject on black has a mean of 9 and
    highlights of 116 (gradio's ``world.mp4``); a fade to black has both under 5."""

    name = "black"

    def __init__(self, min_luma: float = 12.0) -> None:
        self.min_luma = min_luma

    def measure(self, frames: np.ndarray) -> float:
        return float(np.median(np.percentile(luma(frames).reshape(len(frames), -1), 99, axis=1)))

    def passes(self, value: float) -> bool:
        return value >= self.min_luma


@register("quality_filter", "static")
class Static(_Filter):
    """Rejects clips where nothing moves: the share of pixels whose luma changes by more than ``change`` (0..255)
    between frames ``span`` of the clip apart (a quarter: a subject that barely moves from frame to frame still
    moves over the clip), averaged over those pairs, below ``min_moving`` (compression noise stays under
    ``change``)."""

    name = "static"

    def __init__(self, min_moving: float = 0.001, change: float = 10.0, span: float = 0.25) -> None:
        self.min_moving, self.change, self.span = min_moving, change, span

    def measure(self, frames: np.ndarray) -> float:
        y = luma(frames)
        step = max(1, round(self.span * (len(y) - 1)))
        return float((np.abs(y[step:] - y[:-step]) > self.change).mean()) if len(y) > 1 else 0.0

    def passes(self, value: float) -> bool:
        return value >= self.min_moving


@register("quality_filter", "flashing")
class Flashing(_Filter):
    """Rejects strobing clips: more than ``max_flashes`` frames whose mean luma jumps by over ``jump`` (0..255)
    from the previous frame."""

    name = "flashing"

    def __init__(self, jump: float = 30.0, max_flashes: int = 1) -> None:
        self.jump, self.max_flashes = jump, max_flashes

    def measure(self, frames: np.ndarray) -> float:
        means = luma(frames).mean(axis=(1, 2))
        return float((np.abs(np.diff(means)) > self.jump).sum())

    def passes(self, value: float) -> bool:
        return value <= self.max_flashes


@register("quality_filter", "blurred")
class Blurred(_Filter):
    """Rejects blurred clips: the median over frames of edge strength relative to contrast (99th percentile of the
    luma gradient magnitude per pixel over the 1-99 percentile luma range) below ``min_sharpness``, on frames
    resized to ``side`` px. Relative, so a smooth sky with one sharp subject passes and a blurred high-contrast
    wall does not."""

    name = "blurred"

    def __init__(self, min_sharpness: float = 0.12, side: int = 64) -> None:
        self.min_sharpness, self.side = min_sharpness, side

    def measure(self, frames: np.ndarray) -> float:
        ratios = []
        for y in resized_luma(frames, self.side):
            gradient = np.hypot(cv2.Sobel(y, cv2.CV_32F, 1, 0), cv2.Sobel(y, cv2.CV_32F, 0, 1)) / 8  # Sobel gain
            low, high = np.percentile(y, (1, 99))
            ratios.append(np.percentile(gradient, 99) / max(8.0, high - low))
        return float(np.median(ratios))

    def passes(self, value: float) -> bool:
        return value >= self.min_sharpness


@register("quality_filter", "camera_motion")
class CameraMotion(_Filter):
    """Camera motion, measured on every clip and logged (the report's ``filter_values``); a rejection only when
    ``max_motion`` is set. The value: the median (over frame pairs) of the ``quantile`` of optical-flow magnitudes
    (Farneback on frames resized to ``side`` px), in fractions of the frame side per frame. With a still camera a
    good share of the pixels (background away from the moving elements) does not move even where flow spreads over
    textureless areas; a pan moves nearly all of them (the raw world's pans measure above 0.003). Moving-camera
    shots are kept by default: the plate is aligned before its median and subjects come from detectors."""

    name = "camera_motion"

    def __init__(self, max_motion: float | None = None, side: int = 64, quantile: float = 25.0) -> None:
        self.max_motion, self.side, self.quantile = max_motion, side, quantile

    def measure(self, frames: np.ndarray) -> float:
        y = resized_luma(frames, self.side).astype(np.uint8)
        if len(y) < 2:
            return 0.0
        magnitudes = []
        for a, b in zip(y[:-1], y[1:]):
            flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.1, 0)
            magnitudes.append(np.percentile(np.linalg.norm(flow, axis=2), self.quantile))
        return float(np.median(magnitudes)) / self.side

    def passes(self, value: float) -> bool:
        return self.max_motion is None or value <= self.max_motion
