"""Latent cache: precomputed training inputs, so a run skips video decoding and the frozen encoders.

For each manifest record the cache stores (written by :func:`build_cache`, ``e2v cache``):
``latents [16,T,h,w]`` normalised x0 latents of ``layout.target_video``, ``condition`` (``layout.condition``),
``text [n,text_dim]`` (the prompt's states, trailing zero padding trimmed; padded back on load) and
``image [N*tok,image_dim]`` (when the layout uses image tokens).

Layout on disk: ``shard_00000.safetensors`` ... (``records_per_shard`` manifest records each, tensors named
``{slot}/latents`` etc., the shard's records and skipped records in its metadata) plus ``index.json`` listing
completed shards, skipped records and the cache key. Every file is written to a temp name and renamed, and rank 0
rewrites the index after each of its shards, so a killed run resumes where it stopped and never exposes a
half-written shard. Several ranks split the shards (:func:`build_cache`); records are encoded in batches. The key hashes the identities of the VAE,
encoders and layout (class, config, a weight fingerprint) and the data settings; a cache whose key differs from
the components at hand is refused with :class:`StaleCacheError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm import tqdm

from e2v.atomic import remove_orphan_temps, write_json_atomic
from e2v.datamodules.manifest import DEFAULT_MIN_REFERENCES, RecordError, check_references, check_video, read_manifest
from e2v.datamodules.samples import (
    SampleKey,
    Skipped,
    TripletDataset,
    assign_bucket,
    check_buckets,
    check_reference_counts,
)

INDEX_NAME = "index.json"
CACHE_VERSION = 1
_FINGERPRINT_SAMPLES = 65536  # elements hashed per tensor (evenly strided), plus the exact float64 sum


class CacheError(RuntimeError):
    """A cache folder that cannot be used as it is; the message names the file."""


class StaleCacheError(CacheError):
    """The cache was written with other components or data settings than the ones in use; the message ends with
    what to do (:data:`STALE_CACHE_HELP`)."""


STALE_CACHE_HELP = (" To train with the current ones, point cache_dir at a new folder (e2v fit: "
                    "--data.init_args.cache_dir NEW_DIR), or rebuild this one: delete it (the next fit rebuilds it) "
                    "or run `e2v cache MANIFEST --out DIR --rebuild ...` with the current components.")


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheError(f"{path} is damaged ({err}); delete it (or the whole cache folder) to rebuild") from err
    if not isinstance(index, dict) or not isinstance(index.get("shards"), dict):
        raise CacheError(f"{path} is not a latent cache index; delete it (or the whole cache folder) to rebuild")
    return index


def _plain_config(obj: Any) -> Any:
    """A JSON-able description of a component's configuration (config object, dataclass or simple attributes)."""
    config = getattr(obj, "config", None)
    if config is None and hasattr(obj, "model"):
        config = getattr(obj.model, "config", None)
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if not k.startswith("_") and k != "transformers_version"}
    simple = {
        k: v
        for k, v in vars(obj).items()
        if not k.startswith("_") and k != "training" and isinstance(v, (int, float, str, bool, type(None)))
    }
    return json.loads(json.dumps({"config": config, "attributes": simple}, sort_keys=True, default=str))


@torch.no_grad()
def weight_fingerprint(module: Any) -> str | None:
    """A digest of a module's state dict: names, shapes, dtypes, exact sums and a strided sample of values."""
    if not isinstance(module, torch.nn.Module):
        return None
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
        sample = flat[::stride].to("cpu", torch.float32).contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|{flat.double().sum().item():.10e}|".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def component_identity(component: Any) -> dict[str, Any] | None:
    """What identifies a component for the cache: its class, configuration and weight fingerprint."""
    if component is None:
        return None
    cls = type(component)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "config": _plain_config(component),
        "weights": weight_fingerprint(component),
    }


def cache_identity(vae, text_encoder, image_encoder, layout, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "vae": component_identity(vae),
        "text_encoder": component_identity(text_encoder),
        "image_encoder": component_identity(image_encoder),
        "layout": component_identity(layout),
        "settings": settings,
    }


