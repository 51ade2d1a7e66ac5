"""One training sample of the triplet data: what the batch sampler asks for (:class:`SampleKey`), how a record is
assigned a resolution bucket, and :class:`TripletDataset`, which decodes a sample (4k+1 frames at the target fps,
resized and centre-cropped to its bucket; references prepared the A2 way) or returns a :class:`Skipped` marker.
Used by the datamodule (:mod:`e2v.datamodules.triplets`) and the latent cache (:mod:`e2v.datamodules.cache`)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from e2v.datamodules.manifest import RecordError, Triplet, available_frames
from e2v.datamodules.references import cover_and_crop, load_reference, pad_to_white_square, prepare_reference
from e2v.datamodules.video_io import VideoDecodeError, is_file, read_video
from e2v.frames import RULE, is_frame_count


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
            missing = not is_file(record.video)
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
