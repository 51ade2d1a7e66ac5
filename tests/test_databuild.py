"""``e2v data build`` on the raw synthetic world: stages against truth, the manifest, resume, shards, duplicates."""

from __future__ import annotations

import dataclasses
import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from e2v import registry
from e2v.databuild import raw_synth
from e2v.databuild.build import BuildError, list_videos, merge, run_videos
from e2v.databuild.captions import colour_name, with_article
from e2v.databuild.config import BuildConfig, load_config
from e2v.databuild.elements import box_iou, link_tracks
from e2v.databuild.identity import group_identities
from e2v.databuild.quality import luma
from e2v.databuild.stages import ClipContext
from e2v.databuild.truth import reference_colour_match, score_build
from e2v.datamodules.manifest import validate_manifest


# the raw world's own settings (its still camera and moving sprites: the motion segmenter; its pans rejected)
WORLD_FILE = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "build.yaml"
WORLD = load_config(WORLD_FILE)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    raw_synth.synthesize_raw(out, videos=4, shots=(5, 7), heldout=2, seed=3, progress=False)
    return out


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built")
    run_videos(raw / "videos", out, WORLD, progress=False)
    merge(out, WORLD)
    return out


def _results(out: Path) -> dict:
    """Per-video results without their timings."""
    found = {}
    for path in sorted((out / "work").glob("*.json")):
        result = json.loads(path.read_text())
        result.pop("seconds")
        found[path.name] = result
    return found


def _shot(kind: str, seed: int = 0) -> raw_synth.ShotPlan:
    rng = np.random.default_rng(seed)
    return raw_synth.plan_shot(rng, kind, [0, 9, 12], set(), -1, count=2)


def test_raw_world_truth_describes_its_videos(raw):
    from e2v.datamodules.video_io import probe_video

    truth = json.loads((raw / "truth" / "video_0000.json").read_text())
    assert probe_video(raw / truth["video"])["frames"] == truth["frames"] == truth["shots"][-1]["end"]
    starts = [s["start"] for s in truth["shots"]]
    assert starts == sorted(starts) and starts[0] == 0
    shot = next(s for s in truth["shots"] if s["kind"] == "normal")
    box = shot["subjects"][0]["boxes"][0]
    assert 0 <= box[0] < box[2] <= truth["width"] and 0 <= box[1] < box[3] <= truth["height"]
    report = validate_manifest(raw / "direct" / "train.jsonl", frames=raw_synth.CLIP_FRAMES)
    assert report.good and not report.bad


def test_raw_world_heldout_count_changes_nothing_else(tmp_path):
    """A larger evaluation set (``heldout``) keeps the videos and the direct training triplets byte for byte."""
    for count in (1, 3):
        raw_synth.synthesize_raw(tmp_path / str(count), videos=2, shots=(3, 3), heldout=count, progress=False)
    for name in ["direct/train.jsonl"] + [f"videos/{p.name}" for p in (tmp_path / "1" / "videos").glob("*.mp4")]:
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "3" / name).read_bytes(), name
    held = [(tmp_path / str(c) / "direct" / "heldout.jsonl").read_text().splitlines() for c in (1, 3)]
    assert len(held[1]) == 3 and held[1][:1] == held[0]


def test_raw_world_subjects_stay_apart_in_the_clip_then_leave_the_frame():
    """What motion segmentation needs: two subjects never touch while the clip runs (the segmenter joins regions
    within 2 px, so 5 px apart at 96 px), and the shot ends on empty background (most of it, so the median is the
    plate)."""
    rng = np.random.default_rng(1)
    for _ in range(12):
        plan = raw_synth.plan_shot(rng, "normal", list(range(18)), set(), -1, count=2)
        _, boxes, _ = raw_synth.render_shot(plan, 96, 96)
        left, right = boxes
        assert all(right[f][0] - left[f][2] >= 5 for f in range(raw_synth.SPAN))
        empty = [f for f in range(plan.frames) if left[f] is None and right[f] is None]
        assert raw_synth.SPAN < empty[0] <= raw_synth.SPAN + raw_synth.EXIT_FRAMES
        assert empty == list(range(empty[0], plan.frames))
        assert len(empty) > plan.frames / 2


