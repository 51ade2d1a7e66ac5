"""Weight-only quantisation of ``nn.Linear`` layers, and device moves that quantised layers survive.

Modes:

- ``int8`` (LLM.int8, ``Linear8bitLt``, threshold 6.0) and ``nf4`` (``Linear4bit``): bitsandbytes. Weights are
  quantised when the replacement layer is moved to its device; runs on CPU tensors as well as CUDA (bitsandbytes
  >= 0.49 ships CPU kernels). Their scales live outside the module's parameters (``Int8Params.CB/SCB``, the layer's
  matmul state, the 4-bit ``QuantState``), which a parent's ``module.to`` leaves behind (and fails for the meta
  device): the layers made here override ``_apply`` so that every move (``module.to``, Lightning's, ``to_empty``)
  carries them; :func:`move_module` does the same for bitsandbytes layers made elsewhere.
- ``int8wo`` and ``fp8``: :class:`WeightOnlyLinear`, plain torch. Weights stored as int8 or float8 e4m3 (kept as
  uint8 bits) with one fp32 scale per output channel, all ordinary buffers, dequantised per matmul. Half the bytes
  of bf16; they move with ``module.to`` and stream through block offload (:mod:`e2v.pipeline.offload`).

Activations stay in the input dtype in every mode.
"""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Iterable, Iterator, Optional, Union

import functools

import torch
import torch.nn.functional as F
from torch import nn

BITSANDBYTES_MODES = ("int8", "nf4")
WEIGHT_ONLY_MODES = ("int8wo", "fp8")
MODES = BITSANDBYTES_MODES + WEIGHT_ONLY_MODES
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # what a dtype move converts
_STORAGE = {"int8wo": (torch.int8, 127.0), "fp8": (torch.float8_e4m3fn, torch.finfo(torch.float8_e4m3fn).max)}


def _bitsandbytes():
    try:
        import bitsandbytes
    except ImportError as err:
        raise ImportError("weight quantisation needs bitsandbytes: pip install bitsandbytes") from err
    return bitsandbytes


class WeightOnlyLinear(nn.Module):
    """``nn.Linear`` with an int8 or float8-e4m3 weight ``[out, in]`` and an fp32 scale per output channel ``[out]``.

    ``forward(x [..., in]) -> [..., out]`` in x's dtype: ``linear(x, weight) * scale + bias`` (the per-row scale
    commutes with the matmul, so the weight is only cast, never rescaled). fp8 bits are stored as uint8 so that
    ``module.to(dtype)`` never touches them.
    """

    def __init__(self, linear: nn.Linear, mode: str) -> None:
        super().__init__()
        if mode not in _STORAGE:
            raise ValueError(f"unknown weight-only mode {mode!r}; expected one of {', '.join(_STORAGE)}")
        self.mode, self.in_features, self.out_features = mode, linear.in_features, linear.out_features
        storage, largest = _STORAGE[mode]
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp_min(1e-12) / largest
        scaled = weight / scale[:, None]
        if storage == torch.int8:
            quantised = scaled.round().clamp(-largest, largest).to(torch.int8)
        else:
            quantised = scaled.to(storage).view(torch.uint8)
        self.register_buffer("weight", quantised)
        self.register_buffer("weight_scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight ``[out, in]`` as ``dtype``, scales applied."""
        return (self._stored().float() * self.weight_scale[:, None]).to(dtype)

    def _stored(self) -> torch.Tensor:
        return self.weight.view(torch.float8_e4m3fn) if self.mode == "fp8" else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self._stored().to(x.dtype)) * self.weight_scale.to(x.dtype)
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}"


@functools.cache
def _movable_layers() -> tuple[type, type]:
    """bitsandbytes' ``Linear8bitLt`` and ``Linear4bit`` with an ``_apply`` that carries their scales along
    (subclasses of the same name: bitsandbytes and peft see their own layer types)."""
    bnb = _bitsandbytes()

    class Linear8bitLt(bnb.nn.Linear8bitLt):
        """``Linear8bitLt`` whose ``CB``/``SCB`` (on the weight or in the matmul state) follow every module move."""

        def _apply(self, fn, recurse=True):
            return _apply_with_scales(self, fn, recurse, super()._apply)

    class Linear4bit(bnb.nn.Linear4bit):
        """``Linear4bit`` whose ``QuantState`` follows every module move (meta device included)."""

        def _apply(self, fn, recurse=True):
            return _apply_with_scales(self, fn, recurse, super()._apply)

    return Linear8bitLt, Linear4bit


