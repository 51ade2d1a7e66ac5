"""PatchVAE: the Wan latent grid contract, causality by chunk, checkpoints, and the shipped tiny-world weights."""

import hashlib
import shutil

import pytest
import torch

from e2v import registry
from e2v.bench.pixel_metrics import psnr
from e2v.datamodules.video_io import read_video
from e2v.modules import patch_vae
from e2v.modules.patch_vae import PatchVAE
from e2v.modules.weights import CheckpointError


def small(**options):
    return registry.build("vae", {"name": "patch", "width": 16, "depth": 1, **options})


def test_latent_grid_matches_the_wan_contract():
    vae = small()
    video = torch.rand(2, 3, 17, 32, 48) * 2 - 1
    mean, logvar = vae.encode_distribution(video)
    assert mean.shape == logvar.shape == (2, 16, 5, 8, 12)
    assert vae.decode(mean).shape == (2, 3, 17, 32, 48)
    assert vae.spatial_factor == 4 and vae.temporal_factor == 4
    with pytest.raises(ValueError, match="4k\\+1"):
        vae.encode(video[:, :, :6])
    with pytest.raises(ValueError, match="multiples of 4"):
        vae.encode(video[..., :30])


def test_each_latent_frame_sees_only_its_own_frames():
    """Latent frame 0 is pixel frame 0 alone; latent frame j is pixel frames 4j-3 .. 4j (no context across)."""
    vae = small()
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    changed = video.clone()
    changed[:, :, 5:] = -changed[:, :, 5:]
    a, b = vae.encode(video), vae.encode(changed)
    assert torch.equal(a[:, :, :2], b[:, :, :2]) and not torch.allclose(a[:, :, 2], b[:, :, 2])
    z = torch.randn(1, 16, 3, 4, 4)
    z2 = z.clone()
    z2[:, :, 2] += 1
    assert torch.equal(vae.decode(z)[:, :, :5], vae.decode(z2)[:, :, :5])


def test_pixel_refiner_starts_as_the_patch_decoder_and_keeps_chunks_apart():
    """``pixel_width``: residual blocks per decoded frame at full resolution, zero-initialised (the decoder starts as
    the plain patch decoder's colour channels), still one latent frame -> its own pixel frames."""
    vae = small(pixel_width=8, pixel_depth=2)
    z = torch.randn(1, 16, 3, 4, 4)
    frames = z.transpose(1, 2).flatten(0, 1)
    colours = vae._unfold(vae.decoder(frames)[:, : 3 * 4 * 4 * 4], 1)  # first 3 x (4 frames x 4 x 4) channels
    assert torch.equal(vae.decode(z, clamp=False), colours)
    torch.nn.init.normal_(vae.refiner.out.weight, std=0.1)  # a trained refiner acts on every pixel
    assert not torch.allclose(vae.decode(z, clamp=False), colours)
    z2 = z.clone()
    z2[:, :, 2] += 1
    assert torch.equal(vae.decode(z)[:, :, :5], vae.decode(z2)[:, :, :5])
    with pytest.raises(ValueError, match="pixel_width \\(12\\) must be a multiple of groups"):
        small(pixel_width=12)


def test_untrained_vae_starts_as_a_patch_autoencoder_and_tiles():
    vae = small()
    vae.enable_tiling(16, 8)
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    assert vae.decode(vae.encode(video)).shape == video.shape
    with pytest.raises(ValueError, match="multiples of 4"):
        vae.enable_tiling(18, 8)


def test_save_and_load_round_trip(tmp_path):
    vae = small(seed=3)
    vae.config.latents_mean = [0.5] * 16
    vae.save_pretrained(tmp_path / "vae")
    again = registry.build("vae", {"name": "patch", "weights": str(tmp_path / "vae")})
    assert again.config == vae.config
    for (name, a), (_, b) in zip(vae.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="not both"):
        registry.build("vae", {"name": "patch", "weights": str(tmp_path / "vae"), "pretrained": "tiny-world"})
    with pytest.raises(ValueError, match="no shipped pretrained vae named 'nope'"):
        registry.build("vae", {"name": "patch", "pretrained": "nope"})


def test_shipped_weights_are_checksummed(tmp_path, monkeypatch):
    from e2v import assets

    folder = patch_vae.pretrained_folder("tiny-world")
    copy = tmp_path / "tiny_world_vae"
    shutil.copytree(folder, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1  # one flipped bit in the last weight
    (copy / "model.safetensors").write_bytes(bytes(data))
    digest = assets.SHIPPED["vae", "tiny-world"][2]
    monkeypatch.setattr(assets, "ROOT", tmp_path)
    with pytest.raises(CheckpointError, match="sha256 .* differs from the recorded"):
        patch_vae.pretrained_folder("tiny-world")
    assert hashlib.sha256(data).hexdigest() != digest


def test_shipped_vae_reconstructs_held_out_clips(tmp_path, tiny_world):
    """The main job's VAE on held-out clips of the main job's world (never trained on): >= 30 dB PSNR (30.5 dB
    over all 24, e2v/assets/tiny_world_vae/README.md)."""
    world = tiny_world(tmp_path, num_clips=0, num_heldout=12)
    import json

    records = [json.loads(line) for line in open(world["heldout"])]
    video = torch.stack([read_video(tmp_path / r["video"], None) for r in records]).permute(0, 4, 1, 2, 3)
    video = video.float() / 127.5 - 1
    vae = registry.build("vae", {"name": "patch", "pretrained": "tiny-world"})
    assert isinstance(vae, PatchVAE) and vae.dtype == torch.float32
    with torch.no_grad():
        reconstruction = vae.decode(vae.encode(video))
    assert psnr(reconstruction, video) >= 30.0
