"""``e2v generate``: references + prompt -> mp4 with an e2v checkpoint or the official SkyReels-A2 weights.

Example::

    e2v generate --weights SkyReels-A2-14B --ref person.png:human --ref dog.png:animal --ref beach.jpg:background \\
        --prompt "a man walks his dog on the beach" --out walk.mp4 --height 480 --width 832 --frames 69 \\
        --step-cache 0.1 --offload --compare walk_compare.mp4

Many videos in one process (the weights loaded once, one line of timings per video)::

    e2v generate --weights SkyReels-A2-14B --batch requests.jsonl --steps 30

with one request per line (format: :mod:`e2v.pipeline.batch`); the command line's sampling options are the
defaults every line may override. ``--preset`` picks the sampling choices (:mod:`e2v.pipeline.presets`): ``official``
(default with ``--weights``) reproduces the official SkyReels-A2 inference, ``e2v`` (default with ``--checkpoint``)
is e2v's own.

Multi-GPU (sequence parallel x CFG-parallel): ``torchrun --nproc-per-node 4 -m e2v.pipeline.generate ... --cfg-parallel``.
Videos are written atomically (temp file + rename): a failed run leaves no partial mp4. Inputs are checked before
any model is loaded (with ``--batch``: every line, all bad lines reported by number): a bad option or input file
exits with code 2 and a message naming it; a failure while loading or sampling exits with code 1 (with
``--batch``, a video that fails is reported and the others still run).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from e2v.argtypes import HelpFormatter, BadInput, nonnegative_float, positive_float, positive_int
from e2v.datamodules.references import check_kind, load_reference
from e2v.datamodules.video_io import write_video
from e2v.modules.weights import DTYPE_ALIASES, CheckpointError, parse_dtype
from e2v.pipeline.batch import MAX_REFERENCES, Request, frame_size, parse_reference, read_requests, seed
from e2v.modules.quantize import BITSANDBYTES_MODES, MODES
from e2v.pipeline.offload import peak_memory_note, reset_peak_memory
from e2v.pipeline.pipeline import E2VPipeline
from e2v.pipeline.sampling import DEFAULTS, SOLVERS, Resolved, read_saved, resolve
from e2v.pipeline.step_cache import TEACACHE_WAN, teacache_mismatch
from e2v.pipeline.presets import PRESETS, GenerationPreset, get_preset



def dtype_name(text: str) -> str:
    try:
        parse_dtype(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    """The model source and sampling options shared by ``e2v generate`` and ``e2v bench run``."""
    parser.add_argument("--negative-prompt", default=None,
                        help="default: the preset's (official: its long English negative prompt; e2v: \"\", the null "
                             "text used in training)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="an e2v training checkpoint (.ckpt)")
    source.add_argument("--weights", help="an official SkyReels-A2 / Wan2.1 release folder")
    parser.add_argument("--lora", default=None, metavar="CKPT",
                        help="a LoRA training checkpoint: its adapters (EMA when present) merged into the DiT")
    saved = "default: the model's saved sampling settings (checkpoint, or sampling.json of an export), else "
    parser.add_argument("--height", type=frame_size, default=None, help=saved + str(DEFAULTS.height))
    parser.add_argument("--width", type=frame_size, default=None, help=saved + str(DEFAULTS.width))
    parser.add_argument("--frames", type=positive_int, default=None,
                        help="frames of the written video, reference frames excluded (the sampled 4k+1 clip is sized "
                             f"for it and printed); {saved}{DEFAULTS.frames}")
    parser.add_argument("--fps", type=positive_float, default=None, help=saved + f"{DEFAULTS.fps:g}")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--steps", type=positive_int, default=None, help=saved + str(DEFAULTS.steps))
    parser.add_argument("--guidance", type=nonnegative_float, default=None,
                        help=f"text CFG scale (1 = off); {saved}{DEFAULTS.guidance:g}")
    parser.add_argument("--image-guidance", type=nonnegative_float, default=None,
                        help="reference scale of dual guidance (0: off); " + saved + "off")
    parser.add_argument("--solver", choices=list(SOLVERS), default=None, help=saved + DEFAULTS.solver)
    parser.add_argument("--shift", type=positive_float, default=None, help=saved + f"{DEFAULTS.shift:g}")
    parser.add_argument("--step-cache", type=nonnegative_float, default=None, metavar="THRESH",
                        help="skip DiT blocks when the input changed less than THRESH (e.g. 0.1)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks")
    parser.add_argument("--teacache", choices=list(TEACACHE_WAN), default=None,
                        help="with --step-cache: decide by TeaCache's rescaled time-embedding change (Wan2.1 fits)")
    parser.add_argument("--quantize", choices=list(MODES), default=None,
                        help="weight-only: int8 / nf4 (bitsandbytes; DiT + text encoder), int8wo / fp8 (DiT)")
    parser.add_argument("--offload", action="store_true", help="move each component to the GPU only while used")
    parser.add_argument("--offload-blocks", type=positive_int, default=None, metavar="N",
                        help="stream the DiT blocks from host memory N at a time (implies --offload; 14B in 24 GB)")
    parser.add_argument("--tile", type=positive_int, default=None, metavar="PIXELS", help="VAE tile size (e.g. 256)")
    parser.add_argument("--dtype", type=dtype_name, default=None,
                        help=f"DiT / text encoder dtype for --weights ({', '.join(DTYPE_ALIASES)} or a torch name; "
                             "default: the preset's, bf16 for official)")
    parser.add_argument("--preset", choices=list(PRESETS), default=None,
                        help="sampling choices: official (default with --weights) reproduces the official SkyReels-A2 "
                             "inference; e2v (default with --checkpoint) is e2v's own")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="e2v generate", description="Generate a video from reference images.")
    parser.add_argument("--ref", action="append", metavar="PATH[:KIND]",
                        help="a reference image, repeatable; optional kind: human, face, object, animal (white-padded, the "
                             "default) or background, scene, environment (centre-cropped)")
    parser.add_argument("--prompt")
    parser.add_argument("--out", help="output mp4")
    parser.add_argument("--compare", help="also write an mp4 with the references beside the frames")
    parser.add_argument("--batch", metavar="REQUESTS.jsonl",
                        help="generate every request of a JSONL file (instead of --ref/--prompt/--out)")
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


def resolve_preset(args: argparse.Namespace) -> GenerationPreset:
    """``--preset``, or its default: ``official`` for ``--weights``, ``e2v`` for ``--checkpoint``."""
    return get_preset(args.preset, "official" if args.weights else "e2v")


def build_pipeline(args: argparse.Namespace, parallel) -> E2VPipeline:
    if args.lora is not None and not Path(args.lora).is_file():
        raise BadInput(f"--lora {args.lora} does not exist or is not a file")
    if args.offload_blocks is not None and args.quantize in BITSANDBYTES_MODES:
        raise BadInput(f"--offload-blocks cannot stream bitsandbytes layers (--quantize {args.quantize}): "
                       "use --quantize int8wo or fp8")
    if args.teacache is not None and args.step_cache is None:
        raise BadInput("--teacache needs --step-cache THRESH")
    preset = resolve_preset(args)
    if getattr(args, "sampling", None) is None:  # parsed elsewhere (e2v app): the model's own settings first
        apply_sampling(args, "e2v generate")
    solver = args.sampling.solver_spec(preset.schedule)
    offload = args.offload or args.offload_blocks is not None
    options = dict(device=args.device, offload=offload, tile=args.tile, parallel=parallel, preset=preset)
    if args.checkpoint:
        pipe = E2VPipeline.from_checkpoint(args.checkpoint, solver=solver, **options)
    else:
        pipe = E2VPipeline.from_weights(args.weights, solver=solver, dtype=args.dtype, **options)
    if args.lora:
        from e2v.lora import attach_adapter

        attach_adapter(pipe.dit, args.lora)  # merged before any quantisation: the sampling cost is unchanged
    if args.quantize:
        pipe.quantize(args.quantize)
    if args.compile:
        pipe.compile()
    if args.offload_blocks is not None:
        pipe.enable_block_offload(args.offload_blocks)
    if args.teacache is not None:
        mismatch = teacache_mismatch(args.teacache, pipe.dit.config.dim, pipe.dit.config.in_channels)
        if mismatch:
            print(f"e2v generate: warning: {mismatch}", file=sys.stderr)
    return pipe.enable_step_cache(args.step_cache, teacache=args.teacache)


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
    Creates nothing: a rejected request leaves no empty folder."""
    if not path or not path.strip():
        raise BadInput(f"{option}: empty file name")
    out = Path(path)
    if out.is_dir():
        raise BadInput(f"{option} {out} is a directory; give a file name such as {out / 'video.mp4'}")
    for name, source in inputs.items():
        if _same_file(out, source):
            raise BadInput(f"{option} {out} is the same file as {name}; writing it would destroy that input")
    folder = out.parent  # the writer makes missing folders: check the nearest existing one, and make none here
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise BadInput(f"{option} {out}: cannot write in {out.parent} ({err.strerror or err})") from None
    return out


