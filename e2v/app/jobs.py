"""Generation jobs of ``e2v app``: a filled form becomes an ``e2v generate`` command line, checked by
``e2v generate``'s own parser and request checks, and run on the app's one pipeline, one job at a time.

Each job lives in ``OUT/jobs/NNNN/``: the uploaded references copied in (``ref0.png`` ...), ``video.mp4``,
``strip.png`` (the prepared references beside sampled frames) and ``settings.json`` (the form and the equivalent
``e2v generate`` command line). A job that fails or is cancelled leaves no folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from e2v import registry
from e2v.argtypes import BadInput
from e2v.atomic import write_json_atomic
from e2v.bench.report import thumbnail
from e2v.datamodules.video_io import _to_uint8_frames, save_image
from e2v.modules.weights import CheckpointError
from e2v.pipeline.batch import MAX_REFERENCES
from e2v.pipeline.generate import build_parser, generate_one, read_command_requests

KINDS = ("face", "human", "animal", "object", "background")
JOBS_DIR = "jobs"
# the app's command-line options that shape the loaded model (fixed while it runs), in `e2v generate` spelling
LOAD_OPTIONS = ("checkpoint", "weights", "lora", "preset", "dtype", "quantize", "offload", "offload_blocks", "tile",
                "compile", "device")


class Cancelled(Exception):
    """The job's owner pressed Cancel; raised from the pipeline's per-step callback."""


@dataclasses.dataclass
class Form:
    """The generation form. ``references``: (uploaded file, kind) per filled slot; numbers as the page sends them
    (floats, possibly NaN or None); ``image_guidance`` / ``step_cache`` None or 0 mean off, ``teacache`` None off."""

    references: list[tuple[str, str]]
    prompt: str
    negative_prompt: str
    seed: Any
    height: Any
    width: Any
    frames: Any
    fps: Any
    steps: Any
    guidance: Any
    image_guidance: Any
    solver: str
    shift: Any
    step_cache: Any
    teacache: Optional[str]

    def settings(self) -> dict[str, Any]:
        """The form as JSON-ready values (references as ``[file, kind]``)."""
        return {**dataclasses.asdict(self), "references": [list(ref) for ref in self.references]}


@dataclasses.dataclass
class Result:
    """A finished job: its folder, video, strip and settings (the form plus ``command``)."""

    number: int
    folder: Path
    video: Path
    strip: Path
    settings: dict[str, Any]

    @property
    def label(self) -> str:
        return f"#{self.number}: {self.settings['prompt'][:40]}"


def number_text(value: Any) -> str:
    """A form number as command-line text: integral floats without ``.0``; None as ``""`` (refused by the parser)."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def is_off(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and value == 0)


def load_argv(args: argparse.Namespace) -> list[str]:
    """The app's model options (``LOAD_OPTIONS``) as ``e2v generate`` arguments."""
    argv: list[str] = []
    for key in LOAD_OPTIONS:
        value = getattr(args, key, None)
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value not in (None, False):
            argv += [flag, str(value)]
    return argv


def form_argv(form: Form, refs: list[Path], out: Path) -> list[str]:
    """The form's sampling settings as ``e2v generate`` arguments, references ``refs`` (the job's copies)."""
    argv: list[str] = []
    for path, (_, kind) in zip(refs, form.references):
        argv += ["--ref", f"{path}:{kind}"]
    argv += ["--prompt", form.prompt, "--negative-prompt", form.negative_prompt]
    for key in ("seed", "height", "width", "frames", "fps", "steps", "guidance", "shift"):
        argv += ["--" + key, number_text(getattr(form, key))]
    argv += ["--solver", form.solver]
    if not is_off(form.image_guidance):
        argv += ["--image-guidance", number_text(form.image_guidance)]
    if not is_off(form.step_cache):
        argv += ["--step-cache", number_text(form.step_cache)]
        if form.teacache:
            argv += ["--teacache", form.teacache]
    return argv + ["--out", str(out)]


