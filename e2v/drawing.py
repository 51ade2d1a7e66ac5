"""Drawing primitives shared by the synthetic worlds (``e2v.synth``, ``e2v.open_elements``,
``e2v.databuild.raw_synth``): sprites are ``uint8 [h, w, 4]`` RGBA, canvases float ``[H, W, 3]`` in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def resize_longest(image: np.ndarray, size: int) -> np.ndarray:
    scale = size / max(image.shape[:2])
    shape = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, shape, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def ellipse_alpha(height: int, width: int, feather: float = 0.08) -> np.ndarray:
    """Soft-edged ellipse filling the box: float [height, width] in [0, 1]."""
    y, x = np.mgrid[0:height, 0:width]
    radius = np.sqrt(((y + 0.5) / height * 2 - 1) ** 2 + ((x + 0.5) / width * 2 - 1) ** 2)
    return np.clip((1 - radius) / feather, 0, 1)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """float [h, w, 3] in [0, 1] from a uint8/float grey or RGB picture."""
    image = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def tint(grey: np.ndarray, dark: tuple, light: tuple) -> np.ndarray:
    """Colourise a grey picture by blending between two RGB colours (0..255): float [h, w, 3]."""
    g = to_rgb(grey).mean(axis=2, keepdims=True)
    return (np.array(dark) * (1 - g) + np.array(light) * g) / 255.0


@dataclass(frozen=True)
class Pose:
    """Where a sprite sits: centre (x, y) and longest side ``size`` as fractions of the frame's shorter side
    (centre in frame-width/height fractions), rotation in degrees (counter-clockwise), horizontal flip."""

    x: float
    y: float
    size: float
    angle: float
    flip: bool


def premultiplied(rgba: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 4] -> float32 [h, w, 4] with colour multiplied by alpha (so warps have no dark fringes)."""
    out = rgba.astype(np.float32) / 255
    out[..., :3] *= out[..., 3:]
    return out


def draw(canvas: np.ndarray, sprite: np.ndarray, pose: Pose) -> None:
    """Alpha-composite a premultiplied sprite [h, w, 4] onto ``canvas`` [H, W, 3] in place, at ``pose``."""
    height, width = canvas.shape[:2]
    if pose.flip:
        sprite = sprite[:, ::-1]
    scale = pose.size * min(height, width) / max(sprite.shape[:2])
    centre = ((sprite.shape[1] - 1) / 2, (sprite.shape[0] - 1) / 2)
    matrix = cv2.getRotationMatrix2D(centre, pose.angle, scale)
    matrix[:, 2] += (pose.x * width - centre[0], pose.y * height - centre[1])
    warped = cv2.warpAffine(np.ascontiguousarray(sprite), matrix, (width, height), flags=cv2.INTER_LINEAR)
    canvas *= 1 - warped[..., 3:]
    canvas += warped[..., :3]


def prescaled(rgba: np.ndarray, longest: float) -> np.ndarray:
    """Premultiplied sprite area-downsampled to about ``longest`` px, so warps shrink it by little (no aliasing)."""
    longest = max(4, int(np.ceil(longest)))
    return premultiplied(resize_longest(rgba, longest) if longest < max(rgba.shape[:2]) else rgba)


def lerp(a: Pose, b: Pose, t: float) -> Pose:
    mix = lambda u, v: u + (v - u) * t  # noqa: E731
    return Pose(mix(a.x, b.x), mix(a.y, b.y), mix(a.size, b.size), mix(a.angle, b.angle), a.flip)


def window(canvas: np.ndarray, fx: float, fy: float, height: int, width: int) -> np.ndarray:
    """A sub-pixel crop [height, width, 3] whose top-left corner is at fractions (fx, fy) of the free range."""
    x = fx * (canvas.shape[1] - width)
    y = fy * (canvas.shape[0] - height)
    matrix = np.array([[1, 0, -x], [0, 1, -y]], np.float32)
    return cv2.warpAffine(canvas, matrix, (width, height), flags=cv2.INTER_LINEAR)
