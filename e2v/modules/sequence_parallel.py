"""Ulysses sequence parallelism for the DiT, for sampling and training (differentiable collectives).

A sequence-parallel (SP) group of ``P`` ranks shares one sample. The video tokens ``[B, S, dim]`` (patch order
t, h, w: the A2 layout's reference latent frames 0..N-1 are the first ``N * h * w`` tokens, held by the group's first
rank(s); temporal-append reference frames are the last tokens) are padded to a multiple of ``P`` and split into ``P``
contiguous shards; each rank runs every block on its shard. Self-attention trades the sequence split for a head
split with an all-to-all (``[B, S/P, H, D] -> [B, S, H/P, D]``, DeepSpeed-Ulysses), attends over the whole (unpadded)
sequence for its heads and trades back. Cross-attention needs no communication: every rank holds the whole text /
image context and attends from its own queries. The head's per-token output is all-gathered at the end.

Gradients: the all-to-alls are differentiable (their backward is the inverse all-to-all). In training every rank of
the group computes the same loss from the gathered output; the gather's backward passes each rank its own slice of the
gradient times ``P``, so a rank's parameter gradients are ``P`` x the part its tokens contribute, and the gradient
mean that FSDP2 / DDP take over all ``dp x sp`` ranks equals the mean over data-parallel ranks of each sample's
gradient (the SP partial gradients summed).

Needs the head count divisible by ``P``; the token count may be anything (padded tokens are left out of every
attention and cut from the output).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from e2v.modules.attention import AttentionFn, BackendSpec, resolve_backend
from e2v.registry import register

Rope = tuple[torch.Tensor, torch.Tensor]


def _exchange(chunks: list[torch.Tensor], group) -> list[torch.Tensor]:
    received = [torch.empty_like(chunks[0]) for _ in chunks]
    dist.all_to_all(received, [c.contiguous() for c in chunks], group=group)
    return received


class _AllToAll(torch.autograd.Function):
    """All-to-all of equal-shaped chunks; its backward sends each received chunk's gradient back to its sender (the
    same exchange). ``torch.distributed.nn``'s version falls back to scatters that fail on gloo subgroups."""

    @staticmethod
    def forward(ctx, group, *chunks: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.group = group
        return tuple(_exchange(list(chunks), group))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        return (None, *_exchange(list(grads), ctx.group))


def _all_to_all(chunks: list[torch.Tensor], group) -> list[torch.Tensor]:
    """All-to-all of equal-shaped chunks (chunk ``j`` goes to rank ``j``); differentiable when grad is on."""
    if torch.is_grad_enabled() and any(c.requires_grad for c in chunks):
        return list(_AllToAll.apply(group, *chunks))
    return _exchange(chunks, group)


def sequence_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """``[B, S/P, H, D]`` (this rank's tokens, all heads) -> ``[B, S, H/P, D]`` (all tokens, this rank's heads)."""
    size = dist.get_world_size(group)
    if x.shape[2] % size:
        raise ValueError(f"Ulysses sequence parallel needs the head count ({x.shape[2]}) divisible by {size}")
    return torch.cat(_all_to_all(list(x.chunk(size, dim=2)), group), dim=1)


def heads_to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    """Inverse of :func:`sequence_to_heads`: ``[B, S, H/P, D] -> [B, S/P, H, D]``."""
    return torch.cat(_all_to_all(list(x.chunk(dist.get_world_size(group), dim=1)), group), dim=2)


class UlyssesAttention:
    """Sequence-parallel wrapper of an attention backend: all-to-all q/k/v, attend over the first ``length`` tokens
    (the rest is padding; None: all), all-to-all back (padded rows of the output are zero)."""

    def __init__(self, base: AttentionFn, group=None, length: Optional[int] = None) -> None:
        self.base, self.group, self.length = base, group, length
        self.context_attention = base  # cross-attention: this rank's queries, the whole context (no communication)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (sequence_to_heads(x, self.group) for x in (q, k, v))
        padded, length = q.shape[1], self.length or q.shape[1]
        out = self.base(q[:, :length], k[:, :length], v[:, :length])
        if length < padded:
            out = F.pad(out, (0, 0, 0, 0, 0, padded - length))
        return heads_to_sequence(out, self.group)


@register("attention", "ulysses")
def ulysses_backend(base: BackendSpec = "sdpa", group=None) -> AttentionFn:
    """Ulysses sequence parallel around a base backend (process ``group``, default the whole world)."""
    return UlyssesAttention(resolve_backend(base), group)


class _GatherTokens(torch.autograd.Function):
    """All-gather of token shards along dim 1; backward: this rank's slice of the gradient times ``scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, scale: float) -> torch.Tensor:
        size, ctx.rank, ctx.group_scale = dist.get_world_size(group), dist.get_rank(group), scale
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.size = size
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.chunk(ctx.size, dim=1)[ctx.rank] * ctx.group_scale, None, None


class SequenceShards:
    """One SP group's token split: :meth:`shard` before the blocks, :meth:`gather` after the head's projection.

    ``loss_replicated``: every rank computes the loss from the gathered output (training), so the gather's backward
    scales this rank's gradient slice by the group size (see the module docstring); False (sampling): no scaling.
    """

    def __init__(self, group, loss_replicated: bool = True) -> None:
        self.group = group
        self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.scale = float(self.size) if loss_replicated else 1.0

    def padded(self, length: int) -> int:
        return -(-length // self.size) * self.size

    def _local(self, x: torch.Tensor, dim: int, value: float = 0.0) -> torch.Tensor:
        """This rank's contiguous shard of ``x`` along ``dim`` after padding it with ``value`` to a multiple of P: a
        copy, so the whole sequence is freed (a view would keep it alive as long as the shard)."""
        pad = self.padded(x.shape[dim]) - x.shape[dim]
        if pad:
            x = F.pad(x, (0, 0) * (x.ndim - 1 - dim) + (0, pad), value=value)
        return x.chunk(self.size, dim=dim)[self.rank].clone()

    def shard(self, tokens: torch.Tensor, rope: Rope, attention: BackendSpec) -> tuple[torch.Tensor, Rope, AttentionFn]:
        """This rank's tokens ``[B, S_pad/P, dim]``, their RoPE rows (padding rotates by 0) and the Ulysses wrapper of
        ``attention`` for the self-attention of ``S`` tokens."""
        cos, sin = rope
        local_rope = (self._local(cos, 0, 1.0), self._local(sin, 0, 0.0))
        ulysses = UlyssesAttention(resolve_backend(attention), self.group, length=tokens.shape[1])
        return self._local(tokens, 1), local_rope, ulysses

    def gather(self, tokens: torch.Tensor, length: int) -> torch.Tensor:
        """The first ``length`` tokens ``[B, length, C]`` of every rank's shard ``[B, S_pad/P, C]``."""
        return _GatherTokens.apply(tokens, self.group, self.scale)[:, :length]
