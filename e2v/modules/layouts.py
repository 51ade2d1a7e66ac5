"""Reference layouts: how the N reference images enter the DiT (the A2 "spatial" branch and its peers).

Every layout answers the same questions for the trainer, the latent cache and the pipeline:
``condition`` (encode the references), ``target_video`` (the pixel video whose latents are the training target),
``dit_input`` / ``video_output`` (wrap the noisy latents for the DiT and unwrap its prediction), ``loss_weights``
(per latent frame), ``prefix_frames`` (pixel frames the references occupy at the start, cut after decoding) and
``image_inputs`` (what the image encoder sees: the white-padded reference squares unless the layout says otherwise).
"""

from __future__ import annotations

from typing import Literal

import torch

from e2v.frames import TEMPORAL_FACTOR, check_frame_count  # noqa: F401 (re-exported)
from e2v.registry import register


def latent_frames(num_frames: int) -> int:
    return (num_frames - 1) // TEMPORAL_FACTOR + 1


def fold_frame_mask(mask: torch.Tensor) -> torch.Tensor:
    """Per-pixel-frame mask ``[B, F, h, w]`` (F = 4k+1) -> the DiT's mask channels ``[B, 4, T, h, w]``.

    The Wan I2V fold: frame 0 counts 4 times, then the 4 pixel frames of each latent frame become its 4 channels
    (pixel frame ``1 + 4 (k - 1) + c`` is channel ``c`` of latent frame ``k``).
    """
    b, _, h, w = mask.shape
    full = torch.cat([mask[:, :1].expand(b, TEMPORAL_FACTOR, h, w), mask[:, 1:]], dim=1)
    return full.view(b, -1, TEMPORAL_FACTOR, h, w).transpose(1, 2)


def encode_each(vae, refs: torch.Tensor) -> torch.Tensor:
    """refs ``[B,N,3,H,W]`` -> ``[B,16,N,h,w]``: each reference VAE-encoded alone as a one-frame video, normalised."""
    b, n = refs.shape[:2]
    latents = vae.normalize(vae.encode(refs.flatten(0, 1).unsqueeze(2)))  # [B*N,16,1,h,w]
    return latents.unflatten(0, (b, n)).squeeze(3).transpose(1, 2)


class ReferenceLayout:
    """What the layouts share: the image encoder sees the white-padded reference squares as they are."""

    def image_inputs(self, refs: torch.Tensor, refs_clip: torch.Tensor) -> torch.Tensor:
        """The image encoder's input ``[B, M, 3, S, S]`` from refs ``[B,N,3,H,W]`` and squares ``[B,N,3,S,S]``."""
        return refs_clip


