"""``E2VDiffusion``: trains the video DiT on (prompt, references, video) triplets with rectified flow.

Components come from registry specs (``{"name": "wan", "preset": "tiny"}``): the DiT is trained; the VAE, text encoder
and image encoder are frozen, kept out of the optimizer, of FSDP sharding and of checkpoints (their weights come from
their own specs). The reference layout decides how references enter the DiT (A2 frame repeat, temporal append, ...).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from e2v import registry
from e2v.families import resolve as resolve_family
from e2v.specs import FamilySpec, DiTSpec, ImageEncoderSpec, LayoutSpec, SolverSpec, TextEncoderSpec, TimestepSamplerSpec, VAESpec
from e2v.tasks.optim import configure_optimization
from e2v.modules.flow import TIMESTEP_SCALE, expand_like, noisy_latents, velocity_target
from e2v.tasks.frozen import build_frozen, restore_prefixes, strip_prefixes
from e2v.modules.reshard import reshard
from e2v.modules.sequence_parallel import SequenceShards
from e2v.pipeline.sampling import SamplingSettings
from e2v.lora import LoRAConfig, LoRAOptions, apply_lora, drop_base, is_adapter_key
from e2v.tasks.sharding import FSDPOptions, ShardingPolicy, is_meta, is_sharded, materialize_dit, meta_dit, shard_dit

log = logging.getLogger(__name__)

FROZEN = ("vae", "text_encoder", "image_encoder")
TIMESTEP_BUCKETS = 4
FOREGROUND_LATENT_DISTANCE = 0.5  # normalised-latent channel mean: farther from the plate's latent = a subject


class E2VDiffusion(LightningModule):
    """Rectified-flow training of the E2V DiT.

    Batches are either online (``video [B,3,F,H,W]``, ``refs [B,N,3,H,W]``, ``refs_clip [B,N,3,S,S]``, ``caption``)
    or from the latent cache (``latents``, ``condition``, ``text``, ``image``). Text dropout zeroes the text states
    (e2v's null text, also used by the sampler's unconditional branch); reference dropout zeroes the image tokens and
    the layout condition (the null reference condition of dual guidance).
    """

    frozen_parts = FROZEN  # submodules never trained nor saved: rebuilt from their specs
    unsaved_arguments = ("optimizer", "lr_scheduler")  # callables, not hyper-parameters

    def __init__(
        self,
        family: FamilySpec = "tiny",
        dit: DiTSpec | None = None,
        vae: VAESpec | None = None,
        text_encoder: TextEncoderSpec | None = None,
        image_encoder: ImageEncoderSpec | None = None,
        layout: LayoutSpec | None = None,
        timestep_sampler: TimestepSamplerSpec = {"name": "logit_normal"},
        text_dropout: float = 0.1,
        reference_dropout: float = 0.05,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lora: LoRAOptions | None = None,
        max_nonfinite_steps: int = 0,
        sample_solver: SolverSpec = {"name": "euler", "shift": 3.0},
        seed: int = 0,
        fsdp: FSDPOptions | None = None,
        foreground_loss_weight: float = 0.0,
    ):
        """
        Args:
            family: the model family (``e2v registry family``) the components default to: ``tiny``, or e.g.
                ``{name: a2-14b, weights: checkpoints/SkyReels-A2-14B}`` (the official release root).
            dit: the DiT spec, e.g. ``{name: wan, num_layers: 4}`` (options: ``e2v registry dit wan``).
            vae: the frozen VAE spec (``e2v registry vae``; options: ``e2v registry vae NAME``).
            text_encoder: the frozen text encoder spec (``e2v registry text_encoder NAME``).
            image_encoder: the frozen image encoder spec, built when the layout uses image tokens.
            layout: the reference layout spec (``a2``, ``temporal_append``, ``canvas``).
            timestep_sampler: training flow-time sampler spec (``e2v registry timestep_sampler``).
            sample_solver: the sampler's solver spec for sample videos (``e2v registry solver``).
                Component specs are ``name`` or ``{name: ..., ...options}``, checked when the recipe is parsed.
                dit / vae / text_encoder / image_encoder / layout left out (null): the family's; named like the
                family's: the family's options updated with these; named otherwise: replaces it.
            text_dropout, reference_dropout: per-sample probabilities of dropping the prompt / the references (CFG).
            optimizer, lr_scheduler: callables from the recipe (``class_path`` + ``init_args``), e.g. torch AdamW or
                bitsandbytes AdamW8bit.
            lora: train LoRA adapters on a frozen DiT instead of the whole DiT (:mod:`e2v.lora`), e.g.
                ``{rank: 32, alpha: 32, targets: attention, quantize: int8}``; checkpoints then hold the adapters
                only.
            max_nonfinite_steps: how many steps with a NaN/inf loss may be skipped (each reported) before the run
                stops with an error; 0 stops at the first one.
            seed: base of the per-step random streams (timesteps, noise, dropout), so a resumed run draws the same.
            foreground_loss_weight: extra loss weight on the video latents that differ from the background plate (the
                last reference): the subjects (:meth:`foreground_weights`); 0 = off.
            fsdp: FSDP2 settings for ``ModelParallelStrategy`` (:class:`~e2v.tasks.sharding.ShardingPolicy`), e.g.
                ``{param_dtype: bfloat16, reduce_dtype: float32}``. Given, a DiT with ``weights`` is built on the
                meta device and ``configure_model`` loads each rank's shards only (no rank holds the whole DiT);
                left out, the DiT is built in full and sharded without mixed precision.
        """
        arguments = {k: v for k, v in locals().items() if k not in ("self", "__class__", *self.unsaved_arguments)}
        super().__init__()
        self.save_hyperparameters(ignore=list(self.unsaved_arguments))
        # LightningCLI saves the instantiated class's own arguments only: those a subclass fixes (the distillation
        # tasks' sample_solver, dropouts) are added from here
        self.hparams.update({k: v for k, v in arguments.items() if k not in self.hparams})
        # the hyper-parameters hold the resolved specs: a checkpoint rebuilds its components without the family
        specs = resolve_family(family, dict(dit=dit, vae=vae, text_encoder=text_encoder, image_encoder=image_encoder,
                                            layout=layout))
        self.hparams.update(specs)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.layout = registry.build("reference_layout", specs["layout"])
        self.timestep_sampler = registry.build("timestep_sampler", timestep_sampler)
        self.sharding = ShardingPolicy.from_options(fsdp) if fsdp is not None else ShardingPolicy(None, None)
        self.dit_weights = None  # the folder a meta-device DiT is filled from in configure_model
        if fsdp is not None and registry.split_spec("dit", specs["dit"])[1].get("weights") is not None:
            self.dit, self.dit_weights = meta_dit(specs["dit"])
        else:  # a random preset is built in full: its initialisation is drawn over whole tensors, rank-consistent
            self.dit = registry.build("dit", specs["dit"])
        self.lora = LoRAConfig.from_options(lora)
        if self.lora is not None:
            apply_lora(self.dit, self.lora)
        self.vae = build_frozen("vae", specs["vae"])
        self.text_encoder = build_frozen("text_encoder", specs["text_encoder"])
        image_spec = specs["image_encoder"]
        self.image_encoder = build_frozen("image_encoder", image_spec) if self.layout.uses_image_tokens else None
        self._check_widths()
        self.nonfinite_steps = 0
        self.skipped_steps = 0  # steps every rank skipped (bad batch or non-finite loss on some rank)
        self._host_group = None  # distributed on an accelerator: a gloo group for host flags (on_fit_start)
        self._bucket_sums: torch.Tensor | None = None  # train loss sums / counts per flow-time bucket since the last log
        self.sequence: SequenceShards | None = None  # this rank's sequence-parallel group (configure_model)
        # checkpoints hold no frozen weights (see state_dict); on_load_checkpoint checks the trained ones instead
        self.strict_loading = False

    def _check_widths(self) -> None:
        """The DiT's input channels and context widths must match the layout and the encoders (clear error if not)."""
        cfg = self.dit.config
        pairs = [("in_channels", cfg.in_channels, f"the {type(self.layout).__name__} layout", self.layout.in_channels)]
        if self.text_encoder is not None:
            pairs.append(("text_dim", cfg.text_dim, "the text encoder's width", self.text_encoder.dim))
        if self.image_encoder is not None:
            pairs.append(("image_dim", cfg.image_dim, "the image encoder's width", self.image_encoder.dim))
        for key, dit_value, source, value in pairs:
            if dit_value != value:
                raise ValueError(
                    f"DiT config {key}={dit_value} does not match {source} ({value}); set dit.{key}: {value} in the "
                    "recipe or pick matching components"
                )

    # ----------------------------------------------------------------------------------------------- conditioning
    @torch.no_grad()
    def encode_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Latent inputs of a batch: ``x0 [B,16,T,h,w]``, ``condition``, ``text [B,L,D]``, ``image`` or None, ``num_refs``."""
        if "latents" in batch:
            image = batch.get("image") if self.layout.uses_image_tokens else None
            condition = batch["condition"]
            return {
                "x0": batch["latents"],
                "condition": condition,
                "text": batch["text"],
                "image": image,
                "num_refs": self.layout.num_references(condition),
            }
        video, refs = batch["video"], batch["refs"]
        x0 = self.vae.normalize(self.vae.encode(self.layout.target_video(video, refs)))
        condition = self.layout.condition(self.vae, refs, video.shape[2])
        text = self.text_encoder(list(batch["caption"])).to(x0.dtype)
        image = None
        if self.image_encoder is not None:
            image = self.image_encoder(self.layout.image_inputs(refs, batch["refs_clip"])).to(x0.dtype)
        return {"x0": x0, "condition": condition, "text": text, "image": image, "num_refs": refs.shape[1]}

    @property
    def data_parallel_rank(self) -> int:
        """This rank's data-parallel index: the global rank, except that the ranks of a sequence-parallel group
        share one (they train on the same samples with the same noise)."""
        mesh = self._device_mesh
        return mesh["data_parallel"].get_local_rank() if mesh is not None else self.global_rank

    def step_generator(self, stream: int, device: torch.device | str | None = None) -> torch.Generator:
        """A generator seeded by (seed, global step, data-parallel rank, stream): the same draws after a resume."""
        seed = ((self.hparams.seed * 1_000_003 + self.global_step) * 131 + self.data_parallel_rank) * 7 + stream
        return torch.Generator(device=device or self.device).manual_seed(seed % (2**63))

    def drop_conditions(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Zero the text of a random ``text_dropout`` share of samples and the references of ``reference_dropout``."""
        b = inputs["x0"].shape[0]
        gen = self.step_generator(stream=2)
        out = dict(inputs)
        drop_text = torch.rand(b, generator=gen, device=self.device) < self.hparams.text_dropout
        drop_refs = torch.rand(b, generator=gen, device=self.device) < self.hparams.reference_dropout
        out["text"] = inputs["text"] * expand_like(~drop_text, inputs["text"])
        out["condition"] = inputs["condition"] * expand_like(~drop_refs, inputs["condition"])
        if inputs["image"] is not None:
            out["image"] = inputs["image"] * expand_like(~drop_refs, inputs["image"])
        return out

    # ---------------------------------------------------------------------------------------------------- training
    def predict_velocity(
        self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None,
        dit: torch.nn.Module | None = None,
    ) -> torch.Tensor:
        """Velocity of ``dit`` (default: the trained DiT) for noisy latents ``x_t [B,16,T,h,w]`` at flow times
        ``t [B]``."""
        out = (dit or self.dit)(self.layout.dit_input(x_t, condition), t * TIMESTEP_SCALE, text, image,
                                sequence=self.sequence)
        return self.layout.video_output(out, condition)

    def weighted_mse(self, pred: torch.Tensor, target: torch.Tensor, num_refs: int,
                     x0: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample MSE ``[B]`` of latents ``[B,16,T,h,w]``, weighted over latent frames by the layout (the
        reference frames count ``reference_loss_weight``) and, given the clean latents ``x0``, over positions by
        :meth:`foreground_weights` (with ``foreground_loss_weight``)."""
        error = (pred.float() - target.float()).pow(2).mean(dim=1)  # [B, T, h, w]
        if x0 is not None and self.hparams.foreground_loss_weight:
            error = error * self.foreground_weights(x0, num_refs)
        per_frame = error.mean(dim=(2, 3))  # [B, T]
        weights = self.layout.loss_weights(num_refs, pred.shape[2]).to(per_frame)
        return (per_frame * weights).sum(1) / weights.sum()

    def flow_loss(self, inputs: dict[str, torch.Tensor], t: torch.Tensor, noise: torch.Tensor,
                  dit: torch.nn.Module | None = None) -> torch.Tensor:
        """Per-sample velocity MSE ``[B]`` of ``dit`` (default: the trained DiT), weighted over latent frames by the
        layout."""
        x0 = inputs["x0"]
        # x_t in fp32: the flow time mixing x0 and noise is the fp32 t the DiT receives, not rounded to a bf16 VAE's
        x_t = noisy_latents(x0.float(), noise.float(), t)
        pred = self.predict_velocity(x_t, t, inputs["condition"], inputs["text"], inputs["image"], dit)
        return self.weighted_mse(pred, velocity_target(x0, noise), inputs["num_refs"], x0)

    def foreground_weights(self, x0: torch.Tensor, num_refs: int) -> torch.Tensor:
        """``[B, T, h, w]`` loss weights: ``1 + foreground_loss_weight`` where a video latent differs from the last
        reference's latent frame (the background plate, as the synthetic world and ``e2v data build`` order the
        references) by more than ``FOREGROUND_LATENT_DISTANCE`` (channel mean, normalised latents), 1 elsewhere: the
        subjects, a small share of the pixels, weigh as much as the plate does. Layouts without reference frames in
        the target (``temporal_append``) get ones."""
        weights = torch.ones_like(x0[:, 0], dtype=torch.float32)
        if not hasattr(self.layout, "reference_latent_frames"):
            return weights
        start = self.layout.reference_latent_frames(num_refs)
        plate = x0[:, :, start - 1 : start].float()
        moving = (x0[:, :, start:].float() - plate).abs().mean(dim=1) > FOREGROUND_LATENT_DISTANCE
        weights[:, start:] += self.hparams.foreground_loss_weight * moving
        return weights

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """The flow loss of a batch; every rank skips the step (:meth:`skip_step`) when any rank's batch has no
        readable sample or any rank's loss is not finite: ranks agree through one all_reduce of a flag per check, so
        none is left waiting in the gradient collectives (DDP / FSDP)."""
        self.log_skipped_samples()
        unreadable = self.ranks_with("video" not in batch and "latents" not in batch)  # all samples were unreadable
        if unreadable:
            return self.skip_step(f"rank(s) {unreadable} had no readable sample in their batch", batch)
        inputs = self.drop_conditions(self.same_in_sequence_group(self.encode_batch(batch)))
        x0 = inputs["x0"]
        t = self.timestep_sampler(x0.shape[0], generator=self.step_generator(stream=0, device="cpu")).to(self.device)
        noise = torch.randn(x0.shape, generator=self.step_generator(stream=1), device=self.device, dtype=x0.dtype)
        per_sample = self.flow_loss(inputs, t, noise)
        loss = per_sample.mean()
        nonfinite = self.ranks_with(~torch.isfinite(loss.detach()))  # the step's one host sync
        if nonfinite:
            return self.handle_nonfinite(loss, batch, nonfinite)
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        self.accumulate_timestep_buckets(per_sample.detach(), t)
        return loss

    def same_in_sequence_group(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Under sequence parallelism, the encoded inputs of the SP group's first rank on every rank of the group (the
        ranks read the same samples; this also makes online encodes with non-deterministic kernels agree)."""
        if self.sequence is None:
            return inputs
        source = torch.distributed.get_global_rank(self.sequence.group, 0)
        for value in inputs.values():
            if isinstance(value, torch.Tensor):
                torch.distributed.broadcast(value, src=source, group=self.sequence.group)
        return inputs

    def on_fit_start(self) -> None:
        """Distributed on an accelerator: a CPU (gloo) process group for host-side flags (:meth:`ranks_with`), so
        agreeing on a host fact does not wait for the device's queued work."""
        dist = torch.distributed
        if self.trainer.world_size > 1 and dist.is_initialized() and dist.get_backend() != "gloo":
            self._host_group = dist.new_group(backend="gloo")

    def ranks_with(self, flag: bool | torch.Tensor) -> list[int]:
        """The global ranks whose ``flag`` is set, the same list on every rank: one all_reduce of a ``[world_size]``
        vector (nothing to reduce on one process). A host ``bool`` is reduced on the CPU (no device sync); a 0-dim
        device tensor on its device (one host sync to read the result)."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1 and not isinstance(flag, torch.Tensor):
            return [0] if flag else []
        on_host = not isinstance(flag, torch.Tensor)
        flags = torch.zeros(world, device="cpu" if on_host else self.device)
        flags[self.global_rank] = float(flag) if on_host else flag.float()
        if world > 1 and on_host:
            torch.distributed.all_reduce(flags, group=self._host_group)
        elif world > 1:
            flags = self.trainer.strategy.reduce(flags, reduce_op="sum")
        return [rank for rank, value in enumerate(flags.tolist()) if value]

    def skip_step(self, reason: str, batch: dict[str, Any]) -> torch.Tensor:
        """Skip the step on every rank, reported by rank 0: the loss returned is a zero connected to no parameter, so
        the backward computes no gradient, no rank enters a gradient collective and the optimizer step changes nothing
        (Lightning refuses a None loss under DDP / FSDP). The step still counts as a global step on every rank.

        Under FSDP2 a forward that ran leaves the root's parameters gathered (its backward would free them): they are
        freed here, so the sharded parameters stay the only copy (what the EMA and the optimizer update)."""
        reshard(self)
        if self.global_rank == 0:
            log.warning("skipping global step %d on every rank: %s (batch ids on rank 0: %s)", self.global_step,
                        reason, batch.get("id", "?"))
        self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps))
        return torch.zeros((), device=self.device, requires_grad=True)

    def writes_logs(self) -> bool:
        """Whether Lightning writes this step's logged values (its own ``log_every_n_steps`` decision, the same on
        every rank): values only read when written (grad norm, skip counts, loss buckets) are computed then only
        (under FSDP2 the grad norm's ``full_tensor`` is a collective)."""
        connector = getattr(self._trainer, "_logger_connector", None)
        return connector is None or connector.should_update_logs

    def log_skipped_samples(self) -> None:
        """Log how many samples the datamodule skipped so far (bad files), when it counts them."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "skip_counts") and self.writes_logs():
            self.log("data/skipped_samples", float(sum(datamodule.skip_counts.values())))
            self.log("data/skipped_fraction", float(datamodule.skip_fraction))

    def handle_nonfinite(self, loss: torch.Tensor, batch: dict[str, Any], ranks: list[int]) -> torch.Tensor:
        """Skip a step whose loss is NaN/inf on some rank (every rank skips it), or stop every rank once
        ``max_nonfinite_steps`` are used up (the count is the same on every rank)."""
        self.nonfinite_steps += 1
        message = (
            f"non-finite loss on rank(s) {ranks} (rank {self.global_rank}: {loss.item()}) at global step "
            f"{self.global_step} (batch ids on rank {self.global_rank}: {batch.get('id', '?')}); "
            f"{self.nonfinite_steps} such step(s) so far, limit max_nonfinite_steps={self.hparams.max_nonfinite_steps}"
        )
        if self.nonfinite_steps > self.hparams.max_nonfinite_steps:
            raise FloatingPointError(message + ". Lower the learning rate, check the data, or raise the limit.")
        self.log("train/nonfinite_steps", float(self.nonfinite_steps))
        return self.skip_step(message, batch)

    def timestep_bucket_sums(self, per_sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``[2, K]``: per flow-time bucket (``t`` in [0, .25), [.25, .5), ...) the loss sum and the sample count,
        computed on the device (no host sync)."""
        buckets = (t.clamp(0, 1 - 1e-6) * TIMESTEP_BUCKETS).long()
        sums = per_sample.new_zeros(2, TIMESTEP_BUCKETS)
        sums[0].index_add_(0, buckets, per_sample)
        sums[1].index_add_(0, buckets, torch.ones_like(per_sample))
        return sums

    def accumulate_timestep_buckets(self, per_sample: torch.Tensor, t: torch.Tensor) -> None:
        """Add the step's bucket sums on the device; when Lightning writes logs, log each bucket's mean loss over the
        steps since the last write (one host copy per log interval): where the model still struggles."""
        sums = self.timestep_bucket_sums(per_sample.float(), t)
        self._bucket_sums = sums if self._bucket_sums is None else self._bucket_sums + sums
        if self.writes_logs():
            self.log_timestep_buckets(self._bucket_sums, "train")
            self._bucket_sums = None

    def log_timestep_buckets(self, sums: torch.Tensor, stage: str) -> None:
        """Log the mean loss of each non-empty bucket from ``sums [2, K]`` (:meth:`timestep_bucket_sums`)."""
        for k, (total, count) in enumerate(zip(*sums.tolist())):
            if count > 0:
                lo, hi = k / TIMESTEP_BUCKETS, (k + 1) / TIMESTEP_BUCKETS
                self.log(f"{stage}/loss_t{lo:.2f}-{hi:.2f}", total / count, batch_size=int(count))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Velocity loss at evenly spaced flow times (deterministic: the same noise every validation)."""
        inputs = self.encode_batch(batch)
        x0 = inputs["x0"]
        b = x0.shape[0]
        t = (torch.arange(b, device=self.device, dtype=torch.float32) + 0.5) / b
        gen = torch.Generator(device=self.device).manual_seed(self.hparams.seed + batch_idx)
        noise = torch.randn(x0.shape, generator=gen, device=self.device, dtype=x0.dtype)
        per_sample = self.flow_loss(inputs, t, noise)
        loss = per_sample.mean()
        self.log("val/loss", loss, prog_bar=True, batch_size=b, sync_dist=True)
        self.log_timestep_buckets(self.timestep_bucket_sums(per_sample.float(), t), "val")
        return loss

    # -------------------------------------------------------------------------------------------- optim / scaling
    def configure_optimizers(self) -> Any:
        return configure_optimization(self.dit.parameters(), self.optimizer_factory, self.lr_scheduler_factory,
                                      self._trainer.max_steps if self._trainer is not None else None)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.writes_logs():
            return
        grads = [p.grad for p in self.dit.parameters() if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            self.log("train/grad_norm", norm, prog_bar=False)

    def configure_model(self) -> None:
        """FSDP2 under ``ModelParallelStrategy``: shard the DiT's fp32 islands, each block, then the DiT itself, with
        the ``fsdp`` mixed-precision policy; frozen parts replicate. A meta-device DiT (``fsdp`` with weights) is
        then allocated on this rank's device and each rank reads only its own shards from the weights folder.

        On a ``(data_parallel, sequence_parallel)`` mesh (:class:`~e2v.strategies.SequenceParallelStrategy`) each
        sample's tokens are split over the sequence-parallel group and the DiT is sharded over all ranks."""
        mesh = self.device_mesh
        if mesh is not None and "sequence_parallel" in (mesh.mesh_dim_names or ()):
            if mesh["sequence_parallel"].size() > 1 and self.sequence is None:
                self.sequence = SequenceShards(mesh["sequence_parallel"].get_group())
            if not is_sharded(self.dit):
                shard_dit(self.dit, mesh._flatten("data_sequence_parallel"), self.sharding)
        elif mesh is not None and not is_sharded(self.dit):
            shard_dit(self.dit, mesh["data_parallel"], self.sharding)
        if is_meta(self.dit):
            device = self._trainer.strategy.root_device if self._trainer is not None else self.device
            materialize_dit(self.dit, self.dit_weights, device)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The trained weights only: the frozen VAE / encoders come from their own specs (and weight folders), so
        checkpoints, full or distributed (FSDP2), never carry them."""
        state = super().state_dict(*args, **kwargs)
        strip_prefixes(state, self.frozen_parts)
        if self.lora is not None:  # the frozen base comes from the DiT spec too: keep the adapters only
            drop_base(state, "dit.")
        return state

    def sampling_settings(self) -> SamplingSettings:
        """How this run samples (:mod:`e2v.pipeline.sampling`): ``sample_solver``'s solver, shift and steps, the
        SampleVideos callback's steps, guidance and fps, and the datamodule's frame size and output frames (its clip
        length less the layout's reference frames for its most references); the defaults for anything not set."""
        solver = registry.split_spec("solver", self.hparams.sample_solver)
        values: dict[str, Any] = {"solver": solver[0]}
        values.update({key: solver[1][option] for key, option in (("shift", "shift"), ("steps", "num_steps"))
                       if option in solver[1]})
        trainer = self._trainer
        for callback in trainer.callbacks if trainer is not None else ():
            if hasattr(callback, "sampling_options"):
                values.update(callback.sampling_options())
        data = getattr(trainer, "datamodule", None) if trainer is not None else None
        size = getattr(data, "buckets", None)
        if size:
            frames, height, width = size[0]
            values.update(height=height, width=width,
                          frames=max(1, frames - self.layout.prefix_frames(getattr(data, "max_references", 1))))
        return SamplingSettings(**values)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save :meth:`sampling_settings` as ``checkpoint["sampling"]``: generate's defaults for this checkpoint."""
        checkpoint["sampling"] = self.sampling_settings().to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint must carry every trained (DiT) weight: strict loading is off only for the frozen parts."""
        state = checkpoint.get("state_dict")
        if state is not None:
            missing = sorted(set(self.state_dict()) - set(state))
            if missing:
                raise KeyError(f"checkpoint lacks {len(missing)} trained weight(s), e.g. {missing[:5]}")

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        state_dict = dict(state_dict)
        restore_prefixes(self, state_dict, self.frozen_parts)
        if self.lora is None:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        # LoRA: the frozen DiT base stays as built from its spec; strict loading still needs every adapter tensor
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if is_adapter_key(k) or not k.startswith("dit.")]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"LoRA state dict does not fit: missing {missing[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}")
        return result

    # --------------------------------------------------------------------------------------------------- sampling
    def make_pipeline(self, solver: dict[str, Any] | str | None = None):
        """An :class:`~e2v.pipeline.pipeline.E2VPipeline` sharing this module's components."""
        from e2v.pipeline.pipeline import E2VPipeline

        return E2VPipeline(
            dit=self.dit,
            vae=self.vae,
            text_encoder=self.text_encoder,
            image_encoder=self.image_encoder,
            layout=self.layout,
            solver=registry.build("solver", solver or self.hparams.sample_solver),
            device=self.device,
        )

    @torch.no_grad()
    def generate_samples(
        self, batch: dict[str, Any], steps: int = 20, guidance: float = 1.0, seed: int = 0,
        image_guidance: Optional[float] = None,
    ) -> dict[str, Any]:
        """Generate a video for each triplet of an online batch (used by the SampleVideos callback).

        Returns ``{"video": [B,3,F',H,W]`` (reference frames cut), ``"refs": [B,N,3,H,W]``, ``"caption"``}.
        """
        refs, captions = batch["refs"], list(batch["caption"])
        frames, height, width = batch["video"].shape[2:]
        pipeline = self.make_pipeline()  # borrows the modules: train flags and requires_grad are left as they are
        videos = [
            pipeline(list(refs[i]), captions[i], kinds=list(batch["ref_kinds"][i]) if "ref_kinds" in batch else None,
                     height=height, width=width, frames=frames, steps=steps, guidance=guidance,
                     image_guidance=image_guidance, seed=seed + i, progress=False)
            for i in range(refs.shape[0])
        ]
        return {"video": torch.stack(videos), "refs": refs, "caption": captions}
