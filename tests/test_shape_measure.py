"""The position-free shape measure (issue 23, 2(d)) on constructed clips with known answers."""

import cv2
import numpy as np
import pytest
import torch

from e2v.bench.pixel_metrics import flat_video, shape_match
from e2v.drawing import Pose, draw, prescaled

SIDE, FRAMES = 32, 4


def sprite(points, colour) -> np.ndarray:
    """A flat-filled polygon (``points`` in a 0..1 box) as ``uint8 [160, 160, 4]``, drawn at 4x and shrunk."""
    mask = np.zeros((640, 640), np.uint8)
    cv2.fillPoly(mask, [np.round(np.array(points) * 639).astype(np.int32)], 255)
    alpha = cv2.resize(mask, (160, 160), interpolation=cv2.INTER_AREA)
    rgb = np.broadcast_to(np.array(colour, np.uint8), (160, 160, 3))
    return np.concatenate([rgb, alpha[..., None]], axis=2)


LETTER_F = sprite([(0.1, 0), (0.9, 0), (0.9, 0.22), (0.38, 0.22), (0.38, 0.42), (0.75, 0.42), (0.75, 0.62),
                   (0.38, 0.62), (0.38, 1), (0.1, 1)], (150, 25, 25))
ARROW = sprite([(0, 0.35), (0.55, 0.35), (0.55, 0.05), (1, 0.5), (0.55, 0.95), (0.55, 0.65), (0, 0.65)],
               (40, 90, 210))
BLOB = sprite([(0.5 + 0.5 * np.cos(a), 0.5 + 0.4 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 64)],
              (150, 25, 25))  # an ellipse of LETTER_F's colour


