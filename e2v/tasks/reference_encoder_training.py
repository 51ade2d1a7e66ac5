"""Contrastive training of a reference encoder on pairs of views of the same element (symmetric InfoNCE).

Batches come from :class:`e2v.datamodules.element_views.ElementViewsDataModule`:
``{"views": [B, 2, 3, S, S] in [-1, 1], "label": [B] element ids, "name": list[str], "kind": list[str]}``.
The two views of an element are positives; the other elements of the batch are negatives (a repeated element in
the batch is masked out rather than counted as a negative). Validation matches view 0 against view 1 of held-out
elements and logs retrieval ``val/top1``, ``val/top5`` and their chance levels to the trainer's logger.

The trained encoder is used by an E2V recipe by name + checkpoint, e.g. ``{"name": "e2v_vit", "checkpoint":
"runs/tiny/refenc/checkpoints/last.ckpt"}`` (the checkpoint stores the encoder config), or from ``export_dir`` (a
weights folder written when training ends).
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import asdict, is_dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from e2v import registry
from e2v.specs import ImageEncoderSpec
from e2v.modules.reference_vit import ENCODER_CONFIG_KEY


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between paired embeddings ``a, b [B, E]`` (L2-normalised): row i of ``a`` matches row i of ``b``.

    ``labels [B]``: pairs sharing a label with the positive (other than itself) are dropped from the negatives.
    """
    logits = a @ b.T / temperature
    if labels is not None:
        same = labels[:, None] == labels[None, :]
        logits = logits.masked_fill(same & ~torch.eye(len(labels), dtype=torch.bool, device=same.device), -math.inf)
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def retrieval_metrics(queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k retrieval of ``keys [M, E]`` by ``queries [M, E]`` (row i of both has element ``labels[i]``).

    A query scores at k when a key of its element is among its k most similar keys. Also returns each chance level:
    the expected top-k of a random ranking, ``1 - C(M - m, k) / C(M, k)`` with ``m`` keys of the query's element.
    """
    similarity = queries.float() @ keys.float().T
    ranked = labels[similarity.argsort(dim=1, descending=True)]
    hits = ranked == labels[:, None]
    matching = (labels[:, None] == labels[None, :]).sum(1).tolist()
    total = len(labels)
    metrics = {}
    for k in ks:
        metrics[f"top{k}"] = hits[:, :k].any(1).float().mean().item()
        metrics[f"chance_top{k}"] = sum(1 - math.comb(total - m, k) / math.comb(total, k) for m in matching) / total
    return metrics


def name_words(name: str) -> list[str]:
    """Lower-case words of an element name (``"red_ball"`` -> ``["red", "ball"]``)."""
    return re.findall(r"[a-z0-9]+", name.lower()) or [name.lower()]


class BagOfWords(nn.Module):
    """Hashed bag-of-words text embedding: ``names (list[str]) -> [B, dim]`` L2-normalised mean of word vectors."""

    def __init__(self, buckets: int, dim: int) -> None:
        super().__init__()
        self.buckets = buckets
        self.embedding = nn.EmbeddingBag(buckets, dim, mode="mean")

    def forward(self, names: list[str]) -> torch.Tensor:
        words = [[zlib.crc32(w.encode()) % self.buckets for w in name_words(n)] for n in names]
        device = self.embedding.weight.device
        ids = torch.tensor([i for ws in words for i in ws], device=device)
        offsets = torch.tensor([0] + [len(ws) for ws in words[:-1]], device=device).cumsum(0)
        return F.normalize(self.embedding(ids, offsets), dim=-1)


class ReferenceEncoderTraining(L.LightningModule):
    """Trains an ``image_encoder`` (registry spec) with symmetric InfoNCE on two views per element.

    Args:
        encoder: registry spec of the encoder, e.g. ``{"name": "e2v_vit", "width": 128}``; it needs ``pooled()``.
        temperature: InfoNCE softmax temperature.
        optimizer: optimizer factory over the trainable parameters (recipe: ``class_path`` + ``init_args``).
        warmup_steps: linear learning-rate warmup; then cosine decay to 10% at the trainer's last step.
        text_alignment: weight of an extra InfoNCE between the mean image embedding of an element and a hashed
            bag-of-words embedding of its name (0 disables it).
        text_buckets: hash buckets of the bag-of-words embedding.
        export_dir: when set, the trained encoder is written there (``save_pretrained``) at the end of training.
    """

    def __init__(
        self,
        encoder: ImageEncoderSpec = "e2v_vit",
        temperature: float = 0.1,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_steps: int = 0,
        text_alignment: float = 0.0,
        text_buckets: int = 4096,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.encoder = registry.build("image_encoder", encoder)
        if not hasattr(self.encoder, "pooled"):
            raise TypeError(f"image_encoder {encoder!r} has no pooled(images) method to train contrastively")
        self.temperature = temperature
        self.optimizer_factory = optimizer
        self.warmup_steps = warmup_steps
        self.text_alignment = text_alignment
        self.export_dir = export_dir
        embed_dim = getattr(self.encoder, "embed_dim", self.encoder.dim)
        self.text_embedding = BagOfWords(text_buckets, embed_dim) if text_alignment > 0 else None
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def embed(self, views: torch.Tensor) -> torch.Tensor:
        """``views [B, V, 3, S, S]`` -> L2-normalised ``[B, V, E]``."""
        return F.normalize(self.encoder.pooled(views).float(), dim=-1)

    def loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        embeddings = self.embed(batch["views"])
        labels = batch["label"]
        losses = {"contrastive": info_nce(embeddings[:, 0], embeddings[:, 1], self.temperature, labels)}
        if self.text_embedding is not None:
            image = F.normalize(embeddings.mean(1), dim=-1)
            losses["text"] = info_nce(image, self.text_embedding(batch["name"]), self.temperature, labels)
        losses["loss"] = losses["contrastive"] + self.text_alignment * losses.get("text", 0.0)
        return losses

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.loss(batch)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=len(batch["label"]))
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        embeddings = self.embed(batch["views"])
        self._val_outputs.append((embeddings[:, 0], embeddings[:, 1], batch["label"]))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        queries, keys, labels = (torch.cat(parts) for parts in zip(*self._val_outputs))
        self._val_outputs.clear()
        metrics = retrieval_metrics(queries, keys, labels)
        metrics["loss"] = info_nce(queries, keys, self.temperature, labels).item()
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        total = max(1, self.trainer.estimated_stepping_batches if self._trainer is not None else 1)

        def scale(step: int) -> float:
            if step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
            progress = min(1.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, scale)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the encoder's full config so ``e2v_vit`` can rebuild it from the checkpoint alone."""
        config = getattr(self.encoder, "config", None)
        if is_dataclass(config):
            checkpoint[ENCODER_CONFIG_KEY] = asdict(config)

    @rank_zero_only
    def on_train_end(self) -> None:
        if self.export_dir is not None:
            self.encoder.save_pretrained(self.export_dir)
