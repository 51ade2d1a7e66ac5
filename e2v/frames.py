"""The frame-count rule of the Wan latent grid, in one place: a clip has 4k+1 frames (frame 0 alone, then 4 frames
per latent frame). Torch-free, so argument parsers can use it."""

from __future__ import annotations

TEMPORAL_FACTOR = 4  # pixel frames per latent frame after the first (Wan VAE)
RULE = "4k+1 (1, 5, 9, ..., 81)"


def is_frame_count(frames: int) -> bool:
    """Whether ``frames`` is 4k+1 (k >= 0)."""
    return frames >= 1 and (frames - 1) % TEMPORAL_FACTOR == 0


def check_frame_count(frames: int, what: str = "frame count") -> None:
    """ValueError ``"<what> must be 4k+1 (1, 5, 9, ..., 81), got N"`` unless ``frames`` is 4k+1."""
    if not is_frame_count(frames):
        raise ValueError(f"{what} must be {RULE}, got {frames}")