def parse_generate_args(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """``argv`` parsed by ``e2v generate``'s parser; BadInput with argparse's message (naming the option)."""
    parser = build_parser()
    parser.exit_on_error = False
    try:
        return parser, parser.parse_args(argv)
    except argparse.ArgumentError as err:
        raise BadInput(str(err)) from None


def solver_name(solver: Any) -> str:
    """The registry name of a solver object (``unipc``, ``euler``)."""
    for entry in registry.entries("solver"):
        if entry.factory is type(solver):
            return entry.name
    raise ValueError(f"solver {type(solver).__name__} is not a registered solver")


class JobRunner:
    """Runs jobs on ``pipe`` one at a time (a lock: a cancelled job's thread ends before the next job samples) and
    keeps the results made since the app started. ``args``: the app's parsed options (model source and load-time
    options); ``out``: the app's output folder, the only place jobs write."""

    def __init__(self, pipe: Any, args: argparse.Namespace, out: Path) -> None:
        self.pipe, self.args, self.out = pipe, args, Path(out)
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._numbers = threading.Lock()
        self._cancel: dict[str, threading.Event] = {}
        existing = [int(p.name) for p in (self.out / JOBS_DIR).glob("[0-9]*") if p.name.isdigit()]
        self._next = max(existing, default=0) + 1

    def _new_folder(self) -> tuple[int, Path]:
        with self._numbers:
            number, self._next = self._next, self._next + 1
        folder = self.out / JOBS_DIR / f"{number:04d}"
        folder.mkdir(parents=True)
        return number, folder

    def check(self, form: Form, folder: Path) -> tuple[argparse.Namespace, Any, list[str]]:
        """Copy the uploads into ``folder`` and check the form as ``e2v generate`` would (BadInput naming the bad
        field); returns the parsed arguments, the request and the command line."""
        if not form.references:
            raise BadInput("add at least one reference image")
        if len(form.references) > MAX_REFERENCES:
            raise BadInput(f"got {len(form.references)} references; e2v generate supports 1 to {MAX_REFERENCES}")
        for upload, kind in form.references:
            if kind not in KINDS:
                raise BadInput(f"reference {Path(upload).name}: unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
        if not form.prompt.strip():
            raise BadInput("the prompt is empty")
        refs = []
        for index, (upload, _) in enumerate(form.references):
            refs.append(folder / f"ref{index}{Path(upload).suffix.lower()[:8]}")
            shutil.copyfile(upload, refs[-1])
        argv = load_argv(self.args) + form_argv(form, refs, folder / "video.mp4")
        parser, args = parse_generate_args(argv)
        try:
            (request,) = read_command_requests(parser, args)
        except BadInput as err:  # name the upload, not the job's copy
            message = str(err)
            for path, (upload, _) in zip(refs, form.references):
                message = message.replace(str(path), Path(upload).name)
            raise BadInput(message) from None
        try:
            self.pipe.check_request(len(request.images), request.height, request.width, request.frames)
        except ValueError as err:
            raise BadInput(str(err)) from None
        return args, request, ["e2v", "generate"] + argv

    def _configure(self, args: argparse.Namespace) -> None:
        """The job's solver and step cache on the shared pipeline (cheap; the model itself is untouched)."""
        pipe = self.pipe
        if (solver_name(pipe.solver), pipe.solver.shift) != (args.solver, args.shift):
            pipe.solver = registry.build("solver", {"name": args.solver, "shift": args.shift,
                                                    "num_steps": args.steps, "schedule": pipe.solver.schedule})
        pipe.enable_step_cache(args.step_cache, teacache=args.teacache)

    def cancel(self, session: str) -> bool:
        """Cancel ``session``'s running job; False when it has none."""
        event = self._cancel.get(session)
        if event is None:
            return False
        event.set()
        return True

    def run(self, form: Form, session: str = "",
            progress: Optional[Callable[[int, int, float], None]] = None) -> Result:
        """Check and generate ``form``; ``progress(done, total, seconds_left)`` after each denoising step. Raises
        BadInput (bad form), Cancelled, or the pipeline's error; the job's folder is removed on any failure."""
        number, folder = self._new_folder()
        try:
            args, request, command = self.check(form, folder)
            with self._lock:
                cancel = self._cancel[session] = threading.Event()
                try:
                    self._configure(args)
                    start = time.perf_counter()

                    def on_step(done: int, total: int) -> None:
                        if cancel.is_set():
                            raise Cancelled(f"job #{number} cancelled at step {done} of {total}")
                        if progress is not None:
                            elapsed = time.perf_counter() - start
                            progress(done, total, elapsed / done * (total - done))

                    video, _, _ = generate_one(self.pipe, request, progress=False, write=True, on_step=on_step)
                finally:
                    self._cancel.pop(session, None)
            kinds = [kind for _, kind in form.references]
            prepared, _ = self.pipe.prepare_references(request.images, kinds, request.height, request.width)
            strip = folder / "strip.png"
            refs = _to_uint8_frames(prepared[0].transpose(0, 1))  # [N, 3, H, W] -> uint8 [N, H, W, 3]
            save_image(strip, thumbnail(list(refs), _to_uint8_frames(video)))
            settings = {**form.settings(), "command": shlex.join(command),
                        "references": [[str(path), kind] for path, kind in request.references]}  # the job's copies
            write_json_atomic(folder / "settings.json", settings, indent=1)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        result = Result(number, folder, Path(request.out), strip, settings)
        self.results.append(result)
        return result


def form_defaults(args: argparse.Namespace, pipe: Any) -> dict[str, Any]:
    """The form's starting values: the app's own command line (``e2v generate``'s options and defaults) where it
    sets them, and the loaded pipeline's sampling settings (the checkpoint's or preset's solver, shift and steps,
    the preset's negative prompt)."""
    negative = pipe.preset.negative_prompt if args.negative_prompt is None else args.negative_prompt
    return dict(prompt="", negative_prompt=negative, seed=args.seed, height=args.height, width=args.width,
                frames=args.frames, fps=args.fps, steps=pipe.solver.num_steps, guidance=args.guidance,
                image_guidance=args.image_guidance, solver=solver_name(pipe.solver), shift=pipe.solver.shift,
                step_cache=args.step_cache, teacache=args.teacache)
