"""The synthetic E2V world: small clips of known elements moving over known backgrounds, with references.

Everything is built offline from scikit-image's bundled pictures plus procedural shapes and textures, and is
deterministic by seed. The world's rules, which a model can learn from its conditioning alone:

- the k-th subject reference (manifest order) enters in the k-th of n evenly spaced slots, left to right, with a
  little jitter; depth order (who occludes whom) is random;
- every subject drifts one way, named in the caption ("... drift left across a brick wall"), over a still
  background (a random view of its texture), slowly and without turning or growing (``TRAVEL``);
- a subject's reference shows it in a *different* pose (bigger, tilted the other way, mirrored, on white), so a
  model has to learn identity rather than copy pixels; the background reference is the clip's clean plate (the
  first frame's view without subjects, as inpainted plates of real pipelines).

Backgrounds are low-passed to the frame resolution (``background_blur``): at 32 px a brick or gravel texture would
otherwise be pixel noise that no small VAE reconstructs and no position-free model predicts. A held-out split
uses subject pairs never seen together in training.

Layout written by :func:`synthesize_world`::

    out_dir/train.jsonl, out_dir/heldout.jsonl   manifests (see the data contract), paths relative to out_dir
    out_dir/clips/<id>.mp4                       h264 clips
    out_dir/refs/<id>_<n>.png                    references, in manifest order (subjects, then the background)
    out_dir/world.json                           the settings and the held-out pairs
"""

from __future__ import annotations

import functools
import itertools
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from skimage import data as skdata
from tqdm import tqdm

from e2v import open_elements
from e2v.atomic import write_json_atomic, write_text_atomic
from e2v.datamodules.video_io import save_image, write_video
from e2v.drawing import Pose, draw, ellipse_alpha, lerp, prescaled, resize_longest, tint, to_rgb, window

SPRITE_SIZE = 160  # longest side of library sprites, pixels
BACKGROUND_SIZE = 384  # side of library background textures, pixels
BACKGROUND_VIEW = 0.3  # share of a background texture's side that one frame shows (large, learnable structure)


@dataclass(frozen=True)
class Element:
    """A library item: ``rgba`` is ``uint8 [h, w, 4]`` (backgrounds are opaque ``[S, S, 4]``).

    ``phrase`` is how captions name it ("a red star"); ``name`` is the identity written to the manifest.
    """

    name: str
    kind: str
    rgba: np.ndarray
    phrase: str


# ----------------------------------------------------------------------------------------------- library


def _sprite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    rgba = np.concatenate([np.clip(rgb, 0, 1), alpha[..., None]], axis=2)
    return resize_longest((rgba * 255).round().astype(np.uint8), SPRITE_SIZE)


