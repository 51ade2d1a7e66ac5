"""``TripletDataModule``: (caption, references, video) batches in resolution buckets, resumable, robust to bad data.

Pieces:
- :class:`TripletDataset` decodes one sample (4k+1 frames at the target fps, resized and centre-cropped to its
  bucket; references prepared the A2 way). A sample that fails returns a :class:`Skipped` marker instead.
- :class:`BucketBatchSampler` groups samples by bucket key ``(F, H, W, N)`` so tensors are dense; its plan is a
  pure function of ``(seed, epoch)`` and it resumes mid-epoch from ``(epoch, batches_done)``.
- :func:`collate` stacks samples and drops skipped ones, listing them under ``batch["skipped"]``; every training
  batch carries ``batch["position"] = (epoch, batches_done)`` for the datamodule's checkpointed state.
- The datamodule pre-checks the manifest (parse, probe videos, stat references), counts every skip by reason
  (``skip_counts``), stops when the bad fraction passes ``max_skip_fraction``, and in cached mode reads the latent
  cache of :mod:`e2v.datamodules.cache` instead of decoding videos.

A batch whose samples all failed holds only ``skipped``/``id``/``position``: training steps skip such batches.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Hashable, Iterator, NamedTuple, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from e2v.datamodules.manifest import (
    DEFAULT_MIN_REFERENCES,
    RecordError,
    Triplet,
    available_frames,
    check_references,
    check_video,
    read_manifest,
)
from e2v.datamodules.references import cover_and_crop, load_reference, pad_to_white_square, prepare_reference
from e2v.datamodules.video_io import VideoDecodeError, read_video
from e2v.frames import RULE, is_frame_count

log = logging.getLogger(__name__)


class SampleKey(NamedTuple):
    """What the batch sampler hands the dataset: which record, in which bucket, with how many references."""

    index: int
    bucket: int
    num_refs: int
    seed: int  # per-sample randomness (reference subset and order)
    epoch: int
    step: int  # batch number within the epoch (on this rank)


class Skipped(NamedTuple):
    """Marker returned by a dataset for a sample that could not be loaded."""

    id: str
    reason: str
    message: str


class SkipLimitError(RuntimeError):
    """Raised when the fraction of bad samples passes ``max_skip_fraction``."""


def check_buckets(buckets: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """Validate ``[[frames, height, width], ...]``: frames 4k+1, height and width multiples of 16."""
    checked = []
    for bucket in buckets:
        if len(bucket) != 3:
            raise ValueError(f"a bucket is [frames, height, width], got {list(bucket)}")
        frames, height, width = (int(v) for v in bucket)
        if not is_frame_count(frames):
            raise ValueError(f"bucket {list(bucket)}: frames must be {RULE}, got {frames}")
        if height % 16 or width % 16 or height <= 0 or width <= 0:
            raise ValueError(f"bucket {list(bucket)}: height and width must be positive multiples of 16")
        checked.append((frames, height, width))
    if not checked:
        raise ValueError("at least one resolution bucket is needed")
    return checked


def check_reference_counts(min_references: int, max_references: int) -> None:
    """ValueError unless ``1 <= max_references`` and ``0 <= min_references <= max_references``."""
    if max_references < 1:
        raise ValueError(f"max_references must be >= 1 (references used per sample), got {max_references}")
    if not 0 <= min_references <= max_references:
        raise ValueError(f"min_references must be in [0, max_references={max_references}], got {min_references}")


def assign_bucket(info: dict, record: Triplet, buckets: list[tuple[int, int, int]], fps: float | None) -> int:
    """Index of the bucket with the closest aspect ratio among those the clip has enough frames for.

    Ties go to more frames, then the larger area. Raises RecordError("too_short") when no bucket fits.
    """
    frames = available_frames(info, fps, record.start, record.end)
    aspect = math.log(info["width"] / info["height"])
    fitting = [i for i, (f, _, _) in enumerate(buckets) if f <= frames]
    if not fitting:
        shortest = min(f for f, _, _ in buckets)
        raise RecordError("too_short", f"{record.video}: {frames} frame(s) available, the shortest bucket needs {shortest}")

    def cost(i: int) -> tuple[float, int, int]:
        f, h, w = buckets[i]
        return (round(abs(math.log(w / h) - aspect), 6), -f, -h * w)

    return min(fitting, key=cost)


def video_to_bucket(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``uint8 [F, h, w, 3]`` -> float ``[3, F, height, width]`` in [-1, 1], resized to cover then centre-cropped."""
    frames = video.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return cover_and_crop(frames, height, width).permute(1, 0, 2, 3).contiguous()


