"""Attention backends: one function signature, picked by name through the registry.

Every backend takes ``q [B, Sq, heads, head_dim]``, ``k, v [B, Sk, heads, head_dim]`` and returns
``[B, Sq, heads, head_dim]`` (softmax attention, scale ``1/sqrt(head_dim)``, no mask). A backend is registered
(kind ``"attention"``) as a factory that takes the backend's options and returns the attention callable, so a
third party can add one, e.g. a sequence-parallel wrapper that all-to-alls q/k/v and calls a base backend::

    @register("attention", "ulysses")
    def ulysses(base="sdpa", group=None):
        inner = resolve_backend(base)
        return lambda q, k, v: gather_heads(inner(*scatter_heads(q, k, v, group)), group)

Built-in backends: ``sdpa`` (PyTorch ``scaled_dot_product_attention``, default), ``flash`` (``flash_attn``
on CUDA fp16/bf16, optional dependency) and ``chunked`` (exact, processes queries in chunks so memory grows
with ``chunk_size * Sk`` rather than ``Sq * Sk``).
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Union

import torch
import torch.nn.functional as F

from e2v import registry
from e2v.registry import register

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
BackendSpec = Union[str, Mapping, AttentionFn]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch SDPA on ``[B, S, heads, head_dim]`` tensors (it picks flash / memory-efficient / math kernels)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Exact attention over query chunks of ``chunk_size`` tokens: peak memory ~ ``chunk_size * Sk`` per head."""
    if q.shape[1] <= chunk_size:
        return sdpa_attention(q, k, v)
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    chunks = [
        F.scaled_dot_product_attention(chunk.transpose(1, 2), k, v).transpose(1, 2)
        for chunk in q.split(chunk_size, dim=1)
    ]
    return torch.cat(chunks, dim=1)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``flash_attn.flash_attn_func`` (FlashAttention 2); needs CUDA tensors in fp16 or bf16."""
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(
            f"the 'flash' attention backend needs CUDA fp16/bf16 tensors, got {q.dtype} on {q.device}; "
            "use the 'sdpa' backend on CPU or in fp32"
        )
    try:
        from flash_attn import flash_attn_func
    except ImportError as err:
        raise ImportError(
            "the 'flash' attention backend needs the flash_attn package (pip install flash-attn); "
            "the 'sdpa' backend uses PyTorch's own flash kernels without it"
        ) from err
    return flash_attn_func(q, k, v)


def context_backend(attention: AttentionFn) -> AttentionFn:
    """The backend for cross-attention to the text / image context: a backend's ``context_attention`` attribute
    when it has one (a sequence-parallel wrapper attends from each rank's own queries to the context every rank
    holds, with no communication), else the backend itself."""
    return getattr(attention, "context_attention", attention)


@register("attention", "sdpa")
def sdpa_backend() -> AttentionFn:
    """PyTorch scaled_dot_product_attention (default)."""
    return sdpa_attention


@register("attention", "chunked")
def chunked_backend(chunk_size: int = 1024) -> AttentionFn:
    """Exact attention over query chunks: memory bounded by chunk_size x key length."""
    if chunk_size < 1:
        raise ValueError(f"chunked attention needs chunk_size >= 1, got {chunk_size}")
    return functools.partial(chunked_attention, chunk_size=chunk_size)


@register("attention", "flash")
def flash_backend() -> AttentionFn:
    """flash_attn's flash_attn_func (CUDA fp16/bf16 only; optional dependency)."""
    return flash_attention


@functools.lru_cache(maxsize=None)
def _backend_by_name(name: str) -> AttentionFn:
    return registry.build("attention", name)


def resolve_backend(backend: BackendSpec) -> AttentionFn:
    """The attention callable for a backend name, a ``{"name": ..., **options}`` spec, or a callable."""
    if callable(backend):
        return backend
    if isinstance(backend, str):
        return _backend_by_name(backend)
    return registry.build("attention", backend)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: BackendSpec = "sdpa") -> torch.Tensor:
    """Softmax attention ``[B, Sq, H, D] x [B, Sk, H, D] -> [B, Sq, H, D]`` with the named backend."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"attention expects [B, S, heads, head_dim] tensors, got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    return resolve_backend(backend)(q, k, v)
