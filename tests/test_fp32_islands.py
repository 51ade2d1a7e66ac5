"""The DiT's fp32 islands (time embedding, modulation, norms) run in fp32 inside a bf16 autocast region, and the
training x_t uses the same fp32 flow time the DiT receives (a bf16 VAE must not round it)."""

import copy

import pytest
import torch

from e2v.modules.dit import FP32LayerNorm, WanDiT
from e2v.modules.flow import TIMESTEP_SCALE, noisy_latents

ISLANDS = ("condition_embedder.time_embedder.linear_1", "condition_embedder.time_embedder.linear_2",
           "condition_embedder.time_proj", "blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm3", "norm_out")


def dit_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 36, 2, 4, 4, generator=g)
    timestep = torch.tensor([937.3, 12.345])  # not representable in bf16 (936.0, 12.375)
    return latents, timestep, torch.randn(2, 5, 32, generator=g), torch.randn(2, 7, 32, generator=g)


def record_dtypes(model, names):
    seen = {}

    def hook(name):
        def record(module, args, output):
            weight = getattr(module, "weight", None)
            seen[name] = (args[0].dtype, None if weight is None else weight.dtype, output.dtype)
        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    return seen, handles


def test_islands_run_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    reference = WanDiT.from_preset("tiny")
    for p in reference.parameters():  # non-trivial norm gains, so the affine norms are exercised
        p.data.add_(0.1 * torch.randn_like(p))
    model = copy.deepcopy(reference).to_dtype(torch.bfloat16)
    latents, timestep, text, image = dit_inputs()
    seen, _ = record_dtypes(model, ISLANDS + ("blocks.0.attn1.to_out.0",))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(latents, timestep, text, image)
        temb, modulation = model.condition_embedder.time(timestep)
    for name in ISLANDS:
        inputs, weight, output = seen[name]
        assert inputs == output == torch.float32 and weight in (None, torch.float32), (name, seen[name])
    assert seen["blocks.0.attn1.to_out.0"][2] == torch.bfloat16  # autocast is on for the rest of the DiT
    ref_temb, ref_modulation = reference.condition_embedder.time(timestep)
    torch.testing.assert_close(temb, ref_temb, rtol=0, atol=0)  # same fp32 weights, same fp32 arithmetic
    torch.testing.assert_close(modulation, ref_modulation, rtol=0, atol=0)
    expected = reference(latents, timestep, text, image)
    assert (out.float() - expected).norm() / expected.norm() < 3e-2  # the bf16 rest of the DiT


def test_fp32_layer_norm_ignores_autocast():
    torch.manual_seed(0)
    norm = FP32LayerNorm(48, eps=1e-6)
    norm.weight.data.normal_()
    x = torch.randn(3, 5, 48) * 40 + 7
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = norm(x)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, norm(x), rtol=0, atol=0)


def test_x_t_uses_the_fp32_flow_time_with_a_bf16_vae():
    from e2v.tasks.e2v_diffusion import E2VDiffusion

    module = E2VDiffusion(text_encoder={"name": "umt5", "preset": "tiny", "max_length": 8})
    g = torch.Generator().manual_seed(0)
    inputs = {  # what a bf16 VAE and encoders hand over
        "x0": torch.randn(1, 16, 2, 4, 4, generator=g).bfloat16(),
        "condition": torch.randn(1, 20, 2, 4, 4, generator=g).bfloat16(),
        "text": torch.randn(1, 8, 32, generator=g).bfloat16(),
        "image": torch.randn(1, 7, 32, generator=g).bfloat16(),
        "num_refs": 1,
    }
    t = torch.tensor([0.3])  # bf16 would make it 0.30078125
    noise = torch.randn(1, 16, 2, 4, 4, generator=g).bfloat16()
    seen = {}
    module.dit.register_forward_pre_hook(lambda m, args: seen.update(latents=args[0], timestep=args[1]))
    with torch.no_grad():
        module.flow_loss(inputs, t, noise)
    assert seen["timestep"].dtype == torch.float32 and seen["timestep"].item() == pytest.approx(0.3 * TIMESTEP_SCALE)
    expected = noisy_latents(inputs["x0"].float(), noise.float(), t)  # fp32 x_t at the fp32 t
    torch.testing.assert_close(seen["latents"][:, :16], expected, rtol=0, atol=0)
    rounded = noisy_latents(inputs["x0"], noise, t)  # the old bf16 mixing differs
    assert not torch.equal(seen["latents"][:, :16], rounded.float())
