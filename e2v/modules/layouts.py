"""Reference layouts: how the N reference images enter the DiT (the A2 "spatial" branch and its peers).

Every layout answers the same questions for the trainer and the pipeline:
``condition`` (encode the references), ``target_video`` (the pixel video whose latents are the training target),
``dit_input`` / ``video_output`` (wrap the noisy latents for the DiT and unwrap its prediction), ``loss_weights``
(per latent frame) and ``prefix_frames`` (pixel frames the references occupy at the start, cut after decoding).
"""

from __future__ import annotations

import torch

from e2v.frames import TEMPORAL_FACTOR, check_frame_count  # noqa: F401 (re-exported)
from e2v.registry import register



def latent_frames(num_frames: int) -> int:
    return (num_frames - 1) // TEMPORAL_FACTOR + 1


@register("reference_layout", "a2", "SkyReels-A2: references frame-repeated before the VAE, 4-ch mask, 36-ch DiT input")
class A2Layout:
    """Condition video ``[r0] + [r1]x4 + [r2]x4 + ... + grey``: latent frames ``0..N-1`` hold the N references.

    DiT input = concat(noisy 16, mask 4, condition 16) along channels. The training target puts the same reference
    frames in front of the clip (the model learns to continue from them); ``prefix_frames`` of them are cut after
    decoding. ``reference_loss_weight`` weighs the loss on those (easy) reference latent frames.
    """

    in_channels = 36
    uses_image_tokens = True

    def __init__(self, reference_loss_weight: float = 1.0):
        self.reference_loss_weight = reference_loss_weight

    def prefix_frames(self, num_refs: int) -> int:
        return 1 + TEMPORAL_FACTOR * (num_refs - 1)

    def check(self, num_refs: int, num_frames: int) -> None:
        check_frame_count(num_frames)
        if num_refs < 1:
            raise ValueError("the a2 layout needs at least one reference image")
        if self.prefix_frames(num_refs) + TEMPORAL_FACTOR > num_frames:
            raise ValueError(
                f"{num_refs} references need at least {TEMPORAL_FACTOR * num_refs + 1} frames with the a2 layout "
                f"(each reference takes one latent frame, plus one for the video), got {num_frames}"
            )

    def condition_video(self, refs: torch.Tensor, num_frames: int) -> torch.Tensor:
        """refs ``[B,N,3,H,W]`` -> pixel condition video ``[B,3,F,H,W]`` (zeros = mid-grey after the references)."""
        b, n, c, h, w = refs.shape
        video = refs.new_zeros(b, c, num_frames, h, w)
        video[:, :, 0] = refs[:, 0]
        for i in range(1, n):
            start = 1 + TEMPORAL_FACTOR * (i - 1)
            video[:, :, start : start + TEMPORAL_FACTOR] = refs[:, i, :, None]
        return video

    def condition(self, vae, refs: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Encode the references: ``[B,20,T,h,w]`` = 4-channel mask (1 on latent frames < N) + normalised latents."""
        self.check(refs.shape[1], num_frames)
        latents = vae.normalize(vae.encode(self.condition_video(refs, num_frames)))
        mask = torch.zeros_like(latents[:, :4])
        mask[:, :, : refs.shape[1]] = 1
        return torch.cat([mask, latents], dim=1)

    def target_video(self, video: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        """The reference prefix followed by the clip's first ``F - prefix`` frames: ``[B,3,F,H,W]``."""
        num_frames = video.shape[2]
        self.check(refs.shape[1], num_frames)
        prefix = self.prefix_frames(refs.shape[1])
        head = self.condition_video(refs, prefix)
        return torch.cat([head, video[:, :, : num_frames - prefix]], dim=2)

    def num_references(self, cond: torch.Tensor) -> int:
        """N, read off the mask channels of a condition ``[B,20,T,h,w]`` (a batch shares N)."""
        return max(1, int(cond[0, 0].flatten(1).amax(1).gt(0).sum()))

    def dit_input(self, noisy: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return torch.cat([noisy, cond.to(noisy.dtype)], dim=1)

    def video_output(self, dit_out: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return dit_out

    def loss_weights(self, num_refs: int, num_latent_frames: int) -> torch.Tensor:
        weights = torch.ones(num_latent_frames)
        weights[:num_refs] = self.reference_loss_weight
        return weights


@register("reference_layout", "temporal_append", "Phantom / SkyReels-V3: reference latents appended after the video in time")
class TemporalAppendLayout:
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
        b, n = refs.shape[:2]
        latents = vae.normalize(vae.encode(refs.flatten(0, 1).unsqueeze(2)))  # [B*N,16,1,h,w]
        return latents.unflatten(0, (b, n)).squeeze(3).transpose(1, 2)

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
