"""Forward + backward time of e2v's WanDiT vs diffusers' WanTransformer3DModel, same config and weights.

Usage: python benchmarks/bench_dit.py [--frames 8 --height 32 --width 48 --repeats 3]

Both models run the "small" I2V config (4 heads x 64, 4 layers) on the same inputs in fp32 on CPU; prints the
median time of each, the ratio diffusers / e2v, and the relative difference of the outputs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from diffusers import WanTransformer3DModel

from e2v.modules.dit import WanDiT

SMALL = dict(
    num_attention_heads=4, attention_head_dim=64, in_channels=36, out_channels=16, text_dim=256, freq_dim=256,
    ffn_dim=1024, num_layers=4, image_dim=128, added_kv_proj_dim=256,
)


def time_step(model_call, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of forward + backward (loss = mean square of the output) and the last output."""
    times = []
    for _ in range(repeats + 1):  # first run warms up
        start = time.perf_counter()
        out = model_call()
        out.square().mean().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), out.detach()


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

    t_ref, out_ref = time_step(lambda: reference(latents, timestep, text, encoder_hidden_states_image=image).sample, args.repeats)
    t_ours, out_ours = time_step(lambda: ours(latents, timestep, text, image), args.repeats)
    rel = ((out_ours - out_ref).norm() / out_ref.norm()).item()
    print(f"diffusers forward+backward: {t_ref:.3f} s")
    print(f"e2v       forward+backward: {t_ours:.3f} s")
    print(f"speed-up (diffusers / e2v): {t_ref / t_ours:.2f}x   output relative difference {rel:.1e}")


if __name__ == "__main__":
    main()
