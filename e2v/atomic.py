"""Atomic file writes: write a temp file in the target's folder, then ``os.replace`` it over the target.

A crash never leaves a partial target; the temp file is removed on failure. Targets get the usual mode of a new
file (``0666`` less the umask), not ``mkstemp``'s private ``0600``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A fresh temp path next to ``path`` (ending in ``.tmp`` + ``suffix``) to write; moved onto ``path`` when
    the block succeeds, removed when it fails. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX + suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, payload: Any, **dump_options: Any) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (``dump_options`` go to ``json.dumps``)."""
    write_text_atomic(path, json.dumps(payload, **dump_options))


def remove_orphan_temps(folder: str | os.PathLike, name: str) -> list[Path]:
    """Delete temp files that a killed :func:`atomic_path` write of ``folder/name`` left behind; returns them."""
    orphans = sorted(Path(folder).glob(f".{name}.*{TEMP_SUFFIX}*"))
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    return orphans
