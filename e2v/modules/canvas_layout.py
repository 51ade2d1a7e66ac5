"""The ``canvas`` reference layout (MAGREF): every reference pasted on one white canvas, the canvas as frame 0.

The canvas (the frame size ``H x W``) is split into a grid chosen by the reference count (MAGREF's: 1 -> 1x1,
2 -> 1x2, 3 -> 1x3, 4 -> 2x2, 5-6 -> 2x3, 7-8 -> 2x4 rows x columns; the last row / column takes the remainder).
Reference i goes to cell i in row-major order (MAGREF shuffles; a fixed order keeps caches and generations
reproducible), trimmed of its white border, resized to fit the cell keeping its aspect and centred on white.
The region mask is 1 on the pasted pixels; a latent cell is 1 when any of its pixels is (MAGREF's downsampling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from e2v.datamodules.references import fit_and_pad
from e2v.frames import TEMPORAL_FACTOR, check_frame_count
from e2v.modules.layouts import ChannelConcatLayout, fold_frame_mask, latent_frames
from e2v.registry import register

GRIDS = {1: (1, 1), 2: (1, 2), 3: (1, 3), 4: (2, 2), 6: (2, 3), 8: (2, 4)}  # cells -> (rows, columns)
MAX_REFERENCES = max(GRIDS)
WHITE = 1.0


def canvas_grid(num_refs: int) -> tuple[int, int]:
    """``(rows, columns)`` of the smallest MAGREF grid with at least ``num_refs`` cells."""
    if not 1 <= num_refs <= MAX_REFERENCES:
        raise ValueError(f"the canvas layout takes 1 to {MAX_REFERENCES} references, got {num_refs}")
    return GRIDS[min(cells for cells in GRIDS if cells >= num_refs)]


def cell_boxes(num_refs: int, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """``(top, left, bottom, right)`` of the grid's cells in row-major order; the last row / column runs to the edge."""
    rows, cols = canvas_grid(num_refs)
    cell_h, cell_w = height // rows, width // cols
    return [
        (r * cell_h, c * cell_w, height if r == rows - 1 else (r + 1) * cell_h, width if c == cols - 1 else (c + 1) * cell_w)
        for r in range(rows)
        for c in range(cols)
    ]


def trim_white(image: torch.Tensor) -> torch.Tensor:
    """``[3, H, W]`` cropped to the bounding box of its non-white pixels (unchanged when it is all white)."""
    ink = image.lt(WHITE).any(0)
    rows, cols = ink.any(1).nonzero(), ink.any(0).nonzero()
    if not len(rows):
        return image
    return image[:, int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1]


def paste_references(refs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """refs ``[B,N,3,H,W]`` in [-1, 1] -> the white canvas ``[B,3,H,W]`` and its region mask ``[B,H,W]`` (0 / 1)."""
    b, n, _, height, width = refs.shape
    canvas = refs.new_full((b, 3, height, width), WHITE)
    region = refs.new_zeros(b, height, width)
    for j, (top, left, bottom, right) in enumerate(cell_boxes(n, height, width)[:n]):
        cell_h, cell_w = bottom - top, right - left
        for i in range(b):
            image = trim_white(refs[i, j])
            canvas[i, :, top:bottom, left:right] = fit_and_pad(image, cell_h, cell_w)
            placed = fit_and_pad(image.new_ones(1, *image.shape[1:]), cell_h, cell_w, fill=0.0)  # 1 where pasted
            region[i, top:bottom, left:right] = placed[0].gt(0.5).to(region.dtype)
    return canvas, region


@register("reference_layout", "canvas", "MAGREF: references pasted on one white canvas (frame 0), region mask, CLIP of the canvas")
class CanvasLayout(ChannelConcatLayout):
    """Condition video ``[canvas] + grey``, VAE-encoded in one pass; the mask is the canvas's region mask on latent
    frame 0 (all 4 channels) and 0 elsewhere. DiT input = concat(noisy 16, mask 4, condition 16), as for ``a2``.

    The training target is ``[canvas] + the clip's first F - 1 frames`` (the I2V convention: the condition frame
    starts the video); the canvas frame (``prefix_frames`` = 1) is cut after decoding. The image encoder sees the
    whole canvas once, resized to its square input (MAGREF's CLIP input), instead of one square per reference.
    ``reference_loss_weight`` weighs the loss on latent frame 0 (the canvas).
    """

    def __init__(self, reference_loss_weight: float = 1.0):
        self.reference_loss_weight = reference_loss_weight

    def prefix_frames(self, num_refs: int) -> int:
        return 1

    def check(self, num_refs: int, num_frames: int) -> None:
        check_frame_count(num_frames)
        canvas_grid(num_refs)
        if latent_frames(num_frames) < 2:
            raise ValueError(
                f"the canvas layout needs at least {TEMPORAL_FACTOR + 1} frames (the canvas takes latent frame 0, "
                f"plus one for the video), got {num_frames}"
            )

    def condition(self, vae, refs: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Encode the references: ``[B,20,T,h,w]`` = 4-channel region mask on latent frame 0 + normalised latents."""
        b, n, c, height, width = refs.shape
        self.check(n, num_frames)
        canvas, region = paste_references(refs)
        video = refs.new_zeros(b, c, num_frames, height, width)
        video[:, :, 0] = canvas
        latents = vae.normalize(vae.encode(video))
        factor = vae.spatial_factor
        cells = F.max_pool2d(region[:, None], factor)[:, 0]  # [B,h,w]: 1 where any pixel of the cell is pasted
        if cells.shape[-2:] != latents.shape[-2:]:
            raise ValueError(f"the canvas layout needs frame sides divisible by {factor}, got {height}x{width}")
        frames = latents.new_zeros(b, num_frames, *latents.shape[3:])
        frames[:, 0] = cells
        return torch.cat([fold_frame_mask(frames), latents], dim=1)

    def target_video(self, video: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        """``[canvas]`` followed by the clip's first ``F - 1`` frames: ``[B,3,F,H,W]``."""
        self.check(refs.shape[1], video.shape[2])
        canvas, _ = paste_references(refs)
        return torch.cat([canvas[:, :, None], video[:, :, :-1]], dim=2)

    def num_references(self, cond: torch.Tensor) -> int:
        """1: the condition holds one reference frame, the canvas (how many references it shows is not kept)."""
        return 1

    def image_inputs(self, refs: torch.Tensor, refs_clip: torch.Tensor) -> torch.Tensor:
        """The canvas resized to the image encoder's square side ``S`` (``refs_clip [B,N,3,S,S]``): ``[B,1,3,S,S]``."""
        canvas, _ = paste_references(refs)
        side = refs_clip.shape[-1]
        square = F.interpolate(canvas, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
        return square.clamp(-1, 1)[:, None].to(refs_clip.dtype)

    def loss_weights(self, num_refs: int, num_latent_frames: int) -> torch.Tensor:
        weights = torch.ones(num_latent_frames)
        weights[0] = self.reference_loss_weight
        return weights
