"""Sample videos during training: fixed validation triplets -> mp4 + preview PNG, logged to MLflow.

Files go to ``<run folder>/samples/step_<k>/sample_<i>.{mp4,png,txt}`` (the run folder is
:func:`e2v.loggers.run_dir`). The preview strip shows the references on the left beside evenly spaced generated
frames, with the ground-truth frames in a second row when the batch has a ``"video"``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import move_data_to_device, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden

from e2v.callbacks.ema import EMA
from e2v.callbacks.throughput import batch_size
from e2v.datamodules.video_io import save_image, write_video
from e2v.loggers import mlflow_logger, run_dir, write_text_atomic


def take_items(batch: dict[str, Any], count: int) -> dict[str, Any]:
    """The first ``count`` items of a collated batch (tensors and lists are cut along the batch axis)."""
    return {key: value[:count] if isinstance(value, (torch.Tensor, list, tuple)) else value
            for key, value in batch.items()}


def evenly_spaced_frames(clip: torch.Tensor, count: int) -> list[torch.Tensor]:
    """``count`` evenly spaced frames ``[3, H, W]`` of ``clip [3, F, H, W]`` (first and last included)."""
    index = torch.linspace(0, clip.shape[1] - 1, count).round().long()
    return list(clip[:, index].permute(1, 0, 2, 3))


def preview_strip(refs: torch.Tensor, video: torch.Tensor, truth: torch.Tensor | None = None,
                  num_frames: int = 4) -> torch.Tensor:
    """One preview image ``[3, rows*H, (N+num_frames)*W]`` in [-1, 1].

    ``refs``: ``[N, 3, Hr, Wr]``; ``video`` / ``truth``: ``[3, F, H, W]``. Row 1: references then ``num_frames``
    evenly spaced generated frames; row 2 (with ``truth``): white under the references, then ground-truth frames.
    Every tile is resized to the generated frame size ``H x W``.
    """
    height, width = video.shape[-2:]

    def row(tiles: list[torch.Tensor]) -> torch.Tensor:
        tiles = [F.interpolate(t[None].float(), size=(height, width), mode="bilinear", antialias=True,
                               align_corners=False)[0] if t.shape[-2:] != (height, width) else t.float()
                 for t in tiles]
        return torch.cat(tiles, dim=-1)

    refs = list(refs.cpu())
    rows = [row(refs + evenly_spaced_frames(video.cpu(), num_frames))]
    if truth is not None:
        blank = [torch.ones(3, height, width) for _ in refs]
        rows.append(row(blank + evenly_spaced_frames(truth.cpu(), num_frames)))
    return torch.cat(rows, dim=-2).clamp(-1, 1)


def enlarged(image: torch.Tensor, min_height: int = 256) -> torch.Tensor:
    """``[3, H, W]`` scaled up by the smallest whole factor giving ``>= min_height`` rows (nearest: crisp pixels),
    so a strip of 32 px frames is readable in the MLflow UI."""
    factor = max(1, -(-min_height // image.shape[-2]))
    return image.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1) if factor > 1 else image


class SampleVideos(Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end of fit) generate videos for fixed validation
    triplets with ``pl_module.generate_samples(batch, steps=, guidance=, seed=)`` (and ``image_guidance=``, the
    reference scale of dual guidance, when it is set), write them and log them.

    The triplets are the first ``num_samples`` items of the datamodule's validation dataloader, taken once at fit
    start; without validation data (e.g. ``val_manifest: null``) the callback warns once and writes no samples. Generation runs on every rank (a sharded model needs all ranks for a forward pass), in eval mode
    without gradients and with the EMA weights when an :class:`EMA` callback is present; rank 0 writes the files.
    ``generate_samples`` returns ``{"video": [B,3,F,H,W], "refs": [B,N,3,H,W], "caption": list[str]}`` in [-1, 1].
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        num_samples: int = 2,
        steps: int = 30,
        guidance: float = 5.0,
        image_guidance: Optional[float] = None,
        seed: int = 0,
        fps: float = 8,
        at_fit_end: bool = True,
        preview_frames: int = 4,
    ) -> None:
        if every_n_steps < 1 or num_samples < 1 or preview_frames < 1:
            raise ValueError("SampleVideos: every_n_steps, num_samples and preview_frames must be >= 1, got "
                             f"{every_n_steps}, {num_samples}, {preview_frames}")
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.steps = steps
        self.guidance = guidance
        self.image_guidance = image_guidance
        self.seed = seed
        self.fps = fps
        self.at_fit_end = at_fit_end
        self.preview_frames = preview_frames
        self.batches: list[dict[str, Any]] = []
        self._last_step = -1

    def sampling_options(self) -> dict[str, Any]:
        """The sampling settings these samples use (saved with the run's checkpoints as generate's defaults)."""
        return {"steps": self.steps, "guidance": float(self.guidance), "fps": float(self.fps),
                "image_guidance": None if self.image_guidance is None else float(self.image_guidance)}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.batches = self._fixed_batches(trainer)
        self._last_step = trainer.global_step

    def _fixed_batches(self, trainer: pl.Trainer) -> list[dict[str, Any]]:
        """The first ``num_samples`` validation items, as batches (a batch never mixes buckets); [] without any."""
        loader = trainer.val_dataloaders
        if trainer.datamodule is not None and is_overridden("val_dataloader", trainer.datamodule):
            loader = trainer.datamodule.val_dataloader()
        if isinstance(loader, (list, tuple)):
            loader = loader[0] if loader else None
        batches, count = [], 0
        for batch in loader if loader is not None else ():
            batch = take_items(batch, self.num_samples - count)
            batches.append(batch)
            count += batch_size(batch)
            if count >= self.num_samples:
                break
        if not batches:
            rank_zero_warn("SampleVideos: no validation data (e.g. val_manifest: null), so no sample videos are "
                           "written; give the datamodule a val_manifest to get them")
        return batches

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step != self._last_step and step % self.every_n_steps == 0:
            self.sample(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_fit_end and trainer.global_step != self._last_step:
            self.sample(trainer, pl_module)

    @torch.no_grad()
    def sample(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Generate, write and log the samples of the current step."""
        step = self._last_step = trainer.global_step
        if not self.batches:
            return
        ema = EMA.find(trainer)
        was_training = pl_module.training
        pl_module.eval()
        # a module whose generate_samples takes no image_guidance still works while it is off
        guided = {} if self.image_guidance is None else {"image_guidance": self.image_guidance}
        try:
            results = []
            for batch in self.batches:
                device_batch = move_data_to_device(batch, pl_module.device)
                with ema.swapped(pl_module) if ema is not None else nullcontext():
                    out = pl_module.generate_samples(device_batch, steps=self.steps, guidance=self.guidance,
                                                     seed=self.seed, **guided)
                results.append((batch, out))
        finally:
            pl_module.train(was_training)
        if trainer.is_global_zero:
            self._write(trainer, step, results)

    def _write(self, trainer: pl.Trainer, step: int, results: list[tuple[dict, dict]]) -> None:
        folder = run_dir(trainer) / "samples" / f"step_{step}"
        index = 0
        for batch, out in results:
            truth = batch.get("video")
            for i in range(out["video"].shape[0]):
                name = folder / f"sample_{index}"
                write_video(name.with_suffix(".mp4"), out["video"][i].float().cpu(), fps=self.fps)
                strip = preview_strip(out["refs"][i], out["video"][i], None if truth is None else truth[i],
                                      self.preview_frames)
                save_image(name.with_suffix(".png"), enlarged(strip))
                write_text_atomic(name.with_suffix(".txt"), out["caption"][i] + "\n")
                index += 1
        logger = mlflow_logger(trainer)
        if logger is not None:
            logger.experiment.log_artifacts(logger.run_id, str(folder), artifact_path=f"samples/step_{step}")
