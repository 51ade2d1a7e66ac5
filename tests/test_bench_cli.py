"""e2v bench end to end on tiny mp4s: cases file errors, score (report contract, resume), compare, OpenS2V
converter, generation with a tiny pipeline."""

import json

import numpy as np
import pytest

from e2v.bench.cases import CasesError, read_cases
from e2v.cli import main
from e2v.datamodules.video_io import save_image, write_video

RED, BLUE, GREY = (230, 30, 30), (30, 30, 230), (128, 128, 128)


def disc_video(colour, step, frames=9, size=32, radius=5) -> np.ndarray:
    video = np.empty((frames, size, size, 3), np.uint8)
    video[:] = GREY
    y, x = np.mgrid[0:size, 0:size]
    for f, frame in enumerate(video):
        frame[(y - size // 2) ** 2 + (x - 6 - step * f) ** 2 <= radius**2] = colour
    return video


def disc_reference(colour, size=32) -> np.ndarray:
    image = np.full((size, size, 3), 255, np.uint8)
    y, x = np.mgrid[0:size, 0:size]
    image[(y - 16) ** 2 + (x - 16) ** 2 <= 100] = colour
    return image


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two cases (red moving disc with truth, blue still disc), two models' video folders."""
    root = tmp_path_factory.mktemp("bench")
    (root / "refs").mkdir()
    save_image(root / "refs/red.png", disc_reference(RED))
    save_image(root / "refs/blue.png", disc_reference(BLUE))
    save_image(root / "refs/plate.png", np.full((32, 32, 3), GREY, np.uint8))
    write_video(root / "truth_a.mp4", disc_video(RED, 2), fps=8)
    cases = [
        {"id": "a", "prompt": "a red ball rolls right", "video": "truth_a.mp4",
         "references": [{"path": "refs/red.png", "kind": "object"}, {"path": "refs/plate.png", "kind": "background"}]},
        {"id": "b", "prompt": "a blue ball", "references": [{"path": "refs/blue.png", "kind": "object"}]},
    ]
    (root / "cases.jsonl").write_text("\n".join(json.dumps(c) for c in cases) + "\n")
    for model, (step_a, colour_b) in {"good": (2, BLUE), "bad": (0, RED)}.items():
        (root / model).mkdir()
        write_video(root / model / "a.mp4", disc_video(RED, step_a), fps=8)
        write_video(root / model / "b.mp4", disc_video(colour_b, 2), fps=8)
    return root


SCORERS = ["--scorer", "dynamic_degree", "--scorer", "object_consistency", "--scorer", "background_consistency",
           "--scorer", "psnr", "--scorer", "aesthetic"]


def score(world, model, *extra):
    return main(["bench", "score", "--cases", str(world / "cases.jsonl"), "--videos", str(world / model),
                 "--out", str(world / f"report_{model}"), "--no-progress", *SCORERS, *extra])


def test_score_writes_the_report_contract(world):
    assert score(world, "good") == 0
    out = world / "report_good"
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"cases", "summary", "scorers"}
    assert [case["id"] for case in report["cases"]] == ["a", "b"]
    names = {"dynamic_degree", "object_consistency", "background_consistency", "psnr", "aesthetic", "comprehensive"}
    assert set(report["scorers"]) == names and set(report["summary"]) == names
    for info in report["scorers"].values():
        assert set(info) == {"version", "range", "higher_is_better", "model"}
    a, b = (case["metrics"] for case in report["cases"])
    assert a["dynamic_degree"] == 1.0 and b["dynamic_degree"] == 1.0
    assert a["psnr"] > 35 and b["psnr"] is None and b["background_consistency"] is None
    assert a["object_consistency"] > 0.4 and b["object_consistency"] > 0.4
    assert report["summary"]["psnr"] == a["psnr"]
    assert "| a |" in (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "thumbs/a.png" in html and (out / "thumbs/b.png").is_file()


@pytest.mark.slow  # a fresh mlflow sqlite store takes ~10 s to create (schema migrations)
def test_score_logs_to_mlflow_when_tracking_is_on(world, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert score(world, "good", "--tracking-uri", uri, "--experiment", "bench-test") == 0
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("bench-test").experiment_id])
    report = json.loads((world / "report_good/report.json").read_text())
    assert run.data.metrics["bench/dynamic_degree"] == report["summary"]["dynamic_degree"]
    assert run.data.params["scorer.psnr"] == "v1"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "report.md", "report.html", "thumbs"} <= artifacts


