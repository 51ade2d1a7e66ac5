"""Issue 15, deliverable 1: the ``official`` preset reproduces the official SkyReels-A2 inference.

The reference is a transcription of the official sampling loop (``infer.py`` + ``models/pipeline_a2.py`` +
``models/utils.py`` at 7c14e2e) built from diffusers / transformers components loaded from a tiny random release
folder in the official layout; the UniPC scheduler gets the April-2025 schedule the official run used.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from e2v import registry
from e2v.modules.solvers import flow_sigmas, flow_timesteps
from e2v.pipeline import official
from e2v.pipeline.pipeline import E2VPipeline
from e2v.pipeline.presets import PRESETS, get_preset

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

HEIGHT, WIDTH, FRAMES, STEPS, SHIFT, GUIDANCE, SEED = 16, 32, 17, 4, 8.0, 5.0, 42
PROMPT = "A man is holding a teddy bear in the forest."


# --------------------------------------------------------------------------- the official code, transcribed
def _crop_and_resize_pad(image, height=480, width=720):  # models/utils.py, verbatim
    image = np.array(image)
    image_height, image_width, _ = image.shape
    if image_height / image_width < height / width:
        pad = int((((height / width) * image_width) - image_height) / 2.)
        padded_image = np.ones((image_height + pad * 2, image_width, 3), dtype=np.uint8) * 255
        padded_image[pad:pad+image_height, :] = image
        image = Image.fromarray(padded_image).resize((width, height))
    else:
        pad = int((((width / height) * image_height) - image_width) / 2.)
        padded_image = np.ones((image_height, image_width + pad * 2, 3), dtype=np.uint8) * 255
        padded_image[:, pad:pad+image_width] = image
        image = Image.fromarray(padded_image).resize((width, height))
    return image


def _crop_and_resize(image, height=512, width=512):  # models/utils.py, verbatim
    image = np.array(image)
    image_height, image_width, _ = image.shape
    if image_height / image_width < height / width:
        croped_width = int(image_height / height * width)
        left = (image_width - croped_width) // 2
        image = image[:, left: left+croped_width]
        image = Image.fromarray(image).resize((width, height))
    else:
        croped_height = int(image_width/width*height)
        top = (image_height - croped_height) // 2
        image = image[top:top+croped_height, :]
        image = Image.fromarray(image).resize((width, height))
    return image


def april_2025_schedule(num_steps: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """diffusers' UniPCMultistepScheduler.set_timesteps (use_flow_sigmas) as of April 2025: (sigmas, timesteps)."""
    alphas = np.linspace(1, 1 / 1000, num_steps + 1)
    sigmas = 1.0 - alphas
    sigmas = np.flip(shift * sigmas / (1 + (shift - 1) * sigmas))[:-1].copy()
    timesteps = (sigmas * 1000).copy().astype(np.int64)
    return np.concatenate([sigmas, [0]]).astype(np.float32), timesteps


def old_scheduler(num_steps: int):
    """infer.py's scheduler with the April-2025 schedule (today's custom-sigma path shifts the same levels)."""
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  num_train_timesteps=1000, flow_shift=SHIFT)
    levels = np.flip(1.0 - np.linspace(1, 1 / 1000, num_steps + 1))[:-1].copy()
    scheduler.set_timesteps(sigmas=levels)
    sigmas, timesteps = april_2025_schedule(num_steps, SHIFT)
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), timesteps)
    np.testing.assert_allclose(scheduler.sigmas.numpy(), sigmas, rtol=0, atol=1e-7)
    return scheduler


def t5_embeds(tokenizer, text_encoder, prompt: str) -> torch.Tensor:
    """A2Pipeline._get_t5_prompt_embeds (prompt_clean is a no-op on these ASCII prompts)."""
    inputs = tokenizer([prompt], padding="max_length", max_length=512, truncation=True, add_special_tokens=True,
                       return_attention_mask=True, return_tensors="pt")
    seq_lens = inputs.attention_mask.gt(0).sum(dim=1).long()
    embeds = text_encoder(inputs.input_ids, inputs.attention_mask).last_hidden_state
    embeds = [u[:v] for u, v in zip(embeds, seq_lens)]
    return torch.stack([torch.cat([u, u.new_zeros(512 - u.size(0), u.size(1))]) for u in embeds], dim=0)


