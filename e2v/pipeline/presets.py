"""Generation presets: named bundles of the sampling choices of :class:`~e2v.pipeline.pipeline.E2VPipeline`.

``official`` reproduces the official SkyReels-A2 inference (``infer.py`` + ``models/pipeline_a2.py``, see
:mod:`e2v.pipeline.official`); it is the default of ``e2v generate --weights``. ``e2v`` is e2v's own set, the
default for e2v checkpoints (and for pipelines built in Python). Where they differ, and why e2v differs:

=====================  ====================================  ==================================================
choice                 official                              e2v (why)
=====================  ====================================  ==================================================
frames cut             4 N (``pt_image[12:]``)               1 + 4 (N - 1): only the frames that are references
                                                             (the 3 transition frames after them are video)
negative prompt        long English prompt; ``""`` encoded   ``""`` = all-zero text states, the null text that
                       by umT5 too                           e2v training's text dropout uses
UniPC schedule         diffusers of April 2025 (``legacy``:  diffusers today (``current``): ends at sigma
                       integer timesteps 999 .. 140)         1/1000 like training's continuous time
condition latents      posterior sample (the generator)      posterior mean: the same condition for any seed
precision (weights)    whole DiT bf16 (time embedding too),  fp32 unless ``--dtype``; a cast keeps the time
                       text encoder bf16, CLIP / VAE fp32    embedding and norms fp32 (less rounding)
reference resizing     PIL bicubic pad/crop *then* resize    one antialiased resize (tensors, any device)
reference handling     by position: 0, 1 padded, 2+ cropped  by kind (``background`` cropped, others padded)
guidance arithmetic    in the DiT's dtype                    fp32
noise                  generator on the compute device       CPU generator: the same noise on any device
=====================  ====================================  ==================================================

Seeds. ``official``: one ``torch.Generator`` on the compute device seeded with ``seed`` draws the initial noise
and then the posterior sample of the condition latents, in that order, as ``infer.py``'s
``torch.Generator("cuda").manual_seed(42)`` does: seed 42 on a CUDA device gives the official run's random numbers;
the same seed on another device type (CPU) gives other numbers (videos differ between CPU and CUDA). ``e2v``: the
noise comes from a CPU generator seeded with ``seed`` and moved to the device, so a seed means the same noise on
every device; nothing else is random.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

import torch
from torch import nn

from e2v.datamodules.references import pad_to_white_square
from e2v.datamodules.references import prepare_reference as e2v_reference
from e2v.modules.weights import parse_dtype
from e2v.pipeline import official


@dataclasses.dataclass(frozen=True)
class GenerationPreset:
    """One named set of sampling choices (see the module table). Fields:

    negative_prompt: the default negative prompt. encode_empty_negative: encode ``""`` with the text encoder (else
    all-zero states). schedule: the solver's sigma schedule (``current`` / ``legacy``). dtype: DiT and text encoder
    dtype for release weights when none is asked (None: fp32). whole_dit_dtype: cast every DiT parameter to
    ``dtype`` (else the time embedding and norms stay fp32). references: ``kind`` (e2v resizes, kinds default to
    ``object``) or ``official`` (PIL resizes, kinds default by position). condition: ``mean`` or ``sample`` (posterior
    sample). noise: ``cpu`` or ``device`` generator. cut: ``layout`` (the layout's prefix) or ``official`` (4 N).
    guidance_in_dit_dtype: combine the guidance branches in the DiT's output dtype (else fp32).
    """

    name: str
    negative_prompt: str
    encode_empty_negative: bool
    schedule: str
    dtype: Optional[str]
    whole_dit_dtype: bool
    references: str
    condition: str
    noise: str
    cut: str
    guidance_in_dit_dtype: bool

    def default_kinds(self, count: int) -> list[str]:
        """Reference kinds when none are given."""
        return official.position_kinds(count) if self.references == "official" else ["object"] * count

    def prepare_reference(self, image: torch.Tensor, kind: str, height: int, width: int) -> torch.Tensor:
        """``[3, h, w]`` in [-1, 1] -> the layout's ``[3, height, width]``."""
        if self.references == "official":
            return official.prepare_reference(image, kind, height, width)
        return e2v_reference(image, kind, height, width)

    def clip_square(self, image: torch.Tensor, size: int) -> torch.Tensor:
        """``[3, h, w]`` in [-1, 1] -> the image encoder's white-padded square ``[3, size, size]``."""
        if self.references == "official":
            return official.clip_square(image, size)
        return pad_to_white_square(image, size)

    def initial_noise(self, shape: tuple[int, ...], seed: int, device: torch.device
                      ) -> tuple[torch.Tensor, Optional[torch.Generator]]:
        """The starting latents ``shape`` (fp32, on ``device``) and the generator later draws continue from (None
        when nothing else is random)."""
        if self.noise == "device":
            generator = torch.Generator(device).manual_seed(seed)
            return torch.randn(shape, generator=generator, device=device, dtype=torch.float32), generator
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device), None

    def condition_vae(self, vae: Any, generator: Optional[torch.Generator]) -> Any:
        """The VAE the layout encodes the condition with: ``vae`` itself (posterior mean) or a posterior sampler."""
        return official.PosteriorSample(vae, generator) if self.condition == "sample" else vae

    def prefix_frames(self, layout: Any, count: int) -> int:
        """Pixel frames cut from the start of the decoded video for ``count`` references."""
        return official.prefix_frames(layout, count) if self.cut == "official" else layout.prefix_frames(count)

    def cast_dit(self, dit: nn.Module, dtype: Optional[Union[str, torch.dtype]]) -> None:
        """With ``whole_dit_dtype``, every DiT parameter in ``dtype`` (the official ``transformer.to(bf16)``)."""
        dtype = parse_dtype(dtype)
        if self.whole_dit_dtype and dtype is not None:
            for param in dit.parameters():
                param.data = param.data.to(dtype)


PRESETS = {
    "official": GenerationPreset(
        name="official", negative_prompt=official.NEGATIVE_PROMPT, encode_empty_negative=True, schedule="legacy",
        dtype="bfloat16", whole_dit_dtype=True, references="official", condition="sample", noise="device",
        cut="official", guidance_in_dit_dtype=True,
    ),
    "e2v": GenerationPreset(
        name="e2v", negative_prompt="", encode_empty_negative=False, schedule="current", dtype=None,
        whole_dit_dtype=False, references="kind", condition="mean", noise="cpu", cut="layout",
        guidance_in_dit_dtype=False,
    ),
}


def get_preset(preset: Union[str, GenerationPreset, None], default: str = "e2v") -> GenerationPreset:
    """A preset by name (None: ``default``); a :class:`GenerationPreset` passes through. ValueError names the
    presets when the name is unknown."""
    if isinstance(preset, GenerationPreset):
        return preset
    name = default if preset is None else preset
    if name not in PRESETS:
        raise ValueError(f"unknown generation preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]
