"""A small ViT reference encoder built and trained by e2v (registry ``image_encoder`` name ``e2v_vit``).

It has the interface of :class:`e2v.modules.image_encoder.ImageEncoder` (CLIP), so an E2V recipe can swap it in:
``forward(images [B, N, 3, S, S] in [-1, 1]) -> [B, N * tokens_per_image, dim]``, attributes ``dim``,
``tokens_per_image`` and ``image_size``. ``pooled(images) -> [B, N, embed_dim]`` is the L2-normalised embedding
that :class:`e2v.tasks.reference_encoder_training.ReferenceEncoderTraining` trains contrastively.

Graph: conv patch embedding -> [CLS; patches] + learned positions -> ``depth`` pre-norm transformer blocks ->
LayerNorm. Output tokens are all ``1 + (S / patch)^2`` tokens, or, when ``tokens_per_image`` asks for another
count, a learned resampler (``tokens_per_image`` queries cross-attending the tokens); then a linear map to ``dim``.
The pooled embedding is a linear head on the final CLS token.

Weights come from a ``ReferenceEncoderTraining`` Lightning checkpoint (``*.ckpt``, read with
``torch.load(weights_only=True)``), a safetensors file, or a weights folder written by :meth:`ReferenceViT.save_pretrained`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open

from e2v.modules.frozen import freeze
from e2v.modules.weights import CheckpointError, load_checkpoint, load_weights, read_config, save_weights
from e2v.registry import register

ENCODER_PREFIX = "encoder."  # where ReferenceEncoderTraining keeps the encoder in its state_dict
ENCODER_CONFIG_KEY = "encoder_config"  # where it stores the encoder's full config in a Lightning checkpoint


@dataclass(frozen=True)
class ReferenceViTConfig:
    image_size: int = 64
    patch_size: int = 8
    width: int = 128
    depth: int = 4
    heads: int = 4
    dim: int = 128  # width of the output tokens (the DiT's image_dim)
    tokens_per_image: int | None = None  # None: all patch tokens + CLS; another count adds a learned resampler
    embed_dim: int = 128  # width of the pooled, normalised embedding

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        if self.tokens_per_image is not None and self.tokens_per_image < 1:
            raise ValueError(f"tokens_per_image must be >= 1 or None, got {self.tokens_per_image}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, L, width] -> [B, L, width]``."""
        b, length, width = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, length, width))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention then a GELU MLP (4x), both residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Resampler(nn.Module):
    """``num_queries`` learned queries cross-attend the encoder tokens: ``[B, L, width] -> [B, num_queries, width]``."""

    def __init__(self, width: int, heads: int, num_queries: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, width) * width**-0.5)
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        queries = self.queries.expand(tokens.shape[0], -1, -1)
        keys = self.norm(tokens)
        x = queries + self.attn(queries, keys, keys, need_weights=False)[0]
        return x + self.mlp(x)


