"""Does the tiny E2V model copy the referenced elements into its videos? Held-out and zero-shot clips, against
honest baselines.

Each split is a manifest of clips the model never trained on: ``heldout`` (the open world: new elements of the
training part of the element space; the library world: subject pairs never seen together) and ``zeroshot``
(elements from the part of the space training never draws: other shape families, fills, hues, pictures, faces; see
``e2v.open_elements``). For each clip the checkpoint generates a video from the clip's own references and prompt;
the video (reference frames cut) is compared with the ground-truth clip. Baselines, same run, same seeds:

  * flat: every pixel is the truth clip's mean colour (what a model that learnt nothing useful can reach);
  * plate: the background reference repeated over the frames (copying the input: the background, no subject);
  * shuffled: the same model given another clip's references (never the clip's own);
  * swapped: the same model given another clip's subjects with the clip's own background;
  * untrained (``--untrained``): the recipe's DiT at its random initialisation (a sanity line only).

Margins (means over a split's clips; ``MARGINS`` per split, a split named otherwise uses the zero-shot ones):
  (a) PSNR own - PSNR flat >= 3 dB;  (a') PSNR own - PSNR plate >= 1 dB on zero-shot clips (the subjects count)
  (b) PSNR own - PSNR shuffled >= 1 dB held-out, >= 3 dB zero-shot
  (c) subject colour match own - swapped >= 0.08 held-out, >= 0.10 zero-shot (colour histogram of the foreground,
      the pixels unlike the clip's background plate, vs the clip's own subject references; position-free,
      ``e2v.bench.pixel_metrics.subject_match``)
  (d) subject shape match own - swapped (``e2v.bench.pixel_metrics.shape_match``: silhouettes, not colours; the
      margin is calibrated on truth clips by ``benchmarks/bench_shape_measure.py``)
Reported without a margin: where own's error lies, and how far own's subjects move against the truth's
(``e2v.bench.pixel_metrics.subject_travel``). PSNR favours a still blur over a sharp subject a little off: the main
job's model sampled with 10 Euler steps instead of 20 (blurrier videos) gains 0.3 dB of zero-shot (a) and no (c) or
(d), so read (a) beside (c), (d) and the motion.
``--check`` exits 1 when a margin is missed. A preview PNG per split (per clip: references | own | truth |
shuffled frames) is written to ``--out``. Run after the main job:

    python benchmarks/bench_learning.py --checkpoint runs/tiny/e2v/checkpoints/last.ckpt \
        --split heldout=data/tiny_world/heldout.jsonl --split zeroshot=data/tiny_world/zeroshot.jsonl \
        --out runs/tiny/learning
"""

import argparse
import json
import math
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from e2v import registry
from e2v.bench.pixel_metrics import flat_video, is_plate_of, psnr, shape_match, subject_match, subject_travel
from e2v.callbacks.samples import enlarged, evenly_spaced_frames
from e2v.datamodules.triplets import TripletDataModule
from e2v.datamodules.video_io import save_image
from e2v.modules.weights import load_checkpoint
from e2v.pipeline.pipeline import E2VPipeline
from e2v.pipeline.sampling import read_saved, resolve

# per split: margin name -> required value; (a) own - flat, (p) own - plate, (b) own - shuffled,
# (c) colour match own - swapped, (d) shape match own - swapped: a share of the truth clips' own - swapped shape
# margin on the same clips (benchmarks/bench_shape_measure.py: blurred truth reaches 0.31 of it, same-colour
# ellipses 0.24, so half of it needs shapes)
SHAPE_SHARE = 0.5
MARGINS = {
    "heldout": {"a": 3.0, "b": 1.0, "c": 0.08},
    "zeroshot": {"a": 3.0, "p": 1.0, "b": 3.0, "c": 0.10, "d": "shape"},
}
LABELS = {"a": "own - flat (dB)", "p": "own - plate (dB)", "b": "own - shuffled (dB)",
          "c": "colour match own - swapped", "d": "shape match own - swapped"}


