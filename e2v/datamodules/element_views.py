"""Pairs of augmented views of the synthetic world's elements, for contrastive reference-encoder training.

Each sample is one element (a subject sprite or a background) rendered twice with independent augmentations:
subjects get a random crop of the sprite, flip, rotation, colour jitter, scale and position on a white square
canvas (the image encoder's white-padded input, ``image_size`` px); backgrounds get a random square crop, flip and
colour jitter. Elements are split by identity: held-out elements never appear in training, and the validation set
(held-out elements only, fixed seeds) measures retrieval of unseen identities.

Batch: ``{"views": [B, 2, 3, S, S] float in [-1, 1], "label": [B] long element id, "name": list[str],
"kind": list[str]}``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import cv2
import lightning as L
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader, Dataset

from e2v.datamodules.references import BACKGROUND_KINDS


@dataclass(frozen=True)
class ElementImage:
    """One element identity: ``rgba [4, H, W]`` float in [0, 1] (backgrounds are opaque)."""

    name: str
    kind: str
    rgba: torch.Tensor


def to_rgba(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``uint8 [H, W, 3 or 4]`` -> float ``[4, H, W]`` in [0, 1] (opaque alpha added to RGB)."""
    pixels = torch.from_numpy(np.array(image))  # a copy: library arrays are read-only
    if pixels.ndim != 3 or pixels.shape[-1] not in (3, 4) or pixels.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3|4] image, got {pixels.dtype} {tuple(pixels.shape)}")
    rgba = pixels.permute(2, 0, 1).float() / 255
    return rgba if rgba.shape[0] == 4 else torch.cat([rgba, torch.ones_like(rgba[:1])])


def synthetic_elements(include_backgrounds: bool = True) -> list[ElementImage]:
    """The synthetic world's element library (and its backgrounds), sorted by name."""
    from e2v import synth

    library = synth.element_library() + (synth.background_library() if include_backgrounds else [])
    return sorted((ElementImage(e.name, e.kind, to_rgba(e.rgba)) for e in library), key=lambda item: item.name)


def open_world_elements(split: str, subjects: int, backgrounds: int) -> list[ElementImage]:
    """``subjects`` + ``backgrounds`` elements of one part of the open-ended element space (:mod:`e2v.open_elements`,
    ``split`` ``train`` or ``zeroshot``), seeds 0, 1, ...: the identities the open synthetic world draws from."""
    from e2v import open_elements

    drawn = [open_elements.subject(split, i) for i in range(subjects)]
    drawn += [open_elements.background(split, i) for i in range(backgrounds)]
    return [ElementImage(e.name, e.kind, to_rgba(e.rgba)) for e in drawn]


def procedural_element(index: int, size: int = 64) -> ElementImage:
    """A seeded random identity for extra training: a star-shaped polygon filled with a two-colour pattern
    (stripes, checks, blobs or a gradient at a random angle and frequency), ``[4, size, size]``."""
    rng = np.random.default_rng(index)
    corners = rng.integers(3, 9)
    angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
    radii = rng.uniform(0.45, 1.0, corners) * size / 2
    points = np.stack([size / 2 + radii * np.cos(angles), size / 2 + radii * np.sin(angles)], 1)
    alpha = cv2.fillPoly(np.zeros((size, size), np.float32), [points.round().astype(np.int32)], 1.0)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta, frequency = rng.uniform(0, np.pi), rng.uniform(1.5, 6)
    along = x * np.cos(theta) + y * np.sin(theta)
    pattern = rng.integers(4)
    if pattern == 0:
        mask = np.sin(2 * np.pi * frequency * along) > 0
    elif pattern == 1:
        mask = (np.floor(x * frequency * 2) + np.floor(y * frequency * 2)) % 2 > 0
    elif pattern == 2:
        mask = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), size / 12) > 0
    else:
        mask = np.clip(along, 0, 1)
    mask = np.asarray(mask, np.float32)[..., None]
    rgb = rng.uniform(0, 1, 3) * mask + rng.uniform(0, 1, 3) * (1 - mask)
    rgba = torch.from_numpy(np.concatenate([rgb, alpha[..., None]], axis=2).astype(np.float32)).permute(2, 0, 1)
    return ElementImage(f"procedural {index}", "object", rgba)


def split_elements(
    items: list[ElementImage], heldout_fraction: float, seed: int
) -> tuple[list[ElementImage], list[ElementImage]]:
    """``(train, heldout)``: per kind, a seeded ``heldout_fraction`` of the identities (at least 1 of kinds with 2+)."""
    train, heldout = [], []
    rng = random.Random(seed)
    for kind in sorted({item.kind for item in items}):
        group = [item for item in items if item.kind == kind]
        rng.shuffle(group)
        count = min(len(group) - 1, max(1, round(heldout_fraction * len(group)))) if len(group) > 1 else 0
        heldout += group[:count]
        train += group[count:]
    return train, heldout


