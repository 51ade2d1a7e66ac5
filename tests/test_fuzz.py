"""Property-based fuzzing (hypothesis) of what users hand e2v: manifest records, image files, and the arguments of
``e2v data check`` and ``e2v generate``.

Invariant: a correct result, or a clear error naming the input (exit code 2 on the command line, a skipped and
counted record in data); never a traceback from deep inside, a hang, or a partial output file.
"""

import io
import json
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_hostile_inputs import png_claiming
from test_manifest import make_clip, make_image
from test_pipeline import save_checkpoint, tiny_pipeline

from e2v import registry
from e2v.datamodules.commands import check_command
from e2v.datamodules.manifest import REASONS, ManifestError, validate_manifest
from e2v.datamodules.references import MIN_REFERENCE_SIDE, load_reference
from e2v.datamodules.video_io import load_image
from e2v.pipeline.generate import build_parser, generate_command
from e2v.pipeline.pipeline import E2VPipeline

EXAMPLES = int(os.environ.get("E2V_FUZZ_EXAMPLES", "50"))  # raise it for a deeper run than the fast suite's
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A folder with one good 9-frame clip and one good reference image."""
    root = tmp_path_factory.mktemp("fuzz_media")
    make_clip(root / "clip.mp4", 9, 16, 16, seed=0)
    make_image(root / "ref.png", 16, 16, seed=0)
    return root


# ---------------------------------------------------------------------------------------------- manifests
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**400), 10**400),
                    st.sampled_from([0, 0.5, 1e308, -0.0, 1e-320]))
JSON_SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=8)
PATHS = st.one_of(st.sampled_from(["ref.png", "clip.mp4", "missing.png", "", ".", "..", "/", "/dev/null",
                                   "/proc/self/mem", "ref.png/x", "\x00", "~/nope.png", "a" * 300]),
                  st.text(max_size=30), JSON_VALUES)
REFERENCE = st.fixed_dictionaries(
    {"path": PATHS, "kind": st.one_of(st.sampled_from(["object", "background", "face"]), JSON_VALUES)},
    optional={"bbox": st.one_of(st.lists(NUMBERS, min_size=4, max_size=4), JSON_VALUES),
              "element": JSON_VALUES, "mask": PATHS})
GOOD = {"id": "x", "video": "clip.mp4", "caption": "a cat", "references": [{"path": "ref.png", "kind": "object"}]}
FIELD_VALUES = {"id": JSON_VALUES, "video": PATHS, "caption": JSON_VALUES, "start": NUMBERS, "end": NUMBERS,
                "references": st.one_of(st.lists(REFERENCE, max_size=3), JSON_VALUES), "split": JSON_VALUES}


@st.composite
def records(draw) -> str:
    """One manifest line: the good record with some fields replaced or dropped, or arbitrary JSON, or raw text."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "json", "text"]))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES))
    if kind == "text":
        return draw(st.text(max_size=40)).replace("\n", " ").replace("\r", " ")
    record = dict(GOOD, id=draw(st.text(min_size=1, max_size=6)))
    for key in draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), max_size=3, unique=True)):
        record[key] = draw(FIELD_VALUES[key])
    for key in draw(st.lists(st.sampled_from(sorted(GOOD)), max_size=1)):
        record.pop(key, None)
    return json.dumps(record)  # writes NaN / Infinity as careless writers do


@FUZZ
@given(lines=st.lists(records(), min_size=1, max_size=4), raw=st.one_of(st.none(), st.binary(max_size=30)))
@example(lines=[json.dumps(dict(GOOD, end=float("nan"))), json.dumps(dict(GOOD, id="y", start=10**400))], raw=None)
@example(lines=[json.dumps(GOOD)], raw=b"\xff\xfe caf\xe9 \x00")
@example(lines=[json.dumps(dict(GOOD, video="a" * 300)), json.dumps(dict(GOOD, id="y", references=[
    {"path": "b" * 300 + ".png", "kind": "object"}]))], raw=None)  # names the file system cannot look up