@pytest.mark.parametrize("kind", ["black", "static", "flash", "blur", "pan"])
def test_each_filter_rejects_its_shot_kind_and_passes_a_normal_shot(kind):
    names = {"flash": "flashing", "blur": "blurred", "pan": {"name": "camera_motion", "max_motion": 0.003}}
    check = registry.build("quality_filter", names.get(kind, kind))
    clip = lambda plan: raw_synth.render_shot(plan, 64, 64)[0][: raw_synth.SPAN : 2]  # noqa: E731
    assert not check.check(clip(_shot(kind)))[0]
    assert check.check(clip(_shot("normal")))[0]


def test_black_filter_keeps_a_lit_subject_on_black_and_rejects_a_fade():
    """A small bright globe on black (mean luma ~9, like a night-side earth) is a shot; a frame fading to black with
    noise is not; a clip passing on its mean before passes still (its brightest pixels are at least its mean)."""
    black = registry.build("quality_filter", "black")
    yy, xx = np.mgrid[:64, :64]
    globe = np.zeros((6, 64, 64, 3), np.uint8)
    globe[:, (yy - 32) ** 2 + (xx - 32) ** 2 < 9 ** 2] = (60, 90, 200)
    assert luma(globe).mean() < black.min_luma and black.check(globe)[0]
    fade = np.random.default_rng(0).integers(0, 6, (6, 64, 64, 3)).astype(np.uint8)
    assert not black.check(fade)[0]
    assert black.check(np.full((6, 64, 64, 3), 13, np.uint8))[0]


def test_plate_and_motion_segmentation_recover_the_truth():
    plan = _shot("normal", seed=5)
    video, boxes, clean = raw_synth.render_shot(plan, 64, 64)
    plate_stage = registry.build("plate_estimator", "median")
    detector = registry.build("element_detector", "motion")
    rough = plate_stage.estimate(video, None)
    masks = np.stack([np.any([d.mask for d in found], axis=0) if found else np.zeros((64, 64), bool)
                      for found in detector.detect(video, rough)])
    plate = plate_stage.estimate(video, masks)
    error = np.abs(plate.astype(float) - clean.astype(float)).mean()
    assert error < np.abs(rough.astype(float) - clean.astype(float)).mean() + 1e-9 and error < 4.0
    tracks = link_tracks(detector.detect(video[: raw_synth.SPAN], plate), 64)
    assert len(tracks) == len(plan.subjects)
    for track, truth in zip(tracks, boxes):  # both ordered by first-frame x
        ious = [box_iou(track.detections[f].box, truth[f]) for f in track.frames if truth[f] is not None]
        assert np.median(ious) >= 0.5


def test_motion_mask_leaves_a_ring_open_but_fills_a_face_like_its_wall():
    rng = np.random.default_rng(0)
    plate = (rng.integers(100, 140, (96, 96, 3))).astype(np.uint8)  # a grey, textured wall
    yy, xx = np.mgrid[:96, :96]
    radius = np.hypot(yy - 48, xx - 48)
    ring = plate.copy()
    ring[(radius < 30) & (radius >= 14)] = (240, 120, 0)  # an orange ring: the wall shows through its hole
    face = ring.copy()
    face[radius < 14] = plate[radius < 14] + 20  # a face whose middle is only a little lighter than the wall
    detector = registry.build("element_detector", "motion")
    ring_mask, face_mask = detector.frame_mask(ring, plate), detector.frame_mask(face, plate)
    assert not ring_mask[radius < 12].any() and ring_mask[(radius < 28) & (radius >= 16)].all()
    assert face_mask[radius < 28].all()