def test_score_resumes_from_stored_cases(world, monkeypatch):
    assert score(world, "good") == 0  # the module fixture's first run may not have happened in -k runs

    def refuse(*args, **kwargs):
        raise AssertionError("a stored case was scored again")

    monkeypatch.setattr("e2v.bench.runner.score_case", refuse)
    assert score(world, "good") == 0
    # another scorer set invalidates the stored cases
    with pytest.raises(AssertionError, match="scored again"):
        score(world, "good", "--scorer", "motion_amplitude")


def test_compare_ranks_models(world, capsys):
    assert score(world, "good") == 0 and score(world, "bad") == 0
    out = world / "compare"
    assert main(["bench", "compare", str(world / "report_good"), str(world / "report_bad"), "--out", str(out)]) == 0
    payload = json.loads((out / "compare.json").read_text())
    assert list(payload["models"]) == ["report_good", "report_bad"]
    good, bad = (payload["models"][n]["summary"] for n in ("report_good", "report_bad"))
    assert good["dynamic_degree"] == 1.0 and bad["dynamic_degree"] == 0.5
    assert good["object_consistency"] > bad["object_consistency"] + 0.3
    table = (out / "compare.md").read_text()
    assert "**1**" in table and (out / "bars.png").is_file() and (out / "radar.png").is_file()