def test_every_manifest_line_is_good_or_a_counted_bad_record(media, lines, raw):
    manifest = media / "fuzz.jsonl"
    data = "\n".join(lines).encode() + b"\n" + (raw.replace(b"\n", b" ") + b"\n" if raw is not None else b"")
    manifest.write_bytes(data)
    def utf8(line: bytes) -> bool:
        try:
            line.decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False

    # a comment is skipped; a line that is not UTF-8 text is a counted bad record, whatever it starts with
    content = [line for line in data.split(b"\n")
               if line.strip() and not (line.strip().startswith(b"#") and utf8(line))]
    try:
        report = validate_manifest(manifest, frames=5, decode=True)
    except ManifestError as err:
        assert not content and str(manifest) in str(err)
        return
    assert report.total == len(content)
    assert all(bad.reason in REASONS and bad.where.startswith(f"{manifest}:") for bad in report.bad)
    str(report.summary()).encode("utf-8")  # printable, even with lone surrogates from JSON escapes
    for bad in report.bad:
        str(bad).encode("utf-8")
    for good in report.good:
        assert math.isfinite(good.start) and (good.end is None or math.isfinite(good.end))
    assert check_command([str(manifest), "--frames", "5", "--show", "-1"]) == (1 if report.bad else 0)


# -------------------------------------------------------------------------------------------------- images
MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "I", "I;16", "F", "CMYK", "YCbCr"]
FORMATS = {"PNG": ["1", "L", "P", "RGB", "RGBA", "LA", "I;16"], "TIFF": MODES[:-1], "JPEG": ["L", "RGB", "CMYK"],
           "BMP": ["1", "L", "P", "RGB"], "GIF": ["L", "P"], "WEBP": ["RGB", "RGBA"]}