def _photo_sprite(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """An elliptical cut-out of ``rgb[y0:y1, x0:x1]``."""
    y0, y1, x0, x1 = box
    crop = rgb[y0:y1, x0:x1]
    return _sprite(crop, ellipse_alpha(*crop.shape[:2]))


def _shape_sprite(shape: str, colour: tuple) -> np.ndarray:
    """A shaded, anti-aliased procedural shape (drawn at 4x, area-downsampled)."""
    size = SPRITE_SIZE * 4
    mask = np.zeros((size, size), np.uint8)
    c, r = size // 2, int(size * 0.46)
    if shape == "disc":
        cv2.circle(mask, (c, c), r, 255, -1)
    elif shape == "ring":
        cv2.circle(mask, (c, c), r, 255, -1)
        cv2.circle(mask, (c, c), r // 2, 0, -1)
    elif shape == "square":
        cv2.rectangle(mask, (c - r, c - r), (c + r, c + r), 255, -1)
    else:
        corners = {"triangle": 3, "diamond": 4, "star": 10}[shape]
        angles = -np.pi / 2 + np.arange(corners) * 2 * np.pi / corners
        radii = np.where(np.arange(corners) % 2, 0.45, 1.0) * r if shape == "star" else np.full(corners, r)
        points = np.stack([c + radii * np.cos(angles), c + radii * np.sin(angles)], axis=1).astype(np.int32)
        cv2.fillPoly(mask, [points], 255)
    alpha = cv2.resize(mask, (SPRITE_SIZE, SPRITE_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    shade = np.linspace(1.15, 0.7, SPRITE_SIZE, dtype=np.float32)[:, None, None]
    rgb = np.broadcast_to(np.array(colour, np.float32) / 255 * shade, (SPRITE_SIZE, SPRITE_SIZE, 3))
    return _sprite(rgb, alpha)


def _horse_sprite(colour: tuple) -> np.ndarray:
    """The skimage horse silhouette filled with a noisy coat colour."""
    body = ~skdata.horse()
    alpha = cv2.GaussianBlur(body.astype(np.float32), (5, 5), 0)
    noise = np.random.default_rng(len(colour) + sum(colour)).normal(0, 0.06, body.shape).astype(np.float32)
    rgb = np.array(colour, np.float32) / 255 * (1 + cv2.GaussianBlur(noise, (9, 9), 0))[..., None]
    return _sprite(rgb, alpha)


def _bright_cutout(rgb: np.ndarray, threshold: float) -> np.ndarray:
    """Keep the pixels brighter than ``threshold`` (soft edges), inside an ellipse so the crop border goes away."""
    bright = cv2.GaussianBlur((rgb.mean(axis=2) > threshold).astype(np.float32), (5, 5), 0)
    return _sprite(rgb, bright * ellipse_alpha(*rgb.shape[:2], feather=0.3))


def _logo_sprite() -> np.ndarray:
    """The scikit-image logo with its white page made transparent."""
    rgb = to_rgb(skdata.logo())
    alpha = cv2.GaussianBlur((rgb.min(axis=2) < 0.92).astype(np.float32), (3, 3), 0)
    return _sprite(rgb, alpha)


@functools.cache
def _elements() -> tuple[Element, ...]:
    astronaut, chelsea, coffee = to_rgb(skdata.astronaut()), to_rgb(skdata.chelsea()), to_rgb(skdata.coffee())
    camera = tint(skdata.camera(), (20, 12, 5), (255, 236, 200))
    faces = skdata.lfw_subset()  # the first 100 are faces
    items = [
        ("astronaut", "human", _photo_sprite(astronaut, (10, 512, 10, 380)), "an astronaut"),
        ("cameraman", "human", _photo_sprite(camera, (50, 512, 0, 350)), "a cameraman"),
        ("astronaut face", "face", _photo_sprite(astronaut, (20, 200, 140, 310)), "the astronaut's face"),
        ("grey face", "face", _photo_sprite(to_rgb(faces[0]), (0, 25, 0, 25)), "a grey face"),
        ("sepia face", "face", _photo_sprite(tint(faces[3], (40, 20, 0), (255, 225, 180)), (0, 25, 0, 25)),
         "a sepia face"),
        ("blue face", "face", _photo_sprite(tint(faces[7], (0, 10, 60), (190, 220, 255)), (0, 25, 0, 25)),
         "a blue-toned face"),
        ("cat", "animal", _photo_sprite(chelsea, (0, 300, 40, 400)), "a cat"),
        ("brown horse", "animal", _horse_sprite((120, 70, 30)), "a brown horse"),
        ("grey horse", "animal", _horse_sprite((150, 150, 160)), "a grey horse"),
        ("coffee cup", "object", _photo_sprite(coffee, (10, 390, 70, 490)), "a coffee cup"),
        ("rocket", "object", _bright_cutout(to_rgb(skdata.rocket())[115:405, 290:352], 0.3), "a rocket"),
        ("logo", "object", _logo_sprite(), "a logo"),
        ("red disc", "object", _shape_sprite("disc", (220, 30, 30)), "a red disc"),
        ("blue square", "object", _shape_sprite("square", (30, 70, 220)), "a blue square"),
        ("green triangle", "object", _shape_sprite("triangle", (30, 180, 50)), "a green triangle"),
        ("yellow star", "object", _shape_sprite("star", (245, 210, 20)), "a yellow star"),
        ("purple diamond", "object", _shape_sprite("diamond", (150, 40, 200)), "a purple diamond"),
        ("orange ring", "object", _shape_sprite("ring", (250, 130, 20)), "an orange ring"),
    ]
    return tuple(_frozen(Element(name, kind, rgba, phrase)) for name, kind, rgba, phrase in items)


def _smooth_noise(rng: np.random.Generator, size: int, blur: int) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), blur)
    return noise / (np.abs(noise).max() + 1e-6)


def _procedural_background(name: str) -> np.ndarray:
    """float [S, S, 3] in [0, 1] procedural textures; seeded by name so the library is fixed."""
    size = BACKGROUND_SIZE
    rng = np.random.default_rng(sum(map(ord, name)))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if name == "sunset sky":
        top, bottom = np.array([0.25, 0.1, 0.45]), np.array([1.0, 0.55, 0.2])
        rgb = top * (1 - y[..., None]) + bottom * y[..., None]
        rgb = rgb * (1 + 0.15 * _smooth_noise(rng, size, 12))[..., None]
    elif name == "cloudy sky":
        clouds = np.clip(_smooth_noise(rng, size, 16) * 1.5, 0, 1)[..., None]
        rgb = np.array([0.35, 0.6, 0.95]) * (1 - clouds) + np.array([0.97, 0.97, 1.0]) * clouds
    elif name == "striped wall":
        stripes = (np.sin((x * 3 + y) * 2 * np.pi * 5) > 0).astype(np.float32)[..., None]
        rgb = np.array([0.9, 0.85, 0.7]) * stripes + np.array([0.2, 0.45, 0.6]) * (1 - stripes)
        rgb = rgb * (1 + 0.08 * _smooth_noise(rng, size, 6))[..., None]
    else:  # checkered floor
        checks = ((np.floor(x * 10) + np.floor(y * 10)) % 2)[..., None]
        rgb = np.array([0.95, 0.95, 0.9]) * checks + np.array([0.15, 0.15, 0.2]) * (1 - checks)
        rgb = rgb * (1 + 0.1 * _smooth_noise(rng, size, 20))[..., None]
    return np.clip(rgb, 0, 1).astype(np.float32)


@functools.cache
def _backgrounds() -> tuple[Element, ...]:
    def square(rgb: np.ndarray) -> np.ndarray:
        side = min(rgb.shape[:2])
        rgb = cv2.resize(rgb[:side, :side].astype(np.float32), (BACKGROUND_SIZE,) * 2, interpolation=cv2.INTER_AREA)
        opaque = np.ones((*rgb.shape[:2], 1), np.float32)
        return (np.concatenate([np.clip(rgb, 0, 1), opaque], axis=2) * 255).round().astype(np.uint8)

    items = [
        ("brick wall", tint(skdata.brick(), (60, 15, 10), (235, 140, 100)), "a brick wall"),
        ("grass field", tint(skdata.grass(), (10, 50, 5), (170, 230, 90)), "a grass field"),
        ("gravel path", tint(skdata.gravel(), (50, 40, 30), (230, 215, 190)), "a gravel path"),
        ("moon surface", to_rgb(skdata.moon()), "the moon surface"),
        ("starry sky", to_rgb(skdata.hubble_deep_field()), "a starry sky"),
        *((name, _procedural_background(name), f"a {name}") for name in
          ("sunset sky", "cloudy sky", "striped wall", "checkered floor")),
    ]
    return tuple(_frozen(Element(name, "background", square(rgb), phrase)) for name, rgb, phrase in items)


def _frozen(element: Element) -> Element:
    element.rgba.setflags(write=False)
    return element


def element_library() -> list[Element]:
    """The subject elements (kinds human, face, animal, object); sprites are read-only ``uint8 [h, w, 4]``."""
    return list(_elements())


def background_library() -> list[Element]:
    """The backgrounds (kind ``background``): opaque read-only ``uint8 [S, S, 4]`` textures."""
    return list(_backgrounds())


# ----------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class SubjectPlan:
    element: int  # index into element_library(), or the seed of an open-ended element
    start: Pose
    end: Pose
    reference: Pose  # pose on the white reference canvas


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to render one clip; subjects in manifest (slot) order, ``depth`` = drawing order."""

    id: str
    split: str
    background: int  # index into background_library(), or the seed of an open-ended background
    background_reference: bool
    pan: tuple[float, float, float, float]  # clip window start (x, y) and end (x, y), fractions of the free range
    subjects: tuple[SubjectPlan, ...]
    depth: tuple[int, ...]  # indices into ``subjects``, back to front
    direction: str  # "left", "right", "up" or "down": where every subject drifts
    background_blur: float  # Gaussian sigma of the background low-pass, output pixels
    caption: str
    frames: int
    height: int
    width: int
    fps: float
    elements: str = "library"  # where elements come from: "library", or a part of the open space (ELEMENT_SPLITS)


WORLDS = ("open", "library")
# open world: the part of the element space (e2v.open_elements.SPLITS) each clip split draws from; held-out clips
# draw fresh elements of the training part, zero-shot clips the part training never sees
ELEMENT_SPLITS = {"train": "train", "heldout": "train", "zeroshot": "zeroshot"}
CLIP_SPLITS = tuple(ELEMENT_SPLITS)
# open world: a subject reference is this much bigger than the subject in the clip, turned by this many degrees
# (either way) and mirrored half the time: another pose than any frame shows, yet one a model can map back
REFERENCE_SCALE = (1.3, 1.6)
REFERENCE_TURN = (5.0, 20.0)


def subject_of(plan: ClipPlan, key: int) -> Element | open_elements.OpenElement:
    """The subject element ``key`` of a plan (a library index, or an open-ended element's seed)."""
    return _elements()[key] if plan.elements == "library" else open_elements.subject(plan.elements, key)


def background_of(plan: ClipPlan) -> Element | open_elements.OpenElement:
    return _backgrounds()[plan.background] if plan.elements == "library" else open_elements.background(
        plan.elements, plan.background)


CAPTION_TEMPLATES = (
    "{subjects} {move} {direction} across {background}",
    "{subjects} {drift} {direction} in front of {background}",
    "{subjects} {slide} {direction} over {background}",
    "in front of {background}, {subjects} {move} slowly {direction}",
)
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
# How far a subject drifts over a clip, fraction of the frame. A subject only translates (same size and tilt from
# first to last frame), and its start varies little around its slot: the model is never told where a subject is,
# so position noise is error no model can remove from a pixel metric (the earlier +-0.1 in y and +-0.05 in x cost
# the tiny E2V model 0.66 dB of its margin over a flat video), and fast, turning motion inside a 4-frame latent
# chunk is what a small VAE reconstructs worst (the earlier 0.35 of travel cost its VAE 0.7 dB at 400 steps).
TRAVEL = 0.2


def make_caption(rng: np.random.Generator, phrases: list[str], background: str, direction: str) -> str:
    subjects = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    plural = len(phrases) > 1
    verbs = {v: v if plural else v + "s" for v in ("move", "drift", "slide")}
    return CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))].format(
        subjects=subjects, background=background, direction=direction, **verbs
    )


