"""Issue 15, deliverable 5: ``e2v generate --batch requests.jsonl`` (weights loaded once, one timing line per
video, every bad line reported by number before anything is loaded or generated) and the preset defaults."""

from __future__ import annotations

import json
import re

import pytest
import torch
from test_pipeline import save_checkpoint, tiny_pipeline, tiny_refs

from e2v.datamodules.video_io import probe_video, save_image
from e2v.pipeline import generate as generate_module
from e2v.pipeline.generate import build_parser, generate_command, resolve_preset
from e2v.pipeline.pipeline import E2VPipeline

SMALL = ["--height", "16", "--width", "32", "--frames", "9", "--steps", "1", "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    torch.set_num_threads(2)
    save_checkpoint(tiny_pipeline(), root / "run.ckpt")
    for i, ref in enumerate(tiny_refs(3)):
        save_image(root / f"ref{i}.png", ref)
    return root


def write_requests(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_batch_loads_once_and_reports_one_timing_line_per_video(world, tmp_path, monkeypatch, capsys):
    requests = write_requests(tmp_path / "requests.jsonl", [
        {"prompt": "a cat", "references": [str(world / "ref0.png"), {"path": str(world / "ref1.png"),
                                                                     "kind": "background"}], "out": "a.mp4"},
        "",
        {"prompt": "a dog", "references": [f"{world / 'ref2.png'}:object"], "out": "sub/b.mp4", "seed": 5,
         "frames": 13, "guidance": 1.0},
    ])
    loads, written = [], {}
    load = E2VPipeline.from_checkpoint
    monkeypatch.setattr(E2VPipeline, "from_checkpoint", lambda *a, **k: loads.append(1) or load(*a, **k))
    write = generate_module.write_video
    monkeypatch.setattr(generate_module, "write_video",
                        lambda path, video, fps: (written.__setitem__(str(path), video), write(path, video, fps)))

    assert generate_command(["--checkpoint", str(world / "run.ckpt"), "--batch", str(requests), *SMALL]) == 0
    out = capsys.readouterr().out
    assert len(loads) == 1
    timing = re.findall(r"^\[(\d)/2\] line (\d): wrote (\S+): (\d+) frames 32x16 \(sampled (\d+), (\d) reference "
                        r"frames cut\), seed (\d+): generated in [\d.]+s, written in [\d.]+s$", out, flags=re.M)
    # --frames / "frames" is the written length whatever the reference count: 2 refs cut 5 frames, 1 ref cuts 1
    assert [(i, line, frames, sampled, cut, s) for i, line, _, frames, sampled, cut, s in timing] == [
        ("1", "1", "9", "17", "5", "0"), ("2", "3", "13", "17", "1", "5")]
    assert "loaded the model in" in out and "(preset e2v)" in out
    assert probe_video(tmp_path / "a.mp4")["frames"] == 9 and probe_video(tmp_path / "sub" / "b.mp4")["frames"] == 13

    # each batch video is what the pipeline makes for that request alone (line settings over the defaults)
    pipe = load(world / "run.ckpt", solver={"name": "unipc", "shift": 8.0, "num_steps": 1}, device="cpu")
    alone = pipe([world / "ref2.png"], "a dog", height=16, width=32, output_frames=13, steps=1, guidance=1.0, seed=5,
                 progress=False)
    torch.testing.assert_close(written[str(tmp_path / "sub" / "b.mp4")], alone, atol=1e-6, rtol=0)


def test_bad_lines_are_all_reported_by_number_before_any_model_loads(world, tmp_path, monkeypatch, capsys):
    ref = str(world / "ref0.png")
    requests = write_requests(tmp_path / "bad.jsonl", [
        {"prompt": "fine", "references": [ref], "out": "ok.mp4"},
        "{not json",
        {"prompt": "p", "references": [ref], "out": "x.mp4", "colour": "red"},
        {"references": [ref], "out": "y.mp4"},
        {"prompt": "p", "references": [ref], "out": "z.mp4", "frames": 0},
        {"prompt": "p", "references": [str(world / "missing.png")], "out": "w.mp4"},
        {"prompt": "p", "references": [ref], "out": "ok.mp4"},
        {"prompt": "p", "references": [ref], "out": ref},
        {"prompt": "p", "references": [ref] * 9, "out": "n.mp4"},
        {"prompt": "p", "references": [ref], "out": "s.mp4", "seed": True},
    ])

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded for a batch with bad lines")

    monkeypatch.setattr(E2VPipeline, "from_checkpoint", must_not_load)
    assert generate_command(["--checkpoint", str(world / "run.ckpt"), "--batch", str(requests), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "9 bad request line(s), nothing generated" in err
    expected = {2: "not valid JSON", 3: "unknown key(s) ['colour']", 4: "missing 'prompt'", 5: "'frames': expected an integer >= 1",
                6: "missing.png", 7: "is also the output of line 1", 8: "same file as reference",
                9: "got 9 references; e2v generate supports 1 to 8", 10: "'seed' must be a number"}
    for line, message in expected.items():
        assert re.search(rf"bad\.jsonl line {line}: .*{re.escape(message)}", err), (line, err)
    assert "line 1:" not in err
    assert not list(tmp_path.glob("*.mp4"))


@pytest.mark.parametrize("argv, message", [
    (["--batch", "r.jsonl", "--ref", "a.png"], "--batch takes references, prompts and outputs from its lines; drop --ref"),
    (["--prompt", "p"], "the following arguments are required: --ref, --out (or --batch)"),
])
def test_batch_and_single_request_options_do_not_mix(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate_command(["--weights", "w", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_preset_defaults_official_for_weights_and_e2v_for_checkpoints():
    base = ["--ref", "a.png", "--prompt", "p", "--out", "o.mp4"]
    assert resolve_preset(build_parser().parse_args([*base, "--weights", "w"])).name == "official"
    assert resolve_preset(build_parser().parse_args([*base, "--checkpoint", "c.ckpt"])).name == "e2v"
    assert resolve_preset(build_parser().parse_args([*base, "--weights", "w", "--preset", "e2v"])).name == "e2v"
    assert build_parser().parse_args([*base, "--weights", "w"]).negative_prompt is None  # the preset's


def test_no_batch_line_may_write_over_the_requests_file(world, tmp_path, monkeypatch, capsys):
    """Issue 29 BAD 6: a line whose 'out' (or 'compare') was the --batch file turned the requests file into an mp4."""
    ref = str(world / "ref0.png")
    requests = write_requests(tmp_path / "self.jsonl", [
        {"prompt": "p", "references": [ref], "out": "self.jsonl"},
        {"prompt": "p", "references": [ref], "out": "ok.mp4", "compare": str(tmp_path / "self.jsonl")},
    ])
    before = requests.read_bytes()
    monkeypatch.setattr(E2VPipeline, "from_checkpoint", lambda *a, **k: pytest.fail("a model was loaded"))
    assert generate_command(["--checkpoint", str(world / "run.ckpt"), "--batch", str(requests), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "self.jsonl line 1: 'out'" in err and "self.jsonl line 2: 'compare'" in err
    assert err.count("is the same file as --batch") == 2
    assert requests.read_bytes() == before


def test_nan_weights_write_no_black_video_and_a_rejected_batch_leaves_no_folder(world, tmp_path, capsys):
    """POOR: all-NaN weights wrote a black video with exit 0; a rejected batch left an empty ``sub/``."""
    pipe = tiny_pipeline()
    for parameter in pipe.dit.parameters():
        parameter.data.fill_(float("nan"))
    save_checkpoint(pipe, tmp_path / "nan.ckpt")
    out = tmp_path / "v.mp4"
    assert generate_command(["--checkpoint", str(tmp_path / "nan.ckpt"), "--ref", str(world / "ref0.png"),
                             "--prompt", "p", "--out", str(out), *SMALL]) == 1
    assert "non-finite values (NaN or inf)" in capsys.readouterr().err and not out.exists()
    requests = write_requests(tmp_path / "r.jsonl", [{"prompt": "p", "references": ["missing.png"],
                                                     "out": "sub/deeper/v.mp4"}])
    assert generate_command(["--checkpoint", str(world / "run.ckpt"), "--batch", str(requests), *SMALL]) == 2
    assert not (tmp_path / "sub").exists()


def test_a_wrong_shaped_checkpoint_tensor_names_the_file(world, tmp_path, capsys):
    """Issue 29 POOR: a wrong-shaped DiT tensor in ``generate`` gave a size-mismatch error without the file."""
    checkpoint = torch.load(world / "run.ckpt", weights_only=True)
    key = next(k for k, v in checkpoint["state_dict"].items() if v.ndim == 2)
    checkpoint["state_dict"][key] = torch.zeros(3, 3)
    torch.save(checkpoint, tmp_path / "bent.ckpt")
    assert generate_command(["--checkpoint", str(tmp_path / "bent.ckpt"), "--ref", str(world / "ref0.png"),
                             "--prompt", "p", "--out", str(tmp_path / "v.mp4"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'bent.ckpt'}: DiT weights do not fit" in err and key[len("dit."):] in err
