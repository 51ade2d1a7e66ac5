"""Does the tiny E2V model put the referenced elements into its videos? Held-out clips, against honest baselines.

Every held-out clip combines subjects never seen together in training. For each clip the trained checkpoint
generates a video from the clip's own references and prompt; the video (reference frames cut) is compared with
the ground-truth clip. Baselines, measured in the same run with the same seeds:

  * flat: every pixel is the truth clip's mean colour (what a model that learnt nothing useful can reach);
  * plate: the background reference repeated over the frames (copying the input: the still background without
    any subject);
  * shuffled: the same model given another held-out clip's references (never the clip's own);
  * swapped: the same model given another clip's subjects with the clip's own background;
  * untrained: the recipe's DiT at its random initialisation (a sanity line only).

Reported means (issue "the tiny world visibly works"):
  (a) PSNR own - PSNR flat          >= 3 dB
  (b) PSNR own - PSNR shuffled      >= 1 dB
  (c) subject match own - swapped   >= 0.08  (colour histogram of the moving foreground vs the clip's own subject
      references; position-free, see e2v.bench.pixel_metrics)
``--check`` exits 1 when a margin is missed. A preview PNG (per clip: references | own | truth | shuffled frames)
is written to ``--out``. Run after the main job:

    python benchmarks/bench_learning.py --checkpoint runs/tiny/e2v/checkpoints/last.ckpt \
        --manifest data/tiny_world/heldout.jsonl --out runs/tiny/learning
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from e2v import registry
from e2v.bench.pixel_metrics import flat_video, psnr, subject_match
from e2v.callbacks.samples import enlarged, evenly_spaced_frames
from e2v.datamodules.triplets import TripletDataModule
from e2v.datamodules.video_io import save_image
from e2v.modules.weights import load_checkpoint
from e2v.pipeline.pipeline import E2VPipeline

MARGINS = {"a": 3.0, "b": 1.0, "c": 0.08}


def held_out_items(args: argparse.Namespace) -> list[dict]:
    """The held-out clips as single-item batches, references in manifest order (no augmentation)."""
    data = TripletDataModule(args.manifest, val_manifest=args.manifest, frames=args.frames, height=args.size,
                             width=args.size, batch_size=1, image_size=args.image_size,
                             max_references=args.max_references, shuffle_references=False)
    return list(data.val_dataloader())[: args.clips]


def subjects(item: dict) -> list[int]:
    return [i for i, kind in enumerate(item["ref_kinds"][0]) if kind != "background"]


def references(item: dict, order: list[tuple[dict, int]]) -> dict:
    """Reference set built from ``(item, index)`` pairs: ``refs [N,3,H,W]`` and their ``kinds``."""
    return {
        "refs": torch.stack([src["refs"][0, i] for src, i in order]),
        "kinds": [src["ref_kinds"][0][i] for src, i in order],
    }


def subject_names(manifest: str) -> dict[str, frozenset]:
    """Clip id -> the names of its subject elements (reference paths when the manifest names no element)."""
    records = [json.loads(line) for line in open(manifest) if line.strip()]
    return {r["id"]: frozenset(ref.get("element") or ref["path"] for ref in r["references"]
                               if ref.get("kind") != "background") for r in records}


def partner(items: list[dict], i: int, same: Callable, names: dict) -> dict | None:
    """The next held-out clip (cyclically) that satisfies ``same`` and shows other subjects than clip ``i``."""
    for k in range(1, len(items)):
        other = items[(i + k) % len(items)]
        if same(other) and names[other["id"][0]] != names[items[i]["id"][0]]:
            return other
    return None


def generate(pipeline: E2VPipeline, item: dict, refs: dict, args, seed: int) -> torch.Tensor:
    """``[3, F - prefix, H, W]`` in [-1, 1]: the video for the item's prompt and the given references."""
    return pipeline(list(refs["refs"]), item["caption"][0], kinds=refs["kinds"], height=args.size, width=args.size,
                    frames=args.frames, steps=args.steps, guidance=args.guidance, seed=seed, progress=False)


def preview_row(refs: torch.Tensor, videos: list[torch.Tensor], frames: int, size: int) -> torch.Tensor:
    """``[3, size, (3 + frames * len(videos)) * size]``: up to 3 references, then ``frames`` frames of each video."""
    tiles = [F.interpolate(r[None].float(), size=(size, size), mode="bilinear", antialias=True)[0] for r in refs[:3]]
    tiles += [torch.ones(3, size, size)] * (3 - len(tiles))
    for video in videos:
        tiles += [torch.full((3, size, 2), -1.0)] + evenly_spaced_frames(video, frames)
    return torch.cat(tiles, dim=-1)


