"""Step and guidance distillation: a few-step, guidance-free E2V student from a many-step, CFG teacher.

Two tasks, both :class:`~e2v.tasks.e2v_diffusion.E2VDiffusion` subclasses (the same conditioning, batches, latent
cache, EMA, checkpoints, FSDP2 sharding and sample videos), the student being ``self.dit``:

- :class:`ODEDistillation` (``ode``): the frozen teacher samples each batch with text CFG on its own schedule merged
  with the student's timesteps; the student regresses the teacher's trajectory between consecutive student
  timesteps (its velocity against the teacher's secant). Deterministic, one optimizer: the warm start.
- :class:`DMDDistillation` (``dmd``, DMD2 without the GAN term): the student generates ``x0`` from noise on its
  schedule; a fake-score DiT (the critic, initialised from the teacher) learns the student's samples with the flow
  loss, and the student moves along ``x0_fake - x0_real``, the frozen teacher with CFG being the real score.
  Manual optimisation: the critic steps every batch, the student every ``critic_steps``-th.

The student samples at its fixed ``timesteps`` (DiT timesteps before ``shift``, LightX2V's ``[1000, 750, 500, 250]``
at shift 5) with Euler and guidance 1; these are saved as the checkpoint's sampling settings, so
``e2v generate --checkpoint student.ckpt`` uses them without flags. The teacher is an ``E2VDiffusion`` checkpoint
(its EMA weights when it has them); its component specs are the student's. With ``lora``, the student is LoRA
adapters on the teacher's weights and the teacher is that same base with the adapters off (no second copy).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Optional

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from e2v import registry
from e2v.lora import LoRAOptions, adapters_disabled
from e2v.modules.flow import TIMESTEP_SCALE, expand_like, noisy_latents, shift_time
from e2v.modules.solvers import fixed_sigmas, flow_sigmas
from e2v.modules.weights import CheckpointError, load_checkpoint
from e2v.pipeline.sampling import SamplingSettings
from e2v.specs import DiTSpec, FamilySpec, ImageEncoderSpec, LayoutSpec, TextEncoderSpec, VAESpec
from e2v.tasks.e2v_diffusion import FROZEN, E2VDiffusion
from e2v.tasks.frozen import build_frozen
from e2v.tasks.optim import configure_optimization
from e2v.tasks.sharding import FSDPOptions, shard_dit

COMPONENTS = ("family", "dit", "vae", "text_encoder", "image_encoder", "layout")


def student_timesteps(timesteps: list[float], shift: float) -> list[float]:
    """DiT timesteps ``1000 * shift(t / 1000)`` of the student's nominal ``timesteps`` (shift 1: unchanged)."""
    t = torch.tensor([float(x) for x in timesteps], dtype=torch.float64) / TIMESTEP_SCALE
    return (shift_time(t, shift) * TIMESTEP_SCALE).tolist()


