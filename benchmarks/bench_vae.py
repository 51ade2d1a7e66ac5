"""Wan VAE encode/decode time: e2v's WanVAE vs diffusers' AutoencoderKLWan, same config and weights, one run.

Runs are interleaved (ours, diffusers, ours, ...) so machine load hits both alike; prints the median of each and
the ratio diffusers / ours (> 1: ours is faster). Outputs are checked to agree before timing.

    python benchmarks/bench_vae.py --base-dim 32 --frames 17 --size 128
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from diffusers import AutoencoderKLWan

from e2v.modules.vae import WanVAE


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds): CPU time is the steadier measure on a shared, loaded machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-dim", type=int, default=32, help="96 is the official Wan2.1 width")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128, help="frame height and width in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    reference = AutoencoderKLWan(base_dim=args.base_dim).eval()
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        ours = WanVAE.from_pretrained(folder).eval()
    reference.to(args.device)
    ours.to(args.device)
    video = torch.rand(1, 3, args.frames, args.size, args.size, device=args.device) * 2 - 1
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    with torch.no_grad():
        latents = ours.encode(video)
        error = (latents - reference.encode(video).latent_dist.mean).norm() / latents.norm()
        print(f"config base_dim={args.base_dim}, video {tuple(video.shape)}, device {args.device}, "
              f"threads {torch.get_num_threads()}; encode relative difference {error:.1e}")
        cases = {
            "encode": (lambda: (ours.encode(video), sync()), lambda: (reference.encode(video), sync())),
            "decode": (lambda: (ours.decode(latents), sync()), lambda: (reference.decode(latents), sync())),
        }
        for name, (run_ours, run_reference) in cases.items():
            times_ours, times_reference = [], []
            for _ in range(args.repeats):
                times_ours.append(timed(run_ours))
                times_reference.append(timed(run_reference))
            for kind, index in (("wall", 0), ("cpu", 1)):
                ours_s = statistics.median(t[index] for t in times_ours)
                reference_s = statistics.median(t[index] for t in times_reference)
                print(f"{name} ({kind} time): e2v {ours_s:.3f} s, diffusers {reference_s:.3f} s, "
                      f"speed-up (diffusers / e2v) {reference_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
