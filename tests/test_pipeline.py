import pytest
import torch
from torch import nn

from e2v import registry
from e2v.datamodules.video_io import save_image
from e2v.modules.weights import CheckpointError
from e2v.pipeline.pipeline import E2VPipeline

SIZE = dict(height=16, width=32)


def tiny_components(layout: str = "a2", seed: int = 0) -> dict:
    """Tiny random components (seeded: identical in every process); the tiny DiT's ``image_dim`` is the tiny CLIP's."""
    registry.entries()  # import every component module first: imports may draw random numbers
    torch.manual_seed(seed)
    uses_images = layout == "a2"
    dit = {"name": "wan", "preset": "tiny" if uses_images else "tiny-t2v"}
    return dict(
        dit=registry.build("dit", dit),
        vae=registry.build("vae", "wan"),
        text_encoder=registry.build("text_encoder", {"name": "umt5", "max_length": 16}),
        image_encoder=registry.build("image_encoder", "clip") if uses_images else None,
        layout=registry.build("reference_layout", layout),
    )


def tiny_pipeline(layout: str = "a2", solver=None, seed: int = 0, **kwargs) -> E2VPipeline:
    solver = solver or {"name": "unipc", "num_steps": 2, "shift": 3.0}
    return E2VPipeline(**tiny_components(layout, seed), solver=registry.build("solver", solver), **kwargs)


def tiny_refs(count: int, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(40, 30), (20, 50), (32, 32), (64, 16), (24, 24)]
    return [torch.rand(3, *shapes[i % 5], generator=generator) * 2 - 1 for i in range(count)]


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(2)
    return tiny_pipeline()


def generate(pipe, refs, **overrides):
    args = dict(prompt="a cat chases a red ball", frames=9, seed=3, progress=False, **SIZE)
    args.update(overrides)
    return pipe(refs, **args)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_video_shape_for_one_to_five_references(pipe, count):
    frames = 4 * count + 1
    video = generate(pipe, tiny_refs(count), frames=frames, kinds=["object"] * (count - 1) + ["background"])
    prefix = pipe.layout.prefix_frames(count)
    assert video.shape == (3, frames - prefix, 16, 32)
    assert torch.isfinite(video).all() and video.abs().max() <= 1


@pytest.mark.parametrize("count, sampled", [(1, 9), (3, 17)])
def test_output_frames_is_the_length_asked_whatever_the_reference_count(pipe, count, sampled):
    # a2 cuts 1 + 4 (N - 1) reference frames: 7 output frames need 9 sampled with 1 reference, 17 with 3 (8 left,
    # the surplus frame trimmed)
    assert pipe.sampled_frames(count, 7) == sampled
    video = generate(pipe, tiny_refs(count), output_frames=7, frames=None)
    assert video.shape == (3, 7, 16, 32)
    full = generate(pipe, tiny_refs(count), frames=sampled)
    torch.testing.assert_close(video, full[:, :7])


def test_temporal_append_layout_keeps_all_frames():
    pipe = tiny_pipeline("temporal_append")
    video = generate(pipe, tiny_refs(3), frames=5, guidance=4.0)
    assert video.shape == (3, 5, 16, 32)


def test_same_seed_same_video(pipe, tmp_path):
    refs = tiny_refs(2)
    path = tmp_path / "ref.png"
    save_image(path, refs[0])
    first = generate(pipe, [path, refs[1]])
    torch.testing.assert_close(generate(pipe, [path, refs[1]]), first, atol=0, rtol=0)
    assert (generate(pipe, [path, refs[1]], seed=4) - first).abs().max() > 1e-3


def branch_inputs(pipe, count_refs=2, image_guidance=None):
    layout_refs, clip_refs = pipe.prepare_references(tiny_refs(count_refs), None, 16, 32)
    branches = pipe._branches("a prompt", "ugly", layout_refs, clip_refs, 9, 5.0, image_guidance)
    latents = torch.randn(1, 16, 3, 2, 4, generator=torch.Generator().manual_seed(0))
    return branches, latents


@pytest.mark.parametrize("image_guidance", [None, 2.0])
def test_batched_guidance_equals_sequential_forwards(pipe, image_guidance):
    branches, latents = branch_inputs(pipe, image_guidance=image_guidance)
    t = torch.tensor([700.0])
    batched = pipe.velocity(latents, t, branches, 0, 2)
    assert batched.shape[0] == (3 if image_guidance else 2)
    for g in range(batched.shape[0]):
        single = {k: v[g : g + 1] if v is not None else None for k, v in branches.items()}
        torch.testing.assert_close(batched[g : g + 1], pipe.velocity(latents, t, single, 0, 2), atol=1e-5, rtol=1e-5)
    # guidance arithmetic: text CFG and dual guidance
    full, textless = batched[0:1], batched[1:2]
    guided = E2VPipeline.combine(batched, 5.0, image_guidance)
    if image_guidance is None:
        torch.testing.assert_close(guided, textless + 5.0 * (full - textless))
    else:
        null = batched[2:3]
        torch.testing.assert_close(guided, null + 2.0 * (textless - null) + 5.0 * (full - textless))


