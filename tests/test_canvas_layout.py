"""The ``canvas`` layout (MAGREF): grid, pasted canvas and region mask against hand-built tensors, the mask against
MAGREF's construction, the condition latents, the CLIP input, the latent cache, a tiny training step and a tiny
generation."""

import pytest
import torch

from e2v import registry
from e2v.datamodules.cache import encode_sample
from e2v.modules.canvas_layout import CanvasLayout, canvas_grid, cell_boxes, paste_references, trim_white
from e2v.modules.vae import WanVAE
from e2v.tasks.e2v_diffusion import E2VDiffusion
from test_e2v_diffusion import TEXT, make_batch



@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return WanVAE.from_preset("tiny").eval()


def two_refs() -> torch.Tensor:
    """``[1, 2, 3, 32, 32]``: ref 0 an 8x16 block of 0.2 on white (a padded subject), ref 1 all -0.5 (a background)."""
    refs = torch.ones(1, 2, 3, 32, 32)
    refs[0, 0, :, 4:12, 10:26] = 0.2
    refs[0, 1] = -0.5
    return refs


def expected_canvas_and_region() -> tuple[torch.Tensor, torch.Tensor]:
    """Cells 32x16 | 32x16. Ref 0 trimmed to 8x16 fits unscaled, centred at rows 12-19; ref 1 (32x32) is halved to
    16x16, centred at rows 8-23 of the right cell."""
    canvas, region = torch.ones(3, 32, 32), torch.zeros(32, 32)
    canvas[:, 12:20, 0:16], region[12:20, 0:16] = 0.2, 1
    canvas[:, 8:24, 16:32], region[8:24, 16:32] = -0.5, 1
    return canvas, region


@pytest.mark.parametrize(("count", "grid"), [(1, (1, 1)), (2, (1, 2)), (3, (1, 3)), (4, (2, 2)), (5, (2, 3)),
                                             (6, (2, 3)), (7, (2, 4)), (8, (2, 4))])
def test_grid_follows_the_reference_count(count, grid):
    assert canvas_grid(count) == grid


def test_cells_split_the_frame_and_the_last_ones_take_the_remainder():
    assert cell_boxes(3, 16, 32) == [(0, 0, 16, 10), (0, 10, 16, 20), (0, 20, 16, 32)]
    boxes = cell_boxes(5, 480, 832)  # MAGREF's 480x832 canvas, 2x3 grid: 277 + 277 + 278 columns
    assert boxes == [(0, 0, 240, 277), (0, 277, 240, 554), (0, 554, 240, 832),
                     (240, 0, 480, 277), (240, 277, 480, 554), (240, 554, 480, 832)]


def test_trim_white_crops_to_the_non_white_box():
    image = torch.ones(3, 10, 12)
    image[1, 2:5, 3:9] = 0.0  # one channel below white is enough
    assert trim_white(image).shape == (3, 3, 6)
    assert torch.equal(trim_white(torch.ones(3, 4, 4)), torch.ones(3, 4, 4))


def test_paste_references_builds_the_hand_made_canvas_and_region():
    canvas, region = paste_references(two_refs())
    expected_canvas, expected_region = expected_canvas_and_region()
    torch.testing.assert_close(canvas[0], expected_canvas, atol=1e-6, rtol=0)
    torch.testing.assert_close(region[0], expected_region, atol=0, rtol=0)


