"""A small video VAE for laptop-scale worlds: space-time patches folded into channels, 2D residual convs at latent
resolution. It keeps the Wan2.1 latent grid (frame 0 alone, then 4 frames per latent frame; space / ``patch``), so
every reference layout and DiT works with it unchanged.

Why a second family: the Wan VAE is the real one (official weights, diffusers parity), but from scratch its 3D
convolutions at full resolution learn slowly on a CPU (about 15-17 dB after 400 steps on the tiny world, lr above
2e-4 diverges). This one starts as a linear patch autoencoder (zero-initialised residual branches) and works only
at latent resolution (plus, optionally, small residual blocks per decoded frame at full resolution), so it learns
faster (25 dB held-out after 500 CPU steps on the tiny world); the shipped tiny-world weights reach 30.5 dB after
4000 steps (e2v/assets/tiny_world_vae/README.md).

Each latent frame is encoded from its own pixel frames (frame 0 is repeated to a full chunk); no state crosses
chunks, so encoding is trivially causal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from e2v.modules.video_vae import VideoVAE, check_latent_statistics, config_from_dict
from e2v.modules.weights import CheckpointError, parse_dtype
from e2v.assets import shipped_folder
from e2v.registry import register


@dataclass
class PatchVAEConfig:
    """Architecture of :class:`PatchVAE` (the ``config.json`` of its weight folder)."""

    z_dim: int = 16
    patch: int = 4  # spatial factor
    frames_per_latent: int = 4  # temporal factor
    width: int = 128
    depth: int = 4  # residual blocks in the encoder and in the decoder
    pixel_width: int = 0  # > 0: the decoder ends with residual blocks of this width at full pixel resolution
    pixel_depth: int = 1
    groups: int = 8
    in_channels: int = 3
    latents_mean: list[float] = field(default_factory=lambda: [0.0] * 16)
    latents_std: list[float] = field(default_factory=lambda: [1.0] * 16)

    def __post_init__(self) -> None:
        self.latents_mean, self.latents_std = list(self.latents_mean), list(self.latents_std)
        check_latent_statistics(self)
        for name in ("width", "pixel_width"):
            if getattr(self, name) % self.groups:
                raise ValueError(f"{name} ({getattr(self, name)}) must be a multiple of groups ({self.groups})")
        for name in ("z_dim", "patch", "frames_per_latent", "width", "in_channels", "pixel_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pixel_width < 0:
            raise ValueError(f"pixel_width must be >= 0 (0 = no pixel-resolution blocks), got {self.pixel_width}")

    @classmethod
    def from_dict(cls, config: dict[str, Any], source: str = "config") -> "PatchVAEConfig":
        return config_from_dict(cls, config, source, "PatchVAE")

    def to_dict(self) -> dict[str, Any]:
        return {"_class_name": "E2VPatchVAE", **asdict(self)}


class ResBlock2d(nn.Module):
    """(GroupNorm, SiLU, 3x3 conv) x 2 plus identity; the second conv starts at zero (the block starts as identity)."""

    def __init__(self, width: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


def _stack(width: int, depth: int, groups: int, in_dim: int, out_dim: int) -> nn.Sequential:
    """conv 3x3 in -> ``depth`` residual blocks -> GroupNorm, SiLU, conv 3x3 out (all at latent resolution)."""
    return nn.Sequential(
        nn.Conv2d(in_dim, width, 3, padding=1),
        *(ResBlock2d(width, groups) for _ in range(depth)),
        nn.GroupNorm(groups, width),
        nn.SiLU(),
        nn.Conv2d(width, out_dim, 3, padding=1),
    )


class PixelRefiner(nn.Module):
    """Residual blocks at full pixel resolution on each decoded frame: ``[N, C + pw, H, W] -> [N, C, H, W]``.

    The first ``C`` input channels are the patch decoder's colours; the rest are features for the blocks, whose
    output conv starts at zero (the refiner starts as the plain patch decoder)."""

    def __init__(self, channels: int, width: int, depth: int, groups: int) -> None:
        super().__init__()
        self.channels = channels
        self.blocks = nn.Sequential(*(ResBlock2d(width, groups) for _ in range(depth)), nn.GroupNorm(groups, width),
                                    nn.SiLU())
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.channels] + self.out(self.blocks(x[:, self.channels :]))


class PatchVAE(VideoVAE):
    """``encode [B,3,F,H,W] -> [B,z,(F-1)/4+1,H/p,W/p]`` raw latents (posterior mean), ``decode`` the inverse."""

    config_class = PatchVAEConfig

    def __init__(self, config: PatchVAEConfig) -> None:
        super().__init__(config)
        chunk = config.frames_per_latent * config.patch**2
        self.encoder = _stack(config.width, config.depth, config.groups, config.in_channels * chunk, 2 * config.z_dim)
        out_channels = config.in_channels + config.pixel_width
        self.decoder = _stack(config.width, config.depth, config.groups, config.z_dim, out_channels * chunk)
        self.refiner = (
            PixelRefiner(config.in_channels, config.pixel_width, config.pixel_depth, config.groups)
            if config.pixel_width else None
        )

    @property
    def temporal_factor(self) -> int:
        return self.config.frames_per_latent

    @property
    def spatial_factor(self) -> int:
        return self.config.patch

    def _fold(self, video: torch.Tensor) -> torch.Tensor:
        """``[B,C,F,H,W]`` (frame 0 repeated to a chunk) -> ``[B*T, C*tf*p*p, H/p, W/p]``."""
        tf, p = self.temporal_factor, self.spatial_factor
        video = torch.cat([video[:, :, :1].expand(-1, -1, tf, -1, -1), video[:, :, 1:]], dim=2)
        b, c, f, h, w = video.shape
        x = video.reshape(b, c, f // tf, tf, h // p, p, w // p, p).permute(0, 2, 1, 3, 5, 7, 4, 6)
        return x.reshape(b * (f // tf), c * tf * p * p, h // p, w // p)

    def _unfold(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """Inverse of :meth:`_fold` (any channel count); latent frame 0 gives one pixel frame (the last of its
        chunk)."""
        tf, p = self.temporal_factor, self.spatial_factor
        c = x.shape[1] // (tf * p * p)
        t, (h, w) = x.shape[0] // batch, x.shape[-2:]
        video = x.reshape(batch, t, c, tf, p, p, h, w).permute(0, 2, 1, 3, 6, 4, 7, 5)
        video = video.reshape(batch, c, t * tf, h * p, w * p)
        return video[:, :, tf - 1 :]

    def _encode_untiled(self, video: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(self._fold(video))  # [B*T, 2z, h, w]
        return moments.unflatten(0, (video.shape[0], -1)).transpose(1, 2)

    def _decode_untiled(self, z: torch.Tensor) -> torch.Tensor:
        frames = z.transpose(1, 2).flatten(0, 1)  # [B*T, z, h, w]
        video = self._unfold(self.decoder(frames), z.shape[0])  # [B, C (+ pixel_width), F, H, W]
        if self.refiner is None:
            return video
        pixels = self.refiner(video.transpose(1, 2).flatten(0, 1))  # [B*F, C, H, W]
        return pixels.unflatten(0, (z.shape[0], -1)).transpose(1, 2)

    @classmethod
    def from_config(cls, seed: int = 0, **options: Any) -> "PatchVAE":
        """A randomly initialised VAE (the same weights for the same ``seed`` and options)."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return cls(PatchVAEConfig(**options))


