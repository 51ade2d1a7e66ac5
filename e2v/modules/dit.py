"""Wan2.1 video DiT (the SkyReels-A2 backbone): text-to-video and image-to-video (multi-reference) variants.

Parameter names equal diffusers' ``WanTransformer3DModel``, so official ``transformer/`` folders load as they are.
Unlike the official code, image tokens (CLIP tokens of N >= 0 references, ``M = N * 257``) and text tokens (any
length ``L``) are separate inputs; ``image=None`` (or ``M = 0``) switches the image cross-attention off.

Graph (patch (1, 2, 2), dim = heads * head_dim)::

    latents [B, C_in, T, H, W] --Conv3d patch--> tokens [B, S, dim],  S = T * H/2 * W/2
    timestep [B] --sinusoid(freq_dim)--> time_embedder (Linear-SiLU-Linear) = temb [B, dim]  (fp32)
                 --SiLU--> time_proj --> modulation [B, 6, dim]                               (fp32)
    text [B, L, text_dim] --Linear-GELU(tanh)-Linear--> [B, L, dim]
    image [B, M, image_dim] --LayerNorm-Linear-GELU-Linear-LayerNorm--> [B, M, dim]
    each block: AdaLN(shift, scale) -> self-attn (RMSNorm q/k across heads, 3D RoPE) -> gated residual
                LayerNorm -> cross-attn(text via to_k/to_v) + cross-attn(image via add_k_proj/add_v_proj) -> residual
                AdaLN -> FFN (GELU tanh) -> gated residual
    head: LayerNorm + (shift, scale) from scale_shift_table + temb -> proj_out -> unpatchify [B, C_out, T, H, W]

Reusable pieces for step caches and sequence parallelism: :meth:`WanDiT.embed_inputs`, ``WanDiT.rope(grid)``
(cos/sin per token; slice rows for a token shard), :meth:`WanDiT.run_blocks` (or call ``blocks[i]`` directly with a
rope shard and an attention backend) and :meth:`WanDiT.head`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from e2v.modules.attention import BackendSpec, context_backend, resolve_backend
from e2v.modules.sequence_parallel import SequenceShards
from e2v.modules.weights import load_weights, parse_dtype, read_config, save_weights
from e2v.registry import Option, register
from e2v.typecheck import check_options, type_hints

# Parameters kept in fp32 by :meth:`WanDiT.to_dtype`: diffusers' ``_keep_in_fp32_modules`` plus ``time_proj``
# (the original Wan code computes the whole time embedding and modulation in fp32).
KEEP_FP32 = ("rope", "time_embedder", "time_proj", "scale_shift_table", "norm1", "norm2", "norm3")
# official checkpoint tensors the DiT does not use (diffusers' I2V cross-attention has an unused added-query norm)
UNUSED_OFFICIAL_KEYS = ("norm_added_q",)

Rope = tuple[torch.Tensor, torch.Tensor]
KV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class WanDiTConfig:
    """Hyper-parameters, with the key names of diffusers' ``WanTransformer3DModel`` config.json."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: Optional[int] = 16  # None: in_channels (diffusers)
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: Optional[str] = "rms_norm_across_heads"
    eps: float = 1e-6
    image_dim: Optional[int] = None
    added_kv_proj_dim: Optional[int] = None
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: Optional[int] = None

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        check_options("WanDiT config", values, type_hints(type(self)))
        self.patch_size = tuple(self.patch_size)
        if self.out_channels is None:  # diffusers: out_channels defaults to in_channels
            self.out_channels = self.in_channels
        problems = []
        if len(self.patch_size) != 3:
            problems.append(f"patch_size must have 3 entries (t, h, w), got {self.patch_size}")
        if self.attention_head_dim % 2:
            problems.append(f"attention_head_dim must be even for RoPE, got {self.attention_head_dim}")
        if self.qk_norm != "rms_norm_across_heads":
            problems.append(f"qk_norm {self.qk_norm!r} is not supported; Wan2.1 uses 'rms_norm_across_heads'")
        if self.pos_embed_seq_len is not None:
            problems.append("pos_embed_seq_len (Wan FLF2V image position embedding) is not supported")
        if (self.image_dim is None) != (self.added_kv_proj_dim is None):
            problems.append("image_dim and added_kv_proj_dim must be set together (image branch) or both be None")
        if self.added_kv_proj_dim is not None and self.added_kv_proj_dim != self.dim:
            problems.append(f"added_kv_proj_dim must equal the model dim {self.dim}, got {self.added_kv_proj_dim}")
        if problems:
            raise ValueError("invalid WanDiTConfig: " + "; ".join(problems))

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def has_image_branch(self) -> bool:
        return self.image_dim is not None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "WanDiTConfig":
        """Config from a diffusers config.json dict; keys starting with ``_`` are metadata and ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in values if not k.startswith("_") and k not in known)
        if unknown:
            raise ValueError(f"unknown WanDiT config key(s) {unknown}; known keys: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """The diffusers-layout config.json payload."""
        values = dataclasses.asdict(self)
        values["patch_size"] = list(self.patch_size)
        return {"_class_name": "WanTransformer3DModel", **values}


_TINY = dict(
    num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
    rope_max_seq_len=256,
)
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(_TINY, in_channels=36, out_channels=16, image_dim=32, added_kv_proj_dim=32),  # image_dim = tiny CLIP
    "tiny-t2v": dict(_TINY, in_channels=16, out_channels=16),
    "wan2.1-t2v-1.3b": dict(
        num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
        freq_dim=256, ffn_dim=8960, num_layers=30,
    ),
    "wan2.1-i2v-14b": dict(
        num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16, text_dim=4096,
        freq_dim=256, ffn_dim=13824, num_layers=40, image_dim=1280, added_kv_proj_dim=5120,
    ),
}
PRESETS["a2-14b"] = PRESETS["wan2.1-i2v-14b"]


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype, autocast included; returns the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class GELUProjection(nn.Module):
    """Linear then GELU (diffusers' ``GELU`` activation module, parameter ``proj``)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    """``net.0`` = Linear+GELU, ``net.1`` = (dropout slot, identity), ``net.2`` = Linear: diffusers' names."""

    def __init__(self, dim: int, inner_dim: int, dim_out: int, approximate: str) -> None:
        super().__init__()
        self.net = nn.ModuleList([GELUProjection(dim, inner_dim, approximate), nn.Identity(), nn.Linear(inner_dim, dim_out)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class WanRotaryPosEmbed(nn.Module):
    """3D RoPE tables: head_dim split into t / h / w parts (h = w = 2 * (head_dim // 6), t = the rest), theta 1e4.

    Tables are real fp32 cos/sin per rotation pair (computed once in float64), non-persistent buffers.
    """

    def __init__(self, head_dim: int, patch_size: tuple[int, int, int], max_seq_len: int, theta: float = 1e4) -> None:
        super().__init__()
        self.head_dim, self.patch_size, self.max_seq_len, self.theta = head_dim, patch_size, max_seq_len, theta
        h_dim = w_dim = 2 * (head_dim // 6)
        self.axis_dims = (head_dim - h_dim - w_dim, h_dim, w_dim)
        self.register_buffer("freqs_cos", torch.empty(max_seq_len, head_dim // 2), persistent=False)
        self.register_buffer("freqs_sin", torch.empty(max_seq_len, head_dim // 2), persistent=False)
        self.reset_tables()

    @torch.no_grad()
    def reset_tables(self) -> None:
        """(Re)compute the cos/sin tables ``[max_seq_len, head_dim / 2]`` (after ``to_empty`` from meta)."""
        device = self.freqs_cos.device
        positions = torch.arange(self.max_seq_len, dtype=torch.float64, device=device)
        angles = torch.cat(
            [
                torch.outer(positions, 1.0 / self.theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d))
                for d in self.axis_dims
            ],
            dim=1,
        )
        self.freqs_cos.copy_(angles.cos())
        self.freqs_sin.copy_(angles.sin())

    def forward(self, grid: tuple[int, int, int]) -> Rope:
        """cos, signed sin ``[S, 1, head_dim]`` (fp32) for a token grid (T, H, W) in patches, S = T*H*W row-major.

        Each rotation angle appears twice (interleaved pairs): ``cos = (c0, c0, c1, c1, ...)`` and
        ``sin = (-s0, s0, -s1, s1, ...)``, the form :func:`apply_rope` consumes. Row ``i`` belongs to token ``i``,
        so a sequence-parallel rank slices the rows of its token shard.
        """
        if max(grid) > self.max_seq_len:
            raise ValueError(f"token grid {tuple(grid)} exceeds rope_max_seq_len {self.max_seq_len} on some axis")
        tables = []
        for table in (self.freqs_cos, self.freqs_sin):
            parts = table.float().split([d // 2 for d in self.axis_dims], dim=1)
            axes = [
                part[:n].view(*[n if i == axis else 1 for i in range(3)], -1).expand(*grid, -1)
                for axis, (part, n) in enumerate(zip(parts, grid))
            ]
            tables.append(torch.cat(axes, dim=-1).reshape(-1, 1, self.head_dim // 2))
        cos, sin = tables
        return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs ``(x0, x1)`` of ``x [B, S, H, D]`` to ``(x0 c - x1 s, x0 s + x1 c)`` in fp32.

    ``cos, sin [S, 1, D]`` come from :class:`WanRotaryPosEmbed`; returns x's dtype.
    """
    x32 = x.float()
    swapped = x32.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x1, x0, x3, x2, ...)
    return torch.addcmul(x32 * cos, swapped, sin).to(x.dtype)


def fused_linear(x: torch.Tensor, *layers: nn.Linear) -> tuple[torch.Tensor, ...]:
    """Several linear layers on the same input as one matmul (e.g. q, k, v); returns one output per layer.

    Layers that are not plain ``nn.Linear`` (e.g. bitsandbytes int8 / nf4 after quantisation) run one by one.
    """
    if any(type(layer) is not nn.Linear for layer in layers):
        return tuple(layer(x) for layer in layers)
    weight = torch.cat([layer.weight for layer in layers])
    bias = torch.cat([layer.bias for layer in layers])
    return F.linear(x, weight, bias).split([layer.out_features for layer in layers], dim=-1)


class WanAttention(nn.Module):
    """Self-attention (with RoPE) or cross-attention (text, plus image tokens via ``add_k_proj``/``add_v_proj``)."""

    context_cache: Optional["ContextCache"] = None  # set by WanDiT.cache_context: context keys/values memoised

    def __init__(self, dim: int, heads: int, eps: float, added_kv_proj_dim: Optional[int] = None) -> None:
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Identity()])
        self.norm_q, self.norm_k = nn.RMSNorm(dim, eps=eps), nn.RMSNorm(dim, eps=eps)
        self.add_k_proj = self.add_v_proj = None
        if added_kv_proj_dim is not None:
            self.add_k_proj = nn.Linear(added_kv_proj_dim, dim)
            self.add_v_proj = nn.Linear(added_kv_proj_dim, dim)
            self.norm_added_k = nn.RMSNorm(dim, eps=eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(2, (self.heads, -1))

    def self_attention(self, x: torch.Tensor, rope: Rope, backend: BackendSpec = "sdpa") -> torch.Tensor:
        """``x [B, S, dim]`` with rope cos/sin for these S tokens -> ``[B, S, dim]``."""
        q, k, v = fused_linear(x, self.to_q, self.to_k, self.to_v)
        q = apply_rope(self._heads(self.norm_q(q)), *rope)
        k = apply_rope(self._heads(self.norm_k(k)), *rope)
        out = resolve_backend(backend)(q, k, self._heads(v))
        return self.to_out[0](out.flatten(2))

    def cross_attention(
        self, x: torch.Tensor, text: torch.Tensor, image: Optional[torch.Tensor], backend: BackendSpec = "sdpa"
    ) -> torch.Tensor:
        """``x [B, S, dim]`` attends to ``text [B, L, dim]`` and, when given, ``image [B, M, dim]``; outputs summed."""
        attend = resolve_backend(backend)
        q = self._heads(self.norm_q(self.to_q(x)))
        if self.context_cache is None:
            text_kv, image_kv = self.context_kv(text, image)
        else:
            text_kv, image_kv = self.context_cache.keys_values(
                self, (text, image), lambda: self.context_kv(text, image)
            )
        out = attend(q, *text_kv)
        if image_kv is not None:
            out = out + attend(q, *image_kv)
        return self.to_out[0](out.flatten(2))

    def context_kv(self, text: torch.Tensor, image: Optional[torch.Tensor]) -> tuple[KV, Optional[KV]]:
        """Cross-attention keys and values ``[B, L | M, heads, head_dim]``: of ``text [B, L, dim]`` (to_k / to_v,
        norm_k) and, when given, of ``image [B, M, dim]`` (add_k_proj / add_v_proj, norm_added_k)."""
        k, v = fused_linear(text, self.to_k, self.to_v)
        text_kv = (self._heads(self.norm_k(k)), self._heads(v))
        if image is None:
            return text_kv, None
        k, v = fused_linear(image, self.add_k_proj, self.add_v_proj)
        return text_kv, (self._heads(self.norm_added_k(k)), self._heads(v))


class WanTransformerBlock(nn.Module):
    """One DiT block; ``modulation [B, 6, dim]`` fp32 (time projection), rope for the tokens of ``x``."""

    def __init__(self, config: WanDiTConfig) -> None:
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = WanAttention(dim, config.num_attention_heads, eps)
        self.attn2 = WanAttention(dim, config.num_attention_heads, eps, config.added_kv_proj_dim)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        self.ffn = FeedForward(dim, config.ffn_dim, dim, approximate="tanh")
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        image: Optional[torch.Tensor],
        modulation: torch.Tensor,
        rope: Rope,
        attention: BackendSpec = "sdpa",
    ) -> torch.Tensor:
        """``x [B, S, dim]`` (a whole sequence or a token shard) -> ``[B, S, dim]``."""
        shift, scale, gate, ffn_shift, ffn_scale, ffn_gate = (self.scale_shift_table + modulation.float()).chunk(6, dim=1)
        attend = resolve_backend(attention)
        h = torch.addcmul(shift, self.norm1(x.float()), 1 + scale).to(x.dtype)
        x = torch.addcmul(x.float(), self.attn1.self_attention(h, rope, attend), gate).to(x.dtype)
        x = x + self.attn2.cross_attention(self.norm2(x.float()).to(x.dtype), text, image, context_backend(attend))
        h = torch.addcmul(ffn_shift, self.norm3(x.float()), 1 + ffn_scale).to(x.dtype)
        return torch.addcmul(x.float(), self.ffn(h).float(), ffn_gate).to(x.dtype)