def magref_mask(region: torch.Tensor, num_frames: int, factor: int = 8) -> torch.Tensor:
    """MAGREF ``process_refimg`` + ``generate``, transcribed: a latent cell is 1 when any of its pixels is in the
    region; frame 0 holds it, repeated 4 times, then viewed as groups of 4 and transposed: ``[4, T, h, w]``."""
    h, w = region.shape[0] // factor, region.shape[1] // factor
    cells = torch.zeros(h, w)
    for i in range(h):
        for j in range(w):
            cells[i, j] = float(region[i * factor : (i + 1) * factor, j * factor : (j + 1) * factor].any())
    msk = torch.zeros(1, num_frames, h, w)
    msk[:, :1] = cells
    msk = torch.cat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
    return msk.view(1, msk.shape[1] // 4, 4, h, w).transpose(1, 2)[0]


def test_condition_mask_and_latents(vae):
    layout = CanvasLayout()
    cond = layout.condition(vae, two_refs(), 9)
    assert cond.shape == (1, 20, 3, 4, 4)
    cells = torch.zeros(4, 4)
    cells[1:3] = 1  # both pasted images span pixel rows 8-23: latent rows 1-2, every column
    for channel in range(4):
        torch.testing.assert_close(cond[0, channel, 0], cells, atol=0, rtol=0)
    assert torch.all(cond[0, :4, 1:] == 0)
    torch.testing.assert_close(cond[0, :4], magref_mask(expected_canvas_and_region()[1], 9), atol=0, rtol=0)
    video = torch.zeros(1, 3, 9, 32, 32)
    video[:, :, 0] = expected_canvas_and_region()[0]
    torch.testing.assert_close(cond[:, 4:], vae.normalize(vae.encode(video)), atol=1e-5, rtol=1e-5)


def test_target_starts_with_the_canvas_and_the_weights_and_counts():
    layout = CanvasLayout(reference_loss_weight=0.25)
    clip = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    target = layout.target_video(clip, two_refs())
    assert target.shape == clip.shape
    torch.testing.assert_close(target[0, :, 0], expected_canvas_and_region()[0], atol=1e-6, rtol=0)
    assert torch.equal(target[:, :, 1:], clip[:, :, :8])
    assert layout.prefix_frames(2) == 1 and layout.prefix_frames(7) == 1
    torch.testing.assert_close(layout.loss_weights(2, 3), torch.tensor([0.25, 1.0, 1.0]))


def test_image_inputs_are_the_whole_canvas_once():
    layout = CanvasLayout()
    squares = layout.image_inputs(two_refs(), torch.zeros(1, 2, 3, 16, 16))
    assert squares.shape == (1, 1, 3, 16, 16)
    # the 32x32 canvas halved: the background's 16x16 block becomes rows 4-11, columns 8-15, constant where the
    # antialiased bicubic kernel (2 output pixels each side) stays inside it; the top rows stay white
    torch.testing.assert_close(squares[0, 0, :, 6:10, 10:16], torch.full((3, 4, 6), -0.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(squares[0, 0, :, 0:2, :], torch.ones(3, 2, 16), atol=1e-5, rtol=0)


def test_errors_are_clear():
    layout = registry.build("reference_layout", "canvas")
    assert isinstance(layout, CanvasLayout)
    with pytest.raises(ValueError, match="1 to 8 references, got 9"):
        layout.check(9, 9)
    with pytest.raises(ValueError, match="1 to 8 references, got 0"):
        layout.check(0, 9)
    with pytest.raises(ValueError, match="at least 5 frames"):
        layout.check(2, 1)
    with pytest.raises(ValueError, match="4k\\+1"):
        layout.check(2, 8)


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return E2VDiffusion(text_encoder=TEXT, layout="canvas", text_dropout=0.0, reference_dropout=0.0)


def test_training_sees_the_canvas_and_the_cache_matches(module):
    batch = make_batch(n=3, frames=9, size=16)
    inputs = module.encode_batch(batch)
    tokens = module.image_encoder.tokens_per_image
    assert inputs["image"].shape == (2, tokens, module.image_encoder.dim)  # one canvas, whatever N
    expected = module.image_encoder(module.layout.image_inputs(batch["refs"], batch["refs_clip"]))
    torch.testing.assert_close(inputs["image"], expected)
    # the latent cache writes what the online step computes
    sample = {key: batch[key][1] for key in ("video", "refs", "refs_clip")} | {"caption": batch["caption"][1]}
    cached = encode_sample(sample, module.vae, module.text_encoder, module.image_encoder, module.layout)
    torch.testing.assert_close(cached["image"], inputs["image"][1])
    torch.testing.assert_close(cached["condition"], inputs["condition"][1])
    torch.testing.assert_close(cached["latents"], inputs["x0"][1])


def test_tiny_training_step_and_generation(module):
    batch = make_batch(n=3, frames=9, size=16)
    inputs = module.encode_batch(batch)
    cached = {"latents": inputs["x0"], "condition": inputs["condition"], "text": inputs["text"], "image": inputs["image"]}
    loss = module.training_step(batch, 0)
    with torch.no_grad():
        torch.testing.assert_close(module.training_step(cached, 0), loss.detach())
    loss.backward()
    assert all(p.grad is not None for p in module.dit.parameters() if p.requires_grad)
    module.zero_grad()

    pipe = module.make_pipeline({"name": "unipc", "num_steps": 2, "shift": 3.0})
    refs = list(batch["refs"][0])
    layout_refs, clip_refs = pipe.prepare_references(refs, None, 16, 32)
    branches = pipe._branches("a cat", "", layout_refs, clip_refs, 9, 5.0, None)
    assert branches["image"].shape == (2, module.image_encoder.tokens_per_image, module.image_encoder.dim)
    video = pipe(refs, "a cat", height=16, width=32, frames=9, seed=1, progress=False)
    assert video.shape == (3, 8, 16, 32) and torch.isfinite(video).all()  # the canvas frame is cut
