"""Does a built manifest teach as well as the truth? The tiny E2V recipe trained on ``e2v data build``'s manifest
of the raw synthetic world against the same recipe trained on the world's directly synthesized triplets (the same
shots with true references and clean plates), both scored by ``bench_learning.py`` on the world's held-out
triplets (subject pairs never together in any raw video).

Each arm and training seed trains in its own folder, ``--work``/seed<n>/<arm> (the stock recipe, its paths made
relative to that folder), so nothing of the main job's ``runs/tiny`` is touched; the reference encoder is the main
job's (``runs/tiny/refenc/export``, trained here first when missing). Prints both arms' margins per seed, their
means and the ratios; with ``--check`` exits 1 when a built mean margin is under ``--ratio`` (0.8) of the direct
one. About 20 minutes per seed on 2 cores; finished arms are not trained or scored again.

    python benchmarks/bench_build_learning.py [--raw data/raw_world] [--built data/raw_world_built] \
        [--seed 0 1 2] [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from e2v.atomic import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
MARGIN = re.compile(r"^\s+\((?P<key>[abc])\) .*?(?P<value>[+-]\d+\.\d+)", re.M)
PSNR = re.compile(r"own refs (?P<own>[\d.]+) \| flat mean colour (?P<flat>[\d.]+) \| background plate "
                  r"(?P<plate>[\d.]+) \| shuffled refs (?P<shuffled>[\d.]+)")


def run(command: list[str], cwd: Path) -> str:
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}):\n{done.stdout[-4000:]}")
    return done.stdout


def train_and_score(arm: str, manifest: Path, heldout: Path, folder: Path, max_steps: int | None, seed: int) -> dict:
    """Train the stock tiny recipe on ``manifest`` in ``folder`` (skipped when it already has its last checkpoint)
    and score it on ``heldout`` (skipped when ``folder/learning/scores.json`` is newer than that checkpoint)."""
    (folder / "runs" / "tiny").mkdir(parents=True, exist_ok=True)
    refenc = folder / "runs" / "tiny" / "refenc"
    if not refenc.exists():
        refenc.symlink_to(REPO / "runs" / "tiny" / "refenc")
    command = ["e2v", "fit", "--config", str(REPO / "recipes" / "tiny" / "e2v.yaml"),
               "--data.init_args.train_manifest", str(manifest), "--data.init_args.val_manifest", str(heldout),
               "--data.init_args.cache_dir", str(folder / "cache")]
    if max_steps:
        command += ["--trainer.max_steps", str(max_steps)]
    command += ["--seed_everything", str(seed)]
    checkpoint = folder / "runs" / "tiny" / "e2v" / "checkpoints" / "last.ckpt"
    if checkpoint.is_file():
        print(f"{arm}, seed {seed}: trained already ({folder})")
    else:
        run(command, folder)
    scores = folder / "learning" / "scores.json"
    if scores.is_file() and scores.stat().st_mtime > checkpoint.stat().st_mtime:
        return json.loads(scores.read_text())
    clips = sum(1 for _ in heldout.open())
    text = run([sys.executable, str(REPO / "benchmarks" / "bench_learning.py"), "--checkpoint",
                "runs/tiny/e2v/checkpoints/last.ckpt", "--manifest", str(heldout), "--frames", "17", "--size", "32",
                "--clips", str(clips), "--out", str(folder / "learning")], folder)
    print(text)
    result = {**{k: float(v) for k, v in PSNR.search(text).groupdict().items()},
              **{m["key"]: float(m["value"]) for m in MARGIN.finditer(text)}}
    write_json_atomic(scores, result)
    return result


def print_row(label: str, records: int | str, s: dict) -> None:
    print(f"{label:<16} {records:>7} {s['own']:>6.2f} {s['flat']:>6.2f} {s['plate']:>6.2f} {s['shuffled']:>8.2f} "
          f"{s['a']:>+7.3f} {s['b']:>+7.3f} {s['c']:>+7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=Path("data/raw_world"), help="raw world (made when missing)")
    parser.add_argument("--size", type=int, default=192, help="side of the raw world's videos, when made here")
    parser.add_argument("--heldout", type=int, default=192, help="held-out clips of the raw world, when made here "
                        "(all are scored)")
    parser.add_argument("--built", type=Path, default=Path("data/raw_world_built"), help="build (made when missing)")
    parser.add_argument("--config", type=Path, default=Path("recipes/tiny/build.yaml"))
    parser.add_argument("--work", type=Path, default=Path("runs/build_learning"))
    parser.add_argument("--built-arm", default="built", help="name of the built arm's folder under --work")
    parser.add_argument("--sidecar-captions", action="store_true",
                        help="give the raw videos their true shot captions as sidecar files before building (the "
                             "direct triplets' captions), so the arms differ only in clips, references and plates")
    parser.add_argument("--max-steps", type=int, default=None, help="override the recipe's steps (quick checks)")
    parser.add_argument("--seed", type=int, nargs="+", default=[0],
                        help="training seeds of both arms (the recipe's is 0); with several, --check compares the "
                             "arms' mean margins")
    parser.add_argument("--ratio", type=float, default=0.8)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    raw, built, work = args.raw.resolve(), args.built.resolve(), args.work.resolve()
    if not (raw / "world.json").is_file():
        run(["e2v", "data", "synth", "--raw", "--out", str(raw), "--videos", "64", "--height", str(args.size),
             "--width", str(args.size), "--heldout", str(args.heldout)], REPO)
    if args.sidecar_captions:
        from e2v.databuild.raw_synth import write_sidecars

        write_sidecars(raw)
    if not (built / "train.jsonl").is_file():
        run(["e2v", "data", "build", "--videos", str(raw / "videos"), "--out", str(built), "--config",
             str(args.config.resolve()), "--workers", str(min(2, os.cpu_count() or 1)), "--no-progress"], REPO)
    if not (REPO / "runs" / "tiny" / "refenc" / "export").is_dir():
        run(["e2v", "fit", "--config", "recipes/tiny/refenc.yaml"], REPO)
    heldout = raw / "direct" / "heldout.jsonl"
    arms = {"direct": raw / "direct" / "train.jsonl", args.built_arm: built / "train.jsonl"}
    scores = {(arm, seed): train_and_score(arm, manifest, heldout, work / f"seed{seed}" / arm, args.max_steps, seed)
              for seed in args.seed for arm, manifest in arms.items()}
    print(f"{'arm, seed':<16} {'records':>7} {'own':>6} {'flat':>6} {'plate':>6} {'shuffled':>8} {'(a)':>7} {'(b)':>7} "
          f"{'(c)':>7}")
    means = {}
    for arm, manifest in arms.items():
        records = sum(1 for _ in manifest.open())
        for seed in args.seed:
            print_row(f"{arm}, {seed}", records, scores[arm, seed])
        means[arm] = {k: statistics.mean(scores[arm, seed][k] for seed in args.seed) for k in scores[arm, args.seed[0]]}
        if len(args.seed) > 1:
            print_row(f"{arm}, mean", "", means[arm])
    for seed in args.seed:
        print(f"built / direct, seed {seed}:", "  ".join(
            f"({k}) {scores[args.built_arm, seed][k] / scores['direct', seed][k]:.2f}" for k in "abc"))
    ratios = {k: means[args.built_arm][k] / means["direct"][k] for k in "abc"}
    verdicts = {k: "ok" if ratios[k] >= args.ratio else "MISSED" for k in "abc"}
    print("built / direct, mean margins:", "  ".join(f"({k}) {ratios[k]:.2f} {verdicts[k]}" for k in "abc"),
          f"(needs >= {args.ratio})")
    if args.check and "MISSED" in verdicts.values():
        sys.exit(1)


if __name__ == "__main__":
    main()
