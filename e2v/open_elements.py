"""Open-ended elements for the synthetic world: every subject and background is drawn from a procedural space,
so almost no two clips share an element and a model has to copy what its references show.

The space is cut into two disjoint parts by :data:`SPLITS`:

- ``train``: silhouettes of the families in ``SHAPES["train"]`` (random polygons, stars, radial blobs, rings with
  an off-centre hole, unions of ellipses and boxes), fills of ``FILLS["train"]``, colours whose hue lies outside
  :data:`ZERO_SHOT_HUES`, cut-outs of the pictures of ``PICTURES["train"]``, LFW faces 0-69; backgrounds of
  ``BACKGROUNDS["train"]``;
- ``zeroshot``: the other families (glyphs, crosses, crescents; dot, plaid and ring fills; dot, plaid, wave and
  cell backgrounds), hues inside :data:`ZERO_SHOT_HUES` only, the other pictures and LFW faces 70-99.

Nothing of one part is ever drawn for the other: a model evaluated on ``zeroshot`` elements has seen neither their
shape family, nor their fill, nor their colour range, nor their source picture. Elements are deterministic by
``(split, seed)``: :func:`subject` and :func:`background` return :class:`e2v.synth.Element`-like records
(``name``, ``kind``, ``rgba uint8 [h, w, 4]``, ``phrase``).
"""

from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass

import cv2
import numpy as np
from skimage import data as skdata

from e2v.drawing import ellipse_alpha, resize_longest, to_rgb

SPLITS = ("train", "zeroshot")
SPRITE = 96  # longest side of an open-ended sprite, pixels (drawn at 2x, area-downsampled)
TEXTURE = 256  # side of an open-ended background texture, pixels
ZERO_SHOT_HUES = ((75.0, 110.0), (255.0, 290.0))  # degrees: yellow-green and violet hues are zero-shot only
SHAPES = {"train": ("polygon", "star", "blob", "ring", "union"), "zeroshot": ("glyph", "cross", "crescent")}
FILLS = {"train": ("flat", "gradient", "stripes", "checks", "noise", "picture"),
         "zeroshot": ("dots", "plaid", "rings", "picture")}
BACKGROUNDS = {"train": ("gradient", "stripes", "checks", "clouds", "picture"),
               "zeroshot": ("dots", "plaid", "waves", "cells", "picture")}
PICTURES = {
    "train": ("astronaut", "coffee", "rocket", "retina", "camera", "coins", "brick", "grass", "moon", "cell"),
    "zeroshot": ("chelsea", "stereo_motorcycle", "immunohistochemistry", "colorwheel", "clock", "gravel", "page",
                 "hubble_deep_field"),
}
FACES = {"train": range(0, 70), "zeroshot": range(70, 100)}  # indices into skimage's lfw_subset (faces 0-99)
GLYPHS = "AEFHKMNRSTWXYZ2345"
MIN_COVER = 0.25  # a silhouette covers at least this share of its bounding box (thinner draws are redrawn)
HERSHEY = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX)
HUE_NAMES = ((15, "red"), (40, "orange"), (65, "yellow"), (110, "lime"), (150, "green"), (180, "teal"),
             (200, "cyan"), (245, "blue"), (290, "violet"), (320, "purple"), (345, "pink"), (360, "red"))
# how often a subject is a filled silhouette, a picture cut-out or a face
SUBJECT_SOURCES = (("shape", 0.6), ("cutout", 0.2), ("face", 0.2))


@dataclass(frozen=True)
class OpenElement:
    """A drawn element: ``rgba uint8 [h, w, 4]`` (backgrounds opaque ``[S, S, 4]``), caption ``phrase``, unique
    ``name`` (``split:kind:seed``) and where it came from (``family``, ``fill``, ``source``) for tests and reports."""

    name: str
    kind: str
    rgba: np.ndarray
    phrase: str
    family: str
    fill: str
    source: str


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown element split {split!r}; expected one of {SPLITS}")


# ----------------------------------------------------------------------------------------------- colours


def in_zero_shot_hues(hue: float) -> bool:
    """Whether ``hue`` (degrees) lies in a zero-shot hue range."""
    return any(lo <= hue % 360 < hi for lo, hi in ZERO_SHOT_HUES)


def draw_hue(rng: np.random.Generator, split: str) -> float:
    """A hue in degrees from the split's ranges (uniform over their union)."""
    arcs = list(ZERO_SHOT_HUES)
    if split == "train":  # the complement of the zero-shot arcs
        edges = sorted(v for arc in ZERO_SHOT_HUES for v in arc)
        arcs = [(edges[1], edges[2]), (edges[3], edges[0] + 360.0)]
    lengths = np.array([hi - lo for lo, hi in arcs])
    lo, hi = arcs[rng.choice(len(arcs), p=lengths / lengths.sum())]
    return float(rng.uniform(lo, hi) % 360)


