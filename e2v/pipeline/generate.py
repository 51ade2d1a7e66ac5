"""``e2v generate``: references + prompt -> mp4 with an e2v checkpoint or the official SkyReels-A2 weights.

Example::

    e2v generate --weights SkyReels-A2-14B --ref person.png:human --ref dog.png:animal --ref beach.jpg:background \\
        --prompt "a man walks his dog on the beach" --out walk.mp4 --height 480 --width 832 --frames 81 \\
        --step-cache 0.1 --offload --compare walk_compare.mp4

Multi-GPU (sequence parallel x CFG-parallel): ``torchrun --nproc-per-node 4 -m e2v.pipeline.generate ... --cfg-parallel``.
Videos are written atomically (temp file + rename): a failed run leaves no partial mp4. Inputs are checked before
any model is loaded: a bad option or input file exits with code 2 and a message naming it; a failure while loading
or sampling exits with code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from e2v.argtypes import BadInput, frame_count, nonnegative_float, nonnegative_int, positive_float, positive_int
from e2v.datamodules.references import load_reference
from e2v.datamodules.video_io import write_video
from e2v.modules.weights import DTYPE_ALIASES, CheckpointError, parse_dtype
from e2v.pipeline.pipeline import DEFAULT_SOLVER, SIZE_MULTIPLE, E2VPipeline

KIND_SEPARATOR = ":"
MAX_REFERENCES = 8  # what SkyReels-A2 supports and e2v generate accepts (README: 1-8 references)


def parse_reference(value: str) -> tuple[str, Optional[str]]:
    """``PATH`` or ``PATH:kind`` -> (path, kind or None); a ``:`` that belongs to the path (``C:\\x``) is kept."""
    path, sep, kind = value.rpartition(KIND_SEPARATOR)
    if sep and path and kind and os.sep not in kind and "/" not in kind and not kind.startswith("\\"):
        return path, kind
    return value, None


def frame_size(text: str) -> int:
    """A frame height or width: a positive multiple of 16."""
    value = positive_int(text)
    if value % SIZE_MULTIPLE:
        raise argparse.ArgumentTypeError(f"expected a positive multiple of {SIZE_MULTIPLE}, got {text!r}")
    return value


def seed(text: str) -> int:
    value = nonnegative_int(text)
    if value >= 2**63:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**63), got {text!r}")
    return value


def dtype_name(text: str) -> str:
    try:
        parse_dtype(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    """The model source and sampling options shared by ``e2v generate`` and ``e2v bench run``."""
    parser.add_argument("--negative-prompt", default="", help='"" (default): the null text used in training')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="an e2v training checkpoint (.ckpt)")
    source.add_argument("--weights", help="an official SkyReels-A2 / Wan2.1 release folder")
    parser.add_argument("--height", type=frame_size, default=480)
    parser.add_argument("--width", type=frame_size, default=832)
    parser.add_argument("--frames", type=frame_count, default=81, help="4k+1 frames, reference prefix included")
    parser.add_argument("--fps", type=positive_float, default=16.0)
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_SOLVER["num_steps"])
    parser.add_argument("--guidance", type=nonnegative_float, default=5.0, help="text CFG scale (1 = off)")
    parser.add_argument("--image-guidance", type=nonnegative_float, default=None,
                        help="reference scale (dual guidance)")
    parser.add_argument("--solver", choices=["unipc", "euler"], default=DEFAULT_SOLVER["name"])
    parser.add_argument("--shift", type=positive_float, default=DEFAULT_SOLVER["shift"])
    parser.add_argument("--step-cache", type=nonnegative_float, default=None, metavar="THRESH",
                        help="skip DiT blocks when the input changed less than THRESH (e.g. 0.1)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks")
    parser.add_argument("--quantize", choices=["int8", "nf4"], default=None, help="weight-only DiT + text encoder")
    parser.add_argument("--offload", action="store_true", help="move each component to the GPU only while used")
    parser.add_argument("--tile", type=positive_int, default=None, metavar="PIXELS", help="VAE tile size (e.g. 256)")
    parser.add_argument("--dtype", type=dtype_name, default=None,
                        help=f"DiT / text encoder dtype for --weights ({', '.join(DTYPE_ALIASES)} or a torch name)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e2v generate", description="Generate a video from reference images.")
    parser.add_argument("--ref", action="append", required=True, metavar="PATH[:KIND]",
                        help="a reference image, repeatable; optional kind: human, face, object, animal, background")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--out", required=True, help="output mp4")
    parser.add_argument("--compare", help="also write an mp4 with the references beside the frames")
    add_generation_options(parser)
    parser.add_argument("--cfg-parallel", action="store_true", help="under torchrun: guidance branches on 2 groups")
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


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output(path: str, option: str, inputs: dict[str, Path]) -> Path:
    """``path`` as an output file that can be written and replaces no input; BadInput naming ``option`` if not.
    Creates missing parent folders (as the writer would)."""
    if not path or not path.strip():
        raise BadInput(f"{option}: empty file name")
    out = Path(path)
    if out.is_dir():
        raise BadInput(f"{option} {out} is a directory; give a file name such as {out / 'video.mp4'}")
    for name, source in inputs.items():
        if _same_file(out, source):
            raise BadInput(f"{option} {out} is the same file as {name}; writing it would destroy that input")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as err:
        raise BadInput(f"{option} {out}: cannot write in {out.parent} ({err.strerror or err})") from None
    return out


def check_inputs(args: argparse.Namespace, refs: list[tuple[str, Optional[str]]]) -> list[torch.Tensor]:
    """Every input and output of the request, before any model is loaded: the reference images (returned, loaded),
    the checkpoint or weights folder, and the output paths. Raises BadInput naming the bad one."""
    if len(refs) > MAX_REFERENCES:
        raise BadInput(f"--ref: got {len(refs)} references; e2v generate supports 1 to {MAX_REFERENCES}")
    inputs = {f"--ref {path}": Path(path) for path, _ in refs}
    if args.checkpoint is not None:
        if not Path(args.checkpoint).is_file():
            raise BadInput(f"--checkpoint {args.checkpoint} does not exist or is not a file")
        inputs["--checkpoint"] = Path(args.checkpoint)
    elif not Path(args.weights).is_dir():
        raise BadInput(f"--weights {args.weights} does not exist or is not a directory")
    else:
        inputs["--weights"] = Path(args.weights)
    out = check_output(args.out, "--out", inputs)
    if args.compare is not None:
        check_output(args.compare, "--compare", {**inputs, "--out": out})
    try:
        return [load_reference(path) for path, _ in refs]
    except (FileNotFoundError, ValueError) as err:
        raise BadInput(f"--ref: {err}") from None


def generate_command(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``e2v generate``; returns the exit code (errors are printed, not raised): 2 for bad input, 1 for a
    failure while loading or sampling."""
    args = build_parser().parse_args(argv)
    refs = [parse_reference(value) for value in args.ref]
    kinds = [kind or "object" for _, kind in refs]
    try:
        images = check_inputs(args, refs)
        parallel = _parallel_config(args)
        try:
            pipe = build_pipeline(args, parallel)
        except CheckpointError as err:
            raise BadInput(str(err)) from None
        try:
            pipe.check_request(len(images), args.height, args.width, args.frames)
        except ValueError as err:
            raise BadInput(str(err)) from None
        start = time.perf_counter()
        video = pipe(images, args.prompt, negative_prompt=args.negative_prompt, kinds=kinds, height=args.height,
                     width=args.width, frames=args.frames, steps=args.steps, guidance=args.guidance,
                     image_guidance=args.image_guidance, seed=args.seed, progress=not args.no_progress)
        seconds = time.perf_counter() - start
        if parallel is None or torch.distributed.get_rank() == 0:
            write_video(args.out, video, fps=args.fps)
            if args.compare:
                layout_refs, _ = pipe.prepare_references(images, kinds, args.height, args.width)
                write_video(args.compare, side_by_side(video, layout_refs[0]), fps=args.fps)
            print(f"wrote {args.out}: {video.shape[1]} frames {args.width}x{args.height} in {seconds:.1f}s")
    except BadInput as err:
        print(f"e2v generate: error: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
        print(f"e2v generate: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(generate_command())
