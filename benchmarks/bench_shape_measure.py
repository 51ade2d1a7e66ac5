"""Calibrate ``shape_match`` (issue 23, item 2(d)) on constructed clips with known answers, and time it.

Clips are rendered the way the synthetic world renders them (``e2v.drawing.draw`` / ``prescaled`` / ``Pose``):
1-3 subjects in left-to-right slots drifting one way over a still textured background; each subject reference
shows the subject on white, mirrored, up to 20 degrees tilted and 1-2x bigger. Sprites are drawn from sprite
*families* (silhouette x fill x background); the measure was designed on the ``design`` families only and is
calibrated on the ``heldout`` families, which share none of them. For every family set it prints the mean score
of: the truth with its own references and with another clip's (swapped), a blurred truth (sigma 1.5 px: keeps
colour, loses shape), the truth with every subject replaced by an ellipse of its mean colour (same place and size),
and a flat mean-colour video; then each video's own-minus-swapped margin and the recommended margin threshold.

    python benchmarks/bench_shape_measure.py --clips 48
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch
from skimage import data as skdata

from e2v.bench.pixel_metrics import flat_video, shape_match
from e2v.drawing import Pose, draw, prescaled

SPRITE = 160  # sprite canvas side, px
FAMILIES = {
    "design": {"shape": ("polygon", "star", "ring"), "fill": ("flat", "gradient", "stripes"),
               "background": ("noise", "ramp")},
    "heldout": {"shape": ("glyph", "union", "horse"), "fill": ("checks", "dots", "photo"),
                "background": ("texture", "picture")},
}
GLYPHS = "AEFGHKLMNPRSTWXYZ2345&#%"
PHOTOS = ("astronaut", "coffee", "chelsea", "immunohistochemistry", "colorwheel", "retina")
TEXTURES = ("brick", "grass", "gravel", "moon")
BLUR = 1.5  # px: the blurred-truth control
THRESHOLD_SHARE = 0.5  # recommended threshold = this share of the truth's own-minus-swapped margin


# ----------------------------------------------------------------------------------------------- sprite families


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.05, 0.95, 3).astype(np.float32)


def _polygon(points: np.ndarray) -> np.ndarray:
    mask = np.zeros((SPRITE * 4, SPRITE * 4), np.uint8)
    cv2.fillPoly(mask, [np.round(points * SPRITE * 2 + SPRITE * 2).astype(np.int32)], 255)
    return mask


def silhouette(family: str, rng: np.random.Generator) -> np.ndarray:
    """A random silhouette of ``family``: float alpha ``[SPRITE, SPRITE]`` in [0, 1] (drawn at 4x, area-shrunk)."""
    turn = rng.uniform(0, 2 * np.pi)
    if family in ("polygon", "star"):
        corners = int(rng.integers(3, 8)) if family == "polygon" else 2 * int(rng.integers(4, 8))
        angles = turn + np.sort(rng.uniform(0, 2 * np.pi, corners)) if family == "polygon" else \
            turn + np.arange(corners) * 2 * np.pi / corners
        radii = rng.uniform(0.55, 0.95, corners) if family == "polygon" else \
            np.where(np.arange(corners) % 2, rng.uniform(0.3, 0.55), 0.95)
        mask = _polygon(np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1))
    elif family == "ring":
        mask = np.zeros((SPRITE * 4, SPRITE * 4), np.uint8)
        c, r = SPRITE * 2, int(SPRITE * 1.9)
        axes = (r, int(r * rng.uniform(0.6, 1.0)))
        cv2.ellipse(mask, (c, c), axes, np.degrees(turn), 0, 360, 255, -1)
        hole = rng.uniform(0.4, 0.65)
        cv2.ellipse(mask, (c, c), (int(axes[0] * hole), int(axes[1] * hole)), np.degrees(turn), 0, 360, 0, -1)
    elif family == "glyph":
        mask = np.zeros((SPRITE * 4, SPRITE * 4), np.uint8)
        glyph = GLYPHS[rng.integers(len(GLYPHS))]
        font = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX)[rng.integers(3)]
        thickness = int(rng.integers(40, 70))
        (w, h), _ = cv2.getTextSize(glyph, font, 14, thickness)
        cv2.putText(mask, glyph, ((SPRITE * 4 - w) // 2, (SPRITE * 4 + h) // 2), font, 14, 255, thickness)
    elif family == "union":  # 2-4 ellipses and bars, maybe with a hole punched through
        mask = np.zeros((SPRITE * 4, SPRITE * 4), np.uint8)
        for _ in range(int(rng.integers(2, 5))):
            centre = tuple(int(v) for v in rng.uniform(SPRITE * 1.3, SPRITE * 2.7, 2))
            axes = tuple(int(v) for v in rng.uniform(SPRITE * 0.25, SPRITE * 1.1, 2))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        if rng.uniform() < 0.5:
            ys, xs = np.nonzero(mask)
            k = rng.integers(len(ys))
            cv2.circle(mask, (int(xs[k]), int(ys[k])), int(SPRITE * rng.uniform(0.25, 0.45)), 0, -1)
    elif family == "horse":  # the skimage horse, randomly cropped to part of its body or whole
        body = (~skdata.horse()).astype(np.uint8) * 255
        h, w = body.shape
        y0, x0 = rng.integers(0, h // 4), rng.integers(0, w // 4)
        crop = body[y0:y0 + int(h * rng.uniform(0.75, 1)), x0:x0 + int(w * rng.uniform(0.75, 1))]
        side = max(crop.shape)
        mask = np.zeros((side, side), np.uint8)
        mask[(side - crop.shape[0]) // 2:][:crop.shape[0], (side - crop.shape[1]) // 2:][:, :crop.shape[1]] = crop
    else:
        raise ValueError(f"unknown shape family {family!r}")
    return cv2.resize(mask, (SPRITE, SPRITE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def _photo(name: str) -> np.ndarray:
    image = getattr(skdata, name)().astype(np.float32) / 255
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def pattern(family: str, rng: np.random.Generator, side: int) -> np.ndarray:
    """A random fill or background of ``family``: float32 ``[side, side, 3]`` in [0, 1]."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    a, b = _colour(rng), _colour(rng)
    turn = rng.uniform(0, 2 * np.pi)
    along = x * np.cos(turn) + y * np.sin(turn)
    if family == "flat":
        mix = (0.15 * (y - 0.5))  # the world's shading: lighter on top
        return np.clip(a * (1 - mix[..., None]), 0, 1)
    if family in ("gradient", "ramp"):
        weight = (along - along.min()) / (np.ptp(along) + 1e-6)
    elif family == "stripes":
        weight = (np.sin(along * 2 * np.pi * rng.uniform(2, 5)) > 0).astype(np.float32)
    elif family == "checks":
        n = rng.uniform(3, 6)
        weight = ((np.floor(x * n) + np.floor(y * n)) % 2).astype(np.float32)
    elif family == "dots":
        n = rng.uniform(4, 7)
        weight = (((x * n) % 1 - 0.5) ** 2 + ((y * n) % 1 - 0.5) ** 2 < 0.08).astype(np.float32)
    elif family == "noise":
        noise = cv2.GaussianBlur(rng.normal(size=(side, side)).astype(np.float32), (0, 0), side / 12)
        weight = (noise - noise.min()) / (np.ptp(noise) + 1e-6)
    elif family in ("photo", "picture"):
        image = _photo(PHOTOS[rng.integers(len(PHOTOS))])
        crop = int(min(image.shape[:2]) * rng.uniform(0.3, 0.8))
        y0, x0 = (rng.integers(0, s - crop + 1) for s in image.shape[:2])
        return cv2.resize(image[y0:y0 + crop, x0:x0 + crop], (side, side), interpolation=cv2.INTER_AREA)
    elif family == "texture":
        grey = getattr(skdata, TEXTURES[rng.integers(len(TEXTURES))])().astype(np.float32) / 255
        crop = int(min(grey.shape) * rng.uniform(0.2, 0.5))
        y0, x0 = (rng.integers(0, s - crop + 1) for s in grey.shape)
        weight = cv2.resize(grey[y0:y0 + crop, x0:x0 + crop], (side, side), interpolation=cv2.INTER_AREA)
    else:
        raise ValueError(f"unknown fill family {family!r}")
    return a * (1 - weight[..., None]) + b * weight[..., None]


