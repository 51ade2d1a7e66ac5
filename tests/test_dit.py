import json

import pytest
import torch
from diffusers import WanTransformer3DModel

from e2v import registry
from e2v.modules.dit import PRESETS, WanDiT, WanDiTConfig

IMAGE_KEYS = ("image_embedder", "add_k_proj", "add_v_proj", "norm_added_k")
TOKENS_PER_IMAGE = 257


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def i2v_pair(tmp_path_factory):
    """A tiny diffusers I2V model, saved by diffusers and loaded by WanDiT.from_pretrained."""
    torch.manual_seed(0)
    reference = WanTransformer3DModel(**PRESETS["tiny"]).eval()
    folder = tmp_path_factory.mktemp("diffusers_i2v")
    reference.save_pretrained(folder)
    return reference, WanDiT.from_pretrained(str(folder)).eval(), folder


def make_inputs(batch=2, refs=1, text_len=512, seed=1):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 36, 3, 4, 6, generator=g)
    timestep = torch.tensor([17.0, 731.0][:batch])
    text = torch.randn(batch, text_len, 32, generator=g)
    image = torch.randn(batch, refs * TOKENS_PER_IMAGE, PRESETS["tiny"]["image_dim"], generator=g)
    return latents, timestep, text, image


@pytest.mark.parametrize("refs", [1, 2, 3, 5])
def test_parity_with_diffusers_i2v(i2v_pair, refs):
    reference, ours, _ = i2v_pair
    latents, timestep, text, image = make_inputs(refs=refs)
    with torch.no_grad():
        want = reference(latents, timestep, text, encoder_hidden_states_image=image).sample
        got = ours(latents, timestep, text, image)
    assert got.shape == (2, 16, 3, 4, 6)
    assert rel_err(got, want) <= 1e-5


def test_no_references_equals_diffusers_text_only_path(i2v_pair):
    """N = 0: our I2V model without image tokens equals diffusers' T2V graph with the same (shared) weights."""
    _, ours, _ = i2v_pair
    t2v_config = {k: v for k, v in PRESETS["tiny"].items() if k not in ("image_dim", "added_kv_proj_dim")}
    text_only = WanTransformer3DModel(**t2v_config).eval()
    shared = {k: v for k, v in ours.state_dict().items() if not any(s in k for s in IMAGE_KEYS)}
    text_only.load_state_dict(shared, strict=True)
    latents, timestep, text, image = make_inputs(text_len=23)
    with torch.no_grad():
        want = text_only(latents, timestep, text).sample
        got_none = ours(latents, timestep, text, None)
        got_empty = ours(latents, timestep, text, image[:, :0])
        with_refs = ours(latents, timestep, text, image)
    assert rel_err(got_none, want) <= 1e-5
    torch.testing.assert_close(got_empty, got_none, rtol=0, atol=0)
    assert rel_err(with_refs, got_none) > 1e-3  # the image branch does contribute when references are given


def test_diffusers_loads_our_save(i2v_pair, tmp_path):
    _, ours, _ = i2v_pair
    ours.save_pretrained(str(tmp_path))
    reference = WanTransformer3DModel.from_pretrained(str(tmp_path)).eval()
    latents, timestep, text, image = make_inputs(refs=2)
    with torch.no_grad():
        assert rel_err(ours(latents, timestep, text, image), reference(latents, timestep, text, image).sample) <= 1e-5


@pytest.mark.parametrize("max_shard_bytes", [5 * 1024**3, 20_000])
def test_save_load_round_trip_is_exact(i2v_pair, tmp_path, max_shard_bytes):
    _, ours, _ = i2v_pair
    ours.save_pretrained(str(tmp_path), max_shard_bytes=max_shard_bytes)
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    if max_shard_bytes == 20_000:
        assert len(shards) >= 3
        index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(ours.state_dict())
    else:
        assert shards == ["diffusion_pytorch_model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "WanTransformer3DModel" and config["in_channels"] == 36
    loaded = WanDiT.from_pretrained(str(tmp_path)).eval()
    for key, value in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.testing.assert_close(loaded.rope.freqs_cos, ours.rope.freqs_cos, rtol=0, atol=0)
    inputs = make_inputs(refs=3, text_len=9)
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), ours(*inputs))


def test_presets_have_diffusers_shapes():
    for name in PRESETS:
        with torch.device("meta"):
            ours = WanDiT.from_preset(name)
            reference = WanTransformer3DModel(**PRESETS[name])
        want = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want, name
    with torch.device("meta"):
        big = WanDiT.from_preset("a2-14b")
    assert 16.0e9 < sum(p.numel() for p in big.parameters()) < 17.0e9  # Wan2.1-I2V-14B: 16.4B parameters


