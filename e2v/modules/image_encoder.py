"""The reference encoder: CLIP vision tower (transformers ``CLIPVisionModel``), SkyReels-A2 / Wan2.1 I2V conventions.

``forward(images [B, N, 3, S, S] in [-1, 1]) -> [B, N * tokens_per_image, dim]``: the penultimate hidden states of
every reference (257 x 1280 per reference for ViT-H/14 at 224 px), concatenated per sample. Inputs are already
white-padded squares (the data pipeline pads them); they are resized to the encoder's input size and normalised
with the image processor's mean / std. Loads the release layout (``image_encoder/`` + ``image_processor/``) from
local folders only; a ``"tiny"`` preset builds a deterministic random 2-layer tower.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from e2v.modules.frozen import FrozenWrapper
from e2v.modules.quantize import quantize_linears
from e2v.modules.weights import CheckpointError, parse_dtype
from e2v.registry import register

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROCESSOR_CONFIG = "preprocessor_config.json"
TINY_SEED = 0


def tiny_config() -> CLIPVisionConfig:
    """A 2-layer, 32-wide CLIP vision config at 32 px with 8 px patches (17 tokens per image) for tests."""
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=32,
        hidden_act="gelu",
    )


def read_normalization(folder: Path) -> tuple[list[float], list[float]]:
    """``(image_mean, image_std)`` from an image processor folder's ``preprocessor_config.json``."""
    path = folder / PROCESSOR_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {PROCESSOR_CONFIG}; expected a CLIP image processor folder")
    try:
        config = json.loads(path.read_text())
        mean, std = [float(v) for v in config["image_mean"]], [float(v) for v in config["image_std"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} needs 'image_mean' and 'image_std' lists of 3 numbers: {err}") from err
    if len(mean) != 3 or len(std) != 3:
        raise CheckpointError(f"{path}: image_mean and image_std must have 3 values, got {mean} and {std}")
    return mean, std


class ImageEncoder(FrozenWrapper):
    """CLIP vision tower: ``forward(images [B,N,3,S,S] in [-1,1]) -> [B, N*tokens_per_image, dim]``."""

    def __init__(
        self,
        model: CLIPVisionModel,
        mean: tuple[float, ...] = CLIP_MEAN,
        std: tuple[float, ...] = CLIP_STD,
        frozen: bool = True,
    ) -> None:
        super().__init__()
        config = model.config
        self.model = model
        self.dim = config.hidden_size
        self.image_size = config.image_size
        self.tokens_per_image = (config.image_size // config.patch_size) ** 2 + 1
        self.image_mean, self.image_std = tuple(mean), tuple(std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.freeze(frozen)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, N, 3, S, S]`` in [-1, 1] -> normalised ``[B*N, 3, image_size, image_size]`` in the model's dtype."""
        if images.ndim != 5 or images.shape[2] != 3 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"images must be [B, N, 3, S, S] squares, got shape {tuple(images.shape)}")
        pixels = (images.flatten(0, 1).float() + 1) / 2
        if pixels.shape[-1] != self.image_size:
            pixels = F.interpolate(pixels, size=self.image_size, mode="bicubic", antialias=True, align_corners=False)
            pixels = pixels.clamp(0, 1)  # like the processor's 8-bit image after its bicubic resize
        pixels = (pixels - self.mean) / self.std
        return pixels.to(self.model.embeddings.patch_embedding.weight.dtype)

    def _run(self, images: torch.Tensor):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.model(pixel_values=self.preprocess(images), output_hidden_states=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, N, 3, S, S]`` -> ``[B, N * tokens_per_image, dim]``: penultimate hidden states, references in order."""
        batch = images.shape[0]
        return self._run(images).hidden_states[-2].reshape(batch, -1, self.dim)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, N, 3, S, S]`` -> ``[B, N, dim]``: the post-layernorm class token of each reference (for metrics)."""
        return self._run(images).pooler_output.unflatten(0, images.shape[:2])

    @classmethod
    def from_preset(cls, preset: str = "tiny", dtype: torch.dtype | None = None) -> "ImageEncoder":
        """A random tower: ``"tiny"`` (seeded, identical on every build) with CLIP's mean / std."""
        if preset != "tiny":
            raise ValueError(f"unknown image encoder preset {preset!r}; presets: tiny (real weights load by path)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model = CLIPVisionModel(tiny_config())
        return cls(model.to(dtype or torch.float32))

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        processor_path: str | os.PathLike | None = None,
        dtype: torch.dtype | None = None,
    ) -> "ImageEncoder":
        """Load from a checkpoint root holding ``image_encoder/`` + ``image_processor/``, or explicit folders.

        ``path``: the root, or the encoder folder itself (then ``processor_path`` names the folder with
        ``preprocessor_config.json``, or is None for CLIP's mean / std). Local safetensors only, no remote code.
        """
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"image encoder checkpoint folder {path} does not exist or is not a directory")
        if (path / "image_encoder").is_dir() or (path / "image_processor").is_dir():
            if not (path / "image_encoder").is_dir() or not (path / "image_processor").is_dir():
                raise CheckpointError(f"checkpoint root {path} needs both image_encoder/ and image_processor/ folders")
            path, processor_path = path / "image_encoder", path / "image_processor"
        mean, std = read_normalization(Path(processor_path)) if processor_path is not None else (CLIP_MEAN, CLIP_STD)
        model = CLIPVisionModel.from_pretrained(
            path, local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=dtype or "auto"
        )
        return cls(model, tuple(mean), tuple(std))

    def save_pretrained(self, root: str | os.PathLike) -> None:
        """Write ``root/image_encoder/`` (config + safetensors) and ``root/image_processor/``, the release layout."""
        root = Path(root)
        self.model.save_pretrained(root / "image_encoder")
        size = self.image_size
        CLIPImageProcessor(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_mean=list(self.image_mean),
            image_std=list(self.image_std),
        ).save_pretrained(root / "image_processor")


@register("image_encoder", "clip")
def clip(
    preset: str = "tiny",
    path: str | None = None,
    quantize: str | None = None,
    dtype: str | torch.dtype | None = None,
    processor_path: str | None = None,
) -> ImageEncoder:
    """CLIP vision tower (penultimate states): from ``path`` (checkpoint root or encoder folder) or a preset;
    ``quantize``: None, ``"int8"`` or ``"nf4"`` weight-only."""
    dtype = parse_dtype(dtype)
    if path is None:
        encoder = ImageEncoder.from_preset(preset, dtype)
    else:
        encoder = ImageEncoder.from_pretrained(path, processor_path, dtype)
    if quantize is not None:
        quantize_linears(encoder.model, quantize)
    return encoder
