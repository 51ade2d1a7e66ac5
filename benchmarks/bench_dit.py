"""Forward + backward time of e2v's WanDiT vs diffusers' WanTransformer3DModel, same config and weights.

Usage: python benchmarks/bench_dit.py [--frames 8 --height 32 --width 48 --repeats 3]

Both models run the "small" I2V config (4 heads x 64, 4 layers) on the same inputs in fp32 on CPU; prints the
best time of each (runs interleaved), the ratio diffusers / e2v, and the relative difference of the outputs.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from diffusers import WanTransformer3DModel

from e2v.modules.dit import WanDiT

SMALL = dict(
    num_attention_heads=4, attention_head_dim=64, in_channels=36, out_channels=16, text_dim=256, freq_dim=256,
    ffn_dim=1024, num_layers=4, image_dim=128, added_kv_proj_dim=256,
)


def time_steps(calls: dict, repeats: int) -> tuple[dict, dict]:
    """Best seconds of forward + backward (loss = mean square of the output) per model, and the last outputs.

    The models take turns (after one warm-up each) and the minimum is kept: on a shared machine the fastest
    run is the one least disturbed by other processes.
    """
    times = {name: [] for name in calls}
    outputs = {}
    for round_ in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            out = call()
            out.square().mean().backward()
            if round_:
                times[name].append(time.perf_counter() - start)
            outputs[name] = out.detach()
    return {name: min(values) for name, values in times.items()}, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--refs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    reference = WanTransformer3DModel(**SMALL)
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        ours = WanDiT.from_pretrained(folder)
    latents = torch.randn(1, 36, args.frames, args.height, args.width)
    timestep = torch.tensor([500.0])
    text = torch.randn(1, 512, SMALL["text_dim"])  # diffusers' I2V path needs exactly 512 text tokens
    image = torch.randn(1, 257 * args.refs, SMALL["image_dim"])
    tokens = args.frames * args.height * args.width // 4
    print(f"config {SMALL}\ntokens {tokens}, text 512, image {257 * args.refs}, threads {torch.get_num_threads()}")

    calls = {
        "e2v": lambda: ours(latents, timestep, text, image),
        "diffusers": lambda: reference(latents, timestep, text, encoder_hidden_states_image=image).sample,
    }
    best, outputs = time_steps(calls, args.repeats)
    t_ref, t_ours = best["diffusers"], best["e2v"]
    rel = ((outputs["e2v"] - outputs["diffusers"]).norm() / outputs["diffusers"].norm()).item()
    print(f"diffusers forward+backward: {t_ref:.3f} s")
    print(f"e2v       forward+backward: {t_ours:.3f} s")
    print(f"speed-up (diffusers / e2v): {t_ref / t_ours:.2f}x   output relative difference {rel:.1e}")


if __name__ == "__main__":
    main()