def test_identity_grouping_joins_close_embeddings():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 16)
    points = np.concatenate([centres[i] + 0.05 * rng.normal(size=(3, 16)) for i in range(4)])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    labels = group_identities(points, threshold=0.3)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_two_elements_of_one_clip_are_never_one_identity():
    """POOR (OpenCV's vtest.avi): two dark walkers in one shot looked alike to the appearance embedding, were one
    identity, and both of the clip's references were the same crop of one of them. Walkers A and B in two clips,
    all four within the threshold of each other, A nearer A and B nearer B: two identities, one per clip each."""
    base = np.eye(16)[0]
    a, b = base + 0.15 * np.eye(16)[1], base + 0.15 * np.eye(16)[2]
    points = np.stack([a, b, a + 0.03 * np.eye(16)[3], b + 0.03 * np.eye(16)[4]])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    assert group_identities(points, threshold=0.12).tolist() == [0, 0, 0, 0]  # alike: one identity, unconstrained
    assert group_identities(points, threshold=0.12, apart=["clip1", "clip1", "clip2", "clip2"]).tolist() == [0, 1, 0, 1]


def test_rgb_to_hsv_equals_colorsys_on_every_row():
    import colorsys

    from e2v.databuild.captions import rgb_to_hsv

    rng = np.random.default_rng(0)
    pixels = np.concatenate([rng.uniform(0, 1, (500, 3)), np.round(rng.uniform(0, 1, (200, 3)) * 4) / 4,
                             np.zeros((1, 3)), np.ones((1, 3))])  # ties between channels, black, white
    expected = np.array([colorsys.rgb_to_hsv(*px) for px in pixels.tolist()])
    assert np.allclose(rgb_to_hsv(pixels), expected, atol=1e-9)


def test_faces_are_grouped_by_their_face_descriptor_apart_from_objects():
    from e2v.databuild.build import identity_labels
    from e2v.databuild.video import encode_vector

    same_look = encode_vector(np.eye(8)[0])
    faces = [encode_vector(np.eye(8)[i]) for i in (1, 1, 2)]
    elements = [{"embedding": same_look}, {"embedding": same_look}] + [
        {"embedding": same_look, "face_embedding": face} for face in faces]
    labels = identity_labels(elements, BuildConfig()).tolist()
    assert labels == [0, 0, 1, 1, 2]  # objects by appearance; faces by descriptor, although they look alike


def test_appearance_embedding_matches_a_mirrored_view_over_another_element():
    from e2v.synth import element_library

    embedder = registry.build("element_embedder", "appearance")
    crops = []
    for index in (0, 12):  # astronaut, red disc
        rgba = element_library()[index].rgba
        crops.append(np.where(rgba[..., 3:] > 127, rgba[..., :3], 255).astype(np.uint8))
    vectors = embedder.embed([crops[0], crops[0][:, ::-1].copy(), crops[1]])
    assert vectors[0] @ vectors[1] > 0.99 and vectors[0] @ vectors[2] < 0.8


