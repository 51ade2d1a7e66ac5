"""Pixel metrics of a generated video against its ground-truth clip and references (synthetic worlds).

Videos are ``[3, F, H, W]`` in [-1, 1]; references ``[N, 3, H, W]`` in [-1, 1]. The subject measure ignores
positions: a model is never told where a subject is, so only *which colours move* can judge whether the
referenced subjects appear; the shape measure (:func:`shape_match`) searches every position for each reference's
outline and inner edges, so it sees silhouettes, not colours.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

FOREGROUND_DISTANCE = 0.15  # in [0, 1] colour units: farther than this from the temporal median = moving
WHITE = 0.94  # in [0, 1]: reference pixels with every channel above this are the white canvas
HISTOGRAM_BINS = 8  # per channel (a joint 8 x 8 x 8 histogram)


def psnr(video: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of ``video`` against ``truth`` (both ``[3, F, H, W]`` in [-1, 1], peak-to-peak 2); with ``mask``
    (``bool [F, H, W]``) over the pixels where it is true only (NaN when it is empty). Identical videos: ``inf``."""
    if video.shape != truth.shape:
        raise ValueError(f"video {tuple(video.shape)} and truth {tuple(truth.shape)} differ in shape")
    error = (video.float() - truth.float()).pow(2)
    if mask is not None:
        if not mask.any():
            return float("nan")
        error = error[:, mask]
    mse = error.mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def flat_video(truth: torch.Tensor) -> torch.Tensor:
    """The honest do-nothing baseline: every pixel of every frame is the clip's mean colour. ``[3, F, H, W]``."""
    return truth.float().mean(dim=(1, 2, 3), keepdim=True).expand_as(truth)


def moving_foreground(video: torch.Tensor, distance: float = FOREGROUND_DISTANCE,
                      plate: torch.Tensor | None = None) -> torch.Tensor:
    """``bool [F, H, W]``: pixels whose colour is more than ``distance`` (max over channels, [0, 1] units) away
    from the background: the clean ``plate`` ``[3, H, W]`` (in [-1, 1]) when one is known, else the video's own
    temporal median at that position.

    The median sees only what a subject uncovers: one drifting less than its own width (the tiny world's subjects
    move 3 px in a clip) keeps its inside at the median, so only its leading and trailing rims, half background,
    count. Against the plate the whole subject counts, still or moving."""
    unit = (video.float() + 1) / 2
    if plate is not None:
        background = ((plate.float() + 1) / 2)[:, None]
    else:
        background = unit.median(dim=1, keepdim=True).values
    return (unit - background).abs().amax(dim=0) > distance


def is_plate_of(video: torch.Tensor, plate: torch.Tensor, distance: float = FOREGROUND_DISTANCE) -> bool:
    """Whether ``plate`` ``[3, H, W]`` is the clean background of ``video`` ``[3, F, H, W]`` (both in [-1, 1]): at
    least half of the video's median frame within ``distance`` of it. A background reference of another view or
    framing is not, and measuring a foreground against it would take the whole picture."""
    median = (video.float().median(dim=1).values + 1) / 2
    return bool(((median - (plate.float() + 1) / 2).abs().amax(dim=0) <= distance).float().mean() >= 0.5)


