"""Peak activation memory per rank under Ulysses sequence parallelism (SP 1, 2, 4 ranks), beside ``e2v plan``'s
estimate for the same DiT, shapes and SP size. Prints each SP size's peak, its ratio to SP 1 (measured in the same
run) and the seconds per forward + backward.

    python benchmarks/bench_sp_memory.py [--sizes 1 2 4]              # gloo CPU ranks, torch profiler
    python benchmarks/bench_sp_memory.py --device cuda --sizes 1 2 4 8 --frames 81 --size 480 --layers 4
                                                                     # NCCL, one GPU per rank

CPU: the peak of the CPU allocations of one forward + backward once the gradient buffers exist
(:func:`e2v.plan.traced_peak`). CUDA: ``torch.cuda.max_memory_allocated`` over the same step minus what was allocated
before it, NCCL all-to-alls on the current stream. The DiT: ``--layers`` blocks (3), 8 heads x 24 (dim 192), FFN 768;
one sample of ``--frames`` x ``--size`` x ``--size`` pixels (17 x 256 x 256: 1280 video tokens), one reference (257
image tokens), 24 text tokens, fp32, no activation checkpointing. About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from e2v.modules.dit import WanDiT
from e2v.modules.sequence_parallel import SequenceShards
from e2v.plan import GB, estimate, traced_peak

DIT = dict(num_attention_heads=8, attention_head_dim=24, ffn_dim=768, added_kv_proj_dim=192)
TEXT_TOKENS, REFERENCES = 24, 1


def recipe(folder: Path, sp: int, frames: int, size: int, layers: int) -> Path:
    """The benchmark's model and shapes as a recipe for ``e2v plan``."""
    config = {
        "trainer": {"accelerator": "cpu", "devices": sp, "precision": "32-true",
                    "strategy": {"class_path": "e2v.strategies.SequenceParallelStrategy",
                                 "init_args": {"sequence_parallel": sp}}},
        "model": {"class_path": "e2v.tasks.e2v_diffusion.E2VDiffusion", "init_args": {
            "dit": {"name": "wan", "preset": "tiny", "num_layers": layers, **DIT}, "text_encoder": {"name": "umt5", "max_length": TEXT_TOKENS}}},
        "data": {"class_path": "e2v.datamodules.triplets.TripletDataModule", "init_args": {
            "buckets": [[frames, size, size]], "max_references": REFERENCES, "batch_size": 1}},
    }
    path = folder / f"sp{sp}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def worker(rank: int, port: int, world: int, out: str, device: str, frames: int, size: int, layers: int) -> None:
    torch.set_num_threads(1)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    on = torch.device(f"cuda:{rank}" if cuda else "cpu")
    torch.manual_seed(0)
    dit = WanDiT.from_preset("tiny", num_layers=layers, **DIT).to(on)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 36, (frames - 1) // 4 + 1, size // 8, size // 8, generator=g).to(on)
    text = torch.randn(1, TEXT_TOKENS, dit.config.text_dim, generator=g).to(on)
    image = torch.randn(1, 257 * REFERENCES, dit.config.image_dim, generator=g).to(on)
    sequence = SequenceShards(dist.group.WORLD) if world > 1 else None

    def forward_backward():
        out = dit(latents, torch.tensor([500.0], device=on), text, image, sequence=sequence)
        out.float().pow(2).mean().backward()

    forward_backward()  # the gradient buffers exist from here on
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        forward_backward()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = traced_peak(forward_backward)
    seconds = []
    for _ in range(3):
        dist.barrier()
        start = time.perf_counter()
        forward_backward()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    torch.save((peak, sorted(seconds)[1]), os.path.join(out, f"peak_{world}_{rank}.pt"))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(sizes: list[int], device: str = "cpu", frames: int = 17, size: int = 256,
            layers: int = 3) -> dict[int, dict[str, float]]:
    """Per SP size: the largest measured per-rank peak and the plan's activation estimate (bytes), tokens per rank
    and the slowest rank's median seconds per forward + backward."""
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for sp in sizes:
            mp.start_processes(worker, args=(free_port(), sp, folder, device, frames, size, layers), nprocs=sp,
                               start_method="spawn" if device == "cuda" else "fork")
            runs = [torch.load(Path(folder) / f"peak_{sp}_{r}.pt", weights_only=True) for r in range(sp)]
            plan = estimate([recipe(Path(folder), sp, frames, size, layers)])
            results[sp] = {"measured": float(max(p for p, _ in runs)), "planned": plan.activations,
                           "tokens": plan.tokens_per_gpu, "seconds": max(s for _, s in runs)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3)
    args = parser.parse_args()
    results = measure(args.sizes, args.device, args.frames, args.size, args.layers)
    base = results[min(results)]["measured"]
    print(f"{'SP':>3} {'tokens/rank':>11} {'measured MiB':>13} {'ratio to SP ' + str(min(results)):>15} "
          f"{'plan MiB':>9} {'plan/measured':>13} {'s/step':>7}")
    for sp, r in results.items():
        print(f"{sp:>3} {r['tokens']:>11} {r['measured'] * 1024 / GB:>13.1f} {r['measured'] / base:>15.3f} "
              f"{r['planned'] * 1024 / GB:>9.1f} {r['planned'] / r['measured']:>13.3f} {r['seconds']:>7.3f}")


if __name__ == "__main__":
    main()
