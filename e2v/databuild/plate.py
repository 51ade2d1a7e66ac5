"""Background plates (registry kind ``plate_estimator``): the clean background of a still-camera shot, the A2
background reference."""

from __future__ import annotations

import warnings

import cv2
import numpy as np

from e2v.registry import register


@register("plate_estimator", "median")
class MedianPlate:
    """Per-pixel temporal median of the frames with the element pixels left out; pixels covered in every frame
    are filled by OpenCV inpainting (``fill: inpaint``, Telea) or left as the plain median (``fill: none``)."""

    def __init__(self, fill: str = "inpaint", radius: int = 3) -> None:
        if fill not in ("inpaint", "none"):
            raise ValueError(f"plate_estimator median: fill must be 'inpaint' or 'none', got {fill!r}")
        self.fill, self.radius = fill, radius

    def estimate(self, frames: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        plain = np.median(frames, axis=0)
        if masks is None or not masks.any():
            return np.round(plain).astype(np.uint8)
        values = frames.astype(np.float32)
        values[masks] = np.nan
        never = masks.all(axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: replaced just below
            plate = np.where(never[..., None], plain, np.nanmedian(values, axis=0))
        plate = np.round(np.nan_to_num(plate)).astype(np.uint8)
        if self.fill == "inpaint" and never.any():
            plate = cv2.inpaint(plate, never.astype(np.uint8), self.radius, cv2.INPAINT_TELEA)
        return plate