def test_captioners_template_and_sidecar(tmp_path):
    context = ClipContext(np.zeros((1, 4, 4, 3), np.uint8), [{"kind": "object", "colour": "red"},
                                                             {"kind": "face", "colour": "orange"}],
                          "left", "a green background", str(tmp_path / "v.mp4"), shot=1)
    template = registry.build("captioner", "template")
    assert template.caption(context) == "a red object and a person move left across a green background"
    context.elements[0]["colour"] = "orange"
    assert template.caption(context) == "an orange object and a person move left across a green background"
    assert with_article("orange background") == "an orange background"  # LivePortrait's d9.mp4 had "a orange"
    context.elements = [{"kind": "human"}, {"kind": "face"}, {"kind": "object", "colour": "grey"}]
    assert template.caption(context) == "two people and a grey object move left across a green background"
    context.elements = [{"kind": "object", "colour": "grey"}, {"kind": "object", "colour": "grey"}]
    assert template.caption(context) == "two grey objects move left across a green background"
    sidecar = registry.build("captioner", "sidecar")
    assert sidecar.caption(context) is None
    (tmp_path / "v.json").write_text(json.dumps({"shots": ["first shot", "second shot"]}))
    assert sidecar.caption(context) == "second shot"  # by the detected shot's index
    timed = [{"start": 0.0, "end": 2.0, "caption": "early"}, {"start": 2.0, "end": 4.0, "caption": "late"}]
    (tmp_path / "v.json").write_text(json.dumps({"shots": timed}))
    assert sidecar.caption(context) == "early"  # by the clip's start time (0 s)
    context.time = 2.5
    assert sidecar.caption(context) == "late"
    (tmp_path / "v.json").write_text(json.dumps({"shots": [{"start": 0.0, "caption": "no end"}]}))
    with pytest.raises(ValueError, match="start, end"):
        sidecar.caption(context)
    (tmp_path / "v.json").write_text("{not json")
    with pytest.raises(ValueError, match="v.json"):
        sidecar.caption(context)
    (tmp_path / "v.txt").write_text("one caption for the video\n")
    assert sidecar.caption(context) == "one caption for the video"
    assert colour_name(np.full((2, 2, 3), (200, 30, 30), np.uint8)) == "red"
    lawn_and_bricks = np.concatenate([np.full((11, 10, 3), (40, 130, 60)), np.full((9, 10, 3), (170, 40, 40))])
    assert colour_name(lawn_and_bricks.astype(np.uint8)) == "green"  # most of it; its mean colour is a yellow
    assert colour_name(np.full((2, 2, 3), (45, 8, 5), np.uint8)) == "dark red"  # a dim red room, no black one
    assert colour_name(np.full((2, 2, 3), (12, 10, 10), np.uint8)) == "black"


def test_an_element_is_named_by_its_pixels_unlike_the_plate_not_by_the_background_its_mask_took_in():
    from e2v.databuild.video import element_colour

    rng = np.random.default_rng(0)
    grass = np.clip(rng.normal((50, 140, 60), 12, (64, 64, 3)), 0, 255).astype(np.uint8)  # the plate: a green bank
    frame = grass.copy()
    frame[22:42, 22:42] = (150, 150, 160)  # a grey subject, 400 px
    mask = np.zeros((64, 64), bool)
    mask[14:50, 14:50] = True  # its mask took a ring of grass too: 896 px
    assert colour_name(frame[mask]) == "green"  # what the crop's pixels say
    assert element_colour(frame, mask, grass) == "grey"
    assert element_colour(frame, mask, frame) == "green"  # the subject stood still in the plate: all of the mask
    assert element_colour(frame, np.zeros((64, 64), bool), grass) is None


def test_a_detection_without_a_mask_is_named_by_its_box(tmp_path):
    """A box-only detection's colour comes from the pixels in its box (what its crop shows), not the whole frame."""
    from e2v.databuild.elements import Track
    from e2v.databuild.stages import Detection
    from e2v.databuild.video import _element

    plate = np.full((64, 64, 3), (50, 140, 60), np.uint8)
    frame = plate.copy()
    frame[20:36, 20:36] = (150, 150, 160)  # the detected grey subject
    frame[40:64, :] = (200, 30, 30)  # something red and bigger moves elsewhere in the frame
    track = Track([Detection((20, 20, 36, 36))] * 3)
    element, _ = _element(track, np.stack([frame] * 3), plate, "c", 0, tmp_path, BuildConfig())
    assert element["colour"] == "grey"


def test_sidecar_captions_reach_the_manifest(raw, tmp_path):
    shutil.copytree(raw / "truth", tmp_path / "raw" / "truth")
    (tmp_path / "raw" / "videos").mkdir()
    shutil.copy(raw / "videos" / "video_0003.mp4", tmp_path / "raw" / "videos")
    assert raw_synth.write_sidecars(tmp_path / "raw") == 4  # one per truth file of a real video
    run_videos(tmp_path / "raw" / "videos", tmp_path / "out", WORLD, progress=False)
    records = merge(tmp_path / "out", WORLD).records["train"]
    truth = json.loads((raw / "truth" / "video_0003.json").read_text())
    for record in records:
        first = record["source"]["frames"][0]
        shot = next(s for s in truth["shots"] if s["start"] <= first < s["end"])
        assert record["caption"] == shot["caption"] and record["caption_source"] == "sidecar"
    assert records


