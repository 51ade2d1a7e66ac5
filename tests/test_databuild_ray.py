"""``e2v data build --engine ray``: Ray Data gives the same per-video results and manifest as the local engine."""

import json
import sys

import pytest

from e2v.databuild.build import merge, run_videos
from e2v.databuild.config import BuildConfig
from e2v.databuild.ray_engine import RAY_VERSION, run_with_ray
from e2v.databuild.raw_synth import synthesize_raw
from e2v.databuild.video import WORK, VideoJob


def _results(out):
    """Per-video results by file name, without their timing."""
    results = {}
    for path in sorted((out / WORK).glob("*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        result.pop("seconds")
        results[path.name] = result
    return results


def test_without_ray_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert list(run_with_ray([], workers=2)) == []  # nothing to do: Ray is not needed
    job = VideoJob(str(tmp_path / "a.mp4"), "a.mp4", str(tmp_path), {})
    with pytest.raises(ImportError, match=rf"pip install 'ray\[data\]=={RAY_VERSION}' \(or pip install 'e2v\[ray\]'\)"):
        next(run_with_ray([job], workers=2))


def test_ray_engine_matches_local(tmp_path):
    ray = pytest.importorskip("ray")
    videos = synthesize_raw(tmp_path / "raw", videos=3, shots=(3, 4), heldout=0, progress=False)["videos"]
    config = BuildConfig()
    local, distributed = tmp_path / "local", tmp_path / "ray"
    run_videos(videos, local, config, workers=1, progress=False)
    merge(local, config)
    seen = []
    counts = run_videos(videos, distributed, config, workers=2, engine="ray", progress=False, on_result=seen.append)
    merge(distributed, config)
    assert not ray.is_initialized()  # the engine stopped the local cluster it started
    assert counts["processed"] == counts["listed"] == len(seen) == 7  # 3 videos and the 4 broken ones
    assert {r["status"] for r in seen} == {"ok", "rejected"}
    assert _results(distributed) == _results(local)
    assert {r["key"]: {**r, "seconds": 0} for r in seen} == \
        {r["key"]: {**r, "seconds": 0} for r in _results(local).values()}
    train = (distributed / "train.jsonl").read_text(encoding="utf-8")
    assert train and train == (local / "train.jsonl").read_text(encoding="utf-8")
