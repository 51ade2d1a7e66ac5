"""Peak host memory of the sharded DiT load (FSDP2, 2 gloo ranks on CPU) vs loading the whole DiT in one process.

Usage: python benchmarks/bench_sharded_load.py [--preset wan2.1-t2v-1.3b] [--folder DIR] [--no-baseline]

Writes the preset's DiT with random weights as a diffusers-layout folder (streamed, about 1 GB in memory at a
time; reused when ``--folder`` already holds one), then runs on 2 ranks what ``E2VDiffusion.configure_model`` does
with ``fsdp``: meta-device DiT, ``fully_shard`` per block and root (bf16 policy), each rank allocating and reading
only its shards. Each rank reports its peak resident memory (VmHWM) against the target 0.65 x the full fp32 model
+ 1 GB and checks that its shards equal its rows of the folder's tensors. The baseline, measured in the same run,
is one process loading the whole DiT (``WanDiT.from_pretrained``); the script prints peak(sharded) / peak(whole).
Exit code 1 when a rank misses the target or a shard differs.
"""

from __future__ import annotations

import argparse
import math
import shutil
import socket
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

from e2v.modules.dit import WanDiT
from e2v.modules.weights import LazyTensor, tensor_files, write_weights
from e2v.tasks.sharding import ShardingPolicy, materialize_dit, meta_dit, shard_dit

GB = 1024**3
WORLD = 2


def peak_rss() -> int:
    """This process's resident-memory high-water mark (VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def write_random_folder(preset: str, folder: Path) -> int:
    """The preset's DiT with random weights (std 0.02) as a folder, written shard by shard; returns its fp32 bytes."""
    with torch.device("meta"):
        model = WanDiT.from_preset(preset)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    total = sum(math.prod(s) for s in shapes.values()) * 4
    if not (folder / "config.json").is_file():
        def random(index: int, shape: tuple[int, ...]):
            return lambda: torch.randn(shape, generator=torch.Generator().manual_seed(index)) * 0.02

        tensors = {name: LazyTensor(shape, torch.float32, random(i, shape))
                   for i, (name, shape) in enumerate(shapes.items())}
        write_weights(tensors, model.config.to_dict(), folder, max_shard_bytes=GB)
    return total


def rank_rows(size: int, rank: int) -> slice:
    """FSDP2's dim-0 split (torch.chunk): ceil(size / world) rows per rank, the last ranks possibly fewer or none."""
    rows = -(-size // WORLD)
    return slice(min(rank * rows, size), min((rank + 1) * rows, size))


def _rank(rank: int, port: int, folder: str, results) -> None:
    import torch.distributed as dist
    from safetensors import safe_open
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        before = peak_rss()
        dit, weights = meta_dit({"name": "wan", "weights": folder})
        shard_dit(dit, init_device_mesh("cpu", (WORLD,)), ShardingPolicy())
        materialize_dit(dit, weights, "cpu")
        peak = peak_rss()
        located = tensor_files(folder)
        differing = []
        for name, param in dit.named_parameters():
            with safe_open(str(located[name][0]), framework="pt") as f:
                expected = f.get_slice(name)[rank_rows(param.shape[0], rank)]
            if not torch.equal(param.to_local(), expected):
                differing.append(name)
        local = sum(p.to_local().numel() * p.element_size() for p in dit.parameters())
        results[rank] = (before, peak, local, differing)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _whole(folder: str, results) -> None:
    before = peak_rss()
    WanDiT.from_pretrained(folder)
    results["whole"] = (before, peak_rss())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="wan2.1-t2v-1.3b")
    parser.add_argument("--folder", type=Path, default=None,
                        help="weights folder to write / reuse (default: temporary)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the whole-model load in one process")
    args = parser.parse_args()
    scratch = None if args.folder else Path(tempfile.mkdtemp(prefix="bench_sharded_load_"))
    folder = args.folder or scratch / "transformer"
    try:
        full = write_random_folder(args.preset, folder)
        target = 0.65 * full + GB
        print(f"{args.preset}: full fp32 DiT {full / GB:.2f} GB; "
              f"target per rank 0.65 x full + 1 GB = {target / GB:.2f} GB")
        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager:
            results = manager.dict()
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            mp.spawn(_rank, args=(port, str(folder), results), nprocs=WORLD, join=True)
            if not args.no_baseline:
                process = ctx.Process(target=_whole, args=(str(folder), results))
                process.start()
                process.join()
            results = dict(results)
        ok = True
        for rank in range(WORLD):
            before, peak, local, differing = results[rank]
            passed = peak <= target and not differing
            ok &= passed
            print(f"rank {rank}: peak RSS {peak / GB:.2f} GB (after imports {before / GB:.2f} GB), local shards "
                  f"{local / GB:.2f} GB, shards equal to the folder: {not differing} {differing[:3]} -> "
                  f"{'PASS' if passed else 'FAIL'}")
        if "whole" in results:
            before, peak = results["whole"]
            worst = max(results[r][1] for r in range(WORLD))
            print(f"baseline, whole DiT in one process: peak RSS {peak / GB:.2f} GB "
                  f"(after imports {before / GB:.2f} GB)")
            print(f"ratio peak sharded rank / whole-model load: {worst / peak:.2f}")
        return 0 if ok else 1
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
