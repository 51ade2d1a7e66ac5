"""The official SkyReels-A2 inference's own conventions, for the ``official`` generation preset.

Transcribed from ``infer.py``, ``models/utils.py`` and ``models/pipeline_a2.py`` (SkyworkAI/SkyReels-A2 at 7c14e2e):
  - references for the VAE: PIL bicubic *pad-then-resize* (``_crop_and_resize_pad``: white pad to the target
    aspect at the original resolution, then one resize) or *crop-then-resize* (``_crop_and_resize``), chosen by
    position: references 0 and 1 are padded, later ones cropped (``infer.py`` lines 64-69);
  - CLIP input: each reference pad-then-resized to 512 x 512, then ``CLIPImageProcessor`` (PIL bicubic to the
    encoder's size, rescale, CLIP mean / std);
  - condition latents: a posterior *sample* drawn from the pipeline's generator (``retrieve_latents``'s default);
  - output: ``4 N`` frames cut (``pt_image[12:]`` for 3 references), the reference latent frames and the 3
    transition frames after them;
  - the default negative prompt (``infer.py`` line 19), encoded by umT5 like any prompt (``""`` too).
Images are float ``[3, H, W]`` in [-1, 1] at the interfaces, like :mod:`e2v.datamodules.references`.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import PIL.Image
import torch

from e2v.datamodules.references import BACKGROUND_KINDS
from e2v.frames import TEMPORAL_FACTOR

NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall "
    "gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, "
    "poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy background, three "
    "legs, many people in the background, walking backwards"
)
CLIP_PAD_SIZE = 512  # infer.py: _crop_and_resize_pad(image, height=512, width=512) before the CLIP processor
PADDED_POSITIONS = 2  # infer.py: references 0 and 1 are padded, the rest cropped


def position_kinds(count: int) -> list[str]:
    """Official default handling by position: ``object`` (white-padded) for the first two, ``background`` after."""
    return ["object" if i < PADDED_POSITIONS else "background" for i in range(count)]


def to_pil(image: torch.Tensor) -> PIL.Image.Image:
    """Float ``[3, H, W]`` in [-1, 1] -> 8-bit RGB (exact inverse of e2v's ``to_float_image`` on 8-bit input)."""
    pixels = image.detach().float().cpu().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return PIL.Image.fromarray(pixels.permute(1, 2, 0).numpy())


def from_pil(image: PIL.Image.Image) -> torch.Tensor:
    """8-bit RGB -> float ``[3, H, W]`` in [-1, 1] the way diffusers' ``VideoProcessor.preprocess`` computes it."""
    pixels = np.asarray(image.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(2.0 * pixels - 1.0).permute(2, 0, 1).contiguous()


def pad_and_resize(image: PIL.Image.Image, height: int, width: int) -> PIL.Image.Image:
    """``_crop_and_resize_pad``: white-pad to the ``height/width`` aspect (int-truncated pad), then bicubic resize."""
    pixels = np.asarray(image.convert("RGB"))
    h, w = pixels.shape[:2]
    if h / w < height / width:
        pad = int(((height / width) * w - h) / 2.0)
        padded = np.full((h + 2 * pad, w, 3), 255, dtype=np.uint8)
        padded[pad : pad + h] = pixels
    else:
        pad = int(((width / height) * h - w) / 2.0)
        padded = np.full((h, w + 2 * pad, 3), 255, dtype=np.uint8)
        padded[:, pad : pad + w] = pixels
    return PIL.Image.fromarray(padded).resize((width, height), PIL.Image.BICUBIC)


def crop_and_resize(image: PIL.Image.Image, height: int, width: int) -> PIL.Image.Image:
    """``_crop_and_resize``: centre-crop to the ``height/width`` aspect (int-truncated), then bicubic resize."""
    pixels = np.asarray(image.convert("RGB"))
    h, w = pixels.shape[:2]
    if h / w < height / width:
        cropped_w = int(h / height * width)
        left = (w - cropped_w) // 2
        pixels = pixels[:, left : left + cropped_w]
    else:
        cropped_h = int(w / width * height)
        top = (h - cropped_h) // 2
        pixels = pixels[top : top + cropped_h]
    return PIL.Image.fromarray(np.ascontiguousarray(pixels)).resize((width, height), PIL.Image.BICUBIC)


def prepare_reference(image: torch.Tensor, kind: str, height: int, width: int) -> torch.Tensor:
    """A layout-ready reference ``[3, height, width]``: backgrounds crop-then-resized, other kinds pad-then-resized."""
    resize = crop_and_resize if kind in BACKGROUND_KINDS else pad_and_resize
    return from_pil(resize(to_pil(image), height, width))


def clip_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """The CLIP input ``[3, size, size]`` in [-1, 1]: pad-then-resize to 512 x 512, then the processor's bicubic
    resize to ``size`` (its centre crop is a no-op on a square); the encoder applies the mean / std."""
    square = pad_and_resize(to_pil(image), CLIP_PAD_SIZE, CLIP_PAD_SIZE)
    return from_pil(square.resize((size, size), PIL.Image.BICUBIC))


def prefix_frames(layout: Any, count: int) -> int:
    """Pixel frames cut from the decoded video: every frame of the reference latent frames, ``4 N`` for the a2
    layout (``pt_image[12:]``); a layout without a reference prefix keeps every frame."""
    prefix = layout.prefix_frames(count)
    return prefix + TEMPORAL_FACTOR - 1 if prefix else 0


class PosteriorSample:
    """A view of a VAE whose ``encode`` draws ``mean + exp(logvar / 2) * randn`` from ``generator`` (diffusers'
    ``latent_dist.sample(generator)``, ``[B, z, T, h, w]``); every other attribute is the VAE's own."""

    def __init__(self, vae: Any, generator: Optional[torch.Generator]) -> None:
        self.vae, self.generator = vae, generator

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        mean, logvar = self.vae.encode_distribution(video)
        noise = torch.randn(mean.shape, generator=self.generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.vae, name)