def signed(frames: np.ndarray) -> torch.Tensor:
    """float ``[F, H, W, 3]`` in [0, 1] -> ``[3, F, H, W]`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2) * 2 - 1


def background() -> np.ndarray:
    """A soft green-brown texture ``[SIDE, SIDE, 3]``."""
    y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    wave = 0.5 + 0.15 * np.sin(2 * np.pi * (2 * x + y))[..., None]
    return (np.array([0.35, 0.55, 0.25]) * wave + 0.2).astype(np.float32)


def clip(rgba: np.ndarray, x: float, y: float, size: float = 0.42, angle: float = 5.0, flip: bool = False,
         step: float = 0.04) -> torch.Tensor:
    """``rgba`` drifting right from (x, y) over :func:`background`: ``[3, FRAMES, SIDE, SIDE]``."""
    small = prescaled(rgba, size * SIDE)
    frames = np.stack([background() for _ in range(FRAMES)])
    for f in range(FRAMES):
        draw(frames[f], small, Pose(x + step * f, y, size, angle, flip))
    return signed(frames)


def reference(rgba: np.ndarray, size: float = 0.8, angle: float = -10.0, flip: bool = True) -> torch.Tensor:
    """``rgba`` on a white canvas, bigger, tilted and mirrored against :func:`clip`: ``[1, 3, SIDE, SIDE]``."""
    canvas = np.ones((SIDE, SIDE, 3), np.float32)
    draw(canvas, prescaled(rgba, size * SIDE), Pose(0.5, 0.5, size, angle, flip))
    return signed(canvas[None]).permute(1, 0, 2, 3)


@pytest.fixture(scope="module")
def truth() -> torch.Tensor:
    return clip(LETTER_F, 0.4, 0.5)


@pytest.mark.parametrize("x, y, size", [(0.25, 0.3, 0.42), (0.55, 0.7, 0.42), (0.4, 0.5, 0.32), (0.3, 0.5, 0.5)])
def test_pasted_sprite_scores_high_anywhere(x, y, size, truth):
    """Anywhere and at any size in the searched range, the clip scores as high as centred (about 0.5 here: the
    outline meets a textured background of low contrast) and far above a same-colour ellipse (0.27)."""
    video = clip(LETTER_F, x, y, size=size)  # the reference is mirrored, tilted and 1.6-2.5x bigger
    assert shape_match(video, reference(LETTER_F)) == pytest.approx(shape_match(truth, reference(LETTER_F)), abs=0.06)
    assert shape_match(video, reference(LETTER_F)) > 0.42


def test_mirror_image_in_the_clip_scores_as_high(truth):
    mirrored = clip(LETTER_F, 0.4, 0.5, flip=True)
    assert shape_match(mirrored, reference(LETTER_F)) == pytest.approx(shape_match(truth, reference(LETTER_F)),
                                                                        abs=0.08)


def test_same_colour_blob_and_blurred_copy_score_low(truth):
    own = shape_match(truth, reference(LETTER_F))
    blob = shape_match(clip(BLOB, 0.4, 0.5), reference(LETTER_F))
    blurred = torch.from_numpy(np.stack([cv2.GaussianBlur(f, (0, 0), 1.5) for f in truth.permute(1, 2, 3, 0).numpy()]))
    blur = shape_match(blurred.permute(3, 0, 1, 2).contiguous(), reference(LETTER_F))
    assert blob < own - 0.15 and blur < own - 0.15, (own, blob, blur)


def test_swapped_reference_scores_lower_than_own(truth):
    own = shape_match(truth, reference(LETTER_F))
    swapped = shape_match(truth, reference(ARROW))
    assert swapped < own - 0.15, (own, swapped)
    arrow = clip(ARROW, 0.4, 0.5)
    assert shape_match(arrow, reference(ARROW)) > shape_match(arrow, reference(LETTER_F)) + 0.15


def test_mean_over_references_and_flat_video_is_zero(truth):
    both = torch.cat([reference(LETTER_F), reference(ARROW)])
    expected = (shape_match(truth, reference(LETTER_F)) + shape_match(truth, reference(ARROW))) / 2
    assert shape_match(truth, both) == pytest.approx(expected, abs=1e-6)
    assert shape_match(flat_video(truth), both) == 0.0


def test_deterministic(truth):
    assert shape_match(truth, reference(LETTER_F)) == shape_match(truth.clone(), reference(LETTER_F))


def test_bad_input_is_named(truth):
    with pytest.raises(ValueError, match="reference 1 is blank"):
        shape_match(truth, torch.cat([reference(LETTER_F), torch.ones(1, 3, SIDE, SIDE)]))
    with pytest.raises(ValueError, match=r"video must be \[3, F, H, W\]"):
        shape_match(truth[0], reference(LETTER_F))
    with pytest.raises(ValueError, match="subject_refs"):
        shape_match(truth, reference(LETTER_F)[0])


def test_vae_ceiling_controls_add_noise_of_their_sigma_and_average_over_3x3_latent_pixels():
    """``benchmarks/bench_vae_ceiling.py``'s latent controls: the noise has the sigma asked for and the same draw for
    the same seed; the smoothing is the mean of each latent pixel's 3x3 neighbourhood (frames left apart)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_vae_ceiling.py"
    spec = importlib.util.spec_from_file_location("bench_vae_ceiling", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    z = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    controls = bench.latent_controls([0.5], seed=7)
    assert list(controls) == ["noise 0.5", "3x3 average"]
    noise = controls["noise 0.5"](z) - z
    assert abs(noise.std().item() - 0.5) < 0.03
    assert torch.equal(bench.latent_controls([0.5], seed=7)["noise 0.5"](z) - z, noise)
    smooth = controls["3x3 average"](z)
    assert torch.allclose(smooth[0, :, 1, 3, 4], z[0, :, 1, 2:5, 3:6].mean(dim=(1, 2)), atol=1e-6)
    assert torch.allclose(smooth[0, :, 2, 0, 0], z[0, :, 2, :2, :2].mean(dim=(1, 2)), atol=1e-6)  # a corner: 4