def _quantized_linear(linear: nn.Linear, mode: str) -> nn.Module:
    """A copy of ``linear`` holding its weight in ``mode``, on the same device."""
    if mode in WEIGHT_ONLY_MODES:
        return WeightOnlyLinear(linear, mode)
    bnb = _bitsandbytes()
    int8_layer, four_bit_layer = _movable_layers()
    weight = linear.weight.data
    has_bias = linear.bias is not None
    if mode == "int8":
        layer = int8_layer(
            linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False, threshold=6.0
        )
        layer.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False)
    else:
        layer = four_bit_layer(
            linear.in_features, linear.out_features, bias=has_bias, quant_type="nf4", compute_dtype=weight.dtype
        )
        layer.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type="nf4")
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    return layer.to(weight.device)  # moving to a real device is what quantises the weight


@torch.no_grad()
def quantize_linears(module: nn.Module, mode: str, skip: Iterable[str] = ()) -> nn.Module:
    """Replace every ``nn.Linear`` of ``module`` (in place) by a weight-only quantised layer (see :data:`MODES`).

    ``skip``: glob patterns of qualified layer names kept in full precision (e.g. ``"proj_out"``,
    ``"*.norm_out.*"``). Returns ``module``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown quantisation mode {mode!r}; expected one of {', '.join(MODES)}")
    patterns = tuple(skip)
    targets = [
        (name, child)
        for name, child in module.named_modules()
        if type(child) is nn.Linear and not any(fnmatch(name, pattern) for pattern in patterns)
    ]
    if not targets:
        raise ValueError(f"{type(module).__name__} has no nn.Linear layer left to quantise (skip={list(patterns)})")
    for name, linear in targets:
        parent_name, _, attribute = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attribute, _quantized_linear(linear, mode))
    return module


def side_tensors(layer: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors a bitsandbytes layer holds outside its parameters and buffers, by name: ``weight.CB``/``weight.SCB``
    (Int8Params before the first forward), ``state.CB``/``state.SCB`` (after it) and the 4-bit ``weight.quant_state``
    tensors (absmax, code; offset and the nested state's when statistics are compressed)."""
    weight = getattr(layer, "weight", None)
    for owner_name, owner in (("weight", weight), ("state", getattr(layer, "state", None))):
        for name in ("CB", "SCB"):
            tensor = getattr(owner, name, None)
            if isinstance(tensor, torch.Tensor):
                yield f"{owner_name}.{name}", tensor
    state = getattr(weight, "quant_state", None)
    if state is not None:
        for name, owner in (("", state), ("state2.", getattr(state, "state2", None) if state.nested else None)):
            for field in ("absmax", "code", "offset"):
                tensor = getattr(owner, field, None)
                if isinstance(tensor, torch.Tensor):
                    yield f"weight.quant_state.{name}{field}", tensor


def _unpack_cpu_4bit(layer: nn.Module, target: torch.device) -> None:
    """Undo the CPU-only packing a 4-bit weight gets at its first CPU forward when it leaves the CPU."""
    weight = getattr(layer, "weight", None)
    state = getattr(weight, "quant_state", None)
    if getattr(state, "packing_format_for_cpu", False) and target.type != "cpu":
        from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)


def _sync_matmul_state(layer: nn.Module) -> None:
    """After a move: ``Linear8bitLt``'s matmul state points at the moved weight and scales, ``Linear4bit`` at the
    moved ``QuantState``."""
    matmul_state = getattr(layer, "state", None)
    if getattr(matmul_state, "CB", None) is not None:  # Linear8bitLt after a forward: CB is the weight
        matmul_state.CB = layer.weight.data
    if getattr(matmul_state, "SCB", None) is not None:
        matmul_state.SCB = matmul_state.SCB.to(device=layer.weight.device)
    if hasattr(layer, "quant_state") and hasattr(layer.weight, "quant_state"):  # Linear4bit keeps a reference
        layer.quant_state = layer.weight.quant_state