def official_run(root, refer_images, negative_prompt, seed=SEED):
    """infer.py + A2Pipeline.__call__ (3 references, vae_combine="before", vae_repeat=True) on CPU in fp32.
    Returns (latents after each step, frames [F - 12, 3, H, W] in [0, 1])."""
    from diffusers.utils.torch_utils import randn_tensor
    from diffusers.video_processor import VideoProcessor

    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "tokenizer")
    text_encoder = transformers.UMT5EncoderModel.from_pretrained(root / "text_encoder").eval()
    image_encoder = transformers.CLIPVisionModel.from_pretrained(root / "image_encoder").eval()
    image_processor = transformers.CLIPImageProcessorPil.from_pretrained(root / "image_processor")
    transformer = diffusers.WanTransformer3DModel.from_pretrained(root / "transformer").eval()
    vae = diffusers.AutoencoderKLWan.from_pretrained(root / "vae").eval()
    scheduler = old_scheduler(STEPS)
    video_processor = VideoProcessor(vae_scale_factor=8)

    clip_image_list, vae_image_list = [], []
    for image_id, image in enumerate(refer_images):
        clip_image_list.append(_crop_and_resize_pad(image, height=512, width=512))
        if image_id == 0 or image_id == 1:
            image_vae = _crop_and_resize_pad(image, height=HEIGHT, width=WIDTH)
        else:
            image_vae = _crop_and_resize(image, height=HEIGHT, width=WIDTH)
        image_vae = video_processor.preprocess(image_vae, height=HEIGHT, width=WIDTH)
        vae_image_list.append(image_vae.unsqueeze(2).float())
    generator = torch.Generator("cpu").manual_seed(seed)

    prompt_embeds = t5_embeds(tokenizer, text_encoder, PROMPT)
    negative_prompt_embeds = t5_embeds(tokenizer, text_encoder, negative_prompt or "")
    image_embeds = torch.cat([
        image_encoder(**image_processor(images=image, return_tensors="pt"), output_hidden_states=True).hidden_states[-2]
        for image in clip_image_list], dim=1)

    # prepare_latents: the noise first, then the posterior sample, both from the generator
    num_latent_frames, lh, lw = (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8
    latents = randn_tensor((1, 16, num_latent_frames, lh, lw), generator=generator, dtype=torch.float32)
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    image_vae = vae_image_list
    video_condition = torch.cat([image_vae[0]] + [image_vae[1]] * 4 + [image_vae[2]] * 4 + [
        image_vae[0].new_zeros(1, 3, FRAMES - 9, HEIGHT, WIDTH)], dim=2)
    latent_condition = vae.encode(video_condition).latent_dist.sample(generator)
    latent_condition = (latent_condition - mean) * inv_std
    mask_lat_size = torch.ones(1, 1, FRAMES, lh, lw)
    mask_lat_size[:, :, list(range(1, FRAMES))] = 0
    first_frame_mask = torch.repeat_interleave(mask_lat_size[:, :, 0:1], dim=2, repeats=4 + 8)
    mask_lat_size = torch.concat([first_frame_mask, mask_lat_size[:, :, 9:, :]], dim=2)
    mask_lat_size = mask_lat_size.view(1, -1, 4, lh, lw).transpose(1, 2)
    condition = torch.concat([mask_lat_size, latent_condition], dim=1)

    history = []
    for t in scheduler.timesteps:
        latent_model_input = torch.cat([latents, condition], dim=1)
        timestep = t.expand(latents.shape[0])
        noise_pred = transformer(hidden_states=latent_model_input, timestep=timestep,
                                 encoder_hidden_states=prompt_embeds, encoder_hidden_states_image=image_embeds,
                                 return_dict=False)[0]
        noise_uncond = transformer(hidden_states=latent_model_input, timestep=timestep,
                                   encoder_hidden_states=negative_prompt_embeds,
                                   encoder_hidden_states_image=image_embeds, return_dict=False)[0]
        noise_pred = noise_uncond + GUIDANCE * (noise_pred - noise_uncond)
        latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        history.append(latents)

    video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
    video = video_processor.postprocess_video(video, output_type="pt")
    return history, video[0][12:]


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A tiny random release folder in the official layout (transformer/, vae/, text_encoder/, tokenizer/,
    image_encoder/, image_processor/), written by e2v's own savers."""
    registry.entries()
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("release")
    registry.build("dit", {"name": "wan", "preset": "tiny"}).save_pretrained(root / "transformer")
    registry.build("vae", "wan").save_pretrained(root / "vae")
    registry.build("text_encoder", {"name": "umt5", "preset": "tiny"}).save_pretrained(root)
    registry.build("image_encoder", "clip").save_pretrained(root)
    return root


def reference_images() -> list[Image.Image]:
    """Three references of different aspects (a wide one, a tall one, a background)."""
    generator = np.random.default_rng(7)
    shapes = [(30, 40), (50, 20), (36, 60)]
    return [Image.fromarray(generator.integers(0, 256, (*shape, 3), dtype=np.uint8)) for shape in shapes]


# ------------------------------------------------------------------------------------------------------ tests
def test_legacy_schedule_is_the_april_2025_one():
    sigmas, timesteps = april_2025_schedule(50, 8.0)
    assert torch.equal(flow_timesteps(50, 8.0, "legacy"), torch.from_numpy(timesteps).float())
    assert torch.equal(flow_sigmas(50, 8.0, "legacy"), torch.from_numpy(sigmas))
    assert flow_timesteps(50, 8.0, "legacy")[[0, 1, 2, -1]].tolist() == [999, 997, 994, 140]
    current = flow_timesteps(50, 8.0)
    assert (current - current.floor()).abs().max() > 0.1  # today's schedule: float timesteps, a different grid
    with pytest.raises(ValueError, match="unknown sigma schedule 'old'"):
        flow_sigmas(4, 8.0, "old")


def test_official_sampling_loop_reproduced_step_by_step(release):
    """e2v's latents equal the transcription's after every step (fp32, 1e-4), and so do the decoded frames:
    the 4N = 12 reference frames cut, the negative prompt encoded, the legacy UniPC schedule, the condition a
    posterior sample drawn after the noise, PIL references by position, CLIP squares through the processor."""
    torch.set_num_threads(2)
    refs = reference_images()
    expected_latents, expected_frames = official_run(release, refs, official.NEGATIVE_PROMPT)

    pipe = E2VPipeline.from_weights(release, preset="official", dtype="float32", device="cpu")
    recorded = []
    step = pipe.solver.step
    pipe.solver.step = lambda *args: recorded.append(step(*args)) or recorded[-1]
    video = pipe(refs, PROMPT, height=HEIGHT, width=WIDTH, frames=FRAMES, steps=STEPS, guidance=GUIDANCE, seed=SEED,
                 progress=False)

    assert len(recorded) == len(expected_latents) == STEPS
    for i, (ours, theirs) in enumerate(zip(recorded, expected_latents)):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4, msg=lambda m: f"step {i}: {m}")
    assert video.shape == (3, FRAMES - 12, HEIGHT, WIDTH)
    torch.testing.assert_close((video.permute(1, 0, 2, 3) + 1) / 2, expected_frames, atol=1e-4, rtol=1e-4)

    # the e2v preset on the same weights differs (mean condition, zero null text, other schedule and cut)
    pipe.preset = get_preset("e2v")
    e2v_video = pipe(refs, PROMPT, height=HEIGHT, width=WIDTH, frames=FRAMES, steps=STEPS, guidance=GUIDANCE,
                     seed=SEED, progress=False)
    assert e2v_video.shape == (3, FRAMES - 9, HEIGHT, WIDTH)