@st.composite
def image_files(draw) -> tuple[bytes, tuple[int, int] | None]:
    """(file bytes, (height, width) if the file is a whole image else None)."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    data = buffer.getvalue()
    damage = draw(st.sampled_from(["none", "none", "truncate", "garbage", "bomb", "random"]))
    if damage == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))], None
    if damage == "garbage":
        cut = draw(st.integers(0, len(data)))
        return data[:cut] + draw(st.binary(min_size=1, max_size=64)) + data[cut:], None
    if damage == "bomb":
        return png_claiming(draw(st.integers(10000, 2**31 - 1)), draw(st.integers(10000, 2**31 - 1))), None
    if damage == "random":
        return draw(st.binary(max_size=200)), None
    return data, (height, width)


@FUZZ
@given(file=image_files())
def test_image_files_load_as_rgb_or_fail_naming_the_file(tmp_path, file):
    data, size = file
    path = tmp_path / "fuzz_image"
    path.write_bytes(data)
    try:
        image = load_image(path)
    except ValueError as err:
        assert str(path) in str(err) and size is None, err
        return
    assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[-1] == 3
    if size is not None:
        assert tuple(image.shape[:2]) == size
    try:
        reference = load_reference(path)
    except ValueError as err:
        assert str(path) in str(err) and min(image.shape[:2]) < MIN_REFERENCE_SIDE
        return
    assert reference.shape == (3, *image.shape[:2]) and reference.min() >= -1 and reference.max() <= 1


@FUZZ
@given(value=st.integers(0, 65535), mode=st.sampled_from(["I;16", "L"]))
def test_greyscale_levels_survive_loading(tmp_path, value, mode):
    wide = mode == "I;16"
    array = np.full((8, 8), value if wide else value // 257, np.uint16 if wide else np.uint8)
    Image.fromarray(array).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png")[0, 0].tolist() == [round(value / 257) if wide else value // 257] * 3


# --------------------------------------------------------------------------------------- command arguments
NUMBER_TEXT = st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e999", "0", "-1", "1", "2.5", "81", "", " ", "x",
                                         "1e-400", "0x10", "17", "16", "32", "NaN", "+5"]),
                        st.integers(-(10**20), 10**20).map(str), st.floats().map(repr), st.text(max_size=6))
GENERATE_OPTIONS = ["--height", "--width", "--frames", "--fps", "--seed", "--steps", "--guidance",
                    "--image-guidance", "--shift", "--step-cache", "--tile", "--dtype"]


@FUZZ
@given(options=st.dictionaries(st.sampled_from(GENERATE_OPTIONS), NUMBER_TEXT, min_size=1, max_size=4))
def test_generate_arguments_parse_to_usable_values_or_exit_2(options, capsys):
    argv = ["--ref", "a.png", "--prompt", "p", "--weights", "w", "--out", "o.mp4"]
    argv += [f"{key}={value}" for key, value in options.items()]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_info:
        assert exit_info.code == 2 and "error: argument" in capsys.readouterr().err
        return
    for name in ("fps", "guidance", "image_guidance", "shift", "step_cache"):
        value = getattr(args, name)
        assert value is None or (math.isfinite(value) and value >= 0)
    # sampling options left out are None (the model's saved settings fill them); frames: the output length
    assert args.fps is None or args.fps > 0
    assert args.shift is None or args.shift > 0
    assert args.steps is None or args.steps >= 1
    assert args.frames is None or args.frames >= 1
    for size in (args.height, args.width):
        assert size is None or (size % 16 == 0 and size > 0)


@FUZZ
@given(options=st.dictionaries(st.sampled_from(["--frames", "--fps", "--min-references", "--show"]), NUMBER_TEXT,
                               max_size=3))
def test_data_check_arguments_give_a_report_or_exit_2(media, options, capsys):
    manifest = media / "one.jsonl"
    manifest.write_text(json.dumps(GOOD) + "\n")
    try:
        code = check_command([str(manifest)] + [f"{key}={value}" for key, value in options.items()])
    except SystemExit as exit_info:
        assert exit_info.code == 2 and "error: argument" in capsys.readouterr().err
        return
    assert code in (0, 1) and "good" in capsys.readouterr().out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_generate")
    torch.set_num_threads(2)
    save_checkpoint(tiny_pipeline(), root / "run.ckpt")
    make_image(root / "ref.png", 16, 16, seed=1)
    (root / "folder").mkdir()
    return root


OUTPUTS = st.sampled_from(["run.ckpt", "ref.png", "folder", "folder/", "ref.png/v.mp4", "", "/proc/v.mp4", ".",
                           "new/deeper/v.mp4", "v.mp4", "/dev/null", "/"])


@settings(FUZZ, max_examples=max(25, EXAMPLES // 2))
@given(out=OUTPUTS, compare=st.one_of(st.none(), OUTPUTS))
def test_generate_outputs_are_checked_before_loading(checkpoint, monkeypatch, out, compare, capsys):
    """Either a bad output path exits 2 before any model is loaded with every input intact, or loading begins."""
    before = {p: p.read_bytes() for p in (checkpoint / "run.ckpt", checkpoint / "ref.png")}

    class Loading(Exception):
        pass

    def loading(*args, **kwargs):
        raise Loading

    monkeypatch.setattr(E2VPipeline, "from_checkpoint", loading)
    resolve = lambda name: name if name.startswith("/") or not name else str(checkpoint / name)  # noqa: E731
    argv = ["--checkpoint", str(checkpoint / "run.ckpt"), "--ref", str(checkpoint / "ref.png"), "--prompt", "p",
            "--height", "16", "--width", "16", "--frames", "5", "--out", resolve(out)]
    argv += ["--compare", resolve(compare)] if compare is not None else []
    try:
        code = generate_command(argv)
    except Loading:
        valid = {"new/deeper/v.mp4", "v.mp4", "/dev/null"}
        assert out in valid and (compare is None or (compare in valid and compare != out))
    else:
        assert code == 2 and "e2v generate: error: --" in capsys.readouterr().err
    assert all(path.read_bytes() == data for path, data in before.items())
    assert not list(checkpoint.rglob(".*.tmp*"))


# ---------------------------------------------------------------------------------------------- recipe specs
SPECS = [("timestep_sampler", "logit_normal", ["mean", "std", "shift"]), ("solver", "unipc", ["num_steps", "order"]),
         ("attention", "chunked", ["chunk_size"]), ("reference_layout", "a2", ["reference_loss_weight"]),
         ("dit", "wan", ["patch_size", "cross_attn_norm", "qk_norm", "eps", "attention"])]
# small numbers only: a recipe may legitimately ask for a huge (slow) model, which is not an input error
SPEC_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 64), st.floats(), st.text(max_size=8),
                        st.lists(st.integers(0, 3), max_size=4))


@FUZZ
@given(spec=st.sampled_from(SPECS), data=st.data())
def test_component_options_build_or_name_the_bad_key(spec, data):
    kind, name, keys = spec
    options = data.draw(st.dictionaries(st.sampled_from(keys), SPEC_VALUES, max_size=2))
    try:
        registry.build(kind, {"name": name, **options})
    except TypeError as err:
        assert any(f"option {key!r} must be" in str(err) for key in options)
    except (ValueError, KeyError) as err:  # a value of the right type the component refuses, with its reason
        assert str(err)
    except (RuntimeError, OverflowError, ZeroDivisionError, MemoryError) as err:
        pytest.fail(f"{kind} {options}: deep failure {type(err).__name__}: {err}")


# ---------------------------------------------------------------------------------------------- raw videos
SLOW_FUZZ = settings(FUZZ, max_examples=max(4, EXAMPLES // 10))  # each example decodes and cuts a video
BUILD_REASONS = {"corrupt", "too_short", "too_small", "odd_fps", "truncated", "missing", "not_a_file"}


@st.composite
def raw_videos(draw) -> dict:
    """A raw video's recipe: odd or even size, a phone rotation, a constant or variable frame rate, truncation."""
    count = draw(st.integers(3, 40))
    gaps = draw(st.one_of(st.none(), st.lists(st.sampled_from([1 / 32, 1 / 16, 1 / 8, 0.2]), min_size=count,
                                              max_size=count)))
    return dict(height=draw(st.integers(17, 70)), width=draw(st.integers(17, 70)), count=count,
                rotation=draw(st.sampled_from([0, 90, -90, 180])),
                times=None if gaps is None else np.cumsum([0.0, *gaps[1:]]).tolist(),
                cut=draw(st.one_of(st.none(), st.floats(0.05, 0.95))))


