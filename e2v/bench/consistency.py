"""Composition consistency: each reference against where its element appears in sampled frames.

Which reference each scorer judges (by the case's ``kind``): ``id_consistency`` faces and humans,
``background_consistency`` backgrounds, ``object_consistency`` every kind but face and background (humans count
as subjects too). A scorer returns ``None`` for a case without such references.

The crop plug-in point is ``region`` (a name in :data:`REGIONS`), applied to the sampled frames:

- ``moving`` (objects' default): the box around the pixels that differ from the sampled frames' temporal median
  (``e2v.bench.pixel_metrics.moving_foreground``), with the still pixels inside it painted white, i.e. a
  segmented crop on a white canvas like A2's subject references; the whole frame when nothing moves. It assumes a
  still camera (the synthetic world; many E2V clips); a detector/segmenter (GroundingDINO + SAM, YOLO-World as in
  OpenS2V's NexusScore) is the plug-in for moving cameras and several subjects.
- ``static`` (backgrounds' default): the whole frame with the moving pixels painted white.
- ``whole``: the whole frame.

The similarity is the cosine of the embedder's vectors (``e2v.bench.embedders``), averaged over frames and
references; for faces, the best-matching face of each frame (0 for a frame without a face).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from e2v.bench.embedders import WHITE_LEVEL, build_embedder, cosine
from e2v.bench.pixel_metrics import moving_foreground
from e2v.bench.scorer import (BACKGROUND_KINDS, DEFAULT_SAMPLED_FRAMES, FACE_KINDS, SUBJECT_KINDS_EXCLUDED, Sample,
                              Scorer, to_signed_video)
from e2v.registry import register

WHITE = 255


def moving_masks(frames: np.ndarray) -> np.ndarray:
    """``bool [F, H, W]``: the pixels of each frame that differ from the frames' temporal median."""
    return moving_foreground(to_signed_video(frames)).numpy()


def moving_crops(frames: np.ndarray) -> list[np.ndarray]:
    masks = moving_masks(frames)
    crops = []
    for frame, mask in zip(frames, masks):
        if not mask.any():
            crops.append(frame)
            continue
        ys, xs = np.nonzero(mask)
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        crop = frame[box].copy()
        crop[~mask[box]] = WHITE
        crops.append(crop)
    return crops


def static_parts(frames: np.ndarray) -> list[np.ndarray]:
    masks = moving_masks(frames)
    out = frames.copy()
    out[masks] = WHITE
    return list(out)


REGIONS: dict[str, Callable[[np.ndarray], list[np.ndarray]]] = {
    "moving": moving_crops,
    "static": static_parts,
    "whole": lambda frames: list(frames),
}


def _region(name: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    if name not in REGIONS:
        raise KeyError(f"no region named {name!r}; known: {', '.join(REGIONS)}")
    return REGIONS[name]


class ElementConsistency(Scorer):
    """Mean embedding similarity between the chosen references and the chosen region of each sampled frame."""

    kinds: tuple[str, ...] = ()
    exclude_kinds = False
    on_white = False  # references are subjects on white (a blank one is skipped)
    default_region = "whole"

    def __init__(self, embedder: Any = "colour_histogram", region: Optional[str] = None,
                 frames: int = DEFAULT_SAMPLED_FRAMES) -> None:
        self.embedder = build_embedder(embedder) if isinstance(embedder, (str, dict)) else embedder
        self.region_name = region or self.default_region
        self.region = _region(self.region_name)
        self.frames = frames
        self.range = tuple(self.embedder.range)
        self.model = f"{self.embedder.label}; region {self.region_name!r}"

    def score(self, sample: Sample) -> Optional[float]:
        refs = sample.references_of(self.kinds, exclude=self.exclude_kinds)
        if self.on_white:  # a subject reference with nothing but white shows no subject: it does not apply
            refs = [ref for ref in refs if (ref.reshape(-1, 3) <= WHITE_LEVEL).any()]
        if not refs:
            return None
        crops = self.region(sample.sampled(self.frames))
        return cosine(self.embedder.embed(refs), self.embedder.embed(crops)).mean().item()


@register("scorer", "object_consistency")
class ObjectConsistency(ElementConsistency):
    """Subject references (every kind but face/background) vs the moving region of the frames (embedder plug-in)."""

    name = "object_consistency"
    version = "1"
    kinds = SUBJECT_KINDS_EXCLUDED
    exclude_kinds = True
    on_white = True
    default_region = "moving"


@register("scorer", "background_consistency")
class BackgroundConsistency(ElementConsistency):
    """Background references vs the still part of the frames (embedder plug-in)."""

    name = "background_consistency"
    version = "1"
    kinds = BACKGROUND_KINDS
    default_region = "static"


class DlibFaces:
    """dlib's HOG face detector and 128-d ResNet descriptor (``pip install 'e2v[face]'``)."""

    label = "dlib HOG face detector + 128-d ResNet face descriptor (face_recognition_models), cosine"

    def __init__(self, upsample: int = 1) -> None:
        from e2v.modules.face_encoder import FaceEncoder

        self.encoder = FaceEncoder(upsample=upsample)

    def reference(self, image: np.ndarray) -> torch.Tensor:
        """The descriptor of the largest face of a reference image (the whole image when none is found)."""
        return self.encoder.embed(np.ascontiguousarray(image))

    def faces(self, frame: np.ndarray) -> list[torch.Tensor]:
        """One descriptor per face found in ``frame``."""
        frame = np.ascontiguousarray(frame)
        boxes, _, _ = self.encoder.detector.run(frame, self.encoder.upsample, 0.0)
        return [torch.tensor(self.encoder.recognizer.compute_face_descriptor(frame, self.encoder.landmarks(frame, box)),
                             dtype=torch.float32) for box in boxes]


FACE_MODELS: dict[str, Callable[..., Any]] = {"dlib": DlibFaces}


@register("scorer", "id_consistency")
class IdConsistency(Scorer):
    """Face/human references vs the best-matching face of each sampled frame (default dlib; 0 without a face)."""

    name = "id_consistency"
    version = "1"
    range = (-1.0, 1.0)

    def __init__(self, face_model: Any = "dlib", frames: int = DEFAULT_SAMPLED_FRAMES, upsample: int = 1) -> None:
        if isinstance(face_model, str):
            if face_model not in FACE_MODELS:
                raise KeyError(f"no face model named {face_model!r}; known: {', '.join(FACE_MODELS)}")
            face_model = FACE_MODELS[face_model](upsample=upsample)
        self.faces = face_model
        self.frames = frames
        self.model = face_model.label

    def score(self, sample: Sample) -> Optional[float]:
        refs = sample.references_of(FACE_KINDS)
        if not refs:
            return None
        per_frame = [self.faces.faces(frame) for frame in sample.sampled(self.frames)]
        values = []
        for ref in refs:
            target = self.faces.reference(ref)[None]
            for faces in per_frame:
                values.append(cosine(target, torch.stack(faces)).max().item() if faces else 0.0)
        return float(np.mean(values))