def test_null_conditions_follow_training_dropout(pipe):
    branches, _ = branch_inputs(pipe, image_guidance=2.0)
    layout_refs, clip_refs = pipe.prepare_references(tiny_refs(2), None, 16, 32)
    plain = pipe._branches("a prompt", "", layout_refs, clip_refs, 9, 5.0, None)
    assert plain["text"][1].abs().sum() == 0  # "" negative prompt = zero text states
    assert branches["text"][1].abs().sum() > 0  # an explicit negative prompt is encoded
    assert branches["condition"][2].abs().sum() == 0 and branches["image"][2].abs().sum() == 0
    torch.testing.assert_close(branches["condition"][0], branches["condition"][1])


def test_step_cache_skips_blocks_and_stays_close(pipe):
    refs = tiny_refs(2)
    steps = dict(steps=5)
    reference = generate(pipe, refs, **steps)
    try:
        pipe.enable_step_cache(0.0)
        torch.testing.assert_close(generate(pipe, refs, **steps), reference, atol=0, rtol=0)
        assert pipe.step_cache.skipped == 0
        pipe.enable_step_cache(1e9)
        cached = generate(pipe, refs, **steps)
        assert pipe.step_cache.skipped == 3 and pipe.step_cache.computed == 2  # first and last always run
        assert torch.isfinite(cached).all() and cached.shape == reference.shape
    finally:
        pipe.enable_step_cache(None)


def test_offload_on_cpu_matches(pipe):
    refs = tiny_refs(1)
    offloaded = tiny_pipeline(device="cpu", offload=True)
    torch.testing.assert_close(generate(offloaded, refs), generate(pipe, refs), atol=0, rtol=0)


def test_vae_tiling_decodes_same_shape(pipe):
    refs = tiny_refs(1)
    tiled = tiny_pipeline()
    tiled.vae.enable_tiling(16, overlap=8)
    video = generate(tiled, refs)
    assert video.shape == generate(pipe, refs).shape and torch.isfinite(video).all()


def test_quantize_int8_runs():
    pytest.importorskip("bitsandbytes")
    quantized = tiny_pipeline().quantize("int8")
    assert not any(type(m) is nn.Linear for m in quantized.dit.blocks.modules())
    video = generate(quantized, tiny_refs(1))
    assert video.shape == (3, 8, 16, 32) and torch.isfinite(video).all()


@pytest.mark.slow
def test_compile_blocks_matches_eager(pipe):
    refs = tiny_refs(1)
    compiled = tiny_pipeline().compile()
    torch.testing.assert_close(generate(compiled, refs), generate(pipe, refs), atol=1e-4, rtol=1e-4)


def test_from_weights_round_trip(pipe, tmp_path):
    pipe.dit.save_pretrained(tmp_path / "transformer")
    pipe.vae.save_pretrained(tmp_path / "vae")
    pipe.text_encoder.save_pretrained(tmp_path)
    pipe.image_encoder.save_pretrained(tmp_path)
    loaded = E2VPipeline.from_weights(tmp_path, solver={"name": "unipc", "num_steps": 2, "shift": 3.0})
    assert type(loaded.layout).__name__ == "A2Layout"
    loaded.text_encoder.max_length = 16
    refs = tiny_refs(1)
    torch.testing.assert_close(generate(loaded, refs), generate(pipe, refs), atol=1e-5, rtol=1e-5)


