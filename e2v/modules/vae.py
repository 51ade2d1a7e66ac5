"""The Wan2.1 3D causal video VAE: z 16, time /4 (frame 0 alone), space /8.

Parameter names equal diffusers' ``AutoencoderKLWan`` (``encoder.down_blocks.0.conv1.weight``, ...), so an official
``vae/`` folder loads directly with :func:`e2v.modules.weights.load_weights`.

Video runs through the network one time chunk at a time (encode: frame 0, then 4 frames per chunk; decode: one
latent frame per chunk, as the official model). Every causal convolution keeps the last input frames it saw in a
:class:`CausalCache`, so the result equals a whole-video pass while activation memory stays that of one chunk.
Spatial tiling (overlapping tiles, linear blending) bounds memory for large frames.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from e2v.modules.video_vae import VideoVAE, check_latent_statistics, config_from_dict
from e2v.modules.weights import parse_dtype
from e2v.registry import register

WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass
class WanVAEConfig:
    """Architecture of the Wan VAE; field names equal the ``config.json`` keys of diffusers' ``AutoencoderKLWan``."""

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    attn_scales: list[float] = field(default_factory=list)
    temperal_downsample: list[bool] = field(default_factory=lambda: [False, True, True])
    dropout: float = 0.0
    latents_mean: list[float] = field(default_factory=lambda: list(WAN21_LATENTS_MEAN))
    latents_std: list[float] = field(default_factory=lambda: list(WAN21_LATENTS_STD))
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int | None = 4
    scale_factor_spatial: int | None = 8

    def __post_init__(self) -> None:
        self.dim_mult, self.attn_scales = list(self.dim_mult), list(self.attn_scales)
        self.temperal_downsample = list(self.temperal_downsample)
        self.latents_mean, self.latents_std = list(self.latents_mean), list(self.latents_std)
        if self.is_residual or self.patch_size is not None:
            raise ValueError("is_residual / patch_size describe the Wan2.2 VAE; e2v implements the Wan2.1 VAE only")
        if self.attn_scales:
            raise ValueError(f"attn_scales must be [] (as every Wan2.1 VAE), got {self.attn_scales}")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temperal_downsample needs one entry per downsampling level ({len(self.dim_mult) - 1}), "
                f"got {self.temperal_downsample}"
            )
        check_latent_statistics(self)

    @classmethod
    def from_dict(cls, config: dict[str, Any], source: str = "config") -> "WanVAEConfig":
        """From a diffusers ``config.json`` dict; keys starting with ``_`` (``_class_name``, ...) are ignored."""
        return config_from_dict(cls, config, source, "AutoencoderKLWan")

    def to_dict(self) -> dict[str, Any]:
        """The diffusers ``config.json`` content (loadable by ``AutoencoderKLWan.from_pretrained`` too)."""
        return {"_class_name": "AutoencoderKLWan", **asdict(self)}


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        base_dim=16,  # 16 beats 8 on CPU: oneDNN kernels for 8 channels are slower
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        latents_mean=[0.0] * 16,
        latents_std=[1.0] * 16,
    ),
    "wan2.1": {},
}


class CausalCache:
    """State carried between time chunks: the last input frames of each causal layer, keyed by the layer."""

    def __init__(self) -> None:
        self.frames: dict[nn.Module, torch.Tensor] = {}
        self.first_chunk = True


