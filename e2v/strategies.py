"""``SequenceParallelStrategy``: Lightning's FSDP2 strategy on a 2-D device mesh, data-parallel x sequence-parallel.

The world of ``dp x sp`` ranks (rank = dp_index * sp + sp_index: an SP group is ``sp`` consecutive ranks, one node
when ``sp`` divides the GPUs per node, so its all-to-alls stay on the node's links) becomes a mesh with the dims
``("data_parallel", "sequence_parallel")``. The ranks of one SP group read the same batches (the data modules take
their rank and size from :attr:`distributed_sampler_kwargs`, the data-parallel coordinates) and
:class:`~e2v.tasks.e2v_diffusion.E2VDiffusion` splits each sample's tokens over the group
(:mod:`e2v.modules.sequence_parallel`) and shards the DiT with FSDP2 over all ``dp x sp`` ranks.

Recipe::

    strategy:
      class_path: e2v.strategies.SequenceParallelStrategy
      init_args: {sequence_parallel: 4, save_distributed_checkpoint: true}
"""

from __future__ import annotations

from typing import Any, Literal, Union

from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.strategies.parallel import ParallelStrategy

DIMS = ("data_parallel", "sequence_parallel")


class SequenceParallelStrategy(ModelParallelStrategy):
    """FSDP2 x Ulysses sequence parallelism. ``sequence_parallel``: ranks per SP group (1: plain FSDP2);
    ``data_parallel_size``: SP groups (``auto``: world size / sequence_parallel). Other options as
    ``ModelParallelStrategy`` (``save_distributed_checkpoint``, ``process_group_backend``, ``timeout``)."""

    def __init__(self, sequence_parallel: int = 1, data_parallel_size: Union[Literal["auto"], int] = "auto",
                 **kwargs: Any) -> None:
        if int(sequence_parallel) < 1:
            raise ValueError(f"SequenceParallelStrategy: sequence_parallel must be >= 1, got {sequence_parallel}")
        super().__init__(data_parallel_size=data_parallel_size, tensor_parallel_size=int(sequence_parallel), **kwargs)
        self.sequence_parallel = int(sequence_parallel)

    def setup_environment(self) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        ParallelStrategy.setup_environment(self)  # the accelerator, without ModelParallelStrategy's own mesh
        self._setup_distributed()
        world, sp = self.world_size, self.sequence_parallel
        dp = world // sp if self._data_parallel_size == "auto" else int(self._data_parallel_size)
        if world % sp or dp * sp != world:
            raise ValueError(f"SequenceParallelStrategy: {world} rank(s) (num_nodes x devices) cannot form "
                             f"data_parallel_size={self._data_parallel_size} x sequence_parallel={sp} groups; "
                             "pick sequence_parallel dividing the world size")
        self._data_parallel_size = dp
        self._device_mesh = init_device_mesh(self.root_device.type, (dp, sp), mesh_dim_names=DIMS)
        self.lightning_module._device_mesh = self._device_mesh
