"""The a2 layout's Table 2 ablations (official ``vae_repeat=False`` / ``vae_combine="after"``): tensors against
hand-built expectations and the official mask construction, a tiny training step and a tiny generation."""

import pytest
import torch

from e2v import registry
from e2v.datamodules.cache import component_identity
from e2v.modules.layouts import A2Layout, fold_frame_mask
from e2v.modules.vae import WanVAE
from e2v.tasks.e2v_diffusion import E2VDiffusion
from test_e2v_diffusion import TEXT, make_batch

NO_REPEAT = {"name": "a2", "repeat": False}
AFTER = {"name": "a2", "combine": "after"}


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return WanVAE.from_preset("tiny").eval()


def constant_refs(num_refs: int, size: int = 16) -> torch.Tensor:
    """``[1, N, 3, size, size]``: reference i is the constant 0.1 + 0.2 i."""
    values = 0.1 + 0.2 * torch.arange(num_refs, dtype=torch.float32)
    return values.view(1, num_refs, 1, 1, 1).expand(1, num_refs, 3, size, size).clone()


def official_mask(num_frames: int, first_repeats: int, cut: int, h: int = 2, w: int = 2) -> torch.Tensor:
    """SkyReels-A2 ``prepare_latents``' mask, transcribed: ones on pixel frame 0, frame 0 repeated
    ``first_repeats`` times in front of frames ``cut:``, viewed as groups of 4 and transposed: ``[1, 4, T, h, w]``."""
    mask = torch.ones(1, 1, num_frames, h, w)
    mask[:, :, 1:] = 0
    first = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=first_repeats)
    mask = torch.cat([first, mask[:, :, cut:]], dim=2)
    return mask.view(1, -1, 4, h, w).transpose(1, 2)


def test_fold_frame_mask_places_pixel_frames_on_channels():
    pixel = torch.zeros(1, 9, 1, 1)
    pixel[0, [0, 2, 7], 0, 0] = 1  # frame 0 -> latent 0 (all channels); frame 2 -> latent 1 ch 1; 7 -> latent 2 ch 2
    expected = torch.zeros(4, 3)
    expected[:, 0] = 1
    expected[1, 1] = 1
    expected[2, 2] = 1
    torch.testing.assert_close(fold_frame_mask(pixel)[0, :, :, 0, 0], expected, rtol=0, atol=0)


def test_no_repeat_condition_video_has_one_frame_per_reference():
    video = A2Layout(repeat=False).condition_video(constant_refs(3), 9)
    torch.testing.assert_close(video[0, 0, :, 0, 0], torch.tensor([0.1, 0.3, 0.5, 0, 0, 0, 0, 0, 0]))


@pytest.mark.parametrize(("spec", "first_repeats", "cut"), [(NO_REPEAT, 6, 3), ("a2", 12, 9)])
def test_mask_equals_the_official_construction_for_three_references(vae, spec, first_repeats, cut):
    """N = 3, 17 frames: no repeat is '4 + 2 ones' (latent 0 all channels, latent 1 channels 0-1)."""
    cond = registry.build("reference_layout", spec).condition(vae, constant_refs(3), 17)
    torch.testing.assert_close(cond[:, :4], official_mask(17, first_repeats, cut), rtol=0, atol=0)
    if spec == NO_REPEAT:
        assert cond[0, :4, 1, 0, 0].tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize("num_refs", [1, 3, 5])
def test_no_repeat_latents_prefix_and_reference_count(vae, num_refs):
    layout = A2Layout(repeat=False)
    refs = torch.rand(1, num_refs, 3, 16, 16, generator=torch.Generator().manual_seed(num_refs)) * 2 - 1
    frames = 13
    cond = layout.condition(vae, refs, frames)
    assert cond.shape == (1, 20, 4, 2, 2)
    torch.testing.assert_close(cond[:, 4:], vae.normalize(vae.encode(layout.condition_video(refs, frames))))
    assert layout.prefix_frames(num_refs) == num_refs
    assert layout.num_references(cond) == num_refs
    target = layout.target_video(torch.rand(1, 3, frames, 16, 16), refs)
    torch.testing.assert_close(target[:, :, :num_refs], refs.transpose(1, 2))


