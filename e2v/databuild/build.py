"""The build over all videos: list, run the per-video stages (worker processes, a shard, or Ray), then merge.

Layout of a build folder ``OUT``::

    OUT/work/<key>.json        one per finished video (its result; a video with one is not redone)
    OUT/clips, plates, crops   the media the results name
    OUT/train.jsonl            the manifest (``e2v data check`` schema); OUT/heldout.jsonl: every
                               ``heldout_every``-th kept clip (default 10; a merge setting, re-split without redoing videos)
    OUT/report.json, report.html, report/   counts per stage, rejections by reason, sample triplets

Merging (the global stage) groups identities across the clips of each video (of every video with ``cross_video``),
picks each element's reference from another clip of the same identity, the element there most like it
(``ref_source: cross_clip``) or, when it was seen in one clip only, from a distant frame of
its own clip, mirrored and turned (``same_clip``), and drops near-duplicate clips. It reads only the per-video
results, so ``--shard I/N`` runs (into one folder, or merged from several with ``--from``) give the same manifest
as one run.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from e2v import registry
from e2v.atomic import TEMP_SUFFIX, write_text_atomic
from e2v.databuild.config import BuildConfig
from e2v.databuild.identity import PEOPLE, group_identities
from e2v.databuild.video import WORK, VideoJob, decode_vector, job_config, process_video, result_path, video_key

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
MEDIA_FOLDERS = ("clips", "plates", "crops")


class BuildError(ValueError):
    """Unusable build input (no videos, a bad list, a bad shard); the message names it."""


def list_videos(source: str | os.PathLike) -> list[tuple[str, str]]:
    """``[(path, name)]`` sorted by name: every video file under a folder (recursively), or the lines of a list
    file (paths relative to the list's folder; blank and ``#`` lines skipped). ``name`` is the path as listed."""
    source = Path(source)
    if source.is_dir():
        found = [p for p in source.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()]
        videos = [(str(p), p.relative_to(source).as_posix()) for p in found]
    elif source.is_file():
        videos = []
        try:
            text = source.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise BuildError(f"--videos {source}: a list file must be UTF-8 text ({err})") from None
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                path = Path(line).expanduser()
                videos.append((str(path if path.is_absolute() else source.parent / path), line))
    else:
        raise BuildError(f"--videos {source} is neither a folder nor a list file")
    if not videos:
        raise BuildError(f"--videos {source} holds no videos (looked for {', '.join(VIDEO_SUFFIXES)})")
    names = Counter(name for _, name in videos)
    repeated = sorted(n for n, c in names.items() if c > 1)
    if repeated:
        raise BuildError(f"--videos {source} lists {repeated[0]!r} more than once")
    return sorted(videos, key=lambda item: item[1])


def check_out(videos: str | os.PathLike, out: str | os.PathLike) -> None:
    """BuildError unless ``out`` can be the build folder of ``videos``: not a file, not inside a ``--videos``
    folder (every rerun would list its own clips as raw videos)."""
    videos, out = Path(videos), Path(out)
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} is a file; give a folder")
    if videos.is_dir() and out.resolve().is_relative_to(videos.resolve()):
        raise BuildError(f"--out {out} is inside --videos {videos}: every rerun would build clips of its own clips; "
                         f"give a folder outside it")


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N; None -> ``(0, 1)``."""
    if text is None:
        return 0, 1
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise BuildError(f"--shard must be I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise BuildError(f"--shard {text}: need 0 <= I < N")
    return index, count


def read_result(path: Path) -> dict:
    """A per-video result file, checked: a JSON object whose media paths stay inside its build folder (BuildError
    naming the file otherwise; a crafted shard must not reach outside OUT)."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BuildError(f"{path}: not a per-video result ({err})") from None
    if not isinstance(result, dict) or not isinstance(result.get("clips", []), list):
        raise BuildError(f"{path}: not a per-video result (expected an object with a list of clips)")
    for name in media_names(result, path):
        parts = Path(name).parts if isinstance(name, str) else ()
        if len(parts) < 2 or parts[0] not in MEDIA_FOLDERS or ".." in parts:
            raise BuildError(f"{path}: media path {name!r} leaves the build folder (expected clips/, plates/ or "
                             f"crops/ inside it)")
    return result


