"""Raw videos with known truth, to verify ``e2v data build``: long multi-shot videos of recurring identities.

``e2v data synth --raw --out DIR`` writes::

    DIR/videos/<video>.mp4      raw videos (hard cuts between shots, 16 fps by default), plus a few broken ones
    DIR/truth/<video>.json      per video: shot boundaries, each shot's kind, and per frame every subject's box and
                                identity (library element name)
    DIR/direct/train.jsonl      the triplets a perfect build would make (same clip windows, true references and
                                clean plates): the baseline a built manifest is compared with
    DIR/direct/heldout.jsonl    held-out triplets (subject pairs never together in any raw video), for evaluation

The world reuses the synthetic world's elements, backgrounds and clip layout (``e2v.synth``), with what a
still-camera background-subtraction pipeline needs to recover them. A shot opens with the clip a build cuts (its
first 2 s): 1-2 subjects in evenly spaced slots along one row, drifting ``TRAVEL`` of the frame the way the caption
says, as the main world's clips do (slots are wider apart, so two subjects never touch and motion segmentation can
tell them apart). Then the subjects leave the frame within ``EXIT_FRAMES`` and the rest of the 7-8 s shot is the
empty background, so every background pixel is uncovered in most of the shot's frames (the plate is the temporal
median). References are ordered by the subjects' first-frame x (left to right), the order a build can observe. A
video's cast (3-4 identities) recurs across its shots, and the library's 18 identities recur across videos, so
references can come from other clips.

Shot kinds besides ``normal``: ``static`` (nothing moves), ``black``, ``flash`` (strobe frames), ``blur``, ``pan``
(camera motion across the background), ``short`` (shorter than one clip) and ``duplicate`` (an exact copy of an earlier video's
shot, as a re-upload); the truth names the rejection each should get (a ``short`` shot, 1.25-1.9 s, is kept: one clip
spread over it; so is a ``pan``: camera motion is measured and logged, not rejected). ``hard=True`` (``--hard``) makes the harder world (``harden``): greyscale videos, low-saturation
shots, same-location cuts (the previous shot's background and view, other subjects), dissolves, hand-held cameras,
near-still subjects and scikit-image photo backgrounds; the truth marks each shot's transition and traits. Broken videos: a truncated file, one too
short, one too small and one at an odd frame rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from e2v import synth
from e2v.atomic import write_json_atomic, write_text_atomic
from e2v.datamodules.video_io import save_image, write_video
from e2v.drawing import Pose, draw, prescaled, window

RAW_FPS = 16.0
CLIP_FPS = 8.0
CLIP_FRAMES = 17
SPAN = int(round((CLIP_FRAMES - 1) * RAW_FPS / CLIP_FPS)) + 1  # raw frames one clip covers (33)
TRAVEL = synth.TRAVEL  # fraction of the frame a subject moves in one clip (2 s), as in the main world
EXIT_FRAMES = 24  # raw frames after the clip window in which the subjects leave the frame
EXIT = 1.4  # how far they move meanwhile (fraction of the frame): enough to leave it from any slot
SIZE = (0.38, 0.46)  # a subject's longest side, fraction of the frame (main world: 0.4-0.5)
SHOT_FRAMES = (112, 128)  # frames of a shot (7-8 s): after the subjects leave, over half of it is empty background
SLOTS = {1: (0.5,), 2: (0.24, 0.76)}  # x of the subjects' clip-window centres (main world: 1/3, 2/3)
SHOT_KINDS = {"normal": 0.8, "static": 0.04, "black": 0.03, "flash": 0.03, "blur": 0.03, "pan": 0.04, "short": 0.03}
EXPECT = {"normal": "keep", "static": "static", "black": "black", "flash": "flashing", "blur": "blurred",
          "pan": "keep", "short": "keep", "duplicate": "near_duplicate"}  # short shots (1.25-1.9 s) give one
# clip spread over the shot (``min_shot``); pans are kept too: camera motion is measured and logged, not rejected
# (issue 24; a recipe may still reject it with ``camera_motion``'s ``max_motion``)


@dataclass(frozen=True)
class ShotPlan:
    kind: str
    frames: int
    background: int
    subjects: tuple[int, ...]  # library indices, in reference order (first-frame x, left to right)
    direction: str
    starts: tuple[tuple[float, float], ...]  # first-frame centres (x, y), fractions of the frame
    sizes: tuple[float, ...]
    angles: tuple[float, ...]
    flips: tuple[bool, ...]
    window: tuple[float, float, float, float]  # background window start (x, y) and end (x, y)
    caption: str
    saturation: float = 1.0  # 0: greyscale
    travel: float = 1.0  # share of ``TRAVEL`` the subjects drift in the clip window (small: near-still subjects)
    handheld: float = 0.0  # hand-held camera: amplitude of the background window's wander (fraction of its range)
    dissolve: int = 0  # frames of the cross-dissolve from the previous shot into this one (0: a hard cut)
    photo: str | None = None  # a scikit-image photo as the background (``background`` then names no texture)


def _slot_starts(rng: np.random.Generator, count: int, direction: str) -> list[tuple[float, float]]:
    """First-frame centres: the k-th subject's clip-window path is centred on the k-th slot of one row (the main
    world's ``_subject_plan`` with ``SLOTS``), so the direction moves a start by ``TRAVEL`` / 2."""
    dx, dy = synth.DIRECTIONS[direction]
    return [(x + rng.uniform(-0.03, 0.03) - dx * TRAVEL / 2, rng.uniform(0.45, 0.55) - dy * TRAVEL / 2)
            for x in SLOTS[count]]