class TimestepEmbedding(nn.Module):
    """Linear-SiLU-Linear on the sinusoidal timestep features (diffusers names ``linear_1``, ``linear_2``)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(in_dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TextProjection(nn.Module):
    """Linear-GELU(tanh)-Linear from text_dim to dim."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(in_dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))


class ImageEmbedding(nn.Module):
    """LayerNorm - Linear-GELU-Linear - LayerNorm from image_dim (CLIP tokens) to dim."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.norm1 = FP32LayerNorm(in_dim)
        self.ff = FeedForward(in_dim, in_dim, dim, approximate="none")
        self.norm2 = FP32LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.ff(self.norm1(x)))


def timestep_features(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features ``[B, dim]`` (fp32, cos first) of ``timestep [B]`` in [0, 1000]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half)
    angles = timestep.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class ConditionEmbedder(nn.Module):
    """Time, text and image embedders (diffusers' ``condition_embedder``)."""

    def __init__(self, config: WanDiTConfig) -> None:
        super().__init__()
        dim = config.dim
        self.freq_dim = config.freq_dim
        self.time_embedder = TimestepEmbedding(config.freq_dim, dim)
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = TextProjection(config.text_dim, dim)
        self.image_embedder = ImageEmbedding(config.image_dim, dim) if config.has_image_branch else None

    def time(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``timestep [B]`` -> temb ``[B, dim]`` and modulation ``[B, 6, dim]``, both fp32.

        Computed in the time layers' own dtype (fp32 unless the whole DiT was cast) with autocast off, so a bf16
        autocast region does not round the time embedding."""
        weight = self.time_embedder.linear_1.weight
        with torch.autocast(timestep.device.type, enabled=False):
            temb = self.time_embedder(timestep_features(timestep, self.freq_dim).to(weight.dtype)).float()
            modulation = self.time_proj(F.silu(temb).to(self.time_proj.weight.dtype)).float()
        return temb, modulation.unflatten(1, (6, -1))


@dataclass
class DiTInputs:
    """Embedded inputs shared by all blocks: ``tokens [B, S, dim]`` for token ``grid`` (T, H, W) in patches,
    ``temb [B, dim]`` and ``modulation [B, 6, dim]`` (fp32), ``text [B, L, dim]``, ``image [B, M, dim]`` or None."""

    tokens: torch.Tensor
    grid: tuple[int, int, int]
    temb: torch.Tensor
    modulation: torch.Tensor
    text: torch.Tensor
    image: Optional[torch.Tensor]


def _same_values(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


class ContextCache:
    """Memo of the cross-attention context for :meth:`WanDiT.cache_context`.

    The embedded text / image tokens are found by value: the raw inputs are compared with stored copies, so a new
    tensor holding the same values hits (a CFG-parallel rank's share of the branches is re-indexed every step) and
    an in-place change misses. Each block's keys / values are found by the identity (and version) of the embedded
    tensors they were computed from, which the cache keeps alive.
    """

    def __init__(self) -> None:
        self.embedded: list[tuple[tuple, Any]] = []  # (copies of the raw inputs, embedded tensors)
        self.kv: dict[tuple, tuple[tuple, Any]] = {}  # (owner, ids and versions of its inputs) -> (inputs, result)

    def embed(self, inputs: tuple[Optional[torch.Tensor], ...], compute: Callable[[], Any]) -> Any:
        """``compute()`` for raw ``inputs`` not seen (by value) before; the stored result otherwise."""
        for copies, result in self.embedded:
            if all(_same_values(a, b) for a, b in zip(copies, inputs)):
                return result
        result = compute()
        self.embedded.append((tuple(None if t is None else t.detach().clone() for t in inputs), result))
        return result

    def keys_values(
        self, owner: nn.Module, inputs: tuple[Optional[torch.Tensor], ...], compute: Callable[[], Any]
    ) -> Any:
        """``compute()`` the first time ``owner`` sees these very ``inputs``; the stored result afterwards."""
        key = (id(owner), *((id(t), None if t is None else t._version) for t in inputs))
        if key not in self.kv:
            self.kv[key] = (inputs, compute())
        return self.kv[key][1]


class WanDiT(nn.Module):
    """Wan2.1 / SkyReels-A2 DiT; ``forward(latents, timestep, text, image=None) -> [B, C_out, T, H, W]``."""

    context_cache: Optional[ContextCache] = None  # set inside cache_context

    def __init__(self, config: WanDiTConfig, attention: BackendSpec = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.attention = attention
        self.gradient_checkpointing: bool | set[int] = False
        dim = config.dim
        self.rope = WanRotaryPosEmbed(config.attention_head_dim, config.patch_size, config.rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(config.in_channels, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.condition_embedder = ConditionEmbedder(config)
        self.blocks = nn.ModuleList(WanTransformerBlock(config) for _ in range(config.num_layers))
        self.norm_out = FP32LayerNorm(dim, config.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, config.out_channels * math.prod(config.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    # ----------------------------------------------------------------------------------------------- pieces
    def embed_inputs(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        image: Optional[torch.Tensor] = None,
    ) -> DiTInputs:
        """Patchify ``latents [B, C_in, T, H, W]`` and embed ``timestep [B]``, ``text [B, L, text_dim]`` and
        ``image [B, M, image_dim]`` (None or M = 0: no image branch)."""
        cfg = self.config
        batch, channels, *size = latents.shape
        if latents.ndim != 5 or channels != cfg.in_channels:
            raise ValueError(f"latents must be [B, {cfg.in_channels}, T, H, W], got {tuple(latents.shape)}")
        if any(s % p for s, p in zip(size, cfg.patch_size)):
            raise ValueError(f"latent size {tuple(size)} is not divisible by patch_size {cfg.patch_size}")
        if text.ndim != 3 or text.shape[0] != batch or text.shape[2] != cfg.text_dim:
            raise ValueError(f"text must be [{batch}, L, {cfg.text_dim}], got {tuple(text.shape)}")
        if image is not None and image.shape[1] == 0:
            image = None
        if image is not None:
            if not cfg.has_image_branch:
                raise ValueError("this DiT has no image branch (image_dim is None) but image tokens were given")
            if image.ndim != 3 or image.shape[0] != batch or image.shape[2] != cfg.image_dim:
                raise ValueError(f"image must be [{batch}, M, {cfg.image_dim}], got {tuple(image.shape)}")
        timestep = timestep.reshape(-1).expand(batch) if timestep.numel() == 1 else timestep
        if timestep.shape != (batch,):
            raise ValueError(f"timestep must be [{batch}], got {tuple(timestep.shape)}")

        weight = self.patch_embedding.weight
        tokens = self.patch_embedding(latents.to(weight.dtype))
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2).contiguous()
        embedder = self.condition_embedder
        temb, modulation = embedder.time(timestep)
        text, image = self.embed_context(text, image)
        return DiTInputs(tokens, grid, temb, modulation, text, image)

    def embed_context(
        self, text: torch.Tensor, image: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Embedded ``text [B, L, dim]`` and ``image [B, M, dim]`` (or None) from the raw ``text [B, L, text_dim]``
        and ``image [B, M, image_dim]``; memoised inside :meth:`cache_context`."""

        def embed() -> tuple[torch.Tensor, Optional[torch.Tensor]]:
            embedder = self.condition_embedder
            embedded = embedder.text_embedder(text.to(embedder.text_embedder.linear_1.weight.dtype))
            if image is None:
                return embedded, None
            return embedded, embedder.image_embedder(image.to(embedder.image_embedder.ff.net[2].weight.dtype))

        return embed() if self.context_cache is None else self.context_cache.embed((text, image), embed)

    @contextlib.contextmanager
    def cache_context(self) -> Iterator[None]:
        """Inside the block the cross-attention context (embedded text / image tokens, and every block's keys and
        values) is computed once per distinct input tensor and reused by later forwards: a sampling loop computes
        it at its first step only, for all guidance branches of the batch at once. Exact (the same tensors)."""
        cache = ContextCache()
        users = [self] + [block.attn2 for block in self.blocks]
        for user in users:
            user.context_cache = cache
        try:
            yield
        finally:
            for user in users:
                user.context_cache = None

    def run_blocks(
        self,
        tokens: torch.Tensor,
        inputs: DiTInputs,
        rope: Rope,
        attention: Optional[BackendSpec] = None,
        blocks: Optional[Iterable[int]] = None,
    ) -> torch.Tensor:
        """Run ``blocks`` (indices, default all) on ``tokens [B, S, dim]`` with rope cos/sin for those tokens."""
        attend = resolve_backend(self.attention if attention is None else attention)
        for index in range(len(self.blocks)) if blocks is None else blocks:
            block = self.blocks[index]
            args = (tokens, inputs.text, inputs.image, inputs.modulation, rope, attend)
            if torch.is_grad_enabled() and self._checkpointed(index):
                tokens = checkpoint(block, *args, use_reentrant=False)
            else:
                tokens = block(*args)
        return tokens

    def head(self, tokens: torch.Tensor, temb: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Output norm + modulation, projection and unpatchify: ``[B, S, dim] -> [B, C_out, T, H, W]``."""
        return self.unpatchify(self.head_tokens(tokens, temb), grid)

    def head_tokens(self, tokens: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Output norm + modulation and projection, token by token: ``[B, S, dim] -> [B, S, C_out * prod(patch)]``."""
        shift, scale = (self.scale_shift_table + temb.float().unsqueeze(1)).chunk(2, dim=1)
        return self.proj_out(torch.addcmul(shift, self.norm_out(tokens.float()), 1 + scale).to(tokens.dtype))

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``[B, S, C_out * prod(patch)]`` for token ``grid`` (T, H, W) -> ``[B, C_out, T * pt, H * ph, W * pw]``."""
        (pt, ph, pw), (t, h, w) = self.config.patch_size, grid
        tokens = tokens.reshape(tokens.shape[0], t, h, w, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return tokens.reshape(tokens.shape[0], -1, t * pt, h * ph, w * pw)

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        image: Optional[torch.Tensor] = None,
        attention: Optional[BackendSpec] = None,
        sequence: Optional[SequenceShards] = None,
    ) -> torch.Tensor:
        """Velocity ``[B, C_out, T, H, W]`` for ``latents [B, C_in, T, H, W]``, ``timestep [B]`` in [0, 1000],
        ``text [B, L, text_dim]`` and ``image [B, M, image_dim]`` (M = N * tokens per reference, N >= 0).

        ``sequence``: run the blocks on this rank's token shard of a sequence-parallel group
        (:class:`~e2v.modules.sequence_parallel.SequenceShards`); every rank of the group returns the whole output."""
        inputs = self.embed_inputs(latents, timestep, text, image)
        tokens, rope = inputs.tokens, self.rope(inputs.grid)
        attention = self.attention if attention is None else attention
        if sequence is not None:
            tokens, rope, attention = sequence.shard(tokens, rope, attention)
        tokens = self.head_tokens(self.run_blocks(tokens, inputs, rope, attention), inputs.temb)
        if sequence is not None:
            tokens = sequence.gather(tokens, inputs.tokens.shape[1])
        return self.unpatchify(tokens, inputs.grid)

    # ------------------------------------------------------------------------------------------- switches
    def _checkpointed(self, index: int) -> bool:
        flag = self.gradient_checkpointing
        return flag if isinstance(flag, bool) else index in flag

    def set_gradient_checkpointing(self, enabled: bool | Iterable[int] = True) -> "WanDiT":
        """Checkpoint every block (True), none (False) or the blocks with the given indices."""
        self.gradient_checkpointing = enabled if isinstance(enabled, bool) else set(enabled)
        return self

    def to_dtype(self, dtype: torch.dtype | str) -> "WanDiT":
        """Cast parameters to ``dtype`` except those in :data:`KEEP_FP32` (and the RoPE tables), which stay fp32."""
        dtype = parse_dtype(dtype)
        for name, param in self.named_parameters():
            keep = any(part in KEEP_FP32 for part in name.split("."))
            param.data = param.data.to(torch.float32 if keep else dtype)
        return self

    # ----------------------------------------------------------------------------------------- build / IO
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "WanDiT":
        """A randomly initialised model from a named preset (see :data:`PRESETS`) with config overrides."""
        if name not in PRESETS:
            raise KeyError(f"unknown WanDiT preset {name!r}; presets: {', '.join(PRESETS)}")
        return cls(WanDiTConfig.from_dict({**PRESETS[name], **overrides}))

    @classmethod
    def from_pretrained(cls, folder: str, dtype: torch.dtype | str | None = None) -> "WanDiT":
        """Load a diffusers-layout ``transformer/`` folder; parameters in ``dtype`` (default fp32, see to_dtype).

        The model is built on the meta device and filled shard by shard: peak host memory ~ model + one shard.
        """
        config = WanDiTConfig.from_dict(read_config(folder))
        with torch.device("meta"):
            model = cls(config)
        model.to_dtype(torch.float32 if dtype is None else dtype)
        model.to_empty(device="cpu")
        model.rope.reset_tables()
        load_weights(model, folder, ignore_unexpected=UNUSED_OFFICIAL_KEYS)
        return model

    def save_pretrained(self, folder: str, max_shard_bytes: int = 5 * 1024**3) -> None:
        """Write diffusers-layout config.json + safetensors (sharded with an index past ``max_shard_bytes``)."""
        save_weights(self, self.config.to_dict(), folder, max_shard_bytes=max_shard_bytes)


def config_options(given: Mapping[str, Any]) -> dict[str, Option]:
    """The :class:`WanDiTConfig` keys the ``wan`` DiT accepts as options; their defaults are the preset's values
    (none when ``weights`` is given: the folder's config.json decides, and overrides are refused)."""
    hints = type_hints(WanDiTConfig)
    resolved: dict[str, Any] = {}
    if given.get("weights") is None and given.get("pretrained") is None and given.get("preset", "tiny") in PRESETS:
        resolved = WanDiTConfig.from_dict(PRESETS[given.get("preset", "tiny")]).to_dict()
    return {
        f.name: Option(f.name, hints.get(f.name, Any), resolved.get(f.name, Option.REQUIRED))
        for f in dataclasses.fields(WanDiTConfig)
    }


@register("dit", "wan", extra_options=config_options)
def build_wan_dit(
    preset: str = "tiny",
    weights: Optional[str] = None,
    pretrained: Optional[str] = None,
    dtype: torch.dtype | str | None = None,
    attention: BackendSpec = "sdpa",
    gradient_checkpointing: bool | Iterable[int] = False,
    **overrides: Any,
) -> WanDiT:
    """Wan2.1 / SkyReels-A2 DiT from a preset (+ config overrides), a diffusers ``transformer/`` folder (``weights``)
    or a shipped asset (``pretrained``, e.g. ``tiny-world-base``)."""
    if pretrained is not None:
        if weights is not None:
            raise ValueError("give either pretrained (a shipped asset name) or weights (a folder), not both")
        from e2v.assets import shipped_folder

        weights = str(shipped_folder("dit", pretrained))
    if weights is not None:
        if overrides:
            raise ValueError(f"config overrides {sorted(overrides)} cannot be combined with weights={weights!r}")
        model = WanDiT.from_pretrained(weights, dtype)
    else:
        model = WanDiT.from_preset(preset, **overrides)
        if dtype is not None:
            model.to_dtype(dtype)
    model.attention = attention
    return model.set_gradient_checkpointing(gradient_checkpointing)
