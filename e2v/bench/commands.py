"""``e2v bench``: A2-Bench-style evaluation.

    e2v bench score --cases cases.jsonl --videos DIR --out DIR      # any model's videos: DIR/ID.mp4 per case
    e2v bench run --cases cases.jsonl --checkpoint last.ckpt --out DIR [generation options]
    e2v bench compare REPORT_DIR... --out DIR
    e2v bench from-opens2v Open-Domain_Eval.json --images-root OpenS2V-Eval --out cases.jsonl
    e2v bench from-manifest data/tiny_world/heldout.jsonl --out heldout_cases.jsonl [--rotate-references]

Scorers: ``--scorer NAME`` or ``--scorer '{"name": ..., **options}'`` (repeatable; default: the CPU set of
``e2v.bench.scorers.DEFAULT_SCORERS``, those whose optional dependency is missing skipped with a message).
Exit codes: 2 for bad input (cases file, options, missing videos), 1 for a failure while generating or scoring.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from e2v.argtypes import HelpFormatter, BadInput, positive_int
from e2v.bench.cases import CasesError, read_cases
from e2v.bench.compare import CompareError
from e2v.bench.report import GENERATION_FILE


def _error(command: str, err: Exception, code: int) -> int:
    print(f"e2v bench {command}: error: {err}", file=sys.stderr)
    return code


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", required=True, help="JSONL cases file (paths relative to it)")
    parser.add_argument("--out", required=True, help="report folder (report.json, report.md, report.html)")
    parser.add_argument("--scorer", action="append", default=None, metavar="NAME|JSON",
                        help="a scorer (repeatable); default: the CPU scorer set")
    parser.add_argument("--tracking-uri", default=None,
                        help="log the report to this MLflow store (default: $MLFLOW_TRACKING_URI, else the project "
                             "store runs/mlflow.db when --out lies under a runs/ folder, as e2v fit does)")
    parser.add_argument("--no-tracking", action="store_true", help="do not log the report to MLflow")
    parser.add_argument("--experiment", default="e2v-bench", help="MLflow experiment name")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="only the first N cases of the cases file (a quick look)")


def scorers_from(args: argparse.Namespace):
    from e2v.bench.scorers import build_scorers, parse_scorer_spec

    try:
        specs = None if args.scorer is None else [parse_scorer_spec(text) for text in args.scorer]
        return build_scorers(specs, warn=lambda message: print(f"e2v bench: {message}", file=sys.stderr))
    except (ValueError, KeyError, TypeError, ImportError, OSError) as err:
        raise BadInput(f"--scorer: {err}") from None


def _score(cases, videos: Path, scorers, args: argparse.Namespace) -> int:
    from e2v.bench.runner import score_cases, summary_line

    from e2v.bench.tracking import log_report, tracking_uri

    report = score_cases(cases, lambda case: videos / f"{case.id}.mp4", scorers, args.out,
                         progress=not args.no_progress)
    print(f"wrote {Path(args.out) / 'report.json'}: {summary_line(report)}")
    uri = None if args.no_tracking else tracking_uri(args.tracking_uri, args.out)
    if uri:
        run_id = log_report(args.out, report, uri, args.experiment)
        print(f"logged to MLflow {uri}: experiment {args.experiment}, run {run_id}")
    return 0


def score_command(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="e2v bench score", description="Score videos (DIR/ID.mp4) of a cases file.")
    add_common(parser)
    parser.add_argument("--videos", required=True, help="folder of ID.mp4 videos, one per case")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from e2v.bench.runner import BenchError, missing_videos

    try:
        cases = read_cases(args.cases)[: args.limit]
        videos = Path(args.videos)
        if not videos.is_dir():
            raise BadInput(f"--videos {videos} is not a directory")
        missing = missing_videos(cases, videos)
        if missing:
            shown = ", ".join(f"{i}.mp4" for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise BadInput(f"--videos {videos} lacks {len(missing)} of {len(cases)} case videos: {shown}")
        scorers = scorers_from(args)
    except (CasesError, BadInput) as err:
        return _error("score", err, 2)
    try:
        return _score(cases, videos, scorers, args)
    except (BenchError, OSError) as err:
        return _error("score", err, 1)




def check_generation_settings(out: Path, args: argparse.Namespace, options: dict) -> None:
    """Record the model and sampling settings of ``OUT/videos`` in ``OUT/generation.json``; a rerun with other
    settings is refused (BadInput) instead of mixing videos of two configurations in one report."""
    import json

    from e2v.atomic import write_json_atomic

    keys = ("checkpoint", "weights", "solver", "shift", "fps", "step_cache", "quantize", "dtype")
    settings = json.loads(json.dumps({**options, **{key: getattr(args, key) for key in keys}}))
    path = out / GENERATION_FILE
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            stored = None
        if stored != settings:
            changed = sorted(k for k in settings if not isinstance(stored, dict) or stored.get(k) != settings[k])
            raise BadInput(f"--out {out} holds videos generated with other settings ({', '.join(changed)} differ); "
                           f"use another --out, or delete {out / 'videos'} and {path} to regenerate")
        return
    write_json_atomic(path, settings, indent=1)


def run_command(argv: Optional[Sequence[str]] = None) -> int:
    from e2v.pipeline.generate import add_generation_options

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="e2v bench run", description="Generate one video per case, then score.")
    add_common(parser)
    add_generation_options(parser)
    args = parser.parse_args(argv)
    from e2v.bench.runner import BenchError, generate_cases, videos_to_generate
    from e2v.modules.weights import CheckpointError
    from e2v.pipeline.generate import apply_sampling, build_pipeline

    try:
        cases = read_cases(args.cases)[: args.limit]
        source = Path(args.checkpoint or args.weights)
        if not (source.is_file() if args.checkpoint else source.is_dir()):
            raise BadInput(f"{'--checkpoint' if args.checkpoint else '--weights'} {source} does not exist")
        apply_sampling(args, parser.prog)
        options = dict(negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                       output_frames=args.frames, steps=args.steps, guidance=args.guidance,
                       image_guidance=args.image_guidance, seed=args.seed)
        check_generation_settings(Path(args.out), args, options)
        scorers = scorers_from(args)
        todo = videos_to_generate(cases, args.out, options, args.fps)
        try:  # a resumed run with every video made loads no model
            pipe = build_pipeline(args, None) if todo else None
        except CheckpointError as err:
            raise BadInput(str(err)) from None
        for case in todo:
            try:
                count = len(case.references)
                pipe.check_request(count, args.height, args.width, pipe.sampled_frames(count, args.frames))
            except ValueError as err:
                raise BadInput(f"case {case.id!r} (line {case.line}): {err}") from None
    except (CasesError, BadInput) as err:
        return _error("run", err, 2)
    try:
        videos = generate_cases(pipe, cases, args.out, options, fps=args.fps, progress=not args.no_progress)
        return _score(cases, videos, scorers, args)
    except (BenchError, OSError, RuntimeError, ValueError) as err:
        return _error("run", err, 1)


def compare_command(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="e2v bench compare", description="Several bench reports side by side.")
    parser.add_argument("reports", nargs="+", metavar="REPORT_DIR")
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-charts", action="store_true", help="skip the matplotlib bar and radar charts")
    args = parser.parse_args(argv)
    from e2v.bench.compare import write_compare

    seen: dict[Path, str] = {}
    for report in args.reports:
        if Path(report).resolve() in seen:
            return _error("compare", CompareError(f"{report} is given twice (as {seen[Path(report).resolve()]}); "
                                                  f"compare different reports"), 2)
        seen[Path(report).resolve()] = report
    try:
        payload = write_compare(args.reports, args.out, charts=not args.no_charts)
    except CompareError as err:
        return _error("compare", err, 2)
    for note in payload["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {Path(args.out) / 'compare.md'}: {len(payload['models'])} models, {len(payload['scorers'])} metrics")
    return 0


def opens2v_command(argv: Optional[Sequence[str]] = None) -> int:
    parser = _converter_parser("from-opens2v", "OpenS2V-Eval case json -> e2v bench cases file",
                               "eval_json", "e.g. OpenS2V-Eval/Open-Domain_Eval.json")
    parser.add_argument("--images-root", default=None, help="folder img_paths are relative to (default: the json's)")
    args = parser.parse_args(argv)
    from e2v.bench.opens2v import convert

    return _write_cases("from-opens2v", args.out, lambda: convert(args.eval_json, args.images_root, args.out))


def _converter_parser(command: str, description: str, source: str, example: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog=f"e2v bench {command}", description=description)
    parser.add_argument(source, help=example)
    parser.add_argument("--out", required=True, help="cases JSONL to write")
    return parser


def _write_cases(command: str, out: str, convert: Callable[[], int]) -> int:
    """Run a cases-file converter: exit 2 naming the bad input, else 0 with the number of cases written."""
    try:
        count = convert()
    except CasesError as err:
        return _error(command, err, 2)
    print(f"wrote {out}: {count} cases")
    return 0


def manifest_command(argv: Optional[Sequence[str]] = None) -> int:
    parser = _converter_parser("from-manifest", "triplet manifest -> e2v bench cases file (clips as truth videos)",
                               "manifest", "e.g. data/tiny_world/heldout.jsonl")
    parser.add_argument("--rotate-references", action="store_true",
                        help="control set: every case gets the next case's references")
    args = parser.parse_args(argv)
    from e2v.bench.manifest_cases import convert_manifest

    return _write_cases("from-manifest", args.out,
                        lambda: convert_manifest(args.manifest, args.out, rotate=args.rotate_references))