def test_any_text_length_and_shapes():
    torch.manual_seed(0)
    model = WanDiT.from_preset("tiny").eval()
    latents, timestep, _, image = make_inputs(batch=1, refs=2)
    with torch.no_grad():
        for text_len in (1, 7, 300):
            assert model(latents, timestep, torch.randn(1, text_len, 32), image).shape == (1, 16, 3, 4, 6)
        assert model(latents, torch.tensor(5.0), torch.randn(1, 3, 32)).shape == (1, 16, 3, 4, 6)


def test_bad_inputs_and_configs_fail_clearly():
    torch.manual_seed(0)
    t2v = WanDiT.from_preset("tiny-t2v")
    text = torch.randn(1, 4, 32)
    with pytest.raises(ValueError, match=r"latents must be \[B, 16"):
        t2v(torch.randn(1, 36, 1, 4, 4), torch.tensor([1.0]), text)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        t2v(torch.randn(1, 16, 1, 5, 4), torch.tensor([1.0]), text)
    with pytest.raises(ValueError, match="no image branch"):
        t2v(torch.randn(1, 16, 1, 4, 4), torch.tensor([1.0]), text, torch.randn(1, 257, 24))
    with pytest.raises(ValueError, match=r"text must be \[1, L, 32\]"):
        t2v(torch.randn(1, 16, 1, 4, 4), torch.tensor([1.0]), torch.randn(1, 4, 31))
    with pytest.raises(ValueError, match="unknown WanDiT config key"):
        WanDiTConfig.from_dict({**PRESETS["tiny"], "window_sizes": [-1, -1]})
    with pytest.raises(ValueError, match="added_kv_proj_dim must equal"):
        WanDiTConfig.from_dict({**PRESETS["tiny"], "added_kv_proj_dim": 8})
    with pytest.raises(KeyError, match="presets: tiny"):
        WanDiT.from_preset("huge")
    assert WanDiTConfig.from_dict({"_diffusers_version": "0.33.0", **PRESETS["tiny-t2v"]}).in_channels == 16


def test_pieces_reproduce_forward():
    """embed_inputs + rope + run_blocks (in two calls) + head == forward (what a step cache builds on)."""
    torch.manual_seed(0)
    model = WanDiT.from_preset("tiny").eval()
    latents, timestep, text, image = make_inputs(refs=2, text_len=11)
    with torch.no_grad():
        inputs = model.embed_inputs(latents, timestep, text, image)
        rope = model.rope(inputs.grid)
        assert inputs.grid == (3, 2, 3) and rope[0].shape == rope[1].shape == (18, 1, 16)
        tokens = model.run_blocks(inputs.tokens, inputs, rope, blocks=[0])
        tokens = model.run_blocks(tokens, inputs, rope, blocks=[1])
        torch.testing.assert_close(model.head(tokens, inputs.temb, inputs.grid), model(latents, timestep, text, image))


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = WanDiT.from_preset("tiny")
    latents, timestep, text, image = make_inputs(batch=1, refs=1, text_len=5)

    def grads(checkpointing):
        model.zero_grad()
        model.set_gradient_checkpointing(checkpointing)
        model(latents, timestep, text, image).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads(False)
    for setting in (True, {1}):
        for name, grad in grads(setting).items():
            torch.testing.assert_close(grad, plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_keeps_fp32_parameters_and_runs():
    torch.manual_seed(0)
    model = WanDiT.from_preset("tiny").eval()
    latents, timestep, text, image = make_inputs(refs=2, text_len=8)
    with torch.no_grad():
        want = model(latents, timestep, text, image)
    model.to_dtype(torch.bfloat16)
    kept = {n for n, p in model.named_parameters() if p.dtype == torch.float32}
    assert "blocks.0.scale_shift_table" in kept and "scale_shift_table" in kept
    assert "condition_embedder.time_embedder.linear_1.weight" in kept
    assert "condition_embedder.time_proj.weight" in kept and "blocks.1.norm2.weight" in kept
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert model.blocks[0].ffn.net[2].weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if n not in kept)
    with torch.no_grad():
        got = model(latents.bfloat16(), timestep, text.bfloat16(), image.bfloat16())
    assert got.dtype == torch.bfloat16
    assert rel_err(got.float(), want) < 5e-2


def test_registry_builds_wan(i2v_pair):
    _, ours, folder = i2v_pair
    model = registry.build("dit", {"name": "wan", "preset": "tiny-t2v", "num_layers": 1, "dtype": "bf16"})
    assert len(model.blocks) == 1 and model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    loaded = registry.build(
        "dit", {"name": "wan", "weights": str(folder), "attention": "chunked", "gradient_checkpointing": [0]}
    )
    assert loaded.attention == "chunked" and loaded.gradient_checkpointing == {0}
    assert torch.equal(loaded.blocks[1].ffn.net[0].proj.weight, ours.blocks[1].ffn.net[0].proj.weight)
    with pytest.raises(ValueError, match="cannot be combined with weights"):
        registry.build("dit", {"name": "wan", "weights": str(folder), "num_layers": 3})