def draw_colour(rng: np.random.Generator, split: str, saturation=(0.45, 1.0), value=(0.35, 1.0)) -> tuple:
    """``(rgb float [3] in [0, 1], hue)``: a saturated colour of the split's hue ranges."""
    hue = draw_hue(rng, split)
    rgb = colorsys.hsv_to_rgb(hue / 360, rng.uniform(*saturation), rng.uniform(*value))
    return np.array(rgb, np.float32), hue


def hue_name(hue: float) -> str:
    return next(name for limit, name in HUE_NAMES if hue % 360 < limit)


# ----------------------------------------------------------------------------------------------- silhouettes


def _polygon_points(radii: np.ndarray, angles: np.ndarray, size: int) -> np.ndarray:
    c = size / 2
    return np.stack([c + radii * np.cos(angles), c + radii * np.sin(angles)], 1).round().astype(np.int32)


def silhouette(rng: np.random.Generator, family: str, size: int) -> np.ndarray:
    """A binary silhouette of ``family`` filling most of a ``size``-px square: float ``[size, size]`` in {0, 1}."""
    mask = np.zeros((size, size), np.float32)
    r = size * 0.47
    turn = rng.uniform(0, 2 * np.pi)
    if family == "polygon":
        corners = int(rng.integers(3, 8))
        angles = turn + np.sort(rng.uniform(0, 2 * np.pi, corners))
        cv2.fillPoly(mask, [_polygon_points(r * rng.uniform(0.5, 1.0, corners), angles, size)], 1.0)
    elif family == "star":
        points = int(rng.integers(4, 9))
        angles = turn + np.arange(2 * points) * np.pi / points
        radii = np.where(np.arange(2 * points) % 2, rng.uniform(0.35, 0.6), 1.0) * r
        cv2.fillPoly(mask, [_polygon_points(radii, angles, size)], 1.0)
    elif family == "blob":
        angles = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        radii = np.ones_like(angles)
        for k in (2, 3, 4, 5):
            radii += rng.uniform(0, 0.28 / (k - 1)) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
        cv2.fillPoly(mask, [_polygon_points(r * radii / radii.max(), angles, size)], 1.0)
    elif family == "ring":
        aspect = rng.uniform(0.65, 1.0)
        cv2.ellipse(mask, (size // 2, size // 2), (int(r), int(r * aspect)), np.degrees(turn), 0, 360, 1.0, -1)
        hole = r * rng.uniform(0.3, 0.5)
        offset = rng.uniform(-0.15, 0.15, 2) * r
        cv2.circle(mask, (int(size / 2 + offset[0]), int(size / 2 + offset[1] * aspect)), int(hole * aspect), 0.0, -1)
    elif family == "union":
        for _ in range(int(rng.integers(2, 4))):
            centre = (int(size / 2 + rng.uniform(-0.3, 0.3) * r), int(size / 2 + rng.uniform(-0.3, 0.3) * r))
            axes = (int(r * rng.uniform(0.3, 0.65)), int(r * rng.uniform(0.2, 0.5)))
            if rng.uniform() < 0.5:
                cv2.ellipse(mask, centre, axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
            else:
                box = ((centre[0], centre[1]), (2 * axes[0], 2 * axes[1]), rng.uniform(0, 180))
                cv2.fillPoly(mask, [cv2.boxPoints(box).round().astype(np.int32)], 1.0)
    elif family == "glyph":
        text = GLYPHS[rng.integers(len(GLYPHS))]
        font = HERSHEY[rng.integers(len(HERSHEY))]
        thickness = max(1, int(size * rng.uniform(0.06, 0.11)))
        (w, h), _ = cv2.getTextSize(text, font, 1.0, thickness)
        scale = 0.8 * size / max(w, h)
        (w, h), base = cv2.getTextSize(text, font, scale, thickness)
        cv2.putText(mask, text, ((size - w) // 2, (size + h) // 2), font, scale, 1.0, thickness, cv2.LINE_AA)
        mask = (mask > 0.5).astype(np.float32)
    elif family == "cross":
        arm = rng.uniform(0.22, 0.42) * r
        length = r * rng.uniform(0.8, 1.0)
        for angle in (turn, turn + np.pi / 2 * rng.uniform(0.7, 1.0)):
            box = ((size / 2, size / 2), (2 * length, 2 * arm), np.degrees(angle))
            cv2.fillPoly(mask, [cv2.boxPoints(box).round().astype(np.int32)], 1.0)
    elif family == "crescent":
        cv2.circle(mask, (size // 2, size // 2), int(r), 1.0, -1)
        shift = rng.uniform(0.35, 0.6) * r
        bite = (int(size / 2 + shift * np.cos(turn)), int(size / 2 + shift * np.sin(turn)))
        cv2.circle(mask, bite, int(r * rng.uniform(0.75, 0.95)), 0.0, -1)
    else:
        raise ValueError(f"unknown shape family {family!r}")
    return mask


# ----------------------------------------------------------------------------------------------- fills


@functools.cache
def picture(name: str) -> np.ndarray:
    """A bundled scikit-image picture as float ``[h, w, 3]`` in [0, 1] (grey pictures stay grey)."""
    image = getattr(skdata, name)()
    return to_rgb(image[0] if isinstance(image, tuple) else image)  # stereo_motorcycle: (left, right, disparity)


@functools.cache
def _faces() -> np.ndarray:
    return skdata.lfw_subset()[:100]


def picture_crop(rng: np.random.Generator, split: str, size: int, tint_grey: bool = True) -> tuple[np.ndarray, str]:
    """A random square crop of one of the split's pictures, ``size`` px: ``(rgb [size, size, 3], picture name)``;
    grey pictures are tinted with a colour of the split's hues."""
    name = PICTURES[split][rng.integers(len(PICTURES[split]))]
    image = picture(name)
    side = int(min(image.shape[:2]) * rng.uniform(0.35, 0.8))
    y, x = rng.integers(0, image.shape[0] - side + 1), rng.integers(0, image.shape[1] - side + 1)
    crop = cv2.resize(image[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)
    if tint_grey and np.ptp(crop, axis=2).max() < 1e-3:
        colour, _ = draw_colour(rng, split)
        crop = crop * (0.35 + 0.65 * colour)
    return crop, name


def pattern(rng: np.random.Generator, kind: str, size: int, periods: tuple[float, float]) -> np.ndarray:
    """A two-level pattern in [0, 1], float ``[size, size]``; ``periods`` (lo, hi) in pixels."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    u, v = x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)
    period = rng.uniform(*periods)
    if kind == "gradient":
        return np.clip(u / (size * 1.4) + 0.5 - (np.cos(theta) + np.sin(theta)) * 0.35, 0, 1)
    if kind == "stripes":
        return (np.sin(2 * np.pi * u / period) > rng.uniform(-0.4, 0.4)).astype(np.float32)
    if kind == "checks":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind in ("noise", "clouds"):
        noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), period / 3)
        return np.clip(noise / (3 * noise.std() + 1e-6) + 0.5, 0, 1)
    if kind == "dots":
        cu, cv_ = (u % period) - period / 2, (v % period) - period / 2
        return (np.hypot(cu, cv_) < period * rng.uniform(0.2, 0.38)).astype(np.float32)
    if kind == "plaid":
        a = np.sin(2 * np.pi * u / period) > 0.3
        b = np.sin(2 * np.pi * v / (period * rng.uniform(0.7, 1.4))) > 0.3
        return (0.5 * a + 0.5 * b).astype(np.float32)
    if kind == "rings":
        centre = rng.uniform(0.3, 0.7, 2) * size
        return (np.sin(2 * np.pi * np.hypot(x - centre[0], y - centre[1]) / period) > 0).astype(np.float32)
    if kind == "waves":
        bend = rng.uniform(0.5, 2.0) * period / (2 * np.pi)
        return (np.sin(2 * np.pi * (u + bend * np.sin(2 * np.pi * v / (2.5 * period))) / period) > 0).astype(np.float32)
    if kind == "cells":
        seeds = rng.uniform(0, size, (int(rng.integers(8, 20)), 2)).astype(np.float32)
        nearest = np.argmin((x[..., None] - seeds[:, 0]) ** 2 + (y[..., None] - seeds[:, 1]) ** 2, axis=2)
        return rng.uniform(0, 1, len(seeds)).astype(np.float32)[nearest]
    raise ValueError(f"unknown pattern {kind!r}")


def two_colour_fill(rng: np.random.Generator, split: str, kind: str, size: int, periods: tuple[float, float]):
    """``(rgb float [size, size, 3], phrase words)``: ``pattern`` blended between two colours of the split."""
    (a, hue), (b, _) = draw_colour(rng, split), draw_colour(rng, split)
    if kind == "flat":
        return np.broadcast_to(a, (size, size, 3)).copy(), hue_name(hue)
    level = pattern(rng, kind, size, periods)[..., None]
    adjective = {"gradient": "shaded", "stripes": "striped", "checks": "checked", "noise": "mottled",
                 "clouds": "cloudy", "dots": "dotted", "plaid": "plaid", "rings": "ringed", "waves": "wavy",
                 "cells": "patchy"}[kind]
    return a * (1 - level) + b * level, f"{hue_name(hue)} {adjective}"


# ----------------------------------------------------------------------------------------------- elements


def _rgba(rgb: np.ndarray, alpha: np.ndarray, longest: int) -> np.ndarray:
    rgba = np.concatenate([np.clip(rgb, 0, 1), np.clip(alpha, 0, 1)[..., None]], axis=2).astype(np.float32)
    ys, xs = np.nonzero(alpha > 0.02)
    if len(ys):  # crop to the content, so the pose's size is the element's size
        rgba = rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return resize_longest((rgba * 255).round().astype(np.uint8), longest)


@functools.lru_cache(maxsize=2048)
def subject(split: str, seed: int) -> OpenElement:
    """The subject element ``seed`` of ``split`` (deterministic)."""
    _check_split(split)
    rng = np.random.default_rng([seed, 7, SPLITS.index(split)])
    big = 2 * SPRITE
    sources, weights = zip(*SUBJECT_SOURCES)
    source = sources[rng.choice(len(sources), p=weights)]
    if source == "face":
        faces = FACES[split]
        index = int(faces[rng.integers(len(faces))])
        grey = cv2.resize(_faces()[index].astype(np.float32), (big, big), interpolation=cv2.INTER_CUBIC)
        colour, hue = draw_colour(rng, split, saturation=(0.3, 0.7), value=(0.8, 1.0))
        rgb = np.clip(grey, 0, 1)[..., None] * colour
        alpha = ellipse_alpha(big, int(big * 0.8))
        rgb = cv2.resize(rgb, (alpha.shape[1], alpha.shape[0]))
        return OpenElement(f"{split}:face:{seed}", "face", _rgba(rgb, alpha, SPRITE), f"a {hue_name(hue)}-toned face",
                           "face", "picture", f"lfw_{index}")
    family = SHAPES[split][rng.integers(len(SHAPES[split]))]
    mask = silhouette(rng, family, big)
    for _ in range(20):  # no slivers: a subject fills a fair share of its bounding box
        ys, xs = np.nonzero(mask)
        if len(ys) and mask.sum() >= MIN_COVER * (np.ptp(ys) + 1) * (np.ptp(xs) + 1) and np.ptp(ys) > big / 4:
            break
        mask = silhouette(rng, family, big)
    alpha = cv2.GaussianBlur(mask, (0, 0), 1.0)
    if source == "cutout":
        rgb, name = picture_crop(rng, split, big)
        fill, words, kind = "picture", f"{name.replace('_', ' ')} cut-out", "object"
    else:
        fills = [f for f in FILLS[split] if f != "picture"]
        fill = fills[rng.integers(len(fills))]
        rgb, words = two_colour_fill(rng, split, fill, big, (big / 6, big / 3))
        name, kind = "procedural", "object"
    shade = np.linspace(1.1, 0.8, big, dtype=np.float32)[:, None, None]
    return OpenElement(f"{split}:{kind}:{seed}", kind, _rgba(rgb * shade, alpha, SPRITE), f"a {words} {family}",
                       family, fill, name)


@functools.lru_cache(maxsize=512)
def background(split: str, seed: int) -> OpenElement:
    """The background ``seed`` of ``split``: an opaque ``[TEXTURE, TEXTURE, 4]`` texture (deterministic)."""
    _check_split(split)
    rng = np.random.default_rng([seed, 11, SPLITS.index(split)])
    family = BACKGROUNDS[split][rng.integers(len(BACKGROUNDS[split]))]
    # a frame shows ~0.3 of the texture: periods of 1/12-1/5 of the texture are 2.5-5 bands across a frame
    if family == "picture":
        rgb, source = picture_crop(rng, split, TEXTURE)
        words = f"{source.replace('_', ' ')} picture"
    else:
        rgb, adjective = two_colour_fill(rng, split, family, TEXTURE, (TEXTURE / 12, TEXTURE / 5))
        rgb = rgb * (1 + 0.08 * (pattern(rng, "noise", TEXTURE, (TEXTURE / 8, TEXTURE / 4)) - 0.5))[..., None]
        source, words = "procedural", f"{adjective} wall"
    rgba = np.concatenate([np.clip(rgb, 0, 1), np.ones((TEXTURE, TEXTURE, 1), np.float32)], axis=2)
    rgba = (rgba * 255).round().astype(np.uint8)
    rgba.setflags(write=False)
    return OpenElement(f"{split}:background:{seed}", "background", rgba, f"a {words}", family,
                       family if family != "picture" else "picture", source)


def zero_shot_description() -> dict:
    """What the zero-shot part of the space holds that training never draws (written to ``world.json``)."""
    return {"hues_degrees": [list(arc) for arc in ZERO_SHOT_HUES], "shapes": list(SHAPES["zeroshot"]),
            "fills": list(FILLS["zeroshot"]), "backgrounds": list(BACKGROUNDS["zeroshot"]),
            "pictures": list(PICTURES["zeroshot"]), "faces": [FACES["zeroshot"].start, FACES["zeroshot"].stop]}
