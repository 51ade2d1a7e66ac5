"""Checks of a parsed ``e2v fit`` recipe that need no model: bad numbers, missing manifests, unwritable cache folders.

LightningCLI instantiates the model (encoders, minutes for a large one) before the data module and optimizer see
their settings; these run first, so a recipe with ``max_steps: -5`` or a missing ``val_manifest`` fails in a
second with one line per problem, naming the key (``e2v fit`` exits 2).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

from e2v.frames import RULE, is_frame_count


def _get(config: Any, key: str) -> Any:
    try:
        return config.get(key, None)
    except (KeyError, AttributeError, TypeError):
        return None


def _writable_folder(path: Path) -> bool:
    """Whether ``path`` (a folder, made if missing) can be written: a file can be made in it, or in its nearest
    existing ancestor (tried, not inferred from permissions: root passes those on a read-only file system)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        with tempfile.TemporaryFile(dir=path):
            return True
    except OSError:
        return False


def recipe_problems(config: Any) -> list[str]:
    """Problems of a parsed recipe (a jsonargparse namespace of one LightningCLI subcommand), one message each."""
    problems = []
    max_steps = _get(config, "trainer.max_steps")
    if isinstance(max_steps, int) and max_steps < -1:
        problems.append(f"trainer.max_steps must be -1 (no limit) or >= 0, got {max_steps}")
    data = "data.init_args"
    for key in ("batch_size", "cache_batch_size"):
        value = _get(config, f"{data}.{key}")
        if isinstance(value, int) and value < 1:
            problems.append(f"{data}.{key} must be >= 1, got {value}")
    frames = _get(config, f"{data}.frames")
    if isinstance(frames, int) and not is_frame_count(frames):
        problems.append(f"{data}.frames must be {RULE}, got {frames}")
    for key in ("train_manifest", "val_manifest"):
        value = _get(config, f"{data}.{key}")
        if isinstance(value, (str, os.PathLike)) and not Path(value).is_file():
            problems.append(f"{data}.{key}: {value} does not exist or is not a file")
    for key in ("teacher", "student"):  # the distillation tasks' checkpoints (E2VDiffusion runs)
        value = _get(config, f"model.init_args.{key}")
        if isinstance(value, (str, os.PathLike)) and not Path(value).is_file():
            problems.append(f"model.init_args.{key}: {value} does not exist or is not a file (an E2VDiffusion "
                            "checkpoint: the tiny recipes distill the main job's, bash recipes/tiny/run.sh)")
    cache = _get(config, f"{data}.cache_dir")
    if isinstance(cache, (str, os.PathLike)) and not (Path(cache) / "index.json").is_file() \
            and not _writable_folder(Path(cache)):
        problems.append(f"{data}.cache_dir: {cache} holds no cache yet and cannot be written (read-only?); build "
                        f"it elsewhere with e2v cache, or give a writable folder")
    lr = _get(config, "model.init_args.optimizer.init_args.lr")
    if isinstance(lr, (int, float)) and not (math.isfinite(lr) and lr > 0):
        problems.append(f"model.init_args.optimizer.init_args.lr must be a finite number > 0, got {lr}")
    return problems
