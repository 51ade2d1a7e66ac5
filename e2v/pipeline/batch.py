"""Generation requests: one video each, from ``e2v generate``'s options or from a ``--batch`` JSONL file.

A requests file holds one JSON object per line (blank lines skipped), paths relative to the file::

    {"prompt": "a man walks his dog", "references": ["man.png:human", {"path": "dog.png", "kind": "animal"}],
     "out": "videos/walk.mp4", "seed": 7, "frames": 49}

Required: ``prompt``, ``references`` (1-8, each ``"PATH[:KIND]"`` or ``{"path", "kind"}``; no kind: the preset's
default), ``out``. Optional, defaulting to the command line's values: ``compare``, ``negative_prompt``, ``seed``,
``height``, ``width``, ``frames``, ``steps``, ``guidance``, ``image_guidance``, ``fps``. Every line is checked (JSON,
keys, values, references readable, outputs writable and distinct, no output replacing an input) before any model
is loaded; :func:`read_requests` raises one :class:`~e2v.argtypes.BadInput` listing every bad line by number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from e2v.argtypes import BadInput, nonnegative_float, nonnegative_int, positive_float, positive_int
from e2v.datamodules.references import REFERENCE_KINDS, check_kind
from e2v.pipeline.pipeline import SIZE_MULTIPLE

MAX_REFERENCES = 8  # what SkyReels-A2 supports and e2v generate accepts (README: 1-8 references)
KIND_SEPARATOR = ":"


@dataclasses.dataclass
class Request:
    """One video to generate. A reference's kind is None where the preset's default kind applies; ``images`` are
    the loaded references ``[3, H, W]`` in [-1, 1]; ``line`` is the requests file's line (0: the command line)."""

    references: list[tuple[Path, Optional[str]]]
    prompt: str
    out: str
    compare: Optional[str]
    negative_prompt: Optional[str]
    seed: int
    height: int
    width: int
    frames: int
    steps: int
    guidance: float
    image_guidance: Optional[float]
    fps: float
    line: int = 0
    images: list[torch.Tensor] = dataclasses.field(default_factory=list)

    @property
    def kinds(self) -> list[Optional[str]]:
        return [kind for _, kind in self.references]


def parse_reference(value: str) -> tuple[str, Optional[str]]:
    """``PATH`` or ``PATH:kind`` -> (path, kind or None); a ``:`` that belongs to the path (``C:\\x``, or an existing
    file ``a:b.png``) is kept."""
    path, sep, kind = value.rpartition(KIND_SEPARATOR)
    if sep and path and kind and os.sep not in kind and "/" not in kind and not kind.startswith("\\"):
        if kind.strip().lower() in REFERENCE_KINDS or not os.path.exists(value):
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


# the optional per-request settings and the parser each value must pass (a JSON null keeps None where allowed)
SETTINGS: dict[str, Callable[[str], Any]] = {
    "seed": seed, "height": frame_size, "width": frame_size, "frames": positive_int, "steps": positive_int,
    "guidance": nonnegative_float, "image_guidance": nonnegative_float, "fps": positive_float,
}
NULLABLE = ("image_guidance", "negative_prompt", "compare")
KEYS = ("prompt", "references", "out", "compare", "negative_prompt", *SETTINGS)


def _value(key: str, value: Any) -> Any:
    if value is None and key in NULLABLE:
        return None
    if key in SETTINGS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key!r} must be a number, got {value!r}")
        try:
            return SETTINGS[key](str(value))
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"{key!r}: {err}") from None
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, got {value!r}")
    return value


def _references(value: Any, root: Path) -> list[tuple[Path, Optional[str]]]:
    if not isinstance(value, list) or not value:
        raise ValueError("'references' must be a non-empty list of \"PATH[:KIND]\" strings or {\"path\", \"kind\"}")
    if len(value) > MAX_REFERENCES:
        raise ValueError(f"got {len(value)} references; e2v generate supports 1 to {MAX_REFERENCES}")
    references = []
    for index, ref in enumerate(value):
        if isinstance(ref, str):
            path, kind = parse_reference(ref)
        elif isinstance(ref, dict) and isinstance(ref.get("path"), str) and set(ref) <= {"path", "kind"}:
            path, kind = ref["path"], ref.get("kind")
        else:
            raise ValueError(f"references[{index}] must be \"PATH[:KIND]\" or {{\"path\", \"kind\"}}, got {ref!r}")
        if kind is not None and (not isinstance(kind, str) or not kind.strip()):
            raise ValueError(f"references[{index}]: 'kind' must be a non-empty string, got {kind!r}")
        references.append((root / path, check_kind(kind, f"references[{index}]") if kind else None))
    return references


def parse_request(obj: Any, root: Path, defaults: dict[str, Any], line: int) -> Request:
    """One request from its decoded JSON object (paths relative to ``root``); ValueError says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"a request must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; a request has {', '.join(KEYS)}")
    missing = [key for key in ("prompt", "references", "out") if key not in obj]
    if missing:
        raise ValueError(f"missing {', '.join(repr(k) for k in missing)}")
    values = {**defaults, **{key: _value(key, value) for key, value in obj.items() if key != "references"}}
    out, compare = (value if value is None or not value.strip() else str(root / value)
                    for value in (values["out"], values.get("compare")))
    return Request(_references(obj["references"], root), values["prompt"], out, compare,
                   values.get("negative_prompt"), values["seed"], values["height"], values["width"],
                   values["frames"], values["steps"], values["guidance"], values.get("image_guidance"),
                   values["fps"], line)


def read_requests(path: str | os.PathLike, defaults: dict[str, Any],
                  check: Callable[[Request], None]) -> list[Request]:
    """Every request of a JSONL file, each passed to ``check`` (which raises BadInput / ValueError for a bad one);
    one BadInput naming every bad line (``FILE line N: ...``) if any, before anything is generated."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"--batch {path} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BadInput(f"--batch {path}: cannot read it as UTF-8 text ({err})") from None
    requests, errors = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"not valid JSON ({err.msg} at column {err.colno})") from None
            request = parse_request(obj, path.parent, defaults, number)
            check(request)
            requests.append(request)
        except (BadInput, ValueError, FileNotFoundError) as err:
            errors.append(f"{path} line {number}: {err}")
    if errors:
        raise BadInput(f"{len(errors)} bad request line(s), nothing generated:\n  " + "\n  ".join(errors))
    if not requests:
        raise BadInput(f"--batch {path} holds no requests")
    return requests