def test_empty_negative_prompt_is_encoded_by_the_official_preset(release):
    pipe = E2VPipeline.from_weights(release, preset="official", dtype="float32", device="cpu")
    tokenizer = transformers.AutoTokenizer.from_pretrained(release / "tokenizer")
    text_encoder = transformers.UMT5EncoderModel.from_pretrained(release / "text_encoder").eval()
    _, negative = pipe.encode_text(PROMPT, "")
    torch.testing.assert_close(negative, t5_embeds(tokenizer, text_encoder, ""), atol=1e-5, rtol=1e-5)
    assert negative.abs().max() > 0
    pipe.preset = get_preset("e2v")
    assert pipe.encode_text(PROMPT, "")[1].abs().max() == 0


def test_official_precision_whole_dit_bf16_clip_and_vae_fp32(release):
    pipe = E2VPipeline.from_weights(release, preset="official", device="cpu")
    assert {p.dtype for p in pipe.dit.parameters()} == {torch.bfloat16}  # time embedding and norms included
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in pipe.image_encoder.parameters()} == {torch.float32}
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float32}
    assert pipe.solver.schedule == "legacy"
    own = E2VPipeline.from_weights(release, preset="e2v", dtype="bfloat16", device="cpu")
    assert own.dit.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    video = pipe(reference_images(), PROMPT, height=HEIGHT, width=WIDTH, frames=13, steps=2, seed=SEED,
                 progress=False)
    assert video.shape == (3, 1, HEIGHT, WIDTH) and torch.isfinite(video).all()


def test_reference_preparation_matches_the_official_functions(release):
    """Pad / crop by position with PIL, and CLIP squares equal to CLIPImageProcessor's pixels."""
    from diffusers.video_processor import VideoProcessor

    refs = reference_images()
    tensors = [official.from_pil(image) for image in refs]
    processor = VideoProcessor(vae_scale_factor=8)
    for i, (image, tensor) in enumerate(zip(refs, tensors)):
        kind = official.position_kinds(3)[i]
        resize = _crop_and_resize_pad if i < 2 else _crop_and_resize
        expected = processor.preprocess(resize(image, HEIGHT, WIDTH), height=HEIGHT, width=WIDTH)[0]
        assert torch.equal(PRESETS["official"].prepare_reference(tensor, kind, HEIGHT, WIDTH), expected)
    assert official.position_kinds(4) == ["object", "object", "background", "background"]

    encoder = registry.build("image_encoder", {"name": "clip", "path": str(release)})
    processor = transformers.CLIPImageProcessorPil.from_pretrained(release / "image_processor")
    squares = torch.stack([official.clip_square(t, encoder.image_size) for t in tensors])[None]
    expected = processor(images=[_crop_and_resize_pad(image, 512, 512) for image in refs],
                         return_tensors="pt").pixel_values
    torch.testing.assert_close(encoder.preprocess(squares), expected, atol=2e-6, rtol=0)


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown generation preset 'offical'; presets: official, e2v"):
        get_preset("offical")
