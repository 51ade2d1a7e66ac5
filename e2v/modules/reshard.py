"""FSDP2 bookkeeping shared by training, sampling and the EMA: which modules are sharded, and freeing gathered copies.

Under ``fully_shard`` a module's parameters are sharded DTensors; its forward gathers them, and they are freed again
after the forward (``reshard_after_forward``) or after the backward. The root module keeps them gathered after a
forward (its backward would free them), as does any module with ``reshard_after_forward=False``. A forward without a
backward (sampling, a skipped step) therefore leaves gathered copies behind; writes to the shards (an optimizer step,
an EMA swap) would not reach them, so the next forward would use stale weights. :func:`reshard` frees them.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.fsdp import FSDPModule


def fsdp_modules(module: nn.Module) -> list[FSDPModule]:
    """The FSDP2-sharded modules in ``module``'s tree (itself included)."""
    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def reshard(module: nn.Module) -> None:
    """Free the gathered parameters of every FSDP2 module in ``module``'s tree (a no-op for sharded ones): the
    sharded parameters become the module's parameters again."""
    for sharded in fsdp_modules(module):
        sharded.reshard()
