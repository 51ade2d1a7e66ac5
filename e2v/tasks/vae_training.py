"""``VAETraining``: trains or fine-tunes the Wan VAE (reconstruction + KL, optional perceptual term)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from e2v import registry
from e2v.specs import FeatureNetSpec, VAESpec
from e2v.callbacks.samples import enlarged, evenly_spaced_frames
from e2v.datamodules.video_io import save_image
from e2v.loggers import mlflow_logger, run_dir
from e2v.tasks.optim import configure_optimization
from e2v.tasks.frozen import build_frozen


ENCODER_PREFIXES = ("encoder.", "quant_conv.")  # what maps pixels to latents, in both VAE families


class VAETraining(LightningModule):
    """Loss = ``l1_weight`` L1 + ``mse_weight`` MSE reconstruction of ``batch["video"] [B,3,F,H,W]`` + ``kl_weight`` KL + ``perceptual_weight`` LPIPS-like.

    Each validation writes ``<run folder>/reconstructions/step_<k>.png`` (per clip: a truth row above a
    reconstruction row, ``preview_frames`` evenly spaced frames, enlarged) and logs it to MLflow.

    When ``export_dir`` is set, the trained VAE is written there at the end of fit as a diffusers-layout folder
    (``config.json`` + safetensors), which the E2V recipe loads with ``vae: {name: wan, weights: <export_dir>}``.
    Before export, the config's ``latents_mean`` / ``latents_std`` are measured per channel on up to
    ``latent_stats_batches`` training batches, so normalised latents have unit scale for the DiT (as the official
    config's values do for the official VAE).
    """

    def __init__(
        self,
        vae: VAESpec = {"name": "wan", "preset": "tiny"},
        kl_weight: float = 1e-6,
        l1_weight: float = 1.0,
        mse_weight: float = 1.0,
        perceptual: FeatureNetSpec | None = None,
        perceptual_weight: float = 0.0,
        perceptual_frames: int = 2,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        export_dir: str | None = None,
        latent_stats_batches: int = 16,
        seed: int = 0,
        preview_clips: int = 4,
        preview_frames: int = 5,
        decoder_only: bool = False,
    ):
        """``decoder_only``: fine-tune the decoder of a loaded VAE and keep its encoder and latent statistics as they
        are, so its latents, and every DiT or cache made on them, stay valid (as Stable Diffusion's ft-MSE decoder)."""
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.vae = registry.build("vae", vae)
        if decoder_only:
            for name, parameter in self.vae.named_parameters():
                if name.startswith(ENCODER_PREFIXES):
                    parameter.requires_grad_(False)
        self.perceptual = build_frozen("feature_net", perceptual)
        self._preview: list[torch.Tensor] = []

    def reconstruct(self, video: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``video [B,3,F,H,W]`` -> (reconstruction, posterior mean, log-variance)."""
        mean, logvar = self.vae.encode_distribution(video)
        z = mean
        if sample:
            gen = torch.Generator(device=self.device).manual_seed(self.hparams.seed * 1_000_003 + self.global_step)
            z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=gen, device=self.device, dtype=mean.dtype)
        return self.vae.decode(z, clamp=False), mean, logvar  # unclamped: gradients flow everywhere

    def losses(self, video: torch.Tensor, sample: bool, reconstruction: tuple | None = None) -> dict[str, torch.Tensor]:
        recon, mean, logvar = reconstruction or self.reconstruct(video, sample)
        out = {
            "l1": F.l1_loss(recon, video),
            "mse": F.mse_loss(recon, video),
            "kl": 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean(),
        }
        hp = self.hparams
        loss = hp.l1_weight * out["l1"] + hp.mse_weight * out["mse"] + hp.kl_weight * out["kl"]
        if self.perceptual is not None and self.hparams.perceptual_weight > 0:
            frames = torch.linspace(0, video.shape[2] - 1, self.hparams.perceptual_frames).long().tolist()
            out["perceptual"] = self.perceptual(recon[:, :, frames].transpose(1, 2).flatten(0, 1),
                                                video[:, :, frames].transpose(1, 2).flatten(0, 1))
            loss = loss + self.hparams.perceptual_weight * out["perceptual"]
        out["loss"] = loss
        out["psnr"] = 10 * torch.log10(4.0 / out["mse"].detach().clamp_min(1e-10))
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.losses(batch["video"], sample=True)
        if not torch.isfinite(out["loss"]):
            raise FloatingPointError(f"non-finite VAE loss at step {self.global_step} (batch ids: {batch.get('id')})")
        loss = out.pop("loss")
        self.log_dict({f"train/{k}": v for k, v in out.items()}, batch_size=batch["video"].shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["video"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        video = batch["video"]
        recon, mean, logvar = self.reconstruct(video, sample=False)
        out = self.losses(video, sample=False, reconstruction=(recon, mean, logvar))
        self.log_dict({f"val/{k}": v for k, v in out.items()}, prog_bar=True, batch_size=video.shape[0])
        room = self.hparams.preview_clips - len(self._preview)
        for truth, clip in list(zip(video, recon.clamp(-1, 1)))[: max(0, room)]:
            rows = [torch.cat(evenly_spaced_frames(x, self.hparams.preview_frames), dim=-1) for x in (truth, clip)]
            self._preview.append(torch.cat(rows, dim=-2).float().cpu())

    def on_validation_epoch_start(self) -> None:
        self._preview = []

    def on_validation_epoch_end(self) -> None:
        if not self._preview or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        gap = torch.ones(3, 2, self._preview[0].shape[-1])
        image = torch.cat([t for clip in self._preview for t in (clip, gap)][:-1], dim=-2)
        path = run_dir(self.trainer) / "reconstructions" / f"step_{self.global_step}.png"
        save_image(path, enlarged(image, 512))
        logger = mlflow_logger(self.trainer)
        if logger is not None:
            logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="reconstructions")

    def configure_optimizers(self) -> Any:
        trainable = [p for p in self.vae.parameters() if p.requires_grad]
        return configure_optimization(trainable, self.optimizer_factory, self.lr_scheduler_factory,
                                      self._trainer.max_steps if self._trainer is not None else None)

    @torch.no_grad()
    def measure_latent_statistics(self) -> None:
        """Set ``latents_mean`` / ``latents_std`` of the VAE config from the posterior means of training batches."""
        loader = self.trainer.datamodule.train_dataloader()
        total, total_sq, count = 0.0, 0.0, 0
        self.vae.eval()
        for i, batch in enumerate(loader):
            if i >= self.hparams.latent_stats_batches:
                break
            if "video" not in batch:  # every sample of the batch was unreadable
                continue
            mean = self.vae.encode(batch["video"].to(self.device)).double().transpose(0, 1).flatten(1)  # [16, n]
            total, total_sq, count = total + mean.sum(1), total_sq + mean.pow(2).sum(1), count + mean.shape[1]
        if count:
            channel_mean = total / count
            channel_std = (total_sq / count - channel_mean.pow(2)).clamp_min(1e-12).sqrt()
            self.vae.config.latents_mean = channel_mean.tolist()
            self.vae.config.latents_std = channel_std.tolist()

    def on_fit_end(self) -> None:
        if self.hparams.export_dir:
            if not self.hparams.decoder_only:  # a kept encoder keeps its statistics
                self.measure_latent_statistics()
            if self.trainer.is_global_zero:
                self.vae.save_pretrained(Path(self.hparams.export_dir))