def apply_sampling(args: argparse.Namespace, prog: str) -> Resolved:
    """Fill the sampling options left out (None) from the model's saved settings (:mod:`e2v.pipeline.sampling`),
    print which values are used and where they came from, and warn when a flag leaves a student's trained schedule.
    Sets ``args.sampling``; BadInput when the saved settings are unreadable."""
    source = args.checkpoint or args.weights
    flags = {key: getattr(args, key) for key in FLAG_KEYS}
    try:
        resolved = resolve(read_saved(source), flags, where=source)
    except (ValueError, CheckpointError) as err:
        raise BadInput(str(err)) from None
    for key in FLAG_KEYS:
        setattr(args, key, getattr(resolved.settings, key))
    args.sampling = resolved.settings
    print(resolved.describe(), flush=True)
    for warning in resolved.warnings:
        print(f"{prog}: warning: {warning}", file=sys.stderr, flush=True)
    return resolved


FLAG_KEYS = ("solver", "shift", "steps", "guidance", "image_guidance", "fps", "frames", "height", "width")
SETTINGS = ("negative_prompt", "seed", "height", "width", "frames", "steps", "guidance", "image_guidance", "fps")


def check_source(args: argparse.Namespace) -> dict[str, Path]:
    """The checkpoint file or weights folder exists; returns it as an input no output may replace."""
    if args.checkpoint is not None:
        if not Path(args.checkpoint).is_file():
            raise BadInput(f"--checkpoint {args.checkpoint} does not exist or is not a file")
        return {"--checkpoint": Path(args.checkpoint)}
    if not Path(args.weights).is_dir():
        raise BadInput(f"--weights {args.weights} does not exist or is not a directory")
    return {"--weights": Path(args.weights)}