def identity_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def trim_text(text: torch.Tensor) -> torch.Tensor:
    """``[L, D]`` zero-padded text states -> the rows up to the last non-zero one (at least one row)."""
    nonzero = torch.nonzero(text.abs().amax(-1) > 0)
    length = int(nonzero[-1]) + 1 if len(nonzero) else 1
    return text[:length]


@torch.no_grad()
def encode_samples(samples: list[dict[str, Any]], vae, text_encoder, image_encoder, layout, device="cpu") -> list[dict]:
    """Online samples of one shape (unbatched, from :class:`TripletDataset`: same bucket and reference count) ->
    their cached tensors (unbatched, on CPU), encoded as one batch on ``device``.

    Exactly what the online training step computes: ``x0 = normalize(encode(target_video))``, the layout's
    condition, text states and image tokens.
    """
    video = torch.stack([sample["video"] for sample in samples]).to(device)
    refs = torch.stack([sample["refs"] for sample in samples]).to(device)
    x0 = vae.normalize(vae.encode(layout.target_video(video, refs)))
    out = {
        "latents": x0,
        "condition": layout.condition(vae, refs, video.shape[2]),
        "text": text_encoder([sample["caption"] for sample in samples]),
    }
    if image_encoder is not None and layout.uses_image_tokens:
        refs_clip = torch.stack([sample["refs_clip"] for sample in samples]).to(device)
        out["image"] = image_encoder(layout.image_inputs(refs, refs_clip))
    out = {name: tensor.cpu() for name, tensor in out.items()}
    return [{name: trim_text(tensor[i]) if name == "text" else tensor[i] for name, tensor in out.items()}
            for i in range(len(samples))]


def encode_sample(sample: dict[str, Any], vae, text_encoder, image_encoder, layout, device="cpu") -> dict:
    """:func:`encode_samples` of one sample."""
    return encode_samples([sample], vae, text_encoder, image_encoder, layout, device)[0]


def _shard_name(shard: int) -> str:
    return f"shard_{shard:05d}.safetensors"


