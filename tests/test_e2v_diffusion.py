import pytest
import torch

from e2v.tasks.e2v_diffusion import E2VDiffusion

TEXT = {"name": "umt5", "preset": "tiny", "max_length": 16}


def make_batch(b=2, n=2, frames=13, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "video": torch.rand(b, 3, frames, size, size, generator=g) * 2 - 1,
        "refs": torch.rand(b, n, 3, size, size, generator=g) * 2 - 1,
        "refs_clip": torch.rand(b, n, 3, 32, 32, generator=g) * 2 - 1,
        "caption": ["a red star over grass", "a cat"][:b],
        "id": [f"clip{i}" for i in range(b)],
    }


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return E2VDiffusion(text_encoder=TEXT)


def test_only_the_dit_trains(module):
    loss = module.training_step(make_batch(), 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in module.dit.parameters() if p.requires_grad)
    for frozen in (module.vae, module.text_encoder, module.image_encoder):
        assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    module.zero_grad()
    opt = module.configure_optimizers()
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in module.dit.parameters()}


def test_cached_batch_gives_the_same_loss_as_online(module):
    batch = make_batch()
    inputs = module.encode_batch(batch)
    cached = {"latents": inputs["x0"], "condition": inputs["condition"], "text": inputs["text"], "image": inputs["image"]}
    assert module.encode_batch(cached)["num_refs"] == 2
    with torch.no_grad():
        online = module.training_step(batch, 0)
        from_cache = module.training_step(cached, 0)
    torch.testing.assert_close(online, from_cache)


def test_dropout_zeroes_text_and_references():
    module = E2VDiffusion(text_encoder=TEXT, text_dropout=1.0, reference_dropout=1.0)
    inputs = module.drop_conditions(module.encode_batch(make_batch()))
    assert inputs["text"].abs().sum() == 0 and inputs["image"].abs().sum() == 0 and inputs["condition"].abs().sum() == 0
    assert inputs["num_refs"] == 2


def test_nonfinite_loss_is_skipped_then_stops():
    module = E2VDiffusion(text_encoder=TEXT, max_nonfinite_steps=1)
    with torch.no_grad():
        module.dit.proj_out.weight.fill_(float("nan"))
    skipped = module.training_step(make_batch(), 0)
    skipped.backward()  # a zero loss connected to no parameter: no gradient, so the optimizer step changes nothing
    assert skipped.item() == 0 and all(p.grad is None for p in module.parameters())
    assert module.skipped_steps == 1
    with pytest.raises(FloatingPointError, match="non-finite loss .* max_nonfinite_steps=1"):
        module.training_step(make_batch(), 1)


def test_width_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="text_dim=48 does not match the text encoder's width \\(32\\)"):
        E2VDiffusion(text_encoder=TEXT, dit={"name": "wan", "preset": "tiny", "text_dim": 48})


def test_checkpoint_holds_only_trained_weights(module):
    state = module.state_dict()
    assert state and all(k.startswith("dit.") for k in state)
    module.load_state_dict(state, strict=True)


def test_frozen_parts_stay_frozen_in_train_mode(module):
    """train() (as Lightning calls it) leaves the VAE and encoders in eval mode without gradients; the DiT trains."""
    module.train()
    for part in (module.vae, module.text_encoder, module.image_encoder):
        assert not any(m.training for m in part.modules() if m is not part or not hasattr(part, "model"))
        assert not any(p.requires_grad for p in part.parameters())
    assert module.dit.training and all(p.requires_grad for p in module.dit.parameters())


def test_all_bad_batch_is_a_step_without_gradients(module):
    """A batch whose samples were all unreadable (only ``skipped``/``id``): a zero loss tied to no parameter."""
    before = module.skipped_steps
    loss = module.training_step({"skipped": [("c0", "unreadable_video", "broken")], "id": []}, 0)
    loss.backward()
    assert loss.item() == 0 and all(p.grad is None for p in module.dit.parameters())
    assert module.skipped_steps == before + 1


def test_timestep_bucket_sums_match_a_loop(module):
    per_sample = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0])
    t = torch.tensor([0.1, 0.2, 0.6, 0.99, 1.0])
    sums = module.timestep_bucket_sums(per_sample, t)
    assert sums.tolist() == [[3.0, 0.0, 4.0, 24.0], [2.0, 0.0, 1.0, 2.0]]