def prescale(item: ElementImage, size: int) -> ElementImage:
    """Shrink an element once for rendering at ``size`` px: sprites cropped to their content with longest side
    ``size``, backgrounds with short side ``2 * size`` (crops down to half the short side stay sharp)."""
    rgba = item.rgba
    if item.kind in BACKGROUND_KINDS:
        target = 2 * size / min(rgba.shape[-2:])
    else:
        top, left, height, width = _content_box(rgba[3])
        rgba = rgba[:, top : top + height, left : left + width]
        target = size / max(rgba.shape[-2:])
    if target < 1:
        shape = [max(1, round(rgba.shape[-2] * target)), max(1, round(rgba.shape[-1] * target))]
        rgba = torch.cat([TF.resize(rgba[:3] * rgba[3:], shape, antialias=True), TF.resize(rgba[3:], shape, antialias=True)])
        rgba = torch.cat([rgba[:3] / rgba[3:].clamp_min(1e-3), rgba[3:]]).clamp(0, 1)
    return ElementImage(item.name, item.kind, rgba.contiguous())


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def color_jitter(rgb: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """Random brightness, contrast, saturation (x in [1 - s, 1 + s]) and hue (+- s / 4) of ``[3, H, W]`` in [0, 1]."""
    rgb = TF.adjust_brightness(rgb, _uniform(generator, 1 - strength, 1 + strength))
    rgb = TF.adjust_contrast(rgb, _uniform(generator, 1 - strength, 1 + strength))
    rgb = TF.adjust_saturation(rgb, _uniform(generator, 1 - strength, 1 + strength))
    return TF.adjust_hue(rgb, _uniform(generator, -strength / 4, strength / 4)).clamp(0, 1)


def _content_box(alpha: torch.Tensor) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the non-transparent pixels of ``alpha [H, W]`` (all of it when empty)."""
    rows, cols = (alpha > 0.02).any(1).nonzero(), (alpha > 0.02).any(0).nonzero()
    if len(rows) == 0:
        return 0, 0, *alpha.shape
    return rows[0].item(), cols[0].item(), rows[-1].item() - rows[0].item() + 1, cols[-1].item() - cols[0].item() + 1


def subject_view(rgba: torch.Tensor, size: int, generator: torch.Generator, jitter: float) -> torch.Tensor:
    """A sprite ``[4, H, W]`` cropped, flipped, rotated, jittered, scaled and placed on white: ``[3, size, size]`` in [0, 1]."""
    top, left, height, width = _content_box(rgba[3])
    keep_h, keep_w = _uniform(generator, 0.75, 1.0), _uniform(generator, 0.75, 1.0)
    crop_h, crop_w = max(1, round(height * keep_h)), max(1, round(width * keep_w))
    top += round(_uniform(generator, 0, height - crop_h))
    left += round(_uniform(generator, 0, width - crop_w))
    rgba = rgba[:, top : top + crop_h, left : left + crop_w]
    rgb = color_jitter(rgba[:3], generator, jitter)
    premultiplied = torch.cat([rgb * rgba[3:], rgba[3:]])  # so bilinear resampling does not bleed dark edges
    if torch.rand((), generator=generator).item() < 0.5:
        premultiplied = premultiplied.flip(-1)
    angle = _uniform(generator, -25.0, 25.0)
    premultiplied = TF.rotate(premultiplied, angle, TF.InterpolationMode.BILINEAR, expand=True, fill=0.0)
    longest = max(premultiplied.shape[-2:])
    side = _uniform(generator, 0.55, 1.0) * size
    new_h = max(1, min(size, round(premultiplied.shape[-2] * side / longest)))
    new_w = max(1, min(size, round(premultiplied.shape[-1] * side / longest)))
    premultiplied = TF.resize(premultiplied, [new_h, new_w], antialias=True).clamp(0, 1)
    y, x = round(_uniform(generator, 0, size - new_h)), round(_uniform(generator, 0, size - new_w))
    canvas = torch.ones(3, size, size)
    region = canvas[:, y : y + new_h, x : x + new_w]
    canvas[:, y : y + new_h, x : x + new_w] = premultiplied[:3] + (1 - premultiplied[3:]) * region
    return canvas


def background_view(rgba: torch.Tensor, size: int, generator: torch.Generator, jitter: float) -> torch.Tensor:
    """A random square crop (50-100% of the short side) of an image, flipped and jittered: ``[3, size, size]`` in [0, 1]."""
    height, width = rgba.shape[-2:]
    side = max(1, round(_uniform(generator, 0.5, 1.0) * min(height, width)))
    top, left = round(_uniform(generator, 0, height - side)), round(_uniform(generator, 0, width - side))
    rgb = color_jitter(rgba[:3, top : top + side, left : left + side], generator, jitter)
    if torch.rand((), generator=generator).item() < 0.5:
        rgb = rgb.flip(-1)
    return TF.resize(rgb, [size, size], antialias=True).clamp(0, 1)


def render_view(item: ElementImage, size: int, generator: torch.Generator, jitter: float = 0.2) -> torch.Tensor:
    """One augmented view of an element: ``[3, size, size]`` float in [-1, 1]."""
    render = background_view if item.kind in BACKGROUND_KINDS else subject_view
    return render(item.rgba, size, generator, jitter) * 2 - 1


class ElementViewsDataset(Dataset):
    """``length`` samples cycling over ``items``; each renders two views of one element.

    ``seed=None``: fresh random views on every access (from the worker's seeded torch RNG); an int: sample ``i``
    always renders the same views (seed + i), for a deterministic validation set.
    """

    def __init__(self, items: list[ElementImage], labels: list[int], size: int, length: int, seed: int | None, jitter: float) -> None:
        if not items:
            raise ValueError("ElementViewsDataset needs at least one element")
        self.items = [prescale(item, size) for item in items]
        self.labels, self.size, self.length, self.seed, self.jitter = labels, size, length, seed, jitter

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        seed = self.seed + index if self.seed is not None else int(torch.randint(2**62, ()).item())
        generator = torch.Generator().manual_seed(seed)
        item = self.items[index % len(self.items)]
        views = torch.stack([render_view(item, self.size, generator, self.jitter) for _ in range(2)])
        return {"views": views, "label": self.labels[index % len(self.items)], "name": item.name, "kind": item.kind}


class ElementViewsDataModule(L.LightningDataModule):
    """Two-view batches of the synthetic world's elements, split into train and held-out identities.

    Args:
        image_size: side of the square views (the encoder's input size).
        batch_size: elements per training batch (each with two views).
        heldout_fraction: fraction of each kind's identities kept out of training (validation only).
        samples_per_epoch: training samples per epoch (elements cycle; views are fresh every time).
        val_pairs_per_element: fixed view pairs per held-out element in the validation set.
        jitter: colour jitter strength.
        include_backgrounds: also train on backgrounds (random crops).
        procedural_identities: extra seeded random identities (:func:`procedural_element`) added to the training
            split only, so the encoder learns augmentation invariance beyond the library's few elements.
        seed: seed of the split and of the validation views.
        num_workers: DataLoader workers.
        elements: ``library``, the fixed library split by identity (above), or ``open``: ``open_identities``
            subjects (and a quarter as many backgrounds) of the open-ended space's training part train, and 64 + 16
            of its zero-shot part (shape families, fills, hues and pictures training never draws) validate.
        open_identities: training subjects drawn from the open-ended space (``elements: open``).
    """

    def __init__(
        self,
        image_size: int = 64,
        batch_size: int = 32,
        heldout_fraction: float = 0.25,
        samples_per_epoch: int = 4096,
        val_pairs_per_element: int = 4,
        jitter: float = 0.2,
        include_backgrounds: bool = True,
        procedural_identities: int = 0,
        seed: int = 0,
        num_workers: int = 0,
        elements: Literal["library", "open"] = "library",
        open_identities: int = 2000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_items: list[ElementImage] = []
        self.heldout_items: list[ElementImage] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_items:
            return
        hp = self.hparams
        if hp.elements == "open":
            backgrounds = hp.open_identities // 4 if hp.include_backgrounds else 0
            self.train_items = open_world_elements("train", hp.open_identities, backgrounds)
            self.heldout_items = open_world_elements("zeroshot", 64, 16 if hp.include_backgrounds else 0)
        else:
            items = synthetic_elements(hp.include_backgrounds)
            self.train_items, self.heldout_items = split_elements(items, hp.heldout_fraction, hp.seed)
        self.train_items += [procedural_element(i) for i in range(hp.procedural_identities)]
        if len(self.heldout_items) < 2:
            raise ValueError(f"{len(self.heldout_items)} held-out elements; retrieval needs >= 2")

    def _labels(self, items: list[ElementImage]) -> list[int]:
        names = sorted(i.name for i in self.train_items + self.heldout_items)
        return [names.index(item.name) for item in items]

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        dataset = ElementViewsDataset(
            self.train_items, self._labels(self.train_items), hp.image_size, hp.samples_per_epoch, None, hp.jitter
        )
        return DataLoader(
            dataset, batch_size=hp.batch_size, shuffle=True, drop_last=True, num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        hp = self.hparams
        length = len(self.heldout_items) * hp.val_pairs_per_element
        dataset = ElementViewsDataset(
            self.heldout_items, self._labels(self.heldout_items), hp.image_size, length, hp.seed, hp.jitter
        )
        return DataLoader(dataset, batch_size=hp.batch_size, num_workers=hp.num_workers)