def test_build_meets_the_truth(raw, built):
    scores = score_build(built, raw)
    assert scores["shot_f1"] >= 0.95
    assert scores["subject_recall"] >= 0.85
    # (people seen in grey take no cross-clip reference from the appearance proxy: 9 here, 10 or more before)
    assert scores["cross_clip_identity_accuracy"] >= 0.9 and scores["cross_clip_checked"] >= 8
    assert 0.4 <= scores["reference_colour_match"] <= 1
    assert scores["caption_direction_accuracy"] >= 0.7 and scores["directions_checked"] >= 5
    outcomes = scores["outcomes"]
    for reason in ("corrupt", "too_short", "too_small", "odd_fps"):  # one bad video never stops a build
        assert outcomes[f"video:{reason}"] == {reason: 1}


def test_reference_colour_match_tells_identities_apart(raw):
    """The world's own rendered references match their own element's colours best of all elements (a few faces
    and greys are close calls), and well."""
    from e2v import synth

    names = [e.name for e in synth.element_library()]
    records = [json.loads(line) for line in (raw / "direct" / "train.jsonl").read_text().splitlines()]
    refs = [ref for r in records for ref in r["references"] if ref["kind"] != "background"][:16]
    best, own = 0, []
    for ref in refs:
        scores = {name: reference_colour_match(raw / "direct" / ref["path"], name) for name in names}
        best += max(scores, key=scores.get) == ref["element"]
        own.append(scores[ref["element"]])
    assert best >= 0.8 * len(refs) and np.mean(own) >= 0.6


def test_manifest_is_a_valid_triplet_manifest(built):
    report = validate_manifest(built / "train.jsonl", frames=17, fps=8.0)
    heldout = validate_manifest(built / "heldout.jsonl", frames=17, fps=8.0)  # every 10th clip (heldout_every)
    assert len(report.good) + len(heldout.good) >= 15 and not report.bad and not heldout.bad
    records = [json.loads(line) for line in (built / "train.jsonl").read_text().splitlines()]
    for record in records:
        kinds = [r["kind"] for r in record["references"]]
        assert kinds[-1] == "background" and 2 <= len(kinds) <= 3
        assert all(r["ref_source"] in ("cross_clip", "same_clip") for r in record["references"])
        assert record["caption"] and record["elements"]
    cross = [r for rec in records for r in rec["references"] if r["ref_source"] == "cross_clip"]
    assert cross and all(r["source_clip"] != rec["id"] for rec in records for r in rec["references"]
                         if r["ref_source"] == "cross_clip")
    assert all(re.search(r"_e\d+\.png$", r["path"]) for r in cross)  # the source crop as cut (reference_turn 0)


def test_reference_turn_turns_cross_clip_references(raw, tmp_path):
    (tmp_path / "videos").mkdir()
    shutil.copy(raw / "videos" / "video_0003.mp4", tmp_path / "videos")
    config = dataclasses.replace(WORLD, reference_turn=15.0)
    run_videos(tmp_path / "videos", tmp_path / "out", config, progress=False)
    records = merge(tmp_path / "out", config).records["train"]
    cross = [r["path"] for rec in records for r in rec["references"] if r["ref_source"] == "cross_clip"]
    assert cross and all(path.endswith("_turned.png") for path in cross)
    for path in cross:
        turned, crop = (cv2.imread(str(tmp_path / "out" / p)) for p in (path, path.replace("_turned", "")))
        assert turned.shape == crop.shape and np.abs(turned.astype(int) - crop).mean() > 5


