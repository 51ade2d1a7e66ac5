"""Time the synthetic world: serial baseline vs a process pool, plus the render / encode split of one clip.

    python benchmarks/bench_synth.py --clips 300 --heldout 30
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from e2v import synth
from e2v.datamodules.video_io import write_video


def timed_world(workers: int, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        synth.synthesize_world(
            out, num_clips=args.clips, num_heldout=args.heldout, frames=args.frames, height=args.height,
            width=args.width, workers=workers, progress=False,
        )
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--heldout", type=int, default=30)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    pairs = synth.heldout_pairs(0)
    plans = [synth.plan_clip(i, "train", 0, pairs, args.frames, args.height, args.width, 8.0, 3) for i in range(20)]
    synth.render_clip(plans[0])  # build the library
    start = time.perf_counter()
    videos = [synth.render_clip(plan)[0] for plan in plans]
    render = (time.perf_counter() - start) / len(plans)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        for video in videos:
            write_video(os.path.join(out, "clip.mp4"), video, fps=8, threads=1)
        encode = (time.perf_counter() - start) / len(plans)
    print(f"per clip ({args.frames}x{args.height}x{args.width}): render {render * 1e3:.1f} ms, encode {encode * 1e3:.1f} ms")

    total = args.clips + args.heldout
    serial = timed_world(1, args)
    pooled = timed_world(args.workers, args)
    print(f"{total} clips: serial {serial:.1f} s ({total / serial:.1f} clips/s), "
          f"{args.workers} workers {pooled:.1f} s ({total / pooled:.1f} clips/s), speedup x{serial / pooled:.2f}")


if __name__ == "__main__":
    main()
