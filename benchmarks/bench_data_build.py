"""``e2v data build`` throughput and accuracy on the raw synthetic world (run on a quiet machine).

Builds the same raw videos with one worker process (the baseline) and with ``--workers`` processes, each into a
fresh folder, and prints wall time, clips cut per minute per core, the speed-up over the baseline, and the build's
scores against the world's truth (shot F1, subject recall, cross-clip identity accuracy). Both builds must give
the same manifest.

    python benchmarks/bench_data_build.py --raw data/raw_world [--videos 64 --size 192] [--workers 2]
    python benchmarks/bench_data_build.py --raw data/raw_world_hard --hard --seed 1   # the harder world

``--hard`` makes the harder raw world (greyscale and low-saturation shots, same-location cuts, dissolves, hand-held
cameras, near-still subjects, photo backgrounds). Its seed 100 is the development set the cut detector was tried
on; other seeds are checks never tuned on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from e2v.databuild.build import merge, run_videos
from e2v.databuild.config import load_config
from e2v.databuild.raw_synth import synthesize_raw
from e2v.databuild.truth import score_build


def timed_build(raw: Path, out: Path, config, workers: int) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    began = time.perf_counter()
    run_videos(raw / "videos", out, config, workers=workers, progress=False)
    merge(out, config)
    seconds = time.perf_counter() - began
    clips = sum(len(r["clips"]) + sum(1 for c in r["rejected_clips"] if "start" in c)
                for r in (json.loads(p.read_text()) for p in (out / "work").glob("*.json")))
    return seconds, clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=Path("data/raw_world"), help="raw world (made when missing)")
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--hard", action="store_true", help="make the harder raw world (when missing)")
    parser.add_argument("--seed", type=int, default=0, help="the raw world's seed (when made)")
    parser.add_argument("--config", type=Path, default=Path("recipes/tiny/build.yaml"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_data_build"))
    args = parser.parse_args()
    if not (args.raw / "world.json").is_file():
        synthesize_raw(args.raw, videos=args.videos, height=args.size, width=args.size, seed=args.seed,
                       hard=args.hard, progress=False)
    config = load_config(args.config)
    rows = {}
    for workers in sorted({1, args.workers}):
        seconds, clips = timed_build(args.raw, args.out / f"workers{workers}", config, workers)
        rows[workers] = (seconds, clips)
        print(f"workers {workers}: {seconds:.1f} s wall, {clips} clips cut, "
              f"{clips / (seconds / 60) / workers:.1f} clips/min/core")
    if len(rows) > 1:
        base, many = rows[1][0], rows[args.workers][0]
        print(f"speed-up with {args.workers} workers over 1: {base / many:.2f}x")
        same = all((args.out / f"workers{w}" / "train.jsonl").read_text() ==
                   (args.out / "workers1" / "train.jsonl").read_text() for w in rows)
        print(f"same manifest from every worker count: {same}")
    scores = score_build(args.out / f"workers{args.workers}", args.raw)
    outcomes = scores.pop("outcomes")
    print("against the truth:", json.dumps(scores))
    print("what each true shot kind became:", json.dumps(outcomes))


if __name__ == "__main__":
    main()