class CausalConv3d(nn.Conv3d):
    """3D convolution, causal in time: ``padding=(p_t, p_h, p_w)`` becomes ``2 p_t`` frames of left context.

    The context is the cached last frames of the previous chunk (zeros at the start of the video); spatial
    padding is the convolution's own. ``[B, C, T, H, W] -> [B, C', T', H', W']``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0) -> None:
        padding = nn.modules.utils._triple(padding)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=(0, *padding[1:]))
        self.context = 2 * padding[0]

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        if self.context:
            past = cache.frames.get(self) if cache is not None else None
            if past is None:
                past = x.new_zeros(*x.shape[:2], self.context, *x.shape[3:])
            x = torch.cat([past, x], dim=2)
            if cache is not None:
                cache.frames[self] = x[:, :, -self.context :].clone()
        return super().forward(x)


class RMSNorm(nn.Module):
    """Channel RMS norm (``F.normalize`` over dim 1 times ``sqrt(dim) * gamma``), computed in fp32 for half inputs."""

    def __init__(self, dim: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *[1] * spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalized = F.normalize(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, dim=1)
        return normalized.to(x.dtype) * (self.gamma * self.scale)


class FrameConv2d(nn.Conv2d):
    """A 2D convolution applied to every frame of ``[B, C, T, H, W]`` (frames batched; faster than 1xkxk conv3d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.view(b, t, *y.shape[1:]).transpose(1, 2)


class FrameUpsample(nn.Module):
    """Nearest 2x spatial upsampling of every frame: ``[B, C, T, H, W] -> [B, C, T, 2H, 2W]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest-exact")


class ResidualBlock(nn.Module):
    """(RMSNorm, SiLU, causal 3x3x3 conv) x 2 with dropout before the second conv, plus a 1x1x1 shortcut."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = RMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = RMSNorm(out_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))), cache)
        return h + self.conv_shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention within each frame (no mixing in time), residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, spatial_dims=2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames)).flatten(2).transpose(1, 2).unsqueeze(1)  # [bt, 1, hw, 3c]
        out = F.scaled_dot_product_attention(*qkv.chunk(3, dim=-1))
        out = self.proj(out.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w))
        return x + out.view(b, t, c, h, w).transpose(1, 2)


class MidBlock(nn.Module):
    """Residual block, attention, residual block (the bottleneck of encoder and decoder)."""

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([AttentionBlock(dim)])
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim, dropout), ResidualBlock(dim, dim, dropout)])

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x, cache)), cache)


class Resample(nn.Module):
    """Spatial 2x down/upsampling of every frame, optionally with 2x in time.

    ``downsample3d``: a stride-2 time convolution over [last frame of the previous chunk, chunk]; the first chunk
    (frame 0) passes unchanged. ``upsample3d``: a causal time convolution doubles the channels, which become two
    frames per input frame; the first chunk (latent frame 0 -> pixel frame 0) is not doubled.
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(FrameUpsample(), FrameConv2d(dim, dim // 2, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), FrameConv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.mode == "upsample3d" and not cache.first_chunk:
            b, c, t, h, w = x.shape
            pairs = self.time_conv(x, cache).view(b, 2, c, t, h, w)
            x = pairs.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        x = self.resample(x)
        if self.mode == "downsample3d":
            past = cache.frames.get(self)
            cache.frames[self] = x[:, :, -1:].clone()
            if not cache.first_chunk:
                x = self.time_conv(torch.cat([past, x], dim=2))
        return x


class Encoder(nn.Module):
    """``[B, in_channels, 1 or 4, H, W]`` chunk -> ``[B, 2 z_dim, 1, H/8, W/8]`` (mean and log-variance)."""

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        dims = [config.base_dim * m for m in [1, *config.dim_mult]]
        self.conv_in = CausalConv3d(config.in_channels, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(config.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, config.dropout))
                in_dim = out_dim
            if level < len(config.temperal_downsample):
                blocks.append(Resample(out_dim, "downsample3d" if config.temperal_downsample[level] else "downsample2d"))
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(dims[-1], config.dropout)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 2 * config.z_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for block in self.down_blocks:
            x = block(x, cache)
        x = self.mid_block(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class UpBlock(nn.Module):
    """``num_res_blocks + 1`` residual blocks, then an optional :class:`Resample` (its channels halve)."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, dropout: float, mode: str | None) -> None:
        super().__init__()
        dims = [in_dim] + [out_dim] * (num_res_blocks + 1)
        self.resnets = nn.ModuleList(ResidualBlock(i, o, dropout) for i, o in zip(dims[:-1], dims[1:]))
        self.upsamplers = nn.ModuleList([Resample(out_dim, mode)]) if mode else None

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        return self.upsamplers[0](x, cache) if self.upsamplers is not None else x