def plan_shot(rng: np.random.Generator, kind: str, cast: list[int], banned: set, previous_background: int,
              count: int | None = None) -> ShotPlan:
    """One shot of ``kind`` with 1-2 subjects of ``cast`` (no ``banned`` pair) over a background other than
    ``previous_background`` (so every cut changes the picture)."""
    count = int(rng.integers(1, 3)) if count is None else count
    while True:
        subjects = sorted(rng.choice(cast, size=min(count, len(cast)), replace=False).tolist())
        if len(subjects) < 2 or tuple(subjects) not in banned:
            break
    subjects = [subjects[i] for i in rng.permutation(len(subjects))]
    background = int(rng.choice([b for b in range(len(synth.background_library())) if b != previous_background]))
    direction = str(rng.choice(list(synth.DIRECTIONS)))
    frames = int(rng.integers(20, SPAN - 2)) if kind == "short" else int(rng.integers(*SHOT_FRAMES))
    fx, fy = rng.uniform(0, 1, size=2)
    pan = lambda v: v + 0.6 if v < 0.4 else v - 0.6  # noqa: E731  (a pan crosses 0.6 of the background's range)
    window = (fx, fy, pan(fx), fy) if kind == "pan" else (fx, fy, fx, fy)
    phrases = [synth.element_library()[s].phrase for s in subjects]
    caption = synth.make_caption(rng, phrases, synth.background_library()[background].phrase, direction)
    return ShotPlan(
        kind, frames, background, tuple(subjects), direction, tuple(_slot_starts(rng, len(subjects), direction)),
        tuple(float(v) for v in rng.uniform(*SIZE, size=len(subjects))),
        tuple(float(v) for v in rng.uniform(-8, 8, size=len(subjects))),
        tuple(bool(v) for v in rng.integers(0, 2, size=len(subjects))), tuple(float(v) for v in window), caption)


def _pose(plan: ShotPlan, i: int, frame: int, fps: float) -> Pose:
    dx, dy = synth.DIRECTIONS[plan.direction]
    raw = frame * RAW_FPS / fps - (SPAN - 1)  # raw frames past the clip window
    travel = TRAVEL * plan.travel
    moved = travel * (1 + raw / (SPAN - 1)) if raw <= 0 else travel + EXIT * min(raw, EXIT_FRAMES) / EXIT_FRAMES
    moved = 0.0 if plan.kind == "static" else moved
    x, y = plan.starts[i]
    return Pose(x + dx * moved, y + dy * moved, plan.sizes[i], plan.angles[i], plan.flips[i])