def sprite(families: dict, rng: np.random.Generator) -> np.ndarray:
    """A random subject ``uint8 [h, w, 4]`` cropped to its silhouette: a shape family filled by a fill family."""
    alpha = silhouette(families["shape"][rng.integers(len(families["shape"]))], rng)
    rgb = pattern(families["fill"][rng.integers(len(families["fill"]))], rng, SPRITE)
    ys, xs = np.nonzero(alpha > 0.02)
    rgba = np.concatenate([rgb, alpha[..., None]], axis=2)[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return (np.clip(rgba, 0, 1) * 255).round().astype(np.uint8)


def blob_of(rgba: np.ndarray) -> np.ndarray:
    """The same-colour control: the soft ellipse with ``rgba``'s silhouette's centre, area and second moments
    (its best-fitting ellipse), in the silhouette's alpha-weighted mean colour; same canvas as ``rgba``."""
    h, w = rgba.shape[:2]
    alpha = rgba[..., 3].astype(np.float32) / 255
    mean = (rgba[..., :3].astype(np.float32) * alpha[..., None]).sum(axis=(0, 1)) / alpha.sum()
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    centre = np.array([(x * alpha).sum(), (y * alpha).sum()]) / alpha.sum()
    offsets = np.stack([x - centre[0], y - centre[1]], axis=-1)
    covariance = np.einsum("hwi,hwj,hw->ij", offsets, offsets, alpha) / alpha.sum()
    # A uniform ellipse {d : d^T C^-1 d <= 4} has covariance C: the distance below is 1 on its outline.
    radius = np.sqrt(np.einsum("hwi,ij,hwj->hw", offsets, np.linalg.inv(covariance), offsets) / 4)
    ellipse = np.clip((1 - radius) / 0.08, 0, 1)[..., None] * 255
    return np.concatenate([np.broadcast_to(mean, (h, w, 3)), ellipse], axis=2).round().astype(np.uint8)


# ----------------------------------------------------------------------------------------------- clips


def _signed(frames: np.ndarray) -> torch.Tensor:
    """float [F, H, W, 3] in [0, 1] -> quantised like a decoded clip, ``[3, F, H, W]`` in [-1, 1]."""
    quantised = np.clip(frames * 255 + 0.5, 0, 255).astype(np.uint8).astype(np.float32) / 255
    return torch.from_numpy(quantised).permute(3, 0, 1, 2) * 2 - 1


def make_clip(families: dict, seed: int, frames: int = 8, side: int = 32) -> dict:
    """One constructed clip: ``truth``, ``blob`` (subjects as mean-colour ellipses) and ``blur`` videos
    ``[3, F, H, W]`` and the subject references ``refs [N, 3, H, W]``, all in [-1, 1]."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 4))
    background = pattern(families["background"][rng.integers(len(families["background"]))], rng, side)
    sprites = [sprite(families, rng) for _ in range(count)]
    direction = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)][rng.integers(4)], np.float32) * 0.2
    poses, refs = [], []
    for slot, rgba in enumerate(sprites):
        size, angle, flip = rng.uniform(0.32, 0.5), rng.uniform(-10, 10), bool(rng.integers(2))
        x, y = (slot + 1) / (count + 1) + rng.uniform(-0.03, 0.03), rng.uniform(0.45, 0.55)
        poses.append((Pose(x - direction[0] / 2, y - direction[1] / 2, size, angle, flip), direction))
        # The reference, mirrored back, is tilted by up to 20 degrees against the clip and 1-2x bigger.
        ref_size = min(0.9, size * rng.uniform(1.0, 2.0))
        ref_pose = Pose(rng.uniform(0.45, 0.55), rng.uniform(0.45, 0.55), ref_size,
                        rng.uniform(-20, 20) - angle, not flip)
        canvas = np.ones((side, side, 3), np.float32)
        draw(canvas, prescaled(rgba, ref_size * side), ref_pose)
        refs.append(canvas)
    videos = {}
    for kind, drawn in (("truth", sprites), ("blob", [blob_of(s) for s in sprites])):
        small = [prescaled(s, pose.size * side) for s, (pose, _) in zip(drawn, poses)]
        video = np.empty((frames, side, side, 3), np.float32)
        for f in range(frames):
            t = f / (frames - 1)
            video[f] = background
            for s, (pose, (dx, dy)) in zip(small, poses):
                draw(video[f], s, Pose(pose.x + dx * t, pose.y + dy * t, pose.size, pose.angle, pose.flip))
        videos[kind] = video
    blurred = np.stack([cv2.GaussianBlur(frame, (0, 0), BLUR) for frame in videos["truth"]])
    return {"truth": _signed(videos["truth"]), "blob": _signed(videos["blob"]), "blur": _signed(blurred),
            "refs": _signed(np.stack(refs)).permute(1, 0, 2, 3)}


# ----------------------------------------------------------------------------------------------- calibration


def calibrate(families: dict, clips: int, seed: int) -> tuple[dict, float, float]:
    """Mean scores (own and swapped references) of each control video over ``clips`` clips; wall and CPU seconds
    per ``shape_match`` call (CPU time is what a loaded, shared machine does not inflate)."""
    items = [make_clip(families, seed + i) for i in range(clips)]
    items = [dict(item, flat=flat_video(item["truth"])) for item in items]
    scores = {f"{kind} {refs}": [] for kind in ("truth", "blur", "blob", "flat") for refs in ("own", "swapped")}
    wall = cpu = 0.0
    for i, item in enumerate(items):
        other = items[(i + 1) % len(items)]["refs"]
        for kind in ("truth", "blur", "blob", "flat"):
            for refs_name, refs in (("own", item["refs"]), ("swapped", other)):
                start, start_cpu = time.perf_counter(), time.process_time()
                scores[f"{kind} {refs_name}"].append(shape_match(item[kind], refs))
                wall, cpu = wall + time.perf_counter() - start, cpu + time.process_time() - start_cpu
    return {k: float(np.mean(v)) for k, v in scores.items()}, wall / (clips * 8), cpu / (clips * 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=48, help="clips per family set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", nargs="+", default=["design", "heldout"], choices=sorted(FAMILIES))
    args = parser.parse_args()

    margins = {}
    for name in args.families:
        means, wall, cpu = calibrate(FAMILIES[name], args.clips, args.seed)
        print(f"\n{name} families ({args.clips} clips, 8 frames, 32 px, 1-3 subjects): one shape_match call "
              f"{wall * 1e3:.0f} ms wall, {cpu * 1e3:.0f} ms CPU")
        print(f"  {'video':<8}{'own refs':>10}{'swapped':>10}{'margin':>10}")
        for kind in ("truth", "blur", "blob", "flat"):
            own, swapped = means[f"{kind} own"], means[f"{kind} swapped"]
            margins[name, kind] = own - swapped
            print(f"  {kind:<8}{own:>10.3f}{swapped:>10.3f}{own - swapped:>+10.3f}")
        print(f"  own truth - swapped truth = {means['truth own'] - means['truth swapped']:+.3f}; own truth - own "
              f"blob = {means['truth own'] - means['blob own']:+.3f}; own truth - own blur = "
              f"{means['truth own'] - means['blur own']:+.3f}")
    name = "heldout" if "heldout" in args.families else args.families[0]
    threshold = THRESHOLD_SHARE * margins[name, "truth"]
    print(f"\nrecommended (d) threshold (from the {name} families): own-minus-swapped shape_match margin >= "
          f"{threshold:.3f} ({THRESHOLD_SHARE:.0%} of the truth's {margins[name, 'truth']:+.3f}); "
          f"blurred truth {margins[name, 'blur']:+.3f}, blobs {margins[name, 'blob']:+.3f}, "
          f"flat {margins[name, 'flat']:+.3f}: "
          + ("all controls fail it" if max(margins[name, k] for k in ("blur", "blob", "flat")) < threshold
             else "A CONTROL PASSES IT"))


if __name__ == "__main__":
    main()
