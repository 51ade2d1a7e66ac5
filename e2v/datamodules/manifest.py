"""Triplet manifests: JSONL files with one (caption, references, video) record per line.

Record schema (paths relative to the manifest's folder; absolute paths allowed)::

    {"id": "clip_000123",                       # required, unique string
     "video": "clips/clip_000123.mp4",          # required
     "caption": "a cat and a red ball",         # required
     "references": [                            # required list (may be empty; the datamodule sets a minimum)
        {"path": "refs/clip_000123_0.png",      # required
         "kind": "object",                      # required: human, face, object, animal, background, ...
         "element": "cat",                      # optional element identity name
         "mask": null,                          # optional mask PNG path (white = keep)
         "bbox": null}],                        # optional [x0, y0, x1, y1] crop in pixels
     "start": 0.0, "end": null,                 # optional clip window in seconds
     "split": "train"}                          # optional ("heldout" for the held-out split)

:func:`read_manifest` parses the file, keeping every bad line as a :class:`BadRecord` (``file:line``, reason,
message) instead of stopping; :func:`validate_manifest` also opens the media (``e2v data check``).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2v.datamodules.references import load_reference
from e2v.datamodules.video_io import VideoDecodeError, is_file, probe_video, read_video

DEFAULT_MIN_REFERENCES = 1  # records with fewer references are bad, in ``e2v data check`` and in training alike
REASONS = (
    "bad_json",
    "missing_keys",
    "bad_value",
    "duplicate_id",
    "missing_video",
    "corrupt_video",
    "too_short",
    "missing_reference",
    "unreadable_image",
    "too_few_references",
    "corrupt_cache",
)


@dataclass(frozen=True)
class Reference:
    """One reference image of a triplet; paths are resolved (absolute or relative to the working directory)."""

    path: Path
    kind: str
    element: str | None = None
    mask: Path | None = None
    bbox: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Triplet:
    """One manifest record: a clip window, its caption and its reference images."""

    id: str
    video: Path
    caption: str
    references: tuple[Reference, ...]
    start: float = 0.0
    end: float | None = None
    split: str = "train"
    line: int = 0  # 1-based line in the manifest, for messages


@dataclass(frozen=True)
class BadRecord:
    """A record that cannot be used: where (``file:line``), which record, why (one of ``REASONS``) and details."""

    where: str
    id: str | None
    reason: str
    message: str

    def __str__(self) -> str:
        name = f" ({self.id})" if self.id else ""
        text = f"{self.where}{name}: {self.reason}: {self.message}"
        return text.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates from JSON escapes


class ManifestError(ValueError):
    """A manifest that cannot be used at all (e.g. it holds no records); the message names the file."""


class RecordError(ValueError):
    """A record that fails a check; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class ManifestReport:
    """Outcome of reading or validating a manifest."""

    path: Path
    good: list[Triplet] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.good) + len(self.bad)

    @property
    def reasons(self) -> Counter:
        return Counter(bad.reason for bad in self.bad)

    def summary(self) -> str:
        lines = [f"{self.path}: {len(self.good)} good, {len(self.bad)} bad of {self.total} records"]
        lines += [f"  {reason}: {count}" for reason, count in sorted(self.reasons.items())]
        return "\n".join(lines)


