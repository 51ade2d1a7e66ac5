"""Weight-only quantisation of ``nn.Linear`` layers with bitsandbytes (int8 LLM.int8 or 4-bit NF4).

Runs on CPU tensors as well as CUDA (bitsandbytes >= 0.49 ships CPU kernels). Weights are quantised when the
replacement layer is moved to its device; activations stay in the input dtype.
"""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Iterable

import torch
from torch import nn

MODES = ("int8", "nf4")


def _bitsandbytes():
    try:
        import bitsandbytes
    except ImportError as err:
        raise ImportError("weight quantisation needs bitsandbytes: pip install bitsandbytes") from err
    return bitsandbytes


def _quantized_linear(linear: nn.Linear, mode: str) -> nn.Module:
    """A bitsandbytes copy of ``linear`` holding its weight in ``mode``, on the same device."""
    bnb = _bitsandbytes()
    weight = linear.weight.data
    has_bias = linear.bias is not None
    if mode == "int8":
        layer = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False, threshold=6.0
        )
        layer.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=has_bias, quant_type="nf4", compute_dtype=weight.dtype
        )
        layer.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type="nf4")
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    return layer.to(weight.device)  # moving to a real device is what quantises the weight


@torch.no_grad()
def quantize_linears(module: nn.Module, mode: str, skip: Iterable[str] = ()) -> nn.Module:
    """Replace every ``nn.Linear`` of ``module`` (in place) by a weight-only quantised bitsandbytes layer.

    ``mode``: ``"int8"`` (``Linear8bitLt``, threshold 6.0) or ``"nf4"`` (``Linear4bit``). ``skip``: glob patterns
    of qualified layer names kept in full precision (e.g. ``"proj_out"``, ``"*.norm_out.*"``). Returns ``module``.
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


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (quantised weights count at their storage size)."""
    tensors = list(module.parameters()) + list(module.buffers())
    total = sum(t.numel() * t.element_size() for t in tensors)
    for layer in module.modules():  # int8 row scales and nf4 block scales live outside parameters
        state = getattr(getattr(layer, "weight", None), "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
        scales = getattr(getattr(layer, "weight", None), "SCB", None)
        if scales is not None:
            total += scales.numel() * scales.element_size()
    return total