def evaluate(checkpoint: str, items: list[dict], args: argparse.Namespace) -> dict:
    solver = {"name": args.solver, "shift": args.shift}
    trained = E2VPipeline.from_checkpoint(checkpoint, solver=solver, device="cpu")
    untrained = E2VPipeline.from_checkpoint(checkpoint, solver=solver, device="cpu")
    spec = load_checkpoint(checkpoint)["hyper_parameters"]["dit"]
    torch.manual_seed(args.seed)
    untrained.dit.load_state_dict(registry.build("dit", spec).state_dict())
    names = subject_names(args.manifest)
    rows, metrics = [], {k: [] for k in ("own", "flat", "plate", "shuffled", "swapped", "untrained", "subj_own",
                                         "subj_swapped", "subj_truth", "subj_untrained")}
    for i, item in enumerate(tqdm(items, desc="held-out clips")):
        n = item["refs"].shape[1]
        prefix = trained.layout.prefix_frames(n)
        truth = item["video"][0, :, : args.frames - prefix].float()
        own_refs = references(item, [(item, j) for j in range(n)])
        subject_refs = own_refs["refs"][subjects(item)]
        seed = args.seed + i
        own = generate(trained, item, own_refs, args, seed)
        metrics["own"].append(psnr(own, truth))
        metrics["flat"].append(psnr(flat_video(truth), truth))
        for j in (j for j, kind in enumerate(own_refs["kinds"]) if kind == "background"):
            metrics["plate"].append(psnr(own_refs["refs"][j][:, None].expand_as(truth), truth))
        metrics["subj_own"].append(subject_match(own, subject_refs))
        metrics["subj_truth"].append(subject_match(truth, subject_refs))
        blind = generate(untrained, item, own_refs, args, seed)
        metrics["untrained"].append(psnr(blind, truth))
        metrics["subj_untrained"].append(subject_match(blind, subject_refs))
        other = partner(items, i, lambda o: o["refs"].shape[1] == n, names)
        shuffled = None
        if other is not None:
            shuffled = generate(trained, item, references(other, [(other, j) for j in range(n)]), args, seed)
            metrics["shuffled"].append(psnr(shuffled, truth))
        background = [j for j in range(n) if j not in subjects(item)]
        donor = partner(items, i, lambda o: len(subjects(o)) == len(subjects(item)), names)
        if donor is not None:
            swap = references(item, [(donor, j) for j in subjects(donor)] + [(item, j) for j in background])
            swapped = generate(trained, item, swap, args, seed)
            metrics["subj_swapped"].append(subject_match(swapped, subject_refs))
        if args.per_clip:
            tqdm.write(f"  {item['id'][0]}: refs {'+'.join(own_refs['kinds'])}  PSNR own {metrics['own'][-1]:.2f} "
                       f"flat {metrics['flat'][-1]:.2f}  subject own {metrics['subj_own'][-1]:.3f}")
        if i < args.preview:
            rows.append(preview_row(own_refs["refs"], [own, truth] + ([shuffled] if shuffled is not None else []),
                                    args.preview_frames, args.size))
    if rows and args.out:
        width = max(r.shape[-1] for r in rows)
        rows = [F.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows]
        path = Path(args.out) / "heldout_preview.png"
        save_image(path, enlarged(torch.cat(rows, dim=-2), 512))
        print(f"preview: {path} (per clip: references | own references | truth | shuffled references)")
    return {k: sum(v) / len(v) if v else float("nan") for k, v in metrics.items()} | {"clips": len(items)}


def report(m: dict) -> dict:
    """Print the table; return the three margins."""
    print(f"{m['clips']} held-out clips (subject pairs never seen together in training)")
    print(f"  PSNR vs truth (dB): own refs {m['own']:.2f} | flat mean colour {m['flat']:.2f} | background plate "
          f"{m['plate']:.2f} | shuffled refs {m['shuffled']:.2f} | untrained DiT {m['untrained']:.2f}")
    print(f"  subject match (vs own subject refs): own {m['subj_own']:.3f} | swapped subjects, own background "
          f"{m['subj_swapped']:.3f} | untrained {m['subj_untrained']:.3f} | truth clip {m['subj_truth']:.3f}")
    margins = {"a": m["own"] - m["flat"], "b": m["own"] - m["shuffled"], "c": m["subj_own"] - m["subj_swapped"]}
    labels = {"a": "own - flat (dB)", "b": "own - shuffled (dB)", "c": "subject own - swapped"}
    for key, value in margins.items():
        verdict = "ok" if value >= MARGINS[key] else "MISSED"
        print(f"  ({key}) {labels[key]:<22} {value:+.3f}  (needs >= {MARGINS[key]})  {verdict}")
    return margins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--manifest", default="data/tiny_world/heldout.jsonl")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--max-references", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--solver", default="euler")
    parser.add_argument("--shift", type=float, default=3.0)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/tiny/learning", help="folder for the preview PNG ('' = none)")
    parser.add_argument("--preview", type=int, default=8, help="clips in the preview PNG")
    parser.add_argument("--preview-frames", type=int, default=4)
    parser.add_argument("--per-clip", action="store_true", help="print each clip's numbers")
    parser.add_argument("--check", action="store_true", help="exit 1 when a margin is missed")
    args = parser.parse_args()
    if args.clips < 2:
        parser.error("--clips must be >= 2 (the shuffled baseline needs another clip)")
    margins = report(evaluate(args.checkpoint, held_out_items(args), args))
    if args.check and any(not value >= MARGINS[key] for key, value in margins.items()):
        sys.exit(1)


if __name__ == "__main__":
    main()