def render_shot(plan: ShotPlan, height: int, width: int, fps: float = RAW_FPS, frames: int | None = None) -> tuple[np.ndarray, list[list[list[int] | None]], np.ndarray]:
    """``(video uint8 [F, H, W, 3], boxes [subject][frame] -> [x0, y0, x1, y1] or None when out of view,
    plate uint8 [H, W, 3] of frame 0)``; ``frames``/``fps`` resample the shot (the direct clips use 8 fps).
    Backgrounds are low-passed by 1 px and ``blur`` shots by 5 px at 64 px frames, in proportion at other sizes."""
    count = plan.frames if frames is None else frames
    scale = max(height, width) / 64  # blurs are set at 64 px and scale with the frame
    background = (photo_canvas(plan.photo, height, width, 1.0 * scale) if plan.photo else
                  synth.background_canvas(plan.background, height, width, 1.0 * scale))
    sprites = [prescaled(synth.element_library()[s].rgba, size * min(height, width))
               for s, size in zip(plan.subjects, plan.sizes)]
    video = np.empty((count, height, width, 3), np.uint8)
    boxes: list[list] = [[] for _ in plan.subjects]
    x0, y0, x1, y1 = plan.window
    plate = None
    for f in range(count):
        t = f / max(1, count - 1) if plan.kind == "pan" else 0.0
        jx, jy = _wander(plan, f * RAW_FPS / fps)
        frame = window(background, float(np.clip(x0 + (x1 - x0) * t + jx, 0, 1)),
                             float(np.clip(y0 + (y1 - y0) * t + jy, 0, 1)), height, width)
        if plate is None:
            plate = frame.copy()
        for i, sprite in enumerate(sprites):
            alpha = np.zeros((height, width, 3), np.float32)
            pose = _pose(plan, i, f, fps)
            draw(frame, sprite, pose)
            draw(alpha, np.concatenate([sprite[..., 3:]] * 4, axis=2), pose)
            ys, xs = np.nonzero(alpha[..., 0] > 0.5)
            boxes[i].append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None)
        video[f] = np.clip(frame * 255 + 0.5, 0, 255).astype(np.uint8)
    if plan.kind == "black":
        video = (video.astype(np.float32) * 0.03).astype(np.uint8)
    elif plan.kind == "blur":
        video = np.stack([cv2.GaussianBlur(v, (0, 0), 5.0 * scale) for v in video])
    elif plan.kind == "flash":
        for f in range(4, count, 6):
            video[f] = np.clip(video[f].astype(np.int16) + 150, 0, 255).astype(np.uint8)
    plate = np.clip(plate * 255 + 0.5, 0, 255).astype(np.uint8)
    if plan.saturation < 1:
        video, plate = desaturated(video, plan.saturation), desaturated(plate[None], plan.saturation)[0]
    return video, boxes, plate


PHOTOS = ("coffee", "rocket", "brick", "grass", "gravel", "camera")  # scikit-image's bundled photos


