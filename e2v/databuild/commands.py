"""``e2v data build`` and ``e2v data merge`` (argparse; return an exit code)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from e2v.argtypes import HelpFormatter, nonnegative_int, positive_int


def _finish(out: Path, config, names: list[str] | None, extra: dict) -> int:
    from e2v.databuild.build import BuildError, merge
    from e2v.databuild.report import write_report
    from e2v.databuild.video import job_config

    merged = merge(out, config, names)
    report = write_report(out, merged.counts, merged.samples, merged.results, job_config(config), extra,
                          records=merged.records["train"] + merged.records["heldout"])
    heldout = {"heldout_manifest": str(out / "heldout.jsonl")} if merged.records["heldout"] else {}
    print(json.dumps({"manifest": str(out / "train.jsonl"), **heldout, **report["counts"], **report["throughput"]},
                     indent=2))
    print(f"report: {out / 'report.html'}")
    if not merged.counts["clips_kept"]:
        reasons = {**merged.counts["videos_rejected"], **merged.counts["clips_rejected"]}
        shown = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()) if count) or "no shots"
        raise BuildError(f"no clip was kept from the {merged.counts['videos']} video(s) in {out} ({shown}); the "
                         f"manifest is empty, see {out / 'report.html'}")
    return 0


def add_heldout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heldout-every", type=nonnegative_int, default=None, metavar="N",
                        help="every N-th kept clip goes to OUT/heldout.jsonl, 0 for none (default: the config's "
                             "heldout_every, 10); changing it re-splits without processing any video again")


def build_command(argv: list[str] | None = None) -> int:
    """``e2v data build --videos DIR_OR_LIST --out DIR``: triplets from raw videos (resumable; exit 2 on bad input or
    when no clip is kept, 1 when an error of the machine, such as a full disk, stopped some videos)."""
    from e2v.databuild.build import BuildError, parse_shard, run_videos
    from e2v.databuild.config import load_config

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="e2v data build", description=build_command.__doc__)
    parser.add_argument("--videos", required=True, type=Path, help="folder of videos (recursive) or a list file")
    parser.add_argument("--out", required=True, type=Path, help="build folder (an interrupted build resumes)")
    parser.add_argument("--config", type=Path, default=None, help="build.yaml (default settings when absent)")
    parser.add_argument("--workers", type=positive_int, default=1, help="worker processes (one video each)")
    parser.add_argument("--shard", default=None, help="I/N: only every N-th video from the I-th; then e2v data merge")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local processes, or Ray Data (pip install 'e2v[ray]'; joins a running cluster "
                             "(RAY_ADDRESS) or starts a local one)")
    add_heldout_option(parser)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, heldout_every=args.heldout_every)
        shard = parse_shard(args.shard)
        counts = run_videos(args.videos, args.out, config, workers=args.workers, shard=shard, engine=args.engine,
                            progress=not args.no_progress)
    except (BuildError, ValueError) as err:
        print(f"e2v data build: error: {err}", file=sys.stderr)
        return 2
    print(f"videos: {counts['shard']} in this run ({counts['processed']} processed, {counts['resumed']} already done)")
    if counts["failed"]:
        for name, message in counts["failed"].items():
            print(f"e2v data build: error: {name}: {message}", file=sys.stderr)
        print(f"e2v data build: error: {len(counts['failed'])} video(s) stopped by an error of the machine, not "
              f"recorded; free the resource and rerun the same command to build them", file=sys.stderr)
        return 1
    if shard[1] > 1:
        print(f"shard {shard[0]}/{shard[1]} done; when every shard is done: e2v data merge {args.out}")
        return 0
    from e2v.databuild.build import list_videos

    try:
        return _finish(args.out, config, [name for _, name in list_videos(args.videos)], counts)
    except BuildError as err:
        print(f"e2v data build: error: {err}", file=sys.stderr)
        return 2


def merge_command(argv: list[str] | None = None) -> int:
    """``e2v data merge OUT [--from SHARD_DIR ...]``: the global stage (identities, references, duplicates, manifest,
    report) over the per-video results of every shard."""
    from e2v.databuild.build import BuildError, check_shard, copy_shard, list_videos
    from e2v.databuild.config import load_config

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="e2v data merge", description=merge_command.__doc__)
    parser.add_argument("out", type=Path, help="build folder the shards wrote to (or that --from folders go into)")
    parser.add_argument("--from", dest="sources", type=Path, nargs="*", default=[],
                        help="shard folders to copy in first (shards built into separate folders)")
    parser.add_argument("--config", type=Path, default=None, help="the build.yaml the shards used")
    parser.add_argument("--videos", type=Path, default=None,
                        help="the shards' --videos: checks that every listed video is done")
    add_heldout_option(parser)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, heldout_every=args.heldout_every)
        shards = [(source, check_shard(source, config.digest())) for source in args.sources]  # all, before copying
        copied = sum(copy_shard(source, args.out, results) for source, results in shards)
        names = [name for _, name in list_videos(args.videos)] if args.videos else None
        return _finish(args.out, config, names, {"copied_from_shards": copied})
    except (BuildError, ValueError, OSError) as err:
        print(f"e2v data merge: error: {err}", file=sys.stderr)
        return 2
