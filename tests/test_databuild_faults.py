"""Issue 29: ``e2v data build`` / ``e2v data merge`` under faults and hostile raw videos, through the commands a
user runs: disk full (an injected ENOSPC; a real small tmpfs in the slow test), ``--out`` inside ``--videos``,
shards with other settings or crafted paths, phone rotation, variable frame rate, odd sizes, truncation."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from e2v.databuild import raw_synth
from e2v.databuild import video as video_module
from e2v.databuild.commands import build_command, merge_command
from e2v.datamodules.video_io import probe_video, read_video, write_video


def write_raw(path: Path, frames: np.ndarray, fps: float = 16.0, rotation: int = 0, times=None,
              pix_fmt: str = "yuv420p", faststart: bool = False) -> Path:
    """An mp4 of ``uint8 [F, H, W, 3]`` frames at ``fps``, or at ``times`` (seconds: a variable frame rate), stored
    turned so that a player honouring the display matrix (``rotation``, degrees counterclockwise) shows ``frames``.
    ``pix_fmt`` yuv444p takes odd sizes."""
    turns = round(rotation / 90) % 4
    stored = np.ascontiguousarray(np.rot90(frames, -turns, axes=(1, 2)))
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = stored.shape[1:3]
        stream.pix_fmt = pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        base = Fraction(1, 1000)
        if times is not None:
            stream.codec_context.time_base = base
        for i, image in enumerate(stored):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = round(times[i] * 1000), base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def shot_frames(seed: int, height: int = 96, width: int = 96, count: int = 48) -> np.ndarray:
    """``count`` frames of one normal raw-world shot (subjects drifting over a background): a video that builds."""
    plan = raw_synth.plan_shot(np.random.default_rng(seed), "normal", [0, 9, 12], set(), -1, count=1)
    return raw_synth.render_shot(plan, height, width)[0][:count]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("raw") / "videos"
    folder.mkdir()
    for i in range(2):
        write_video(folder / f"v{i}.mp4", shot_frames(i), fps=16)
    return folder


def build(videos: Path, out: Path, *extra: str) -> int:
    return build_command(["--videos", str(videos), "--out", str(out), "--no-progress", *extra])


def manifest_sources(out: Path) -> set[str]:
    return {json.loads(line)["source"]["video"].rsplit("-", 1)[0]
            for line in (out / "train.jsonl").read_text().splitlines()}


def test_disk_full_mid_build_is_retried_and_never_recorded_as_a_verdict(videos, tmp_path, monkeypatch, capsys):
    """BAD 3: ENOSPC while writing a clip recorded the video as rejected; after space was freed the rerun said
    "already done", exited 0 and the manifest lacked it. Now: retried, not recorded, exit 1 naming the video."""
    writes = []

    def full_disk(path, *args, **kwargs):
        writes.append(path)
        if "v1-" in Path(path).name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write_video(path, *args, **kwargs)

    monkeypatch.setattr(video_module, "write_video", full_disk)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the wait between retries
    out = tmp_path / "out"
    assert build(videos, out) == 1
    err = capsys.readouterr().err
    assert "v1.mp4: OSError: [Errno 28] No space left on device" in err
    assert "1 video(s) stopped by an error of the machine, not recorded" in err
    assert sum("v1-" in Path(p).name for p in writes) == 3  # the first try and two retries
    assert [p.name.split("-")[0] for p in (out / "work").glob("*.json")] == ["v0"]
    monkeypatch.setattr(video_module, "write_video", write_video)  # space freed
    assert build(videos, out) == 0
    assert "1 processed, 1 already done" in capsys.readouterr().out
    assert manifest_sources(out) == {"v0", "v1"}


def test_a_transient_error_that_clears_costs_nothing(videos, tmp_path, monkeypatch, capsys):
    failures = []

    def flaky(path, *args, **kwargs):
        if not failures:
            failures.append(path)
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return write_video(path, *args, **kwargs)

    monkeypatch.setattr(video_module, "write_video", flaky)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    assert build(videos, tmp_path / "out") == 0 and failures
    assert manifest_sources(tmp_path / "out") == {"v0", "v1"}


def test_out_inside_videos_or_a_file_is_refused_up_front(videos, tmp_path, capsys):
    """BAD 4 (every rerun built clips of its own clips and never wrote a manifest) and POOR: --out a file."""
    inside = videos / "built"
    assert build(videos, inside) == 2
    assert f"--out {inside} is inside --videos {videos}" in capsys.readouterr().err
    assert not inside.exists()
    (tmp_path / "afile").write_text("x")
    assert build(videos, tmp_path / "afile") == 2
    assert "is a file; give a folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def shard(videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shard") / "shard"
    assert build(videos, out) == 0
    return out


def test_merge_refuses_results_built_with_other_settings(shard, tmp_path, capsys):
    """BAD 5: ``data merge`` without --videos kept only the results matching --config, silently (2 of 4)."""
    other = tmp_path / "other.yaml"
    other.write_text("trim: 1\n")
    assert merge_command([str(shard), "--config", str(other)]) == 2
    assert "2 of 2 per-video results" in capsys.readouterr().err
    mixed = tmp_path / "mixed"
    shutil.copytree(shard, mixed)
    result = next((mixed / "work").glob("v1-*.json"))
    result.write_text(json.dumps({**json.loads(result.read_text()), "config": "0" * 16}))
    before = (mixed / "train.jsonl").read_text()
    assert merge_command([str(mixed)]) == 2
    assert f"1 of 2 per-video results in {mixed / 'work'} (e.g. {result.name})" in capsys.readouterr().err
    assert (mixed / "train.jsonl").read_text() == before
    assert merge_command([str(tmp_path / "merged"), "--from", str(mixed)]) == 2
    assert "were built with other settings" in capsys.readouterr().err
    assert not (tmp_path / "merged").exists()  # refused before copying anything


@pytest.mark.parametrize("name", ["../escaped.txt", "clips/../../escaped.txt", "/tmp/escaped.txt", "escaped.txt",
                                  "link"])
def test_a_crafted_shard_cannot_read_or_write_outside(shard, tmp_path, name, capsys):
    """BAD 11: ``data merge --from`` a shard naming ``../escaped.txt`` wrote outside OUT."""
    crafted = tmp_path / "crafted" / "shard"
    shutil.copytree(shard, crafted)
    (crafted.parent / "escaped.txt").write_text("outside the shard")
    result_file = next((crafted / "work").glob("v0-*.json"))
    result = json.loads(result_file.read_text())
    if name == "link":
        name = "clips/link.mp4"
        (crafted / name).symlink_to(crafted.parent / "escaped.txt")
    result["clips"][0]["video"] = name
    result_file.write_text(json.dumps(result))
    out = tmp_path / "out" / "merged"
    assert merge_command([str(out), "--from", str(crafted)]) == 2
    err = capsys.readouterr().err
    assert result_file.name in err and ("leaves the build folder" in err or "links outside" in err)
    assert not list((tmp_path / "out").rglob("escaped.txt")) and not Path("/tmp/escaped.txt").exists()


def test_a_phone_video_builds_upright_clips(tmp_path):
    """BAD 8: a 90-degree phone video (landscape pixels + display matrix) built sideways clips."""
    upright = shot_frames(0, height=96, width=64)
    videos = tmp_path / "videos"
    videos.mkdir()
    write_raw(videos / "phone.mp4", upright, rotation=-90)
    info = probe_video(videos / "phone.mp4")
    assert (info["width"], info["height"], info["rotation"]) == (64, 96, 270)
    decoded = read_video(videos / "phone.mp4", None).numpy()
    assert decoded.shape == upright.shape and np.abs(decoded.astype(int) - upright).mean() < 4
    assert build(videos, tmp_path / "out") == 0
    result = json.loads(next((tmp_path / "out" / "work").glob("*.json")).read_text())
    clip = result["clips"][0]
    frames = read_video(tmp_path / "out" / clip["video"], None).numpy()
    assert frames.shape[1:3] == (96, 64)
    assert np.abs(frames.astype(int) - upright[clip["source_frames"]]).mean() < 4


def test_variable_frame_rate_clips_span_their_labelled_time(tmp_path):
    """BAD 9: frames were stepped by the average rate: a 2.0 s clip of a VFR video spanned 0.84 s."""
    frames = shot_frames(1, count=96)
    times = np.concatenate([np.arange(48) / 32, 48 / 32 + np.arange(1, 49) / 8])  # 32 fps, then 8 fps
    videos = tmp_path / "videos"
    videos.mkdir()
    write_raw(videos / "vfr.mp4", frames, times=times)
    assert build(videos, tmp_path / "out") == 0
    result = json.loads(next((tmp_path / "out" / "work").glob("*.json")).read_text())
    picked = [clip["source_frames"] for clip in result["clips"]]
    assert picked, result["rejected_clips"]
    for source in picked:
        targets = times[source[0]] + np.arange(17) / 8
        assert times[source[-1]] - times[source[0]] == pytest.approx(2.0, abs=1e-3)
        assert np.all(np.abs(times[source] - targets) <= 1 / 16 + 1e-3)  # each frame nearest its 8 fps target


def test_odd_sized_and_truncated_sources(tmp_path, capsys):
    """POOR: odd sizes (97x95) were rejected for yuv420p; a truncated faststart mp4 was ok with 14 of 80 frames."""
    videos = tmp_path / "videos"
    videos.mkdir()
    write_raw(videos / "odd.mp4", shot_frames(2, height=95, width=97), pix_fmt="yuv444p")
    noise = np.random.default_rng(0).integers(0, 255, (80, 64, 64, 3), np.uint8)
    data = write_raw(tmp_path / "whole.mp4", noise, faststart=True).read_bytes()
    media = data.find(b"mdat")
    assert 0 < data.find(b"moov") < media
    (videos / "truncated.mp4").write_bytes(data[: media + (len(data) - media) // 5])
    assert build(videos, tmp_path / "out") == 0
    results = {r["name"]: r for r in map(json.loads, map(Path.read_text, (tmp_path / "out" / "work").glob("*")))}
    assert results["truncated.mp4"]["reason"] == "truncated"
    assert "of the 80 frames its header declares are there" in results["truncated.mp4"]["message"]
    clip = results["odd.mp4"]["clips"][0]
    assert probe_video(tmp_path / "out" / clip["video"])["height"] == 94


def write_gapped_avi(path: Path, frames: np.ndarray, header_fps: int, every: int) -> Path:
    """An MJPEG AVI of ``frames`` at ``header_fps`` / ``every`` real frames a second: its index (and header frame
    count) also holds the ``every - 1`` empty entries between them, as cameras and timelapse tools write."""
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=header_fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuvj420p"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i * every, Fraction(1, header_fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_frames_left_out_along_the_way_are_a_frame_rate_not_a_truncation(tmp_path):
    """POOR (OpenCV's tree.avi): an AVI holding 68 of the 444 frames its header counts, spread over all 29.6 s,
    was "truncated"; its real rate is 2.3 fps. Now the measured rate decides: 2.5 fps is odd_fps (saying why),
    16 fps stored as a 32 fps header with every other frame left out is kept."""
    videos = tmp_path / "videos"
    videos.mkdir()
    assert probe_video(write_gapped_avi(videos / "slow.avi", shot_frames(3)[:25], 15, 6))["frames"] > 140
    write_gapped_avi(videos / "half.avi", shot_frames(4), 32, 2)
    assert build(videos, tmp_path / "out") == 0
    results = {r["name"]: r for r in map(json.loads, map(Path.read_text, (tmp_path / "out" / "work").glob("*")))}
    assert results["slow.avi"]["reason"] == "odd_fps"
    assert "2.5 fps is outside [8, 120] (25 frames over 9.6 s" in results["slow.avi"]["message"]
    assert results["half.avi"]["status"] == "ok" and results["half.avi"]["clips"]


def test_bad_lists_are_named_and_all_rejected_is_an_error(tmp_path, capsys):
    """POOR: a non-UTF-8 list was not named; a folder or /dev/zero was "does not exist"; every video rejected gave
    an empty manifest with exit 0."""
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"caf\xe9.mp4\n")
    assert build(listing, tmp_path / "o1") == 2
    assert f"--videos {listing}: a list file must be UTF-8 text" in capsys.readouterr().err
    (tmp_path / "folder.mp4").mkdir()
    listing.write_text(f"folder.mp4\n/dev/zero\nmissing.mp4\n")
    assert build(listing, tmp_path / "o2") == 2
    captured = capsys.readouterr()
    assert "no clip was kept from the 3 video(s)" in captured.err and "not_a_file 2" in captured.err
    messages = sorted(json.loads(p.read_text())["message"] for p in (tmp_path / "o2" / "work").glob("*.json"))
    assert messages == ["/dev/zero is not a regular file", f"{tmp_path / 'folder.mp4'} is a folder, not a video file",
                        f"{tmp_path / 'missing.mp4'} does not exist"]


@pytest.mark.slow  # spawns a build and two workers; their start-up takes long on a loaded machine
def test_workers_die_with_a_killed_build(videos, tmp_path):
    """POOR: worker processes kept running for about 20 s after the build process was killed."""
    many = tmp_path / "videos"
    many.mkdir()
    for i in range(6):
        shutil.copy(videos / f"v{i % 2}.mp4", many / f"v{i}.mp4")
    process = subprocess.Popen([sys.executable, "-m", "e2v.cli", "data", "build", "--videos", str(many), "--out",
                                str(tmp_path / "out"), "--workers", "2", "--no-progress"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not list((tmp_path / "out").glob("clips/*.mp4")) and time.time() < deadline:  # the workers are at work
        time.sleep(0.1)
    children = [int(pid) for pid in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]
    assert len(children) >= 2, "the workers never started"
    process.send_signal(signal.SIGKILL)
    process.wait()

    def alive() -> list[int]:
        return [pid for pid in children if Path(f"/proc/{pid}").exists()
                and Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"]

    deadline = time.time() + 10
    while alive() and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(), f"workers {alive()} outlived the build"
