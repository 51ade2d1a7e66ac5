"""Which path carries a subject's look: the layout's reference latents or the image encoder's tokens.

An E2V checkpoint sees each reference twice: VAE-encoded in the layout's condition (A2: frames in front of the
clip) and as image-encoder (CLIP) tokens in cross-attention. For each clip of a manifest this generates the video
four times, the other clip's subjects (as `bench_learning.py`'s swapped arm: the background stays the clip's own)
given to neither path, to the layout only, to the image encoder only and to both, and prints the colour match and
the shape match of each video with the clip's own subject references, and its PSNR against the truth. The share of
the own - both drop that the layout-only swap causes is the layout's share of what the model copies.

    python benchmarks/bench_reference_paths.py --checkpoint runs/tiny/e2v/checkpoints/last.ckpt \
        --manifest data/tiny_world/zeroshot.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_learning import (background_of, held_out_items, own_references, partner, subject_names,  # noqa: E402
                            subjects, swapped_references)

from e2v.bench.pixel_metrics import psnr, shape_match, subject_match  # noqa: E402
from e2v.pipeline.pipeline import E2VPipeline  # noqa: E402
from e2v.pipeline.sampling import read_saved, resolve  # noqa: E402

ARMS = {"own": (False, False), "layout swapped": (True, False), "image tokens swapped": (False, True),
        "both swapped": (True, True)}  # arm -> (swap the layout's references, swap the image encoder's)


@contextlib.contextmanager
def image_tokens_from(pipeline: E2VPipeline, refs: dict) -> Iterator[None]:
    """Within it, the image encoder sees ``refs`` (``references()``'s dict) whatever the layout is given."""
    prepare = pipeline.prepare_references
    pipeline.prepare_references = lambda given, kinds, height, width: (
        prepare(given, kinds, height, width)[0], prepare(list(refs["refs"]), refs["kinds"], height, width)[1])
    try:
        yield
    finally:
        del pipeline.prepare_references  # the instance attribute: the class's method again


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an E2V fit's Lightning checkpoint")
    parser.add_argument("--manifest", required=True, help="clips to generate (e.g. the zero-shot split)")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32, help="the image encoder's square")
    parser.add_argument("--max-references", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = resolve(read_saved(args.checkpoint), {}, where=args.checkpoint).settings  # as the run samples
    pipeline = E2VPipeline.from_checkpoint(args.checkpoint, solver=settings.solver_spec(), device="cpu")
    items = held_out_items(args.manifest, args)
    names = subject_names(args.manifest)
    scores: dict[str, list[tuple[float, float, float]]] = {arm: [] for arm in ARMS}
    for i, item in enumerate(items):
        donor = partner(items, i, lambda o: len(subjects(o)) == len(subjects(item)), names)
        if donor is None:
            continue
        n = item["refs"].shape[1]
        truth = item["video"][0, :, : args.frames - pipeline.layout.prefix_frames(n)].float()
        own = own_references(item)
        swapped = swapped_references(item, donor)
        own_subjects = own["refs"][subjects(item)]
        plate = background_of(own, truth)
        for arm, (layout_swap, tokens_swap) in ARMS.items():
            layout_refs = swapped if layout_swap else own
            with image_tokens_from(pipeline, swapped if tokens_swap else own):
                video = pipeline(list(layout_refs["refs"]), item["caption"][0], kinds=layout_refs["kinds"],
                                 height=args.size, width=args.size, frames=args.frames, steps=settings.steps,
                                 guidance=settings.guidance, image_guidance=settings.image_guidance,
                                 seed=args.seed + i, progress=False)
            scores[arm].append((subject_match(video, own_subjects, plate), shape_match(video, own_subjects),
                                psnr(video, truth)))
    means = {arm: np.mean(rows, axis=0) for arm, rows in scores.items() if rows}
    if "own" not in means:
        sys.exit("no clip has a partner with as many subjects: nothing to swap")
    print(f"{len(scores['own'])} clips of {args.manifest}, each video against the clip's own subject references")
    print(f"{'subjects from the other clip in':<24} {'colour':>7} {'shape':>7} {'PSNR':>7}")
    for arm, (colour, shape, value) in means.items():
        print(f"{arm:<24} {colour:7.3f} {shape:7.3f} {value:7.2f}")
    drop = means["own"] - means["both swapped"]
    layout = means["own"] - means["layout swapped"]
    shares = [f"{label} {part / whole:.2f}" if abs(whole) > 1e-9 else f"{label} -"
              for label, part, whole in zip(("colour", "shape", "PSNR"), layout, drop)]
    print("the layout-only swap's share of the own - both drop: " + ", ".join(shares))


if __name__ == "__main__":
    main()