def build_cache(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    vae,
    text_encoder,
    image_encoder,
    layout,
    buckets: list[list[int]],
    fps: float | None = None,
    image_size: int = 224,
    max_references: int = 3,
    min_references: int = DEFAULT_MIN_REFERENCES,
    records_per_shard: int = 64,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    on_shard: Callable[[int, int], None] | None = None,
    batch_size: int = 8,
    rank: int = 0,
    world_size: int = 1,
    poll_seconds: float = 2.0,
) -> "LatentCache | None":
    """Encode every usable record of ``manifest`` into ``out_dir``; resumes a run that stopped part-way.

    Record i goes to shard ``i // records_per_shard`` (by manifest order of the parsed records), so a rerun
    rebuilds exactly the missing shards. Within a shard, records of the same bucket and reference count are encoded
    ``batch_size`` at a time on ``device``. Records that fail (bad files, too short, too many references for the
    layout) are listed in the index under ``skipped``. ``on_shard(done, total)`` is called after each shard.

    Split across ranks: rank ``r`` of ``world_size`` encodes the missing ones of shards ``r, r + world_size, ...``;
    each shard file carries its records in its metadata. Rank 0 writes ``index.json`` (after each of its shards, and once the
    other ranks' shard files are all there, found by polling the folder: no collective, so no barrier timeout), then
    returns the :class:`LatentCache`; the other ranks return None after their own shards.
    Raises StaleCacheError when ``out_dir`` holds a cache of other components, settings or manifest.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buckets = check_buckets(buckets)
    check_reference_counts(min_references, max_references)
    if batch_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"build_cache: batch_size must be >= 1 and 0 <= rank < world_size, got {batch_size}, "
                         f"{rank}, {world_size}")
    settings = {
        "buckets": [list(b) for b in buckets],
        "fps": fps,
        "image_size": image_size,
        "max_references": max_references,
        "min_references": min_references,
        "dtype": str(dtype).removeprefix("torch."),
    }
    identity = cache_identity(vae, text_encoder, image_encoder, layout, settings)
    report = read_manifest(manifest)
    records = report.good
    num_shards = (len(records) + records_per_shard - 1) // records_per_shard
    index = {
        "version": CACHE_VERSION,
        "key": identity_key(identity),
        "identity": identity,
        "manifest": str(Path(manifest).resolve()),
        "manifest_sha256": _file_sha256(Path(manifest)),
        "records_per_shard": records_per_shard,
        "num_shards": num_shards,
        "text_length": getattr(text_encoder, "max_length", None),
        "manifest_errors": [{"where": b.where, "id": b.id, "reason": b.reason, "message": b.message} for b in report.bad],
        "shards": {},
    }
    index_path = out_dir / INDEX_NAME
    if rank == 0:
        remove_orphan_temps(out_dir, INDEX_NAME)  # left by a run killed while writing the index
    if index_path.is_file():
        previous = _read_index(index_path)
        for field in ("key", "manifest_sha256", "records_per_shard"):
            if previous.get(field) != index[field]:
                raise StaleCacheError(
                    f"{out_dir} holds a cache with another {field} ({previous.get(field)} vs {index[field]}): "
                    "it was written with other components, settings or manifest." + STALE_CACHE_HELP
                )
        index["shards"] = {k: v for k, v in previous["shards"].items() if (out_dir / v["file"]).is_file()}
    for stale in out_dir.glob(f".shard_*.{rank}.tmp" if rank else ".shard_*.tmp"):
        if rank or not stale.name.endswith(tuple(f".{r}.tmp" for r in range(1, world_size))):
            stale.unlink()  # a shard cut off mid-write by a killed run (another rank's are its own business)
    _collect_shards(out_dir, index, range(num_shards))
    dataset = TripletDataset(records, buckets, fps, image_size, max_references, shuffle_references=False)
    # shard s is rank s % world_size's, whatever the others have done by now (no two ranks see a different split)
    todo = [shard for shard in range(rank, num_shards, world_size) if str(shard) not in index["shards"]]
    progress = tqdm(total=sum(min(len(records), (s + 1) * records_per_shard) - s * records_per_shard for s in todo),
                    desc=f"caching {Path(manifest).name}", unit="clip", disable=not todo or rank != 0)
    encoder = (vae, text_encoder, image_encoder, layout)
    for shard in todo:
        slots = range(shard * records_per_shard, min(len(records), (shard + 1) * records_per_shard))
        tensors, entries, skipped = _encode_shard(dataset, records, slots, encoder, buckets, fps, max_references,
                                                  min_references, batch_size, device, progress)
        file = _shard_name(shard)
        tmp = out_dir / f".{file}.{rank}.tmp"
        tensors = {name: tensor.to(dtype).contiguous() for name, tensor in tensors.items()}
        save_file(tensors, str(tmp), metadata={"format": "pt", "key": index["key"],
                                               "records": json.dumps({"records": entries, "skipped": skipped})})
        os.replace(tmp, out_dir / file)
        index["shards"][str(shard)] = {"file": file, "records": entries, "skipped": skipped}
        if rank == 0:
            _collect_shards(out_dir, index, range(num_shards))
            write_json_atomic(index_path, index, indent=1, sort_keys=True)
        if on_shard is not None:
            on_shard(len(index["shards"]), num_shards)
    progress.close()
    if rank != 0:
        return None
    wait_for(lambda: len(_collect_shards(out_dir, index, range(num_shards))) == num_shards,
             lambda: f"shards {sorted(set(map(str, range(num_shards))) - index['shards'].keys(), key=int)} of {out_dir}",
             poll_seconds)
    if not index_path.is_file() or _read_index(index_path) != json.loads(json.dumps(index)):
        write_json_atomic(index_path, index, indent=1, sort_keys=True)  # a complete cache stays untouched (read-only)
    return LatentCache(out_dir)


def wait_for(done: Callable[[], bool], what: Callable[[], str], poll_seconds: float = 2.0,
             stall_seconds: float = 3600.0) -> None:
    """Poll ``done()`` every ``poll_seconds`` (the cache ranks share a folder, not a collective: no barrier timeout);
    CacheError naming ``what()`` after ``stall_seconds`` without it."""
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > stall_seconds:
            raise CacheError(f"gave up after {stall_seconds:.0f} s waiting for {what()} (did another rank fail?)")
        time.sleep(poll_seconds)


def wait_for_cache(cache_dir: str | os.PathLike, poll_seconds: float = 2.0, stall_seconds: float = 3600.0) -> "LatentCache":
    """The cache in ``cache_dir`` once rank 0 has written its complete index (see :func:`build_cache`)."""
    def complete() -> bool:
        path = Path(cache_dir) / INDEX_NAME
        if not path.is_file():
            return False
        index = _read_index(path)
        return len(index["shards"]) == index["num_shards"]

    wait_for(complete, lambda: f"the complete index of {cache_dir}", poll_seconds, stall_seconds)
    return LatentCache(cache_dir)


def _collect_shards(out_dir: Path, index: dict[str, Any], shards: range) -> dict[str, Any]:
    """Add to ``index["shards"]`` the completed shard files of this cache found in ``out_dir`` (their records are
    in their metadata); a shard file of another cache key raises StaleCacheError. Returns ``index["shards"]``."""
    done = index["shards"]
    for shard in shards:
        file = _shard_name(shard)
        if str(shard) in done or not (out_dir / file).is_file():
            continue
        with safe_open(str(out_dir / file), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("key") != index["key"]:
            raise StaleCacheError(f"{out_dir / file} was written for another cache key ({metadata.get('key')} vs "
                                  f"{index['key']}): use a new directory or delete the folder")
        if "records" not in metadata:
            continue  # written before shard files carried their records: re-encoded
        done[str(shard)] = {"file": file, **json.loads(metadata["records"])}
    return done


def _encode_shard(dataset: TripletDataset, records: list, slots: range, encoder: tuple, buckets: list, fps,
                  max_references: int, min_references: int, batch_size: int, device, progress: tqdm):
    """The tensors (``{slot}/{name}``), entries and skipped records of one shard; records of the same bucket and
    reference count go through :func:`encode_samples` ``batch_size`` at a time."""
    vae, text_encoder, image_encoder, layout = encoder
    shortest = min(f for f, _, _ in buckets)
    groups: dict[tuple[int, int], list[tuple[int, dict]]] = {}  # (bucket, refs) -> (slot, sample)
    entries, skipped, tensors = {}, [], {}

    def flush(group: list[tuple[int, dict]]) -> None:
        encoded = encode_samples([sample for _, sample in group], vae, text_encoder, image_encoder, layout, device)
        for (slot, _), out in zip(group, encoded):
            tensors.update({f"{slot}/{name}": tensor for name, tensor in out.items()})
        group.clear()

    for slot, i in enumerate(slots):
        record = records[i]
        progress.update()
        try:
            check_references(record, decode=False, min_references=min_references)
            bucket = assign_bucket(check_video(record, shortest, fps, decode=False), record, buckets, fps)
            num_refs = min(len(record.references), max_references)
            layout.check(num_refs, buckets[bucket][0])
            sample = dataset.load(SampleKey(i, bucket, num_refs, 0, 0, 0))
        except (RecordError, ValueError) as err:
            reason = err.reason if isinstance(err, RecordError) else "layout"
            skipped.append({"id": record.id, "reason": reason, "message": str(err)})
            continue
        entries[slot] = {"id": record.id, "slot": slot, "bucket": list(buckets[bucket]), "num_refs": num_refs,
                         "caption": record.caption}
        group = groups.setdefault((bucket, num_refs), [])
        group.append((slot, sample))
        if len(group) == batch_size:
            flush(group)
    for group in groups.values():
        if group:
            flush(group)
    return tensors, [entries[slot] for slot in sorted(entries)], skipped


class LatentCache:
    """A completed cache folder: its index, records and key check."""

    def __init__(self, cache_dir: str | os.PathLike):
        self.dir = Path(cache_dir)
        path = self.dir / INDEX_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{self.dir} is not a latent cache (no {INDEX_NAME}); build one with `e2v cache`")
        self.index = _read_index(path)
        if self.index.get("version") != CACHE_VERSION:
            raise StaleCacheError(f"{path}: cache format version {self.index.get('version')}, expected {CACHE_VERSION}")
        done, total = len(self.index["shards"]), self.index["num_shards"]
        if done < total:
            raise RuntimeError(f"{self.dir}: the cache is incomplete ({done} of {total} shards); rerun `e2v cache`")
        missing = sorted(s["file"] for s in self.index["shards"].values() if not (self.dir / s["file"]).is_file())
        if missing:
            raise CacheError(f"{self.dir}: shard file(s) missing: {', '.join(missing)}; rerun `e2v cache` (or fit "
                             "with build_cache) to rebuild them")
        self.records = [
            {**entry, "file": shard["file"]}
            for _, shard in sorted(self.index["shards"].items(), key=lambda item: int(item[0]))
            for entry in shard["records"]
        ]
        self.skipped = [s for shard in self.index["shards"].values() for s in shard["skipped"]]
        self.skipped += self.index["manifest_errors"]

    @property
    def settings(self) -> dict[str, Any]:
        return self.index["identity"]["settings"]

    def check_components(self, vae, text_encoder, image_encoder, layout) -> None:
        """Raise StaleCacheError naming each component that differs from the ones the cache was written with."""
        current = cache_identity(vae, text_encoder, image_encoder, layout, self.settings)
        if identity_key(current) == self.index["key"]:
            return
        stored = self.index["identity"]
        changed = [name for name in current if current[name] != stored.get(name)]
        raise StaleCacheError(
            f"stale cache {self.dir}: written with other {', '.join(changed)} than the current ones "
            f"(key {self.index['key']} vs {identity_key(current)})." + STALE_CACHE_HELP
        )

    def check_settings(self, **settings: Any) -> None:
        """Raise StaleCacheError when data settings (buckets, fps, ...) differ from the cache's."""
        wrong = {k: (self.settings.get(k), v) for k, v in settings.items() if self.settings.get(k) != v}
        if wrong:
            details = ", ".join(f"{k}: cache {old!r} vs now {new!r}" for k, (old, new) in wrong.items())
            raise StaleCacheError(f"stale cache {self.dir}: written with other data settings ({details})."
                                  + STALE_CACHE_HELP)


