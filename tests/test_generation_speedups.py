"""Generation speed-ups: cross-attention context computed once per video, TeaCache-rescaled step cache, and block
offload / weight-only quantisation through E2VPipeline (outputs compared with the plain run)."""

import numpy as np
import pytest
import torch

from e2v.modules.dit import WanAttention, WanDiT
from e2v.pipeline.step_cache import TEACACHE_WAN, StepCache, polynomial
from test_pipeline import generate, tiny_pipeline, tiny_refs


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(2)
    return tiny_pipeline()


def counting_context_kv(monkeypatch) -> list:
    calls = []
    original = WanAttention.context_kv

    def counted(self, text, image):
        calls.append(text.shape[0])
        return original(self, text, image)

    monkeypatch.setattr(WanAttention, "context_kv", counted)
    return calls


def test_context_computed_once_per_video_and_output_exact(pipe, monkeypatch):
    calls = counting_context_kv(monkeypatch)
    args = dict(steps=3, negative_prompt="blurry")  # the two guidance branches have different text
    cached = generate(pipe, tiny_refs(2), **args)
    layers = len(pipe.dit.blocks)
    assert calls == [2] * layers  # once per block, both guidance branches in one batch
    calls.clear()
    try:
        pipe.cache_context = False
        uncached = generate(pipe, tiny_refs(2), **args)
    finally:
        del pipe.cache_context
    assert len(calls) == 3 * layers
    torch.testing.assert_close(cached, uncached, atol=0, rtol=0)
    assert pipe.dit.context_cache is None and all(b.attn2.context_cache is None for b in pipe.dit.blocks)


@torch.no_grad()
def test_context_cache_misses_new_or_modified_inputs():
    torch.manual_seed(0)
    dit = WanDiT.from_preset("tiny").eval()
    latents, t = torch.randn(1, 36, 1, 2, 2), torch.tensor([500.0])
    text, image = torch.randn(1, 4, 32), torch.randn(1, 3, 32)
    with dit.cache_context():
        cache = dit.context_cache
        dit(latents, t, text, image)
        dit(latents, t, text.clone(), image[[0]])  # new tensors, same values (as a CFG-parallel rank's share): hits
        assert len(cache.embedded) == 1 and len(cache.kv) == len(dit.blocks)
        text.mul_(2)  # in place: other values, so a miss
        changed = dit(latents, t, text, image)
        assert len(cache.embedded) == 2 and len(cache.kv) == 2 * len(dit.blocks)
    torch.testing.assert_close(changed, dit(latents, t, text, image), atol=0, rtol=0)


def test_teacache_polynomial_matches_numpy():
    for _, coefficients in TEACACHE_WAN.values():
        for x in (0.0, 0.01, 0.05, 0.2):
            assert polynomial(coefficients, x) == pytest.approx(float(np.poly1d(coefficients)(x)), rel=1e-12)
    with pytest.raises(ValueError, match="unknown TeaCache fit"):
        StepCache(0.1, teacache="wan2.2")