class TripletDataset(Dataset):
    """Online samples: ``video [3,F,H,W]``, ``refs [N,3,H,W]``, ``refs_clip [N,3,S,S]``, caption, kinds, id."""

    def __init__(
        self,
        records: Sequence[Triplet],
        buckets: list[tuple[int, int, int]],
        fps: float | None,
        image_size: int = 224,
        max_references: int = 3,
        shuffle_references: bool = False,
    ):
        self.records = list(records)
        self.buckets = buckets
        self.fps = fps
        self.image_size = image_size
        self.max_references = max_references
        self.shuffle_references = shuffle_references

    def __len__(self) -> int:
        return len(self.records)

    def choose_references(self, record: Triplet, num_refs: int, seed: int) -> list[int]:
        """Indices of the references to use: ``num_refs`` of the first ``max_references``, maybe shuffled."""
        available = list(range(min(len(record.references), self.max_references)))
        if num_refs >= len(available) and not self.shuffle_references:
            return available
        rng = np.random.default_rng(seed)
        chosen = rng.choice(available, size=num_refs, replace=False).tolist()
        return chosen if self.shuffle_references else sorted(chosen)

    def load(self, key: SampleKey) -> dict[str, Any]:
        """Decode one sample; raises RecordError with the reason when a file is missing or broken."""
        record = self.records[key.index]
        frames, height, width = self.buckets[key.bucket]
        try:
            clip = read_video(record.video, frames, fps=self.fps, start=record.start, end=record.end)
        except VideoDecodeError as err:
            missing = not record.video.is_file()
            reason = "missing_video" if missing else "too_short" if "too short" in str(err) else "corrupt_video"
            raise RecordError(reason, str(err)) from err
        refs, refs_clip, kinds = [], [], []
        for i in self.choose_references(record, key.num_refs, key.seed):
            ref = record.references[i]
            try:
                image = load_reference(ref.path, ref.mask, list(ref.bbox) if ref.bbox else None)
            except FileNotFoundError as err:
                raise RecordError("missing_reference", str(err)) from err
            except (ValueError, OSError) as err:
                raise RecordError("unreadable_image", str(err)) from err
            refs.append(prepare_reference(image, ref.kind, height, width))
            refs_clip.append(pad_to_white_square(image, self.image_size))
            kinds.append(ref.kind)
        empty = torch.zeros(0, 3, height, width)
        return {
            "video": video_to_bucket(clip, height, width),
            "refs": torch.stack(refs) if refs else empty,
            "refs_clip": torch.stack(refs_clip) if refs_clip else empty[:, :, : self.image_size, : self.image_size],
            "caption": record.caption,
            "ref_kinds": kinds,
            "id": record.id,
        }

    def __getitem__(self, key: SampleKey) -> dict[str, Any] | Skipped:
        try:
            return self.load(key)
        except RecordError as err:
            return Skipped(self.records[key.index].id, err.reason, str(err))


