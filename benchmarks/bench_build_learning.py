"""Does a built manifest teach as well as the truth? The tiny E2V recipe trained on ``e2v data build``'s manifest
of the raw synthetic world against the same recipe trained on the world's directly synthesized triplets (the same
shots with true references and clean plates), both scored by ``bench_learning.py`` on the world's held-out
triplets (subject pairs never together in any raw video).

Each arm trains in its own folder under ``--work`` (the stock recipe, its paths made relative to that folder), so
nothing of the main job's ``runs/tiny`` is touched; the reference encoder is the main job's
(``runs/tiny/refenc/export``, trained here first when missing). Prints both arms' margins and their ratios; with
``--check`` exits 1 when a built margin is under ``--ratio`` (0.8) of the direct one. About 20 minutes on 2 cores.

    python benchmarks/bench_build_learning.py [--raw data/raw_world] [--built data/raw_world_built] [--check]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

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


def train_and_score(arm: str, manifest: Path, heldout: Path, work: Path, max_steps: int | None, seed: int) -> dict:
    """Train the stock tiny recipe on ``manifest`` in ``work/arm`` (skipped when that arm already has its last
    checkpoint) and score it on ``heldout``."""
    folder = work / arm
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
    if (folder / "runs" / "tiny" / "e2v" / "checkpoints" / "last.ckpt").is_file():
        print(f"{arm}: trained already ({folder}), scoring only")
    else:
        run(command, folder)
    text = run([sys.executable, str(REPO / "benchmarks" / "bench_learning.py"), "--checkpoint",
                "runs/tiny/e2v/checkpoints/last.ckpt", "--manifest", str(heldout), "--frames", "17", "--size", "32",
                "--out", str(folder / "learning")], folder)
    print(text)
    return {**{k: float(v) for k, v in PSNR.search(text).groupdict().items()},
            **{m["key"]: float(m["value"]) for m in MARGIN.finditer(text)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=Path("data/raw_world"), help="raw world (made when missing)")
    parser.add_argument("--built", type=Path, default=Path("data/raw_world_built"), help="build (made when missing)")
    parser.add_argument("--config", type=Path, default=Path("recipes/tiny/build.yaml"))
    parser.add_argument("--work", type=Path, default=Path("runs/build_learning"))
    parser.add_argument("--built-arm", default="built", help="name of the built arm's folder under --work")
    parser.add_argument("--sidecar-captions", action="store_true",
                        help="give the raw videos their true shot captions as sidecar files before building (the "
                             "direct triplets' captions), so the arms differ only in clips, references and plates")
    parser.add_argument("--max-steps", type=int, default=None, help="override the recipe's steps (quick checks)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of both arms (the recipe's is 0)")
    parser.add_argument("--ratio", type=float, default=0.8)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    raw, built, work = args.raw.resolve(), args.built.resolve(), args.work.resolve()
    if not (raw / "world.json").is_file():
        run(["e2v", "data", "synth", "--raw", "--out", str(raw), "--videos", "64", "--heldout", "24", "--height",
             "96", "--width", "96"], REPO)
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
    scores = {arm: train_and_score(arm, manifest, heldout, work, args.max_steps, args.seed)
              for arm, manifest in arms.items()}
    print(f"{'arm':<8} {'records':>7} {'own':>6} {'flat':>6} {'plate':>6} {'shuffled':>8} {'(a)':>7} {'(b)':>7} {'(c)':>7}")
    for arm, s in scores.items():
        records = sum(1 for _ in arms[arm].open())
        print(f"{arm:<8} {records:>7} {s['own']:>6.2f} {s['flat']:>6.2f} {s['plate']:>6.2f} {s['shuffled']:>8.2f} "
              f"{s['a']:>+7.3f} {s['b']:>+7.3f} {s['c']:>+7.3f}")
    ratios = {k: scores[args.built_arm][k] / scores["direct"][k] for k in "abc"}
    verdicts = {k: "ok" if ratios[k] >= args.ratio else "MISSED" for k in "abc"}
    print("built / direct:", "  ".join(f"({k}) {ratios[k]:.2f} {verdicts[k]}" for k in "abc"),
          f"(needs >= {args.ratio})")
    if args.check and "MISSED" in verdicts.values():
        sys.exit(1)


if __name__ == "__main__":
    main()
