"""GPU numbers for the 14B recipe: model FLOPs utilisation (MFU) of one 14B-shaped DiT block, forward + backward in
bf16, per attention backend; and the peak memory of one full fine-tuning step of the 1.3B DiT.

MFU: one ``WanTransformerBlock`` of the ``wan2.1-i2v-14b`` preset (dim 5120, 40 heads, FFN 13824, image K/V) in
bf16 on ``--tokens`` video tokens (32,760 = 480x832x81 after the VAE and the 1x2x2 patch), 512 text tokens and
3 x 257 image tokens. Model FLOPs are counted from the shapes (matmuls only, backward = 2 x forward):

    self-attention  4 L d^2 (q, k, v, o projections) + 2 L^2 d (scores and values), x 2 per multiply-add
    cross-attention 2 L d^2 (q, o) + 2 C d^2 (text k, v) + 2 I d^2 (image k, v) + 2 L (C + I) d, x 2
    feed-forward    2 L d f, x 2

MFU = those FLOPs / step time / ``--peak-tflops`` (989 = H100/H200 SXM dense bf16). Backends: ``sdpa`` always,
``flash`` when ``flash_attn`` imports (``pip install flash-attn-4``, pure Python wheel).

Memory: the ``wan2.1-t2v-1.3b`` DiT with fp32 weights, AdamW state and bf16 autocast, activation checkpointing per
block, one training step on ``--ft-tokens`` tokens: ``torch.cuda.max_memory_allocated`` (and the weights + grads +
optimizer share of it).

Needs CUDA: elsewhere it prints so and exits 0. ``--device cpu --smoke`` runs the same code on tiny shapes (a test
of the script, no numbers to report).

    python benchmarks/bench_gpu.py [--tokens 32760] [--ft-tokens 32760] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from e2v.modules.attention import resolve_backend
from e2v.modules.dit import PRESETS, WanDiT, WanDiTConfig, WanTransformerBlock

TEXT_TOKENS, IMAGE_TOKENS = 512, 3 * 257


def block_flops(tokens: int, dim: int, ffn: int, text: int, image: int) -> float:
    """Model FLOPs of one block forward + backward (see the module docstring)."""
    self_attn = 4 * tokens * dim**2 + 2 * tokens**2 * dim
    cross = 2 * tokens * dim**2 + 2 * (text + image) * dim**2 + 2 * tokens * (text + image) * dim
    ffn_macs = 2 * tokens * dim * ffn
    return 3 * 2 * (self_attn + cross + ffn_macs)


def backends() -> list[str]:
    names = ["sdpa"]
    try:
        import flash_attn  # noqa: F401

        names.append("flash")
    except ImportError:
        pass
    return names


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def block_mfu(config: WanDiTConfig, tokens: int, text: int, image: int, device: torch.device, repeats: int,
              peak_tflops: float) -> None:
    dtype = torch.bfloat16
    block = WanTransformerBlock(config).to(device, dtype)
    dim = config.dim
    x = torch.randn(1, tokens, dim, device=device, dtype=dtype, requires_grad=True)
    ctx = torch.randn(1, text, dim, device=device, dtype=dtype)
    img = torch.randn(1, image, dim, device=device, dtype=dtype)
    modulation = torch.randn(1, 6, dim, device=device)
    head_dim = config.attention_head_dim
    rope = (torch.ones(tokens, 1, head_dim, device=device), torch.zeros(tokens, 1, head_dim, device=device))
    flops = block_flops(tokens, dim, config.ffn_dim, text, image)
    for name in backends() if device.type == "cuda" else ["sdpa"]:
        fn = resolve_backend(name)
        for step in range(repeats + 1):  # the first is a warm-up
            if step == 1:
                synchronize(device)
                start = time.perf_counter()
            block(x, ctx, img, modulation, rope, fn).float().square().mean().backward()
        synchronize(device)
        seconds = (time.perf_counter() - start) / repeats
        print(f"{config.dim}-wide block fwd+bwd bf16, {tokens} tokens, {name:5s}: {seconds * 1e3:8.1f} ms  "
              f"{flops / seconds / 1e12:7.1f} TFLOP/s  MFU {flops / seconds / 1e12 / peak_tflops:6.1%}")


def finetune_peak(preset: dict, tokens_grid: tuple[int, int, int], device: torch.device) -> None:
    config = WanDiTConfig.from_dict(preset)
    dit = WanDiT(config).set_gradient_checkpointing(True).to(device)
    optimizer = torch.optim.AdamW(dit.parameters(), lr=1e-5)
    t, h, w = tokens_grid
    pt, ph, pw = config.patch_size
    latents = torch.randn(1, config.in_channels, t * pt, h * ph, w * pw, device=device)
    text = torch.randn(1, min(TEXT_TOKENS, 4 * t * h * w), config.text_dim, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = dit(latents, torch.tensor([500.0], device=device), text)
    out.float().square().mean().backward()
    optimizer.step()
    params = sum(p.numel() for p in dit.parameters())
    static = params * 4 * 4  # fp32 weights, grads, AdamW exp_avg and exp_avg_sq
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        print(f"1.3B full fine-tuning step ({t * h * w} tokens, bf16 autocast, checkpointing): peak "
              f"{peak / 2**30:.1f} GiB (weights + grads + AdamW {static / 2**30:.1f} GiB, {params / 1e9:.2f} B params)")
    else:
        print(f"fine-tuning step ran on {device} ({params / 1e6:.2f} M params); no memory figure off CUDA")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32760)
    parser.add_argument("--ft-grid", type=int, nargs=3, default=(21, 30, 52), metavar=("T", "H", "W"),
                        help="fine-tuning token grid (latent frames, rows, columns after the patch)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (checks the script, e.g. on a CPU)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu needs a CUDA device (none here); nothing measured")
        return 0
    if args.smoke:
        block_config = WanDiTConfig.from_dict({**PRESETS["tiny"], "added_kv_proj_dim": PRESETS["tiny"]["image_dim"]})
        block_mfu(block_config, 64, 8, 4, device, 1, args.peak_tflops)
        finetune_peak(PRESETS["tiny-t2v"], (2, 4, 4), device)
        return 0
    block_config = WanDiTConfig.from_dict({**PRESETS["wan2.1-i2v-14b"], "num_layers": 1})
    block_mfu(block_config, args.tokens, TEXT_TOKENS, IMAGE_TOKENS, device, args.repeats, args.peak_tflops)
    finetune_peak(PRESETS["wan2.1-t2v-1.3b"], tuple(args.ft_grid), device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
