"""What every e2v video VAE shares: the latent grid contract, input checks, spatial tiling, latent normalisation
and the diffusers-style weight folder.

The contract (the Wan2.1 one, which the reference layouts and the DiT rely on): ``encode [B,3,F,H,W]`` with
``F = temporal_factor * k + 1`` gives raw latents ``[B,z,k+1,H/s,W/s]`` whose frame 0 encodes pixel frame 0 alone and
frame ``j >= 1`` encodes pixel frames ``4j-3 .. 4j``; ``decode`` is the inverse; ``normalize`` maps raw latents to
the DiT's space with the config's per-channel ``latents_mean`` / ``latents_std``. A subclass implements
``_encode_untiled`` / ``_decode_untiled`` and the ``spatial_factor`` / ``temporal_factor`` properties.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import torch
from torch import nn

from e2v.modules.weights import CheckpointError, load_weights, parse_dtype, read_config, save_weights


def config_from_dict(config_class: type, config: dict[str, Any], source: str, label: str) -> Any:
    """A dataclass config from a ``config.json`` dict; ``_``-prefixed keys are ignored, unknown keys refused."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(k for k in config if k not in known and not k.startswith("_"))
    if unknown:
        raise CheckpointError(f"{source}: unknown {label} config key(s) {unknown}; known: {sorted(known)}")
    return config_class(**{k: v for k, v in config.items() if k in known})


