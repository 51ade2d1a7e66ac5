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

import argparse
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

from e2v.atomic import write_json_atomic, write_text_atomic
from e2v.datamodules.video_io import save_image, write_video

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


def _resize_longest(image: np.ndarray, size: int) -> np.ndarray:
    scale = size / max(image.shape[:2])
    shape = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, shape, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def _ellipse_alpha(height: int, width: int, feather: float = 0.08) -> np.ndarray:
    """Soft-edged ellipse filling the box: float [height, width] in [0, 1]."""
    y, x = np.mgrid[0:height, 0:width]
    radius = np.sqrt(((y + 0.5) / height * 2 - 1) ** 2 + ((x + 0.5) / width * 2 - 1) ** 2)
    return np.clip((1 - radius) / feather, 0, 1)


def _rgb(image: np.ndarray) -> np.ndarray:
    """float [h, w, 3] in [0, 1] from a uint8/float grey or RGB picture."""
    image = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def _tint(grey: np.ndarray, dark: tuple, light: tuple) -> np.ndarray:
    """Colourise a grey picture by blending between two RGB colours (0..255): float [h, w, 3]."""
    g = _rgb(grey).mean(axis=2, keepdims=True)
    return (np.array(dark) * (1 - g) + np.array(light) * g) / 255.0


def _sprite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    rgba = np.concatenate([np.clip(rgb, 0, 1), alpha[..., None]], axis=2)
    return _resize_longest((rgba * 255).round().astype(np.uint8), SPRITE_SIZE)


