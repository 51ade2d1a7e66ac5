"""Scoring throughput of ``e2v bench score`` (default CPU scorer set) on synthetic cases, in cases per minute.

Each case: a 17-frame mp4 (a textured element drifting over a still background), one subject and one background
reference. Decoding, every scorer and the thumbnail are timed, the report writing too; torch uses ``--threads``.

    python benchmarks/bench_scoring.py [--cases 8] [--frames 17] [--sizes 32 256] [--threads 2]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data as skdata

from e2v.bench.cases import read_cases
from e2v.bench.runner import score_cases
from e2v.bench.scorers import build_scorers
from e2v.datamodules.video_io import save_image, write_video


def make_cases(root: Path, count: int, frames: int, size: int) -> Path:
    element = cv2.resize(skdata.chelsea(), (size // 2, size // 2), interpolation=cv2.INTER_AREA)
    plate = cv2.resize(skdata.coffee(), (size, size), interpolation=cv2.INTER_AREA)
    save_image(root / "element.png", element)
    save_image(root / "plate.png", plate)
    (root / "videos").mkdir()
    lines = []
    for case in range(count):
        video = np.repeat(plate[None], frames, axis=0)
        for f in range(frames):
            x = (case + f * max(1, size // 32)) % (size // 2)
            video[f, size // 4 : size // 4 + size // 2, x : x + size // 2] = element
        write_video(root / "videos" / f"case_{case}.mp4", video, fps=16)
        lines.append(json.dumps({"id": f"case_{case}", "prompt": "a cat drifts over coffee", "references": [
            {"path": "element.png", "kind": "animal"}, {"path": "plate.png", "kind": "background"}]}))
    (root / "cases.jsonl").write_text("\n".join(lines) + "\n")
    return root / "cases.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scorers = build_scorers(None, warn=lambda message: print(f"note: {message}"))
    print(f"scorers: {', '.join(s.name for s in scorers)}; {args.threads} torch threads")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            cases = read_cases(make_cases(root, args.cases, args.frames, size))
            start = time.perf_counter()
            score_cases(cases, lambda case: root / "videos" / f"{case.id}.mp4", scorers, root / "out", progress=False)
            seconds = time.perf_counter() - start
        print(f"{size}x{size}, {args.frames} frames: {args.cases} cases in {seconds:.1f}s = "
              f"{60 * args.cases / seconds:.1f} cases/min")


if __name__ == "__main__":
    main()
