"""Reference image preparation, shared by the datamodule and the generation pipeline (the SkyReels-A2 way).

Subjects (people, faces, objects, animals) are white-padded to the target frame keeping their aspect ratio;
backgrounds are resized to cover the frame and centre-cropped. The image encoder gets white-padded squares.
Images are float ``[3, H, W]`` in [-1, 1]; white is 1.0.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from e2v.datamodules.video_io import load_image

BACKGROUND_KINDS = frozenset({"background", "scene", "environment"})
SUBJECT_KINDS = frozenset({"human", "face", "object", "animal"})
REFERENCE_KINDS = SUBJECT_KINDS | BACKGROUND_KINDS
MIN_REFERENCE_SIDE = 8  # pixels; smaller references carry no usable detail (and are usually a mistake)


def check_kind(kind: str, where: object) -> str:
    """``kind`` stripped and lower-cased; ValueError naming ``where`` and the known kinds when it is not one (a
    typo such as ``backgorund`` would otherwise be a white-padded subject)."""
    value = kind.strip().lower()
    if value not in REFERENCE_KINDS:
        raise ValueError(f"{where}: unknown reference kind {kind!r}; known kinds: {', '.join(sorted(REFERENCE_KINDS))}")
    return value


def check_reference_size(image: torch.Tensor, where: object) -> torch.Tensor:
    """``image [..., H, W]`` unchanged; ValueError naming ``where`` when a side is below MIN_REFERENCE_SIDE."""
    height, width = image.shape[-2:]
    if min(height, width) < MIN_REFERENCE_SIDE:
        raise ValueError(
            f"{where}: reference is {width}x{height} pixels; references need at least "
            f"{MIN_REFERENCE_SIDE}x{MIN_REFERENCE_SIDE}"
        )
    return image


def to_float_image(image: torch.Tensor) -> torch.Tensor:
    """``uint8 [H, W, 3]`` -> float ``[3, H, W]`` in [-1, 1]."""
    return image.permute(2, 0, 1).float().div(127.5).sub(1.0)


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bilinear resize of ``[3, h, w]`` (or ``[B, 3, h, w]``) to ``height x width``."""
    batch = image[None] if image.ndim == 3 else image
    if batch.shape[-2:] != (height, width):
        batch = F.interpolate(batch, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return batch[0] if image.ndim == 3 else batch


def fit_and_pad(image: torch.Tensor, height: int, width: int, fill: float = 1.0) -> torch.Tensor:
    """Resize ``[3, h, w]`` to fit inside ``height x width`` keeping its aspect, centre it on a ``fill`` canvas."""
    h, w = image.shape[-2:]
    scale = min(height / h, width / w)
    new_h, new_w = max(1, min(height, round(h * scale))), max(1, min(width, round(w * scale)))
    canvas = image.new_full((image.shape[0], height, width), fill)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[:, top : top + new_h, left : left + new_w] = _resize(image, new_h, new_w).clamp(-1, 1)
    return canvas


def cover_and_crop(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize ``[..., 3, h, w]`` to cover ``height x width`` keeping its aspect, then centre-crop to it."""
    h, w = image.shape[-2:]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    resized = _resize(image, new_h, new_w)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return resized[..., top : top + height, left : left + width].clamp(-1, 1)


def pad_to_white_square(image: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """White-pad ``[3, H, W]`` to a centred square of side ``max(H, W)``, resized to ``size`` when given.

    Returns ``[3, S, S]`` in [-1, 1] (the image encoder's input; S = 224 for CLIP).
    """
    side = max(image.shape[-2:])
    square = fit_and_pad(image, side, side)
    return square if size is None else _resize(square, size, size).clamp(-1, 1)


def prepare_reference(image: torch.Tensor, kind: str, height: int, width: int) -> torch.Tensor:
    """A layout-ready reference ``[3, height, width]``: backgrounds cover-cropped, every other kind white-padded."""
    if kind in BACKGROUND_KINDS:
        return cover_and_crop(image, height, width)
    return fit_and_pad(image, height, width)


def apply_mask_and_box(
    image: torch.Tensor, mask: torch.Tensor | None = None, bbox: list[float] | None = None
) -> torch.Tensor:
    """Whiten pixels outside ``mask`` (``[H, W]`` in [0, 1]) and crop to ``bbox`` ``[x0, y0, x1, y1]`` pixels."""
    if mask is not None:
        if mask.shape != image.shape[-2:]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match the image {tuple(image.shape[-2:])}")
        image = image * mask + (1.0 - mask)
    if bbox is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in bbox)
        h, w = image.shape[-2:]
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"bbox {bbox} is empty inside the {w}x{h} image")
        image = image[:, y0:y1, x0:x1]
    return image


def load_reference(
    path: str | os.PathLike, mask: str | os.PathLike | None = None, bbox: list[float] | None = None
) -> torch.Tensor:
    """Read a reference image as ``[3, H, W]`` in [-1, 1], whitened outside its mask PNG and cropped to its bbox.

    Raises FileNotFoundError (missing file) or ValueError (undecodable image, bad mask or bbox, smaller than
    MIN_REFERENCE_SIDE) naming the file.
    """
    image = to_float_image(load_image(path))
    mask_tensor = load_image(mask)[..., 0].float().div(255.0) if mask is not None else None
    try:
        image = apply_mask_and_box(image, mask_tensor, bbox)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return check_reference_size(image, path)
