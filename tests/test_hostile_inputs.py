"""Regression tests of issue 13: each hostile or careless input gets a clear error naming it (exit code 2 on the
command line, a skipped-and-counted record in data), and nothing is lost or half-written."""

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_manifest import make_clip, make_image, make_world
from test_pipeline import save_checkpoint, tiny_pipeline, tiny_refs

from e2v import registry
from e2v.atomic import write_json_atomic, write_text_atomic
from e2v.datamodules.commands import check_command
from e2v.datamodules.manifest import DEFAULT_MIN_REFERENCES, ManifestError, read_manifest, validate_manifest
from e2v.datamodules.references import load_reference
from e2v.datamodules.samples import SampleKey, Skipped, TripletDataset
from e2v.datamodules.triplets import TripletDataModule
from e2v.datamodules.video_io import load_image, save_image, write_video
from e2v.modules.weights import CheckpointError, parse_dtype
from e2v.pipeline.generate import build_parser, generate_command
from e2v.pipeline.pipeline import E2VPipeline, load_reference_image


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` RGB pixels (a decompression bomb's signature)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def one_record_world(root: Path, **record) -> Path:
    """A manifest with one good clip and one record built from ``record`` over it."""
    make_clip(root / "clip.mp4", 9, 16, 16, seed=0)
    make_image(root / "ref.png", 16, 16, seed=0)
    base = {"id": "r", "video": "clip.mp4", "caption": "x", "references": [{"path": "ref.png", "kind": "object"}]}
    manifest = root / "m.jsonl"
    manifest.write_text(json.dumps({**base, **record}) + "\n")
    return manifest


# ----------------------------------------------------------------------------------------------- output files
def test_outputs_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_video(tmp_path / "v.mp4", np.zeros((1, 8, 8, 3), np.uint8), fps=8)
        save_image(tmp_path / "i.png", np.zeros((8, 8, 3), np.uint8))
        write_text_atomic(tmp_path / "t.txt", "x")
        write_json_atomic(tmp_path / "j.json", {"a": 1})
    finally:
        os.umask(old)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {
        name: "0o644" for name in ("v.mp4", "i.png", "t.txt", "j.json")}


# ---------------------------------------------------------------------------------------------------- images
@pytest.mark.parametrize("mode, value, white", [("I;16", 32768, 65535), ("I", 32768, 65535), ("F", 0.5, 1.0)])
def test_wide_greyscale_images_are_scaled_not_clipped_to_white(tmp_path, mode, value, white):
    """Issue 13: a 16-bit greyscale PNG loaded as all-white."""
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    array = np.full((16, 16), value, dtype)
    array[0, 0] = white
    path = tmp_path / ("g.png" if mode == "I;16" else "g.tiff")
    Image.fromarray(array, mode=mode if mode != "I;16" else None).save(path)
    with Image.open(path) as img:
        assert img.mode == mode
        pil = load_reference_image(img)  # the generate API's PIL branch
    loaded = load_image(path)
    assert loaded[1, 1].tolist() == [128, 128, 128] and loaded[0, 0].tolist() == [255, 255, 255]
    torch.testing.assert_close(pil, load_reference(path))


def test_transparency_is_composited_onto_white(tmp_path):
    Image.new("LA", (8, 8), (0, 0)).save(tmp_path / "la.png")
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "rgba.png")
    for name in ("la.png", "rgba.png"):
        assert (load_image(tmp_path / name) == 255).all()


def test_decompression_bomb_is_a_bad_record_naming_the_file(tmp_path):
    """Issue 13: a PNG claiming 30000x30000 aborted data check and crashed fit with an uncaught error."""
    manifest = one_record_world(tmp_path, references=[{"path": "bomb.png", "kind": "object"}])
    (tmp_path / "bomb.png").write_bytes(png_claiming(30000, 30000))
    (tmp_path / "big.png").write_bytes(png_claiming(10000, 10000))  # over the limit: a warning in PIL
    for name in ("bomb.png", "big.png"):
        with pytest.raises(ValueError, match=f"{name}: image too large"):
            load_image(tmp_path / name)
    [bad] = validate_manifest(manifest, frames=9).bad
    assert bad.reason == "unreadable_image" and "bomb.png" in bad.message
    dataset = TripletDataset(read_manifest(manifest).good, [(9, 16, 16)], None, image_size=16)
    skipped = dataset[SampleKey(0, 0, 1, 0, 0, 0)]
    assert isinstance(skipped, Skipped) and skipped.reason == "unreadable_image" and "bomb.png" in skipped.message


def test_references_below_the_minimum_side_are_refused(tmp_path):
    manifest = one_record_world(tmp_path, references=[{"path": "dot.png", "kind": "object"}])
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(ValueError, match="dot.png: reference is 1x1 pixels; references need at least 8x8"):
        load_reference(tmp_path / "dot.png")
    with pytest.raises(ValueError, match="at least 8x8"):
        load_reference_image(torch.zeros(3, 1, 1))
    assert validate_manifest(manifest, frames=9).reasons == {"unreadable_image": 1}


# -------------------------------------------------------------------------------------------------- manifests
@pytest.mark.parametrize("record", [
    {"end": float("nan")}, {"start": float("nan")}, {"end": float("inf")}, {"start": 10**400}, {"end": True},
    {"references": [{"path": "ref.png", "kind": "object", "bbox": [0, 0, float("inf"), 4]}]},
    {"references": [{"path": "ref.png", "kind": "object", "bbox": [0, 0, float("nan"), 4]}]},
])
def test_non_finite_numbers_are_bad_values(tmp_path, record):
    """Issue 13: 1e999 / NaN in start, end or a bbox raised OverflowError / ValueError for the whole manifest."""
    manifest = one_record_world(tmp_path, **record)  # json.dumps writes NaN / Infinity, as careless writers do
    for report in (read_manifest(manifest), validate_manifest(manifest, frames=9)):
        assert report.reasons == {"bad_value": 1} and "finite number" in report.bad[0].message
    (tmp_path / "m.jsonl").write_text(manifest.read_text().replace("Infinity", "1e999"))
    assert read_manifest(manifest).reasons == {"bad_value": 1}


def test_end_far_past_the_clip_is_fine(tmp_path):
    assert validate_manifest(one_record_world(tmp_path, end=1e308), frames=9).reasons == {}


def test_non_utf8_line_is_a_bad_record_naming_its_line(tmp_path):
    manifest = make_world(tmp_path, count=2, frames=9)
    lines = manifest.read_bytes().splitlines()
    lines[1] = lines[1].replace(b"clip 1", b"caf\xe9")  # a Latin-1 byte in a caption
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    report = read_manifest(manifest)
    assert [r.id for r in report.good] == ["c0"]
    assert report.bad[0].where == f"{manifest}:2" and "not UTF-8" in report.bad[0].message


def test_empty_manifest_is_an_error_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("\n# only a comment\n")
    with pytest.raises(ManifestError, match="holds no records"):
        read_manifest(tmp_path / "empty.jsonl")
    assert check_command([str(tmp_path / "empty.jsonl")]) == 2
    assert "empty.jsonl holds no records" in capsys.readouterr().err


def test_data_check_and_fit_agree_on_zero_reference_records(tmp_path):
    manifest = one_record_world(tmp_path, references=[])
    assert validate_manifest(manifest, frames=9).reasons == {"too_few_references": 1}
    assert check_command([str(manifest)]) == 1
    data = TripletDataModule(str(manifest), frames=9, height=16, width=16)
    assert data.min_references == DEFAULT_MIN_REFERENCES == 1
    with pytest.raises(RuntimeError, match="1 of 1 records are bad.*too_few_references: 1"):
        data.setup("fit")


@pytest.mark.parametrize("option", [["--frames", "0"], ["--fps", "nan"], ["--fps", "-1"], ["--min-references", "-1"]])
def test_data_check_rejects_bad_options_with_exit_code_2(tmp_path, option):
    manifest = one_record_world(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        check_command([str(manifest), *option])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("counts, message", [((0, 0), "max_references must be >= 1"),
                                             ((4, 3), "min_references must be in")])
def test_reference_counts_fail_at_construction(counts, message):
    with pytest.raises(ValueError, match=message):
        TripletDataModule("unused.jsonl", min_references=counts[0], max_references=counts[1])


# ----------------------------------------------------------------------------------------- component options
@pytest.mark.parametrize("kind, spec, message", [
    ("timestep_sampler", {"name": "logit_normal", "std": "abc"}, "option 'std' must be float, got 'abc'"),
    ("dit", {"name": "wan", "num_attention_heads": "four"}, "option 'num_attention_heads' must be int, got 'four'"),
    ("dit", {"name": "wan", "patch_size": [1, 2]}, "option 'patch_size' must be tuple"),
    ("solver", {"name": "unipc", "num_steps": 2.5}, "option 'num_steps' must be int"),
    ("text_encoder", {"name": "umt5", "max_length": None}, "option 'max_length' must be int, got None"),
    ("dit", {"name": 3}, "'name' must be a string"),
])
def test_component_option_types_are_checked_when_built(kind, spec, message):
    with pytest.raises(TypeError, match=message):
        registry.build(kind, spec)


def test_recipe_with_a_mistyped_option_fails_at_module_construction():
    from e2v.tasks.e2v_diffusion import E2VDiffusion

    with pytest.raises(TypeError, match="timestep_sampler 'logit_normal': option 'std' must be float"):
        E2VDiffusion(timestep_sampler={"name": "logit_normal", "std": "abc"})


# ------------------------------------------------------------------------------------------------ e2v generate
@pytest.fixture(scope="module")
def generate_inputs(tmp_path_factory):
    """A tiny e2v checkpoint and two reference PNGs; returns (folder, base argv without --out)."""
    root = tmp_path_factory.mktemp("generate")
    torch.set_num_threads(2)
    save_checkpoint(tiny_pipeline(), root / "run.ckpt")
    for i, ref in enumerate(tiny_refs(2)):
        save_image(root / f"ref{i}.png", ref)
    argv = ["--checkpoint", str(root / "run.ckpt"), "--ref", str(root / "ref0.png"), "--ref", str(root / "ref1.png"),
            "--prompt", "a cat", "--height", "16", "--width", "32", "--frames", "9", "--steps", "1", "--no-progress"]
    return root, argv


@pytest.mark.parametrize("option", [
    ["--guidance", "nan"], ["--guidance", "inf"], ["--image-guidance", "nan"], ["--shift", "nan"], ["--shift", "0"],
    ["--fps", "nan"], ["--fps", "0"], ["--steps", "0"], ["--frames", "0"], ["--height", "20"], ["--seed", "-1"],
    ["--dtype", "float99"], ["--tile", "-5"], ["--step-cache", "inf"],
])
def test_generate_rejects_bad_numbers_at_parse_time(option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--ref", "a.png", "--prompt", "p", "--weights", "w", "--out", "o.mp4", *option])
    assert exit_info.value.code == 2 and f"argument {option[0]}" in capsys.readouterr().err


@pytest.mark.parametrize("name, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32),
                                         ("float32", torch.float32), ("torch.bfloat16", torch.bfloat16)])
def test_dtype_accepts_the_names_help_offers(name, dtype):
    assert build_parser().parse_args(["--ref", "a", "--prompt", "p", "--weights", "w", "--out", "o.mp4",
                                      "--dtype", name]).dtype == name
    assert parse_dtype(name) is dtype


def output_cases(root: Path) -> dict[str, tuple[list[str], str]]:
    (root / "folder").mkdir(exist_ok=True)
    (root / "afile").write_text("x")
    return {
        "out is the checkpoint": (["--out", str(root / "run.ckpt")], "same file as --checkpoint"),
        "out is a reference": (["--out", str(root / "ref1.png")], "same file as --ref"),
        "out is a folder": (["--out", str(root / "folder")], "is a directory"),
        "out under a file": (["--out", str(root / "afile" / "v.mp4")], "cannot write in"),
        "out is empty": (["--out", ""], "--out: empty file name"),
        "out on a read-only file system": (["--out", "/proc/e2v_video.mp4"], "cannot write in /proc"),
        "compare is out": (["--out", str(root / "v.mp4"), "--compare", str(root / "v.mp4")], "same file as --out"),
        "compare read-only": (["--out", str(root / "v.mp4"), "--compare", "/proc/c.mp4"], "--compare /proc/c.mp4"),
        "compare is a ref": (["--out", str(root / "v.mp4"), "--compare", str(root / "ref0.png")], "same file as --ref"),
    }


def test_generate_validates_outputs_before_loading_anything(generate_inputs, monkeypatch, capsys):
    """Issue 13: --out equal to --checkpoint or a --ref silently replaced that input; unwritable outputs failed
    only after sampling, losing the video."""
    root, argv = generate_inputs
    checkpoint = (root / "run.ckpt").read_bytes()
    refs = [(root / f"ref{i}.png").read_bytes() for i in range(2)]

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded for a request with a bad output path")

    monkeypatch.setattr(E2VPipeline, "from_checkpoint", must_not_load)
    for case, (outputs, message) in output_cases(root).items():
        assert generate_command(argv + outputs) == 2, case
        assert message in capsys.readouterr().err, case
    assert (root / "run.ckpt").read_bytes() == checkpoint
    assert [(root / f"ref{i}.png").read_bytes() for i in range(2)] == refs
    assert not (root / "v.mp4").exists() and not list(root.glob(".*.tmp*"))


def test_generate_refuses_too_many_references_saying_what_is_supported(generate_inputs, capsys):
    root, argv = generate_inputs
    nine = [x for _ in range(9) for x in ("--ref", str(root / "ref0.png"))]
    assert generate_command(argv + nine + ["--out", str(root / "nine.mp4")]) == 2
    assert "got 11 references; e2v generate supports 1 to 8" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", os.urandom(4096), "truncated"])
def test_broken_checkpoints_are_named_and_never_loaded_unsafely(generate_inputs, tmp_path, content, capsys):
    root, argv = generate_inputs
    data = (root / "run.ckpt").read_bytes()
    (tmp_path / "bad.ckpt").write_bytes(data[: len(data) // 2] if content == "truncated" else content)
    with pytest.raises(CheckpointError, match="bad.ckpt") as error:
        E2VPipeline.from_checkpoint(tmp_path / "bad.ckpt")
    assert "weights_only=False" not in str(error.value) and "weights_only` set to `False" not in str(error.value)
    bad_argv = [tmp_path / "bad.ckpt" if a == str(root / "run.ckpt") else a for a in argv]
    assert generate_command([str(a) for a in bad_argv] + ["--out", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err
    assert "bad.ckpt" in err and "Traceback" not in err and not (tmp_path / "v.mp4").exists()


def test_generate_writes_the_video_with_fp32_dtype_name(generate_inputs, tmp_path):
    root, argv = generate_inputs
    assert generate_command(argv + ["--out", str(tmp_path / "sub" / "v.mp4"), "--dtype", "fp32"]) == 0
    assert (tmp_path / "sub" / "v.mp4").stat().st_size > 0