class CachedTripletDataset(Dataset):
    """Cached samples: ``latents``, ``condition``, ``text [L,D]`` (zero-padded back), ``image``, ``caption``, ``id``."""

    def __init__(self, cache: LatentCache):
        self.cache = cache
        self.text_length = cache.index["text_length"]
        self._handles: dict[str, Any] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.cache.records)

    def bucket_keys(self) -> list[tuple]:
        return [tuple(r["bucket"]) for r in self.cache.records]

    def ref_counts(self) -> list[int]:
        return [r["num_refs"] for r in self.cache.records]

    def _shard(self, file: str):
        if self._pid != os.getpid():  # memory-mapped handles are opened per worker process
            self._handles, self._pid = {}, os.getpid()
        if file not in self._handles:
            self._handles[file] = safe_open(str(self.cache.dir / file), framework="pt", device="cpu")
        return self._handles[file]

    def __getitem__(self, key: SampleKey | int) -> dict[str, Any] | Skipped:
        """A cached sample, or :class:`Skipped` (reason ``corrupt_cache``) when its shard is missing or damaged."""
        record = self.cache.records[key.index if isinstance(key, SampleKey) else key]
        prefix = f"{record['slot']}/"
        try:
            shard = self._shard(record["file"])
            sample = {name.removeprefix(prefix): shard.get_tensor(name) for name in shard.keys() if name.startswith(prefix)}
        except Exception as err:  # safetensors raises its own error types for missing and damaged files
            self._handles.pop(record["file"], None)
            return Skipped(record["id"], "corrupt_cache", f"{self.cache.dir / record['file']}: unreadable ({err})")
        if "latents" not in sample:
            return Skipped(record["id"], "corrupt_cache", f"{self.cache.dir / record['file']}: no tensors for it")
        text = sample["text"]
        if self.text_length and text.shape[0] < self.text_length:
            sample["text"] = torch.cat([text, text.new_zeros(self.text_length - text.shape[0], text.shape[1])])
        return {**sample, "caption": record["caption"], "id": record["id"]}