def _subject_plan(
    rng: np.random.Generator, element: int, slot: int, count: int, direction: str, open_world: bool = False
) -> SubjectPlan:
    """Subject in the ``slot``-th of ``count`` evenly spaced start slots (left to right), drifting ``direction``."""
    size = rng.uniform(0.4, 0.5)
    flip = bool(rng.integers(2))
    dx, dy = DIRECTIONS[direction]
    x, y = (slot + 1) / (count + 1) + rng.uniform(-0.03, 0.03) - dx * TRAVEL / 2, rng.uniform(0.45, 0.55) - dy * TRAVEL / 2
    start = Pose(x, y, size, rng.uniform(-10, 10), flip)
    end = Pose(x + dx * TRAVEL, y + dy * TRAVEL, size, start.angle, flip)
    if open_world:  # REFERENCE_SCALE x bigger, turned by REFERENCE_TURN degrees, mirrored half the time
        turn = float(np.sign(rng.uniform(-1, 1)) * rng.uniform(*REFERENCE_TURN))
        mirrored = bool(rng.integers(2))
        # a mirror image of a sprite turned by a is the mirrored sprite turned by -a: the turn is relative to that
        angle = (-start.angle if mirrored else start.angle) + turn
        reference = Pose(rng.uniform(0.45, 0.55), rng.uniform(0.45, 0.55), size * rng.uniform(*REFERENCE_SCALE),
                         angle, flip != mirrored)
        return SubjectPlan(element, start, end, reference)
    # The reference is bigger, tilted the other way and mirrored relative to the clip.
    angle = float(np.sign(rng.uniform(-1, 1)) * rng.uniform(15, 30))
    reference = Pose(rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), rng.uniform(0.7, 0.85), angle, not flip)
    return SubjectPlan(element, start, end, reference)