def test_score_reports_missing_videos_and_bad_scorers(world, tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    code = main(["bench", "score", "--cases", str(world / "cases.jsonl"), "--videos", str(tmp_path / "videos"),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "lacks 2 of 2 case videos: a.mp4, b.mp4" in capsys.readouterr().err
    code = main(["bench", "score", "--cases", str(world / "cases.jsonl"), "--videos", str(world / "good"),
                 "--out", str(tmp_path / "out"), "--scorer", "no_such_scorer"])
    assert code == 2 and "no scorer named 'no_such_scorer'" in capsys.readouterr().err
    assert main(["bench", "nothing"]) == 2


@pytest.mark.parametrize("line, message", [
    ('{"id": "x", "prompt": "p", "references": [{"path": "refs/red.png"}]', "not valid JSON"),
    ('{"id": "x", "prompt": "p"}', "missing 'references'"),
    ('{"id": "x", "prompt": "p", "references": []}', "non-empty list"),
    ('{"id": "x", "prompt": "p", "references": [{"path": "refs/none.png", "kind": "object"}]}', "does not exist"),
    ('{"id": "a/b", "prompt": "p", "references": [{"path": "refs/red.png"}]}', "usable as a file name"),
    ('{"id": "x", "prompt": "p", "caption": "c", "references": [{"path": "refs/red.png"}]}', "unknown key"),
    ('{"id": "a", "prompt": "p", "references": [{"path": "refs/red.png"}]}', "duplicate id 'a' (first on line 1)"),
    ('["a list"]', "must be a JSON object"),
])
def test_bad_cases_file_names_file_and_line(world, line, message):
    good = '{"id": "a", "prompt": "p", "references": [{"path": "refs/red.png", "kind": "object"}]}'
    path = world / "bad.jsonl"
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(CasesError) as err:
        read_cases(path)
    assert f"{path}:3" in str(err.value) and message in str(err.value)


def test_empty_cases_file(world):
    (world / "empty.jsonl").write_text("\n")
    with pytest.raises(CasesError, match="no cases"):
        read_cases(world / "empty.jsonl")


def test_opens2v_converter(world, tmp_path):
    (tmp_path / "OpenS2V-Eval/Images").mkdir(parents=True)
    for name in ("man.png", "dog.png", "beach.png"):
        save_image(tmp_path / "OpenS2V-Eval/Images" / name, disc_reference(RED))
    source = tmp_path / "OpenS2V-Eval/Open-Domain_Eval.json"
    source.write_text(json.dumps({
        "singleface_1": {"prompt": "a man smiles", "img_paths": ["Images/man.png"], "class_label": ["Man"]},
        "multiobject_2": {"prompt": "a man walks a dog on a beach", "img_paths":
                          ["Images/man.png", "Images/dog.png", "Images/beach.png"],
                          "class_label": ["Man", "dog", "beach background"], "other": 1},
    }))
    out = tmp_path / "cases" / "opens2v.jsonl"
    assert main(["bench", "from-opens2v", str(source), "--out", str(out)]) == 0
    cases = read_cases(out)
    assert [c.id for c in cases] == ["singleface_1", "multiobject_2"]
    assert [r.kind for r in cases[0].references] == ["face"]
    assert [r.kind for r in cases[1].references] == ["human", "object", "background"]
    assert cases[1].references[1].path.resolve() == (tmp_path / "OpenS2V-Eval/Images/dog.png").resolve()
    source.write_text(json.dumps({"x": {"prompt": "p", "img_paths": ["Images/missing.png"]}}))
    assert main(["bench", "from-opens2v", str(source), "--out", str(out)]) == 2


def test_run_generates_then_scores_and_keeps_generated_videos(world, tmp_path, capsys):
    from test_pipeline import save_checkpoint, tiny_pipeline

    save_checkpoint(tiny_pipeline(), tmp_path / "tiny.ckpt")
    cases = tmp_path / "one.jsonl"
    cases.write_text((world / "cases.jsonl").read_text().splitlines()[1].replace("refs/", f"{world}/refs/") + "\n")
    args = ["bench", "run", "--cases", str(cases), "--checkpoint", str(tmp_path / "tiny.ckpt"), "--out",
            str(tmp_path / "out"), "--height", "16", "--width", "32", "--frames", "5", "--steps", "1",
            "--guidance", "1", "--no-progress", "--scorer", "dynamic_degree"]
    assert main(args) == 0
    video = tmp_path / "out/videos/b.mp4"
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["cases"][0]["id"] == "b" and 0.0 <= report["summary"]["dynamic_degree"] <= 1.0
    stamp = video.stat().st_mtime_ns
    assert main(args) == 0 and video.stat().st_mtime_ns == stamp  # resumed: not generated again
    assert main(args[:5] + [str(tmp_path / "missing.ckpt")] + args[6:]) == 2
    assert "missing.ckpt does not exist" in capsys.readouterr().err
    assert main(args + ["--steps", "2"]) == 2  # other settings than the stored videos'
    assert "steps differ" in capsys.readouterr().err


def test_manifest_cases_truth_beats_rotated_references(world, tmp_path, capsys):
    """The tiny world's held-out check in small: truth clips with their own references score higher on
    consistency than the same clips with the next record's references."""
    (tmp_path / "clips").mkdir()
    write_video(tmp_path / "clips/red.mp4", disc_video(RED, 2), fps=8)
    write_video(tmp_path / "clips/blue.mp4", disc_video(BLUE, 2), fps=8)
    records = [{"id": colour, "video": f"clips/{colour}.mp4", "caption": f"a {colour} ball",
                "references": [{"path": str(world / f"refs/{colour}.png"), "kind": "object"}]}
               for colour in ("red", "blue")]
    (tmp_path / "heldout.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    means = {}
    for name, extra in (("truth", []), ("rotated", ["--rotate-references"])):
        cases = tmp_path / f"{name}.jsonl"
        assert main(["bench", "from-manifest", str(tmp_path / "heldout.jsonl"), "--out", str(cases), *extra]) == 0
        assert main(["bench", "score", "--cases", str(cases), "--videos", str(tmp_path / "clips"), "--out",
                     str(tmp_path / name), "--no-progress", "--scorer", "object_consistency", "--scorer", "psnr"]) == 0
        means[name] = json.loads((tmp_path / name / "report.json").read_text())["summary"]
    assert means["truth"]["object_consistency"] > means["rotated"]["object_consistency"] + 0.3
    assert means["truth"]["psnr"] > 60  # the clip is its own truth
    assert main(["bench", "from-manifest", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "x.jsonl")]) == 2