# Shipped pretrained weights: name -> folder under e2v/assets and the sha256 of its safetensors file
# (how each was made: the folder's README.md).
def pretrained_folder(name: str) -> Path:
    """The verified asset folder of a shipped pretrained VAE (:func:`e2v.assets.shipped_folder`)."""
    return shipped_folder("vae", name)


@register("vae", "patch")
def patch_vae(
    pretrained: str | None = None,
    weights: str | None = None,
    dtype: str | torch.dtype | None = None,
    tile_size: int | None = None,
    tile_overlap: int = 64,
    seed: int = 0,
    z_dim: int = 16,
    patch: int = 4,
    frames_per_latent: int = 4,
    width: int = 128,
    depth: int = 4,
    pixel_width: int = 0,
    pixel_depth: int = 1,
) -> PatchVAE:
    """Small patch-folding video VAE (Wan latent grid): ``pretrained`` asset, ``weights`` folder, or random init."""
    if pretrained is not None and weights is not None:
        raise ValueError("give either pretrained (a shipped asset name) or weights (a folder), not both")
    if pretrained is not None or weights is not None:
        vae = PatchVAE.from_pretrained(pretrained_folder(pretrained) if pretrained else weights, dtype)
    else:
        vae = PatchVAE.from_config(
            seed, z_dim=z_dim, patch=patch, frames_per_latent=frames_per_latent, width=width, depth=depth,
            pixel_width=pixel_width, pixel_depth=pixel_depth, latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim,
        )
        dtype = parse_dtype(dtype)
        if dtype is not None:
            vae.to(dtype)
    vae.enable_tiling(tile_size, tile_overlap)
    return vae