def heldout_pairs(seed: int, fraction: float = 0.1) -> list[tuple[int, int]]:
    """Subject pairs (library indices, sorted) that appear only in the held-out split."""
    pairs = list(itertools.combinations(range(len(_elements())), 2))
    rng = np.random.default_rng([seed, 1])
    count = max(1, round(fraction * len(pairs)))
    return sorted(pairs[i] for i in rng.choice(len(pairs), size=count, replace=False))


def _pick_subjects(rng: np.random.Generator, count: int, banned: set[tuple[int, int]]) -> list[int]:
    """``count`` distinct subjects with no banned pair among them (rejection sampling)."""
    while True:
        chosen = sorted(rng.choice(len(_elements()), size=count, replace=False).tolist())
        if not any(pair in banned for pair in itertools.combinations(chosen, 2)):
            return chosen


def plan_clip(
    index: int,
    split: str,
    seed: int,
    pairs: list[tuple[int, int]],
    frames: int,
    height: int,
    width: int,
    fps: float,
    max_elements: int,
    background_ref_prob: float = 0.5,
    background_blur: float = 0.0,
    world: str = "library",
) -> ClipPlan:
    """The plan of clip ``index`` of ``split``; depends only on its arguments (so workers agree)."""
    if world == "open":
        return _plan_open_clip(index, split, seed, frames, height, width, fps, max_elements, background_ref_prob,
                               background_blur)
    rng = np.random.default_rng([seed, index, 0 if split == "train" else 1])
    with_background = max_elements > 1 and rng.uniform() < background_ref_prob
    if split == "train":
        count = int(rng.integers(1, max_elements - with_background + 1))
        subjects = _pick_subjects(rng, count, set(pairs))
    else:  # a held-out pair, plus maybe one more subject when there is room
        subjects = list(pairs[rng.integers(len(pairs))])
        if max_elements - with_background >= 3 and rng.uniform() < 0.5:
            subjects.append(int(rng.choice([i for i in range(len(_elements())) if i not in subjects])))
    background = int(rng.integers(len(_backgrounds())))
    subjects = [subjects[i] for i in rng.permutation(len(subjects))]  # manifest order = slot order
    direction = str(rng.choice(list(DIRECTIONS)))
    plans = tuple(_subject_plan(rng, e, slot, len(subjects), direction) for slot, e in enumerate(subjects))
    depth = tuple(int(i) for i in rng.permutation(len(subjects)))
    phrases = [_elements()[i].phrase for i in subjects]
    caption = make_caption(rng, phrases, _backgrounds()[background].phrase, direction)
    pan = (*rng.uniform(0.0, 1.0, size=2),) * 2  # a still camera: only the subjects move
    prefix = "clip" if split == "train" else "heldout"
    return ClipPlan(
        f"{prefix}_{index:06d}", split, background, bool(with_background), tuple(float(v) for v in pan), plans,
        depth, direction, float(background_blur), caption, frames, height, width, fps,
    )


