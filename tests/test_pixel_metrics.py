"""Pixel metrics and their baselines on constructed videos with known answers."""

import math

import pytest
import torch

from e2v.bench.pixel_metrics import (colour_histogram, flat_video, is_plate_of, moving_foreground, psnr, subject_match,
                                     subject_pixels, subject_travel)

RED, BLUE, GREY = (0.9, -0.8, -0.8), (-0.8, -0.6, 0.9), (0.0, 0.0, 0.0)


def disc_video(colour, frames=8, size=32, radius=5, step=2, background=GREY) -> torch.Tensor:
    """A disc of ``colour`` moving right by ``step`` px per frame over a still background: ``[3, F, H, W]``."""
    video = torch.tensor(background).view(3, 1, 1, 1).repeat(1, frames, size, size)
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for f in range(frames):
        inside = (y - size // 2) ** 2 + (x - 6 - step * f) ** 2 <= radius**2
        video[:, f][:, inside] = torch.tensor(colour).view(3, 1)
    return video


def disc_reference(colour, size=32) -> torch.Tensor:
    """The disc on a white canvas: ``[1, 3, H, W]``."""
    ref = torch.ones(3, size, size)
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ref[:, (y - 16) ** 2 + (x - 16) ** 2 <= 100] = torch.tensor(colour).view(3, 1)
    return ref[None]


def test_psnr_and_the_flat_baseline():
    truth = disc_video(RED)
    assert psnr(truth, truth) > 100
    assert psnr(truth + 0.02, truth) == pytest.approx(10 * math.log10(4 / 0.0004), rel=1e-4)
    flat = flat_video(truth)
    assert torch.allclose(flat[:, 0, 0, 0], truth.mean(dim=(1, 2, 3)))
    assert psnr(truth + 0.05 * torch.randn_like(truth), truth) > psnr(flat, truth) + 3
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(truth, truth[:, :4])


def test_psnr_over_a_mask_counts_only_its_pixels():
    truth = disc_video(RED)
    video = truth.clone()
    mask = torch.zeros(truth.shape[1:], dtype=torch.bool)
    mask[:, :4] = True  # the error sits outside the mask only
    video[:, :, 4:] += 0.1
    assert psnr(video, truth, mask) > 100
    assert psnr(video, truth, ~mask) == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-4)
    assert math.isnan(psnr(video, truth, torch.zeros_like(mask)))


def test_moving_foreground_finds_the_moving_disc_only():
    video = disc_video(RED)
    mask = moving_foreground(video)
    assert mask.shape == video.shape[1:] and mask.any()
    assert not mask[:, :, 28:].any() and not mask[:, :4].any()  # background rows and columns stay still
    assert not moving_foreground(video[:, :1].expand_as(video)).any()  # a static video has no foreground


def test_subject_match_prefers_the_referenced_subject():
    red_video, red_ref, blue_ref = disc_video(RED), disc_reference(RED), disc_reference(BLUE)
    own = subject_match(red_video, red_ref)
    assert own > 0.5 and subject_match(red_video, blue_ref) < 0.1  # (some still background counts as moving)
    assert subject_match(disc_video(BLUE), red_ref) < 0.1
    assert subject_match(red_video[:, :1].expand_as(red_video), red_ref) == 0.0  # nothing moves: 0


def test_against_the_plate_a_slow_subject_counts_whole_and_a_still_one_too():
    """The temporal median keeps the inside of a subject that drifts less than its width: only its rims move. The
    plate (the clean background) sees all of it, still or moving."""
    plate = torch.tensor(GREY).view(3, 1, 1).expand(3, 32, 32)
    slow = disc_video(RED, step=1)  # a radius-5 disc, 7 px in 8 frames
    disc_pixels = (slow - plate[:, None]).abs().amax(0) > 0
    assert moving_foreground(slow, plate=plate).eq(disc_pixels).all()
    assert moving_foreground(slow).sum() < 0.6 * disc_pixels.sum()  # the median: the rims only
    still = disc_video(RED, step=0)
    still_pixels = (still - plate[:, None]).abs().amax(0) > 0
    assert not moving_foreground(still).any() and moving_foreground(still, plate=plate).eq(still_pixels).all()
    red_ref, blue_ref = disc_reference(RED), disc_reference(BLUE)
    assert subject_match(still, red_ref, plate) > 0.95 and subject_match(still, blue_ref, plate) < 0.05
    assert subject_match(plate[:, None].expand_as(still), red_ref, plate) == 0.0  # the plate alone: no foreground
    elsewhere = torch.tensor(BLUE).view(3, 1, 1).expand(3, 32, 32)  # a background reference of another picture
    assert is_plate_of(slow, plate) and not is_plate_of(slow, elsewhere)


def test_histograms_and_subject_pixels():
    pixels = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.99, 0.0, 0.0]])
    hist = colour_histogram(pixels)
    assert hist.shape == (512,) and hist.sum() == pytest.approx(1.0) and hist[0] == pytest.approx(1 / 3)
    assert colour_histogram(torch.zeros(0, 3)).sum() == 0
    assert subject_pixels(disc_reference(RED)).shape[0] == (disc_reference(RED)[0, 1] < 0.88).sum()


def test_subject_travel_follows_the_centroid_from_the_first_frame_to_the_last():
    plate = torch.tensor(GREY).view(3, 1, 1).expand(3, 32, 32)
    assert torch.allclose(subject_travel(disc_video(RED, step=2), plate), torch.tensor([14.0, 0.0]), atol=1e-4)
    left = disc_video(BLUE, step=1).flip(-1)  # moving left by 1 px a frame
    assert torch.allclose(subject_travel(left, plate), torch.tensor([-7.0, 0.0]), atol=1e-4)
    still = disc_video(RED, step=0)
    assert torch.allclose(subject_travel(still, plate), torch.zeros(2))
    down = disc_video(RED, step=2).transpose(2, 3)  # the same disc moving down
    assert torch.allclose(subject_travel(down, plate), torch.tensor([0.0, 14.0]), atol=1e-4)
    # a faint copy (within the foreground distance of the plate) has no subject to follow
    assert subject_travel(0.2 * disc_video(RED), plate).isnan().all()
