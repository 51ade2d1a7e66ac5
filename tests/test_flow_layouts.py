import pytest
import torch

from e2v import registry
from e2v.modules.flow import noisy_latents, shift_time, velocity_target
from e2v.modules.layouts import A2Layout, TemporalAppendLayout
from e2v.modules.vae import WanVAE


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return WanVAE.from_preset("tiny").eval()


def test_flow_interpolation_and_velocity_recover_data():
    x0, eps = torch.randn(3, 16, 2, 4, 4), torch.randn(3, 16, 2, 4, 4)
    t = torch.tensor([0.0, 0.3, 1.0])
    xt = noisy_latents(x0, eps, t)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], eps[2])
    # one exact Euler step from t back to 0 along the true velocity recovers x0
    recovered = xt - t.view(-1, 1, 1, 1, 1) * velocity_target(x0, eps)
    torch.testing.assert_close(recovered, x0, atol=1e-5, rtol=0)


def test_shift_time_endpoints_and_value():
    t = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(shift_time(t, 3.0), torch.tensor([0.0, 0.75, 1.0]))
    torch.testing.assert_close(shift_time(t, 1.0), t)


@pytest.mark.parametrize("spec", ["uniform", {"name": "logit_normal", "std": 1.0}, {"name": "shifted", "shift": 5.0}])
def test_timestep_samplers_range_and_determinism(spec):
    sampler = registry.build("timestep_sampler", spec)
    a = sampler(4096, generator=torch.Generator().manual_seed(1))
    b = sampler(4096, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    if spec == "uniform":
        assert abs(a.mean().item() - 0.5) < 0.02
    if isinstance(spec, dict) and spec["name"] == "shifted":  # shift 5 pushes mass toward noise
        assert a.mean().item() > 0.7


def test_a2_condition_video_places_each_reference_on_its_latent_frame():
    refs = torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(1, 3, 3, 2, 2) / 4 + 0.1
    video = A2Layout().condition_video(refs, 17)
    per_frame = video[0, 0, :, 0, 0]
    expected = torch.tensor([0.1] + [0.35] * 4 + [0.6] * 4 + [0.0] * 8)
    torch.testing.assert_close(per_frame, expected)


@pytest.mark.parametrize("num_refs", [1, 2, 3, 5])
def test_a2_condition_mask_and_latents(vae, num_refs):
    layout = A2Layout()
    frames = 4 * num_refs + 5
    refs = torch.rand(2, num_refs, 3, 32, 32) * 2 - 1
    cond = layout.condition(vae, refs, frames)
    t = (frames - 1) // 4 + 1
    assert cond.shape == (2, 20, t, 4, 4)
    assert torch.all(cond[:, :4, :num_refs] == 1) and torch.all(cond[:, :4, num_refs:] == 0)
    expected = vae.normalize(vae.encode(layout.condition_video(refs, frames)))
    torch.testing.assert_close(cond[:, 4:], expected)
    assert layout.num_references(cond) == num_refs
    target = layout.target_video(torch.rand(2, 3, frames, 32, 32), refs)
    prefix = layout.prefix_frames(num_refs)
    assert target.shape[2] == frames
    torch.testing.assert_close(target[:, :, :prefix], layout.condition_video(refs, prefix))


def test_a2_errors_are_clear():
    layout = A2Layout()
    with pytest.raises(ValueError, match="4k\\+1"):
        layout.check(1, 16)
    with pytest.raises(ValueError, match="3 references need at least 13 frames"):
        layout.check(3, 9)
    with pytest.raises(ValueError, match="at least one reference"):
        layout.check(0, 9)


def test_a2_loss_weights():
    torch.testing.assert_close(A2Layout(reference_loss_weight=0.0).loss_weights(2, 4), torch.tensor([0.0, 0, 1, 1]))


def test_temporal_append_round_trip(vae):
    layout = TemporalAppendLayout()
    refs = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    cond = layout.condition(vae, refs, 9)
    assert cond.shape == (2, 16, 3, 4, 4)
    single = vae.normalize(vae.encode(refs[:, 1].unsqueeze(2)))[:, :, 0]
    torch.testing.assert_close(cond[:, :, 1], single)
    noisy = torch.randn(2, 16, 3, 4, 4)
    joined = layout.dit_input(noisy, cond)
    assert joined.shape == (2, 16, 6, 4, 4)
    assert torch.equal(layout.video_output(joined, cond), noisy)
    assert layout.prefix_frames(3) == 0 and layout.num_references(cond) == 3