def _plan_open_clip(index: int, split: str, seed: int, frames: int, height: int, width: int, fps: float,
                    max_elements: int, background_ref_prob: float, background_blur: float) -> ClipPlan:
    """An open-world clip: 1 to ``max_elements`` (less the background) subjects and a background, each drawn fresh
    from the split's part of the element space (ELEMENT_SPLITS), by seed."""
    rng = np.random.default_rng([seed, index, CLIP_SPLITS.index(split), 5])
    elements = ELEMENT_SPLITS[split]
    with_background = max_elements > 1 and rng.uniform() < background_ref_prob
    count = int(rng.integers(1, max_elements - with_background + 1))
    subjects = [int(rng.integers(2**31)) for _ in range(count)]
    background = int(rng.integers(2**31))
    direction = str(rng.choice(list(DIRECTIONS)))
    plans = tuple(_subject_plan(rng, e, slot, count, direction, open_world=True) for slot, e in enumerate(subjects))
    depth = tuple(int(i) for i in rng.permutation(count))
    phrases = [open_elements.subject(elements, s).phrase for s in subjects]
    caption = make_caption(rng, phrases, open_elements.background(elements, background).phrase, direction)
    pan = (*rng.uniform(0.0, 1.0, size=2),) * 2
    prefix = {"train": "clip", "heldout": "heldout", "zeroshot": "zeroshot"}[split]
    return ClipPlan(
        f"{prefix}_{index:06d}", split, background, bool(with_background), tuple(float(v) for v in pan), plans,
        depth, direction, float(background_blur), caption, frames, height, width, fps, elements,
    )


