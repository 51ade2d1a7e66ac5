"""Weight-only quantisation modes and device moves of quantised modules (e2v.modules.quantize)."""

import copy

import pytest
import torch
from torch import nn

from e2v.modules.quantize import (
    WeightOnlyLinear,
    move_module,
    quantize_linears,
    side_tensors,
    weight_bytes,
)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256))


def all_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor a module holds: parameters, buffers and the bitsandbytes side tensors."""
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    for name, layer in module.named_modules():
        tensors.update({f"{name}.{side}": tensor for side, tensor in side_tensors(layer)})
    return tensors


@pytest.mark.parametrize("mode, tolerance", [("int8wo", 0.01), ("fp8", 0.06)])
def test_weight_only_modes_are_close_and_small(mode, tolerance):
    model, x = mlp(), torch.randn(16, 256)
    quantised = quantize_linears(copy.deepcopy(model), mode)
    assert all(isinstance(quantised[i], WeightOnlyLinear) for i in (0, 2))
    assert quantised[0].weight.dtype == (torch.int8 if mode == "int8wo" else torch.uint8)
    with torch.no_grad():
        reference, out = model(x), quantised(x)
        weight_error = quantised[0].dequantized_weight(torch.float32) - model[0].weight
    assert ((out - reference).norm() / reference.norm()).item() < tolerance
    assert (weight_error.norm() / model[0].weight.norm()).item() < tolerance
    assert weight_bytes(quantised) < 0.3 * weight_bytes(model)
    # a dtype move casts activations' companions (bias), never the stored weight bits or their scales' meaning
    half = copy.deepcopy(quantised).to(torch.bfloat16)
    assert half[0].weight.dtype == quantised[0].weight.dtype and half[0].bias.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(half(x.bfloat16()).float(), out, atol=0.05, rtol=0.05)


def quantised_after_forward(mode: str) -> nn.Module:
    pytest.importorskip("bitsandbytes")
    model = quantize_linears(mlp(), mode)
    with torch.no_grad():
        model(torch.randn(4, 256))  # LLM.int8 moves CB/SCB from the weight into the layer's state here
    return model


MOVERS = {"move_module": move_module, "Module.to": lambda module, *args, **kwargs: module.to(*args, **kwargs)}


@pytest.mark.parametrize("mover", list(MOVERS))
@pytest.mark.parametrize("mode", ["int8", "nf4", "int8wo", "fp8"])
@pytest.mark.parametrize("forwarded", [False, True])
def test_moves_take_every_tensor_to_meta(mover, mode, forwarded):
    """A parent's move (move_module, or plain Module.to as Lightning does) reaches the scales kept outside the
    parameters: bitsandbytes' own classes leave them behind (and fail for meta), the layers made here do not."""
    pytest.importorskip("bitsandbytes")
    model = quantised_after_forward(mode) if forwarded else quantize_linears(mlp(), mode)
    names = set(all_tensors(model))
    if mode == "int8":  # the scales live outside the parameters: before the first forward on the weight, then in state
        assert any(name.endswith(("weight.SCB", "state.SCB")) for name in names)
    if mode == "nf4":
        assert any("quant_state.absmax" in name for name in names)
    MOVERS[mover](model, "meta")
    moved = all_tensors(model)
    assert set(moved) == names
    assert {name: t.device.type for name, t in moved.items() if t.device.type != "meta"} == {}


@pytest.mark.parametrize("mover", list(MOVERS))
def test_moves_keep_int8_weights_and_outputs_on_a_dtype_move(mover):
    model = quantised_after_forward("int8")
    x = torch.randn(4, 256)
    with torch.no_grad():
        before = model(x)
    MOVERS[mover](model, "cpu", dtype=torch.bfloat16)
    tensors = all_tensors(model)
    assert tensors["0.weight"].dtype == torch.int8 and tensors["0.bias"].dtype == torch.bfloat16
    assert tensors["0.state.CB"].data_ptr() == tensors["0.weight"].data_ptr()  # CB is the weight, not a stale copy
    assert tensors["0.state.SCB"].dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(model(x.bfloat16()).float(), before, atol=0.05, rtol=0.05)


def test_move_module_keeps_plain_parameter_objects_and_moves_foreign_bitsandbytes_layers():
    model = mlp()
    weight = model[0].weight
    move_module(model, "cpu", dtype=torch.float64)
    assert model[0].weight is weight and weight.dtype == torch.float64
    bnb = pytest.importorskip("bitsandbytes")
    foreign = bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False)  # bitsandbytes' own class, made elsewhere
    foreign.weight = bnb.nn.Int8Params(torch.randn(32, 64), requires_grad=False, has_fp16_weights=False)
    foreign = nn.Sequential(foreign.to("cpu"))
    with pytest.raises(RuntimeError):
        foreign.to("meta")  # why move_module exists
    move_module(foreign, "meta")
    assert {t.device.type for t in all_tensors(foreign).values()} == {"meta"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["int8", "nf4", "int8wo", "fp8"])
def test_quantised_on_cpu_then_moved_to_cuda_matches(mode):
    model = quantised_after_forward(mode) if mode in ("int8", "nf4") else quantize_linears(mlp(), mode)
    x = torch.randn(4, 256)
    with torch.no_grad():
        on_cpu = model(x)
        model.cuda()  # as Lightning moves a module tree
        assert all(t.is_cuda for t in all_tensors(model).values())
        torch.testing.assert_close(model(x.cuda()).cpu(), on_cpu, atol=0.05, rtol=0.05)