def media_names(result: dict, where: Path) -> list:
    """Every media file (relative to the build folder) a per-video result names."""
    try:
        names = []
        for clip in result.get("clips", []):
            names += [clip["video"], clip["plate"]]
            names += [e[k] for e in clip["elements"] for k in ("crop", "crop_same_clip", "crop_turned") if k in e]
        return names
    except (KeyError, TypeError) as err:
        raise BuildError(f"{where}: malformed clip entry ({type(err).__name__}: {err})") from None


def load_result(out: Path, key: str, digest: str) -> dict | None:
    """A finished video's result made with the same settings, else None."""
    path = result_path(out, key)
    if not path.is_file():
        return None
    try:
        result = read_result(path)
    except BuildError:
        return None
    return result if result.get("config") == digest else None


def _clean_temps(out: Path) -> None:
    """Remove temp files a killed build left (atomic writes that never finished)."""
    for folder in (WORK, *MEDIA_FOLDERS):
        for orphan in (out / folder).glob(f".*{TEMP_SUFFIX}*"):
            orphan.unlink(missing_ok=True)


def run_jobs(jobs: list[VideoJob], workers: int, engine: str, progress: bool) -> Iterable[dict]:
    """Results of ``jobs`` as they finish: in this process, a spawned process pool, or Ray Data."""
    bar = dict(total=len(jobs), desc="videos", unit="video", disable=not progress)
    if engine == "ray":
        from e2v.databuild.ray_engine import run_with_ray

        yield from tqdm(run_with_ray(jobs, workers), **bar)
    elif workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers, initializer=die_with_parent,
                                                        initargs=(os.getpid(),)) as pool:
            yield from tqdm(pool.imap_unordered(process_video, jobs), **bar)
    else:
        yield from tqdm(map(process_video, jobs), **bar)


def die_with_parent(parent: int) -> None:
    """Worker initializer: the kernel kills this process when the build process dies (Linux ``PR_SET_PDEATHSIG``), so
    a killed build leaves no workers running on."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # died before the call above
        os._exit(1)


def run_videos(videos: str | os.PathLike, out: str | os.PathLike, config: BuildConfig, workers: int = 1,
               shard: tuple[int, int] = (0, 1), engine: str = "local", progress: bool = True,
               on_result: Callable[[dict], None] | None = None, retries: int = 2, retry_wait: float = 1.0) -> dict:
    """The per-video stages for this shard's videos not done yet; returns counts (listed, shard, processed,
    resumed) and ``failed``: ``{name: message}`` of the videos an error of the machine (disk full, ...) stopped
    after ``retries`` more tries, ``retry_wait`` seconds apart; they are not recorded, a rerun does them."""
    check_out(videos, out)
    listed = list_videos(videos)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clean_temps(out)
    index, count = shard
    mine = listed[index::count]
    digest, settings = config.digest(), job_config(config)
    todo = [VideoJob(path, name, str(out), settings) for path, name in mine
            if load_result(out, video_key(name), digest) is None]
    jobs, failed = todo, {}
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(retry_wait)
        by_name = {job.name: job for job in jobs}
        failed = {}
        for result in run_jobs(jobs, workers, engine, progress):
            if result["status"] == "failed":
                failed[result["name"]] = result["message"]
            elif on_result is not None:
                on_result(result)
        jobs = [by_name[name] for name in sorted(failed)]
        if not jobs:
            break
    return {"listed": len(listed), "shard": len(mine), "processed": len(todo) - len(failed),
            "resumed": len(mine) - len(todo), "failed": failed}


def check_shard(source: Path, digest: str) -> list[tuple[Path, dict]]:
    """A shard folder's per-video results, each read with :func:`read_result`; BuildError when it is no build
    folder or when results were made with other settings than ``digest`` (merging them would drop them)."""
    if not (source / WORK).is_dir():
        raise BuildError(f"--from {source} is not a build folder (no work/)")
    results = [(path, read_result(path)) for path in sorted((source / WORK).glob("*.json"))]
    other = [path for path, result in results if result.get("config") != digest]
    if other:
        raise BuildError(f"--from {source}: {len(other)} of {len(results)} results (e.g. {other[0].name}) were built "
                         f"with other settings than --config; merge with the --config they were built with")
    return results


def copy_shard(source: Path, out: Path, results: list[tuple[Path, dict]]) -> int:
    """Copy a shard folder's checked per-video results (:func:`check_shard`) and the media they name into ``out``;
    returns results copied."""
    for path, result in results:
        for name in media_names(result, path):
            if not (source / name).resolve().is_relative_to(source.resolve()):
                raise BuildError(f"{path}: media file {name} links outside {source}")
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, out / name)
        (out / WORK).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out / WORK / path.name)
    return len(results)


@dataclass
class Merged:
    records: dict[str, list[dict]]  # split -> manifest records
    counts: dict
    samples: list[dict]  # up to 12 training records spread over the manifest, for the report
    results: list[dict]  # the per-video results merged


def _hamming(a: str, b: str) -> int:
    return int(np.unpackbits(np.frombuffer(bytes.fromhex(a), np.uint8) ^ np.frombuffer(bytes.fromhex(b), np.uint8)).sum())


def _same_pictures(a: str, b: str, tolerance: float) -> bool:
    """Whether two clips' thumbnails differ by at most ``tolerance`` (0..255) at their 95th-percentile pixel."""
    diff = np.abs(np.frombuffer(bytes.fromhex(a), np.uint8).astype(np.int16) -
                  np.frombuffer(bytes.fromhex(b), np.uint8).astype(np.int16))
    return float(np.percentile(diff, 95)) <= tolerance


