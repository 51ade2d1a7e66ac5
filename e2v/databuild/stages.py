"""What the build's pluggable stages take and return (the contract a plug-in implements).

Frames are ``uint8 [F, H, W, 3]`` RGB, boxes ``(x0, y0, x1, y1)`` in pixels (x1/y1 exclusive), masks ``bool [H, W]``.
Registry kinds: ``shot_detector``, ``quality_filter``, ``element_detector``, ``face_detector``, ``plate_estimator``,
``element_embedder``, ``captioner``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

Box = tuple[float, float, float, float]


@dataclass
class Detection:
    """One element in one frame: box, full-frame mask (None: the box is the mask), kind label and confidence;
    ``seen``: found in this very frame (False: carried there from another frame the detector found it in)."""

    box: Box
    mask: np.ndarray | None = None
    kind: str = "object"
    score: float = 1.0
    seen: bool = True


@dataclass
class ClipContext:
    """What a captioner sees of a clip: its frames, the elements found in it and their motion.

    ``elements``: ``[{"kind", "name", "colour", "box"}]`` in reference order; ``direction``: the common motion
    ("left", "right", "up", "down" or "still"); ``background``: a phrase for the plate ("a green background");
    ``video``, ``shot``, ``time``: the source file, the detected shot's index and the clip's start (seconds).
    """

    frames: np.ndarray
    elements: list[dict] = field(default_factory=list)
    direction: str = "still"
    background: str = "a background"
    video: str = ""
    shot: int = 0
    time: float = 0.0  # the clip's start in the video, seconds


@runtime_checkable
class ShotDetector(Protocol):
    def detect(self, path: str) -> list[tuple[int, int]]:
        """Shots of a video file as ``[(first_frame, end_frame)]`` (end exclusive), native frame indices."""


@runtime_checkable
class QualityFilter(Protocol):
    name: str

    def check(self, frames: np.ndarray) -> tuple[bool, float]:
        """``(passes, measured value)`` for one clip's frames ``uint8 [F, H, W, 3]``."""


@runtime_checkable
class ElementDetector(Protocol):
    def detect(self, frames: np.ndarray, plate: np.ndarray | None) -> list[list[Detection]]:
        """Elements in every frame of a clip: one list of detections per frame. ``plate``: the shot's background
        estimate ``uint8 [H, W, 3]`` when the plate stage ran first (motion segmentation needs it)."""


@runtime_checkable
class FaceDetector(Protocol):
    def detect(self, frame: np.ndarray) -> list[Box]:
        """Face boxes in one frame ``uint8 [H, W, 3]``."""


@runtime_checkable
class PlateEstimator(Protocol):
    def estimate(self, frames: np.ndarray, masks: np.ndarray | None, view: int | None = None) -> np.ndarray:
        """The clean background ``uint8 [H, W, 3]`` of a shot's ``frames`` ``[F, H, W, 3]``; ``masks``:
        ``bool [F, H, W]`` element pixels to leave out (None: every pixel counts); ``view``: the frame whose view of
        a moving camera's scene the plate shows (None: the middle one; a still-camera estimator may ignore it)."""


@runtime_checkable
class ElementEmbedder(Protocol):
    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """L2-normalised identity embeddings ``float32 [N, D]`` of element crops ``uint8 [h, w, 3]`` on white."""


@runtime_checkable
class Captioner(Protocol):
    def caption(self, clip: ClipContext) -> str | None:
        """A caption for the clip, or None to defer to the next captioner in the build's list."""