class RequestChecker:
    """Checks requests before any model is loaded: reference count, outputs writable, no output replacing an input
    (the model source, a reference, or with ``--batch`` another line's reference or output); loads the references
    into ``request.images``. ``names``: how messages call (references, out, compare)."""

    def __init__(self, sources: dict[str, Path], names: tuple[str, str, str]) -> None:
        self.sources, self.names = sources, names
        self.outputs: dict[Path, int] = {}
        self.references: dict[Path, int] = {}

    def _taken(self, path: Path, what: str) -> None:
        key = path.resolve()
        if key in self.outputs:
            raise BadInput(f"{what} {path} is also the output of line {self.outputs[key]}")
        if what != self.names[0] and key in self.references:
            raise BadInput(f"{what} {path} is a reference of line {self.references[key]}; writing it would destroy it")

    def __call__(self, request: Request) -> None:
        ref_name, out_name, compare_name = self.names
        if len(request.references) > MAX_REFERENCES:
            raise BadInput(f"{ref_name}: got {len(request.references)} references; e2v generate supports 1 to "
                           f"{MAX_REFERENCES}")
        inputs = {**{f"{ref_name} {path}": Path(path) for path, _ in request.references}, **self.sources}
        out = check_output(request.out, out_name, inputs)
        compare = None
        if request.compare is not None:
            compare = check_output(request.compare, compare_name, {**inputs, out_name: out})
        for path, _ in request.references:
            self._taken(Path(path), ref_name)
        for path, name in ((out, out_name), (compare, compare_name)):
            if path is not None:
                self._taken(path, name)
        try:
            request.images = [load_reference(path) for path, _ in request.references]
        except (FileNotFoundError, ValueError) as err:
            raise BadInput(f"{ref_name}: {err}") from None
        for path, _ in request.references:
            self.references.setdefault(Path(path).resolve(), request.line)
        for path in (out, compare):
            if path is not None:
                self.outputs[path.resolve()] = request.line


def read_command_requests(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Request]:
    """The requests of this command (one from --ref/--prompt/--out, or every line of --batch), all checked."""
    single = {"--ref": args.ref, "--prompt": args.prompt, "--out": args.out, "--compare": args.compare}
    if args.batch is not None:
        given = [name for name, value in single.items() if value is not None]
        if given:
            parser.error(f"--batch takes references, prompts and outputs from its lines; drop {', '.join(given)}")
    else:
        missing = [name for name, value in single.items() if value is None and name != "--compare"]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)} (or --batch)")
        try:  # a mistyped kind is refused before any checkpoint is read
            refs = [(path, kind and check_kind(kind, f"--ref {path}:{kind}"))
                    for path, kind in map(parse_reference, args.ref)]
        except ValueError as err:
            parser.error(str(err))
    sources = check_source(args)
    refs = []
    if args.batch is None:  # the command line's own references first: no model file is read for a typo
        refs = [parse_reference(value) for value in args.ref]
        try:
            refs = [(path, kind and check_kind(kind, f"--ref {path}:{kind}")) for path, kind in refs]
        except ValueError as err:
            parser.error(str(err))
    apply_sampling(args, parser.prog)
    defaults = {key: getattr(args, key) for key in SETTINGS}
    if args.batch is not None:
        sources["--batch"] = Path(args.batch)  # the requests file is an input too: no line's output may replace it
        return read_requests(args.batch, defaults, RequestChecker(sources, ("reference", "'out'", "'compare'")))
    request = Request([(Path(path), kind) for path, kind in refs], args.prompt, args.out, args.compare, **defaults)
    RequestChecker(sources, ("--ref", "--out", "--compare"))(request)
    return [request]


