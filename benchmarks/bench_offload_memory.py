"""Peak accelerator memory of one denoising step of a 14B-shaped DiT at 480x832x81 with block offload.

The DiT (``wan2.1-i2v-14b`` preset: 40 blocks, dim 5120, random weights) is built on the meta device and
materialised block by block in host memory (``--dtype``, bf16 by default, the fp32 islands kept by
``WanDiT.to_dtype``), each block optionally quantised (``--quantize int8wo|fp8``) right after it is filled, so the host
never holds more than the model plus one block. :class:`~e2v.pipeline.offload.BlockOffload` then keeps the blocks in
pinned host memory and streams ``--blocks-per-group`` of them at a time; the embedders, head and RoPE tables stay on
the GPU. One step = one DiT forward of the two text-CFG branches in a batch (the pipeline's shape): latents
``[2, 36, 21, 60, 104]`` (32,760 tokens), 512 text tokens, 3 references x 257 CLIP tokens. Printed per group size:
peak memory allocated during the step, the step time, the resident (non-streamed) weights, and whether the peak fits
a 24 GB card. ``--resident`` adds the same step with the whole DiT on the GPU, as the baseline.

Needs CUDA: elsewhere it prints so and exits 0. ``--device cpu`` with a small ``--preset`` (e.g. ``tiny``) runs the
same path on the CPU as a smoke test (no memory figure there).

    python benchmarks/bench_offload_memory.py [--blocks-per-group 1 2 4] [--quantize fp8] [--resident]
    python benchmarks/bench_offload_memory.py --device cpu --preset tiny --height 64 --width 64 --frames 5
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from e2v.modules.dit import PRESETS, WanDiT, WanDiTConfig
from e2v.modules.quantize import WEIGHT_ONLY_MODES, quantize_linears, weight_bytes
from e2v.modules.weights import parse_dtype
from e2v.pipeline.offload import BlockOffload, peak_memory_bytes, reset_peak_memory

CARD_BYTES = 24 * 10**9  # an RTX 4090 / 3090: 24 GB
CLIP_TOKENS = 257


@torch.no_grad()
def fill_random(module: nn.Module, pool: torch.Tensor) -> None:
    """Fill every floating tensor of ``module`` (just materialised) from a shared random pool: cheap for 14B."""
    for layer in module.modules():
        layer.to_empty(device="cpu", recurse=False)
        for tensor in list(layer.parameters(recurse=False)) + list(layer.buffers(recurse=False)):
            flat = tensor.view(-1)
            for start in range(0, flat.numel(), pool.numel()):
                chunk = flat[start : start + pool.numel()]
                chunk.copy_(pool[: chunk.numel()])  # cast to the tensor's dtype


@torch.no_grad()
def build_dit(preset: str, dtype: torch.dtype, quantize: str | None) -> WanDiT:
    """A ``preset``-shaped DiT with random weights, materialised block by block on the CPU from the meta device."""
    with torch.device("meta"):
        dit = WanDiT(WanDiTConfig.from_dict(PRESETS[preset]))
    dit.to_dtype(dtype)
    pool = torch.randn(1 << 22, generator=torch.Generator().manual_seed(0)) * 0.02
    for name, child in dit.named_children():
        for part in child if name == "blocks" else [child]:
            fill_random(part, pool)
            if name == "blocks" and quantize is not None:
                quantize_linears(part, quantize)  # each block right after it is filled: host peak ~ model + 1 block
    dit.to_empty(device="cpu", recurse=False)  # the head's modulation table
    for param in dit.parameters(recurse=False):
        param.copy_(pool[: param.numel()].view_as(param))
    dit.rope.reset_tables()
    return dit.eval()


def step_inputs(config: WanDiTConfig, args, device: torch.device, dtype: torch.dtype):
    """Latents, timestep, text and image tokens of one batched text-CFG step."""
    batch, frames = 2, (args.frames - 1) // 4 + 1
    generator = torch.Generator().manual_seed(1)
    shape = (batch, config.in_channels, frames, args.height // 8, args.width // 8)
    latents = torch.randn(shape, generator=generator).to(device, dtype)
    text = torch.randn(batch, args.text_tokens, config.text_dim, generator=generator).to(device, dtype)
    image = None
    if config.has_image_branch:
        image = torch.randn(batch, args.refs * CLIP_TOKENS, config.image_dim, generator=generator).to(device, dtype)
    return latents, torch.full((batch,), 900.0, device=device), text, image


def timed_step(dit: WanDiT, inputs, device: torch.device) -> tuple[float, int | None]:
    """Seconds and peak bytes of one forward."""
    reset_peak_memory(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = dit(*inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    assert torch.isfinite(out.float()).all(), "non-finite DiT output"
    return time.perf_counter() - start, peak_memory_bytes(device)


def gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f} GiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="wan2.1-i2v-14b")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--quantize", choices=list(WEIGHT_ONLY_MODES), default=None)
    parser.add_argument("--blocks-per-group", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--refs", type=int, default=3)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--resident", action="store_true", help="also the step with the whole DiT on the device")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_offload_memory needs a CUDA device (none here): nothing measured; "
              "use --device cpu --preset tiny for a smoke test of the code path")
        return 0
    dtype = parse_dtype(args.dtype)
    start = time.perf_counter()
    dit = build_dit(args.preset, dtype, args.quantize)
    blocks = sum(weight_bytes(block) for block in dit.blocks)
    print(f"{args.preset} ({dit.config.num_layers} blocks, dim {dit.config.dim}), {args.dtype}"
          f"{', blocks ' + args.quantize if args.quantize else ''}: {weight_bytes(dit) / 2**30:.2f} GiB of weights, "
          f"{blocks / 2**30:.2f} GiB in blocks; built in {time.perf_counter() - start:.0f}s on the host")
    inputs = step_inputs(dit.config, args, device, dtype)
    tokens = inputs[0].shape[2] * inputs[0].shape[3] * inputs[0].shape[4] // 4
    print(f"one step: {args.frames} frames {args.width}x{args.height} ({tokens} tokens) x 2 CFG branches, "
          f"{args.text_tokens} text + {args.refs} x {CLIP_TOKENS} image tokens; device {device}")
    print(f"{'setting':28s} {'peak':>12s} {'step s':>8s} {'resident weights':>17s}  fits 24 GB")
    for group in args.blocks_per_group:
        offload = BlockOffload(dit, device, group)
        resident = weight_bytes(dit) - offload.streamed_bytes()
        timed_step(dit, inputs, device)  # warm-up: kernels, allocator, first transfers
        seconds, peak = timed_step(dit, inputs, device)
        offload.remove()
        fits = "n/a" if peak is None else ("yes" if peak <= CARD_BYTES else "no")
        print(f"{f'offload {group} block(s)/group':28s} {gib(peak):>12s} {seconds:8.2f} {gib(resident):>17s}  {fits}")
    if args.resident:
        whole = dit.to(device)
        timed_step(whole, inputs, device)
        seconds, peak = timed_step(whole, inputs, device)
        print(f"{'whole DiT on the device':28s} {gib(peak):>12s} {seconds:8.2f} {gib(weight_bytes(whole)):>17s}  "
              f"{'n/a' if peak is None else ('yes' if peak <= CARD_BYTES else 'no')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
