"""Scoring (and generating) the videos of a cases file into a report folder, resumably.

Each scored case is stored in ``OUT/scores/ID.json`` with a key: the scorers' names and info, the case's content
(its prompt, its references' kinds and bytes, its truth clip's bytes) and the video's bytes; a rerun reuses a stored
case whose key still matches, so a killed run continues from the cases already scored and an edited case is scored
afresh. ``bench run`` keeps generated videos in ``OUT/videos/ID.mp4`` with their key in ``OUT/videos/ID.json`` (the
prompt, the references and the generation settings) and regenerates a video whose case changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import cv2
from tqdm.auto import tqdm

from e2v.atomic import write_json_atomic
from e2v.bench.cases import Case
from e2v.bench.report import build_report, thumbnail, write_report
from e2v.bench.scorer import Sample, Scorer
from e2v.datamodules.video_io import load_image, read_video, save_image, write_video

SCORES_DIR = "scores"
THUMBS_DIR = "thumbs"
VIDEOS_DIR = "videos"


class BenchError(RuntimeError):
    """A case that cannot be scored or generated; the message names the case."""


def load_sample(case: Case, video: Path) -> Sample:
    """The case's video, references and truth clip (uint8) as a :class:`Sample`."""
    try:
        frames = read_video(video, None).numpy()
        references = [(load_image(ref.path).numpy(), ref.kind) for ref in case.references]
        truth = read_video(case.video, None).numpy() if case.video is not None else None
    except (OSError, ValueError, RuntimeError) as err:
        raise BenchError(f"case {case.id!r}: {err}") from err
    return Sample(case.id, case.prompt, frames, references, truth)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def case_inputs(case: Case) -> dict[str, Any]:
    """What a generated video depends on in a case: its prompt and its references' kinds and bytes."""
    return {"prompt": case.prompt, "references": [[ref.kind, file_digest(ref.path)] for ref in case.references]}


def _key(scorers: Sequence[Scorer], case: Case, video: Path) -> dict[str, Any]:
    truth = None if case.video is None else file_digest(case.video)
    return {"scorers": {s.name: s.info() for s in scorers}, "case": {**case_inputs(case), "truth": truth},
            "video": file_digest(video)}


def _stored(path: Path, key: dict[str, Any]) -> Optional[dict[str, Optional[float]]]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("metrics") if record.get("key") == json.loads(json.dumps(key)) else None


def score_case(case: Case, video: Path, scorers: Sequence[Scorer], out: Path) -> dict[str, Optional[float]]:
    """Metrics of one case (``None`` where a scorer does not apply); writes its thumbnail."""
    sample = load_sample(case, video)
    metrics: dict[str, Optional[float]] = {}
    for scorer in scorers:
        try:
            metrics[scorer.name] = scorer(sample)
        except (ValueError, RuntimeError, IndexError, cv2.error) as err:
            raise BenchError(f"case {case.id!r}: scorer {scorer.name}: {type(err).__name__}: "
                             f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}") from err
    save_image(out / THUMBS_DIR / f"{case.id}.png", thumbnail([image for image, _ in sample.references], sample.frames))
    return metrics


def score_cases(cases: Sequence[Case], videos: Callable[[Case], Path], scorers: Sequence[Scorer], out: str | Path,
                progress: bool = True, title: str = "e2v bench report") -> dict[str, Any]:
    """Score every case's video (``videos(case)`` -> mp4) into ``out``; returns the report (also written)."""
    out = Path(out)
    results = []
    for case in tqdm(cases, desc="scoring", unit="case", disable=not progress):
        video = videos(case)
        key = _key(scorers, case, video)
        record_path = out / SCORES_DIR / f"{case.id}.json"
        metrics = _stored(record_path, key)
        if metrics is None:
            metrics = score_case(case, video, scorers, out)
            write_json_atomic(record_path, {"id": case.id, "metrics": metrics, "key": key})
        results.append((case.id, metrics))
    report = build_report(results, {s.name: s.info() for s in scorers})
    thumbs = {case.id: f"{THUMBS_DIR}/{case.id}.png" for case in cases if (out / THUMBS_DIR / f"{case.id}.png").is_file()}
    write_report(out, report, thumbs, title, {case.id: (videos(case), case.video) for case in cases})
    return report


def missing_videos(cases: Sequence[Case], folder: Path) -> list[str]:
    return [case.id for case in cases if not (folder / f"{case.id}.mp4").is_file()]


def _video_key(case: Case, options: dict[str, Any], fps: float) -> dict[str, Any]:
    return json.loads(json.dumps({**case_inputs(case), "options": options, "fps": fps}))


def videos_to_generate(cases: Sequence[Case], out: str | Path, options: dict[str, Any], fps: float) -> list[Case]:
    """The cases whose ``OUT/videos/ID.mp4`` is missing or was generated from another prompt, other references or
    other settings (its ``ID.json`` key differs)."""
    folder = Path(out) / VIDEOS_DIR
    todo = []
    for case in cases:
        try:
            stored = json.loads((folder / f"{case.id}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = None
        if not (folder / f"{case.id}.mp4").is_file() or stored != _video_key(case, options, fps):
            todo.append(case)
    return todo


def generate_cases(pipe: Any, cases: Sequence[Case], out: str | Path, options: dict[str, Any], fps: float,
                   progress: bool = True) -> Path:
    """Generate ``OUT/videos/ID.mp4`` for every case in :func:`videos_to_generate`; returns the videos folder.

    ``options``: keyword arguments of ``E2VPipeline.__call__`` (height, width, output_frames, steps, guidance, ...)."""
    folder = Path(out) / VIDEOS_DIR
    for case in tqdm(videos_to_generate(cases, out, options, fps), desc="generating", unit="case",
                     disable=not progress):
        try:
            video = pipe([ref.path for ref in case.references], case.prompt,
                         kinds=[ref.kind for ref in case.references], progress=False, **options)
        except (OSError, ValueError) as err:
            raise BenchError(f"case {case.id!r}: {err}") from err
        write_video(folder / f"{case.id}.mp4", video, fps=fps)
        write_json_atomic(folder / f"{case.id}.json", _video_key(case, options, fps))  # after the video: its key
    return folder


def summary_line(report: dict[str, Any]) -> str:
    parts = [f"{name} {value:.4g}" for name, value in report["summary"].items() if value is not None]
    return f"{len(report['cases'])} cases: " + ", ".join(parts)
