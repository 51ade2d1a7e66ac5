"""Identities across clips: element embeddings (registry kind ``element_embedder``), grouping, reference choice.

``appearance`` (default, CPU, no weights): a colour histogram (``e2v.bench.embedders.ColourHistogram``, the
square root of the joint RGB histogram of non-white pixels) joined with a mirror-symmetric 8x8 colour layout of
the crop, so two elements of one palette but different shapes, or one element seen mirrored, are told apart and
matched. It is a proxy for learned embeddings: the plug-ins are ``image_encoder`` (CLIP/DINOv2 folders) and
``dlib_face`` for faces. In greyscale it cannot tell one person from another (a luma histogram and a face-shaped
layout: on grey compilations of LivePortrait's talking heads, one person's crops lay up to 0.49 apart and two
people's down to 0.03), so people it sees in grey are never grouped by it. Grouping is average-linkage clustering of
cosine distances (scipy) cut at ``threshold``.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

from e2v.bench.embedders import ColourHistogram
from e2v.databuild.elements import GREY_SPREAD
from e2v.registry import register

WHITE = 255
PEOPLE = ("face", "human")  # element kinds the appearance proxy cannot tell apart in greyscale


def greyscale(crop: np.ndarray, share: float = 0.95) -> bool:
    """Whether a crop on white (``uint8 [h, w, 3]``) is greyscale: ``share`` of its non-white pixels have channels
    under :data:`GREY_SPREAD` levels apart (codecs leave a few levels of colour in grey footage)."""
    pixels = crop.reshape(-1, 3)
    pixels = pixels[(pixels < WHITE).any(axis=1)]
    return bool(len(pixels)) and float((np.ptp(pixels, axis=1) < GREY_SPREAD).mean()) >= share


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-8)


@register("element_embedder", "appearance")
class Appearance:
    """Colour histogram + mirror-symmetric colour layout of a crop on white (a CPU proxy, no weights)."""

    def __init__(self, bins: int = 8, layout: int = 8, layout_weight: float = 0.5) -> None:
        self.histogram = ColourHistogram(bins)
        self.layout, self.layout_weight = layout, layout_weight

    def _layout(self, crop: np.ndarray) -> np.ndarray:
        side = max(crop.shape[:2])
        square = np.full((side, side, 3), WHITE, np.uint8)
        top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
        square[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
        thumb = cv2.resize(square, (self.layout,) * 2, interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        thumb = (thumb + thumb[:, ::-1]) / 2  # the same element seen mirrored gives the same layout
        flat = thumb.ravel() - thumb.mean()
        return flat / max(np.linalg.norm(flat), 1e-8)

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        colours = self.histogram.embed(crops).numpy()
        layouts = np.stack([self._layout(c) for c in crops])
        joined = np.concatenate([np.sqrt(1 - self.layout_weight) * _unit(colours),
                                 np.sqrt(self.layout_weight) * layouts], axis=1)
        return _unit(joined).astype(np.float32)


def _clusters(distances: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """Cluster labels ``int [N]`` of a square distance matrix cut at ``threshold`` (scipy ``linkage``)."""
    if len(distances) < 2:
        return np.ones(len(distances), np.int64)
    condensed = distances[np.triu_indices(len(distances), 1)]
    return fcluster(linkage(condensed, method=method), t=threshold, criterion="distance")


def group_identities(embeddings: np.ndarray, threshold: float, apart: list | None = None) -> np.ndarray:
    """Identity labels ``int [N]`` (0.. in order of first appearance) from L2-normalised ``[N, D]`` embeddings:
    average-linkage clusters whose mean cosine distance stays under ``threshold``. ``apart``: a key per element
    (its clip); elements with one key are never one identity (two walkers in one shot are two people, however
    alike their dark silhouettes): their distance counts as the largest, and a cluster that still holds two of
    them is split by complete linkage, under which no two members lie farther apart than ``threshold``."""
    distances = np.clip(1 - embeddings @ embeddings.T, 0, 2)
    if apart is not None:
        keys = np.array([str(k) for k in apart])
        same = (keys[:, None] == keys[None, :]) & ~np.eye(len(keys), dtype=bool)
        distances = np.where(same, 2.0, distances)
    raw = _clusters(distances, threshold, "average")
    if apart is not None:
        for label in np.unique(raw):
            members = np.flatnonzero(raw == label)
            if len(set(keys[members])) < len(members):
                split = _clusters(distances[np.ix_(members, members)], threshold, "complete")
                raw[members] = raw.max() + split
    order = {label: n for n, label in enumerate(dict.fromkeys(raw.tolist()))}
    return np.array([order[label] for label in raw], np.int64)
