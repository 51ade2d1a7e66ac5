"""Bench reports read well (issue 28.8): identical videos are "identical" (PSNR inf, not 126 dB), the headline is
PSNR against truth beside the flat baseline, the page embeds each video beside its truth and shows the generation
settings, ``--limit N``, ``comprehensive`` names what it averages, compare charts label their bars."""

import json
import math
import shutil

import numpy as np
import torch

from e2v.bench.pixel_metrics import psnr
from e2v.bench.report import GENERATION_FILE, build_report, write_report
from e2v.cli import main
from test_bench_cli import world  # noqa: F401  (the module fixture: two cases, truth for case a)

SCORERS = ["--scorer", "psnr", "--scorer", "psnr_flat", "--scorer", "dynamic_degree", "--scorer", "aesthetic"]


def test_psnr_of_identical_videos_is_infinite():
    video = torch.rand(3, 2, 8, 8) * 2 - 1
    assert psnr(video, video) == math.inf
    assert 40 < psnr(video + 0.01, video) < 50


def test_report_headline_identical_videos_and_embedded_truth(world, tmp_path):  # noqa: F811
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(world / "truth_a.mp4", videos / "a.mp4")  # the truth itself: identical
    shutil.copy(world / "good" / "b.mp4", videos / "b.mp4")
    out = tmp_path / "report"
    argv = ["bench", "score", "--cases", str(world / "cases.jsonl"), "--videos", str(videos), "--out", str(out),
            "--no-progress", "--no-tracking", *SCORERS]
    assert main([*argv, "--limit", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [case["id"] for case in report["cases"]] == ["a"]
    assert report["cases"][0]["metrics"]["psnr"] == math.inf  # stored as Infinity, not 126
    md = (out / "report.md").read_text()
    assert "| psnr | identical |" in md and "| a | identical |" in md
    assert "**Headline**: PSNR against the truth clips: identical dB over 1 cases; a flat mean-colour video scores" in md
    assert "| comprehensive | " in md and "equal-weight mean of the range-normalised aesthetic, dynamic_degree " \
                                           "(not scored here: id_consistency, object_consistency" in md

    assert main(argv) == 0  # both cases: one identical, one without truth
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["psnr"] == math.inf and report["cases"][1]["metrics"]["psnr"] is None
    page = (out / "report.html").read_text()
    assert "<video src='../videos/a.mp4'" in page
    truth_src = page.split("<figcaption>video</figcaption></figure><figure")[1].split("src='")[1].split("'")[0]
    assert (out / truth_src).resolve() == (world / "truth_a.mp4").resolve()


def test_summary_counts_identical_cases_and_page_shows_settings(tmp_path):
    scorers = {"psnr": {"version": "1", "range": [0.0, None], "higher_is_better": True, "model": "pixels"},
               "psnr_flat": {"version": "1", "range": [0.0, None], "higher_is_better": True, "model": "flat"}}
    report = build_report([("a", {"psnr": math.inf, "psnr_flat": 15.0}), ("b", {"psnr": 20.0, "psnr_flat": 17.0})],
                          scorers)
    assert report["summary"]["psnr"] == 20.0  # the finite cases' mean, with the identical ones counted
    (tmp_path / GENERATION_FILE).write_text(json.dumps({"steps": 20, "solver": "euler", "shift": 3.0}))
    write_report(tmp_path, report)
    md = (tmp_path / "report.md").read_text()
    assert "| psnr | 20 (1 of 2 cases identical) |" in md
    assert "PSNR against the truth clips: 20 (1 of 2 cases identical) dB over 2 cases; a flat mean-colour video " \
           "scores 16 dB, margin +4.00 dB" in md
    assert "Generated with: steps 20, solver euler, shift 3.0." in (tmp_path / "report.html").read_text()


def test_compare_labels_bars_and_keeps_identical(world, tmp_path):  # noqa: F811
    out = tmp_path / "report"
    (tmp_path / "videos").mkdir()
    shutil.copy(world / "truth_a.mp4", tmp_path / "videos" / "a.mp4")
    assert main(["bench", "score", "--cases", str(world / "cases.jsonl"), "--videos", str(tmp_path / "videos"),
                 "--out", str(out), "--no-progress", "--no-tracking", "--limit", "1", *SCORERS]) == 0
    shutil.copytree(out, tmp_path / "a_model_with_a_long_descriptive_name")
    assert main(["bench", "compare", str(out), str(tmp_path / "a_model_with_a_long_descriptive_name"),
                 "--out", str(tmp_path / "cmp")]) == 0
    assert "| psnr ↑ | **identical** | **identical** |" in (tmp_path / "cmp" / "compare.md").read_text()
    from PIL import Image

    bars = np.asarray(Image.open(tmp_path / "cmp" / "bars.png").convert("L"))
    assert bars.shape[0] > 100 and (bars[-3:] == 255).all()  # cropped to its content, nothing cut at the bottom
