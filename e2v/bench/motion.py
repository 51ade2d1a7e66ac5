"""Motion scorers from OpenCV Farneback optical flow (OpenS2V-Eval's Motion uses Farneback too).

Flows are computed on grey frames resized so their shorter side is ``FLOW_SIDE`` pixels (up or down), so
magnitudes are in "pixels at a 256-pixel shorter side" whatever the video's resolution. Frames are subsampled to at
most ``MAX_FRAMES`` evenly spaced frames.

- ``dynamic_degree`` (VBench-style): the fraction of consecutive frame pairs whose strongest motion (mean flow
  magnitude of the top 5% pixels) exceeds ``threshold`` (6 px at 256, VBench's value). Static video: 0.
- ``motion_amplitude`` (OpenS2V-style Motion): mean flow magnitude over all pixels and pairs, in px at 256.
- ``motion_smoothness`` (VBench-style frame-interpolation error, with a flow warp instead of the AMT network):
  every inner frame is predicted from its two neighbours (each warped half way along the Farneback flow between
  them, then averaged) and ``1 - mean |prediction - frame|`` (grey, [0, 1] units) is reported. Still or steadily
  moving content scores near 1; duplicated or dropped frames (stutter) score lower.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from e2v.bench.scorer import Sample, Scorer
from e2v.registry import register

FLOW_SIDE = 256
MAX_FLOW_ASPECT = 8  # the longer side is at most this many FLOW_SIDEs (OpenCV's remap takes under 32767 px)
MAX_FRAMES = 64
TOP_FRACTION = 0.05
VBENCH_THRESHOLD = 6.0
BLEND_EPS = 0.25  # px: below this flow magnitude both warps weigh about the same
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
FLOW_MODEL = f"OpenCV Farneback optical flow at a {FLOW_SIDE}-px shorter side"


def grey_frames(sample: Sample) -> list[np.ndarray]:
    """The sample's frames (at most MAX_FRAMES) as grey uint8 images at a FLOW_SIDE shorter side (less for a frame
    longer than MAX_FLOW_ASPECT times that); cached."""
    if "grey" not in sample.cache:
        frames = sample.sampled(MAX_FRAMES)
        height, width = frames.shape[1:3]
        scale = min(FLOW_SIDE / min(height, width), MAX_FLOW_ASPECT * FLOW_SIDE / max(height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        sample.cache["grey"] = [cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), size, interpolation=interpolation)
                                for f in frames]
    return sample.cache["grey"]


def flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Farneback flow ``[H, W, 2]`` from grey ``a`` to grey ``b``: ``a(p) ~ b(p + flow(p))``."""
    return cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK)


def pair_magnitudes(sample: Sample) -> list[np.ndarray]:
    """Flow magnitude maps of consecutive (sampled) frame pairs; cached on the sample."""
    if "magnitudes" not in sample.cache:
        grey = grey_frames(sample)
        sample.cache["magnitudes"] = [np.linalg.norm(flow(a, b), axis=-1) for a, b in zip(grey, grey[1:])]
    return sample.cache["magnitudes"]


def warp(image: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """``image`` sampled at ``p + displacement(p)`` (bilinear, border replicated), float32."""
    height, width = image.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return cv2.remap(image.astype(np.float32), xs + displacement[..., 0], ys + displacement[..., 1],
                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def interpolate_middle(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The frame half way between grey ``before`` and ``after`` (float32, 0..255): each neighbour warped half way
    along its flow to the other, blended per pixel by flow magnitude (moving content wins where one warp sees
    background it uncovers: a foreground-over-background occlusion rule; equal weights where both agree)."""
    forward, backward = flow(before, after), flow(after, before)
    weight_before = np.linalg.norm(forward, axis=-1) + BLEND_EPS
    weight_after = np.linalg.norm(backward, axis=-1) + BLEND_EPS
    mix = weight_before / (weight_before + weight_after)
    return mix * warp(before, -0.5 * forward) + (1 - mix) * warp(after, -0.5 * backward)


@register("scorer", "dynamic_degree")
class DynamicDegree(Scorer):
    """Fraction of frame pairs with clear motion (Farneback flow, VBench threshold); 0 = static video."""

    name = "dynamic_degree"
    version = "1"
    range = (0.0, 1.0)

    def __init__(self, threshold: float = VBENCH_THRESHOLD) -> None:
        self.threshold = threshold
        self.model = f"{FLOW_MODEL}; pair is dynamic when its top-5% magnitude mean > {threshold:g} px"

    def score(self, sample: Sample) -> Optional[float]:
        magnitudes = pair_magnitudes(sample)
        if not magnitudes:
            return None
        dynamic = []
        for magnitude in magnitudes:
            values = np.sort(magnitude.ravel())
            top = values[-max(1, int(len(values) * TOP_FRACTION)):]
            dynamic.append(top.mean() > self.threshold)
        return float(np.mean(dynamic))


@register("scorer", "motion_amplitude")
class MotionAmplitude(Scorer):
    """Mean Farneback flow magnitude in px per frame at a 256-px shorter side (OpenS2V-style Motion)."""

    name = "motion_amplitude"
    version = "1"
    range = (0.0, None)
    model = f"{FLOW_MODEL}; mean magnitude over pixels and pairs"

    def score(self, sample: Sample) -> Optional[float]:
        magnitudes = pair_magnitudes(sample)
        return float(np.mean([m.mean() for m in magnitudes])) if magnitudes else None


@register("scorer", "motion_smoothness")
class MotionSmoothness(Scorer):
    """1 - error of flow-interpolated inner frames (VBench-style; Farneback warp instead of AMT)."""

    name = "motion_smoothness"
    version = "1"
    range = (0.0, 1.0)
    model = f"proxy: {FLOW_MODEL}, half-way warp from both neighbours (VBench uses the AMT interpolation network)"

    def score(self, sample: Sample) -> Optional[float]:
        grey = grey_frames(sample)
        if len(grey) < 3:
            return None
        errors = [np.abs(interpolate_middle(grey[i - 1], grey[i + 1]) - grey[i]).mean() / 255.0
                  for i in range(1, len(grey) - 1)]
        return 1.0 - float(np.mean(errors))
