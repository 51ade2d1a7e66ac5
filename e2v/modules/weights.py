"""Read and write diffusers-layout weight folders (``config.json`` + safetensors, optionally sharded).

The official SkyReels-A2 / Wan2.1 releases keep each component in such a folder (``transformer/``, ``vae/``).
Loading streams tensor by tensor into an already-built module, so peak host memory stays near the module itself
plus one tensor; a module sharded by FSDP2 (DTensor parameters) reads only its rank's slice of each tensor. Writing
streams too: :func:`write_weights` materialises one output shard at a time. Nothing is unpickled (pickle
checkpoints are refused).
"""

from __future__ import annotations

import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from e2v.atomic import write_json_atomic

CONFIG_NAME = "config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class CheckpointError(ValueError):
    """A weights folder that cannot be loaded; the message names the file and what was expected."""


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a component folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"weights folder {folder} does not exist or is not a directory")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_NAME}; expected a diffusers-layout component folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def load_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """A Lightning / torch checkpoint as a dict, read with ``weights_only=True`` (nothing arbitrary is unpickled);
    with ``mmap`` its tensors are memory-mapped from the file and read only when used.

    Raises :class:`CheckpointError` naming the file when it is missing, empty, truncated, not a checkpoint or not
    a dict. Pickles that need arbitrary code are refused: e2v never falls back to ``weights_only=False``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # unpickling raises many types for damaged files; torch's text suggests unsafe loading
        detail = "" if isinstance(err, pickle.UnpicklingError) else f": {str(err).splitlines()[0] if str(err) else ''}"
        raise CheckpointError(
            f"checkpoint {path} cannot be read as a PyTorch checkpoint with tensors only (truncated, damaged, "
            f"another format, or pickled objects beyond tensors) ({type(err).__name__}{detail})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}, expected a dict")
    return checkpoint


def shard_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files holding a folder's weights: from ``*.safetensors.index.json`` or a single file."""
    folder = Path(folder)
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{indexes[0]} is not a safetensors index (needs a 'weight_map'): {err}") from err
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{indexes[0]} lists shard(s) missing from {folder}: {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}); e2v loads safetensors only, since "
            "unpickling can run arbitrary code. Convert the file to safetensors first."
        )
    raise CheckpointError(f"{folder} has no *.safetensors weights (nor a *.safetensors.index.json)")


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err


def tensor_files(folder: str | os.PathLike) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """``key -> (safetensors file, shape)`` for every tensor of a weights folder (headers only are read)."""
    located: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for path in shard_files(folder):
        with _open(path) as shard:
            located.update((key, (path, tuple(shard.get_slice(key).get_shape()))) for key in shard.keys())
    return located


def _local_slice(target: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...] | None]:
    """The rank-local storage of ``target`` and the index of the full tensor it holds (None: all of it)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(target, DTensor):
        return target, None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(target.shape, target.device_mesh, target.placements)
    return target.to_local(), tuple(slice(o, o + n) for o, n in zip(offset, shape))


@torch.no_grad()
def load_weights(
    module: torch.nn.Module, folder: str | os.PathLike, ignore_unexpected: tuple[str, ...] = ()
) -> None:
    """Copy every tensor of a weights folder into ``module``'s parameters and persistent buffers.

    Streams one tensor at a time (each file is opened per tensor, so nothing of a file stays mapped); casts to each
    parameter's dtype. A DTensor parameter (FSDP2 shard) receives only its rank's slice, read from the file alone.
    Raises :class:`CheckpointError` naming missing keys, unexpected keys and shape mismatches together (before any
    tensor is copied). Checkpoint keys containing one of the ``ignore_unexpected`` substrings are skipped when the
    module has no such key (known-unused official tensors).
    """
    targets = dict(module.state_dict(keep_vars=True))
    located = tensor_files(folder)
    unexpected = sorted(k for k in located if k not in targets and not any(p in k for p in ignore_unexpected))
    mismatched = [
        f"{key}: checkpoint {shape} vs model {tuple(targets[key].shape)}"
        for key, (_, shape) in located.items()
        if key in targets and shape != tuple(targets[key].shape)
    ]
    missing = sorted(set(targets) - set(located))
    if missing or unexpected or mismatched:
        lines = [f"weights in {folder} do not match {type(module).__name__}:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
                lines.append(f"  {label} keys: {shown}")
        raise CheckpointError("\n".join(lines))
    for key, target in targets.items():
        local, index = _local_slice(target)
        if local.numel() == 0:
            continue
        with _open(located[key][0]) as shard:
            local.copy_(shard.get_tensor(key) if index is None else shard.get_slice(key)[index])


@dataclass(frozen=True)
class LazyTensor:
    """A tensor of ``shape`` and ``dtype`` that :func:`write_weights` reads (``load()``) only when its shard is
    written."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    load: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def write_weights(
    tensors: Mapping[str, torch.Tensor | LazyTensor],
    config: dict[str, Any],
    folder: str | os.PathLike,
    max_shard_bytes: int = 5 * 1024**3,
    prefix: str = "diffusion_pytorch_model",
) -> None:
    """Write ``config.json`` and ``tensors`` as safetensors (sharded with an index past ``max_shard_bytes``).

    Shards are planned from the sizes, then written one at a time: only one shard's tensors are in memory (lazy
    tensors are loaded for their shard and dropped). Every file is written to a temporary name and renamed, so a
    crash never leaves a half-written shard; ``config.json`` comes last.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {k: v.nbytes if isinstance(v, LazyTensor) else v.numel() * v.element_size() for k, v in tensors.items()}
    plan: list[list[str]] = [[]]
    size = 0
    for key, nbytes in sizes.items():
        if plan[-1] and size + nbytes > max_shard_bytes:
            plan.append([])
            size = 0
        plan[-1].append(key)
        size += nbytes
    names = (
        [f"{prefix}.safetensors"]
        if len(plan) == 1
        else [f"{prefix}-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    )
    for name, keys in zip(names, plan):
        shard = {}
        for key in keys:
            value = tensors[key].load() if isinstance(tensors[key], LazyTensor) else tensors[key]
            shard[key] = value.detach().contiguous().cpu()
        tmp = folder / f".{name}.tmp"
        save_file(shard, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, folder / name)
        del shard
    if len(plan) > 1:
        weight_map = {key: name for name, keys in zip(names, plan) for key in keys}
        write_json_atomic(
            folder / f"{prefix}.safetensors.index.json",
            {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}, indent=2, sort_keys=True,
        )
    write_json_atomic(folder / CONFIG_NAME, config, indent=2, sort_keys=True)


def save_weights(
    module: torch.nn.Module,
    config: dict[str, Any],
    folder: str | os.PathLike,
    max_shard_bytes: int = 5 * 1024**3,
    prefix: str = "diffusion_pytorch_model",
) -> None:
    """Write ``config.json`` and the module's state with :func:`write_weights`."""
    write_weights(module.state_dict(), config, folder, max_shard_bytes=max_shard_bytes, prefix=prefix)


DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """A torch dtype from a recipe or command-line value (``"bf16"``, ``"fp32"``, ``"bfloat16"``,
    ``"torch.float16"``, a dtype, or None)."""
    if value is None or isinstance(value, torch.dtype):
        return value
    name = str(value).strip().lower().removeprefix("torch.")
    dtype = getattr(torch, DTYPE_ALIASES.get(name, name), None) if name else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(
            f"unknown dtype {value!r}; expected {', '.join(DTYPE_ALIASES)} or a torch dtype name such as 'float32'"
        )
    return dtype