def _resolve(value: Any, root: Path, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise RecordError("bad_value", f"{key!r} must be a non-empty path string, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def _number(value: Any, key: str) -> float:
    """A finite JSON number as a float; RecordError("bad_value") for anything else (NaN, inf, 1e999, bools)."""
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer too large for a float
        number = math.nan
    if not math.isfinite(number):
        raise RecordError("bad_value", f"{key!r} must be a finite number, got {value!r}"[:300])
    return number


def _require(obj: dict, keys: tuple[str, ...], what: str) -> None:
    missing = [key for key in keys if key not in obj]
    if missing:
        raise RecordError("missing_keys", f"{what} lacks required key(s) {missing}; it has {sorted(obj)}")


def parse_reference(obj: Any, root: Path, index: int) -> Reference:
    what = f"references[{index}]"
    if not isinstance(obj, dict):
        raise RecordError("bad_value", f"{what} must be an object, got {type(obj).__name__}")
    _require(obj, ("path", "kind"), what)
    if not isinstance(obj["kind"], str):
        raise RecordError("bad_value", f"{what}.kind must be a string, got {obj['kind']!r}")
    bbox = obj.get("bbox")
    if bbox is not None:
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise RecordError("bad_value", f"{what}.bbox must be [x0, y0, x1, y1] numbers, got {bbox!r}"[:300])
        bbox = tuple(_number(v, f"{what}.bbox") for v in bbox)
    element, mask = obj.get("element"), obj.get("mask")
    if element is not None and not isinstance(element, str):
        raise RecordError("bad_value", f"{what}.element must be a string, got {element!r}"[:300])
    return Reference(
        path=_resolve(obj["path"], root, f"{what}.path"),
        kind=obj["kind"],
        element=element,
        mask=None if mask is None else _resolve(mask, root, f"{what}.mask"),
        bbox=bbox,
    )


def parse_record(obj: Any, root: Path, line: int = 0) -> Triplet:
    """Build a :class:`Triplet` from a decoded JSON object; raises :class:`RecordError` on a schema violation."""
    if not isinstance(obj, dict):
        raise RecordError("bad_value", f"a record must be a JSON object, got {type(obj).__name__}")
    _require(obj, ("id", "video", "caption", "references"), "record")
    if not isinstance(obj["id"], str) or not obj["id"]:
        raise RecordError("bad_value", f"'id' must be a non-empty string, got {obj['id']!r}")
    if not isinstance(obj["caption"], str):
        raise RecordError("bad_value", f"'caption' must be a string, got {obj['caption']!r}")
    if not isinstance(obj["references"], list):
        raise RecordError("bad_value", f"'references' must be a list, got {type(obj['references']).__name__}")
    start = 0.0 if obj.get("start") is None else _number(obj["start"], "start")
    end = None if obj.get("end") is None else _number(obj["end"], "end")
    if start < 0:
        raise RecordError("bad_value", f"'start' must be seconds >= 0, got {start!r}")
    if end is not None and end <= start:
        raise RecordError("bad_value", f"'end' ({end}) must be after 'start' ({start})")
    return Triplet(
        id=obj["id"],
        video=_resolve(obj["video"], root, "video"),
        caption=obj["caption"],
        references=tuple(parse_reference(ref, root, i) for i, ref in enumerate(obj["references"])),
        start=start,
        end=end,
        split=str(obj.get("split", "train")),
        line=line,
    )


def read_manifest(path: str | os.PathLike) -> ManifestReport:
    """Parse a JSONL manifest; bad lines (invalid JSON, missing keys, bad values, duplicate ids) go to ``.bad``.

    Blank lines and lines starting with ``#`` are ignored; a line that is not UTF-8 is a ``bad_json`` record.
    Raises FileNotFoundError when the file is missing, ManifestError when it holds no records at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist or is not a file")
    report = ManifestReport(path)
    root = path.resolve().parent
    seen: set[str] = set()
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
            except UnicodeDecodeError as err:
                report.bad.append(BadRecord(where, None, "bad_json", f"not UTF-8 text ({err})"))
                continue
            if not text or text.startswith("#"):
                continue
            try:
                obj = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as err:
                report.bad.append(BadRecord(where, None, "bad_json", f"invalid JSON ({err})"))
                continue
            record_id = obj.get("id") if isinstance(obj, dict) else None
            try:
                record = parse_record(obj, root, number)
            except RecordError as err:
                report.bad.append(BadRecord(where, record_id, err.reason, str(err)))
                continue
            if record.id in seen:
                report.bad.append(BadRecord(where, record.id, "duplicate_id", f"id {record.id!r} appears earlier"))
                continue
            seen.add(record.id)
            report.good.append(record)
    if not report.total:
        raise ManifestError(f"manifest {path} holds no records (it is empty or has only blank/comment lines)")
    return report


def available_frames(info: dict, fps: float | None, start: float = 0.0, end: float | None = None) -> int:
    """How many frames ``read_video`` can sample from a clip window, estimated from ``probe_video`` metadata."""
    native = info["fps"]
    step = 1.0 / (fps or native)
    last = info["frames"] - 1
    if end is not None and end * native < info["frames"]:  # an end past the clip (even 1e308 s) changes nothing
        last = min(last, math.ceil(end * native - 1e-6) - 1)
    span = last / native - start
    count = span / step + 1e-6
    return 0 if span < -1e-6 else int(math.floor(count)) + 1 if math.isfinite(count) else sys.maxsize


def check_video(record: Triplet, frames: int | None, fps: float | None, decode: bool) -> dict:
    """Probe (and with ``decode`` fully read) a record's clip; returns the probe dict or raises RecordError."""
    if not is_file(record.video):
        raise RecordError("missing_video", f"video {record.video} not found")
    try:
        info = probe_video(record.video)
        available = available_frames(info, fps, record.start, record.end)
        if available < (frames or 1):
            raise RecordError(
                "too_short",
                f"video {record.video} has {available} frame(s) in [{record.start:g}s, "
                f"{record.end if record.end is not None else 'end'}) at {fps or 'native'} fps, needs {frames or 1}",
            )
        if decode:
            read_video(record.video, frames or 1, fps=fps, start=record.start, end=record.end)
    except VideoDecodeError as err:
        reason = "too_short" if "too short" in str(err) else "corrupt_video"
        raise RecordError(reason, str(err)) from err
    return info


def check_references(record: Triplet, decode: bool, min_references: int = DEFAULT_MIN_REFERENCES) -> None:
    """Check that the reference files exist (and with ``decode`` that they read); raises RecordError."""
    if len(record.references) < min_references:
        raise RecordError(
            "too_few_references", f"has {len(record.references)} reference(s), needs at least {min_references}"
        )
    for ref in record.references:
        for file in filter(None, (ref.path, ref.mask)):
            if not is_file(file):
                raise RecordError("missing_reference", f"reference image {file} not found")
        if decode:
            try:
                load_reference(ref.path, ref.mask, list(ref.bbox) if ref.bbox else None)
            except (ValueError, OSError) as err:
                raise RecordError("unreadable_image", str(err)) from err


def validate_manifest(
    path: str | os.PathLike,
    frames: int | None = None,
    fps: float | None = None,
    min_references: int = DEFAULT_MIN_REFERENCES,
    decode: bool = True,
) -> ManifestReport:
    """Parse a manifest and check every record's media (``e2v data check``).

    ``frames``/``fps``: the clip must yield that many frames at that rate in its window. ``decode``: fully read
    videos and images (catches corrupt and truncated files) instead of only probing headers and stat-ing files.
    """
    report = read_manifest(path)
    good = []
    for record in report.good:
        try:
            check_video(record, frames, fps, decode)
            check_references(record, decode, min_references)
        except RecordError as err:
            report.bad.append(BadRecord(f"{report.path}:{record.line}", record.id, err.reason, str(err)))
            continue
        good.append(record)
    report.good = good
    return report
