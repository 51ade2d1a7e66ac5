"""Block-level offload of the DiT: the blocks' weights live in (pinned) host memory and stream to the accelerator
one group of blocks at a time, the next group prefetched on a side CUDA stream while the current one computes.

What streams: every tensor of each block's matrix layers (leaf modules holding a >= 2-D tensor: the attention
projections and the FFN, with their biases and, for :class:`~e2v.modules.quantize.WeightOnlyLinear`, their
scales). What stays on the device: everything else (patch embedding, condition embedder, head, RoPE tables, and
per block the modulation table and the norms' vectors), so the step cache and ``embed_inputs`` run unchanged.

At most two groups are on the device: the running one and the prefetched next one (after the last group, group 0
is prefetched for the next step). :meth:`BlockOffload.release` sends everything back to the host tensors. On a CPU
"device" the same code runs synchronously (copies into fresh CPU tensors), so results equal the plain run exactly.

Weights on the accelerator for a 14B-shaped DiT (40 blocks of ~0.4 G parameters, ~0.8 GB each in bf16): ~1.6 GB for
two one-block groups instead of ~32 GB for all blocks (arithmetic; ``benchmarks/bench_offload_memory.py`` measures
the peak of a whole step on a GPU). Only the running group is needed; the second is the prefetch that hides the
host-to-device copy behind the compute.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Union

import torch
from torch import nn

from e2v.modules.quantize import side_tensors


def _streamed_layers(block: nn.Module) -> list[nn.Module]:
    """Leaf modules of ``block`` that hold a matrix (>= 2-D parameter or buffer)."""
    layers = []
    for layer in block.modules():
        own = list(layer._parameters.values()) + list(layer._buffers.values())
        if not list(layer.children()) and any(t is not None and t.ndim >= 2 for t in own):
            layers.append(layer)
    return layers


class _Slot:
    """One streamed tensor: where it lives in its module, and its host copy."""

    def __init__(self, layer: nn.Module, name: str, host: torch.Tensor) -> None:
        self.layer, self.name, self.host = layer, name, host
        self.is_param = name in layer._parameters

    def set(self, tensor: torch.Tensor) -> None:
        if self.is_param:
            self.layer._parameters[self.name].data = tensor
        else:
            self.layer._buffers[self.name] = tensor

    def get(self) -> torch.Tensor:
        return self.layer._parameters[self.name].data if self.is_param else self.layer._buffers[self.name]


class BlockOffload:
    """Streams ``dit.blocks`` to ``device`` in groups of ``blocks_per_group`` through forward hooks.

    Installed on construction (the DiT's resident parts move to ``device``, the streamed tensors to host memory,
    pinned on CUDA unless ``pin_memory=False``); :meth:`remove` uninstalls (streamed tensors stay on the host).
    Works for any caller of the blocks (``WanDiT.forward``, ``run_blocks``, step cache, sequence parallel).
    """

    def __init__(
        self,
        dit: nn.Module,
        device: Union[str, torch.device],
        blocks_per_group: int = 1,
        pin_memory: Optional[bool] = None,
    ) -> None:
        if blocks_per_group < 1:
            raise ValueError(f"block offload needs blocks_per_group >= 1, got {blocks_per_group}")
        bnb = sorted({type(m).__name__ for m in dit.blocks.modules() if next(side_tensors(m), None) is not None})
        if bnb:
            raise ValueError(
                f"block offload cannot stream bitsandbytes layers ({', '.join(bnb)}): they keep scales outside their "
                "parameters; quantise with 'int8wo' or 'fp8' instead"
            )
        self.device = torch.device(device)
        pin = self.device.type == "cuda" if pin_memory is None else pin_memory
        count = len(dit.blocks)
        self.groups = [list(range(i, min(i + blocks_per_group, count))) for i in range(0, count, blocks_per_group)]
        self._group_of = {index: g for g, members in enumerate(self.groups) for index in members}
        self._slots: list[list[_Slot]] = [[] for _ in self.groups]
        streamed: set[nn.Module] = set()
        for index, block in enumerate(dit.blocks):
            for layer in _streamed_layers(block):
                streamed.add(layer)
                for name, tensor in list(layer._parameters.items()) + list(layer._buffers.items()):
                    if tensor is None:
                        continue
                    host = tensor.detach().to("cpu")
                    if pin and not host.is_pinned():
                        host = host.pin_memory()
                    slot = _Slot(layer, name, host)
                    slot.set(host)
                    self._slots[self._group_of[index]].append(slot)
        for layer in dit.modules():  # everything else lives on the device
            if layer in streamed:
                continue
            for param in layer._parameters.values():
                if param is not None:
                    param.data = param.data.to(self.device)
            for name, buffer in layer._buffers.items():
                if buffer is not None:
                    layer._buffers[name] = buffer.to(self.device)
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._loaded: dict[int, tuple[Optional[torch.cuda.Event], list[torch.Tensor]]] = {}
        self._hooks = []
        for index, block in enumerate(dit.blocks):
            self._hooks.append(block.register_forward_pre_hook(lambda module, args, i=index: self._before(i)))
            self._hooks.append(block.register_forward_hook(lambda module, args, out, i=index: self._after(i)))

    # ----------------------------------------------------------------------------------------------- hooks
    def _before(self, index: int) -> None:
        group = self._group_of[index]
        self._activate(group)
        following = (group + 1) % len(self.groups)
        if following != group:
            self._load(following)

    def _after(self, index: int) -> None:
        group = self._group_of[index]
        if index == self.groups[group][-1] and len(self.groups) > 1:
            self._release_group(group)

    # ------------------------------------------------------------------------------------------- transfers
    def _load(self, group: int) -> None:
        """Start copying ``group`` to the device (side stream on CUDA; synchronous elsewhere)."""
        if group in self._loaded:
            return
        context = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        with context:
            copies = [
                torch.empty_like(slot.host, device=self.device).copy_(slot.host, non_blocking=True)
                for slot in self._slots[group]
            ]
            event = torch.cuda.Event() if self._stream is not None else None
            if event is not None:
                event.record(self._stream)
        for slot, copy in zip(self._slots[group], copies):
            slot.set(copy)
        self._loaded[group] = (event, copies)

    def _activate(self, group: int) -> None:
        """Make ``group`` usable on the current stream (loading it now if it was not prefetched)."""
        self._load(group)
        event, copies = self._loaded[group]
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for copy in copies:  # their memory is not reused before the compute stream is done with it
                copy.record_stream(current)
            self._loaded[group] = (None, copies)

    def _release_group(self, group: int) -> None:
        for slot in self._slots[group]:
            slot.set(slot.host)
        self._loaded.pop(group, None)

    # ---------------------------------------------------------------------------------------------- public
    def resident_groups(self) -> list[int]:
        """Indices of the groups whose streamed tensors are on the device now."""
        return sorted(self._loaded)

    def host_tensors(self, group: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(host copy, tensor the module uses now)`` for every streamed tensor of ``group``."""
        return [(slot.host, slot.get()) for slot in self._slots[group]]

    def streamed_bytes(self) -> int:
        """Bytes of the streamed tensors (all groups), held in host memory."""
        return sum(slot.host.numel() * slot.host.element_size() for group in self._slots for slot in group)

    def release(self) -> None:
        """Every group back to its host tensors (device copies freed)."""
        for group in list(self._loaded):
            self._release_group(group)

    def remove(self) -> None:
        """Release and uninstall the hooks; the streamed tensors stay in host memory."""
        self.release()
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def reset_peak_memory(device: Union[str, torch.device]) -> None:
    """Start a new peak-memory measurement on a CUDA ``device`` (no-op elsewhere)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: Union[str, torch.device]) -> Optional[int]:
    """Peak bytes allocated on a CUDA ``device`` since the last reset; None for other devices."""
    device = torch.device(device)
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def peak_memory_note(device: Union[str, torch.device]) -> str:
    """``", peak accelerator memory X.XX GiB"`` for a CUDA ``device`` (since the last reset), ``""`` elsewhere."""
    peak = peak_memory_bytes(device)
    return "" if peak is None else f", peak accelerator memory {peak / 2**30:.2f} GiB"
