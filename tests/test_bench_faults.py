"""Issue 29: ``e2v bench`` never reuses scores or videos of a case that changed (BAD 2), and its hostile inputs."""

import json

import numpy as np
import pytest
from test_bench_cli import BLUE, GREY, RED, disc_reference, disc_video

from e2v.cli import main
from e2v.datamodules.video_io import save_image, write_video

SCORERS = ["--scorer", "object_consistency", "--scorer", "psnr"]


@pytest.fixture
def world(tmp_path):
    """One case (a red disc with its truth clip) and a model's video of it."""
    (tmp_path / "refs").mkdir()
    save_image(tmp_path / "refs/ball.png", disc_reference(RED))
    write_video(tmp_path / "truth.mp4", disc_video(RED, 2), fps=8)
    (tmp_path / "model").mkdir()
    write_video(tmp_path / "model/a.mp4", disc_video(RED, 2), fps=8)
    write_cases(tmp_path, "a red ball rolls right")
    return tmp_path


def write_cases(root, prompt, **extra):
    case = {"id": "a", "prompt": prompt, "video": "truth.mp4", "references": [{"path": "refs/ball.png"}], **extra}
    (root / "cases.jsonl").write_text(json.dumps(case) + "\n")


def scores(root, out):
    assert main(["bench", "score", "--cases", str(root / "cases.jsonl"), "--videos", str(root / "model"), "--out",
                 str(root / out), "--no-progress", *SCORERS]) == 0
    return json.loads((root / out / "report.json").read_text())["cases"][0]["metrics"]


def test_an_edited_case_is_scored_afresh(world):
    """BAD 2: the reuse key was the scorers plus the video's size and mtime, so a case whose references or truth
    clip changed kept its old scores (object 0.505 where fresh is 0.212; PSNR 126 where fresh is 8.89)."""
    first = scores(world, "out")
    save_image(world / "refs/ball.png", disc_reference(BLUE))  # another reference, same name, same size
    write_video(world / "truth.mp4", disc_video(GREY, 2), fps=8)
    again = scores(world, "out")
    assert again == scores(world, "fresh") and again != first
    assert again["object_consistency"] < first["object_consistency"] and again["psnr"] < first["psnr"]


def test_run_regenerates_only_the_edited_cases(world, tmp_path_factory, monkeypatch):
    """BAD 2: ``bench run`` kept the old video of a case whose prompt or references changed."""
    from test_pipeline import save_checkpoint, tiny_pipeline

    checkpoint = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    save_checkpoint(tiny_pipeline(), checkpoint)
    case_b = {"id": "b", "prompt": "a still ball", "references": [{"path": "refs/ball.png"}]}
    args = ["bench", "run", "--cases", str(world / "cases.jsonl"), "--checkpoint", str(checkpoint), "--out",
            str(world / "run"), "--height", "16", "--width", "32", "--frames", "5", "--steps", "1", "--guidance", "1",
            "--no-progress", "--scorer", "dynamic_degree"]

    def cases(prompt):
        write_cases(world, prompt)
        with open(world / "cases.jsonl", "a") as handle:
            handle.write(json.dumps(case_b) + "\n")

    made = []
    from e2v.bench import runner

    real = runner.write_video
    monkeypatch.setattr(runner, "write_video", lambda path, *a, **k: (made.append(path.name), real(path, *a, **k)))
    cases("a red ball rolls right")
    assert main(args) == 0 and sorted(made) == ["a.mp4", "b.mp4"]
    assert main(args) == 0 and len(made) == 2  # nothing changed: nothing generated
    cases("a red ball rolls left")
    assert main(args) == 0 and made[2:] == ["a.mp4"]
    save_image(world / "refs/ball.png", disc_reference(BLUE))
    assert main(args) == 0 and sorted(made[3:]) == ["a.mp4", "b.mp4"]
    assert np.isfinite(json.loads((world / "run/report.json").read_text())["summary"]["dynamic_degree"])


def test_hostile_cases_and_videos_are_named_not_tracebacks(world, capsys):
    """POOR: a PNG accepted as a truth video; ids with # ? | or a newline broke the HTML and markdown; a 4000x16
    video crashed the smoothness scorer with a cv2 traceback; an all-white subject reference scored 0, not null;
    ``compare A A`` reported one model quietly."""
    from e2v.bench.cases import CasesError, read_cases

    save_image(world / "still.png", disc_reference(RED))
    for case, message in (({"video": "still.png"}, "is not a video file"),
                          ({"id": "a#1"}, "'id' must be"), ({"id": "a?b|c"}, "'id' must be"),
                          ({"id": "a\nb"}, "'id' must be")):
        write_cases(world, "p", **case)
        with pytest.raises(CasesError, match=message):
            read_cases(world / "cases.jsonl")
    write_cases(world, "p")
    write_video(world / "model/a.mp4", np.full((3, 16, 4000, 3), 128, np.uint8), fps=8)
    assert main(["bench", "score", "--cases", str(world / "cases.jsonl"), "--videos", str(world / "model"), "--out",
                 str(world / "wide"), "--no-progress", "--scorer", "motion_smoothness"]) == 0
    save_image(world / "refs/ball.png", np.full((32, 32, 3), 255, np.uint8))
    write_video(world / "model/a.mp4", disc_video(RED, 2), fps=8)
    assert scores(world, "white")["object_consistency"] is None
    assert main(["bench", "compare", str(world / "white"), str(world / "white/../white"), "--out",
                 str(world / "cmp"), "--no-charts"]) == 2
    assert "is given twice" in capsys.readouterr().err