def held_out_items(manifest: str, args: argparse.Namespace) -> list[dict]:
    """A split's clips as single-item batches, references in manifest order (no augmentation)."""
    data = TripletDataModule(manifest, val_manifest=manifest, frames=args.frames, height=args.size,
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


def own_references(item: dict) -> dict:
    """The clip's own reference set (:func:`references`), in manifest order."""
    return references(item, [(item, j) for j in range(item["refs"].shape[1])])


def background_reference(refs: dict) -> torch.Tensor | None:
    """The background reference ``[3, H, W]`` (float) of a reference set (:func:`references`); None without one."""
    return next((ref.float() for ref, kind in zip(refs["refs"], refs["kinds"]) if kind == "background"), None)


def background_of(refs: dict, truth: torch.Tensor) -> torch.Tensor | None:
    """The background reference ``[3, H, W]`` of a reference set (:func:`references`) when it is the clean plate of
    the clip ``truth`` ``[3, F, H, W]``, as the synthetic worlds make it (:func:`e2v.bench.pixel_metrics.is_plate_of`);
    None when the set has none or it shows another view."""
    reference = background_reference(refs)
    return reference if reference is not None and is_plate_of(truth, reference) else None


def swapped_references(item: dict, donor: dict) -> dict:
    """The clip's references with the donor's subjects in its subjects' places (the background stays)."""
    donated, own = iter((donor, j) for j in subjects(donor)), subjects(item)
    return references(item, [next(donated) if j in own else (item, j) for j in range(item["refs"].shape[1])])


def error_split(video: torch.Tensor, truth: torch.Tensor, plate: torch.Tensor, near: int = 4) -> dict[str, float]:
    """Where a video's squared error (``[3,F,H,W]`` in [-1, 1], summed per region, divided by all pixels) lies:
    ``subjects`` (truth pixels > 0.15 from the plate), ``near`` (background within ``near`` px of them: a subject
    drawn too big or in the wrong place) and ``far`` (the rest of the background)."""
    subject = ((truth - plate).abs().amax(0) > 0.15).float()  # [F, H, W]
    around = (F.max_pool2d(subject[None], 2 * near + 1, 1, near)[0] > 0).float() - subject
    error = (video.float() - truth).pow(2).mean(0)
    return {key: (error * mask).mean().item() for key, mask in
            (("subjects", subject), ("near", around), ("far", 1 - subject - around))}


def subject_names(manifest: str) -> dict[str, frozenset]:
    """Clip id -> the names of its subject elements (reference paths when the manifest names no element)."""
    records = [json.loads(line) for line in open(manifest) if line.strip()]
    return {r["id"]: frozenset(ref.get("element") or ref["path"] for ref in r["references"]
                               if ref.get("kind") != "background") for r in records}


def partner(items: list[dict], i: int, same: Callable, names: dict) -> dict | None:
    """The next clip (cyclically) that satisfies ``same`` and shows other subjects than clip ``i``."""
    for k in range(1, len(items)):
        other = items[(i + k) % len(items)]
        if same(other) and names[other["id"][0]] != names[items[i]["id"][0]]:
            return other
    return None


def generate(pipeline: E2VPipeline, item: dict, refs: dict, args, seed: int) -> torch.Tensor:
    """``[3, F - prefix, H, W]`` in [-1, 1]: the video for the item's prompt and the given references."""
    return pipeline(list(refs["refs"]), item["caption"][0], kinds=refs["kinds"], height=args.size, width=args.size,
                    frames=args.frames, steps=args.steps, guidance=args.guidance, image_guidance=args.image_guidance,
                    seed=seed, progress=False)


def preview_row(refs: torch.Tensor, videos: list[torch.Tensor], frames: int, size: int) -> torch.Tensor:
    """``[3, size, (3 + frames * len(videos)) * size]``: up to 3 references, then ``frames`` frames of each video."""
    tiles = [F.interpolate(r[None].float(), size=(size, size), mode="bilinear", antialias=True)[0] for r in refs[:3]]
    tiles += [torch.ones(3, size, size)] * (3 - len(tiles))
    for video in videos:
        tiles += [torch.full((3, size, 2), -1.0)] + evenly_spaced_frames(video, frames)
    return torch.cat(tiles, dim=-1)


def evaluate(split: str, manifest: str, trained: E2VPipeline, untrained: E2VPipeline | None,
             args: argparse.Namespace) -> dict:
    """Mean PSNRs and subject measures of one split's clips (see the module docstring)."""
    items = held_out_items(manifest, args)
    names = subject_names(manifest)
    rows, metrics = [], {k: [] for k in ("own", "flat", "plate", "plate_own", "shuffled", "untrained", "subj_own",
                                         "subj_swapped", "subj_truth", "shape_own", "shape_swapped",
                                         "shape_truth", "shape_truth_swapped", "err_subjects", "err_near",
                                         "err_far", "plate_err_subjects", "travel_own", "travel_truth",
                                         "travel_agrees")}
    for i, item in enumerate(tqdm(items, desc=f"{split} clips")):
        n = item["refs"].shape[1]
        prefix = trained.layout.prefix_frames(n)
        truth = item["video"][0, :, : args.frames - prefix].float()
        own_refs = own_references(item)
        subject_refs = own_refs["refs"][subjects(item)]
        seed = args.seed + i
        own = generate(trained, item, own_refs, args, seed)
        metrics["own"].append(psnr(own, truth))
        metrics["flat"].append(psnr(flat_video(truth), truth))
        reference = background_reference(own_refs)
        if reference is not None:
            plate = reference[:, None].expand_as(truth)
            metrics["plate"].append(psnr(plate, truth))
            metrics["plate_own"].append(metrics["own"][-1])  # own PSNR of the clips that have a plate
            for key, value in error_split(own, truth, plate).items():
                metrics[f"err_{key}"].append(value)
            metrics["plate_err_subjects"].append(error_split(plate, truth, plate)["subjects"])
            moved, drifted = subject_travel(own, plate[:, 0]), subject_travel(truth, plate[:, 0])
            if not (moved.isnan().any() or drifted.isnan().any()):
                metrics["travel_own"].append(moved.norm().item())
                metrics["travel_truth"].append(drifted.norm().item())
                metrics["travel_agrees"].append(float(F.cosine_similarity(moved, drifted, dim=0) > 0.5))
        background = background_of(own_refs, truth)  # (c)'s foreground: what differs from the clip's plate
        metrics["subj_own"].append(subject_match(own, subject_refs, background))
        metrics["subj_truth"].append(subject_match(truth, subject_refs, background))
        metrics["shape_own"].append(shape_match(own, subject_refs))
        metrics["shape_truth"].append(shape_match(truth, subject_refs))
        if untrained is not None:
            metrics["untrained"].append(psnr(generate(untrained, item, own_refs, args, seed), truth))
        other = partner(items, i, lambda o: o["refs"].shape[1] == n, names)
        shuffled = None
        if other is not None:
            shuffled = generate(trained, item, own_references(other), args, seed)
            metrics["shuffled"].append(psnr(shuffled, truth))
        donor = partner(items, i, lambda o: len(subjects(o)) == len(subjects(item)), names)
        if donor is not None:
            swap = swapped_references(item, donor)
            swapped = generate(trained, item, swap, args, seed)
            metrics["subj_swapped"].append(subject_match(swapped, subject_refs, background))
            metrics["shape_swapped"].append(shape_match(swapped, subject_refs))
            metrics["shape_truth_swapped"].append(shape_match(truth, swap["refs"][subjects(item)]))
        if args.per_clip:
            tqdm.write(f"  {item['id'][0]}: refs {'+'.join(own_refs['kinds'])}  PSNR own {metrics['own'][-1]:.2f} "
                       f"flat {metrics['flat'][-1]:.2f}  colour own {metrics['subj_own'][-1]:.3f}  "
                       f"shape own {metrics['shape_own'][-1]:.3f}")
        if i < args.preview:
            rows.append(preview_row(own_refs["refs"], [own, truth] + ([shuffled] if shuffled is not None else []),
                                    args.preview_frames, args.size))
    if rows and args.out:
        width = max(r.shape[-1] for r in rows)
        rows = [F.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows]
        path = Path(args.out) / f"{split}_preview.png"
        save_image(path, enlarged(torch.cat(rows, dim=-2), 512))
        print(f"preview: {path} (per clip: references | own references | truth | shuffled references)")
    return {k: sum(v) / len(v) if v else float("nan") for k, v in metrics.items()} | {"clips": len(items)}


def margins_of(m: dict) -> dict:
    """Every margin of a split's means (:data:`LABELS`)."""
    return {"a": m["own"] - m["flat"], "p": m["plate_own"] - m["plate"], "b": m["own"] - m["shuffled"],
            "c": m["subj_own"] - m["subj_swapped"], "d": m["shape_own"] - m["shape_swapped"]}


def report(split: str, m: dict) -> dict:
    """Print a split's table and margins; return ``{margin: (value, required or None)}``."""
    required = dict(MARGINS.get(split, MARGINS["zeroshot"]))
    truth_margin = m["shape_truth"] - m["shape_truth_swapped"]
    if required.get("d") == "shape":
        required["d"] = round(SHAPE_SHARE * truth_margin, 4)
    print(f"{split}: {m['clips']} clips never trained on")
    print(f"  PSNR vs truth (dB): own refs {m['own']:.2f} | flat mean colour {m['flat']:.2f} | background plate "
          f"{m['plate']:.2f} | shuffled refs {m['shuffled']:.2f}"
          + (f" | untrained DiT {m['untrained']:.2f}" if not math.isnan(m["untrained"]) else ""))
    print(f"  colour match (vs own subject refs): own {m['subj_own']:.3f} | swapped subjects, own background "
          f"{m['subj_swapped']:.3f} | truth clip {m['subj_truth']:.3f}")
    print(f"  shape match (vs own subject refs):  own {m['shape_own']:.3f} | swapped subjects, own background "
          f"{m['shape_swapped']:.3f} | truth clip {m['shape_truth']:.3f} (vs the swapped subjects' refs "
          f"{m['shape_truth_swapped']:.3f}: truth margin {truth_margin:+.3f})")
    print(f"  where own's error lies (MSE share of all pixels): subjects {m['err_subjects']:.4f} (the plate's there "
          f"{m['plate_err_subjects']:.4f}) | background within 4 px of them {m['err_near']:.4f} | rest of the "
          f"background {m['err_far']:.4f}")
    if not math.isnan(m["travel_truth"]):
        print(f"  subject motion (centroid off the plate, first to last frame): own {m['travel_own']:.2f} px | truth "
              f"{m['travel_truth']:.2f} px | own's direction within 60 degrees of the truth's in "
              f"{m['travel_agrees']:.0%} of clips")
    result = {}
    for key, value in margins_of(m).items():
        need = required.get(key)
        verdict = "(reported)" if need is None else ("ok" if value >= need else "MISSED")
        print(f"  ({key}) {LABELS[key]:<28} {value:+.3f}  " + (f"(needs >= {need})  " if need is not None else "")
              + verdict)
        result[key] = (value, need)
    return result


_PIPELINES: tuple = ()  # (trained, untrained): set before the worker processes fork, shared copy-on-write


def _evaluate_forked(job: tuple[str, str, argparse.Namespace, int]) -> dict:
    """One split in a forked worker (:func:`evaluate` with the parent's pipelines), on ``threads`` threads."""
    split, manifest, args, threads = job
    torch.set_num_threads(threads)
    return evaluate(split, manifest, *_PIPELINES, args)


def evaluate_splits(splits: dict[str, str], trained: E2VPipeline, untrained: E2VPipeline | None,
                    args: argparse.Namespace) -> dict[str, dict]:
    """``{split: means}``; with ``args.workers`` > 1, splits run in that many forked processes at once, the cores
    shared among them (on 2 cores two single-threaded processes do about 1.6x the work of one two-threaded one)."""
    workers = min(args.workers, len(splits))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():  # no fork (Windows): one by one
        return {split: evaluate(split, manifest, trained, untrained, args) for split, manifest in splits.items()}
    global _PIPELINES
    _PIPELINES = (trained, untrained)
    threads = max(1, (os.cpu_count() or 1) // workers)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        means = pool.map(_evaluate_forked, [(split, manifest, args, threads) for split, manifest in splits.items()])
    return dict(zip(splits, means))


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """The splits and how their clips are read (:func:`parse_splits`, :func:`held_out_items`)."""
    parser.add_argument("--split", action="append", default=[], metavar="NAME=MANIFEST",
                        help="a split to score (repeatable; bench_learning.py holds heldout and zeroshot to their own "
                             "margins)")
    parser.add_argument("--manifest", action="append", default=[], help="a split named by the file's stem")
    parser.add_argument("--clips", type=int, default=24, help="clips per split")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--max-references", type=int, default=3)


def parse_splits(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{split name: manifest}`` from ``--split NAME=PATH`` (and ``--manifest PATH``, named by its file stem)."""
    splits = {}
    for spec in args.split:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"--split takes NAME=MANIFEST, got {spec!r}")
        splits[name] = path
    for path in args.manifest:
        splits[Path(path).stem] = path
    if not splits:
        parser.error("give at least one --split NAME=MANIFEST (or --manifest PATH)")
    for name, path in splits.items():
        if not Path(path).is_file():
            parser.error(f"split {name}: manifest {path} does not exist")
    return splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    add_split_arguments(parser)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's)")
    parser.add_argument("--solver", default=None, help="the sampler (default: the checkpoint's sample_solver)")
    parser.add_argument("--shift", type=float, default=None, help="its shift (default: the checkpoint's)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="text guidance (1 = off; default: the checkpoint's)")
    parser.add_argument("--image-guidance", type=float, default=None,
                        help="reference scale of dual guidance (0 = off; default: the checkpoint's; every arm uses "
                             "the same sampler)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/tiny/learning", help="folder for the preview PNGs ('' = none)")
    parser.add_argument("--preview", type=int, default=8, help="clips in each preview PNG")
    parser.add_argument("--preview-frames", type=int, default=4)
    parser.add_argument("--untrained", action="store_true", help="also generate with the untrained DiT (sanity)")
    parser.add_argument("--per-clip", action="store_true", help="print each clip's numbers")
    parser.add_argument("--workers", type=int, default=2,
                        help="splits evaluated at once, each in its own process (1: one after the other, here)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a margin is missed")
    parser.add_argument("--json", default="", help="write every split's means and margins to this file")
    args = parser.parse_args()
    if args.clips < 2:
        parser.error("--clips must be >= 2 (the shuffled baseline needs another clip)")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    splits = parse_splits(args, parser)
    # the run's saved sampling settings (as `e2v generate` samples it), the flags over them
    flags = {key: getattr(args, key) for key in ("solver", "shift", "steps", "guidance", "image_guidance")}
    sampling = resolve(read_saved(args.checkpoint), flags, where=args.checkpoint)
    for key in ("steps", "guidance", "image_guidance"):
        setattr(args, key, getattr(sampling.settings, key))
    print(sampling.describe(), flush=True)
    solver = sampling.settings.solver_spec()
    trained = E2VPipeline.from_checkpoint(args.checkpoint, solver=solver, device="cpu")
    untrained = None
    if args.untrained:
        untrained = E2VPipeline.from_checkpoint(args.checkpoint, solver=solver, device="cpu")
        torch.manual_seed(args.seed)
        spec = load_checkpoint(args.checkpoint)["hyper_parameters"]["dit"]
        untrained.dit.load_state_dict(registry.build("dit", spec).state_dict())
    results, missed = {}, []
    for split, means in evaluate_splits(splits, trained, untrained, args).items():
        margins = report(split, means)
        results[split] = {"means": means, "margins": {k: v for k, (v, _) in margins.items()}}
        missed += [f"{split} ({k})" for k, (value, need) in margins.items() if need is not None and not value >= need]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    if missed:
        print("missed: " + ", ".join(missed))
    if args.check and missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