# ----------------------------------------------------------------------------------------------- rendering


def background_canvas(background: int | np.ndarray, height: int, width: int, blur: float) -> np.ndarray:
    """Background ``background`` (a library index or a square ``uint8 [S, S, 3+]`` texture) scaled so a
    ``height x width`` frame covers ``BACKGROUND_VIEW`` of its side and low-passed by ``blur`` (Gaussian sigma, output
    pixels): float32 [Hb, Wb, 3] in [0, 1]."""
    texture = _backgrounds()[background].rgba[..., :3] if isinstance(background, int) else background[..., :3]
    scale = max(height, width) / BACKGROUND_VIEW / texture.shape[0]
    side = int(np.ceil(texture.shape[0] * scale))
    canvas = cv2.resize(texture, (side, side), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    canvas = canvas.astype(np.float32) / 255
    return cv2.GaussianBlur(canvas, (0, 0), blur) if blur > 0 else canvas


def render_clip(plan: ClipPlan) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render a plan: the video ``uint8 [F, H, W, 3]`` and its references, each ``uint8 [H, W, 3]`` (the plan's
    subjects in order, then the background when it is a reference)."""
    height, width = plan.height, plan.width
    background = background_canvas(background_of(plan).rgba, height, width, plan.background_blur)
    sprites = [
        prescaled(subject_of(plan, s.element).rgba, max(s.start.size, s.end.size) * min(height, width))
        for s in plan.subjects
    ]
    video = np.empty((plan.frames, height, width, 3), np.uint8)
    x0, y0, x1, y1 = plan.pan
    for f in range(plan.frames):
        t = f / max(1, plan.frames - 1)
        frame = window(background, x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, height, width)
        for i in plan.depth:
            draw(frame, sprites[i], lerp(plan.subjects[i].start, plan.subjects[i].end, t))
        video[f] = np.clip(frame * 255 + 0.5, 0, 255).astype(np.uint8)
    references = []
    for subject in plan.subjects:
        canvas = np.ones((height, width, 3), np.float32)
        sprite = prescaled(subject_of(plan, subject.element).rgba, subject.reference.size * min(height, width))
        draw(canvas, sprite, subject.reference)
        references.append(canvas)
    if plan.background_reference:
        references.append(window(background, x0, y0, height, width))  # the clean plate of frame 0
    return video, [np.clip(r * 255 + 0.5, 0, 255).astype(np.uint8) for r in references]


def _record(plan: ClipPlan) -> dict:
    """The manifest record of a plan; references are its subjects, then the background when it is one."""
    ordered = [subject_of(plan, s.element) for s in plan.subjects]
    if plan.background_reference:
        ordered.append(background_of(plan))
    return {
        "id": plan.id,
        "video": f"clips/{plan.id}.mp4",
        "caption": plan.caption,
        "start": 0.0,
        "end": None,
        "references": [
            {"path": f"refs/{plan.id}_{n}.png", "kind": e.kind, "element": e.name, "mask": None, "bbox": None}
            for n, e in enumerate(ordered)
        ],
        "background": background_of(plan).name,
        "split": plan.split,
    }


def prediction_record(record: dict) -> dict:
    """The video-prediction twin of a clip's record: its only reference is the clip's first frame (kind background,
    so it is used whole), as image-to-video pretraining sees a clip; no subject reference."""
    first = {"path": f"refs/{record['id']}_first.png", "kind": "background", "element": None, "mask": None,
             "bbox": None}
    return {**record, "references": [first]}


def _write_clip(job: tuple[str, ClipPlan, bool]) -> dict:
    out_dir, plan, first_frame = job
    cv2.setNumThreads(1)
    video, references = render_clip(plan)
    record = _record(plan)
    write_video(Path(out_dir) / record["video"], video, fps=plan.fps, threads=1)
    for ref, image in zip(record["references"], references):
        save_image(Path(out_dir) / ref["path"], image)
    if first_frame:
        save_image(Path(out_dir) / prediction_record(record)["references"][0]["path"], video[0])
    return record


def _write_jsonl(path: Path, records: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def synthesize_world(
    out_dir: str | os.PathLike,
    num_clips: int = 300,
    num_heldout: int = 30,
    frames: int = 33,
    height: int = 64,
    width: int = 64,
    fps: float = 8.0,
    max_elements: int = 3,
    seed: int = 0,
    workers: int = 1,
    heldout_fraction: float = 0.1,
    background_ref_prob: float = 0.5,
    background_blur: float = 0.5,
    progress: bool = True,
    world: str = "open",
    num_zeroshot: int = 0,
    prediction: bool = False,
) -> dict:
    """Render the world into ``out_dir``; returns ``dict(train=path, heldout=path, [zeroshot=path,] world=path,
    num_train, num_heldout, num_zeroshot)``. ``max_elements`` caps the references per clip (subjects plus the
    optional background); ``background_ref_prob`` is the share of clips whose background is a reference;
    ``background_blur`` the background's low-pass (Gaussian sigma in output pixels, 0 = none).

    ``world="open"`` (default) draws every element fresh from the open-ended space (:mod:`e2v.open_elements`):
    held-out clips get new elements of the training part of the space, ``num_zeroshot`` zero-shot clips elements of
    the part training never draws from (other shape families, fills, hues, pictures, faces). ``world="library"``
    uses the fixed library of 18 subjects and 9 backgrounds, held-out clips pairing subjects never seen together
    (``heldout_fraction`` of the pairs); it has no zero-shot split. ``prediction`` also writes ``predict.jsonl``:
    the training clips with their first frame as the only reference (video prediction, for base pretraining).

    ``workers`` > 1 renders in spawned processes (each pays a few seconds of imports); output is identical for
    any worker count. At the default 64x64 size one process already does about 15-20 clips/s.
    """
    if height % 2 or width % 2 or frames < 1 or max_elements < 1:
        raise ValueError(
            f"need even height/width, frames >= 1, max_elements >= 1; got {height}x{width}, {frames}, {max_elements}"
        )
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; expected one of {WORLDS}")
    if world == "library" and num_zeroshot:
        raise ValueError("the library world has no zero-shot split (its elements are fixed): use world='open'")
    if world == "library" and num_heldout and max_elements < 2:
        raise ValueError("a held-out split needs max_elements >= 2 (it is made of held-out subject pairs)")
    out_dir = Path(out_dir)
    for sub in ("clips", "refs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    pairs = heldout_pairs(seed, heldout_fraction) if world == "library" else []
    settings = dict(frames=frames, height=height, width=width, fps=fps, max_elements=max_elements,
                    background_blur=background_blur)
    counts = {"train": num_clips, "heldout": num_heldout, "zeroshot": num_zeroshot}
    plans = [
        plan_clip(i, split, seed, pairs, background_ref_prob=background_ref_prob, world=world, **settings)
        for split, count in counts.items() for i in range(count)
    ]
    jobs = [(str(out_dir), plan, prediction and plan.split == "train") for plan in plans]
    bar = dict(total=len(jobs), desc="synth clips", disable=not progress)
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            records = list(tqdm(pool.imap(_write_clip, jobs, chunksize=4), **bar))
    else:
        records = [_write_clip(job) for job in tqdm(jobs, **bar)]
    paths = {split: out_dir / f"{split}.jsonl" for split, count in counts.items() if count or split != "zeroshot"}
    for split, path in paths.items():
        _write_jsonl(path, [r for r in records if r["split"] == split])
    if prediction:
        paths["predict"] = out_dir / "predict.jsonl"
        _write_jsonl(paths["predict"], [prediction_record(r) for r in records if r["split"] == "train"])
    paths["world"] = out_dir / "world.json"
    info = dict(settings, world=world, seed=seed, background_ref_prob=background_ref_prob)
    if world == "library":
        info.update(heldout_fraction=heldout_fraction,
                    heldout_pairs=[[_elements()[a].name, _elements()[b].name] for a, b in pairs],
                    elements=[e.name for e in _elements()], backgrounds=[b.name for b in _backgrounds()])
    else:
        info.update(element_splits=ELEMENT_SPLITS, zero_shot=open_elements.zero_shot_description())
    write_json_atomic(paths["world"], info, indent=2)
    return {**{k: str(v) for k, v in paths.items()}, **{f"num_{k}": v for k, v in counts.items()}}
