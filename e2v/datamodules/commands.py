"""Console commands of the data side: ``e2v data check`` and ``e2v cache`` (argparse, return an exit code)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def _write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(payload, tmp, indent=2)
    os.replace(tmp.name, path)


def check_command(argv: list[str] | None = None) -> int:
    """``e2v data check MANIFEST``: report good/bad records with reasons; exit code 1 when any record is bad."""
    from e2v.datamodules.manifest import validate_manifest

    parser = argparse.ArgumentParser(prog="e2v data check", description=check_command.__doc__)
    parser.add_argument("manifest", type=Path, help="JSONL triplet manifest")
    parser.add_argument("--frames", type=int, default=None, help="frames every clip must yield (e.g. 81)")
    parser.add_argument("--fps", type=float, default=None, help="sampling rate for --frames (default: native)")
    parser.add_argument("--min-references", type=int, default=0, help="fewest reference images a record may have")
    parser.add_argument("--no-decode", action="store_true", help="only probe headers and stat files (fast)")
    parser.add_argument("--json", type=Path, default=None, help="also write the full report as JSON here")
    parser.add_argument("--show", type=int, default=20, help="bad records to list (default 20; -1 for all)")
    args = parser.parse_args(argv)
    try:
        report = validate_manifest(
            args.manifest, args.frames, args.fps, min_references=args.min_references, decode=not args.no_decode
        )
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    shown = report.bad if args.show < 0 else report.bad[: args.show]
    for bad in shown:
        print(f"  {bad}")
    if len(shown) < len(report.bad):
        print(f"  ... {len(report.bad) - len(shown)} more (use --show -1 or --json)")
    if args.json is not None:
        payload = {
            "manifest": str(report.path),
            "good": len(report.good),
            "bad": len(report.bad),
            "reasons": dict(report.reasons),
            "bad_records": [vars(bad) for bad in report.bad],
        }
        _write_json_atomic(args.json, payload)
    return 1 if report.bad else 0