def test_crops_drop_the_blended_rim_but_keep_thin_elements_whole():
    from e2v.databuild.video import crop_on_white

    frame = np.full((40, 40, 3), (0, 200, 0), np.uint8)  # green background
    frame[10:30, 10:30] = (200, 0, 0)  # a red element
    mask = np.zeros((40, 40), bool)
    mask[9:31, 9:31] = True  # one pixel too wide all round: a green rim, as motion masks have
    green = lambda crop: int(((crop[..., 1] > 150) & (crop[..., 0] < 100)).sum())  # noqa: E731
    red = lambda crop: int(((crop[..., 0] > 150) & (crop[..., 1] < 100)).sum())  # noqa: E731
    assert green(crop_on_white(frame, mask, (9, 9, 31, 31), erode=0)) == 22 * 22 - 20 * 20
    rimless = crop_on_white(frame, mask, (9, 9, 31, 31), erode=1)
    assert green(rimless) == 0 and red(rimless) == 20 * 20
    line = np.zeros((40, 40), bool)
    line[5:35, 19:22] = True  # 3 px wide: erosion would take two thirds of it, so it is kept whole
    frame[line] = (200, 0, 0)
    kept = crop_on_white(frame, line, (19, 5, 22, 35), erode=1)
    assert np.array_equal(kept, crop_on_white(frame, line, (19, 5, 22, 35), erode=0)) and red(kept) > 0


def test_rebuild_is_idempotent(raw, built):
    before = (built / "train.jsonl").read_text()
    counts = run_videos(raw / "videos", built, WORLD, progress=False)
    assert counts["processed"] == 0 and counts["resumed"] == counts["listed"]
    merge(built, WORLD)
    assert (built / "train.jsonl").read_text() == before


def test_shards_merged_equal_one_run(raw, built, tmp_path):
    for index in range(2):
        run_videos(raw / "videos", tmp_path / f"shard{index}", WORLD, shard=(index, 2), progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "e2v.cli", "data", "merge", str(tmp_path / "merged"), "--from",
                           str(tmp_path / "shard0"), str(tmp_path / "shard1"), "--videos", str(raw / "videos"),
                           "--config", str(WORLD_FILE)],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "merged" / "train.jsonl").read_text() == (built / "train.jsonl").read_text()
    assert _results(tmp_path / "merged") == _results(built)
    page = (tmp_path / "merged" / "report.html").read_text()
    report = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert "<img src='report/" in page and report["counts"]["records"]["train"] == len(
        (built / "train.jsonl").read_text().splitlines())
    assert sorted(r["reason"] for r in report["rejected_videos"]) == ["corrupt", "odd_fps", "too_short", "too_small"]
    assert report["throughput"]["clips_per_minute_per_core"] > 0
    incomplete = subprocess.run([sys.executable, "-m", "e2v.cli", "data", "merge", str(tmp_path / "shard0"),
                                 "--videos", str(raw / "videos"), "--config", str(WORLD_FILE)],
                                capture_output=True, text=True, env=env)
    assert incomplete.returncode == 2 and "not built yet" in incomplete.stderr


