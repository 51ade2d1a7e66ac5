"""Background plates (registry kind ``plate_estimator``): the clean background of a shot with its elements
removed, the A2 background reference."""

from __future__ import annotations

import warnings

import cv2
import numpy as np

from e2v.databuild.camera import fitted_shifts, is_moving, translate
from e2v.registry import register


@register("plate_estimator", "median")
class MedianPlate:
    """Per-pixel temporal median of the frames with the element pixels (grown by ``grow`` of the frame's longest
    side, their blended rims) left out; pixels shown in under ``min_seen`` of the frames (the background there is
    unseen, or only where a mask missed part of a subject) are filled by OpenCV inpainting (``fill: inpaint``,
    Telea) or left as the plain median (``fill: none``). With ``align`` a moving camera's frames (a pan, a
    hand-held shake) are first moved onto the ``view`` frame (default: the middle one) by the shifts that fit the
    background best against the middle one (:func:`e2v.databuild.camera.fitted_shifts`: a still camera stays still
    when subjects drift), so the plate is that frame's view: the build passes the frame nearest its clip's middle,
    so a clip at a long pan's start gets its own view, not one beyond the reach of the fit to its frames.
    :meth:`estimate` is the plate detectors compare frames with; the background reference (the second of
    :meth:`plates`) also leaves each frame's element pixels out of the ``hold`` frames either side
    of it: a subject that stands still for a while is masked whole only in some frames (the motion hints a
    detector's masks start from cover its moving parts), and without the hold the median kept the rest of it (Big
    Buck Bunny's body, standing in his burrow, stayed in the plate), and fills the pixels its held element masks
    cover in over ``held_max_cover`` of the frames (pixels a moving camera did not show are no element's): where
    masks cover a subject that sits still in over half the frames, the frames that show the spot are more often
    frames whose masks missed the still part than frames of the background uncovered (Big Buck Bunny's masks took
    his body in 28 of 48 frames, 20 in a row only his moving arms: the hold reached 8 of those, and the median of the
    other 12 was his body). Detectors keep the plate without the
    hold: where a subject lingered it is inpainted there, and masks found against the inpainted patch stray into the
    photo around it."""

    def __init__(self, fill: str = "inpaint", radius: int = 3, grow: float = 0.02, align: bool = True,
                 min_seen: float = 0.2, hold: int = 4, held_max_cover: float = 0.5) -> None:
        if fill not in ("inpaint", "none"):
            raise ValueError(f"plate_estimator median: fill must be 'inpaint' or 'none', got {fill!r}")
        if not 0 <= min_seen < 1:
            raise ValueError(f"plate_estimator median: min_seen must be in [0, 1), got {min_seen!r}")
        if not 0 < held_max_cover <= 1:
            raise ValueError(f"plate_estimator median: held_max_cover must be in (0, 1], got {held_max_cover!r}")
        if hold < 0:
            raise ValueError(f"plate_estimator median: hold must be >= 0 frames, got {hold!r}")
        self.fill, self.radius, self.grow, self.align, self.min_seen = fill, radius, grow, align, min_seen
        self.hold, self.held_max_cover = hold, held_max_cover

    def _aligned(self, frames: np.ndarray, masks: np.ndarray | None, view: int | None
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Frames and masks moved onto frame ``view`` (None: the middle one) when the camera moves, and the pixels
        each frame did not see (None when the camera is still)."""
        if not self.align or len(frames) < 2:
            return frames, masks, None
        # a clean plate estimates twice from the same frames: the second fit is remembered (no offset to search)
        shifts = fitted_shifts(frames[len(frames) // 2], frames, reach=0.0)
        if not is_moving(shifts, max(frames.shape[1:3])):
            return frames, masks, None
        if view is not None:
            shifts = shifts - shifts[view]
        masks = np.zeros(frames.shape[:3], bool) if masks is None else masks
        moved = np.stack([translate(f, -s) for f, s in zip(frames, shifts)])
        unseen = np.stack([translate(np.ones(frames.shape[1:3], np.uint8), -s, cv2.BORDER_CONSTANT,
                                     cv2.INTER_NEAREST) == 0 for s in shifts])
        masks = np.stack([translate(m.astype(np.uint8), -s, cv2.BORDER_CONSTANT, cv2.INTER_NEAREST).astype(bool)
                          for m, s in zip(masks, shifts)])
        return moved, masks, unseen

    def _grown(self, masks: np.ndarray) -> np.ndarray:
        """``bool [F, H, W]``: each mask dilated by ``grow`` of the frame's longest side (the blended rims)."""
        size = 2 * round(self.grow * max(masks.shape[1:3])) + 1
        if size == 1:
            return masks
        kernel = np.ones((size, size), np.uint8)
        return np.stack([cv2.dilate(m.astype(np.uint8), kernel).astype(bool) for m in masks])

    def _held(self, masks: np.ndarray | None) -> np.ndarray | None:
        """``bool [F, H, W]``: each frame's mask joined with those of the ``hold`` frames either side."""
        if masks is None or not self.hold:
            return masks
        return np.stack([masks[max(0, f - self.hold): f + self.hold + 1].any(axis=0) for f in range(len(masks))])

    def estimate(self, frames: np.ndarray, masks: np.ndarray | None, view: int | None = None) -> np.ndarray:
        """``uint8 [H, W, 3]``: the median of ``frames`` ``[F, H, W, 3]`` without the ``masks`` ``bool [F, H, W]``,
        in the view of frame ``view``."""
        return self._median(frames, masks, view)[0]

    def plates(self, frames: np.ndarray, masks: np.ndarray | None, view: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """``(estimate, background reference)`` of the same frames and masks, the reference with each mask also held
        over the ``hold`` frames either side and filled where they cover over ``held_max_cover`` of the frames; the
        medians taken once, the reference's again only at the pixels where holding the masks changed the frames they
        are taken from."""
        plate, work = self._median(frames, masks, view)
        if work is None or not self.hold:
            return plate, plate
        return plate, self._median(frames, self._held(masks), view, work, self.held_max_cover)[0]

    def _median(self, frames: np.ndarray, masks: np.ndarray | None, view: int | None, reuse: tuple | None = None,
                max_cover: float = 1.0) -> tuple[np.ndarray, tuple | None]:
        """The plate and ``(plain median, grown masks, masked median)`` (aligned frames), which a later call with
        other masks of the same frames may ``reuse``: its medians are taken only where its grown masks differ. Pixels
        seen in under ``min_seen`` of the frames, or covered by the element masks in over ``max_cover`` of them, are
        filled."""
        frames, elements, unseen = self._aligned(frames, masks, view)
        plain = np.median(frames, axis=0) if reuse is None else reuse[0]
        masks = elements if unseen is None else unseen if elements is None else elements | unseen
        if masks is None or not masks.any():
            return np.round(plain).astype(np.uint8), None
        masks = self._grown(masks)
        never = masks.all(axis=0) | (1 - masks.mean(axis=0) < self.min_seen)
        if max_cover < 1 and elements is not None:  # the elements' masks alone: not what a moving camera missed
            never |= (masks if unseen is None else self._grown(elements)).mean(axis=0) > max_cover
        todo = np.ones(never.shape, bool) if reuse is None else (masks != reuse[1]).any(axis=0)
        values = frames[:, todo].astype(np.float32)  # [F, n, 3]
        values[masks[:, todo]] = np.nan
        median = np.full(frames.shape[1:], np.nan, np.float32) if reuse is None else reuse[2].copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: never seen, replaced just below
            median[todo] = np.nanmedian(values, axis=0)
        plate = np.round(np.nan_to_num(np.where(never[..., None], plain, median))).astype(np.uint8)
        if self.fill == "inpaint" and never.any():
            plate = cv2.inpaint(plate, never.astype(np.uint8), self.radius, cv2.INPAINT_TELEA)
        return plate, (plain, masks, median)