def generate_one(pipe: E2VPipeline, request: Request, progress: bool, write: bool,
                 on_step: Optional[Callable[[int, int], None]] = None) -> tuple[torch.Tensor, float, float]:
    """Generate ``request``'s video and (``write``) write its mp4s; returns (video, generation s, writing s).
    ``on_step``: the pipeline's per-step callback (progress, cancellation)."""
    defaults = pipe.preset.default_kinds(len(request.references))
    kinds = [kind or default for kind, default in zip(request.kinds, defaults)]
    reset_peak_memory(pipe.device)
    start = time.perf_counter()
    video = pipe(request.images, request.prompt, negative_prompt=request.negative_prompt, kinds=kinds,
                 height=request.height, width=request.width, output_frames=request.frames, steps=request.steps,
                 guidance=request.guidance, image_guidance=request.image_guidance, seed=request.seed,
                 progress=progress, on_step=on_step)
    sampled = time.perf_counter()
    if not torch.isfinite(video).all():
        raise ValueError(f"the model produced non-finite values (NaN or inf) for {request.out}: its weights are "
                         f"broken (a diverged or damaged checkpoint); nothing written")
    if write:
        write_video(request.out, video, fps=request.fps)
        if request.compare:
            layout_refs, _ = pipe.prepare_references(request.images, kinds, request.height, request.width)
            write_video(request.compare, side_by_side(video, layout_refs[0]), fps=request.fps)
    return video, sampled - start, time.perf_counter() - sampled


def generate_command(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``e2v generate``; returns the exit code (errors are printed, not raised): 2 for bad input, 1 for a
    failure while loading or sampling (with ``--batch``: 1 when any video failed, the others still made)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    batch = args.batch is not None
    failed = 0
    try:
        requests = read_command_requests(parser, args)
        parallel = _parallel_config(args)
        start = time.perf_counter()
        try:
            pipe = build_pipeline(args, parallel)
        except CheckpointError as err:
            raise BadInput(str(err)) from None
        for request in requests:
            try:
                pipe.check_request(len(request.images), request.height, request.width,
                                   pipe.sampled_frames(len(request.images), request.frames))
            except ValueError as err:
                raise BadInput(f"{args.batch} line {request.line}: {err}" if batch else str(err)) from None
        write = parallel is None or torch.distributed.get_rank() == 0
        if batch and write:
            print(f"loaded the model in {time.perf_counter() - start:.1f}s (preset {pipe.preset.name}); "
                  f"{len(requests)} videos")
        for index, request in enumerate(requests, start=1):
            try:
                video, sampling, writing = generate_one(pipe, request, not args.no_progress, write)
            except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
                if not batch:
                    raise
                failed += 1
                print(f"e2v generate: error: {args.batch} line {request.line}: {err}", file=sys.stderr)
                continue
            if write:
                count = len(request.images)
                size = (f"{video.shape[1]} frames {request.width}x{request.height} (sampled "
                        f"{pipe.sampled_frames(count, request.frames)}, "
                        f"{pipe.preset.prefix_frames(pipe.layout, count)} reference frames cut)")
                if pipe.step_cache is not None:
                    size += f" ({pipe.step_cache.summary()})"
                if batch:
                    print(f"[{index}/{len(requests)}] line {request.line}: wrote {request.out}: {size}, seed "
                          f"{request.seed}: generated in {sampling:.1f}s{peak_memory_note(pipe.device)}, written in "
                          f"{writing:.1f}s", flush=True)
                else:
                    print(f"wrote {request.out}: {size} in {sampling:.1f}s{peak_memory_note(pipe.device)}")
    except BadInput as err:
        print(f"e2v generate: error: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
        print(f"e2v generate: error: {err}", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(generate_command())
