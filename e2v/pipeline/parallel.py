"""Multi-device sampling: CFG-parallel (guidance branches on different ranks) x Ulysses sequence parallel.

The world (``torch.distributed``, NCCL on GPUs, gloo on CPUs) is split into ``cfg`` groups of ``sp`` ranks each
(rank = cfg_index * sp + sp_index). Every rank holds the whole model.

- CFG-parallel: the G guidance branches of a step are split over the cfg groups (branch ``i`` on group
  ``i // ceil(G / cfg)``); the velocities are all-gathered afterwards.
- Sequence parallel (DeepSpeed-Ulysses, :mod:`e2v.modules.sequence_parallel`, shared with training): the DiT's
  video tokens ``[B, S, dim]`` and their RoPE rows are split into ``sp`` contiguous shards; inside self-attention an
  all-to-all trades the sequence split for a head split (``[B, S/sp, H, D] -> [B, S, H/sp, D]``), attention runs on
  full sequences for ``H/sp`` heads, and a second all-to-all trades back. Cross-attention attends from each rank's
  own queries to the whole text / image context, which every rank holds. Needs ``S`` (here; training pads) and the
  head count divisible by ``sp``.

Usage (under ``torchrun``)::

    dist.init_process_group("nccl")
    pipe = E2VPipeline.from_weights(folder, parallel=ParallelConfig.from_world(cfg=2))
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist

from e2v.modules.sequence_parallel import SequenceShards


class ParallelConfig:
    """Process groups and the sharding / gathering steps used by :class:`~e2v.pipeline.pipeline.E2VPipeline`."""

    def __init__(self, cfg_group=None, sp_group=None) -> None:
        self.cfg_group, self.sp_group = cfg_group, sp_group
        self.cfg_size = dist.get_world_size(cfg_group) if cfg_group is not None else 1
        self.sp_size = dist.get_world_size(sp_group) if sp_group is not None else 1

    @classmethod
    def from_world(cls, cfg: int = 1) -> "ParallelConfig":
        """Split the initialised world into ``cfg`` CFG groups x ``world / cfg`` sequence-parallel ranks."""
        if not dist.is_initialized():
            raise RuntimeError("parallel sampling needs torch.distributed initialised (e.g. run under torchrun)")
        world, rank = dist.get_world_size(), dist.get_rank()
        if cfg < 1 or world % cfg:
            raise ValueError(f"the world size {world} is not divisible by cfg={cfg}")
        sp = world // cfg
        cfg_group = sp_group = None
        # new_group is collective: every rank creates every group, in the same order
        for index in range(sp):
            group = dist.new_group([c * sp + index for c in range(cfg)])
            if rank % sp == index:
                cfg_group = group
        for c in range(cfg):
            group = dist.new_group([c * sp + index for index in range(sp)])
            if rank // sp == c:
                sp_group = group
        return cls(cfg_group if cfg > 1 else None, sp_group if sp > 1 else None)

    # ---- CFG parallel ---------------------------------------------------------------------------------------
    def _branch_indices(self, count: int) -> list[int]:
        """The branches this rank computes: a contiguous slice padded (repeating its last index) to equal size."""
        per_rank = math.ceil(count / self.cfg_size)
        start = dist.get_rank(self.cfg_group) * per_rank
        indices = list(range(start, min(start + per_rank, count))) or [count - 1]
        return indices + [indices[-1]] * (per_rank - len(indices))

    def split_branches(self, condition: torch.Tensor, text: torch.Tensor, image: Optional[torch.Tensor]):
        """This rank's share of the guidance branches (all stacked along dim 0)."""
        if self.cfg_group is None:
            return condition, text, image
        self._branch_count = condition.shape[0]
        idx = self._branch_indices(self._branch_count)
        return condition[idx], text[idx], image[idx] if image is not None else None

    def gather_branches(self, out: torch.Tensor) -> torch.Tensor:
        """All branches' outputs ``[G, ...]`` from every rank's share."""
        if self.cfg_group is None:
            return out
        parts = [torch.empty_like(out) for _ in range(self.cfg_size)]
        dist.all_gather(parts, out.contiguous(), group=self.cfg_group)
        return torch.cat(parts)[: self._branch_count]

    # ---- sequence parallel ----------------------------------------------------------------------------------
    def shard_tokens(self, tokens: torch.Tensor, rope, dit):
        """This rank's contiguous token shard ``[B, S/sp, dim]``, its RoPE rows and the Ulysses attention."""
        if self.sp_group is None:
            return tokens, rope, dit.attention
        size = self.sp_size
        if tokens.shape[1] % size:
            raise ValueError(
                f"sequence parallel over {size} ranks needs the token count ({tokens.shape[1]} = latent frames x "
                f"height/16 x width/16) divisible by {size}; pick another resolution or frame count"
            )
        return SequenceShards(self.sp_group, loss_replicated=False).shard(tokens, rope, dit.attention)

    def gather_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The full sequence ``[B, S, dim]`` from every rank's shard."""
        if self.sp_group is None:
            return tokens
        return SequenceShards(self.sp_group, loss_replicated=False).gather(tokens, tokens.shape[1] * self.sp_size)

    def all_reduce_sp(self, sums: torch.Tensor) -> torch.Tensor:
        """Sum a small tensor over the sequence-parallel group (keeps step-cache decisions in sync)."""
        if self.sp_group is not None:
            dist.all_reduce(sums, group=self.sp_group)
        return sums
