"""``E2VPipeline``: references + prompt -> video with the E2V DiT (SkyReels-A2 inference, plus speed switches).

Sampling: encode the prompt (and the negative prompt), the references (CLIP tokens and the layout's condition),
draw noise from ``seed`` on the CPU (the same video on any device), then ``steps`` solver steps where every guidance
branch runs in ONE batched DiT forward, and finally decode and cut the reference prefix frames.

Guidance branches (stacked along the batch): ``full`` (prompt + references), ``textless`` (negative prompt +
references), ``null`` (negative prompt, no references: zero image tokens and zero layout condition, as in
training's reference dropout). With the ``e2v`` preset the negative prompt ``""`` is e2v's null text: zero text states,
as in training's text dropout. The ``preset`` (:mod:`e2v.pipeline.presets`: ``e2v`` or ``official``) sets the
remaining choices: default negative prompt, reference resizing, noise generator, condition sampling, frames cut.
  - text CFG (official, ``guidance`` 5.0): ``v = v_textless + g (v_full - v_textless)``
  - dual guidance (``image_guidance`` set): ``v = v_null + s_img (v_textless - v_null) + s_txt (v_full - v_textless)``

Speed switches: :meth:`E2VPipeline.enable_step_cache`, :meth:`enable_block_offload`, :meth:`compile`,
:meth:`quantize`, ``tile`` (VAE tiled decode), ``offload`` (each component on the compute device only while used),
and ``parallel`` (sequence / CFG parallelism, see :mod:`e2v.pipeline.parallel`). The cross-attention context is
computed once per video (``cache_context``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import PIL.Image
import torch
from torch import nn
from tqdm.auto import tqdm

from e2v import registry
from e2v.datamodules.references import (
    check_reference_size,
    load_reference,
    to_float_image,
)
from e2v.datamodules.video_io import pil_to_rgb
from e2v.frames import TEMPORAL_FACTOR
from e2v.modules.layouts import latent_frames
from e2v.modules.quantize import BITSANDBYTES_MODES, move_module, quantize_linears
from e2v.modules.reshard import fsdp_modules, reshard
from e2v.families import family_specs
from e2v.modules.weights import CheckpointError, load_checkpoint, read_config
from e2v.pipeline.presets import GenerationPreset, get_preset
from e2v.pipeline.sampling import DEFAULTS
from e2v.pipeline.offload import BlockOffload
from e2v.pipeline.step_cache import StepCache

ReferenceImage = Union[str, os.PathLike, torch.Tensor, PIL.Image.Image]
DEFAULT_SOLVER = {"name": DEFAULTS.solver, "shift": DEFAULTS.shift, "num_steps": DEFAULTS.steps}
SIZE_MULTIPLE = 16  # VAE /8 then DiT patch /2
WEIGHT_FOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "image_encoder", "image_processor")
# DiT layers kept in full precision by quantize(): embed_inputs reads their weight dtypes; the output projection
# is tiny and sensitive.
DIT_QUANTIZE_SKIP = ("condition_embedder.*", "proj_out")


def load_reference_image(image: ReferenceImage) -> torch.Tensor:
    """A reference as float ``[3, H, W]`` in [-1, 1] from a path, a PIL image, a float ``[3, H, W]`` tensor in
    [-1, 1] or a ``uint8 [H, W, 3]`` tensor. Missing / unreadable / too small files raise an error naming the file."""
    if isinstance(image, (str, os.PathLike)):
        return load_reference(image)
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8 and image.ndim == 3 and image.shape[-1] == 3:
            return check_reference_size(to_float_image(image), "reference tensor")
        if image.is_floating_point() and image.ndim == 3 and image.shape[0] == 3:
            return check_reference_size(image.float().nan_to_num().clamp(-1, 1), "reference tensor")
        raise ValueError(
            f"a reference tensor must be float [3, H, W] in [-1, 1] or uint8 [H, W, 3], got {image.dtype} "
            f"{tuple(image.shape)}"
        )
    if isinstance(image, PIL.Image.Image):
        return check_reference_size(to_float_image(torch.from_numpy(pil_to_rgb(image))), "reference image")
    raise TypeError(f"a reference must be a path, a PIL image or a tensor, got {type(image).__name__}")


def _weights_root_check(folder: Path, needed: Sequence[str]) -> None:
    if not folder.is_dir():
        raise CheckpointError(f"weights folder {folder} does not exist or is not a directory")
    missing = [name for name in needed if not (folder / name).is_dir()]
    if missing:
        raise CheckpointError(
            f"weights folder {folder} is missing component folder(s): {', '.join(f'{m}/' for m in missing)}; "
            f"expected the official layout {', '.join(f'{n}/' for n in WEIGHT_FOLDERS)}"
        )


class E2VPipeline:
    """Elements-to-video sampler. Components: ``dit``, ``vae``, ``text_encoder``, ``image_encoder`` (None when
    the layout uses no image tokens), ``layout`` (reference layout) and ``solver``.

    The pipeline borrows the modules it is given and leaves them as it found them: while it runs (``__call__``,
    ``encode_text``) they are in eval mode under ``torch.no_grad`` and, with ``tile``, the VAE tiles; afterwards each
    submodule's train/eval flag and the VAE's tiling are restored, and ``requires_grad`` is never touched. The one
    lasting change is placement: without ``offload`` the modules are moved to ``device`` once (pass the modules' own
    device, as ``E2VDiffusion.make_pipeline`` does, to keep them where they are). ``quantize`` and ``compile``
    change the DiT (and text encoder) in place by request.

    Args:
        device: compute device (default: CUDA if available, else CPU).
        offload: keep every component on the CPU and move each to ``device`` only while it runs.
        tile: VAE tile size in pixels for encoding/decoding large frames while sampling (None: the VAE's own
            setting).
        parallel: a :class:`~e2v.pipeline.parallel.ParallelConfig` for sequence / CFG parallelism (None: off).
        preset: a generation preset or its name (default ``e2v``; see :mod:`e2v.pipeline.presets`).
    """

    cache_context = True  # the cross-attention context once per video (exact); False: every step (benchmarks)

    def __init__(
        self,
        dit: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        image_encoder: Optional[nn.Module],
        layout: Any,
        solver: Any,
        device: Optional[Union[str, torch.device]] = None,
        offload: bool = False,
        tile: Optional[int] = None,
        parallel: Any = None,
        preset: Union[str, GenerationPreset, None] = None,
    ) -> None:
        self.preset = get_preset(preset)
        self.dit, self.vae, self.text_encoder, self.image_encoder = dit, vae, text_encoder, image_encoder
        self.layout, self.solver = layout, solver
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.offload = offload
        self.parallel = parallel
        self.step_cache: Optional[StepCache] = None
        self.block_offload: Optional[BlockOffload] = None
        if dit.config.in_channels != layout.in_channels:
            raise ValueError(
                f"the DiT takes {dit.config.in_channels} input channels but the {type(layout).__name__} layout "
                f"produces {layout.in_channels}"
            )
        if layout.uses_image_tokens and image_encoder is None:
            raise ValueError(f"the {type(layout).__name__} layout uses image tokens but no image encoder was given")
        self.tile = tile
        if tile is not None:  # a bad tile size fails here, not at the first call
            own = (vae.tile_size, vae.tile_overlap)
            vae.enable_tiling(tile)
            vae.tile_size, vae.tile_overlap = own
        if not offload:
            for module in self.modules():
                move_module(module, self.device)

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.text_encoder, self.image_encoder, self.vae, self.dit) if m is not None]

    # ------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_weights(
        cls,
        folder: Union[str, os.PathLike],
        layout: Any = None,
        solver: Any = None,
        dtype: Optional[Union[str, torch.dtype]] = None,
        family: Optional[str] = None,
        preset: Union[str, GenerationPreset, None] = None,
        **kwargs: Any,
    ) -> "E2VPipeline":
        """Load the official SkyReels-A2 / Wan2.1 release root (``transformer/``, ``vae/``, ``text_encoder/``,
        ``tokenizer/``, ``image_encoder/``, ``image_processor/``) as the components of a model ``family``
        (``e2v registry family``; default: ``wan2.1-i2v-14b`` for a 36-channel DiT, ``wan2.1-t2v-1.3b`` otherwise).
        ``layout`` overrides the family's; ``dtype`` applies to the DiT and the text encoder (default: the preset's;
        the ``official`` preset casts the whole DiT, ``preset`` also sets the solver's schedule)."""
        preset = get_preset(preset)
        dtype = preset.dtype if dtype is None else dtype
        folder = Path(folder)
        _weights_root_check(folder, ("transformer", "vae", "text_encoder", "tokenizer"))
        if family is None:
            in_channels = read_config(folder / "transformer").get("in_channels")
            family = "wan2.1-i2v-14b" if in_channels == 36 else "wan2.1-t2v-1.3b"
        specs = family_specs({"name": family, "weights": str(folder)})
        dit = registry.build("dit", {**specs["dit"], "dtype": dtype})
        preset.cast_dit(dit, dtype)
        layout = registry.build("reference_layout", layout or specs["layout"])
        image_encoder = None
        if layout.uses_image_tokens:
            _weights_root_check(folder, ("image_encoder", "image_processor"))
            image_encoder = registry.build("image_encoder", specs["image_encoder"] or {"name": "clip", "path": str(folder)})
        return cls(
            dit=dit,
            vae=registry.build("vae", specs["vae"]),
            text_encoder=registry.build("text_encoder", {**specs["text_encoder"], "dtype": dtype}),
            image_encoder=image_encoder,
            layout=layout,
            solver=registry.build("solver", solver or {**DEFAULT_SOLVER, "schedule": preset.schedule}),
            preset=preset,
            **kwargs,
        )

    @classmethod
    def from_checkpoint(
        cls, ckpt_path: Union[str, os.PathLike], solver: Any = None, ema: bool = True, **kwargs: Any
    ) -> "E2VPipeline":
        """An e2v Lightning checkpoint of ``E2VDiffusion``: components rebuilt from its hyper-parameters (the frozen
        VAE / encoders from their own specs; a component a checkpoint lacks is its family's, ``tiny`` by default),
        DiT weights from the state dict, or from the EMA callback's weights when present and ``ema``. ``solver``
        defaults to the run's ``sample_solver``."""
        path = Path(ckpt_path)
        checkpoint = load_checkpoint(path)
        hparams = checkpoint.get("hyper_parameters")
        if not isinstance(hparams, dict) or "dit" not in hparams or "state_dict" not in checkpoint:
            raise CheckpointError(
                f"{path} is not an E2VDiffusion checkpoint: expected 'hyper_parameters' with component specs "
                "(dit, vae, text_encoder, image_encoder, layout) and a 'state_dict'"
            )
        family = family_specs(hparams.get("family"))
        spec = {key: hparams.get(key) if hparams.get(key) is not None else family[key] for key in family}
        layout = registry.build("reference_layout", spec["layout"])
        dit = registry.build("dit", hparams["dit"])
        state = {k[len("dit.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("dit.")}
        if ema:
            state.update(_ema_weights(checkpoint))
        try:
            result = dit.load_state_dict(state, strict=False)
        except RuntimeError as err:  # a tensor of the wrong shape
            raise CheckpointError(f"{path}: DiT weights do not fit the DiT built from its spec {hparams['dit']}: "
                                  f"{str(err).strip().splitlines()[-1].strip()}") from None
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"{path}: DiT weights do not match the DiT built from its spec {hparams['dit']}: "
                f"missing {result.missing_keys[:10]}, unexpected {result.unexpected_keys[:10]}"
            )
        return cls(
            dit=dit,
            vae=registry.build("vae", spec["vae"]),
            text_encoder=registry.build("text_encoder", spec["text_encoder"]),
            image_encoder=registry.build("image_encoder", hparams.get("image_encoder")) if layout.uses_image_tokens else None,
            layout=layout,
            solver=registry.build("solver", solver or hparams.get("sample_solver") or DEFAULT_SOLVER),
            **kwargs,
        )

    # ------------------------------------------------------------------------------------------ speed switches
    def enable_step_cache(
        self, threshold: Optional[float], warmup: int = 1, teacache: Optional[str] = None
    ) -> "E2VPipeline":
        """Skip the DiT blocks when the first block's modulated input changed less than ``threshold`` (relative L1)
        since the last computed step (None: off). Typical thresholds: 0.05 (safe) .. 0.2 (fast). ``teacache``: a
        TeaCache4Wan2.1 fit (:data:`~e2v.pipeline.step_cache.TEACACHE_WAN`) deciding from the rescaled, accumulated
        timestep-embedding change instead."""
        reduce = self.parallel.all_reduce_sp if self.parallel is not None else None
        self.step_cache = None if threshold is None else StepCache(threshold, warmup, reduce, teacache)
        return self

    def enable_block_offload(self, blocks_per_group: Optional[int]) -> "E2VPipeline":
        """Keep the DiT blocks' weights in (pinned) host memory and stream them to ``device`` ``blocks_per_group``
        blocks at a time, the next group prefetched on a side stream (:mod:`e2v.pipeline.offload`); the rest of the
        DiT stays on ``device``. None: off (the DiT back on ``device`` unless ``offload``). Quantize first; with
        ``offload`` the other components still move to ``device`` only while used."""
        if self.block_offload is not None:
            self.block_offload.remove()
        self.block_offload = None if blocks_per_group is None else BlockOffload(self.dit, self.device, blocks_per_group)
        if blocks_per_group is None:
            move_module(self.dit, "cpu" if self.offload else self.device)
        return self

    def compile(self, **options: Any) -> "E2VPipeline":
        """``torch.compile`` each DiT block in place (the blocks dominate the run time; shapes stay static)."""
        for block in self.dit.blocks:
            block.compile(**options)
        return self

    def quantize(self, mode: str) -> "E2VPipeline":
        """Weight-only quantisation of the DiT's Linears (:data:`~e2v.modules.quantize.MODES`); with the bitsandbytes
        modes ``int8`` / ``nf4`` the text encoder's too (transformers' umT5 casts activations to its weights' dtype,
        which the plain-torch ``int8wo`` / ``fp8`` storage cannot serve)."""
        if self.block_offload is not None:
            raise ValueError("quantize() the DiT before enable_block_offload(): the offload streams its current layers")
        quantize_linears(self.dit, mode, skip=DIT_QUANTIZE_SKIP)
        if mode in BITSANDBYTES_MODES:
            quantize_linears(self.text_encoder.model, mode)
        return self

    @contextlib.contextmanager
    def _borrowed(self) -> Iterator[None]:
        """Components in eval mode (and the VAE tiled with ``tile``) for the block; then as they were."""
        flags = [(m, m.training) for module in self.modules() for m in module.modules()]
        tiling = (self.vae.tile_size, self.vae.tile_overlap)
        for module in self.modules():
            module.eval()
        if self.tile is not None:
            self.vae.enable_tiling(self.tile)
        try:
            yield
        finally:
            for m, training in flags:
                m.training = training
            self.vae.tile_size, self.vae.tile_overlap = tiling

    @contextlib.contextmanager
    def _on_device(self, module: Optional[nn.Module]) -> Iterator[None]:
        """With offload: move ``module`` to the compute device for the block and back to the CPU after. The DiT under
        block offload: its streamed blocks go back to the host after the block."""
        if self.block_offload is not None and module is self.dit:
            try:
                yield
            finally:
                self.block_offload.release()
            return
        if not self.offload or module is None:
            yield
            return
        move_module(module, self.device)
        try:
            yield
        finally:
            move_module(module, "cpu")

    # ------------------------------------------------------------------------------------------------ inputs
    def check_request(self, num_refs: int, height: int, width: int, frames: int) -> None:
        """ValueError when a request of this size cannot run (frame size, frame count, references for the layout)."""
        if height <= 0 or width <= 0 or height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise ValueError(f"height and width must be positive multiples of {SIZE_MULTIPLE}, got {height}x{width}")
        self.layout.check(num_refs, frames)

    def sampled_frames(self, num_refs: int, frames: int) -> int:
        """The 4k+1 clip length to sample so that ``frames`` video frames remain once the preset has cut the
        reference frames of ``num_refs`` references (the surplus, under 4 frames, is trimmed from the end)."""
        needed = frames + self.preset.prefix_frames(self.layout, num_refs)
        return needed + (-(needed - 1)) % TEMPORAL_FACTOR

    def prepare_references(
        self, refs: Sequence[ReferenceImage], kinds: Optional[Sequence[str]], height: int, width: int
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Layout-ready references ``[1, N, 3, H, W]`` and image-encoder squares ``[1, N, 3, S, S]`` (or None)."""
        kinds = list(kinds) if kinds is not None else self.preset.default_kinds(len(refs))
        if len(kinds) != len(refs):
            raise ValueError(f"got {len(kinds)} reference kinds for {len(refs)} references")
        images = [load_reference_image(image) for image in refs]
        layout_refs = torch.stack([self.preset.prepare_reference(img, kind, height, width)
                                   for img, kind in zip(images, kinds)])
        clip_refs = None
        if self.image_encoder is not None:
            clip_refs = torch.stack([self.preset.clip_square(img, self.image_encoder.image_size) for img in images])[None]
        return layout_refs[None], clip_refs

    @torch.no_grad()
    def encode_text(self, prompt: str, negative_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt and negative prompt states ``[1, L, D]`` each (negative ``""``: zeros, the null text, unless the
        preset encodes it)."""
        encode_negative = bool(negative_prompt) or self.preset.encode_empty_negative
        with self._borrowed(), self._on_device(self.text_encoder):
            prompts = [prompt] + ([negative_prompt] if encode_negative else [])
            states = self.text_encoder(prompts).float()
        negative = states[1:] if encode_negative else torch.zeros_like(states[:1])
        return states[:1].to(self.device), negative.to(self.device)

    # --------------------------------------------------------------------------------------------- denoising
    def predict(self, dit_input: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
                image: Optional[torch.Tensor], step: int, num_steps: int) -> torch.Tensor:
        """One DiT forward ``[G, C_in, T, h, w] -> [G, 16, T, h, w]`` through the step cache and token sharding.

        Without either, the DiT's own forward runs: under FSDP2 (a training run's samples) its hooks gather the
        sharded weights, which a call of its pieces would bypass."""
        dit = self.dit
        if self.parallel is None and self.step_cache is None:
            return dit(dit_input, timestep, text, image)
        if fsdp_modules(dit):
            raise ValueError("the step cache and sequence / CFG parallelism call the DiT's pieces, which FSDP2 does "
                             "not gather: sample a sharded DiT without them")
        inputs = dit.embed_inputs(dit_input, timestep, text, image)
        rope = dit.rope(inputs.grid)
        tokens = inputs.tokens
        attention = dit.attention
        if self.parallel is not None:
            tokens, rope, attention = self.parallel.shard_tokens(tokens, rope, dit)
        if self.step_cache is not None:
            tokens = self.step_cache.run(dit, tokens, inputs, rope, attention, step, num_steps)
        else:
            tokens = dit.run_blocks(tokens, inputs, rope, attention)
        if self.parallel is not None:
            tokens = self.parallel.gather_tokens(tokens)
        return dit.head(tokens, inputs.temb, inputs.grid)

    def velocity(self, latents: torch.Tensor, timestep: torch.Tensor, branches: dict[str, torch.Tensor],
                 step: int, num_steps: int) -> torch.Tensor:
        """Velocities of all guidance branches ``[G, 16, T, h, w]`` for ``latents [1, 16, T, h, w]``."""
        condition, text, image = branches["condition"], branches["text"], branches["image"]
        if self.parallel is not None:
            condition, text, image = self.parallel.split_branches(condition, text, image)
        x = latents.expand(condition.shape[0], *latents.shape[1:])
        dit_input = self.layout.dit_input(x, condition)
        out = self.predict(dit_input, timestep.expand(x.shape[0]), text, image, step, num_steps)
        out = self.layout.video_output(out, condition).float()
        return self.parallel.gather_branches(out) if self.parallel is not None else out

    @staticmethod
    def combine(velocities: torch.Tensor, guidance: float, image_guidance: Optional[float]) -> torch.Tensor:
        """Guided velocity ``[1, ...]`` from the branch velocities ``[G, ...]`` (full, textless, null)."""
        if velocities.shape[0] == 1:
            return velocities
        full, textless = velocities[0:1], velocities[1:2]
        if image_guidance is None:
            return textless + guidance * (full - textless)
        null = velocities[2:3]
        return null + image_guidance * (textless - null) + guidance * (full - textless)

    # ------------------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        refs: Sequence[ReferenceImage],
        prompt: str,
        negative_prompt: Optional[str] = None,
        kinds: Optional[Sequence[str]] = None,
        height: int = 480,
        width: int = 832,
        frames: int = 81,
        steps: Optional[int] = None,
        guidance: float = 5.0,
        image_guidance: Optional[float] = None,
        seed: int = 0,
        progress: bool = True,
        decode: bool = True,
        on_step: Optional[Callable[[int, int], None]] = None,
        output_frames: Optional[int] = None,
    ) -> torch.Tensor:
        """Generate a video ``[3, F - prefix, H, W]`` in [-1, 1] (``prefix = layout.prefix_frames(N)``); with
        ``decode=False``, the denoised normalised latents ``[1, 16, T, h, w]`` (reference frames included) instead.
        ``output_frames``: the video's length instead (``[3, output_frames, H, W]``): ``frames`` is then
        :meth:`sampled_frames`, the shortest clip that leaves that many after the cut.

        ``refs``: N >= 1 images (paths, PIL images, tensors); ``kinds``: one per reference (default: the preset's,
        ``"object"`` for ``e2v``; ``"background"`` is cropped instead of white-padded). ``negative_prompt``: None for
        the preset's default. ``steps``: solver steps (default the solver's
        ``num_steps``). ``guidance``: text CFG scale (1 = off); ``image_guidance``: reference scale of dual guidance.
        """
        if not refs:
            raise ValueError("at least one reference image is needed")
        if output_frames is not None:
            frames = self.sampled_frames(len(refs), output_frames)
        self.check_request(len(refs), height, width, frames)
        negative_prompt = self.preset.negative_prompt if negative_prompt is None else negative_prompt
        with self._borrowed():
            video = self._generate(refs, prompt, negative_prompt, kinds, height, width, frames, steps, guidance,
                                   image_guidance, seed, progress, decode, on_step)
        return video[:, :output_frames] if output_frames is not None and decode else video

    def _generate(self, refs: Sequence[ReferenceImage], prompt: str, negative_prompt: str,
                  kinds: Optional[Sequence[str]], height: int, width: int, frames: int, steps: Optional[int],
                  guidance: float, image_guidance: Optional[float], seed: int, progress: bool,
                  decode: bool, on_step: Optional[Callable[[int, int], None]]) -> torch.Tensor:
        """``__call__``'s work, the components borrowed."""
        layout_refs, clip_refs = self.prepare_references(refs, kinds, height, width)
        vae_factor = self.vae.spatial_factor
        shape = (1, self.vae.z_dim, latent_frames(frames), height // vae_factor, width // vae_factor)
        latents, generator = self.preset.initial_noise(shape, seed, self.device)  # noise first, as officially
        branches = self._branches(prompt, negative_prompt, layout_refs, clip_refs, frames, guidance, image_guidance,
                                  generator)
        timesteps = self.solver.timesteps(steps).to(self.device)
        if self.step_cache is not None:
            self.step_cache.reset()
        context = self.dit.cache_context() if self.cache_context else contextlib.nullcontext()
        with self._on_device(self.dit), _resharded(self.dit), context:
            for i, t in enumerate(tqdm(timesteps, desc="sampling", disable=not progress)):
                velocities = self.velocity(latents, t.reshape(1), branches, i, len(timesteps))
                if self.preset.guidance_in_dit_dtype:
                    velocities = velocities.to(self.dit.proj_out.weight.dtype)
                latents = self.solver.step(self.combine(velocities, guidance, image_guidance), i, latents)
                if on_step is not None:
                    on_step(i + 1, len(timesteps))
        if not decode:
            return latents.float().cpu()
        with self._on_device(self.vae):
            video = self.vae.decode(self.vae.denormalize(latents.to(self.device)))[0].float()
        return video[:, self.preset.prefix_frames(self.layout, len(refs)) :].clamp(-1, 1).cpu()

    def _branches(self, prompt: str, negative_prompt: str, layout_refs: torch.Tensor,
                  clip_refs: Optional[torch.Tensor], frames: int, guidance: float,
                  image_guidance: Optional[float], generator: Optional[torch.Generator] = None
                  ) -> dict[str, torch.Tensor]:
        """Batched conditions of the guidance branches: ``condition``, ``text`` and ``image`` (or None), ``[G, ...]``.
        ``generator``: where the preset's posterior sample of the condition latents is drawn from."""
        text, negative = self.encode_text(prompt, negative_prompt)
        image = None
        if clip_refs is not None:
            with self._on_device(self.image_encoder):
                image = self.image_encoder(self.layout.image_inputs(layout_refs, clip_refs).to(self.device)).float()
        with self._on_device(self.vae):
            vae = self.preset.condition_vae(self.vae, generator)
            condition = self.layout.condition(vae, layout_refs.to(self.device, self.vae.dtype), frames).float()
        count = 3 if image_guidance is not None else 2 if guidance != 1 else 1
        texts = [text, negative, negative][:count]
        conditions = [condition, condition, torch.zeros_like(condition)][:count]
        images = None if image is None else torch.cat([image, image, torch.zeros_like(image)][:count])
        return {"condition": torch.cat(conditions), "text": torch.cat(texts), "image": images}


@contextlib.contextmanager
def _resharded(dit: nn.Module) -> Iterator[None]:
    """Under FSDP2, free the weights the DiT's forwards gathered when the block ends: no backward follows a sampling
    forward, and a gathered copy left behind would miss the next writes to the shards (optimizer, EMA swap)."""
    try:
        yield
    finally:
        reshard(dit)


def _ema_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The DiT's EMA weights (names without ``dit.``) from an EMA callback state in the checkpoint, if any."""
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict) and isinstance(state.get("shadow"), dict):
            return {k[len("dit.") :]: v for k, v in state["shadow"].items() if k.startswith("dit.")}
    return {}
