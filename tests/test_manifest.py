"""Manifest parsing, validation (``e2v data check``) and reference preparation."""

import json
from pathlib import Path

import numpy as np
import torch

from e2v.datamodules.commands import check_command
from e2v.datamodules.manifest import read_manifest, validate_manifest
from e2v.datamodules.references import pad_to_white_square, prepare_reference
from e2v.datamodules.video_io import save_image, write_video


def make_clip(path: Path, frames: int, height: int, width: int, seed: int, fps: float = 8.0) -> torch.Tensor:
    """A smooth moving-gradient clip (compresses well, decodes close to the source); returns uint8 [F,H,W,3]."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, generator=g) * 200 + 20
    y = torch.arange(height).view(1, height, 1)
    x = torch.arange(width).view(1, 1, width)
    t = torch.arange(frames).view(frames, 1, 1)
    ramp = ((x + 2 * t) % width).float() / width * 30 + (y.float() / height) * 20
    video = (base.view(1, 1, 1, 3) + ramp[..., None]).clamp(0, 255).to(torch.uint8)
    write_video(path, video, fps=fps)
    return video


def make_image(path: Path, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    save_image(path, rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def make_world(root: Path, count: int = 8, frames: int = 12, refs: int = 2, sizes=((32, 48), (48, 32))) -> Path:
    """``count`` good clips (alternating landscape/portrait) with ``refs`` reference PNGs each; returns manifest."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    lines = []
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        make_clip(root / "clips" / f"c{i}.mp4", frames, h, w, seed=i)
        references = []
        for j in range(refs):
            make_image(root / "refs" / f"c{i}_{j}.png", 20 + 4 * j, 16 + 8 * j, seed=100 * i + j)
            kind = "background" if j == refs - 1 and refs > 1 else "object"
            references.append({"path": f"refs/c{i}_{j}.png", "kind": kind, "element": f"e{j}"})
        record = {"id": f"c{i}", "video": f"clips/c{i}.mp4", "caption": f"clip {i}", "references": references}
        lines.append(json.dumps(record))
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def add_bad_records(root: Path, manifest: Path) -> dict[str, str]:
    """Append one bad record of each kind; returns {id: expected reason}."""
    clip = root / "clips" / "c0.mp4"
    data = clip.read_bytes()
    (root / "clips" / "corrupt.mp4").write_bytes(b"\x00not an mp4 at all" * 100)
    (root / "clips" / "truncated.mp4").write_bytes(data[: len(data) // 2])
    make_clip(root / "clips" / "short.mp4", 3, 32, 48, seed=7)
    (root / "refs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ref = [{"path": "refs/c0_0.png", "kind": "object"}]

    def record(i, **kw):
        return json.dumps({"id": i, "video": "clips/c0.mp4", "caption": "x", "references": ref, **kw})

    lines = [
        record("missing_video", video="clips/nope.mp4"),
        record("missing_ref", references=[{"path": "refs/nope.png", "kind": "object"}]),
        record("corrupt", video="clips/corrupt.mp4"),
        record("truncated", video="clips/truncated.mp4"),
        record("short", video="clips/short.mp4"),
        record("unreadable", references=[{"path": "refs/broken.png", "kind": "face"}]),
        '{"id": "bad_json", "video": ',
        json.dumps({"id": "no_keys", "caption": "x"}),
    ]
    with manifest.open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    return {
        "missing_video": "missing_video",
        "missing_ref": "missing_reference",
        "corrupt": "corrupt_video",
        "truncated": "corrupt_video",
        "short": "too_short",
        "unreadable": "unreadable_image",
        None: "bad_json",
        "no_keys": "missing_keys",
    }


def test_read_manifest_resolves_paths_and_reports_bad_lines(tmp_path):
    manifest = make_world(tmp_path, count=2)
    with manifest.open("a") as handle:
        handle.write("not json\n\n")
        handle.write(json.dumps({"id": "c0", "video": "v.mp4", "caption": "", "references": []}) + "\n")
        handle.write(json.dumps({"id": "r", "video": "/abs/v.mp4", "caption": "", "references": [{"path": 1}]}))
    report = read_manifest(manifest)
    assert [r.id for r in report.good] == ["c0", "c1"]
    assert report.good[0].video == tmp_path / "clips" / "c0.mp4"
    assert report.good[0].references[0].path == tmp_path / "refs" / "c0_0.png"
    assert [(b.where, b.reason) for b in report.bad] == [
        (f"{manifest}:3", "bad_json"),
        (f"{manifest}:5", "duplicate_id"),
        (f"{manifest}:6", "missing_keys"),
    ]
    assert "'kind'" in report.bad[2].message


def test_validate_manifest_finds_every_kind_of_bad_record(tmp_path):
    manifest = make_world(tmp_path, count=3)
    expected = add_bad_records(tmp_path, manifest)
    report = validate_manifest(manifest, frames=5, fps=8)
    assert [r.id for r in report.good] == ["c0", "c1", "c2"]
    assert {bad.id: bad.reason for bad in report.bad} == expected
    assert report.reasons["corrupt_video"] == 2 and report.total == 11
    truncated = next(bad for bad in report.bad if bad.id == "truncated")
    assert "truncated.mp4" in truncated.message and truncated.where.endswith(":7")


def test_probe_only_validation_catches_short_clips(tmp_path):
    manifest = make_world(tmp_path, count=2, frames=6)
    assert len(validate_manifest(manifest, frames=5, decode=False).good) == 2
    report = validate_manifest(manifest, frames=9, decode=False)
    assert report.reasons == {"too_short": 2}
    # half the native rate: 6 frames at 8 fps hold 3 samples at 4 fps
    assert validate_manifest(manifest, frames=3, fps=4, decode=False).reasons == {}
    assert validate_manifest(manifest, frames=4, fps=4, decode=False).reasons == {"too_short": 2}


def test_check_command_exit_code_and_report(tmp_path, capsys):
    manifest = make_world(tmp_path, count=2)
    assert check_command([str(manifest), "--frames", "5"]) == 0
    add_bad_records(tmp_path, manifest)
    assert check_command([str(manifest), "--frames", "5", "--json", str(tmp_path / "report.json")]) == 1
    out = capsys.readouterr().out
    assert "2 good, 8 bad of 10 records" in out and "too_short: 1" in out
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["good"] == 2 and saved["reasons"]["corrupt_video"] == 2


def test_pad_to_white_square_keeps_content_centred():
    image = torch.full((3, 10, 20), -1.0)
    square = pad_to_white_square(image)
    assert square.shape == (3, 20, 20)
    assert torch.all(square[:, 5:15] == -1) and torch.all(square[:, :5] == 1) and torch.all(square[:, 15:] == 1)
    assert pad_to_white_square(image, 8).shape == (3, 8, 8)


def test_prepare_reference_pads_subjects_and_crops_backgrounds():
    image = torch.linspace(-1, 1, 40).view(1, 1, 40).expand(3, 20, 40).clone()
    subject = prepare_reference(image, "object", 40, 40)
    assert subject.shape == (3, 40, 40)
    assert torch.all(subject[:, :10] == 1) and torch.all(subject[:, 30:] == 1)
    assert torch.allclose(subject[:, 10:30], image, atol=1e-5)
    background = prepare_reference(image, "background", 40, 40)
    assert background.shape == (3, 40, 40) and background.max() < 1.0  # no white padding
    # centre crop of the 2x upscaled 40x80 image: columns 20..60 of the ramp, i.e. the middle half
    assert abs(background[0, 0, 0].item() + 0.5) < 0.06 and abs(background[0, 0, -1].item() - 0.5) < 0.06