class ChannelConcatLayout(ReferenceLayout):
    """Wan I2V-style input: concat(noisy 16, mask 4, condition latents 16) along channels, 36 channels in all."""

    in_channels = 36
    uses_image_tokens = True

    def dit_input(self, noisy: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return torch.cat([noisy, cond.to(noisy.dtype)], dim=1)

    def video_output(self, dit_out: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return dit_out


@register("reference_layout", "a2", "SkyReels-A2: references frame-repeated before the VAE, 4-ch mask, 36-ch DiT input")
class A2Layout(ChannelConcatLayout):
    """Condition video ``[r0] + [r1]x4 + [r2]x4 + ... + grey``: latent frames ``0..N-1`` hold the N references.

    DiT input = concat(noisy 16, mask 4, condition 16) along channels. The training target puts the same reference
    frames in front of the clip (the model learns to continue from them); ``prefix_frames`` of them are cut after
    decoding. ``reference_loss_weight`` weighs the loss on the latent frames the references touch.

    The paper's Table 2 ablations (official ``vae_repeat`` / ``vae_combine``):
      - ``repeat: false``: one pixel frame per reference, ``[r0, r1, r2] + grey``; the mask is 1 on those pixel
        frames, folded like Wan I2V (N = 3: all 4 channels of latent frame 0 and channels 0-1 of latent frame 1).
      - ``combine: after``: each reference VAE-encoded alone (one latent frame each, latent frames ``0..N-1``), the
        rest of the condition zeros in normalised latent space instead of encoded grey frames. The target keeps the
        frame-repeated prefix, so its latent frames ``0..N-1`` are the references too.
    """

    def __init__(
        self, reference_loss_weight: float = 1.0, repeat: bool = True, combine: Literal["before", "after"] = "before"
    ):
        if combine == "after" and not repeat:
            raise ValueError("a2 layout: repeat: false applies to combine: before only (combine: after encodes each "
                             "reference alone into one latent frame)")
        self.reference_loss_weight = reference_loss_weight
        self.repeat = repeat
        self.combine = combine

    @property
    def frames_per_reference(self) -> int:
        """Pixel frames each reference after the first fills in the condition video and the target prefix."""
        return TEMPORAL_FACTOR if self.repeat else 1

    def prefix_frames(self, num_refs: int) -> int:
        return 1 + self.frames_per_reference * (num_refs - 1)

    def reference_latent_frames(self, num_refs: int) -> int:
        """Latent frames the reference prefix touches: 1 + ceil((prefix - 1) / 4) (N with frame repetition)."""
        return 1 + (self.prefix_frames(num_refs) - 1 + TEMPORAL_FACTOR - 1) // TEMPORAL_FACTOR

    def check(self, num_refs: int, num_frames: int) -> None:
        check_frame_count(num_frames)
        if num_refs < 1:
            raise ValueError("the a2 layout needs at least one reference image")
        needed = self.reference_latent_frames(num_refs)
        if needed >= latent_frames(num_frames):
            raise ValueError(
                f"{num_refs} references need at least {TEMPORAL_FACTOR * needed + 1} frames with the a2 layout "
                f"(the references take {needed} latent frame(s), plus one for the video), got {num_frames}"
            )

    def condition_video(self, refs: torch.Tensor, num_frames: int) -> torch.Tensor:
        """refs ``[B,N,3,H,W]`` -> pixel condition video ``[B,3,F,H,W]`` (zeros = mid-grey after the references)."""
        b, n, c, h, w = refs.shape
        step = self.frames_per_reference
        video = refs.new_zeros(b, c, num_frames, h, w)
        video[:, :, 0] = refs[:, 0]
        for i in range(1, n):
            start = 1 + step * (i - 1)
            video[:, :, start : start + step] = refs[:, i, :, None]
        return video

    def condition(self, vae, refs: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Encode the references: ``[B,20,T,h,w]`` = 4-channel mask (1 on the reference frames) + normalised latents."""
        b, n = refs.shape[:2]
        self.check(n, num_frames)
        if self.combine == "before":
            latents = vae.normalize(vae.encode(self.condition_video(refs, num_frames)))
        else:
            each = encode_each(vae, refs)
            latents = torch.cat([each, each.new_zeros(*each.shape[:2], latent_frames(num_frames) - n,
                                                      *each.shape[3:])], dim=2)
        frames = latents.new_zeros(b, num_frames, *latents.shape[3:])
        frames[:, : self.prefix_frames(n)] = 1
        return torch.cat([fold_frame_mask(frames), latents], dim=1)

    def target_video(self, video: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        """The reference prefix followed by the clip's first ``F - prefix`` frames: ``[B,3,F,H,W]``."""
        num_frames = video.shape[2]
        self.check(refs.shape[1], num_frames)
        prefix = self.prefix_frames(refs.shape[1])
        head = self.condition_video(refs, prefix)
        return torch.cat([head, video[:, :, : num_frames - prefix]], dim=2)

    def num_references(self, cond: torch.Tensor) -> int:
        """N, read off the mask channels of a condition ``[B,20,T,h,w]`` (a batch shares N)."""
        marked = cond[0, :4].flatten(2).amax(2).gt(0)  # [4, T]: which (channel, latent frame) pixel frames are set
        pixel_frames = int(marked[0, 0]) + int(marked[:, 1:].sum())
        return max(1, (pixel_frames - 1) // self.frames_per_reference + 1)

    def loss_weights(self, num_refs: int, num_latent_frames: int) -> torch.Tensor:
        weights = torch.ones(num_latent_frames)
        weights[: self.reference_latent_frames(num_refs)] = self.reference_loss_weight
        return weights


@register("reference_layout", "temporal_append", "Phantom / SkyReels-V3: reference latents appended after the video in time")
class TemporalAppendLayout(ReferenceLayout):
    """Each reference is VAE-encoded as a one-frame video; the N latent frames follow the noisy video along time.

    DiT input ``[B,16,T+N,h,w]`` (a 16-channel, text-to-video style DiT); the prediction's last N frames are dropped.
    No reference frames appear in the output (``prefix_frames`` = 0). Image tokens are optional (Phantom uses none).
    """

    in_channels = 16

    def __init__(self, uses_image_tokens: bool = False):
        self.uses_image_tokens = uses_image_tokens

    def prefix_frames(self, num_refs: int) -> int:
        return 0

    def check(self, num_refs: int, num_frames: int) -> None:
        check_frame_count(num_frames)
        if num_refs < 1:
            raise ValueError("the temporal_append layout needs at least one reference image")

    def condition(self, vae, refs: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``[B,16,N,h,w]``: normalised latents of each reference encoded alone."""
        self.check(refs.shape[1], num_frames)
        return encode_each(vae, refs)

    def target_video(self, video: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        return video

    def num_references(self, cond: torch.Tensor) -> int:
        """N = the appended latent frames of a condition ``[B,16,N,h,w]``."""
        return cond.shape[2]

    def dit_input(self, noisy: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return torch.cat([noisy, cond.to(noisy.dtype)], dim=2)

    def video_output(self, dit_out: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return dit_out[:, :, : dit_out.shape[2] - cond.shape[2]]

    def loss_weights(self, num_refs: int, num_latent_frames: int) -> torch.Tensor:
        return torch.ones(num_latent_frames)
