"""WanVAE: parity with diffusers' AutoencoderKLWan, checkpoints, causality, tiling, memory, errors."""

import inspect
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from e2v import registry
from e2v.modules.vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, PRESETS, WanVAE, WanVAEConfig
from e2v.modules.video_vae import _tiled
from e2v.modules.weights import CheckpointError

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLWan  # noqa: E402

TINY = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True])


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).norm() / reference.norm()).item()


def smooth_video(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A [1, 3, F, H, W] video in [-1, 1] with image-like spatial correlation (upsampled noise)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, frames, height // 8, width // 8, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(frames, height, width), mode="trilinear")


@pytest.fixture(scope="module")
def reference_folder(tmp_path_factory):
    """A tiny random diffusers AutoencoderKLWan (norm gains randomised too), saved with save_pretrained."""
    torch.manual_seed(0)
    reference = AutoencoderKLWan(**TINY, latents_mean=list(WAN21_LATENTS_MEAN), latents_std=list(WAN21_LATENTS_STD))
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if name.endswith("gamma"):
                parameter.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp("wan_vae")
    reference.save_pretrained(folder)
    return folder, reference.eval()


@pytest.fixture(scope="module")
def ours(reference_folder):
    return WanVAE.from_pretrained(reference_folder[0]).eval()


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_decode_match_diffusers(reference_folder, ours, frames):
    reference = reference_folder[1]
    video = torch.rand(2, 3, frames, 16, 24, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    with torch.no_grad():
        posterior = reference.encode(video).latent_dist
        mean, logvar = ours.encode_distribution(video)
        assert mean.shape == (2, 16, (frames - 1) // 4 + 1, 2, 3)
        assert relative_error(mean, posterior.mean) <= 1e-5
        assert relative_error(logvar, posterior.logvar) <= 1e-5
        assert torch.equal(ours.encode(video), mean)
        latents = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
        expected = reference.decode(latents).sample
        decoded = ours.decode(latents)
    assert decoded.shape == (2, 3, frames, 16, 24)
    assert relative_error(decoded, expected) <= 1e-5
    assert decoded.abs().max() <= 1.0


def test_parameter_names_match_official_wan21_config():
    """The wan2.1 preset is diffusers' default (official) config with identical parameter names and shapes."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(AutoencoderKLWan.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    config = WanVAEConfig(**PRESETS["wan2.1"])
    for key, value in config.to_dict().items():
        if not key.startswith("_"):
            assert value == defaults[key], key
    with torch.device("meta"):
        reference = AutoencoderKLWan()
        ours = WanVAE.from_preset("wan2.1")
    expected = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    assert {name: tuple(t.shape) for name, t in ours.state_dict().items()} == expected


def test_save_load_round_trip_is_exact_and_diffusers_reads_it(tmp_path, ours):
    ours.save_pretrained(tmp_path / "single")
    ours.save_pretrained(tmp_path / "sharded", max_shard_bytes=20_000)
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    for folder in ("single", "sharded"):
        loaded = WanVAE.from_pretrained(tmp_path / folder)
        assert loaded.config == ours.config
        for (name, a), (_, b) in zip(ours.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(a, b), name
    reference = AutoencoderKLWan.from_pretrained(tmp_path / "single")
    assert torch.equal(reference.decoder.conv_out.weight, ours.decoder.conv_out.weight)
    half = WanVAE.from_pretrained(tmp_path / "single", dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and half.encode(torch.zeros(1, 3, 1, 16, 16)).dtype == torch.bfloat16


def test_bad_checkpoint_config_is_named(tmp_path, ours):
    ours.save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text().replace('"base_dim"', '"base_width"')
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match="base_width"):
        WanVAE.from_pretrained(tmp_path)


def test_normalize_denormalize(ours):
    z = torch.randn(2, 16, 3, 2, 2)
    assert torch.allclose(ours.denormalize(ours.normalize(z)), z, atol=1e-6)
    channel_means = torch.tensor(WAN21_LATENTS_MEAN).view(1, 16, 1, 1, 1).expand(1, 16, 2, 3, 3)
    assert ours.normalize(channel_means).abs().max() < 1e-6
    ones = ours.normalize(channel_means + torch.tensor(WAN21_LATENTS_STD).view(1, 16, 1, 1, 1))
    assert torch.allclose(ones, torch.ones_like(ones))


def test_encoder_and_decoder_are_causal(ours):
    """A prefix of the video encodes to a prefix of the latents, and a latent prefix decodes to a video prefix."""
    video = smooth_video(9, 16, 16)
    with torch.no_grad():
        latents = ours.encode(video)
        assert torch.allclose(ours.encode(video[:, :, :5]), latents[:, :, :2], atol=1e-5)
        decoded = ours.decode(latents)
        assert torch.allclose(ours.decode(latents[:, :, :2]), decoded[:, :, :5], atol=1e-5)


def test_gradients_flow_through_encode_and_decode():
    vae = WanVAE.from_preset("tiny")
    video = smooth_video(5, 16, 16)
    mean, logvar = vae.encode_distribution(video)
    reconstruction = vae.decode(mean + torch.randn_like(mean) * (0.5 * logvar).exp(), clamp=False)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
    ((reconstruction - video).pow(2).mean() + kl).backward()
    for parameter in (vae.encoder.conv_in.weight, vae.decoder.conv_out.weight, vae.quant_conv.weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_tile_blending_is_exact_for_local_functions():
    """Overlapping tiles blended with linear ramps reproduce a per-pixel function exactly (weights sum to 1)."""
    x = torch.randn(1, 4, 2, 40, 72)
    assert torch.allclose(_tiled(lambda t: t * 3, x, 24, 8, 1), x * 3, atol=1e-6)
    upsample = lambda t: t.repeat_interleave(8, -1).repeat_interleave(8, -2)  # noqa: E731
    assert torch.allclose(_tiled(upsample, x, 16, 8, 8), upsample(x), atol=1e-6)
    downsample = lambda t: torch.nn.functional.avg_pool3d(t, (1, 8, 8))  # noqa: E731
    assert torch.allclose(_tiled(downsample, x[..., :64], 32, 16, 1 / 8), downsample(x[..., :64]), atol=1e-6)


def test_tiled_close_to_untiled_at_least_as_diffusers(reference_folder, ours):
    """Tiling a random VAE (whose receptive field spans the frame) cannot be exact; ours stays closer to the
    untiled result than diffusers' tiling with the same tile size and overlap (64 px, 32 px), within 15 %."""
    reference = reference_folder[1]
    video = smooth_video(1, 64, 96)
    with torch.no_grad():
        latents = ours.encode(video)
        decoded = ours.decode(latents)
        ours.enable_tiling(64, 32)
        try:
            tiled_latents, tiled_video = ours.encode(video), ours.decode(latents)
            ours.enable_tiling(128)  # one tile covers the frame: untiled path
            assert torch.equal(ours.encode(video), latents)
        finally:
            ours.enable_tiling(None)
        reference.enable_tiling(64, 64, 32, 32)
        try:
            reference_latents = reference.encode(video).latent_dist.mean
            reference_video = reference.decode(latents).sample
        finally:
            reference.use_tiling = False
    assert tiled_latents.shape == latents.shape and tiled_video.shape == decoded.shape
    assert relative_error(tiled_latents, latents) <= min(0.15, relative_error(reference_latents, latents))
    assert relative_error(tiled_video, decoded) <= relative_error(reference_video, decoded)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from e2v.modules.vae import WanVAE

    def peak_mib(run, *args):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the resident-set high-water mark (VmHWM)
        run(*args)
        status = open("/proc/self/status").read()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024

    torch.set_num_threads(1)
    vae = WanVAE.from_preset("tiny").eval()
    if sys.argv[1] == "encode":
        run, short, long = vae.encode, torch.zeros(1, 3, 9, 64, 64), torch.zeros(1, 3, 33, 64, 64)
    else:
        run, short, long = vae.decode, torch.zeros(1, 16, 3, 8, 8), torch.zeros(1, 16, 9, 8, 8)
    with torch.no_grad():
        run(short[:, :, :1])
        idle = peak_mib(lambda: None)
        print(peak_mib(run, short) - idle, peak_mib(run, long) - idle)
    """
)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("mode", ["encode", "decode"])
def test_activation_memory_does_not_grow_with_video_length(mode):
    """Peak RSS above idle (big allocations mmap'ed, so frees return memory): 33 frames take about what 9 take."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, mode], capture_output=True, text=True, env=env, check=True
    )
    short_peak, long_peak = map(float, result.stdout.split()[-2:])
    assert short_peak > 5, f"the 9-frame {mode} should show activation memory (MiB): {result.stdout}"
    assert long_peak < 1.25 * short_peak + 2, f"{mode}: 33 frames peaked at {long_peak:.1f} MiB, 9 at {short_peak:.1f}"


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 3, 4, 16, 16), "4k\\+1"),
        ((1, 3, 5, 20, 16), "multiples of 8"),
        ((1, 4, 5, 16, 16), "\\[B, 3, F, H, W\\]"),
        ((3, 5, 16, 16), "\\[B, 3, F, H, W\\]"),
    ],
)
def test_encode_rejects_bad_videos(ours, shape, message):
    with pytest.raises(ValueError, match=message):
        ours.encode(torch.zeros(shape))


def test_decode_and_config_errors(ours):
    with pytest.raises(ValueError, match="\\[B, 16, T, h, w\\]"):
        ours.decode(torch.zeros(1, 8, 2, 2, 2))
    with pytest.raises(ValueError, match="Wan2.2"):
        WanVAEConfig(is_residual=True)
    with pytest.raises(ValueError, match="latents_mean"):
        WanVAE.from_preset("tiny", z_dim=8)
    with pytest.raises(ValueError, match="unknown VAE preset"):
        WanVAE.from_preset("huge")
    with pytest.raises(ValueError, match="multiples of 8"):
        ours.enable_tiling(60)


def test_registry_builds_tiled_tiny_vae(reference_folder):
    vae = registry.build("vae", {"name": "wan", "tile_size": 32, "tile_overlap": 16})
    assert isinstance(vae, WanVAE) and vae.tile_size == 32 and vae.tile_overlap == 16
    assert (vae.z_dim, vae.temporal_factor, vae.spatial_factor) == (16, 4, 8)
    loaded = registry.build("vae", {"name": "wan", "weights": str(reference_folder[0]), "dtype": "bfloat16"})
    assert loaded.dtype == torch.bfloat16 and loaded.config.base_dim == 8
