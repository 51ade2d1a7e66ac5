"""dlib face plug-ins of the data build: the ``face_detector`` ``dlib`` (HOG boxes) and the ``element_embedder``
``dlib_face`` (128-d identity descriptors of face crops), built on :mod:`e2v.modules.face_encoder`.

Optional dependencies (imported when a component is built, not here): ``pip install dlib-bin face_recognition_models``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from e2v.databuild.stages import Box
from e2v.modules.face_encoder import FaceEncoder, import_dlib
from e2v.registry import register


@register("face_detector", "dlib")
class DlibFaceDetector:
    """dlib's frontal HOG face detector: face boxes of a frame (needs dlib-bin)."""

    def __init__(self, upsample: int = 1) -> None:
        self.detector = import_dlib().get_frontal_face_detector()
        self.upsample = upsample

    def detect(self, frame: np.ndarray) -> list[Box]:
        """Face boxes ``(x0, y0, x1, y1)`` (x1/y1 exclusive, clipped to the frame) of ``uint8 [H, W, 3]``."""
        height, width = frame.shape[:2]
        boxes, _, _ = self.detector.run(np.ascontiguousarray(frame), self.upsample, 0.0)
        clipped = [(max(box.left(), 0), max(box.top(), 0), min(box.right() + 1, width), min(box.bottom() + 1, height))
                   for box in boxes]
        return [tuple(float(v) for v in box) for box in clipped if box[0] < box[2] and box[1] < box[3]]


@register("element_embedder", "dlib_face")
class DlibFaceEmbedder:
    """dlib 128-d face descriptor of the largest face of each crop, L2-normalised (needs dlib-bin + face models)."""

    def __init__(self, upsample: int = 1) -> None:
        self.encoder = FaceEncoder(upsample=upsample)

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """``float32 [N, 128]`` unit descriptors of crops ``uint8 [h, w, 3]`` (the whole crop when no face is found)."""
        if not crops:
            return np.zeros((0, FaceEncoder.dim), np.float32)
        vectors = torch.stack([self.encoder.embed(np.ascontiguousarray(crop)) for crop in crops])
        return F.normalize(vectors, dim=-1).numpy()
