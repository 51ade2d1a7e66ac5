"""``e2v data synth``: the synthetic E2V world (:mod:`e2v.synth`) or, with ``--raw``, raw multi-shot videos with
truth for ``e2v data build`` (:mod:`e2v.databuild.raw_synth`). One home for the command, so neither world module
imports the other's command line."""

from __future__ import annotations

import argparse
import json

from e2v.databuild.raw_synth import add_raw_arguments, raw_command
from e2v.synth import WORLDS, synthesize_world


def synth_command(argv: list[str]) -> int:
    """``e2v data synth --out DIR [--clips N] ...``: render the synthetic world; returns the exit status."""
    parser = argparse.ArgumentParser(prog="e2v data synth", description=synthesize_world.__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--world", choices=WORLDS, default="open",
                        help="open: every element drawn fresh from an open-ended space (with a zero-shot split); "
                             "library: the fixed 18 subjects and 9 backgrounds")
    parser.add_argument("--clips", type=int, default=300, help="training clips")
    parser.add_argument("--heldout", type=int, default=30,
                        help="held-out clips (open: new elements of the training space; library: unseen pairs)")
    parser.add_argument("--zeroshot", type=int, default=None,
                        help="zero-shot clips, elements from the part of the space training never draws "
                             "(open world only; default 24 there)")
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--max-elements", type=int, default=3, help="max references per clip")
    parser.add_argument("--background-ref-prob", type=float, default=0.5,
                        help="share of clips whose background is a reference")
    parser.add_argument("--background-blur", type=float, default=0.5,
                        help="background low-pass, Gaussian sigma in output pixels (0 = none)")
    parser.add_argument("--prediction", action="store_true",
                        help="also write predict.jsonl: the training clips with their first frame as the only "
                             "reference (video prediction, to pretrain a base DiT)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes (pays off for big frames)")
    add_raw_arguments(parser)
    args = parser.parse_args(argv)
    if args.raw:
        return raw_command(args)
    zeroshot = args.zeroshot if args.zeroshot is not None else (24 if args.world == "open" else 0)
    if args.world == "library" and zeroshot:
        parser.error("--zeroshot needs --world open (the library world's elements are fixed)")
    for name in ("clips", "heldout"):
        if getattr(args, name) < 0 or zeroshot < 0:
            parser.error(f"--{name} and --zeroshot must be >= 0")
    result = synthesize_world(
        args.out, num_clips=args.clips, num_heldout=args.heldout, frames=args.frames, height=args.height,
        width=args.width, fps=args.fps, max_elements=args.max_elements, seed=args.seed, workers=args.workers,
        background_ref_prob=args.background_ref_prob, background_blur=args.background_blur, world=args.world,
        num_zeroshot=zeroshot, prediction=args.prediction,
    )
    print(json.dumps(result, indent=2))
    return 0
