"""One run folder per fit: ``trainer.default_root_dir`` is where a run writes, and a folder holding another run is
refused unless the fit resumes it.

Layout of a run folder ``ROOT`` (recipe ``default_root_dir: runs/tiny/e2v``)::

    ROOT/checkpoints/            every ModelCheckpoint without its own ``dirpath`` (last.ckpt, step=...ckpt)
    ROOT/run.json                the run's owner: MLflow run id, name and start time (written when the run starts)
    ROOT/<experiment>/<run id>/  the logger's run folder (config.yaml, samples/), with E2VMLFlowLogger

``--trainer.default_root_dir DIR`` moves all of it. A fit into a folder whose checkpoints exist stops before any
model is built, unless ``--ckpt_path`` resumes (``--ckpt_path last``: the folder's last checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
CHECKPOINT_CLASSES = ("lightning.pytorch.callbacks.ModelCheckpoint", "pytorch_lightning.callbacks.ModelCheckpoint",
                      "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint")
RUN_LOGGERS = ("e2v.loggers.E2VMLFlowLogger",)


class RunFolderInUse(RuntimeError):
    """The run folder already holds another run's checkpoints and the fit does not resume it."""


def _entries(value: Any) -> list[Any]:
    """A callbacks/logger config value as a list of ``{class_path, init_args}`` namespaces (None -> [])."""
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _init_args(entry: Any) -> Any | None:
    """The ``init_args`` of a class entry, or None for an already built object or a bare class path."""
    return entry.get("init_args") if hasattr(entry, "get") else None


def checkpoint_dirs(trainer_cfg: Any) -> list[Path]:
    """The folders the config's ModelCheckpoint callbacks write to (after :func:`apply_run_folder`)."""
    return [Path(_init_args(entry)["dirpath"]) for entry in _entries(trainer_cfg.get("callbacks"))
            if getattr(entry, "get", None) and entry.get("class_path") in CHECKPOINT_CLASSES
            and _init_args(entry) is not None and _init_args(entry).get("dirpath")]


def apply_run_folder(trainer_cfg: Any) -> None:
    """Point every ModelCheckpoint without a ``dirpath`` at ``ROOT/checkpoints`` and every E2VMLFlowLogger without a
    ``save_dir`` at ``ROOT`` (``ROOT`` = ``trainer.default_root_dir``; nothing changes when it is unset)."""
    root = trainer_cfg.get("default_root_dir")
    if not root:
        return
    for entry in _entries(trainer_cfg.get("callbacks")):
        args = _init_args(entry)
        if args is not None and entry.get("class_path") in CHECKPOINT_CLASSES and not args.get("dirpath"):
            args["dirpath"] = str(Path(root) / "checkpoints")
    for entry in _entries(trainer_cfg.get("logger")):
        args = _init_args(entry)
        if args is not None and entry.get("class_path") in RUN_LOGGERS and not args.get("save_dir"):
            args["save_dir"] = str(root)


def existing_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in ``folder``: ``*.ckpt`` files and distributed-checkpoint folders, sorted."""
    return sorted(folder.glob("*.ckpt")) if folder.is_dir() else []


def check_run_folder(trainer_cfg: Any, ckpt_path: str | None) -> None:
    """Refuse (:class:`RunFolderInUse`) a fresh fit whose checkpoint folders already hold checkpoints: Lightning would
    write ``last-v1.ckpt`` beside the old ``last.ckpt``, and every later reader would take the old run's weights."""
    if ckpt_path is not None:
        return
    for folder in checkpoint_dirs(trainer_cfg):
        found = existing_checkpoints(folder)
        if found:
            root = trainer_cfg.get("default_root_dir") or folder
            raise RunFolderInUse(
                f"{folder} already holds another run's checkpoints ({', '.join(p.name for p in found[:3])}"
                f"{', ...' if len(found) > 3 else ''}). Resume that run with --ckpt_path last, start a new one "
                f"elsewhere with --trainer.default_root_dir NEW_FOLDER, or delete {root} to start over."
            )


def read_run(root: str | Path) -> dict[str, Any]:
    """The ``run.json`` of a run folder, or {} when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(root) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def resume_logger(trainer_cfg: Any, ckpt_path: str | None) -> None:
    """On a resumed fit, give each E2VMLFlowLogger without a ``run_id`` the MLflow run recorded in the run folder's
    ``run.json``, so the resumed fit continues its MLflow run."""
    root = trainer_cfg.get("default_root_dir")
    if ckpt_path is None or not root:
        return
    run_id = read_run(root).get("mlflow_run_id")
    for entry in _entries(trainer_cfg.get("logger")):
        args = _init_args(entry)
        if run_id and args is not None and entry.get("class_path") in RUN_LOGGERS and not args.get("run_id"):
            args["run_id"] = run_id
