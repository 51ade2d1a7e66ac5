"""``TripletDataModule``: (caption, references, video) batches in resolution buckets, resumable, robust to bad data.

The datamodule pre-checks the manifest (parse, probe videos, stat references), counts every skip by reason
(``skip_counts``), stops when the bad fraction passes ``max_skip_fraction``, checkpoints its data position, and in
cached mode reads (and first builds) the latent cache of :mod:`e2v.datamodules.cache` instead of decoding videos.
Its parts, one file each:

- :mod:`e2v.datamodules.samples`: :class:`TripletDataset` decodes one sample or returns a :class:`Skipped` marker;
  bucket assignment.
- :mod:`e2v.datamodules.sampler`: :class:`BucketBatchSampler` groups samples by bucket key ``(F, H, W, N)`` so
  tensors are dense; its plan is a pure function of ``(seed, epoch)`` and it resumes from ``(epoch, batches_done)``.
- :mod:`e2v.datamodules.collate`: :func:`collate` stacks samples and drops skipped ones, listing them under
  ``batch["skipped"]``; every training batch carries ``batch["position"] = (epoch, batches_done)``.

A batch whose samples all failed holds only ``skipped``/``id``/``position``: training steps skip such batches.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Hashable

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from e2v.datamodules.cache import CachedTripletDataset, LatentCache, wait_for_cache
from e2v.datamodules.cache import build_cache as build_latent_cache
from e2v.datamodules.collate import Collate, Keyed
from e2v.datamodules.manifest import DEFAULT_MIN_REFERENCES, RecordError, check_references, check_video, read_manifest
from e2v.datamodules.samples import TripletDataset, assign_bucket, check_buckets, check_reference_counts
from e2v.datamodules.sampler import BucketBatchSampler
from e2v.modules.quantize import move_module

log = logging.getLogger(__name__)


class SkipLimitError(RuntimeError):
    """Raised when the fraction of bad samples passes ``max_skip_fraction``."""


@dataclass
class _Split:
    dataset: Dataset
    buckets: list[Hashable]
    ref_counts: list[int]


class TripletDataModule(L.LightningDataModule):
    """Triplet batches for E2V training (online decoding, or the latent cache when ``cache_dir`` is set).

    Args:
        train_manifest: JSONL manifest of training triplets.
        val_manifest: optional manifest for validation (no shuffling or augmentation).
        frames: frames per clip (4k+1) of the default bucket ``[frames, height, width]``.
        fps: sampling rate of the clips (None = each video's native rate).
        height, width: resolution of the default bucket.
        buckets: ``[[frames, height, width], ...]``; a clip goes to the bucket with the closest aspect ratio
            among those it has enough frames for. Overrides frames/height/width.
        batch_size, num_workers: DataLoader settings (batches never mix buckets nor reference counts).
        image_size: side S of the white-padded squares for the image encoder (``refs_clip``).
        max_references: references used per sample (the first ones of the record).
        min_references: records with fewer references are skipped; the floor of the random count augmentation.
        shuffle_references: present the references in random order (default: on when decoding online, off with
            ``cache_dir``).
        reference_dropout_count: probability that a sample keeps a random count of its references in
            ``[min_references, available]`` for an epoch.
            The latent cache holds each record encoded once, in manifest order with all its references (the A2
            target and condition depend on both), so ``shuffle_references: true`` or ``reference_dropout_count > 0``
            with ``cache_dir`` is refused: decode online to train with them.
        max_skip_fraction: stop with SkipLimitError when the fraction of bad records passes it.
        seed: the data order is a function of (seed, epoch).
        cache_dir: read precomputed latents from this latent cache instead of decoding videos.
        build_cache: with ``cache_dir``, first encode the training manifest there with the LightningModule's own
            VAE / encoders / layout when the cache is missing or partial (the opt-in latent precomputation): on the
            training device, ``cache_batch_size`` clips at a time, each rank encoding its share of the shards.
        drop_last: drop each bucket's last incomplete batch.
    """

    def __init__(
        self,
        train_manifest: str,
        val_manifest: str | None = None,
        frames: int = 17,
        fps: float | None = None,
        height: int = 256,
        width: int = 256,
        buckets: list[list[int]] | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        image_size: int = 224,
        max_references: int = 3,
        min_references: int = DEFAULT_MIN_REFERENCES,
        shuffle_references: bool | None = None,
        reference_dropout_count: float = 0.0,
        max_skip_fraction: float = 0.05,
        seed: int = 0,
        cache_dir: str | None = None,
        build_cache: bool = True,
        drop_last: bool = False,
        cache_batch_size: int = 8,
    ):
        super().__init__()
        self.train_manifest = train_manifest
        self.val_manifest = val_manifest
        self.fps = fps
        self.buckets = check_buckets(buckets if buckets is not None else [[frames, height, width]])
        check_reference_counts(min_references, max_references)
        if cache_dir is not None and (shuffle_references or reference_dropout_count > 0):
            raise ValueError(
                f"TripletDataModule: shuffle_references={shuffle_references} and reference_dropout_count="
                f"{reference_dropout_count} need online decoding, but cache_dir={cache_dir!r} is set: the latent "
                "cache holds each clip encoded once with all its references in manifest order. Set "
                "shuffle_references: false and reference_dropout_count: 0, or drop cache_dir"
            )
        shuffle_references = cache_dir is None if shuffle_references is None else shuffle_references
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.max_references = max_references
        self.min_references = min_references
        self.shuffle_references = shuffle_references
        self.reference_dropout_count = reference_dropout_count
        self.max_skip_fraction = max_skip_fraction
        self.seed = seed
        self.cache_dir = cache_dir
        self.build_cache = build_cache
        self.drop_last = drop_last
        self.cache_batch_size = cache_batch_size
        self.skip_counts: Counter = Counter()
        self._bad_ids: set[str] = set()
        self._num_records = 0
        self._splits: dict[str, _Split] = {}
        self._position = {"epoch": 0, "batches_done": 0}
        self._train_sampler: BucketBatchSampler | None = None

    # ----- skip accounting
    def record_skip(self, record_id: str, reason: str, message: str) -> None:
        """Count one bad sample (once per record for the skip fraction) and stop past ``max_skip_fraction``."""
        self.skip_counts[reason] += 1
        if record_id not in self._bad_ids:
            self._bad_ids.add(record_id)
            log.warning("skipping %s: %s: %s", record_id, reason, message)
        self._check_skip_fraction()

    @property
    def skip_fraction(self) -> float:
        return len(self._bad_ids) / max(1, self._num_records)

    def _check_skip_fraction(self) -> None:
        if self.skip_fraction > self.max_skip_fraction:
            reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.skip_counts.items()))
            raise SkipLimitError(
                f"{len(self._bad_ids)} of {self._num_records} records are bad ({self.skip_fraction:.1%} > "
                f"max_skip_fraction {self.max_skip_fraction:.1%}; {reasons}). Run `e2v data check "
                f"{self.train_manifest}` to list them, fix or drop them, or raise max_skip_fraction."
            )

    # ----- setup
    def _online_split(self, manifest: str, count_skips: bool) -> _Split:
        report = read_manifest(manifest)
        if count_skips:
            self._num_records += report.total
            for bad in report.bad:
                self.record_skip(bad.id or bad.where, bad.reason, f"{bad.where}: {bad.message}")
        records, buckets, ref_counts = [], [], []
        shortest = min(f for f, _, _ in self.buckets)
        for record in report.good:
            try:
                check_references(record, decode=False, min_references=self.min_references)
                info = check_video(record, shortest, self.fps, decode=False)
                bucket = assign_bucket(info, record, self.buckets, self.fps)
            except RecordError as err:
                if count_skips:
                    self.record_skip(record.id, err.reason, f"{manifest}:{record.line}: {err}")
                continue
            records.append(record)
            buckets.append(bucket)
            ref_counts.append(min(len(record.references), self.max_references))
        dataset = TripletDataset(
            records,
            self.buckets,
            self.fps,
            self.image_size,
            self.max_references,
            self.shuffle_references and count_skips,
        )
        if not records:
            raise ValueError(f"{manifest}: no usable records (bad: {dict(report.reasons)}, see `e2v data check`)")
        return _Split(dataset, buckets, ref_counts)

    def _cached_split(self) -> _Split:
        module = self.trainer.lightning_module if self._trainer_attached() else None
        if self.build_cache and module is not None:
            self._build_cache(module)
        cache = LatentCache(self.cache_dir)
        cache.check_settings(
            buckets=[list(b) for b in self.buckets],
            fps=self.fps,
            image_size=self.image_size,
            max_references=self.max_references,
        )
        if module is not None and all(hasattr(module, name) for name in ("vae", "text_encoder", "layout")):
            cache.check_components(module.vae, module.text_encoder, getattr(module, "image_encoder", None), module.layout)
        dataset = CachedTripletDataset(cache)
        self._num_records += len(dataset) + len(cache.skipped)
        for skipped in cache.skipped:
            self.record_skip(skipped["id"] or skipped.get("where", "?"), skipped["reason"], skipped["message"])
        return _Split(dataset, dataset.bucket_keys(), dataset.ref_counts())

    def _build_cache(self, module: L.LightningModule) -> None:
        """Encode the training manifest into ``cache_dir`` with the module's own frozen components (resumes a partial
        cache, leaves a complete one untouched), so recipe and cache can never disagree on them. The components
        visit the training device for it; each rank encodes its share of the shards and waits, polling the folder
        (no collective: no barrier timeout), for rank 0's complete index."""
        components = [getattr(module, name, None) for name in ("vae", "text_encoder", "image_encoder")]
        device = self.trainer.strategy.root_device
        homes = {c: next(c.parameters(), torch.empty(0)).device for c in components if isinstance(c, nn.Module)}
        for component in homes:
            move_module(component, device)
        try:
            build_latent_cache(
                self.train_manifest,
                self.cache_dir,
                *components,
                module.layout,
                self.buckets,
                fps=self.fps,
                image_size=self.image_size,
                max_references=self.max_references,
                min_references=self.min_references,
                device=device,
                batch_size=self.cache_batch_size,
                rank=self.trainer.global_rank,
                world_size=self.trainer.world_size,
            )
        finally:
            for component, home in homes.items():
                move_module(component, home)
        if not self.trainer.is_global_zero:
            wait_for_cache(self.cache_dir)

    def _trainer_attached(self) -> bool:
        try:
            return self.trainer is not None
        except RuntimeError:
            return False

    def setup(self, stage: str | None = None) -> None:
        if "train" not in self._splits:
            self._splits["train"] = (
                self._cached_split() if self.cache_dir else self._online_split(self.train_manifest, count_skips=True)
            )
            self._check_skip_fraction()
        if self.val_manifest and "val" not in self._splits:
            self._splits["val"] = self._online_split(self.val_manifest, count_skips=False)

    # ----- loaders
    def _rank(self) -> tuple[int, int]:
        """This rank's data-parallel index and count (the strategy's sampler coordinates: the ranks of one
        sequence-parallel group share them, so they read the same batches)."""
        if not self._trainer_attached():
            return 0, 1
        coordinates = getattr(self.trainer.strategy, "distributed_sampler_kwargs", None)
        if coordinates:
            return int(coordinates["rank"]), int(coordinates["num_replicas"])
        return self.trainer.global_rank, self.trainer.world_size

    def _loader(self, split: _Split, sampler: BucketBatchSampler, train: bool) -> DataLoader:
        return DataLoader(
            Keyed(split.dataset),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=Collate(tag_position=train),
            persistent_workers=self.num_workers > 0 and train,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        split = self._splits["train"]
        rank, world_size = self._rank()
        self._train_sampler = BucketBatchSampler(
            split.buckets,
            split.ref_counts,
            self.batch_size,
            seed=self.seed,
            shuffle=True,
            drop_last=self.drop_last,
            min_references=self.min_references,
            reference_dropout_count=self.reference_dropout_count,
            rank=rank,
            world_size=world_size,
        )
        self._train_sampler.load_state_dict(self._position)
        return self._loader(split, self._train_sampler, train=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        if "val" not in self._splits:
            return []
        split = self._splits["val"]
        sampler = BucketBatchSampler(split.buckets, split.ref_counts, self.batch_size, shuffle=False)
        return self._loader(split, sampler, train=False)

    # ----- position and skips seen by the training loop (main process)
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the batch's skipped samples and record the training position it reached."""
        if isinstance(batch, dict):
            for record_id, reason, message in batch.get("skipped", ()):
                self.record_skip(record_id, reason, message)
            position = batch.pop("position", None)
            if position is not None:
                self._position = {"epoch": int(position[0]), "batches_done": int(position[1])}
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The data position (epoch, batches consumed) plus the seed; saved in Lightning checkpoints."""
        return {**self._position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            log.warning("resuming data order with seed %s, the checkpoint used %s", self.seed, state["seed"])
        self._position = {"epoch": int(state["epoch"]), "batches_done": int(state["batches_done"])}
        if self._train_sampler is not None:
            self._train_sampler.load_state_dict(self._position)
