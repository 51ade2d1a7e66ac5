"""Image embeddings for the consistency scorers (the plug-in point): ``embed(images) -> [n, d]`` float vectors whose
cosine similarity is the consistency measure, with the range of that similarity.

- ``colour_histogram`` (default, CPU, no weights): **a proxy**, not a learned embedding. The square root of the
  normalised joint RGB histogram (8 bins per channel) of the image's non-white pixels, so the cosine is the
  Bhattacharyya coefficient in [0, 1]. White (every channel > 240) is ignored: it is A2's reference canvas and
  the colour scorers' "not this element" marker. It sees colours, not shapes.
- ``transformers``: a local transformers folder (CLIP, CLIP vision, DINOv2, SigLIP, ... anything
  ``AutoModel`` loads with ``get_image_features`` or a ``pooler_output``); images are white-padded to squares,
  resized to the model's ``image_size`` and normalised with ``preprocessor_config.json``'s mean/std (CLIP's when
  absent). Cosine in [-1, 1]. Local files only, never a download.

An embedder spec is a name or ``{"name": ..., **options}`` like a registry spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from e2v.bench.scorer import to_unit_tensor

WHITE_LEVEL = 240
HISTOGRAM_BINS = 8


class ColourHistogram:
    """sqrt of the joint colour histogram of non-white pixels (a proxy embedding; cosine = Bhattacharyya)."""

    name = "colour_histogram"
    range = (0.0, 1.0)

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        self.bins = bins
        self.label = f"proxy: colour histogram ({bins}^3 bins, non-white pixels), Bhattacharyya coefficient"

    def embed_one(self, image: np.ndarray) -> torch.Tensor:
        pixels = image.reshape(-1, 3)
        pixels = pixels[(pixels <= WHITE_LEVEL).any(axis=1)]
        index = (pixels.astype(np.int64) * self.bins) // 256
        flat = (index[:, 0] * self.bins + index[:, 1]) * self.bins + index[:, 2]
        counts = np.bincount(flat, minlength=self.bins**3).astype(np.float32)
        return torch.from_numpy(np.sqrt(counts / max(counts.sum(), 1.0)))

    def embed(self, images: list[np.ndarray]) -> torch.Tensor:
        return torch.stack([self.embed_one(image) for image in images])


def white_square(image: np.ndarray, size: int) -> torch.Tensor:
    """``uint8 [H, W, 3]`` -> ``[3, size, size]`` in [0, 1], white-padded to a centred square then resized."""
    pixels = to_unit_tensor(image)
    height, width = pixels.shape[-2:]
    side = max(height, width)
    square = torch.ones(3, side, side)
    top, left = (side - height) // 2, (side - width) // 2
    square[:, top : top + height, left : left + width] = pixels
    return F.interpolate(square[None], size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)


class TransformersEmbedder:
    """Image features of a local transformers folder (CLIP / DINOv2 / ...); cosine similarity."""

    name = "transformers"
    range = (-1.0, 1.0)

    def __init__(self, path: str, batch: int = 16) -> None:
        from transformers import AutoModel

        from e2v.modules.image_encoder import CLIP_MEAN, CLIP_STD, PROCESSOR_CONFIG, read_normalization

        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"embedder folder {folder} does not exist or is not a directory")
        self.model = AutoModel.from_pretrained(folder, local_files_only=True, trust_remote_code=False).eval()
        config = self.model.config
        vision = getattr(config, "vision_config", None) or config
        self.size = int(getattr(vision, "image_size", 224))
        mean, std = read_normalization(folder) if (folder / PROCESSOR_CONFIG).is_file() else (CLIP_MEAN, CLIP_STD)
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        self.batch = batch
        self.label = f"{type(self.model).__name__} from {folder}, cosine"

    @torch.no_grad()
    def embed(self, images: list[np.ndarray]) -> torch.Tensor:
        features = []
        for start in range(0, len(images), self.batch):
            pixels = torch.stack([white_square(image, self.size) for image in images[start : start + self.batch]])
            weight = next(self.model.parameters())
            pixels = ((pixels - self.mean) / self.std).to(weight.device, weight.dtype)
            features.append(image_features(self.model, pixels).float().cpu())
        return torch.cat(features)


def image_features(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Pooled image features of a transformers model: ``get_image_features`` when it has one, else the pooler."""
    if hasattr(model, "get_image_features"):
        out = model.get_image_features(pixel_values=pixels)
    else:
        out = model(pixel_values=pixels)
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        pooled = out.last_hidden_state[:, 0]
    return pooled


EMBEDDERS: dict[str, Callable[..., Any]] = {"colour_histogram": ColourHistogram, "transformers": TransformersEmbedder}


def build_embedder(spec: str | Mapping[str, Any]) -> Any:
    """An embedder from ``"name"`` or ``{"name": ..., **options}``; unknown names list the known ones."""
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        name, options = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    else:
        raise ValueError(f"embedder spec must be a name or {{'name': ..., ...}}, got {spec!r}")
    if name not in EMBEDDERS:
        raise KeyError(f"no embedder named {name!r}; known: {', '.join(EMBEDDERS)}")
    return EMBEDDERS[name](**options)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[n, d] x [m, d] -> [n, m]`` cosine similarities (0 where a vector is zero)."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T