class BucketBatchSampler(Sampler[list[SampleKey]]):
    """Batches that never mix bucket keys ``(bucket, N)``, planned deterministically from ``(seed, epoch)``.

    ``buckets[i]`` is sample i's bucket, ``ref_counts[i]`` its usable reference count. With probability
    ``reference_dropout_count`` a sample keeps a random count in ``[min_references, ref_counts[i]]`` for the
    epoch. Resumable: ``state_dict()`` = ``{"epoch", "batches_done"}``; iteration starts after the batches done.
    With ``world_size > 1`` each rank takes every ``world_size``-th batch of the shared plan.
    """

    def __init__(
        self,
        buckets: Sequence[Hashable],
        ref_counts: Sequence[int],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        min_references: int = 1,
        reference_dropout_count: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.buckets = list(buckets)
        self.ref_counts = list(ref_counts)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.min_references = min_references
        self.reference_dropout_count = reference_dropout_count
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.batches_done = 0

    def plan(self, epoch: int) -> list[list[SampleKey]]:
        """This rank's batches of ``epoch``, in order."""
        rng = np.random.default_rng([self.seed, epoch])
        groups: dict[tuple, list[tuple[int, int, int]]] = {}
        for index, (bucket, count) in enumerate(zip(self.buckets, self.ref_counts)):
            num_refs = count
            if self.shuffle and count > self.min_references and rng.random() < self.reference_dropout_count:
                num_refs = int(rng.integers(self.min_references, count + 1))
            sample_seed = int(rng.integers(2**31)) if self.shuffle else index
            groups.setdefault((bucket, num_refs), []).append((index, num_refs, sample_seed))
        batches = []
        for group_key in sorted(groups, key=repr):
            members = groups[group_key]
            if self.shuffle:
                members = [members[i] for i in rng.permutation(len(members))]
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append((group_key[0], chunk))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.world_size > 1 and batches:
            batches += batches[: (-len(batches)) % self.world_size]
            batches = batches[self.rank :: self.world_size]
        return [
            [SampleKey(index, bucket, num_refs, seed, epoch, step) for index, num_refs, seed in chunk]
            for step, (bucket, chunk) in enumerate(batches)
        ]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        """The rest of the current epoch; a new iteration after the epoch's last batch starts the next epoch.

        Lightning stops at ``len(loader)`` batches without exhausting the iterator, so the position advances as
        batches are handed out rather than when the loop ends.
        """
        plan = self.plan(self.epoch)
        if self.batches_done >= len(plan):
            self.epoch, self.batches_done = self.epoch + 1, 0
            plan = self.plan(self.epoch)
        while self.batches_done < len(plan):
            self.batches_done += 1
            yield plan[self.batches_done - 1]

    def __len__(self) -> int:
        return len(self.plan(self.epoch))

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start; a new epoch restarts from its first batch."""
        if epoch != self.epoch:
            self.epoch, self.batches_done = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])


def collate(samples: list[dict[str, Any] | Skipped]) -> dict[str, Any]:
    """Stack tensor fields, list the others; skipped samples are dropped and listed as ``(id, reason)``."""
    good = [s for s in samples if not isinstance(s, Skipped)]
    batch: dict[str, Any] = {"skipped": [(s.id, s.reason, s.message) for s in samples if isinstance(s, Skipped)]}
    if good:
        for name, value in good[0].items():
            values = [s[name] for s in good]
            batch[name] = torch.stack(values) if isinstance(value, torch.Tensor) else values
    else:
        batch["id"] = []
    return batch


class _Collate:
    """Picklable collate that also tags training batches with their sampler position."""

    def __init__(self, tag_position: bool):
        self.tag_position = tag_position

    def __call__(self, samples: list[tuple[Any, SampleKey]]) -> dict[str, Any]:
        batch = collate([sample for sample, _ in samples])
        if self.tag_position and samples:
            key = samples[0][1]
            batch["position"] = (key.epoch, key.step + 1)
        return batch


class _Keyed(Dataset):
    """Wraps a dataset so each item comes back with the key that produced it (for the collate's position tag)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> tuple[Any, SampleKey]:
        return self.dataset[key], key


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
        shuffle_references: present the references in random order.
        reference_dropout_count: probability that a sample keeps a random count of its references in
            ``[min_references, available]`` for an epoch.
        max_skip_fraction: stop with SkipLimitError when the fraction of bad records passes it.
        seed: the data order is a function of (seed, epoch).
        cache_dir: read precomputed latents from this latent cache instead of decoding videos.
        build_cache: with ``cache_dir``, first encode the training manifest there with the LightningModule's own
            VAE / encoders / layout when the cache is missing or partial (the opt-in latent precomputation).
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
        shuffle_references: bool = True,
        reference_dropout_count: float = 0.0,
        max_skip_fraction: float = 0.05,
        seed: int = 0,
        cache_dir: str | None = None,
        build_cache: bool = True,
        drop_last: bool = False,
    ):
        super().__init__()
        self.train_manifest = train_manifest
        self.val_manifest = val_manifest
        self.fps = fps
        self.buckets = check_buckets(buckets if buckets is not None else [[frames, height, width]])
        check_reference_counts(min_references, max_references)
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
        from e2v.datamodules.cache import CachedTripletDataset, LatentCache

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
        """Encode the training manifest into ``cache_dir`` with the module's own frozen components (rank 0; resumes
        a partial cache, leaves a complete one untouched), so recipe and cache can never disagree on them."""
        from e2v.datamodules.cache import build_cache

        if self.trainer.is_global_zero:
            build_cache(
                self.train_manifest,
                self.cache_dir,
                module.vae,
                module.text_encoder,
                getattr(module, "image_encoder", None),
                module.layout,
                self.buckets,
                fps=self.fps,
                image_size=self.image_size,
                max_references=self.max_references,
                min_references=self.min_references,
                device=module.device,
            )
        self.trainer.strategy.barrier("e2v-latent-cache")

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
        if self._trainer_attached():
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    def _loader(self, split: _Split, sampler: BucketBatchSampler, train: bool) -> DataLoader:
        return DataLoader(
            _Keyed(split.dataset),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_Collate(tag_position=train),
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
            reference_dropout_count=0.0 if self.cache_dir else self.reference_dropout_count,
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