def colour_histogram(pixels: torch.Tensor, bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """Normalised joint colour histogram ``[bins**3]`` of ``pixels [n, 3]`` in [0, 1] (zeros when n = 0)."""
    index = (pixels.float().clamp(0, 1) * bins).long().clamp_max(bins - 1)
    flat = (index[:, 0] * bins + index[:, 1]) * bins + index[:, 2]
    counts = torch.bincount(flat, minlength=bins**3).float()
    return counts / counts.sum().clamp_min(1)


def subject_pixels(refs: torch.Tensor, white: float = WHITE) -> torch.Tensor:
    """The non-white pixels ``[n, 3]`` in [0, 1] of subject references ``[N, 3, H, W]`` (the subjects themselves)."""
    unit = (refs.float() + 1) / 2
    pixels = unit.permute(0, 2, 3, 1).reshape(-1, 3)
    return pixels[(pixels <= white).any(dim=1)]


def subject_match(video: torch.Tensor, subject_refs: torch.Tensor, plate: torch.Tensor | None = None) -> float:
    """Histogram intersection (0..1) between the colours of ``video``'s foreground (:func:`moving_foreground`,
    against ``plate`` ``[3, H, W]`` when the clean background is known) and the subject references' non-white
    pixels; 0 when there is no foreground.

    With the plate the truth clips score far above another clip's subjects drawn perfectly: the open world's
    zero-shot clips (main-job world, seeds 0 / 1 / 2) truth - donor truth +0.237 / +0.254 / +0.226, held-out
    +0.355 / +0.382 / +0.406; against the temporal median, zero-shot +0.103 on seed 0 (its 0.10 margin was out of
    reach of the truth itself)."""
    mask = moving_foreground(video, plate=plate)
    if not mask.any():
        return 0.0
    moving = ((video.float() + 1) / 2).permute(1, 2, 3, 0)[mask]  # [n, 3]
    return torch.minimum(colour_histogram(moving), colour_histogram(subject_pixels(subject_refs))).sum().item()


def subject_travel(video: torch.Tensor, plate: torch.Tensor, distance: float = FOREGROUND_DISTANCE) -> torch.Tensor:
    """``[2]`` (x, y) pixels: how far the subjects of ``video`` ``[3, F, H, W]`` move from its first frame to its last,
    as the shift of the centroid of the pixels more than ``distance`` (max over channels, [0, 1] units) from the
    background ``plate`` ``[3, H, W]`` (both in [-1, 1]), each weighted by how far it is. NaN when either frame
    has no such pixel. The caption names where subjects drift; a model unsure of it draws them still."""
    ends = video.float()[:, [0, -1]]  # [3, 2, H, W]: the first and the last frame
    gap = (ends - plate.float()[:, None]).abs().amax(dim=0) / 2  # [2, H, W], [0, 1] units
    weight = torch.where(gap > distance, gap, torch.zeros_like(gap))
    total = weight.sum(dim=(1, 2))
    if not bool((total > 0).all()):
        return torch.full((2,), float("nan"))
    ys, xs = torch.meshgrid(torch.arange(gap.shape[1], dtype=gap.dtype), torch.arange(gap.shape[2], dtype=gap.dtype),
                            indexing="ij")
    centre = torch.stack([(weight * xs).sum(dim=(1, 2)), (weight * ys).sum(dim=(1, 2))], dim=1) / total[:, None]
    return centre[1] - centre[0]


# ----------------------------------------------------------------------------------------------- shape

SHAPE_SIZES = (0.3, 0.36, 0.43, 0.52)  # template longest side searched, fractions of the frame's shorter side
SHAPE_ANGLES = (-30.0, -15.0, 0.0, 15.0, 30.0)  # template tilts searched, degrees (both mirror images are searched)
SHAPE_OVERHANG = 1 / 3  # share of a template's side that may hang over the frame's border
SHAPE_FLOOR = 0.06  # gradient ([0, 1] colour units per px) below which an edge counts as faint (contrast ~0.12)
CHROMA_WEIGHT = 0.5  # weight of the two colour-opponent channels against luminance


def orientation_field(rgb: np.ndarray) -> np.ndarray:
    """Edge orientation of ``rgb`` (``float32 [h, w, 3]`` in [0, 1]) as the doubled-angle structure tensor
    ``[h, w, 2]`` = (Jxx - Jyy, 2 Jxy) / sqrt(Jxx + Jyy + SHAPE_FLOOR^2), from central differences of luminance
    and (at ``CHROMA_WEIGHT``) the red-green and yellow-blue opponent channels, J summed over the three.

    Doubling the angle makes an edge look the same whichever side is brighter (a subject is darker than the white
    reference canvas but may be lighter than a clip's background); the opponent channels see edges between colours
    of equal brightness. The magnitude grows like the edge's contrast and sharpness (faint or blurred edges, below
    ``SHAPE_FLOOR``, fade quadratically); a flat fill gives zero: the field carries silhouettes and inner edges,
    never the colours themselves."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    channels = np.stack([(r + g + b) / 3, CHROMA_WEIGHT * (r - g) / 2, CHROMA_WEIGHT * ((r + g) / 2 - b) / 2], 2)
    gx = cv2.Sobel(channels, cv2.CV_32F, 1, 0, ksize=1, borderType=cv2.BORDER_REPLICATE) / 2
    gy = cv2.Sobel(channels, cv2.CV_32F, 0, 1, ksize=1, borderType=cv2.BORDER_REPLICATE) / 2
    jxx, jyy, jxy = ((u * v).sum(axis=2) for u, v in ((gx, gx), (gy, gy), (gx, gy)))
    field = np.stack([jxx - jyy, 2 * jxy], axis=2)
    return (field / np.sqrt(jxx + jyy + SHAPE_FLOOR**2)[..., None]).astype(np.float32)


def _silhouette_box(unit: np.ndarray, white: float = WHITE) -> tuple[int, int, int, int]:
    """Bounding box (y0, y1, x0, x1) of the non-white pixels of a reference ``[h, w, 3]`` in [0, 1]."""
    ys, xs = np.nonzero((unit <= white).any(axis=2))
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


def shape_templates(ref: np.ndarray, frame_side: int, sizes=SHAPE_SIZES, angles=SHAPE_ANGLES) -> list:
    """Orientation templates of one subject reference (``float32 [h, w, 3]`` in [0, 1], subject on white): for
    every size (fraction of ``frame_side``), tilt and mirror image, ``(field [th, tw, 2], mask [th, tw])`` where
    ``field`` is zero outside ``mask``, the silhouette grown by one pixel (its outline, not its surroundings)."""
    y0, y1, x0, x1 = _silhouette_box(ref)
    longest = max(y1 - y0, x1 - x0)
    margin = longest // 2 + 2  # room to turn without cutting corners
    crop = cv2.copyMakeBorder(ref[y0:y1, x0:x1], margin, margin, margin, margin, cv2.BORDER_CONSTANT,
                              value=(1.0, 1.0, 1.0))
    templates = []
    for size in sizes:
        scale = size * frame_side / longest
        shape = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        small = cv2.resize(crop, shape, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        centre = ((small.shape[1] - 1) / 2, (small.shape[0] - 1) / 2)
        for angle in angles:
            matrix = cv2.getRotationMatrix2D(centre, angle, 1.0)
            turned = cv2.warpAffine(small, matrix, shape, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                    borderValue=(1.0, 1.0, 1.0))
            for image in (turned, np.ascontiguousarray(turned[:, ::-1])):
                inside = (image <= WHITE).any(axis=2).astype(np.uint8)
                if not inside.any():
                    continue
                mask = cv2.dilate(inside, np.ones((3, 3), np.uint8)).astype(np.float32)
                ys, xs = np.nonzero(mask)
                box = np.s_[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
                field = orientation_field(image) * mask[..., None]
                templates.append((np.ascontiguousarray(field[box]), np.ascontiguousarray(mask[box])))
    return templates


def _stacked_fields(video: np.ndarray, pad: int) -> np.ndarray:
    """Orientation fields of frames ``[F, H, W, 3]``, each zero-padded by ``pad`` px, stacked along height:
    ``[F * (H + 2 pad), W + 2 pad, 2]``."""
    fields = [cv2.copyMakeBorder(orientation_field(frame), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
              for frame in video]
    return np.concatenate(fields, axis=0)


def shape_match(video: torch.Tensor, subject_refs: torch.Tensor) -> float:
    """Position-free shape similarity (about -1..1, 0 for a flat video) of ``video`` ``[3, F, H, W]`` to subject
    references ``[N, 3, h, w]`` (both in [-1, 1], subjects on a white canvas).

    For each reference and frame: the best normalised cross-correlation of the reference's edge-orientation
    template (:func:`shape_templates`: 4 sizes, 5 tilts, mirrored or not) with the frame's orientation field,
    over all positions (the template may hang a third over the border), inside the template's silhouette mask;
    averaged over frames, then over references. Colour only enters through where edges are, so a blob of the
    subject's colour or a blurred copy of the clip scores well below the clip itself."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be [3, F, H, W], got {tuple(video.shape)}")
    if subject_refs.ndim != 4 or subject_refs.shape[1] != 3 or len(subject_refs) == 0:
        raise ValueError(f"subject_refs must be [N >= 1, 3, H, W], got {tuple(subject_refs.shape)}")
    refs = ((subject_refs.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).contiguous().numpy()
    for index, ref in enumerate(refs):
        if not (ref <= WHITE).any():
            raise ValueError(f"subject reference {index} is blank (every pixel white): no silhouette to match")
    frames, height, width = video.shape[1:]
    unit = ((video.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).contiguous().numpy()
    side = min(height, width)
    pad = math.ceil(max(SHAPE_SIZES) * side * SHAPE_OVERHANG * 1.5)  # a turned template's box is up to 1.5x longer
    stacked = _stacked_fields(unit, pad)
    energy = (stacked**2).sum(axis=2)
    block = height + 2 * pad
    scores = []
    for ref in refs:
        best = np.full(frames, -np.inf)
        for field, mask in shape_templates(ref, side):
            th, tw = mask.shape
            numerator = cv2.matchTemplate(stacked, field, cv2.TM_CCORR)
            patch = cv2.matchTemplate(energy, mask, cv2.TM_CCORR)  # the mask is 0/1: its square is itself
            floor = SHAPE_FLOOR**2 * mask.sum()
            ncc = numerator / np.sqrt(float((field**2).sum()) + 1e-12) / np.sqrt(np.maximum(patch, 0) + floor)
            for f in range(frames):  # positions whose template lies inside frame f's padded block
                rows = ncc[f * block: f * block + block - th + 1]
                if rows.size:
                    best[f] = max(best[f], float(rows.max()))
        scores.append(float(np.mean(np.where(np.isfinite(best), best, 0.0))))
    return float(np.mean(scores))