def dit_weights(path: str, what: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(hyper_parameters, DiT state without "dit.")`` of an E2VDiffusion checkpoint, its EMA weights when present."""
    from e2v.pipeline.pipeline import _ema_weights

    checkpoint = load_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or "dit" not in hparams or "state_dict" not in checkpoint:
        raise CheckpointError(f"{what} {path} is not an E2VDiffusion checkpoint (no 'hyper_parameters' with a 'dit' "
                              "spec and a 'state_dict')")
    state = {k[len("dit."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("dit.")}
    state.update(_ema_weights(checkpoint))
    return hparams, state


def load_dit_state(dit: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load a full DiT state into ``dit``; CheckpointError naming ``what`` when the names or shapes differ."""
    try:
        result = dit.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch
        raise CheckpointError(f"{what}: DiT weights do not fit: {err}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{what}: DiT weights do not fit: missing {result.missing_keys[:5]}, unexpected "
                              f"{result.unexpected_keys[:5]}")


class Distillation(E2VDiffusion):
    """Shared by ``ode`` and ``dmd``: the frozen teacher, the student's fixed schedule and its sampling settings.

    Args:
        teacher: the teacher's ``E2VDiffusion`` checkpoint (``.ckpt``); its component specs (family, dit, vae,
            encoders, layout) are the student's. None: the teacher is the DiT of ``family`` / ``dit`` as built (e.g.
            the official release weights), which ``lora`` then adapts.
        family, dit, vae, text_encoder, image_encoder, layout: component specs (as ``E2VDiffusion``), used without
            ``teacher`` only.
        timesteps: the student's nominal DiT timesteps, decreasing, before ``shift``.
        shift: the shift applied to ``timesteps`` (LightX2V: 5).
        teacher_guidance: the teacher's text CFG scale (uncond = e2v's null text, same references).
        teacher_steps, teacher_shift: the teacher's Euler schedule (merged with the student's timesteps).
        student: a checkpoint to start the student from (e.g. the ``ode`` run for ``dmd``); default: the teacher.
        lora, optimizer, lr_scheduler, seed, fsdp, max_nonfinite_steps: as ``E2VDiffusion``.
        steps_per_batch (``ode``): how many of the student's steps each batch regresses, drawn at random (None:
            all, stacked along the batch, so activation memory grows with it; 1 for the 14B).
    """

    frozen_parts = FROZEN + ("teacher",)

    def __init__(
        self,
        teacher: str | None = None,
        family: FamilySpec = "tiny",
        dit: DiTSpec | None = None,
        vae: VAESpec | None = None,
        text_encoder: TextEncoderSpec | None = None,
        image_encoder: ImageEncoderSpec | None = None,
        layout: LayoutSpec | None = None,
        timesteps: list[float] = [1000.0, 750.0, 500.0, 250.0],
        shift: float = 5.0,
        teacher_guidance: float = 3.0,
        teacher_steps: int = 20,
        teacher_shift: float = 3.0,
        student: str | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lora: LoRAOptions | None = None,
        seed: int = 0,
        fsdp: FSDPOptions | None = None,
        max_nonfinite_steps: int = 0,
        steps_per_batch: int | None = None,
    ):
        if steps_per_batch is not None and not 1 <= steps_per_batch <= len(timesteps):
            raise ValueError(f"steps_per_batch must be between 1 and the {len(timesteps)} student steps, got "
                             f"{steps_per_batch}")
        specs = dict(family=family, dit=dit, vae=vae, text_encoder=text_encoder, image_encoder=image_encoder,
                     layout=layout)
        teacher_state = None
        if teacher is not None:
            hparams, teacher_state = dit_weights(teacher, "teacher")
            specs = {key: hparams.get(key) for key in COMPONENTS}
            specs["family"] = specs["family"] or "tiny"  # E2VDiffusion's default
        schedule = student_timesteps(timesteps, shift)
        fixed_sigmas(schedule)  # a bad schedule fails here, naming the timesteps
        super().__init__(**specs, text_dropout=0.0, reference_dropout=0.0, optimizer=optimizer,
                         lr_scheduler=lr_scheduler, lora=lora, max_nonfinite_steps=max_nonfinite_steps,
                         sample_solver={"name": "euler", "num_steps": len(schedule), "timesteps": schedule},
                         seed=seed, fsdp=fsdp)
        self.hparams["family"] = specs["family"]  # the teacher's (the parent saved this class's argument)
        self.register_buffer("student_sigmas", fixed_sigmas(schedule), persistent=False)
        self.teacher_sigmas, self.teacher_stops = merged_sigmas(flow_sigmas(teacher_steps, teacher_shift),
                                                                self.student_sigmas)
        if self.lora is not None:
            if teacher_state is not None:
                raise ValueError("a LoRA student adapts the DiT as built from its spec (e.g. the release weights): "
                                 "give family/dit instead of a teacher checkpoint")
            self.teacher = None  # the student's frozen base with the adapters off
        else:
            self.teacher = build_frozen("dit", self.hparams["dit"])
            if teacher_state is not None:
                load_dit_state(self.teacher, teacher_state, f"teacher {teacher}")
            self.dit.load_state_dict(self.teacher.state_dict())
        if student is not None:
            load_dit_state(self.dit, dit_weights(student, "student")[1], f"student {student}")

    # ------------------------------------------------------------------------------------------------ the models
    def teacher_context(self):
        """The teacher for a block: the frozen DiT, or the LoRA student with its adapters off."""
        return adapters_disabled(self.dit) if self.teacher is None else nullcontext(self.teacher)

    def guided_velocity(self, dit: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, inputs: dict[str, Any],
                        guidance: float) -> torch.Tensor:
        """Text-CFG velocity ``[B,16,T,h,w]`` of ``dit`` at flow times ``t [B]``: conditional and null-text branches
        in one batched forward (guidance 1: the conditional branch alone)."""
        condition, text, image = inputs["condition"], inputs["text"], inputs["image"]
        if guidance == 1:
            return self.predict_velocity(x, t, condition, text, image, dit).float()
        both = lambda a: None if a is None else torch.cat([a, a])  # noqa: E731
        out = self.predict_velocity(both(x), both(t), both(condition), torch.cat([text, torch.zeros_like(text)]),
                                    both(image), dit).float()
        full, textless = out.chunk(2)
        return textless + guidance * (full - textless)

    def student_velocity(self, x: torch.Tensor, index: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """The student's velocity at its schedule points ``student_sigmas[index]`` (``index [B]``), no guidance."""
        t = self.student_sigmas[index]
        return self.predict_velocity(x, t, inputs["condition"], inputs["text"], inputs["image"]).float()

    @torch.no_grad()
    def teacher_trajectory(self, inputs: dict[str, Any], noise: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's Euler/CFG latents at each student sigma, from ``noise`` (the first) to data (the last):
        ``len(timesteps) + 1`` tensors ``[B,16,T,h,w]``."""
        states, x = [noise.float()], noise.float()
        sigmas = self.teacher_sigmas.tolist()
        with self.teacher_context() as teacher:
            for j, (now, nxt) in enumerate(zip(sigmas[:-1], sigmas[1:]), start=1):
                t = torch.full((x.shape[0],), now, device=x.device)
                x = x + (nxt - now) * self.guided_velocity(teacher, x, t, inputs, self.hparams.teacher_guidance)
                if j in self.teacher_stops:
                    states.append(x)
        return states

    # -------------------------------------------------------------------------------------------------- sampling
    def sampling_settings(self) -> SamplingSettings:
        """The run's settings with the student's schedule: Euler at its fixed timesteps, guidance 1, no image
        guidance."""
        timesteps = tuple((self.student_sigmas[:-1] * TIMESTEP_SCALE).tolist())
        return SamplingSettings(**{**super().sampling_settings().to_dict(), "solver": "euler",
                                   "steps": len(timesteps), "guidance": 1.0, "image_guidance": None,
                                   "timesteps": timesteps})

    def generate_samples(self, batch: dict[str, Any], steps: int = 0, guidance: float = 1.0,
                         seed: int = 0, image_guidance: Optional[float] = None) -> dict[str, Any]:
        """Sample videos the way the student is used: its own steps, no guidance (the callback's are ignored)."""
        return super().generate_samples(batch, steps=len(self.student_sigmas) - 1, guidance=1.0, seed=seed)

    def configure_model(self) -> None:
        """FSDP2 as ``E2VDiffusion``, the teacher (and the critic) sharded like the student."""
        super().configure_model()
        if self.device_mesh is not None:
            for dit in self.other_dits():
                shard_dit(dit, self.device_mesh["data_parallel"], self.sharding)

    def other_dits(self) -> list[torch.nn.Module]:
        return [self.teacher] if self.teacher is not None else []


def merged_sigmas(teacher: torch.Tensor, student: torch.Tensor) -> tuple[torch.Tensor, set[int]]:
    """The teacher's noise levels with the student's inserted (``[K]``, decreasing, from the student's first level
    to 0; levels closer than 1e-4 to a student level dropped), and the indices in it of the student's levels after
    the first: the teacher's trajectory passes through every student point."""
    students = student.tolist()
    levels = [s for s in teacher.tolist() if s < students[0] and min(abs(s - x) for x in students) > 1e-4]
    merged = torch.tensor(sorted(levels + students, reverse=True), dtype=torch.float32)
    stops = {int((merged - s).abs().argmin()) for s in students[1:]}
    return merged, stops


class ODEDistillation(Distillation):
    """``ode``: the student's velocity at each of its timesteps regresses the teacher's secant
    ``(x_next - x) / (sigma_next - sigma)`` along the teacher's CFG trajectory from the same noise (see the module
    docstring). Loss ``train/loss``: the mean over the student's steps."""

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        unreadable = self.ranks_with("video" not in batch and "latents" not in batch)
        if unreadable:
            return self.skip_step(f"rank(s) {unreadable} had no readable sample in their batch", batch)
        inputs = self.encode_batch(batch)
        x0 = inputs["x0"]
        noise = torch.randn(x0.shape, generator=self.step_generator(stream=1), device=self.device, dtype=torch.float32)
        states = self.teacher_trajectory(inputs, noise)
        b, sigmas = x0.shape[0], self.student_sigmas
        chosen = torch.arange(len(states) - 1)
        if self.hparams.steps_per_batch is not None:
            order = torch.randperm(len(chosen), generator=self.step_generator(stream=0, device="cpu"))
            chosen = order[: self.hparams.steps_per_batch].sort().values
        index = chosen.to(x0.device).repeat_interleave(b)
        delta = expand_like((sigmas[1:] - sigmas[:-1])[index], x0).float()
        starts = torch.cat([states[i] for i in chosen.tolist()])
        target = (torch.cat([states[i + 1] for i in chosen.tolist()]) - starts) / delta
        repeated = {key: value.repeat(len(chosen), *[1] * (value.dim() - 1)) if isinstance(value, torch.Tensor)
                    else value for key, value in inputs.items()}
        pred = self.student_velocity(starts, index, repeated)
        loss = self.weighted_mse(pred, target, inputs["num_refs"]).mean()
        nonfinite = self.ranks_with(~torch.isfinite(loss.detach()))
        if nonfinite:
            return self.handle_nonfinite(loss, batch, nonfinite)
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        return loss


class DMDDistillation(Distillation):
    """``dmd``: distribution matching distillation (DMD2 without the GAN term), manual optimisation.

    Each batch: the student generates ``x0`` from noise, running its first ``k`` steps without gradients and the
    ``k``-th with them (``k`` drawn per batch: backward simulation); the critic (fake score) takes one flow-loss step
    on that ``x0`` (detached); every ``critic_steps``-th batch the student first takes one step on
    ``0.5 |x0 - sg(x0 - g)|^2`` with ``g = (x0_fake - x0_real) / mean|x0 - x0_real|`` at a random flow time (the
    real score: the teacher with ``teacher_guidance``). ``global_step`` counts every optimizer step (critic and
    student), so the student steps at global steps divisible by ``critic_steps + 1``.

    Args (beyond :class:`Distillation`):
        critic_optimizer: the critic's optimizer (default: the student's ``optimizer``).
        critic_steps: critic updates per student update (DMD2 / LightX2V: 5).
        gradient_clip: max gradient norm of both updates (manual optimisation clips here, not in the trainer).
        min_time, max_time: the range of the flow times the scores are evaluated at.
    """

    unsaved_arguments = ("optimizer", "lr_scheduler", "critic_optimizer")

    def __init__(
        self,
        critic_optimizer: OptimizerCallable | None = None,
        critic_steps: int = 5,
        gradient_clip: float | None = 1.0,
        min_time: float = 0.02,
        max_time: float = 0.98,
        **kwargs: Any,
    ):
        """``kwargs``: the arguments of :class:`Distillation` (recipes set them as for ``ode``)."""
        if kwargs.get("lora") is not None:
            raise ValueError("dmd trains a full fake-score DiT beside the student: a LoRA student is distilled with "
                             "the ode task (recipes/a2-14b-distill-lora.yaml)")
        if kwargs.get("steps_per_batch") is not None:
            raise ValueError("dmd: steps_per_batch is an ode setting (the student generates with all its steps)")
        if critic_steps < 1 or not 0 <= min_time < max_time <= 1:
            raise ValueError(f"dmd: need critic_steps >= 1 and 0 <= min_time < max_time <= 1, got {critic_steps}, "
                             f"{min_time}, {max_time}")
        super().__init__(**kwargs)
        optimizer = kwargs.get("optimizer", torch.optim.AdamW)
        self.critic_optimizer_factory = critic_optimizer or optimizer
        self.automatic_optimization = False
        self.critic = registry.build("dit", self.hparams["dit"])  # the fake score, trained, from the teacher
        self.critic.load_state_dict(self.teacher.state_dict())

    def other_dits(self) -> list[torch.nn.Module]:
        return super().other_dits() + [self.critic]

    def configure_optimizers(self) -> Any:
        student = configure_optimization(self.dit.parameters(), self.optimizer_factory, self.lr_scheduler_factory,
                                         self._trainer.max_steps if self._trainer is not None else None)
        critic = configure_optimization(self.critic.parameters(), self.critic_optimizer_factory, None)
        return [student["optimizer"] if isinstance(student, dict) else student, critic], (
            [student["lr_scheduler"]] if isinstance(student, dict) else [])

    def student_due(self) -> bool:
        """Whether this batch updates the student (see the class docstring)."""
        return self.global_step % (self.hparams.critic_steps + 1) == 0

    def generate(self, inputs: dict[str, Any], noise: torch.Tensor, last: int) -> torch.Tensor:
        """The student's ``x0 [B,16,T,h,w]`` from ``noise``: Euler steps ``0 .. last - 1`` without gradients, then
        the data prediction at step ``last`` with them."""
        x, sigmas, b = noise.float(), self.student_sigmas, noise.shape[0]
        with torch.no_grad():
            for i in range(last):
                index = torch.full((b,), i, device=x.device, dtype=torch.long)
                x = x + (sigmas[i + 1] - sigmas[i]) * self.student_velocity(x, index, inputs)
        index = torch.full((b,), last, device=x.device, dtype=torch.long)
        return x - sigmas[last] * self.student_velocity(x, index, inputs)

    def distribution_matching_loss(self, x0: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """DMD's generator loss ``[]`` for student samples ``x0`` (with gradients)."""
        b = x0.shape[0]
        lo, hi = self.hparams.min_time, self.hparams.max_time
        t = lo + (hi - lo) * torch.rand(b, generator=self.step_generator(stream=3, device="cpu")).to(self.device)
        noise = torch.randn(x0.shape, generator=self.step_generator(stream=4), device=self.device)
        with torch.no_grad():
            x_t = noisy_latents(x0.detach(), noise, t)
            with self.teacher_context() as teacher:
                real = x_t - expand_like(t, x_t) * self.guided_velocity(teacher, x_t, t, inputs,
                                                                         self.hparams.teacher_guidance)
            fake = x_t - expand_like(t, x_t) * self.guided_velocity(self.critic, x_t, t, inputs, 1.0)
            scale = (x0.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
            target = x0.detach() - (fake - real) / scale
        return 0.5 * self.weighted_mse(x0, target, inputs["num_refs"]).mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if "video" not in batch and "latents" not in batch:
            return None
        student_opt, critic_opt = self.optimizers()
        inputs = self.encode_batch(batch)
        x0_shape = inputs["x0"].shape
        noise = torch.randn(x0_shape, generator=self.step_generator(stream=1), device=self.device)
        steps = len(self.student_sigmas) - 1
        last = int(torch.randint(steps, (1,), generator=self.step_generator(stream=0, device="cpu")))
        if self.student_due():
            x0 = self.generate(inputs, noise, last)
            loss = self.distribution_matching_loss(x0, inputs)
            self.manual_step(student_opt, loss)
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()
            self.log("train/generator_loss", loss.detach(), prog_bar=True, batch_size=x0_shape[0])
            fake_data = x0.detach()
        else:
            with torch.no_grad():
                fake_data = self.generate(inputs, noise, last)
        critic_inputs = {**inputs, "x0": fake_data}
        t = self.timestep_sampler(x0_shape[0], generator=self.step_generator(stream=5, device="cpu")).to(self.device)
        critic_noise = torch.randn(x0_shape, generator=self.step_generator(stream=6), device=self.device)
        critic_loss = self.flow_loss(critic_inputs, t, critic_noise, self.critic).mean()
        self.manual_step(critic_opt, critic_loss)
        self.log("train/critic_loss", critic_loss.detach(), prog_bar=True, batch_size=x0_shape[0])
        self.log("train/loss", critic_loss.detach(), batch_size=x0_shape[0])
        return None

    def manual_step(self, optimizer: Any, loss: torch.Tensor) -> None:
        """One update of ``optimizer``'s parameters from ``loss``; a non-finite loss stops the run (naming the
        step)."""
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"dmd: non-finite loss {loss.item()} at global step {self.global_step}")
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.hparams.gradient_clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.gradient_clip,
                                gradient_clip_algorithm="norm")
        optimizer.step()
