import dataclasses
import itertools
import json

import cv2
import numpy as np
import pytest

from e2v import synth
from e2v.world_commands import synth_command
from e2v.datamodules.video_io import load_image, read_video

# the fixed-library world (world="library"); the open-ended default world: tests/test_open_world.py
SETTINGS = dict(num_clips=10, num_heldout=4, frames=9, height=32, width=48, fps=8.0, max_elements=3, workers=1,
                world="library")


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return out, synth.synthesize_world(out, seed=3, progress=False, **SETTINGS)


def subjects(record):
    return frozenset(r["element"] for r in record["references"] if r["kind"] != "background")


def test_library():
    elements, backgrounds = synth.element_library(), synth.background_library()
    assert {e.kind for e in elements} == {"human", "face", "animal", "object"}
    assert {b.kind for b in backgrounds} == {"background"}
    names = [e.name for e in elements + backgrounds]
    assert len(names) == len(set(names))
    for item in elements + backgrounds:
        assert item.rgba.dtype == np.uint8 and item.rgba.ndim == 3 and item.rgba.shape[2] == 4
        assert item.rgba[..., 3].max() == 255 and not item.rgba.flags.writeable
    for element in elements:  # sprites are cut out: transparent corners
        assert element.rgba[0, 0, 3] < 128 and element.rgba[-1, -1, 3] < 128
    for background in backgrounds:
        assert (background.rgba[..., 3] == 255).all()


def test_clips_decode_with_references(world):
    out, result = world
    records = read_jsonl(result["train"]) + read_jsonl(result["heldout"])
    assert len(records) == 14 and result["num_train"] == 10 and result["num_heldout"] == 4
    phrases = {e.name: e.phrase for e in synth.element_library() + synth.background_library()}
    for record in records:
        video = read_video(out / record["video"], SETTINGS["frames"], fps=8)
        assert video.shape == (9, 32, 48, 3)
        assert video.float().std() > 5  # not a blank clip
        assert 1 <= len(record["references"]) <= 3
        for ref in record["references"]:
            assert load_image(out / ref["path"]).shape == (32, 48, 3)
        for name in subjects(record):
            assert phrases[name] in record["caption"]
        assert phrases[record["background"]] in record["caption"]


def test_deterministic_by_seed(world, tmp_path):
    out, result = world
    again = synth.synthesize_world(tmp_path / "a", seed=3, progress=False, **SETTINGS)
    for split in ("train", "heldout"):
        assert read_jsonl(again[split]) == read_jsonl(result[split])
    for record in read_jsonl(result["train"])[:3]:
        assert (read_video(tmp_path / "a" / record["video"], None) == read_video(out / record["video"], None)).all()
        for ref in record["references"]:
            assert (tmp_path / "a" / ref["path"]).read_bytes() == (out / ref["path"]).read_bytes()
    other = synth.synthesize_world(tmp_path / "b", seed=4, progress=False, **SETTINGS)
    assert [r["caption"] for r in read_jsonl(other["train"])] != [r["caption"] for r in read_jsonl(result["train"])]


def test_heldout_pairs_never_in_training(world):
    out, result = world
    pairs = {frozenset(p) for p in json.loads((out / "world.json").read_text())["heldout_pairs"]}
    train = [subjects(r) for r in read_jsonl(result["train"])]
    heldout = [subjects(r) for r in read_jsonl(result["heldout"])]
    assert all(r["split"] == "heldout" for r in read_jsonl(result["heldout"]))
    for combo in train:
        assert not any(frozenset(p) in pairs for p in itertools.combinations(combo, 2))
    for combo in heldout:
        assert any(frozenset(p) in pairs for p in itertools.combinations(combo, 2))
    assert not set(train) & set(heldout)


def plans(seed=3, count=20):
    pairs = synth.heldout_pairs(seed)
    return [synth.plan_clip(i, "train", seed, pairs, 9, 32, 48, 8.0, 3) for i in range(count)]


def test_references_use_another_pose():
    for plan in plans():
        for subject in plan.subjects:
            ref = subject.reference
            assert ref.flip != subject.start.flip
            assert min(abs(ref.angle - subject.start.angle), abs(ref.angle - subject.end.angle)) > 5
            assert ref.size > max(subject.start.size, subject.end.size)


def test_reference_pixels_differ_from_in_clip_appearance():
    """Re-render each reference in its first-frame pose: that copy matches the clip, the real reference does not."""
    single = [p for p in plans(count=40) if len(p.subjects) == 1][:4]
    assert single
    for plan in single:
        subject = plan.subjects[0]
        video, refs = synth.render_clip(plan)
        posed = dataclasses.replace(plan, subjects=(dataclasses.replace(subject, reference=subject.start),))
        _, posed_refs = synth.render_clip(posed)
        shown = posed_refs[0].astype(int).min(axis=2) < 200  # non-white: the element in its clip pose
        inside = cv2.erode(shown.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # minus blended edges
        assert inside.sum() > 10
        in_clip = np.abs(video[0].astype(int) - posed_refs[0].astype(int))[inside].mean()
        either = shown | (refs[0].astype(int).min(axis=2) < 200)
        reference = np.abs(refs[0].astype(int) - posed_refs[0].astype(int))[either].mean()
        assert in_clip < 8 and reference > 40


def test_background_reference_is_the_clean_plate():
    """The background reference is frame 0's view of the background without subjects (an inpainted plate)."""
    with_background = [p for p in plans(count=40) if p.background_reference][:3]
    assert with_background
    for plan in with_background:
        video, refs = synth.render_clip(plan)
        empty, _ = synth.render_clip(dataclasses.replace(plan, subjects=(), depth=()))
        assert np.array_equal(refs[-1], empty[0])
        assert np.abs(refs[-1].astype(int) - video[0].astype(int)).max() > 50  # the clip itself shows subjects


def test_subjects_enter_in_slot_order_and_drift_as_captioned():
    for plan in plans(count=40):
        assert plan.direction in plan.caption
        starts = [s.start.x for s in plan.subjects]
        assert starts == sorted(starts)  # the k-th reference enters in the k-th slot from the left
        assert sorted(plan.depth) == list(range(len(plan.subjects)))
        dx, dy = synth.DIRECTIONS[plan.direction]
        for s in plan.subjects:
            assert np.allclose([s.end.x - s.start.x, s.end.y - s.start.y], [dx * synth.TRAVEL, dy * synth.TRAVEL])


@pytest.mark.slow
def test_worker_pool_writes_the_same_world(world, tmp_path):
    out, result = world
    pooled = synth.synthesize_world(tmp_path, seed=3, progress=False, **{**SETTINGS, "workers": 2})
    assert read_jsonl(pooled["train"]) == read_jsonl(result["train"])
    for record in read_jsonl(result["train"]):
        assert (tmp_path / record["video"]).read_bytes() == (out / record["video"]).read_bytes()


def test_synth_command(tmp_path):
    argv = ["--out", str(tmp_path), "--clips", "2", "--heldout", "1", "--frames", "5", "--height", "16",
            "--width", "16", "--max-elements", "2", "--workers", "1", "--world", "library"]
    assert synth_command(argv) == 0
    assert len(read_jsonl(tmp_path / "train.jsonl")) == 2 and len(read_jsonl(tmp_path / "heldout.jsonl")) == 1
    assert not list(tmp_path.glob(".*"))  # no leftover temp files
    with pytest.raises(ValueError, match="even"):
        synth.synthesize_world(tmp_path, num_clips=1, height=15, workers=1, progress=False)
