"""Camera motion as translations: how far each frame's picture has moved against a reference picture, so that a
plate can be made from a panning shot (align, then median) and moving elements found against it.

Shifts are ``float [F, 2]`` ``(dx, dy)`` in pixels: the content at ``(x, y)`` of the reference is at
``(x + dx, y + dy)`` in the frame. Estimated by phase correlation of luma at ``side`` px (window-weighted; at 128 px chained errors reach a pixel), chained
frame to frame so that pans wider than the correlation's reach still line up.
"""

from __future__ import annotations

import cv2
import numpy as np


def _grey(frame: np.ndarray, side: int) -> np.ndarray:
    scale = side / max(frame.shape[:2])
    size = (max(8, round(frame.shape[1] * scale)), max(8, round(frame.shape[0] * scale)))
    return cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA).astype(np.float32)


def phase_shift(a: np.ndarray, b: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Translation of ``b``'s content against ``a``'s (both ``float32 [h, w]``)."""
    (dx, dy), _ = cv2.phaseCorrelate(a, b, window)
    return np.array([dx, dy])


def frame_shifts(frames: np.ndarray, reference: int | None = None, side: int = 256) -> np.ndarray:
    """``float [F, 2]`` shifts of ``uint8 [F, H, W, 3]`` frames against frame ``reference`` (default: the middle
    one), in full-resolution pixels (see the module docstring)."""
    reference = len(frames) // 2 if reference is None else reference
    grey = [_grey(f, side) for f in frames]
    window = cv2.createHanningWindow(grey[0].shape[::-1], cv2.CV_32F)
    steps = np.array([[0.0, 0.0]] + [phase_shift(a, b, window) for a, b in zip(grey[:-1], grey[1:])])
    chained = np.cumsum(steps, axis=0)
    scale = max(frames.shape[1:3]) / side
    return (chained - chained[reference]) * scale


def shifts_against(picture: np.ndarray, frames: np.ndarray, side: int = 256) -> np.ndarray:
    """``float [F, 2]`` shifts of each frame against one ``picture`` ``uint8 [H, W, 3]`` (e.g. a plate)."""
    reference = _grey(picture, side)
    window = cv2.createHanningWindow(reference.shape[::-1], cv2.CV_32F)
    scale = max(frames.shape[1:3]) / side
    return np.stack([phase_shift(reference, _grey(f, side), window) for f in frames]) * scale


def translate(image: np.ndarray, shift: np.ndarray, border: int = cv2.BORDER_REPLICATE,
              interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """``image`` moved by ``shift`` ``(dx, dy)`` pixels (same size; uncovered pixels by ``border``)."""
    matrix = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    return cv2.warpAffine(image, matrix, image.shape[1::-1], flags=interpolation, borderMode=border)


def is_moving(shifts: np.ndarray, side: int, still: float = 0.01) -> bool:
    """Whether the camera moved: the frames' spread of shifts exceeds ``still`` of the frame side."""
    return bool(np.ptp(shifts, axis=0).max() > still * side) if len(shifts) else False
