"""The open-ended synthetic world (the default of ``e2v data synth``): elements drawn fresh for every clip, and a
zero-shot split whose elements come from parts of the element space training never draws from."""

import json

import numpy as np
import pytest

from e2v import open_elements, synth
from e2v.datamodules.video_io import load_image, read_video
from e2v.world_commands import synth_command

SETTINGS = dict(num_clips=12, num_heldout=4, num_zeroshot=6, frames=9, height=32, width=32, fps=8.0,
                max_elements=3, workers=1, background_ref_prob=1.0, progress=False)


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("open_world")
    return out, synth.synthesize_world(out, seed=5, prediction=True, **SETTINGS)


def element_names(records, kinds=("subject",)):
    names = []
    for record in records:
        for ref in record["references"]:
            if ("background" in kinds) == (ref["kind"] == "background"):
                names.append(ref["element"])
    return names


def test_every_clip_draws_new_elements(world):
    out, result = world
    records = read_jsonl(result["train"]) + read_jsonl(result["heldout"]) + read_jsonl(result["zeroshot"])
    assert [len(read_jsonl(result[s])) for s in ("train", "heldout", "zeroshot")] == [12, 4, 6]
    subjects, backgrounds = element_names(records), element_names(records, ("background",))
    assert len(set(subjects)) == len(subjects) and len(set(backgrounds)) == len(backgrounds) == len(records)
    for record in records:
        video = read_video(out / record["video"], 9, fps=8)
        assert video.shape == (9, 32, 32, 3) and video.float().std() > 5
        for ref in record["references"]:
            assert load_image(out / ref["path"]).shape == (32, 32, 3)
        assert record["references"][-1]["kind"] == "background" and 2 <= len(record["references"]) <= 3
    # distinct subjects look different: no two subject references of the world are near-identical pictures
    refs = [load_image(out / r["path"]).float() for rec in records for r in rec["references"] if r["kind"] != "background"]
    distances = [(a - b).abs().mean().item() for i, a in enumerate(refs) for b in refs[i + 1 :]]
    assert min(distances) > 3


def test_zero_shot_shares_no_part_of_the_space_with_training():
    train = [open_elements.subject("train", s) for s in range(300)]
    zero = [open_elements.subject("zeroshot", s) for s in range(300)]
    shapes = lambda items: {e.family for e in items if e.kind != "face"}  # noqa: E731
    assert shapes(train) == set(open_elements.SHAPES["train"]) and shapes(zero) == set(open_elements.SHAPES["zeroshot"])
    assert not shapes(train) & shapes(zero)
    fills = lambda items: {e.fill for e in items if e.fill != "picture"}  # noqa: E731
    assert fills(train) and fills(zero) and not fills(train) & fills(zero)
    pictures = lambda items: {e.source for e in items if e.fill == "picture"}  # noqa: E731
    assert pictures(train) and pictures(zero) and not pictures(train) & pictures(zero)
    train_bg = [open_elements.background("train", s) for s in range(120)]
    zero_bg = [open_elements.background("zeroshot", s) for s in range(120)]
    procedural = lambda items: {b.family for b in items if b.family != "picture"}  # noqa: E731
    assert not procedural(train_bg) & procedural(zero_bg)
    faces = lambda items: {e.source for e in items if e.kind == "face"}  # noqa: E731
    assert faces(train) and faces(zero) and not faces(train) & faces(zero)
    assert not {b.source for b in train_bg if b.family == "picture"} & {b.source for b in zero_bg if b.family == "picture"}


def test_colours_come_from_the_split_hue_ranges():
    for split in open_elements.SPLITS:
        rng = np.random.default_rng(0)
        hues = [open_elements.draw_hue(rng, split) for _ in range(2000)]
        inside = [open_elements.in_zero_shot_hues(h) for h in hues]
        assert all(inside) if split == "zeroshot" else not any(inside)
    # the drawn subjects' saturated pixels: in a zero-shot hue range for zero-shot elements, almost never for training
    import cv2

    for split in open_elements.SPLITS:
        shares = []
        for element in (open_elements.subject(split, s) for s in range(60)):
            if element.fill in ("picture", "gradient", "noise") or element.kind == "face":
                continue  # pictures keep their own colours; blends of two hues pass through others
            rgb = element.rgba[element.rgba[..., 3] > 240][None, :, :3]
            hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)[0].astype(float)
            saturated = hsv[hsv[:, 1] > 100]
            inside = [open_elements.in_zero_shot_hues(h * 360 / 256) for h in saturated[:, 0]]
            shares.append(np.mean(inside) if inside else np.nan)
        share = np.nanmean(shares)
        assert share > 0.85 if split == "zeroshot" else share < 0.1, (split, share)


def test_elements_are_deterministic_by_seed():
    for split in open_elements.SPLITS:
        a, b = open_elements.subject(split, 17), open_elements.subject.__wrapped__(split, 17)
        assert a.name == b.name and np.array_equal(a.rgba, b.rgba)
        assert not np.array_equal(open_elements.background(split, 3).rgba, open_elements.background(split, 4).rgba)
    with pytest.raises(ValueError, match="unknown element split"):
        open_elements.subject("test", 0)


def test_world_is_deterministic_and_rules_hold(world, tmp_path):
    out, result = world
    again = synth.synthesize_world(tmp_path, seed=5, **{**SETTINGS, "num_clips": 3, "num_heldout": 0, "num_zeroshot": 2})
    assert read_jsonl(again["train"]) == read_jsonl(result["train"])[:3]
    assert read_jsonl(again["zeroshot"]) == read_jsonl(result["zeroshot"])[:2]
    for i in range(6):
        plan = synth.plan_clip(i, "zeroshot", 5, [], 9, 32, 32, 8.0, 3, background_ref_prob=1.0, world="open")
        assert plan.elements == "zeroshot" and plan.direction in plan.caption
        starts = [s.start.x for s in plan.subjects]
        assert starts == sorted(starts)  # the k-th reference enters in the k-th slot
        for s in plan.subjects:  # references show another pose: bigger, turned
            assert s.reference.size >= s.start.size * synth.REFERENCE_SCALE[0] - 1e-9
            seen = s.start.angle if s.reference.flip == s.start.flip else -s.start.angle  # as mirrored
            assert synth.REFERENCE_TURN[0] - 1e-9 <= abs(s.reference.angle - seen) <= synth.REFERENCE_TURN[1] + 1e-9
    info = json.loads((out / "world.json").read_text())
    assert info["world"] == "open" and info["zero_shot"]["shapes"] == list(open_elements.SHAPES["zeroshot"])


def test_prediction_manifest_holds_first_frames(world):
    out, result = world
    records = read_jsonl(result["predict"])
    assert len(records) == 12
    for record in records[:3]:
        (ref,) = record["references"]
        first = read_video(out / record["video"], 1)[0]
        image = load_image(out / ref["path"]).float()
        assert ref["kind"] == "background" and (image - first.float()).abs().mean() < 15  # the video is h264, lossy at 32 px


def test_synth_command_open_default(tmp_path):
    argv = ["--out", str(tmp_path), "--clips", "2", "--heldout", "1", "--zeroshot", "2", "--frames", "5",
            "--height", "16", "--width", "16"]
    assert synth_command(argv) == 0
    assert len(read_jsonl(tmp_path / "zeroshot.jsonl")) == 2
    assert json.loads((tmp_path / "world.json").read_text())["world"] == "open"
    with pytest.raises(SystemExit):
        synth_command(["--out", str(tmp_path / "x"), "--world", "library", "--zeroshot", "3"])