def _apply_with_scales(layer: nn.Module, fn, recurse: bool, base_apply) -> nn.Module:
    """``nn.Module._apply`` of a bitsandbytes layer: ``fn`` on the weight's data (int8 / uint8, which dtype moves
    leave alone), the weight rebuilt around it with its scales on the new device; bias and buffers as usual. A
    weight not quantised yet takes bitsandbytes' own path (its first move to a device quantises it)."""
    if not getattr(layer.weight, "bnb_quantized", layer.weight.dtype == torch.int8):
        return base_apply(fn, recurse)
    weight = layer._parameters.pop("weight")
    try:
        base_apply(fn, recurse)
    finally:
        layer._parameters["weight"] = weight
    _unpack_cpu_4bit(layer, fn(weight.data[:0]).device)
    layer._parameters["weight"] = _rebuilt_parameter(layer.weight, fn(layer.weight.data))
    _sync_matmul_state(layer)
    return layer


def _rebuilt_parameter(param: nn.Parameter, data: torch.Tensor, non_blocking: bool = False) -> nn.Parameter:
    """``param`` (plain or bitsandbytes) around new ``data``; bitsandbytes scales moved to ``data``'s device."""
    device = data.device
    kind = type(param).__name__
    if kind == "Int8Params":
        moved = type(param)(data, requires_grad=param.requires_grad, has_fp16_weights=param.has_fp16_weights)
        moved.CB = data if param.CB is not None else None  # CB is the int8 weight itself
        moved.SCB = None if param.SCB is None else param.SCB.to(device=device, non_blocking=non_blocking)
        return moved
    if kind == "Params4bit":
        state = param.quant_state
        if state is not None:
            state.to(device)  # QuantState moves in place
        return type(param)(
            data, requires_grad=param.requires_grad, quant_state=state, blocksize=param.blocksize,
            compress_statistics=param.compress_statistics, quant_type=param.quant_type,
            quant_storage=param.quant_storage, module=param.module, bnb_quantized=param.bnb_quantized,
        )
    if torch._has_compatible_shallow_copy_type(param, data):
        param.data = data  # keep the Parameter object (optimizer references), as nn.Module.to does
        return param
    return nn.Parameter(data, requires_grad=param.requires_grad)


@torch.no_grad()
def move_module(
    module: nn.Module,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
    non_blocking: bool = False,
) -> nn.Module:
    """``module.to(device, dtype)`` that quantised layers survive (in place; returns ``module``).

    Every parameter and buffer moves to ``device`` (``"meta"`` included); ``dtype`` applies to fp16 / bf16 / fp32 /
    fp64 tensors only, so int8, uint8 (4-bit, fp8 bits) weights keep theirs. bitsandbytes scales move with their
    weight: ``Int8Params.CB/SCB``, ``Linear8bitLt.state.CB/SCB`` and the 4-bit ``QuantState`` (a CPU-packed 4-bit
    weight is unpacked first when it leaves the CPU). ``module.to`` moves none of these when called on a parent
    module, and fails for the meta device.
    """
    device = torch.device(device) if device is not None else None

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        target_dtype = dtype if dtype is not None and tensor.dtype in _FLOAT_DTYPES else None
        return tensor.to(device=device, dtype=target_dtype, non_blocking=non_blocking)

    for layer in module.modules():
        if device is not None:
            _unpack_cpu_4bit(layer, device)
        for name, param in list(layer._parameters.items()):
            if param is not None:
                layer._parameters[name] = _rebuilt_parameter(param, convert(param.data), non_blocking)
        for name, buffer in list(layer._buffers.items()):
            if buffer is not None:
                layer._buffers[name] = convert(buffer)
        _sync_matmul_state(layer)
    return module


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (quantised weights count at their storage size), plus the
    int8 row scales and 4-bit block scales bitsandbytes keeps outside them."""
    tensors = list(module.parameters()) + list(module.buffers())
    total = sum(t.numel() * t.element_size() for t in tensors)
    for layer in module.modules():
        for name, tensor in side_tensors(layer):
            if name.endswith(("SCB", "absmax")):
                total += tensor.numel() * tensor.element_size()
    return total