def test_killed_build_resumes_to_the_same_manifest(raw, built, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "e2v.cli", "data", "build", "--videos", str(raw / "videos"), "--out", str(out),
               "--config", str(WORLD_FILE), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not list((out / "work").glob("*.json")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(list((out / "work").glob("*.json")))
    assert 1 <= done_before < len(list_videos(raw / "videos")), "the kill came too late to test a resume"
    finished = subprocess.run(command, capture_output=True, text=True, env=env)
    assert finished.returncode == 0, finished.stderr
    assert f"{done_before} already done" in finished.stdout
    assert (out / "train.jsonl").read_text() == (built / "train.jsonl").read_text()
    assert not list(out.rglob(".*.tmp*"))


def test_a_reupload_is_removed_as_near_duplicate(raw, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(raw / "videos" / "video_0001.mp4", videos / "a.mp4")
    shutil.copy(raw / "videos" / "video_0001.mp4", videos / "b_reupload.mp4")
    run_videos(videos, tmp_path / "out", WORLD, progress=False)
    merged = merge(tmp_path / "out", WORLD)
    ids = [r["id"] for r in merged.records["train"]]
    assert ids and all(i.startswith("a-") for i in ids)
    assert merged.counts["clips_rejected"]["near_duplicate"] == len(ids)


def test_bad_settings_and_inputs_fail_before_any_video(tmp_path):
    config = tmp_path / "build.yaml"
    for text, expected in (("frames: 16", "frames must be 4k\\+1"), ("colour: 3", "unknown key\\(s\\) \\['colour'\\]"),
                           ("fps: fast", "fps"), ("shot_detector: {name: nope}", "shot_detector: .*nope"),
                           ("filters: [{name: black, min_luma: dark}]", "filters: .*min_luma")):
        config.write_text(text)
        with pytest.raises(ValueError, match=expected):
            load_config(config)
    with pytest.raises(BuildError, match="holds no videos"):
        list_videos(tmp_path)
    done = subprocess.run([sys.executable, "-m", "e2v.cli", "data", "build", "--videos", str(tmp_path / "none"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert done.returncode == 2 and "neither a folder nor a list file" in done.stderr


class _Exploding:
    def detect(self, frames, plate):
        raise RuntimeError("detector crashed")


def test_a_crashing_stage_or_missing_file_fails_only_its_video(raw, tmp_path, monkeypatch):
    monkeypatch.setitem(registry._ENTRIES["element_detector"], "exploding",
                        registry.Entry("element_detector", "exploding", _Exploding, "test"))
    listing = tmp_path / "videos.txt"
    listing.write_text(f"{raw / 'videos' / 'video_0002.mp4'}\nmissing.mp4\n{raw / 'videos' / 'broken_fps.mp4'}\n")
    config = BuildConfig(element_detector="exploding")
    counts = run_videos(listing, tmp_path / "out", config, progress=False)
    assert counts["processed"] == 3
    results = {r["name"]: r for r in (json.loads(p.read_text()) for p in (tmp_path / "out" / "work").glob("*.json"))}
    assert results["missing.mp4"]["reason"] == "missing"
    assert results[str(raw / "videos" / "broken_fps.mp4")]["reason"] == "odd_fps"
    crashed = results[str(raw / "videos" / "video_0002.mp4")]
    assert crashed["reason"] == "error" and "RuntimeError: detector crashed" in crashed["message"]


def test_heldout_split_by_default_and_resplit_without_reprocessing(raw, built, tmp_path, capsys):
    """Every 10th kept clip is held out by default; ``--heldout-every`` re-splits the same clips at the next build
    (no video processed again), and 0 removes the split."""
    from e2v.databuild.commands import build_command

    train = [json.loads(line) for line in (built / "train.jsonl").read_text().splitlines()]
    heldout = [json.loads(line) for line in (built / "heldout.jsonl").read_text().splitlines()]
    assert heldout and len(heldout) == (len(train) + len(heldout)) // 10
    assert {r["split"] for r in heldout} == {"heldout"} and not {r["id"] for r in train} & {r["id"] for r in heldout}
    out = tmp_path / "built"
    shutil.copytree(built, out)
    base = ["--videos", str(raw / "videos"), "--out", str(out), "--config", str(WORLD_FILE), "--no-progress"]
    assert build_command([*base, "--heldout-every", "3"]) == 0
    assert "(0 processed, " in capsys.readouterr().out
    resplit = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert len(resplit) == (len(train) + len(heldout)) // 3
    assert build_command([*base, "--heldout-every", "0"]) == 0
    assert "(0 processed, " in capsys.readouterr().out and not (out / "heldout.jsonl").exists()
    assert len((out / "train.jsonl").read_text().splitlines()) == len(train) + len(heldout)