def test_no_repeat_loss_weights_cover_the_latent_frames_the_references_touch():
    layout = A2Layout(reference_loss_weight=0.0, repeat=False)
    torch.testing.assert_close(layout.loss_weights(1, 4), torch.tensor([0.0, 1, 1, 1]))
    torch.testing.assert_close(layout.loss_weights(3, 4), torch.tensor([0.0, 0, 1, 1]))  # r1, r2 in latent 1
    torch.testing.assert_close(layout.loss_weights(6, 4), torch.tensor([0.0, 0, 0, 1]))  # r5 in latent 2


@pytest.mark.parametrize("num_refs", [1, 2, 3])
def test_combine_after_encodes_each_reference_alone_and_pads_zeros(vae, num_refs):
    layout = A2Layout(combine="after")
    refs = torch.rand(1, num_refs, 3, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1
    cond = layout.condition(vae, refs, 17)
    assert cond.shape == (1, 20, 5, 2, 2)
    for i in range(num_refs):
        alone = vae.normalize(vae.encode(refs[:, i].unsqueeze(2)))[:, :, 0]
        torch.testing.assert_close(cond[:, 4:, i], alone)
    assert torch.all(cond[:, 4:, num_refs:] == 0)  # zeros in normalised latent space, not encoded grey
    assert torch.all(cond[:, :4, :num_refs] == 1) and torch.all(cond[:, :4, num_refs:] == 0)
    if num_refs == 2:  # the official 'after' mask: frame 0 repeated 4 + 4 times in front of frames 5:
        torch.testing.assert_close(cond[:, :4], official_mask(17, 8, 5), rtol=0, atol=0)
    assert layout.num_references(cond) == num_refs
    # the target keeps the frame-repeated prefix: its latent frames 0..N-1 are the references too
    target = layout.target_video(torch.rand(1, 3, 17, 16, 16), refs)
    torch.testing.assert_close(target[:, :, : layout.prefix_frames(num_refs)],
                               A2Layout().condition_video(refs, layout.prefix_frames(num_refs)))


def test_errors_and_options_are_checked():
    with pytest.raises(ValueError, match="3 references need at least 9 frames"):
        A2Layout(repeat=False).check(3, 5)
    A2Layout(repeat=False).check(3, 9)
    with pytest.raises(ValueError, match="3 references need at least 13 frames"):
        A2Layout(combine="after").check(3, 9)
    with pytest.raises(ValueError, match="repeat: false applies to combine: before only"):
        A2Layout(repeat=False, combine="after")
    with pytest.raises((TypeError, ValueError), match="combine"):
        registry.build("reference_layout", {"name": "a2", "combine": "later"})


def test_options_change_the_cache_identity():
    identities = {str(component_identity(registry.build("reference_layout", spec))) for spec in ("a2", NO_REPEAT, AFTER)}
    assert len(identities) == 3


@pytest.mark.parametrize("spec", [NO_REPEAT, AFTER])
def test_tiny_training_step_and_generation(spec):
    """One optimizer step (online and from cached latents: the same loss) and a 2-step generation."""
    torch.manual_seed(0)
    module = E2VDiffusion(text_encoder=TEXT, layout=spec, text_dropout=0.0, reference_dropout=0.0)
    batch = make_batch(n=3, frames=13, size=16)
    inputs = module.encode_batch(batch)
    cached = {"latents": inputs["x0"], "condition": inputs["condition"], "text": inputs["text"], "image": inputs["image"]}
    assert module.encode_batch(cached)["num_refs"] == 3
    loss = module.training_step(batch, 0)
    with torch.no_grad():
        torch.testing.assert_close(module.training_step(cached, 0), loss.detach())
    loss.backward()
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    before = [p.detach().clone() for p in module.dit.parameters()]
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, module.dit.parameters()))

    pipe = module.make_pipeline({"name": "unipc", "num_steps": 2, "shift": 3.0})
    refs = list(batch["refs"][0])
    video = pipe(refs, "a cat", height=16, width=16, frames=13, seed=1, progress=False)
    prefix = module.layout.prefix_frames(3)
    assert prefix == (3 if spec == NO_REPEAT else 9)
    assert video.shape == (3, 13 - prefix, 16, 16) and torch.isfinite(video).all()