@torch.no_grad()
@pytest.mark.parametrize("name", ["wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-480p-e0"])
def test_teacache_decisions_follow_accumulated_rescaled_embedding_change(name):
    """TeaCache4Wan2.1's rule, recomputed here from the time embeddings: accumulate poly(rel L1 change from the
    previous step), skip while the sum is below the threshold, reset it when the blocks run."""
    torch.manual_seed(0)
    dit = WanDiT.from_preset("tiny").eval()
    timesteps = 999 - torch.arange(12.0)  # small steps: changes where both fits are positive for this tiny DiT
    latents, text = torch.randn(2, 36, 1, 2, 2), torch.randn(2, 4, 32)
    indicator, coefficients = TEACACHE_WAN[name]
    embeddings = []
    for t in timesteps:
        temb, modulation = dit.condition_embedder.time(t.expand(2))
        embeddings.append(temb if indicator == "temb" else modulation)
    changes = [((a - b).abs().mean() / b.abs().mean()).item() for a, b in zip(embeddings[1:], embeddings)]
    rescaled = [polynomial(coefficients, c) for c in changes]
    assert min(rescaled) > 0
    threshold = 1.5 * max(rescaled)  # one step's change never suffices, a few accumulated do
    expected, accumulated = [], 0.0
    for step in range(len(timesteps)):
        if step == 0 or step == len(timesteps) - 1:
            expected.append(True)
            accumulated = 0.0
            continue
        accumulated += rescaled[step - 1]
        expected.append(accumulated >= threshold)
        if expected[-1]:
            accumulated = 0.0
    cache = StepCache(threshold, warmup=1, teacache=name)
    computed = []
    for step, t in enumerate(timesteps):
        inputs = dit.embed_inputs(latents, t.expand(2), text)
        before = cache.computed
        cache.run(dit, inputs.tokens, inputs, dit.rope(inputs.grid), "sdpa", step, len(timesteps))
        computed.append(cache.computed > before)
    assert computed == expected
    assert 0 < cache.skipped < len(timesteps) - 2


def test_pipeline_teacache_option_skips(pipe):
    try:
        pipe.enable_step_cache(1e9, teacache="wan2.1-i2v-14b-480p")
        video = generate(pipe, tiny_refs(1), steps=5)
        assert pipe.step_cache.skipped == 3 and torch.isfinite(video).all()
    finally:
        pipe.enable_step_cache(None)


def test_block_offload_generation_equals_plain(pipe):
    refs = tiny_refs(1)
    streamed = tiny_pipeline(device="cpu", offload=True).enable_block_offload(1)  # other components offloaded too
    torch.testing.assert_close(generate(streamed, refs), generate(pipe, refs), atol=0, rtol=0)
    assert streamed.block_offload.resident_groups() == []  # released after sampling
    with pytest.raises(ValueError, match="before enable_block_offload"):
        streamed.quantize("int8wo")
    streamed.enable_block_offload(None)
    torch.testing.assert_close(generate(streamed, refs), generate(pipe, refs), atol=0, rtol=0)


def test_weight_only_quantised_pipeline_with_block_offload_equals_without():
    refs = tiny_refs(1)
    quantised = tiny_pipeline().quantize("fp8")
    streamed = tiny_pipeline(offload=True).quantize("fp8").enable_block_offload(1)
    torch.testing.assert_close(generate(streamed, refs), generate(quantised, refs), atol=0, rtol=0)


def test_generate_cli_streams_quantised_blocks_with_teacache(tmp_path, capsys):
    from e2v.datamodules.video_io import probe_video, save_image
    from e2v.pipeline.generate import generate_command
    from test_pipeline import save_checkpoint

    save_checkpoint(tiny_pipeline(), tmp_path / "run.ckpt")
    save_image(tmp_path / "ref.png", tiny_refs(1)[0])
    base = ["--checkpoint", str(tmp_path / "run.ckpt"), "--ref", str(tmp_path / "ref.png"), "--prompt", "a cat",
            "--height", "16", "--width", "32", "--frames", "8", "--steps", "2", "--no-progress", "--device", "cpu"]
    speed = ["--offload-blocks", "1", "--quantize", "fp8", "--step-cache", "0.1", "--teacache", "wan2.1-i2v-14b-480p"]
    assert generate_command([*base, "--out", str(tmp_path / "a.mp4"), *speed]) == 0
    assert probe_video(tmp_path / "a.mp4")["frames"] == 8
    assert generate_command([*base, "--out", str(tmp_path / "b.mp4"), "--offload-blocks", "1", "--quantize", "int8"]) == 2
    assert "--offload-blocks cannot stream bitsandbytes layers (--quantize int8)" in capsys.readouterr().err
    assert generate_command([*base, "--out", str(tmp_path / "c.mp4"), "--teacache", "wan2.1-t2v-14b"]) == 2
    assert "--teacache needs --step-cache" in capsys.readouterr().err