class ReferenceViT(nn.Module):
    """Small ViT for reference images: tokens for the DiT's image branch and a pooled embedding for retrieval."""

    def __init__(self, config: ReferenceViTConfig) -> None:
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        self.dim = config.dim
        self.embed_dim = config.embed_dim
        all_tokens = config.num_patches + 1
        self.tokens_per_image = config.tokens_per_image or all_tokens
        self.patch_embed = nn.Conv2d(3, config.width, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.randn(1, all_tokens, config.width) * 0.02)
        self.blocks = nn.ModuleList(Block(config.width, config.heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.resampler = (
            Resampler(config.width, config.heads, self.tokens_per_image)
            if self.tokens_per_image != all_tokens
            else None
        )
        self.token_proj = nn.Linear(config.width, config.dim)
        self.embed_head = nn.Linear(config.width, config.embed_dim)

    def _check(self, images: torch.Tensor) -> None:
        size = self.image_size
        if images.ndim != 5 or images.shape[2:] != (3, size, size):
            raise ValueError(f"ReferenceViT expects images [B, N, 3, {size}, {size}], got {tuple(images.shape)}")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, N, 3, S, S]`` in [-1, 1] -> final-normed ``[B*N, 1 + patches, width]`` (CLS first)."""
        self._check(images)
        x = self.patch_embed(images.flatten(0, 1).to(self.pos_embed.dtype)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, N, 3, S, S]`` in [-1, 1] -> image tokens ``[B, N * tokens_per_image, dim]``."""
        tokens = self.encode(images)
        if self.resampler is not None:
            tokens = self.resampler(tokens)
        return self.token_proj(tokens).reshape(images.shape[0], -1, self.dim)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, N, 3, S, S]`` in [-1, 1] -> L2-normalised embeddings ``[B, N, embed_dim]``."""
        cls = self.encode(images)[:, 0]
        return F.normalize(self.embed_head(cls), dim=-1).reshape(*images.shape[:2], self.embed_dim)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` (atomic, see :func:`e2v.modules.weights.save_weights`)."""
        save_weights(self, asdict(self.config), folder, prefix="model")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """The encoder's ``(state_dict, config options)`` stored at ``path``.

    ``path`` is a ``ReferenceEncoderTraining`` Lightning checkpoint (encoder weights under ``encoder.``, options
    from its ``encoder_config`` entry or else its ``encoder`` hyper-parameter), a ``.safetensors`` file (options in its metadata, if written by e2v) or a
    weights folder (returns ``None`` weights: :func:`e2v.modules.weights.load_weights` streams them).
    """
    path = Path(path)
    if path.is_dir():
        return None, _config_options(read_config(path))
    if not path.is_file():
        raise CheckpointError(f"reference encoder checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                state = {key: handle.get_tensor(key) for key in handle.keys()}
                metadata = handle.metadata() or {}
        except Exception as err:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
        return state, _config_options(json.loads(metadata.get("config", "{}")))
    checkpoint = load_checkpoint(path)
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} has no 'state_dict'; expected a ReferenceEncoderTraining Lightning checkpoint")
    state = {k[len(ENCODER_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(ENCODER_PREFIX)}
    if not state:
        raise CheckpointError(f"{path} holds no '{ENCODER_PREFIX}*' weights; is it a ReferenceEncoderTraining checkpoint?")
    config = checkpoint.get(ENCODER_CONFIG_KEY) or (checkpoint.get("hyper_parameters") or {}).get("encoder")
    return state, _config_options(config if isinstance(config, dict) else {})


def _config_options(options: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(ReferenceViTConfig)}
    return {k: v for k, v in options.items() if k in names}


def load_state(module: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Strictly copy ``state`` into ``module``; a :class:`CheckpointError` names missing, unexpected and mis-shaped keys."""
    targets = module.state_dict()
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(targets[key].shape)}"
        for key, value in state.items()
        if key in targets and value.shape != targets[key].shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"weights in {source} do not match {type(module).__name__}:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                more = f", ... ({len(keys)} in all)" if len(keys) > 20 else ""
                lines.append(f"  {label} keys: {', '.join(keys[:20])}{more}")
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(state)


@register("image_encoder", "e2v_vit")
def reference_vit(
    image_size: int | None = None,
    patch_size: int | None = None,
    width: int | None = None,
    depth: int | None = None,
    heads: int | None = None,
    dim: int | None = None,
    tokens_per_image: int | None = None,
    embed_dim: int | None = None,
    checkpoint: str | None = None,
    frozen: bool | None = None,
    pretrained: str | None = None,
) -> ReferenceViT:
    """Small ViT reference encoder trained by e2v (``ReferenceEncoderTraining``), optionally loaded from a checkpoint.

    Options left out come from the checkpoint's stored config, then from :class:`ReferenceViTConfig`'s defaults.
    ``frozen`` (default: frozen when a checkpoint is loaded): :func:`~e2v.modules.frozen.freeze` (no gradients, eval
    mode whatever the parent's mode). ``pretrained``: a shipped encoder (``tiny-world``) instead of a checkpoint.
    """
    if pretrained is not None:
        if checkpoint is not None:
            raise ValueError("give either pretrained (a shipped asset name) or checkpoint, not both")
        from e2v.assets import shipped_folder

        checkpoint = str(shipped_folder("image_encoder", pretrained))
    options = dict(image_size=image_size, patch_size=patch_size, width=width, depth=depth, heads=heads, dim=dim,
                   tokens_per_image=tokens_per_image, embed_dim=embed_dim)
    given = {k: v for k, v in options.items() if v is not None}
    state, stored = read_checkpoint(checkpoint) if checkpoint is not None else (None, {})
    model = ReferenceViT(ReferenceViTConfig(**{**stored, **given}))
    if checkpoint is not None:
        try:
            load_state(model, state, checkpoint) if state is not None else load_weights(model, checkpoint)
        except CheckpointError as err:
            conflicts = {k: (stored[k], v) for k, v in given.items() if k in stored and stored[k] != v}
            hint = f"\n  options given vs stored in the checkpoint: {conflicts}" if conflicts else ""
            raise CheckpointError(f"{err}{hint}") from err
    if frozen if frozen is not None else checkpoint is not None:
        freeze(model)
    return model