def _photo_sprite(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """An elliptical cut-out of ``rgb[y0:y1, x0:x1]``."""
    y0, y1, x0, x1 = box
    crop = rgb[y0:y1, x0:x1]
    return _sprite(crop, _ellipse_alpha(*crop.shape[:2]))


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
    return _sprite(rgb, bright * _ellipse_alpha(*rgb.shape[:2], feather=0.3))


def _logo_sprite() -> np.ndarray:
    """The scikit-image logo with its white page made transparent."""
    rgb = _rgb(skdata.logo())
    alpha = cv2.GaussianBlur((rgb.min(axis=2) < 0.92).astype(np.float32), (3, 3), 0)
    return _sprite(rgb, alpha)


@functools.cache
def _elements() -> tuple[Element, ...]:
    astronaut, chelsea, coffee = _rgb(skdata.astronaut()), _rgb(skdata.chelsea()), _rgb(skdata.coffee())
    camera = _tint(skdata.camera(), (20, 12, 5), (255, 236, 200))
    faces = skdata.lfw_subset()  # the first 100 are faces
    items = [
        ("astronaut", "human", _photo_sprite(astronaut, (10, 512, 10, 380)), "an astronaut"),
        ("cameraman", "human", _photo_sprite(camera, (50, 512, 0, 350)), "a cameraman"),
        ("astronaut face", "face", _photo_sprite(astronaut, (20, 200, 140, 310)), "the astronaut's face"),
        ("grey face", "face", _photo_sprite(_rgb(faces[0]), (0, 25, 0, 25)), "a grey face"),
        ("sepia face", "face", _photo_sprite(_tint(faces[3], (40, 20, 0), (255, 225, 180)), (0, 25, 0, 25)),
         "a sepia face"),
        ("blue face", "face", _photo_sprite(_tint(faces[7], (0, 10, 60), (190, 220, 255)), (0, 25, 0, 25)),
         "a blue-toned face"),
        ("cat", "animal", _photo_sprite(chelsea, (0, 300, 40, 400)), "a cat"),
        ("brown horse", "animal", _horse_sprite((120, 70, 30)), "a brown horse"),
        ("grey horse", "animal", _horse_sprite((150, 150, 160)), "a grey horse"),
        ("coffee cup", "object", _photo_sprite(coffee, (10, 390, 70, 490)), "a coffee cup"),
        ("rocket", "object", _bright_cutout(_rgb(skdata.rocket())[115:405, 290:352], 0.3), "a rocket"),
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
        ("brick wall", _tint(skdata.brick(), (60, 15, 10), (235, 140, 100)), "a brick wall"),
        ("grass field", _tint(skdata.grass(), (10, 50, 5), (170, 230, 90)), "a grass field"),
        ("gravel path", _tint(skdata.gravel(), (50, 40, 30), (230, 215, 190)), "a gravel path"),
        ("moon surface", _rgb(skdata.moon()), "the moon surface"),
        ("starry sky", _rgb(skdata.hubble_deep_field()), "a starry sky"),
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
class Pose:
    """Where a sprite sits: centre (x, y) and longest side ``size`` as fractions of the frame's shorter side
    (centre in frame-width/height fractions), rotation in degrees (counter-clockwise), horizontal flip."""

    x: float
    y: float
    size: float
    angle: float
    flip: bool


@dataclass(frozen=True)
class SubjectPlan:
    element: int  # index into element_library()
    start: Pose
    end: Pose
    reference: Pose  # pose on the white reference canvas


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to render one clip; subjects in manifest (slot) order, ``depth`` = drawing order."""

    id: str
    split: str
    background: int  # index into background_library()
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


def _subject_plan(rng: np.random.Generator, element: int, slot: int, count: int, direction: str) -> SubjectPlan:
    """Subject in the ``slot``-th of ``count`` evenly spaced start slots (left to right), drifting ``direction``."""
    size = rng.uniform(0.4, 0.5)
    flip = bool(rng.integers(2))
    dx, dy = DIRECTIONS[direction]
    x, y = (slot + 1) / (count + 1) + rng.uniform(-0.03, 0.03) - dx * TRAVEL / 2, rng.uniform(0.45, 0.55) - dy * TRAVEL / 2
    start = Pose(x, y, size, rng.uniform(-10, 10), flip)
    end = Pose(x + dx * TRAVEL, y + dy * TRAVEL, size, start.angle, flip)
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
) -> ClipPlan:
    """The plan of clip ``index`` of ``split``; depends only on its arguments (so workers agree)."""
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


# ----------------------------------------------------------------------------------------------- rendering


def _premultiplied(rgba: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 4] -> float32 [h, w, 4] with colour multiplied by alpha (so warps have no dark fringes)."""
    out = rgba.astype(np.float32) / 255
    out[..., :3] *= out[..., 3:]
    return out


def draw(canvas: np.ndarray, sprite: np.ndarray, pose: Pose) -> None:
    """Alpha-composite a premultiplied sprite [h, w, 4] onto ``canvas`` [H, W, 3] in place, at ``pose``."""
    height, width = canvas.shape[:2]
    if pose.flip:
        sprite = sprite[:, ::-1]
    scale = pose.size * min(height, width) / max(sprite.shape[:2])
    centre = ((sprite.shape[1] - 1) / 2, (sprite.shape[0] - 1) / 2)
    matrix = cv2.getRotationMatrix2D(centre, pose.angle, scale)
    matrix[:, 2] += (pose.x * width - centre[0], pose.y * height - centre[1])
    warped = cv2.warpAffine(np.ascontiguousarray(sprite), matrix, (width, height), flags=cv2.INTER_LINEAR)
    canvas *= 1 - warped[..., 3:]
    canvas += warped[..., :3]


def prescaled(rgba: np.ndarray, longest: float) -> np.ndarray:
    """Premultiplied sprite area-downsampled to about ``longest`` px, so warps shrink it by little (no aliasing)."""
    longest = max(4, int(np.ceil(longest)))
    return _premultiplied(_resize_longest(rgba, longest) if longest < max(rgba.shape[:2]) else rgba)


def _lerp(a: Pose, b: Pose, t: float) -> Pose:
    mix = lambda u, v: u + (v - u) * t  # noqa: E731
    return Pose(mix(a.x, b.x), mix(a.y, b.y), mix(a.size, b.size), mix(a.angle, b.angle), a.flip)


def background_canvas(background: int, height: int, width: int, blur: float) -> np.ndarray:
    """Background ``background`` scaled so a ``height x width`` frame covers ``BACKGROUND_VIEW`` of its side and
    low-passed by ``blur`` (Gaussian sigma, output pixels): float32 [Hb, Wb, 3] in [0, 1]."""
    texture = _backgrounds()[background].rgba[..., :3]
    scale = max(height, width) / BACKGROUND_VIEW / BACKGROUND_SIZE
    side = int(np.ceil(BACKGROUND_SIZE * scale))
    canvas = cv2.resize(texture, (side, side), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    canvas = canvas.astype(np.float32) / 255
    return cv2.GaussianBlur(canvas, (0, 0), blur) if blur > 0 else canvas


def window(canvas: np.ndarray, fx: float, fy: float, height: int, width: int) -> np.ndarray:
    """A sub-pixel crop [height, width, 3] whose top-left corner is at fractions (fx, fy) of the free range."""
    x = fx * (canvas.shape[1] - width)
    y = fy * (canvas.shape[0] - height)
    matrix = np.array([[1, 0, -x], [0, 1, -y]], np.float32)
    return cv2.warpAffine(canvas, matrix, (width, height), flags=cv2.INTER_LINEAR)


def render_clip(plan: ClipPlan) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render a plan: the video ``uint8 [F, H, W, 3]`` and its references, each ``uint8 [H, W, 3]`` (the plan's
    subjects in order, then the background when it is a reference)."""
    height, width = plan.height, plan.width
    background = background_canvas(plan.background, height, width, plan.background_blur)
    sprites = [
        prescaled(_elements()[s.element].rgba, max(s.start.size, s.end.size) * min(height, width))
        for s in plan.subjects
    ]
    video = np.empty((plan.frames, height, width, 3), np.uint8)
    x0, y0, x1, y1 = plan.pan
    for f in range(plan.frames):
        t = f / max(1, plan.frames - 1)
        frame = window(background, x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, height, width)
        for i in plan.depth:
            draw(frame, sprites[i], _lerp(plan.subjects[i].start, plan.subjects[i].end, t))
        video[f] = np.clip(frame * 255 + 0.5, 0, 255).astype(np.uint8)
    references = []
    for subject in plan.subjects:
        canvas = np.ones((height, width, 3), np.float32)
        sprite = prescaled(_elements()[subject.element].rgba, subject.reference.size * min(height, width))
        draw(canvas, sprite, subject.reference)
        references.append(canvas)
    if plan.background_reference:
        references.append(window(background, x0, y0, height, width))  # the clean plate of frame 0
    return video, [np.clip(r * 255 + 0.5, 0, 255).astype(np.uint8) for r in references]


def _record(plan: ClipPlan) -> dict:
    """The manifest record of a plan; references are its subjects, then the background when it is one."""
    ordered = [_elements()[s.element] for s in plan.subjects]
    if plan.background_reference:
        ordered.append(_backgrounds()[plan.background])
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
        "background": _backgrounds()[plan.background].name,
        "split": plan.split,
    }


def _write_clip(job: tuple[str, ClipPlan]) -> dict:
    out_dir, plan = job
    cv2.setNumThreads(1)
    video, references = render_clip(plan)
    record = _record(plan)
    write_video(Path(out_dir) / record["video"], video, fps=plan.fps, threads=1)
    for ref, image in zip(record["references"], references):
        save_image(Path(out_dir) / ref["path"], image)
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
) -> dict:
    """Render the world into ``out_dir``; returns ``dict(train=path, heldout=path, world=path, num_train,
    num_heldout)``. ``max_elements`` caps the references per clip (subjects plus the optional background);
    ``background_ref_prob`` is the share of clips whose background is a reference; ``background_blur`` the
    background's low-pass (Gaussian sigma in output pixels, 0 = none).

    ``workers`` > 1 renders in spawned processes (each pays a few seconds of imports); output is identical for
    any worker count. At the default 64x64 size one process already does about 15-20 clips/s.
    """
    if height % 2 or width % 2 or frames < 1 or max_elements < 1:
        raise ValueError(
            f"need even height/width, frames >= 1, max_elements >= 1; got {height}x{width}, {frames}, {max_elements}"
        )
    if num_heldout and max_elements < 2:
        raise ValueError("a held-out split needs max_elements >= 2 (it is made of held-out subject pairs)")
    out_dir = Path(out_dir)
    for sub in ("clips", "refs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    pairs = heldout_pairs(seed, heldout_fraction)
    settings = dict(frames=frames, height=height, width=width, fps=fps, max_elements=max_elements,
                    background_blur=background_blur)
    plans = [
        plan_clip(i, "train", seed, pairs, background_ref_prob=background_ref_prob, **settings)
        for i in range(num_clips)
    ] + [
        plan_clip(i, "heldout", seed, pairs, background_ref_prob=background_ref_prob, **settings)
        for i in range(num_heldout)
    ]
    jobs = [(str(out_dir), plan) for plan in plans]
    bar = dict(total=len(jobs), desc="synth clips", disable=not progress)
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            records = list(tqdm(pool.imap(_write_clip, jobs, chunksize=4), **bar))
    else:
        records = [_write_clip(job) for job in tqdm(jobs, **bar)]
    paths = {"train": out_dir / "train.jsonl", "heldout": out_dir / "heldout.jsonl", "world": out_dir / "world.json"}
    _write_jsonl(paths["train"], records[:num_clips])
    _write_jsonl(paths["heldout"], records[num_clips:])
    world = dict(settings, seed=seed, heldout_fraction=heldout_fraction, background_ref_prob=background_ref_prob,
                 heldout_pairs=[[_elements()[a].name, _elements()[b].name] for a, b in pairs],
                 elements=[e.name for e in _elements()], backgrounds=[b.name for b in _backgrounds()])
    write_json_atomic(paths["world"], world, indent=2)
    return {**{k: str(v) for k, v in paths.items()}, "num_train": num_clips, "num_heldout": num_heldout}


def synth_command(argv: list[str]) -> int:
    """``e2v data synth --out DIR [--clips N] ...``: render the synthetic world; returns the exit status."""
    parser = argparse.ArgumentParser(prog="e2v data synth", description=synthesize_world.__doc__)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--clips", type=int, default=300, help="training clips")
    parser.add_argument("--heldout", type=int, default=30, help="held-out clips (unseen subject pairs)")
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--max-elements", type=int, default=3, help="max references per clip")
    parser.add_argument("--background-ref-prob", type=float, default=0.5,
                        help="share of clips whose background is a reference")
    parser.add_argument("--background-blur", type=float, default=0.5,
                        help="background low-pass, Gaussian sigma in output pixels (0 = none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes (pays off for big frames)")
    from e2v.databuild.raw_synth import add_raw_arguments, raw_command

    add_raw_arguments(parser)
    args = parser.parse_args(argv)
    if args.raw:
        return raw_command(args)
    result = synthesize_world(
        args.out, num_clips=args.clips, num_heldout=args.heldout, frames=args.frames, height=args.height,
        width=args.width, fps=args.fps, max_elements=args.max_elements, seed=args.seed, workers=args.workers,
        background_ref_prob=args.background_ref_prob, background_blur=args.background_blur,
    )
    print(json.dumps(result, indent=2))
    return 0
