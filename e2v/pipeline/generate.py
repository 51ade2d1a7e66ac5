"""``e2v generate``: references + prompt -> mp4 with an e2v checkpoint or the official SkyReels-A2 weights.

Example::

    e2v generate --weights SkyReels-A2-14B --ref person.png:human --ref dog.png:animal --ref beach.jpg:background \\
        --prompt "a man walks his dog on the beach" --out walk.mp4 --height 480 --width 832 --frames 81 \\
        --step-cache 0.1 --offload --compare walk_compare.mp4

Multi-GPU (sequence parallel x CFG-parallel): ``torchrun --nproc-per-node 4 -m e2v.pipeline.generate ... --cfg-parallel``.
Videos are written atomically (temp file + rename): a failed run leaves no partial mp4.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

import torch

from e2v.datamodules.video_io import write_video
from e2v.pipeline.pipeline import DEFAULT_SOLVER, E2VPipeline

KIND_SEPARATOR = ":"


def parse_reference(value: str) -> tuple[str, Optional[str]]:
    """``PATH`` or ``PATH:kind`` -> (path, kind or None); a ``:`` that belongs to the path (``C:\\x``) is kept."""
    path, sep, kind = value.rpartition(KIND_SEPARATOR)
    if sep and path and kind and os.sep not in kind and "/" not in kind and not kind.startswith("\\"):
        return path, kind
    return value, None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e2v generate", description="Generate a video from reference images.")
    parser.add_argument("--ref", action="append", required=True, metavar="PATH[:KIND]",
                        help="a reference image, repeatable; optional kind: human, face, object, animal, background")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="", help='"" (default): the null text used in training')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="an e2v training checkpoint (.ckpt)")
    source.add_argument("--weights", help="an official SkyReels-A2 / Wan2.1 release folder")
    parser.add_argument("--out", required=True, help="output mp4")
    parser.add_argument("--compare", help="also write an mp4 with the references beside the frames")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81, help="4k+1 frames, reference prefix included")
    parser.add_argument("--fps", type=float, default=16.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DEFAULT_SOLVER["num_steps"])
    parser.add_argument("--guidance", type=float, default=5.0, help="text CFG scale (1 = off)")
    parser.add_argument("--image-guidance", type=float, default=None, help="reference scale (dual guidance)")
    parser.add_argument("--solver", choices=["unipc", "euler"], default=DEFAULT_SOLVER["name"])
    parser.add_argument("--shift", type=float, default=DEFAULT_SOLVER["shift"])
    parser.add_argument("--step-cache", type=float, default=None, metavar="THRESH",
                        help="skip DiT blocks when the input changed less than THRESH (e.g. 0.1)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks")
    parser.add_argument("--quantize", choices=["int8", "nf4"], default=None, help="weight-only DiT + text encoder")
    parser.add_argument("--offload", action="store_true", help="move each component to the GPU only while used")
    parser.add_argument("--tile", type=int, default=None, metavar="PIXELS", help="VAE tile size (e.g. 256)")
    parser.add_argument("--dtype", default=None, help="DiT / text encoder dtype for --weights (bf16, fp32)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--cfg-parallel", action="store_true", help="under torchrun: guidance branches on 2 groups")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def side_by_side(video: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """``[3, F, H, W]`` video with the references ``[N, 3, H, W]`` tiled in a column block on its left."""
    _, frames, height, width = video.shape
    count = refs.shape[0]
    cell_h = max(2, height // count // 2 * 2)
    cell_w = max(2, cell_h * width // height // 2 * 2)
    scaled = torch.nn.functional.interpolate(refs.float(), size=(cell_h, cell_w), mode="area")
    column = torch.ones(3, height, cell_w)
    for i, ref in enumerate(scaled):
        column[:, i * cell_h : (i + 1) * cell_h] = ref
    return torch.cat([column[:, None].expand(3, frames, height, cell_w), video], dim=3)


def build_pipeline(args: argparse.Namespace, parallel) -> E2VPipeline:
    solver = {"name": args.solver, "shift": args.shift, "num_steps": args.steps}
    options = dict(device=args.device, offload=args.offload, tile=args.tile, parallel=parallel)
    if args.checkpoint:
        pipe = E2VPipeline.from_checkpoint(args.checkpoint, solver=solver, **options)
    else:
        pipe = E2VPipeline.from_weights(args.weights, solver=solver, dtype=args.dtype, **options)
    if args.quantize:
        pipe.quantize(args.quantize)
    if args.compile:
        pipe.compile()
    return pipe.enable_step_cache(args.step_cache)


def _parallel_config(args: argparse.Namespace):
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch.distributed as dist

    from e2v.pipeline.parallel import ParallelConfig

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        args.device = args.device or f"cuda:{torch.cuda.current_device()}"
    return ParallelConfig.from_world(cfg=2 if args.cfg_parallel else 1)


def generate_command(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``e2v generate``; returns the exit code (errors are printed, not raised)."""
    args = build_parser().parse_args(argv)
    refs = [parse_reference(value) for value in args.ref]
    paths = [path for path, _ in refs]
    kinds = [kind or "object" for _, kind in refs]
    try:
        parallel = _parallel_config(args)
        pipe = build_pipeline(args, parallel)
        start = time.perf_counter()
        video = pipe(paths, args.prompt, negative_prompt=args.negative_prompt, kinds=kinds, height=args.height,
                     width=args.width, frames=args.frames, steps=args.steps, guidance=args.guidance,
                     image_guidance=args.image_guidance, seed=args.seed, progress=not args.no_progress)
        seconds = time.perf_counter() - start
        if parallel is None or torch.distributed.get_rank() == 0:
            write_video(args.out, video, fps=args.fps)
            if args.compare:
                layout_refs, _ = pipe.prepare_references(paths, kinds, args.height, args.width)
                write_video(args.compare, side_by_side(video, layout_refs[0]), fps=args.fps)
            print(f"wrote {args.out}: {video.shape[1]} frames {args.width}x{args.height} in {seconds:.1f}s")
    except (FileNotFoundError, ValueError, TypeError, KeyError, RuntimeError) as err:
        print(f"e2v generate: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(generate_command())