class Decoder(nn.Module):
    """``[B, z_dim, 1, h, w]`` latent frame -> ``[B, out_channels, 1 (first chunk) or 4, 8h, 8w]``."""

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        base = config.decoder_base_dim or config.base_dim
        mults = config.dim_mult[::-1]
        dims = [base * m for m in [mults[0], *mults]]
        temporal_upsample = config.temperal_downsample[::-1]
        self.conv_in = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0], config.dropout)
        blocks = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            in_dim = in_dim // 2 if level > 0 else in_dim  # the previous level's upsampler halved the channels
            mode = None
            if level < len(temporal_upsample):
                mode = "upsample3d" if temporal_upsample[level] else "upsample2d"
            blocks.append(UpBlock(in_dim, out_dim, config.num_res_blocks, config.dropout, mode))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], config.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x, cache), cache)
        for block in self.up_blocks:
            x = block(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class WanVAE(VideoVAE):
    """Wan2.1 causal video VAE: ``encode [B,3,F,H,W] -> [B,z,(F-1)/4+1,H/8,W/8]``, ``decode`` the inverse.

    Latents from :meth:`encode` are raw (unnormalised); :meth:`normalize` maps them to the DiT's space.
    """

    config_class = WanVAEConfig

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__(config)
        self.encoder = Encoder(config)
        self.quant_conv = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.post_quant_conv = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder(config)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.config.temperal_downsample)

    @property
    def spatial_factor(self) -> int:
        return 2 ** len(self.config.temperal_downsample)

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    def _encode_untiled(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 3, F, H, W] -> [B, 2 z, T, h, w]`` chunk by chunk: frame 0, then ``temporal_factor`` frames."""
        cache = CausalCache()
        moments = []
        rest = video[:, :, 1:].split(self.temporal_factor, dim=2) if video.shape[2] > 1 else ()
        for chunk in (video[:, :, :1], *rest):
            moments.append(self.encoder(chunk, cache))
            cache.first_chunk = False
        return self.quant_conv(torch.cat(moments, dim=2))

    # --- decoding -------------------------------------------------------------------------------------------

    def _decode_untiled(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, z, T, h, w] -> [B, 3, 1+4(T-1), 8h, 8w]`` one latent frame at a time (not clamped)."""
        z = self.post_quant_conv(z)
        cache = CausalCache()
        frames = []
        for latent_frame in z.split(1, dim=2):
            frames.append(self.decoder(latent_frame, cache))
            cache.first_chunk = False
        return torch.cat(frames, dim=2)

    @classmethod
    def from_preset(cls, name: str = "tiny", seed: int = 0, **overrides: Any) -> "WanVAE":
        """A VAE from a named config (``tiny``, ``wan2.1``) with field overrides, initialised from ``seed`` (the same
        weights on every build, so a recipe naming a random preset always means the same model)."""
        if name not in PRESETS:
            raise ValueError(f"unknown VAE preset {name!r}; presets: {', '.join(PRESETS)}")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return cls(WanVAEConfig(**{**PRESETS[name], **overrides}))


@register("vae", "wan")
def wan_vae(
    preset: str = "tiny",
    weights: str | None = None,
    dtype: str | torch.dtype | None = None,
    tile_size: int | None = None,
    tile_overlap: int = 64,
) -> WanVAE:
    """Wan2.1 causal video VAE: from a ``weights`` folder (diffusers ``vae/`` layout) or a random ``preset``."""
    if weights is not None:
        vae = WanVAE.from_pretrained(weights, dtype)
    else:
        vae = WanVAE.from_preset(preset)
        dtype = parse_dtype(dtype)
        if dtype is not None:
            vae.to(dtype)
    vae.enable_tiling(tile_size, tile_overlap)
    return vae