def check_latent_statistics(config: Any) -> None:
    """``latents_mean`` / ``latents_std`` must hold one value per latent channel."""
    for name in ("latents_mean", "latents_std"):
        if len(getattr(config, name)) != config.z_dim:
            raise ValueError(f"{name} needs z_dim={config.z_dim} values, got {len(getattr(config, name))}")


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` covering ``size``, consecutive tiles overlapping by at least ``overlap``."""
    if size <= tile:
        return [0]
    return [*range(0, size - tile, tile - overlap), size - tile]


def _edge_ramp(length: int, ramp: int, up: bool, down: bool) -> torch.Tensor:
    """1D blending weights: rising over the first ``ramp`` entries if ``up``, falling over the last if ``down``."""
    weights = torch.ones(length)
    steps = torch.arange(1, ramp + 1) / (ramp + 1)
    if up:
        weights[:ramp] = steps
    if down:
        weights[length - ramp :] = steps.flip(0)
    return weights


def _tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int, scale: float):
    """Apply ``fn`` (spatial size x ``scale``) on overlapping ``tile``-sized tiles of ``x`` and blend linearly."""
    height, width = x.shape[-2:]
    rows, cols = _tile_starts(height, tile, overlap), _tile_starts(width, tile, overlap)
    ramp = int(overlap * scale)
    out = weight_sum = None
    for top in rows:
        for left in cols:
            y = fn(x[..., top : top + tile, left : left + tile])
            th, tw = y.shape[-2:]
            ramp_h = _edge_ramp(th, ramp, top > 0, top + tile < height)
            ramp_w = _edge_ramp(tw, ramp, left > 0, left + tile < width)
            weight = (ramp_h[:, None] * ramp_w[None, :]).to(y)
            if out is None:
                out = y.new_zeros(*y.shape[:-2], int(height * scale), int(width * scale))
                weight_sum = torch.zeros(out.shape[-2:], dtype=y.dtype, device=y.device)
            r, c = int(top * scale), int(left * scale)
            out[..., r : r + th, c : c + tw] += y * weight
            weight_sum[r : r + th, c : c + tw] += weight
    return out / weight_sum


class VideoVAE(nn.Module):
    """Base of e2v's video VAEs: ``encode [B,3,F,H,W] -> [B,z,T,h,w]`` raw latents, ``decode`` the inverse.

    Subclasses set ``config`` (with ``z_dim``, ``in_channels``, ``latents_mean``, ``latents_std``, ``to_dict`` and a
    ``from_dict(config, source)`` classmethod on ``config_class``) and implement the two untiled passes.
    """

    config_class: Any = None

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.tile_size: int | None = None
        self.tile_overlap = 64

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def temporal_factor(self) -> int:
        raise NotImplementedError

    @property
    def spatial_factor(self) -> int:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def enable_tiling(self, tile_size: int | None, overlap: int = 64) -> None:
        """Encode/decode frames larger than ``tile_size`` pixels in overlapping tiles (None: never tile)."""
        if tile_size is not None:
            factor = self.spatial_factor
            if tile_size % factor or overlap % factor or not 0 <= overlap < tile_size:
                raise ValueError(
                    f"tile_size ({tile_size}) and tile_overlap ({overlap}) must be multiples of {factor} "
                    "with 0 <= overlap < tile_size"
                )
        self.tile_size, self.tile_overlap = tile_size, overlap

    # --- the two passes a subclass implements ----------------------------------------------------------------

    def _encode_untiled(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 3, F, H, W] -> [B, 2 z, T, h, w]`` posterior moments (mean, log-variance)."""
        raise NotImplementedError

    def _decode_untiled(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents ``[B, z, T, h, w] -> [B, 3, 1 + temporal_factor (T - 1), H, W]`` (not clamped)."""
        raise NotImplementedError

    # --- encoding -------------------------------------------------------------------------------------------

    def _check_video(self, video: torch.Tensor) -> None:
        channels, factor = self.config.in_channels, self.spatial_factor
        if video.ndim != 5 or video.shape[1] != channels:
            raise ValueError(f"video must be [B, {channels}, F, H, W], got shape {tuple(video.shape)}")
        frames, height, width = video.shape[2:]
        if (frames - 1) % self.temporal_factor:
            raise ValueError(f"video frame count must be {self.temporal_factor}k+1 (1, 5, 9, ...), got {frames}")
        if height % factor or width % factor or not height or not width:
            raise ValueError(f"video height and width must be positive multiples of {factor}, got {height}x{width}")

    def _moments(self, video: torch.Tensor) -> torch.Tensor:
        self._check_video(video)
        video = video.to(self.dtype)
        if self.tile_size is not None and max(video.shape[-2:]) > self.tile_size:
            return _tiled(self._encode_untiled, video, self.tile_size, self.tile_overlap, 1 / self.spatial_factor)
        return self._encode_untiled(video)

    def encode_distribution(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mean, logvar)``, each ``[B, z, T, h, w]``; logvar clamped to [-30, 20] like diffusers."""
        mean, logvar = self._moments(video).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Posterior mean (raw latents): ``[B, 3, F, H, W]`` in [-1, 1] -> ``[B, z, (F-1)/tf+1, H/s, W/s]``."""
        return self._moments(video)[:, : self.z_dim]

    # --- decoding -------------------------------------------------------------------------------------------

    def decode(self, z: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Raw latents ``[B, z, T, h, w]`` -> video ``[B, 3, 1+tf(T-1), s h, s w]``, clamped to [-1, 1] if ``clamp``.

        Training a decoder wants ``clamp=False``: a clamped output passes no gradient once out of range.
        """
        if z.ndim != 5 or z.shape[1] != self.z_dim or z.shape[2] == 0:
            raise ValueError(f"latents must be [B, {self.z_dim}, T, h, w] with T >= 1, got shape {tuple(z.shape)}")
        z = z.to(self.dtype)
        tile = self.tile_size
        if tile is not None and max(z.shape[-2:]) * self.spatial_factor > tile:
            factor = self.spatial_factor
            video = _tiled(self._decode_untiled, z, tile // factor, self.tile_overlap // factor, factor)
        else:
            video = self._decode_untiled(z)
        return video.clamp(-1.0, 1.0) if clamp else video

    # --- latent normalisation -------------------------------------------------------------------------------

    def _latent_stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if z.ndim != 5 or z.shape[1] != self.z_dim:
            raise ValueError(f"latents must be [B, {self.z_dim}, T, h, w], got shape {tuple(z.shape)}")
        mean = torch.tensor(self.config.latents_mean, dtype=z.dtype, device=z.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.config.latents_std, dtype=z.dtype, device=z.device).view(1, -1, 1, 1, 1)
        return mean, std

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents -> the DiT's space: ``(z - latents_mean) / latents_std`` per channel."""
        mean, std = self._latent_stats(z)
        return (z - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: ``z * latents_std + latents_mean``."""
        mean, std = self._latent_stats(z)
        return z * std + mean

    # --- checkpoints ----------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, dtype: torch.dtype | str | None = None) -> "VideoVAE":
        """Load a diffusers-layout folder (config.json + safetensors), streaming weights into place."""
        config = cls.config_class.from_dict(read_config(folder), source=f"{folder}/config.json")
        with torch.device("meta"):
            vae = cls(config)
        vae.to_empty(device="cpu")
        dtype = parse_dtype(dtype)
        if dtype is not None:
            vae.to(dtype)
        load_weights(vae, folder)
        return vae

    def save_pretrained(self, folder: str | os.PathLike, max_shard_bytes: int = 5 * 1024**3) -> None:
        """Write ``config.json`` + safetensors in the diffusers layout."""
        save_weights(self, self.config.to_dict(), folder, max_shard_bytes=max_shard_bytes)
