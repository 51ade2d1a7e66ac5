"""The step cache reports what it did (issue 28.10): steps computed and skipped per video on ``e2v generate``'s
line, and a warning when ``--teacache FIT`` is the fit of another model size."""

from __future__ import annotations

import re

import torch
from test_pipeline import save_checkpoint, tiny_pipeline, tiny_refs

from e2v.datamodules.video_io import save_image
from e2v.pipeline.generate import generate_command
from e2v.pipeline.step_cache import teacache_mismatch


def test_teacache_fit_of_another_model_size_is_named():
    assert teacache_mismatch("wan2.1-i2v-14b-480p", 5120, 36) is None
    assert teacache_mismatch("wan2.1-t2v-1.3b-e0", 1536, 16) is None
    message = teacache_mismatch("wan2.1-t2v-1.3b", 5120, 36)
    assert message.startswith("--teacache wan2.1-t2v-1.3b is TeaCache's fit for Wan2.1 T2V 1.3B (width 1536, 16 "
                              "input channels); this DiT has width 5120 and 36 input channels")


def test_generate_reports_steps_computed_and_skipped(tmp_path, capsys):
    torch.set_num_threads(2)
    save_checkpoint(tiny_pipeline(), tmp_path / "run.ckpt")
    save_image(tmp_path / "ref.png", tiny_refs(1)[0])
    base = ["--checkpoint", str(tmp_path / "run.ckpt"), "--ref", str(tmp_path / "ref.png"), "--prompt", "a disc",
            "--height", "16", "--width", "32", "--frames", "9", "--steps", "5", "--no-progress"]
    assert generate_command([*base, "--out", str(tmp_path / "a.mp4"), "--step-cache", "1e9",
                             "--teacache", "wan2.1-i2v-14b-480p"]) == 0
    captured = capsys.readouterr()
    # warm-up and last step computed, the 3 between skipped (threshold 1e9); the tiny DiT is no 14B model
    assert re.search(r"wrote .*a\.mp4: \d+ frames 32x16 .*\(step cache: 2 of 5 steps computed, 3 skipped\)",
                     captured.out), captured.out
    assert "e2v generate: warning: --teacache wan2.1-i2v-14b-480p is TeaCache's fit for Wan2.1 I2V 14B" in captured.err
    assert generate_command([*base, "--out", str(tmp_path / "b.mp4")]) == 0
    assert "step cache" not in capsys.readouterr().out  # off: nothing to report
