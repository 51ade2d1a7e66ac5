"""``e2v app``: the browser UI, the model loaded once.

    e2v app --checkpoint runs/tiny/e2v/checkpoints/last.ckpt [--host 127.0.0.1] [--port 7860] [--out app_out]

Every ``e2v generate`` model and sampling option is accepted: model options (``--quantize``, ``--offload`` ...)
apply to the loaded model, sampling options become the form's defaults. Everything the app writes (jobs,
evaluations, comparisons, gradio's uploads) goes under ``--out``. It listens on 127.0.0.1 unless ``--host`` says
otherwise, and warns when it does. Exit code 2 for bad options or a missing model, before anything is loaded.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from e2v.argtypes import BadInput
from e2v.modules.weights import CheckpointError

LOOPBACK_NAMES = ("localhost",)
UPLOAD_LIMIT = "50mb"  # per file; a decompression bomb is refused by the image loader whatever its file size


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535 (0: any free port), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from e2v.pipeline.generate import add_generation_options

    parser = argparse.ArgumentParser(prog="e2v app", description="A browser UI for e2v generation and evaluation.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=port_number, default=7860)
    parser.add_argument("--out", default="app_out", help="the only folder the app writes to")
    parser.add_argument("--reports", action="append", default=[], metavar="DIR",
                        help="a folder searched for e2v bench reports for the Compare tab (repeatable)")
    add_generation_options(parser)
    return parser


def listen_warning(host: str) -> Optional[str]:
    """A warning when ``host`` is not a loopback address (None when it is)."""
    if host in LOOPBACK_NAMES:
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (f"warning: listening on {host}, not 127.0.0.1: anyone who can reach this machine on that address can "
            "generate with the model and read the app's outputs")


def prepare_out(out: Path) -> Path:
    """The app's output folder, created and writable; gradio's uploads and caches are kept inside it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise BadInput(f"--out {out}: cannot write there ({err.strerror or err})") from None
    os.environ["GRADIO_TEMP_DIR"] = str((out / "uploads").resolve())
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["MPLCONFIGDIR"] = str((out / ".matplotlib").resolve())
    return out.resolve()


def app_command(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``e2v app`` until interrupted; 2 for bad options or a missing / unreadable model, 1 when the server
    cannot start."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from e2v.pipeline.generate import build_pipeline, check_source

    try:
        check_source(args)
        out = prepare_out(Path(args.out))
        try:
            import gradio  # noqa: F401  (the app extra)
        except ImportError:
            raise BadInput("e2v app needs gradio: pip install 'e2v[app]'") from None
        try:
            pipe = build_pipeline(args, None)
        except CheckpointError as err:
            raise BadInput(str(err)) from None
    except BadInput as err:
        print(f"e2v app: error: {err}", file=sys.stderr)
        return 2
    from e2v.app.jobs import JobRunner
    from e2v.app.ui import build_ui

    page = build_ui(JobRunner(pipe, args, out), [Path(p) for p in args.reports])
    warning = listen_warning(args.host)
    if warning:
        print(f"e2v app: {warning}", file=sys.stderr)
    page.queue(default_concurrency_limit=1)
    try:
        page.launch(server_name=args.host, server_port=args.port or None, share=False, allowed_paths=[str(out)],
                    max_file_size=UPLOAD_LIMIT, show_error=True, ssr_mode=False, quiet=False)
    except OSError as err:
        print(f"e2v app: error: cannot serve on {args.host}:{args.port} ({err})", file=sys.stderr)
        return 1
    return 0
