"""Face identity encoder: dlib's 128-d face descriptor behind the image-encoder interface (for the ID metric).

Per image: the largest face found by dlib's HOG detector (the whole image when none is found), 5 landmarks, then
dlib's ResNet face-recognition descriptor. Descriptors of one person lie within ~0.6 (Euclidean) of each other.
Optional dependencies: ``pip install dlib-bin face_recognition_models`` (the latter only ships the model files;
it is located on disk, never imported, since its ``__init__`` needs the removed ``pkg_resources``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from e2v.registry import register

INSTALL_HINT = "pip install dlib-bin face_recognition_models (or pip install 'e2v[face]')"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"


def import_dlib():
    try:
        import dlib
    except ImportError as err:
        raise ImportError(f"the dlib face encoder needs dlib: {INSTALL_HINT}") from err
    return dlib


def model_folder() -> Path:
    """The folder of dlib model files installed by the ``face_recognition_models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the dlib face encoder needs the face_recognition_models files: {INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    missing = [name for name in (LANDMARKS_FILE, RECOGNITION_FILE) if not (folder / name).is_file()]
    if missing:
        raise ImportError(f"{folder} lacks {', '.join(missing)}; reinstall: {INSTALL_HINT}")
    return folder


def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """``[..., 3, H, W]`` floats in [-1, 1] -> ``[..., H, W, 3]`` uint8 RGB."""
    pixels = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.movedim(-3, -1).numpy()


class FaceEncoder(nn.Module):
    """dlib face identity: ``forward(images [B,N,3,S,S] in [-1,1]) -> [B, N, 128]``; ``embed(HxWx3 uint8) -> [128]``."""

    dim = 128
    tokens_per_image = 1

    def __init__(self, image_size: int = 224, upsample: int = 1) -> None:
        super().__init__()
        dlib = import_dlib()
        folder = model_folder()
        self.image_size = image_size  # any square size is accepted; this is the size references are prepared at
        self.upsample = upsample
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(str(folder / LANDMARKS_FILE))
        self.recognizer = dlib.face_recognition_model_v1(str(folder / RECOGNITION_FILE))

    def largest_face(self, image: np.ndarray):
        """The largest detected face box of an ``HxWx3`` uint8 image (best score on ties), else the whole image."""
        boxes, scores, _ = self.detector.run(image, self.upsample, 0.0)
        if not boxes:
            return import_dlib().rectangle(0, 0, image.shape[1] - 1, image.shape[0] - 1)
        return max(zip(boxes, scores), key=lambda pair: (pair[0].area(), pair[1]))[0]

    def embed(self, image: np.ndarray) -> torch.Tensor:
        """``HxWx3`` uint8 RGB image -> ``[128]`` float32 descriptor of its largest face."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"embed expects an HxWx3 uint8 RGB array, got {got}")
        image = np.ascontiguousarray(image)
        shape = self.landmarks(image, self.largest_face(image))
        return torch.tensor(self.recognizer.compute_face_descriptor(image, shape), dtype=torch.float32)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, N, 3, S, S]`` in [-1, 1] -> ``[B, N, 128]`` face descriptors (on the input's device)."""
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, N, 3, S, S], got shape {tuple(images.shape)}")
        pixels = to_uint8_images(images)
        descriptors = [self.embed(image) for image in pixels.reshape(-1, *pixels.shape[2:])]
        return torch.stack(descriptors).view(*images.shape[:2], self.dim).to(images.device)


@register("image_encoder", "dlib_face")
def dlib_face(image_size: int = 224, upsample: int = 1) -> FaceEncoder:
    """dlib 128-d face identity descriptor of the largest face (needs dlib-bin + face_recognition_models)."""
    return FaceEncoder(image_size, upsample)
