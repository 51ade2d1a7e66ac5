"""``e2v export CHECKPOINT --out DIR``: a trained ``E2VDiffusion`` checkpoint as a release root for ``--weights``.

The checkpoint is a full one (a ``.ckpt`` file) or a distributed one (the folder ``ModelParallelStrategy`` writes
with ``save_distributed_checkpoint: true``: ``torch.distributed.checkpoint`` shards plus ``meta.pt``). Its DiT
weights, the EMA (when the run had the EMA callback) or the raw ones, become ``DIR/transformer/``: a diffusers-layout
``config.json`` plus safetensors shards with an index, written one shard at a time (tensors are memory-mapped or read
from the distributed shards only for the output shard being written). The frozen components are never in a
checkpoint: ``vae/``, ``text_encoder/``, ``tokenizer/``, ``image_encoder/``, ``image_processor/`` are linked from the
release root the run started from (its family's ``weights``, or ``--base``), so that ``e2v generate --weights DIR``
loads the trained DiT with them. The run's sampling settings (solver, steps, guidance, a student's timesteps, ...)
become ``DIR/sampling.json``, the defaults of ``e2v generate --weights DIR``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from e2v.argtypes import HelpFormatter, BadInput, positive_float
from e2v.atomic import write_json_atomic
from e2v.modules.weights import CheckpointError, LazyTensor, load_checkpoint, write_weights
from e2v.pipeline.sampling import SETTINGS_FILE, read_saved

DIT_PREFIX = "dit."
DCP_PREFIX = "state_dict."  # Lightning's distributed checkpoint: {"state_dict": model state, "optimizer_0": ...}
DCP_EMA_PREFIX = "ema/"  # EMA shards beside the weights in a distributed checkpoint (written by e2v.callbacks.ema)
METADATA_FILE = "meta.pt"  # Lightning's non-tensor state of a distributed checkpoint (hyper-parameters, callbacks)
COMPONENTS = ("vae", "text_encoder", "tokenizer", "image_encoder", "image_processor")


def _strip(tensors: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _ema_or_raw(raw: dict[str, Any], ema: dict[str, Any], which: Optional[str], path: Path):
    """The DiT weights to export (names without ``dit.``) and which they are: ``ema`` (the EMA callback's weights
    over the raw weights it does not track) or ``raw``; ``which`` None: the EMA when the checkpoint has one."""
    if which == "ema" and not ema:
        raise CheckpointError(f"{path} has no EMA weights (the run had no e2v.callbacks.EMA); use --weights raw")
    if which == "raw" or not ema:
        return raw, "raw"
    return {**raw, **ema}, "ema"


def _dcp_tensors(folder: Path) -> dict[str, LazyTensor]:
    """The tensors of a distributed checkpoint's ``state_dict`` (names without ``state_dict.``), each read from the
    shards only when loaded."""
    import torch.distributed.checkpoint as dcp

    reader = dcp.FileSystemReader(str(folder))
    try:
        metadata = reader.read_metadata().state_dict_metadata
    except Exception as err:  # a missing or damaged .metadata file
        raise CheckpointError(f"{folder} is not a readable distributed checkpoint: {err}") from err

    def loader(key: str, size: torch.Size, dtype: torch.dtype):
        def load() -> torch.Tensor:
            tensor = torch.empty(size, dtype=dtype)
            with warnings.catch_warnings():  # "torch.distributed is disabled ... single process": intended here
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp.load({"state_dict": {key[len(DCP_PREFIX):]: tensor}}, storage_reader=reader, no_dist=True)
            return tensor

        return load

    return {
        key[len(DCP_PREFIX):]: LazyTensor(tuple(meta.size), meta.properties.dtype,
                                          loader(key, meta.size, meta.properties.dtype))
        for key, meta in metadata.items()
        if key.startswith(DCP_PREFIX) and hasattr(meta, "size")  # tensors, not pickled objects
    }


def checkpoint_dit(path: str | os.PathLike, which: Optional[str] = None):
    """``(hyper_parameters, {name: tensor or LazyTensor}, "ema" | "raw")`` of an E2VDiffusion checkpoint (a file
    or a distributed checkpoint folder); nothing is read in full (memory-mapped / lazy)."""
    from e2v.pipeline.pipeline import _ema_weights

    path = Path(path)
    if path.is_dir():
        if not (path / METADATA_FILE).is_file():
            raise CheckpointError(f"{path} is a folder without {METADATA_FILE}: not a distributed Lightning checkpoint")
        checkpoint = load_checkpoint(path / METADATA_FILE, mmap=True)
        stored = _dcp_tensors(path)
        raw, ema = _strip(stored, DIT_PREFIX), _strip(stored, DCP_EMA_PREFIX + DIT_PREFIX)
    else:
        checkpoint = load_checkpoint(path, mmap=True)
        raw, ema = _strip(checkpoint.get("state_dict") or {}, DIT_PREFIX), {}
    ema = ema or _ema_weights(checkpoint)
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or "dit" not in hparams or not raw:
        raise CheckpointError(f"{path} is not an E2VDiffusion checkpoint: expected 'hyper_parameters' with a 'dit' "
                              "spec and DiT weights ('dit.*')")
    weights, kind = _ema_or_raw(raw, ema, which, path)
    return hparams, weights, kind


def _release_root(hparams: dict[str, Any], base: Optional[str]) -> Optional[Path]:
    """The release root holding the frozen components: ``base``, else the run's family ``weights``, else None."""
    family = hparams.get("family")
    root = base if base is not None else family.get("weights") if isinstance(family, dict) else None
    if root is None:
        return None
    if not Path(root).is_dir():
        raise BadInput(f"release root {root} (the frozen components) is not a folder here; pass --base ROOT")
    return Path(root)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    which: Optional[str] = None,
    base: Optional[str] = None,
    max_shard_bytes: int = 5 * 1024**3,
    merge_lora: bool = False,
) -> str:
    """Write ``out/transformer/`` from the checkpoint's DiT weights and link the frozen components of the release
    root into ``out`` (see the module docstring). Returns which weights were written (``ema`` / ``raw``).
    A LoRA checkpoint (adapters only) needs ``merge_lora``: its adapters are merged into the base DiT of its spec.

    The weights' names and shapes are checked against the DiT of the checkpoint's spec before anything is written;
    the folder is written under a temporary name and renamed when complete.
    """
    from e2v.tasks.sharding import meta_dit

    out = Path(out)
    hparams, weights, kind = checkpoint_dit(checkpoint, which)
    root = _release_root(hparams, base)
    spec = dict(hparams["dit"])
    if root is not None and spec.get("weights") is not None:
        spec["weights"] = str(root / "transformer")  # the config of the run's DiT, wherever the release now is
    if hparams.get("lora"):
        if not merge_lora:
            raise BadInput(f"{checkpoint} is a LoRA checkpoint (adapters only): pass --merge-lora to merge them into "
                           "the base DiT")
        from e2v.lora import merged_weights

        weights = merged_weights(spec, hparams["lora"], weights, str(checkpoint))
    elif merge_lora:
        raise BadInput(f"--merge-lora: {checkpoint} is not a LoRA checkpoint (its hyper-parameters have no 'lora')")
    try:
        dit, _ = meta_dit(spec)
    except (CheckpointError, TypeError, ValueError, KeyError) as err:  # a tampered spec: wrong option names or types
        raise BadInput(f"{checkpoint}: cannot rebuild the checkpoint's DiT from its spec {hparams['dit']!r}: "
                       f"{type(err).__name__}: {err}; pass --base ROOT") from None
    expected = {k: tuple(v.shape) for k, v in dit.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = [f"{k}: {tuple(weights[k].shape)} vs {expected[k]}" for k in sorted(set(expected) & set(weights))
             if tuple(weights[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{checkpoint}: DiT weights do not match the DiT of its spec {hparams['dit']}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
    target = out / "transformer"
    if target.exists():
        raise BadInput(f"{target} already exists; choose another --out or remove it")
    partial = out / ".transformer.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        write_weights(weights, dit.config.to_dict(), partial, max_shard_bytes=max_shard_bytes)
    except BaseException:  # a full disk or a kill: leave no half-written folder behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial, target)
    sampling = read_saved(checkpoint)
    if sampling is not None:  # the run's sampling settings travel with the weights (generate's defaults)
        write_json_atomic(out / SETTINGS_FILE, sampling, indent=1)
    if root is not None:
        for name in COMPONENTS:
            if (root / name).is_dir() and not (out / name).exists():
                (out / name).symlink_to((root / name).resolve(), target_is_directory=True)
    return kind


def export_command(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``e2v export``; returns the exit code (2 for bad input or an unreadable checkpoint)."""
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="e2v export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint",
                        help="an E2VDiffusion checkpoint: a .ckpt file or a distributed checkpoint folder")
    parser.add_argument("--out", required=True, help="release root to write (transformer/ + linked components)")
    parser.add_argument("--weights", choices=("ema", "raw"), default=None,
                        help="the EMA or the raw DiT weights (default: the EMA when the checkpoint has one)")
    parser.add_argument("--base", default=None,
                        help="release root with the frozen components (default: the run's family weights)")
    parser.add_argument("--max-shard-gb", type=positive_float, default=5.0, help="safetensors shard size (GB)")
    parser.add_argument("--merge-lora", action="store_true",
                        help="a LoRA checkpoint: merge its adapters into the base DiT (from --base or the run's)")
    args = parser.parse_args(argv)
    if not Path(args.checkpoint).exists():
        print(f"e2v export: error: checkpoint {args.checkpoint} does not exist", file=sys.stderr)
        return 2
    try:
        kind = export_checkpoint(args.checkpoint, args.out, args.weights, args.base,
                                 max_shard_bytes=int(args.max_shard_gb * 1024**3), merge_lora=args.merge_lora)
    except (BadInput, CheckpointError) as err:
        print(f"e2v export: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. a full disk while writing the shards (nothing is left in --out)
        print(f"e2v export: error: writing {Path(args.out) / 'transformer'} failed: {err}", file=sys.stderr)
        return 1
    linked = all((Path(args.out) / name).exists() for name in ("vae", "text_encoder", "tokenizer"))
    print(f"wrote {Path(args.out) / 'transformer'} ({kind} weights)"
          + ("" if linked else "; no release root for the frozen components: add vae/, text_encoder/, tokenizer/ "
                               "(and image_encoder/, image_processor/) or rerun with --base before --weights"))
    return 0