def save_checkpoint(pipe, path, **extra_specs):
    """An E2VDiffusion-style checkpoint of ``pipe``'s DiT with the tiny components' specs."""
    specs = dict(
        dit={"name": "wan", "preset": "tiny"},
        vae={"name": "wan", "preset": "tiny"},
        text_encoder={"name": "umt5", "preset": "tiny", "max_length": 16},
        image_encoder={"name": "clip", "preset": "tiny"},
        layout="a2",
        **extra_specs,
    )
    state = {f"dit.{k}": v for k, v in pipe.dit.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": specs, "epoch": 0}, path)
    return specs, state


def test_from_checkpoint(pipe, tmp_path):
    specs, state = save_checkpoint(pipe, tmp_path / "run.ckpt", sample_solver={"name": "unipc", "num_steps": 2,
                                                                              "shift": 3.0})
    torch.manual_seed(123)  # the spec rebuilds its own (seeded) VAE: copy ours in to compare the DiT alone
    loaded = E2VPipeline.from_checkpoint(tmp_path / "run.ckpt")
    loaded.vae.load_state_dict(pipe.vae.state_dict())
    refs = tiny_refs(1)
    torch.testing.assert_close(generate(loaded, refs), generate(pipe, refs), atol=1e-6, rtol=1e-6)
    # EMA weights in the checkpoint replace the raw ones
    shadow = {k: torch.zeros_like(v) for k, v in state.items() if k.endswith("proj_out.weight")}
    torch.save({"state_dict": state, "hyper_parameters": specs, "callbacks": {"EMA": {"shadow": shadow}}},
               tmp_path / "ema.ckpt")
    assert E2VPipeline.from_checkpoint(tmp_path / "ema.ckpt").dit.proj_out.weight.abs().sum() == 0


def test_clear_errors(pipe, tmp_path):
    refs = tiny_refs(1)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        generate(pipe, [tmp_path / "missing.png"])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        generate(pipe, [tmp_path / "broken.png"])
    with pytest.raises(ValueError, match="multiples of 16"):
        generate(pipe, refs, height=40)
    with pytest.raises(ValueError, match="4k\\+1"):
        generate(pipe, refs, frames=10)
    with pytest.raises(ValueError, match="3 references need at least 13 frames"):
        generate(pipe, tiny_refs(3), frames=9)
    with pytest.raises(ValueError, match="at least one reference"):
        generate(pipe, [])
    with pytest.raises(ValueError, match="2 reference kinds for 1"):
        generate(pipe, refs, kinds=["object", "background"])
    with pytest.raises(ValueError, match="uint8"):
        generate(pipe, [torch.zeros(4, 8, 8)])
    (tmp_path / "weights" / "transformer").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="vae/, text_encoder/, tokenizer/"):
        E2VPipeline.from_weights(tmp_path / "weights")
    with pytest.raises(CheckpointError, match="not an E2VDiffusion checkpoint"):
        torch.save({"state_dict": {}}, tmp_path / "bad.ckpt")
        E2VPipeline.from_checkpoint(tmp_path / "bad.ckpt")


def test_generate_command_writes_videos_atomically(pipe, tmp_path):
    from e2v.datamodules.video_io import probe_video
    from e2v.pipeline.generate import generate_command, parse_reference

    assert parse_reference("a/b.png:background") == ("a/b.png", "background")
    assert parse_reference("a/b.png") == ("a/b.png", None)
    save_checkpoint(pipe, tmp_path / "run.ckpt")
    refs = tiny_refs(2)
    for i, ref in enumerate(refs):
        save_image(tmp_path / f"ref{i}.png", ref)
    args = ["--checkpoint", str(tmp_path / "run.ckpt"), "--ref", str(tmp_path / "ref0.png"),
            "--ref", f"{tmp_path / 'ref1.png'}:background", "--prompt", "a cat", "--height", "16", "--width", "32",
            "--frames", "4", "--steps", "2", "--step-cache", "0.1", "--no-progress"]
    out, compare = tmp_path / "out.mp4", tmp_path / "compare.mp4"
    assert generate_command(args + ["--out", str(out), "--compare", str(compare)]) == 0
    assert probe_video(out)["frames"] == 4 and probe_video(out)["width"] == 32
    assert probe_video(compare)["width"] > 32
    missing = args + ["--ref", str(tmp_path / "nope.png"), "--out", str(tmp_path / "fail.mp4")]
    assert generate_command(missing) == 2  # bad input, found before any model is loaded
    assert not list(tmp_path.glob("fail*")) and not list(tmp_path.glob(".fail*"))


def test_pipeline_leaves_its_modules_as_found():
    """Train flags, requires_grad and the VAE's own tiling are the same after sampling; ``tile`` applies while it
    runs only, and the result equals a pipeline over modules already in eval mode."""
    components = tiny_components()
    for module in (components["dit"], components["vae"]):
        module.train()
    components["vae"].enable_tiling(32, 16)
    grads = {name: p.requires_grad for name, p in components["dit"].named_parameters()}
    flags = {name: m.training for name, m in components["dit"].named_modules()}
    pipe = E2VPipeline(**components, solver=registry.build("solver", {"name": "unipc", "num_steps": 2, "shift": 3.0}),
                       device="cpu", tile=128)
    seen = []
    decode = pipe.vae.decode
    pipe.vae.decode = lambda *a, **k: (seen.append((pipe.vae.training, pipe.vae.tile_size)), decode(*a, **k))[1]
    video = generate(pipe, tiny_refs(1))
    assert seen == [(False, 128)]
    assert {name: p.requires_grad for name, p in components["dit"].named_parameters()} == grads
    assert {name: m.training for name, m in components["dit"].named_modules()} == flags
    assert components["vae"].training and (components["vae"].tile_size, components["vae"].tile_overlap) == (32, 16)
    assert torch.isfinite(video).all()
