"""A build scored against the raw world's truth (``e2v data synth --raw``): shot boundaries, subject boxes,
reference identities and rejections.

- shot F1: predicted cuts within ``tolerance`` frames of a true cut (one-to-one), over the readable videos;
- subject recall: true subjects of the shots that should give a clip, found by an element of that shot's
  manifest clip whose boxes overlap theirs with median IoU >= 0.5 over the clip's frames (a wrongly rejected or
  wrongly deduplicated clip misses all);
- cross-clip identity accuracy: references taken from another clip whose element is the same true identity as the
  element it stands for (both matched to truth by the IoU rule);
- caption direction accuracy: kept clips of shots whose subjects drift (not near-still) whose caption names the
  drift's direction (the clip's ``direction``: against the background, the camera's motion taken out). Pans are
  left out: their subjects drift in the frame while the camera pans, so against the background they also move with
  the pan, often more than they drift;
- reference colour match: histogram intersection (0..1) between each subject reference's non-white pixels, at the
  tiny recipe's 32 px, and its true identity's sprite (how faithfully the crops carry the colours a model learns
  to copy; the world's own rendered references reach 0.73 at 192 px);
- rejections: for each true shot kind, what the build did with it.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch

from e2v import synth
from e2v.bench.pixel_metrics import WHITE, colour_histogram
from e2v.databuild.elements import box_iou
from e2v.databuild.shots import cut_positions
from e2v.databuild.video import WORK

CROP = re.compile(r"crops/(?P<clip>.+)_e(?P<index>\d+)(_aug|_turned)?\.png$")


def _cut_matches(predicted: list[int], truth: list[int], tolerance: int) -> int:
    free, hits = list(truth), 0
    for cut in predicted:
        near = [t for t in free if abs(t - cut) <= tolerance]
        if near:
            free.remove(min(near, key=lambda t: abs(t - cut)))
            hits += 1
    return hits


def _element_identity(clip: dict, element: dict, shot: dict) -> str | None:
    """The true identity whose boxes the element's match (median IoU >= 0.5), else None."""
    best, best_iou = None, 0.5
    for subject in shot["subjects"]:
        ious = []
        for frame, box in zip(clip["source_frames"], element["boxes"]):
            truth_box = subject["boxes"][frame - shot["start"]] if frame - shot["start"] < len(subject["boxes"]) else None
            if truth_box is not None:
                ious.append(box_iou(tuple(box), tuple(truth_box)) if box is not None else 0.0)
        if ious and float(np.median(ious)) >= best_iou:
            best, best_iou = subject["identity"], float(np.median(ious))
    return best


def _colour_histogram(rgb: np.ndarray, keep: np.ndarray) -> torch.Tensor:
    return colour_histogram(torch.from_numpy(rgb[keep].astype(np.float32) / 255))


@functools.cache
def _sprite_histogram(identity: str) -> torch.Tensor:
    sprite = next(e.rgba for e in synth.element_library() if e.name == identity)
    return _colour_histogram(sprite[..., :3], sprite[..., 3] > 127)


def reference_colour_match(path: Path, identity: str, size: int = 32) -> float:
    """Histogram intersection between the reference image at ``path``, longest side ``size`` px, without its white
    canvas, and the sprite of the world's element ``identity``."""
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    scale = size / max(image.shape[:2])
    image = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                       interpolation=cv2.INTER_AREA)
    reference = _colour_histogram(image, ~(image > WHITE * 255).all(axis=2))
    return torch.minimum(reference, _sprite_histogram(identity)).sum().item()


def score_build(out: str | Path, raw: str | Path, tolerance: int = 2) -> dict:
    """Scores of the build in ``out`` against the truth in ``raw`` (see the module docstring)."""
    out, raw = Path(out), Path(raw)
    results = {r["name"]: r for r in (json.loads(p.read_text()) for p in (out / WORK).glob("*.json"))}
    records = [json.loads(line) for split in ("train", "heldout") if (out / f"{split}.jsonl").is_file()
               for line in (out / f"{split}.jsonl").read_text().splitlines()]
    in_manifest = {r["id"] for r in records}
    cut_hits = cut_predicted = cut_true = 0
    recall_hits = recall_total = 0
    directions: list[bool] = []
    outcomes: dict[str, Counter] = defaultdict(Counter)
    identity: dict[str, str | None] = {}  # clip id + element index -> true identity
    for truth_file in sorted((raw / "truth").glob("*.json")):
        truth = json.loads(truth_file.read_text())
        result = results.get(Path(truth["video"]).name)
        if result is None:
            continue
        if "shots" not in truth:
            outcomes[f"video:{truth['expect']}"][result["reason"] or "keep"] += 1
            continue
        predicted = cut_positions(result["shots"])
        true_cuts = [s["start"] for s in truth["shots"][1:]]
        cut_hits += _cut_matches(predicted, true_cuts, tolerance)
        cut_predicted, cut_true = cut_predicted + len(predicted), cut_true + len(true_cuts)
        for shot in truth["shots"]:
            cut = [c for c in result["clips"] if shot["start"] <= c["source_frames"][0] < shot["end"]]
            rejected = [c for c in result["rejected_clips"] if "start" in c and shot["start"] <= c["start"] < shot["end"]]
            inside = [c for c in cut if c["id"] in in_manifest]
            outcome = ("keep" if inside else "near_duplicate") if cut else (rejected[0]["reason"] if rejected
                                                                              else "too_short")
            outcomes[shot["kind"]][outcome] += 1
            for clip in cut:
                for n, element in enumerate(clip["elements"]):
                    identity[f"{clip['id']}#{n}"] = _element_identity(clip, element, shot)
            if shot["expect"] != "keep":
                continue
            if not shot["near_still"] and shot["kind"] != "pan":
                directions += [c.get("direction") == shot["direction"] for c in inside]
            for subject in shot["subjects"]:
                recall_total += 1
                recall_hits += any(_element_identity(c, e, {**shot, "subjects": [subject]}) for c in inside
                                   for e in c["elements"])
    checked = correct = unmatched = 0
    sources, colour_match = Counter(), []
    for record in records:
        for n, ref in enumerate(r for r in record["references"] if r["kind"] != "background"):
            sources[ref["ref_source"]] += 1
            target = identity.get(f"{record['id']}#{n}")
            if target is not None:
                colour_match.append(reference_colour_match(out / ref["path"], target))
            if ref["ref_source"] != "cross_clip":
                continue
            match = CROP.search(ref["path"])
            source = identity.get(f"{match['clip']}#{match['index']}")
            if target is None or source is None:
                unmatched += 1
                continue
            checked += 1
            correct += target == source
    precision = cut_hits / cut_predicted if cut_predicted else 1.0
    recall = cut_hits / cut_true if cut_true else 1.0
    return {
        "shot_f1": round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
        "shot_precision": round(precision, 4), "shot_recall": round(recall, 4),
        "subject_recall": round(recall_hits / recall_total, 4) if recall_total else None,
        "subjects": recall_total,
        "cross_clip_identity_accuracy": round(correct / checked, 4) if checked else None,
        "cross_clip_checked": checked, "cross_clip_unmatched": unmatched,
        "caption_direction_accuracy": round(float(np.mean(directions)), 4) if directions else None,
        "directions_checked": len(directions),
        "reference_sources": dict(sources),
        "reference_colour_match": round(float(np.mean(colour_match)), 4) if colour_match else None,
        "outcomes": {kind: dict(counter) for kind, counter in sorted(outcomes.items())},
    }