def remove_near_duplicates(clips: list[dict], distance: int, tolerance: float) -> tuple[list[dict], list[dict]]:
    """``(kept, removed)``: a clip whose frame hash is within ``distance`` bits of an earlier kept clip's (by id)
    and whose thumbnails match that clip's within ``tolerance`` is removed (a re-upload or re-encode)."""
    kept, removed = [], []
    for clip in sorted(clips, key=lambda c: c["id"]):
        twin = next((k for k in kept if _hamming(k["hash"], clip["hash"]) <= distance
                     and _same_pictures(k["thumbs"], clip["thumbs"], tolerance)), None)
        if twin is None:
            kept.append(clip)
        else:
            removed.append({**clip, "duplicate_of": twin["id"]})
    return kept, removed


def identity_labels(elements: list[dict], config: BuildConfig, videos: list[str] | None = None,
                    clips: list[str] | None = None) -> np.ndarray:
    """Identity label per element: faces with a face embedding are grouped among themselves by it (at
    ``face_identity_threshold``), every other element by its image embedding (at ``identity_threshold``), except
    people seen in greyscale when that embedding is the ``appearance`` proxy, which cannot tell them apart: each is
    an identity of its own; with ``videos`` (each element's source video) and ``config.cross_video`` off, only
    within each video; with ``clips`` (each element's clip), two elements of one clip are never one identity."""
    labels = np.zeros(len(elements), np.int64)
    scopes = [None] if videos is None or config.cross_video else sorted(set(videos))
    proxy = registry.split_spec("element_embedder", config.embedder)[0] == "appearance"
    offset = 0
    for scope in scopes:
        inside = [i for i in range(len(elements)) if scope is None or videos[i] == scope]
        faces = [i for i in inside if "face_embedding" in elements[i]]
        alone = [i for i in inside if proxy and "face_embedding" not in elements[i]
                 and elements[i].get("kind") in PEOPLE and elements[i].get("grey")]
        single = set(alone)
        others = [i for i in inside if "face_embedding" not in elements[i] and i not in single]
        labels[alone] = offset + np.arange(len(alone))
        offset += len(alone)
        for members, key, threshold in ((others, "embedding", config.identity_threshold),
                                        (faces, "face_embedding", config.face_identity_threshold)):
            if members:
                found = group_identities(np.stack([decode_vector(elements[i][key]) for i in members]), threshold,
                                         None if clips is None else [clips[i] for i in members])
                labels[members] = found + offset
                offset += int(found.max()) + 1
    return labels


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Cosine distance of two elements' decoded vectors: face descriptors when both have one, else image
    embeddings."""
    key = "face_embedding" if "face_embedding" in a and "face_embedding" in b else "embedding"
    return float(1 - a[key] @ b[key])


def merge(out: str | os.PathLike, config: BuildConfig, names: list[str] | None = None) -> Merged:
    """The global stage over the per-video results in ``out`` (``names``: only these listed videos, each of which
    must be done); writes the manifest(s). Identities, references and duplicates are decided here."""
    out = Path(out)
    digest = config.digest()
    if names is None:
        found = [(p, read_result(p)) for p in sorted((out / WORK).glob("*.json"))]
        results = [r for _, r in found if r.get("config") == digest]
        if len(results) < len(found):
            other = next(p for p, r in found if r.get("config") != digest)
            raise BuildError(f"{len(found) - len(results)} of {len(found)} per-video results in {out / WORK} (e.g. "
                             f"{other.name}) were built with other settings than --config; merge with the --config "
                             f"they were built with, or with --videos to merge only the listed videos")
    else:
        results = [load_result(out, video_key(name), digest) for name in names]
        missing = [name for name, r in zip(names, results) if r is None]
        if missing:
            raise BuildError(f"{len(missing)} video(s) are not built yet in {out} (e.g. {missing[0]}); run the "
                             f"remaining shards first")
    if not results:
        raise BuildError(f"{out} holds no per-video results made with these settings; run e2v data build first")
    results.sort(key=lambda r: r["key"])
    counts: dict = {"videos": len(results), "videos_rejected": Counter(), "shots": 0, "clips_rejected": Counter()}
    clips = []
    for result in results:
        if result["status"] != "ok":
            counts["videos_rejected"][result["reason"]] += 1
            continue
        counts["shots"] += len(result["shots"])
        for rejected in result["rejected_clips"]:
            counts["clips_rejected"][rejected["reason"]] += 1
        clips += [{**clip, "video_key": result["key"]} for clip in result["clips"]]
    kept, duplicates = remove_near_duplicates(clips, config.dedup_distance, config.dedup_tolerance)
    counts["clips_rejected"]["near_duplicate"] += len(duplicates)
    elements = [(clip, n, element) for clip in kept for n, element in enumerate(clip["elements"])]
    labels = identity_labels([e for _, _, e in elements], config, [clip["video_key"] for clip, _, _ in elements],
                             [clip["id"] for clip, _, _ in elements])
    vectors = [{k: decode_vector(e[k]) for k in ("embedding", "face_embedding") if k in e} for _, _, e in elements]
    by_identity: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_identity[int(label)].append(i)
    records: dict[str, list[dict]] = {"train": [], "heldout": []}
    sources = Counter()
    position = {(clip["id"], n): i for i, (clip, n, _) in enumerate(elements)}
    for number, clip in enumerate(kept):
        references = []
        for n, element in enumerate(clip["elements"]):
            i = position[(clip["id"], n)]
            label = int(labels[i])
            others = [j for j in by_identity[label] if elements[j][0]["id"] != clip["id"]]
            other_videos = [j for j in others if elements[j][0]["video_key"] != clip["video_key"]]
            if others:
                j = min(other_videos or others, key=lambda k: _distance(vectors[i], vectors[k]))  # ties: the first
                source_clip, _, source = elements[j]
                path, ref_source = source.get("crop_turned", source["crop"]), "cross_clip"
            else:
                source_clip, path, ref_source = clip, element["crop_same_clip"], "same_clip"
            sources[ref_source] += 1
            references.append({"path": path, "kind": element["kind"], "element": f"identity_{label:05d}",
                               "ref_source": ref_source, "source_clip": source_clip["id"]})
        if config.background_reference:
            references.append({"path": clip["plate"], "kind": "background", "element": None,
                               "ref_source": "same_clip", "source_clip": clip["id"]})
        split = "heldout" if config.heldout_every and number % config.heldout_every == config.heldout_every - 1 \
            else "train"
        records[split].append({
            "id": clip["id"], "video": clip["video"], "caption": clip["caption"], "references": references,
            "split": split, "caption_source": clip["caption_source"],
            "elements": [{"kind": e["kind"], "name": r["element"], "colour": e["colour"]}
                         for e, r in zip(clip["elements"], references)],
            "source": {"video": clip["video_key"], "shot": clip["shot"], "frames": clip["source_frames"],
                       "speed": clip.get("speed", 1.0)},
        })
    counts.update(clips_kept=len(kept), identities=len(by_identity), references=dict(sources),
                  records={k: len(v) for k, v in records.items()})
    for split, rows in records.items():
        if rows or split == "train":
            write_text_atomic(out / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        else:  # no held-out clips (heldout_every 0, or too few clips): no stale split of an earlier merge
            (out / f"{split}.jsonl").unlink(missing_ok=True)
    counts["videos_rejected"] = dict(counts["videos_rejected"])
    counts["clips_rejected"] = dict(counts["clips_rejected"])
    return Merged(records, counts, records["train"][:: max(1, len(records["train"]) // 12)][:12], results)
