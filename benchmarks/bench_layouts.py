"""Which reference layout copies best? The paper's Table 2 ablation on the tiny open-ended world, zero-shot split.

Each layout fine-tunes the main job's recipe (``recipes/tiny/e2v.yaml``: the shipped base DiT, the same world, steps,
seed and batch) with only ``layout`` changed, into its own run folder and latent cache, then
``benchmarks/bench_learning.py`` scores it on the held-out and zero-shot splits. ``temporal_append`` feeds the DiT
16 channels (no mask or condition channels): its DiT cannot start from the 36-channel base and trains from the
tiny preset at the base's size instead (said in the table). Prints one row per layout: the zero-shot margins (a)
own - flat, (p) own - plate, (b) own - shuffled, (c) colour, (d) shape, then held-out (a)-(c).

    e2v data synth --out data/tiny_world --clips 400 --heldout 24 --zeroshot 24 --frames 17 --height 32 \\
        --width 32 --background-ref-prob 1.0
    python benchmarks/bench_layouts.py --world data/tiny_world --work runs/layouts
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

LAYOUTS = {
    "a2": {"name": "a2", "reference_loss_weight": 0.1},
    "a2 repeat:false": {"name": "a2", "repeat": False, "reference_loss_weight": 0.1},
    "canvas": {"name": "canvas"},
    "temporal_append": {"name": "temporal_append", "uses_image_tokens": True},
}
# temporal_append's DiT: the base's size with 16 input channels, from its random initialisation
SCRATCH_DIT = {"name": "wan", "preset": "tiny", "patch_size": [1, 1, 1], "num_attention_heads": 3,
               "attention_head_dim": 32, "num_layers": 4, "ffn_dim": 192, "text_dim": 32, "image_dim": 24,
               "added_kv_proj_dim": 96, "in_channels": 16}


RUN_FOLDER = "runs/tiny/e2v"  # the main job recipe's run folder


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="data/tiny_world", help="an open world (train/heldout/zeroshot.jsonl)")
    parser.add_argument("--work", default="runs/layouts", help="run folders, caches and scores go here")
    parser.add_argument("--recipe", default="recipes/tiny/e2v.yaml")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's max_steps (same for all)")
    parser.add_argument("--clips", type=int, default=24, help="clips per split scored")
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    args = parser.parse_args()
    world, work = Path(args.world), Path(args.work)
    rows = {}
    for name in args.layouts:
        folder = work / name.replace(" ", "_").replace(":", "-")
        checkpoint = folder / "checkpoints" / "last.ckpt"
        if not checkpoint.exists():
            folder.mkdir(parents=True, exist_ok=True)
            recipe = folder / "recipe.yaml"  # the recipe with its run folder moved here (checkpoints, logs)
            recipe.write_text(Path(args.recipe).read_text().replace(RUN_FOLDER, str(folder)))
            command = [sys.executable, "-m", "e2v.cli", "fit", "--config", str(recipe),
                       "--model.init_args.layout", json.dumps(LAYOUTS[name]),
                       "--data.init_args.train_manifest", str(world / "train.jsonl"),
                       "--data.init_args.val_manifest", str(world / "heldout.jsonl"),
                       "--data.init_args.cache_dir", str(folder / "cache")]
            if name == "temporal_append":
                command += ["--model.init_args.dit", json.dumps(SCRATCH_DIT)]
            if args.steps:
                command += ["--trainer.max_steps", str(args.steps), "--trainer.val_check_interval", str(args.steps)]
            run(command)
        scores = folder / "margins.json"
        if not scores.exists():
            run([sys.executable, "benchmarks/bench_learning.py", "--checkpoint", str(checkpoint), "--clips", str(args.clips),
                 "--split", f"heldout={world / 'heldout.jsonl'}", "--split", f"zeroshot={world / 'zeroshot.jsonl'}",
                 "--out", str(folder), "--json", str(scores)])
        rows[name] = json.loads(scores.read_text())
    print("\nlayout               init  | zero-shot: (a) flat  (p) plate  (b) shuffled  (c) colour  (d) shape "
          "| held-out: (a)  (b)  (c)")
    for name, result in rows.items():
        z, h = result["zeroshot"]["margins"], result["heldout"]["margins"]
        init = "random" if name == "temporal_append" else "base"
        print(f"{name:<20} {init:<6}|  {z['a']:+7.2f} {z['p']:+9.2f} {z['b']:+12.2f} {z['c']:+11.3f} {z['d']:+10.3f} "
              f"| {h['a']:+6.2f} {h['b']:+5.2f} {h['c']:+6.3f}")


if __name__ == "__main__":
    main()
