"""``e2v app`` without a browser: forms become ``e2v generate`` command lines that make the same video, bad forms
are refused with a message and leave nothing behind, cancellation, defaults from the loaded pipeline, the
Evaluate / Compare helpers and the command's own checks. The page itself is tested in a real browser in
tests/test_app_browser.py."""

import argparse
import json
import math
import shlex

import numpy as np
import pytest

pytest.importorskip("gradio")

from e2v.app.command import app_command, listen_warning  # noqa: E402
from e2v.app.evaluate import compare_reports, evaluate, report_folders  # noqa: E402
from e2v.app.jobs import Cancelled, Form, JobRunner, form_defaults  # noqa: E402
from e2v.argtypes import BadInput  # noqa: E402
from e2v.datamodules.video_io import load_image, probe_video, read_video, save_image  # noqa: E402
from e2v.pipeline.generate import build_parser, generate_command  # noqa: E402
from test_hostile_inputs import png_claiming  # noqa: E402
from test_pipeline import save_checkpoint, tiny_pipeline, tiny_refs  # noqa: E402


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A JobRunner over a tiny checkpoint (loaded as ``e2v app`` loads it), three reference files."""
    root = tmp_path_factory.mktemp("app")
    save_checkpoint(tiny_pipeline(), root / "tiny.ckpt")
    for i, ref in enumerate(tiny_refs(3)):
        save_image(root / f"ref{i}.png", ref)
    args = build_parser().parse_args(["--checkpoint", str(root / "tiny.ckpt"), "--prompt", "x", "--out", "x.mp4",
                                      "--ref", "x"])
    from e2v.pipeline.generate import build_pipeline

    return JobRunner(build_pipeline(args, None), args, root / "out"), root


def form(root, count=3, **overrides) -> Form:
    values = dict(references=[(str(root / f"ref{i}.png"), "background" if i == 2 else "object")
                              for i in range(count)],
                  prompt="a cat chases a red ball", negative_prompt="", seed=3.0, height=16.0, width=32.0,
                  frames=13.0, fps=8.0, steps=2.0, guidance=1.0, image_guidance=None, solver="unipc", shift=3.0,
                  step_cache=0.0, teacache=None)
    values.update(overrides)
    return Form(**values)


def test_a_job_is_the_e2v_generate_command_it_shows(app, tmp_path):
    runner, root = app
    steps = []
    result = runner.run(form(root), progress=lambda done, total, left: steps.append((done, total, left)))
    assert [s[:2] for s in steps] == [(1, 2), (2, 2)] and steps[-1][2] == 0
    assert probe_video(result.video)["frames"] == 13  # --frames is the written video's length (28.2)
    strip = load_image(result.strip)
    assert strip.shape[0] == 96 and strip.shape[1] > 96 * 3  # three references, a gap, then frames
    saved = json.loads((result.folder / "settings.json").read_text())
    assert saved["command"] == result.settings["command"] and saved["steps"] == 2.0
    assert [kind for _, kind in saved["references"]] == ["object", "object", "background"]
    argv = shlex.split(result.settings["command"])
    assert argv[:2] == ["e2v", "generate"]
    out = tmp_path / "cli.mp4"
    argv[argv.index("--out") + 1] = str(out)
    assert generate_command(argv[2:] + ["--no-progress"]) == 0
    np.testing.assert_array_equal(read_video(out, None).numpy(), read_video(result.video, None).numpy())


def hostile_uploads(root):
    (root / "notes.png").write_bytes(b"this is not an image")
    save_image(root / "tiny.png", np.zeros((8, 1, 3), np.uint8))  # an 8-pixel picture
    (root / "bomb.png").write_bytes(png_claiming(30000, 30000))
    return root


@pytest.mark.parametrize("change, message", [
    (dict(references=[("notes.png", "object")]), "notes.png: cannot decode image"),
    (dict(references=[("tiny.png", "object")]), "tiny.png: reference is 1x8 pixels; references need at least 8x8"),
    (dict(references=[("bomb.png", "object")]), "bomb.png: image too large"),
    (dict(references=[("ref0.png", "object")] * 9), "got 9 references; e2v generate supports 1 to 8"),
    (dict(references=[("ref0.png", "alien")]), "unknown kind 'alien'"),
    (dict(references=[]), "at least one reference"),
    (dict(height=40.0), "--height: expected a positive multiple of 16, got '40'"),
    (dict(steps=math.nan), "--steps: expected an integer >= 1, got 'nan'"),
    (dict(guidance=None), "--guidance: expected a finite number >= 0, got ''"),
    (dict(frames=10.0), "frame count must be 4k\\+1"),
    (dict(frames=5.0), "3 references need at least 13 frames"),
    (dict(prompt="  "), "the prompt is empty"),
])
def test_bad_forms_are_refused_naming_the_field_and_leave_no_job_folder(app, change, message):
    runner, root = app
    hostile_uploads(root)
    if "references" in change:
        change = dict(references=[(str(root / name), kind) for name, kind in change["references"]])
    before = sorted((runner.out / "jobs").glob("*")) if (runner.out / "jobs").is_dir() else []
    with pytest.raises(BadInput, match=message):
        runner.run(form(root, **change))
    assert sorted((runner.out / "jobs").glob("*")) == before


def test_jobs_share_one_pipeline_with_their_own_solver_and_can_be_cancelled(app):
    runner, root = app
    result = runner.run(form(root, solver="euler", shift=5.0, step_cache=0.1))
    assert type(runner.pipe.solver).__name__ == "FlowEuler" and runner.pipe.solver.shift == 5.0
    assert runner.pipe.step_cache is not None
    assert "--solver euler" in result.settings["command"] and "--step-cache 0.1" in result.settings["command"]
    count = len(runner.results)
    with pytest.raises(Cancelled, match="cancelled at step 2 of 3"):
        runner.run(form(root, steps=3.0), session="s", progress=lambda done, total, left: runner.cancel("s"))
    assert len(runner.results) == count and not runner.cancel("s")  # nothing left running, no folder kept
    assert len(list((runner.out / "jobs").iterdir())) == count
    assert runner.run(form(root), session="s").video.is_file()
    assert runner.pipe.step_cache is None and runner.pipe.solver.shift == 3.0


def test_form_defaults_are_the_pipelines():
    args = argparse.Namespace(negative_prompt=None, seed=0, height=480, width=832, frames=81, fps=16.0, guidance=5.0,
                              image_guidance=None, step_cache=None, teacache=None)
    pipe = tiny_pipeline(solver={"name": "euler", "num_steps": 4, "shift": 3.0}, preset="official")
    defaults = form_defaults(args, pipe)
    assert (defaults["solver"], defaults["steps"], defaults["shift"]) == ("euler", 4, 3.0)
    assert defaults["negative_prompt"] == pipe.preset.negative_prompt and len(defaults["negative_prompt"]) > 100


def test_evaluate_a_result_beside_the_anchors_then_compare(app):
    runner, root = app
    result = runner.results[0] if runner.results else runner.run(form(root))
    refs = [(path, kind) for path, kind in result.settings["references"]]
    report, rows, folder = evaluate(result.video, refs, "a cat", ["object_consistency", "dynamic_degree"],
                                    runner.out)
    assert (folder / "report.json").is_file() and set(report["summary"]) >= {"object_consistency"}
    row = next(r for r in rows if r[0].startswith("object_consistency"))
    assert row[-1] == "0.809" and float(row[1]) == pytest.approx(report["summary"]["object_consistency"], abs=1e-3)
    assert str(folder) in report_folders([runner.out])
    _, _, second = evaluate(result.video, refs, "a dog", ["object_consistency", "dynamic_degree"], runner.out)
    text, charts, compared = compare_reports([str(folder), str(second)], runner.out)
    assert "object_consistency" in text and compared.parent == runner.out / "compares"
    with pytest.raises(ValueError, match="no report.json"):
        compare_reports([str(root)], runner.out)


def test_listen_warning_only_off_loopback():
    assert listen_warning("127.0.0.1") is None and listen_warning("::1") is None and listen_warning("localhost") is None
    assert "listening on 0.0.0.0" in listen_warning("0.0.0.0")


def test_command_refuses_bad_options_before_loading(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        app_command(["--help"])
    assert exit_info.value.code == 0
    assert app_command(["--checkpoint", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "out")]) == 2
    assert "missing.ckpt does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        app_command(["--checkpoint", "x.ckpt", "--port", "70000"])
