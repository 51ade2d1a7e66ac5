"""FSDP2 for the DiT: meta-device construction, per-block sharding with a mixed-precision policy, and sharded loading.

A DiT whose weights come from a folder is built on the meta device (:func:`meta_dit`: no memory, nothing read),
sharded with ``fully_shard`` per block and at the root (:func:`shard_dit`), then each rank allocates only its own
shards and fills them from the folder, reading only its slice of each tensor (:func:`materialize_dit`). Peak host
memory per rank is about its shards (1 / world of the model) plus one tensor slice, instead of the whole model on
every rank.

Precision (:class:`ShardingPolicy`, the recipe's ``fsdp`` keys): parameters are stored as built (fp32 master
weights unless the DiT spec sets a dtype), all-gathered and computed in ``param_dtype`` (bf16) and gradients are
reduce-scattered in ``reduce_dtype`` (fp32). The DiT's fp32 islands, the modules named in
:data:`e2v.modules.dit.KEEP_FP32` that own parameters (time embedding, time projection, affine norms), are sharded
as their own groups gathered in fp32, and they run with autocast off. The ``scale_shift_table`` modulation tables
are parameters of their block (FSDP2 groups by module), so they are gathered in ``param_dtype``; the modulation
arithmetic itself stays in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, TypedDict

import torch
from torch import nn

from e2v import registry
from e2v.modules.dit import KEEP_FP32, UNUSED_OFFICIAL_KEYS, WanDiT, WanDiTConfig
from e2v.modules.weights import load_weights, parse_dtype, read_config


class FSDPOptions(TypedDict, total=False):
    """The recipe's ``fsdp`` mapping (checked when the recipe is parsed); see :class:`ShardingPolicy`."""

    param_dtype: Optional[str]
    reduce_dtype: Optional[str]
    reshard_after_forward: bool


@dataclass(frozen=True)
class ShardingPolicy:
    """FSDP2 settings. ``param_dtype``: dtype of the all-gathered parameters and of the compute (None: as stored);
    ``reduce_dtype``: dtype of the gradient reduce-scatter (None: the parameters'); ``reshard_after_forward``: free
    the gathered parameters after each forward (False keeps them until backward: one all-gather less, more memory)."""

    param_dtype: Optional[torch.dtype] = torch.bfloat16
    reduce_dtype: Optional[torch.dtype] = torch.float32
    reshard_after_forward: bool = True

    @classmethod
    def from_options(cls, options: Optional[Mapping[str, Any]]) -> "ShardingPolicy":
        """The policy of a recipe's ``fsdp`` mapping; unknown keys or dtypes raise a ValueError naming them."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(FSDPOptions.__annotations__))
        if unknown:
            raise ValueError(f"fsdp: unknown key(s) {unknown}; known: {', '.join(FSDPOptions.__annotations__)}")
        values: dict[str, Any] = {}
        for key in ("param_dtype", "reduce_dtype"):
            if key in options:
                try:
                    values[key] = parse_dtype(options[key])
                except ValueError as err:
                    raise ValueError(f"fsdp.{key}: {err}") from None
        if "reshard_after_forward" in options:
            values["reshard_after_forward"] = bool(options["reshard_after_forward"])
        return cls(**values)

    def mixed_precision(self, param_dtype: Optional[torch.dtype] = None):
        """The ``MixedPrecisionPolicy``; inputs are not cast (the DiT casts its own: FSDP's cast would round the
        fp32 timestep, modulation and RoPE tables to ``param_dtype``)."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(param_dtype=param_dtype or self.param_dtype, reduce_dtype=self.reduce_dtype,
                                    cast_forward_inputs=False)


def meta_dit(spec: Any) -> tuple[WanDiT, Optional[str]]:
    """The DiT of a registry spec on the meta device and its weights folder (None for a random preset).

    The config comes from the folder's config.json (only the header is read) with every key explicit, so nothing
    of the spec's preset leaks in; dtype, attention and checkpointing options apply as in the spec.
    """
    name, options = registry.split_spec("dit", spec)
    weights = options.pop("weights", None)
    if weights is not None:
        config = WanDiTConfig.from_dict(read_config(weights)).to_dict()
        config.pop("_class_name")
        options.update(config)
    with torch.device("meta"):
        return registry.build("dit", {"name": name, **options}), weights


def is_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def fp32_islands(dit: WanDiT) -> list[nn.Module]:
    """The modules named in ``KEEP_FP32`` that own parameters (outermost only): time embedding and projection,
    affine norms."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in dit.named_modules():
        if name.split(".")[-1] in KEEP_FP32 and any(True for _ in module.parameters()):
            if not any(name.startswith(f"{outer}.") for outer, _ in found):
                found.append((name, module))
    return [module for _, module in found]


def shard_dit(dit: WanDiT, mesh: Any, policy: ShardingPolicy) -> None:
    """``fully_shard`` the fp32 islands (gathered in fp32 when ``param_dtype`` is lower), each block, then the
    root, over ``mesh`` (the data-parallel mesh). Works on a meta-device DiT (nothing is allocated)."""
    from torch.distributed.fsdp import fully_shard

    reshard = policy.reshard_after_forward
    if policy.param_dtype not in (None, torch.float32):
        for module in fp32_islands(dit):
            fully_shard(module, mesh=mesh, mp_policy=policy.mixed_precision(torch.float32),
                        reshard_after_forward=reshard)
    for block in dit.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy.mixed_precision(), reshard_after_forward=reshard)
    fully_shard(dit, mesh=mesh, mp_policy=policy.mixed_precision(), reshard_after_forward=reshard)


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@torch.no_grad()
def materialize_dit(dit: WanDiT, weights: str, device: torch.device | str) -> None:
    """Allocate a meta-device DiT (sharded or not) on ``device`` and fill it from the ``weights`` folder: a sharded
    DiT allocates and reads only this rank's shards. Raises :class:`~e2v.modules.weights.CheckpointError` naming
    missing, unexpected or mis-shaped tensors."""
    dit.to_empty(device=device)
    dit.rope.reset_tables()
    load_weights(dit, weights, ignore_unexpected=UNUSED_OFFICIAL_KEYS)