def photo_canvas(name: str, height: int, width: int, blur: float) -> np.ndarray:
    """A scikit-image photo as a background canvas (float32 [Hb, Wb, 3] in [0, 1]): scaled so a frame shows 0.6 of
    its shorter side, low-passed by ``blur``."""
    import skimage.data

    photo = getattr(skimage.data, name)()
    photo = np.repeat(photo[..., None], 3, axis=2) if photo.ndim == 2 else photo[..., :3]
    scale = max(height, width) / 0.6 / min(photo.shape[:2])
    size = (int(np.ceil(photo.shape[1] * scale)), int(np.ceil(photo.shape[0] * scale)))
    canvas = cv2.resize(photo, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    canvas = canvas.astype(np.float32) / 255
    return cv2.GaussianBlur(canvas, (0, 0), blur) if blur > 0 else canvas


def _wander(plan: ShotPlan, raw_frame: float) -> tuple[float, float]:
    """The hand-held camera's offset of the background window at a raw frame: two slow sines per axis."""
    if not plan.handheld:
        return 0.0, 0.0
    t = raw_frame / RAW_FPS
    return (plan.handheld * (np.sin(2.1 * t + plan.window[0] * 6) + 0.5 * np.sin(5.3 * t)) / 1.5,
            plan.handheld * (np.sin(1.7 * t + plan.window[1] * 6) + 0.5 * np.sin(4.1 * t + 1)) / 1.5)


def desaturated(video: np.ndarray, saturation: float) -> np.ndarray:
    """``uint8 [F, H, W, 3]`` with its colour pulled towards its Rec. 601 luma (``saturation`` 0: greyscale)."""
    grey = video.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    mixed = grey[..., None] + saturation * (video.astype(np.float32) - grey[..., None])
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def harden(rng: np.random.Generator, plan: ShotPlan, previous: ShotPlan | None, grey: bool) -> ShotPlan:
    """The harder world's version of a planned shot: greyscale (``grey``, a whole video) or low saturation, a
    same-location cut (``previous``'s background and view, other subjects), a dissolve into it, a hand-held camera,
    near-still subjects, a photo background. The truth keeps its own subjects and boxes."""
    change: dict = {"saturation": 0.0 if grey else (0.25 if rng.uniform() < 0.3 else 1.0)}
    if plan.kind == "normal":
        change["travel"] = 0.15 if rng.uniform() < 0.3 else 1.0
        change["handheld"] = 0.04 if rng.uniform() < 0.3 else 0.0
    same_place = previous is not None and previous.kind == "normal" and rng.uniform() < 0.3
    if same_place:
        change.update(background=previous.background, window=previous.window, photo=previous.photo)
    elif rng.uniform() < 0.4:
        change["photo"] = str(rng.choice(PHOTOS))
    change["dissolve"] = 8 if previous is not None and not same_place and rng.uniform() < 0.25 else 0
    return dataclasses.replace(plan, **change)


def _reference(element: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A true subject reference: the sprite on white, bigger, tilted and mirrored (as in the synthetic world)."""
    canvas = np.ones((height, width, 3), np.float32)
    size = rng.uniform(0.7, 0.85)
    pose = Pose(rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), size, float(rng.uniform(-30, 30)), bool(rng.integers(2)))
    draw(canvas, prescaled(synth.element_library()[element].rgba, size * min(height, width)), pose)
    return np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)


def _direct_record(out: Path, name: str, plan: ShotPlan, rng: np.random.Generator, height: int, width: int,
                   split: str) -> dict:
    """Write one true triplet (the shot's first clip at ``CLIP_FPS``) under ``out``; returns its record."""
    video, _, plate = render_shot(plan, height, width, fps=CLIP_FPS, frames=CLIP_FRAMES)
    write_video(out / "clips" / f"{name}.mp4", video, fps=CLIP_FPS, threads=1)
    refs = []
    for n, element in enumerate(plan.subjects):
        save_image(out / "refs" / f"{name}_{n}.png", _reference(element, rng, height, width))
        item = synth.element_library()[element]
        refs.append({"path": f"refs/{name}_{n}.png", "kind": item.kind, "element": item.name})
    save_image(out / "refs" / f"{name}_bg.png", plate)
    refs.append({"path": f"refs/{name}_bg.png", "kind": "background",
                 "element": synth.background_library()[plan.background].name})
    return {"id": name, "video": f"clips/{name}.mp4", "caption": plan.caption, "references": refs, "split": split}


def _write_video_and_truth(out: Path, name: str, shots: list[ShotPlan], height: int, width: int, fps: float) -> None:
    """Render the shots one after another (a dissolve overlaps the previous shot's last frames; the new shot then
    starts at the dissolve's middle) and write the video and its truth."""
    video, truth_shots = np.zeros((0, height, width, 3), np.uint8), []
    library = synth.element_library()
    for plan in shots:
        part, boxes, _ = render_shot(plan, height, width, fps=fps)
        start = len(video)
        if plan.dissolve and start:
            overlap = min(plan.dissolve, start, len(part))
            mix = ((np.arange(overlap) + 1) / (overlap + 1))[:, None, None, None]
            video[-overlap:] = np.clip(video[-overlap:] * (1 - mix) + part[:overlap] * mix + 0.5, 0, 255)
            video = np.concatenate([video, part[overlap:]])
            start -= overlap // 2
            boxes = [b[overlap - overlap // 2:] for b in boxes]
            truth_shots[-1]["end"] = start
        else:
            video = np.concatenate([video, part])
        truth_shots.append({
            "start": start, "end": len(video), "kind": plan.kind, "expect": EXPECT[plan.kind],
            "background": f"photo_{plan.photo}" if plan.photo else synth.background_library()[plan.background].name,
            "direction": plan.direction, "caption": plan.caption,
            "transition": "dissolve" if plan.dissolve and truth_shots else "cut",
            "grey": plan.saturation < 1, "handheld": bool(plan.handheld), "near_still": plan.travel < 1,
            "subjects": [{"identity": library[s].name, "kind": library[s].kind, "boxes": b}
                         for s, b in zip(plan.subjects, boxes)],
        })
    start = len(video)
    write_video(out / "videos" / f"{name}.mp4", video, fps=fps, threads=1)
    truth = {"video": f"videos/{name}.mp4", "fps": fps, "frames": start, "height": height, "width": width,
             "shots": truth_shots}
    write_json_atomic(out / "truth" / f"{name}.json", truth, indent=1)


def write_sidecars(out: str | os.PathLike) -> int:
    """Write ``videos/<video>.json`` caption files (each shot's true caption, by time) from the truth, as a dataset
    that ships captions would have; returns how many."""
    out = Path(out)
    count = 0
    for truth_file in sorted((out / "truth").glob("video_*.json")):
        truth = json.loads(truth_file.read_text())
        shots = [{"start": s["start"] / truth["fps"], "end": s["end"] / truth["fps"], "caption": s["caption"]}
                 for s in truth["shots"]]
        write_json_atomic((out / truth["video"]).with_suffix(".json"), {"shots": shots}, indent=1)
        count += 1
    return count


def _broken_videos(out: Path, rng: np.random.Generator, height: int, width: int) -> None:
    """A truncated file, a too-short video, a too-small video and one at 5 fps (truth: their expected rejection)."""
    plan = plan_shot(rng, "normal", [0, 1, 2], set(), -1)
    video, _, _ = render_shot(plan, height, width)
    broken = {
        "broken_truncated": ("corrupt", video, RAW_FPS),
        "broken_short": ("too_short", video[:10], RAW_FPS),
        "broken_small": ("too_small", video[:, :16, :16], RAW_FPS),
        "broken_fps": ("odd_fps", video[::3], 5.0),
    }
    for name, (reason, frames, fps) in broken.items():
        path = out / "videos" / f"{name}.mp4"
        write_video(path, frames, fps=fps, threads=1)
        if reason == "corrupt":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 3])
        write_json_atomic(out / "truth" / f"{name}.json", {"video": f"videos/{name}.mp4", "expect": reason}, indent=1)


def synthesize_raw(out_dir: str | os.PathLike, videos: int = 48, shots: tuple[int, int] = (6, 10),
                   heldout: int = 24, height: int = 64, width: int = 64, seed: int = 0, duplicates: float = 0.02,
                   broken: bool = True, sidecars: bool = False, progress: bool = True, hard: bool = False) -> dict:
    """Write the raw world (see the module docstring); returns counts. Deterministic by ``seed``. ``sidecars``:
    also write each video's true shot captions beside it (``write_sidecars``). ``hard``: the harder world
    (``harden``: greyscale videos, low-saturation shots, same-location cuts, dissolves, hand-held cameras,
    near-still subjects, photo backgrounds), drawn from its own random stream: the plans are otherwise the same."""
    out = Path(out_dir)
    rng = np.random.default_rng([seed, 7])
    hard_rng = np.random.default_rng([seed, 11])
    pairs = synth.heldout_pairs(seed)
    banned = set(pairs)
    library = len(synth.element_library())
    kinds, weights = list(SHOT_KINDS), np.array(list(SHOT_KINDS.values()))
    direct, done_shots = [], []  # done_shots: (video, shot plan) pairs a duplicate may copy
    for v in tqdm(range(videos), desc="raw videos", disable=not progress):
        name = f"video_{v:04d}"
        cast = rng.choice(library, size=int(rng.integers(3, 5)), replace=False).tolist()
        plans, previous = [], -1
        grey = hard and hard_rng.uniform() < 0.35
        for _ in range(int(rng.integers(shots[0], shots[1] + 1))):
            if done_shots and rng.uniform() < duplicates:
                source = done_shots[int(rng.integers(len(done_shots)))]
                if source.background != previous:
                    plans.append(ShotPlan(**{**asdict(source), "kind": "duplicate"}))
                    previous = source.background
                    continue
            plan = plan_shot(rng, str(rng.choice(kinds, p=weights / weights.sum())), cast, banned, previous)
            if hard:
                plan = harden(hard_rng, plan, plans[-1] if plans else None, grey)
            plans.append(plan)
            previous = plan.background
        _write_video_and_truth(out, name, plans, height, width, RAW_FPS)
        for k, plan in enumerate(plans):
            if plan.kind == "normal":
                done_shots.append(plan)
                direct.append(_direct_record(out / "direct", f"{name}_s{k:02d}", plan, rng, height, width, "train"))
    if broken:
        _broken_videos(out, rng, height, width)
    held, held_rng = [], np.random.default_rng([seed, 9])  # its own stream: ``heldout`` changes nothing else
    for i in range(heldout):
        pair = list(pairs[int(held_rng.integers(len(pairs)))])
        plan = plan_shot(held_rng, "normal", pair, set(), -1, count=2)
        held.append(_direct_record(out / "direct", f"heldout_{i:04d}", plan, held_rng, height, width, "heldout"))
    for split, records in (("train", direct), ("heldout", held)):
        write_text_atomic(out / "direct" / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    world = {"videos": videos, "seed": seed, "height": height, "width": width, "raw_fps": RAW_FPS,
             "clip_fps": CLIP_FPS, "clip_frames": CLIP_FRAMES, "heldout_pairs": [
                 [synth.element_library()[a].name, synth.element_library()[b].name] for a, b in pairs]}
    write_json_atomic(out / "world.json", world, indent=2)
    if sidecars:
        write_sidecars(out)
    return {"videos": str(out / "videos"), "direct_train": len(direct), "direct_heldout": len(held)}


def add_raw_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("raw videos (--raw)")
    group.add_argument("--raw", action="store_true", help="write long multi-shot raw videos with truth instead")
    group.add_argument("--videos", type=int, default=48, help="raw videos (--raw)")
    group.add_argument("--no-broken", action="store_true", help="leave out the broken videos (--raw)")
    group.add_argument("--hard", action="store_true", help="the harder world: greyscale and low-saturation shots, "
                       "same-location cuts, dissolves, hand-held cameras, near-still subjects, photo backgrounds (--raw)")
    group.add_argument("--sidecar-captions", action="store_true",
                       help="write each video's true shot captions beside it, <video>.json (--raw)")


def raw_command(args: argparse.Namespace) -> int:
    if args.height % 2 or args.width % 2:
        raise SystemExit("e2v data synth: --height and --width must be even")
    result = synthesize_raw(args.out, videos=args.videos, heldout=args.heldout, height=args.height,
                            width=args.width, seed=args.seed, broken=not args.no_broken,
                            sidecars=args.sidecar_captions, hard=args.hard)
    print(json.dumps(result, indent=2))
    return 0