@SLOW_FUZZ
@given(recipe=raw_videos())
@example(recipe=dict(height=95, width=97, count=20, rotation=-90, times=None, cut=None))
@example(recipe=dict(height=40, width=40, count=40, rotation=0, times=[i / 32 for i in range(20)] +
                     [20 / 32 + i / 8 for i in range(1, 21)], cut=None))
def test_raw_videos_build_correct_clips_or_a_named_rejection(tmp_path_factory, recipe):
    """Per video: ``rejected`` with a known reason, or clips that are upright (the displayed size, even sides) and
    span their labelled time by the frames' timestamps; never an ``error`` verdict."""
    from test_databuild_faults import write_raw

    from e2v.databuild.config import BuildConfig
    from e2v.databuild.video import VideoJob, job_config, process_video
    from e2v.datamodules.video_io import probe_video

    root = tmp_path_factory.mktemp("raw_fuzz")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (recipe["count"], recipe["height"], recipe["width"], 3), np.uint8)
    path = write_raw(root / "v.mp4", frames, rotation=recipe["rotation"], times=recipe["times"],
                     pix_fmt="yuv444p")
    if recipe["cut"] is not None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * recipe["cut"])])
    config = BuildConfig(frames=5, fps=8.0, filters=[], min_side=16)
    result = process_video(VideoJob(str(path), "v.mp4", str(root / "out"), job_config(config)))
    assert result["status"] in ("ok", "rejected"), result
    if result["status"] == "rejected":
        assert result["reason"] in BUILD_REASONS, result["message"]
        return
    times = np.asarray(recipe["times"] or np.arange(recipe["count"]) / 16.0)
    for clip in result["clips"]:
        info = probe_video(root / "out" / clip["video"])
        assert (info["height"], info["width"]) == (recipe["height"] // 2 * 2, recipe["width"] // 2 * 2)
    for clip in result["clips"] + [c for c in result["rejected_clips"] if "source_frames" in c]:
        span = times[clip["source_frames"][-1]] - times[clip["source_frames"][0]]
        assert abs(span - 4 / 8.0) <= np.diff(times).max() / 2 + 1e-3


# ---------------------------------------------------------------------------------------------- bench cases
CASE_IDS = st.one_of(st.text(min_size=1, max_size=12), st.sampled_from(["a#1", "a?b", "a|b", "a\nb", "../x", ".",
                                                                        "<b>", "x" * 300, "ok_1"]))


@st.composite
def bench_cases(draw) -> list:
    """A cases file's lines: a good case with its id, prompt, references and truth replaced by hostile values."""
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        case = {"id": draw(CASE_IDS), "prompt": draw(st.one_of(st.text(max_size=20), JSON_VALUES)),
                "references": draw(st.one_of(st.just([{"path": "ref.png"}]),
                                             st.lists(st.fixed_dictionaries({"path": PATHS}), max_size=2),
                                             JSON_VALUES))}
        if draw(st.booleans()):
            case["video"] = draw(st.one_of(st.sampled_from(["clip.mp4", "ref.png", "missing.mp4"]), PATHS))
        lines.append(json.dumps(case))
    return lines


@FUZZ
@given(lines=bench_cases())
@example(lines=[json.dumps({"id": "a|b", "prompt": "p", "references": [{"path": "ref.png"}]})])
@example(lines=[json.dumps({"id": "ok", "prompt": "p", "references": [{"path": "ref.png"}], "video": "ref.png"})])
def test_bench_cases_read_as_safe_cases_or_name_the_line(media, lines):
    """A cases file gives cases whose ids are safe in file names, links and markdown tables, whose truth is a video,
    or one CasesError naming ``file:line``."""
    from e2v.bench.cases import CasesError, read_cases

    path = media / "cases.jsonl"
    path.write_text("\n".join(lines) + "\n")
    try:
        cases = read_cases(path)
    except CasesError as err:
        assert str(err).startswith(str(path)), err
        return
    for case in cases:
        assert not set(case.id) & set("#?|/\\<>&\"'` \n\r\t%") and not case.id.startswith((".", "-"))
        assert case.video is None or case.video.suffix == ".mp4"
