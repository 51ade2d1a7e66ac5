"""Re-derive ``e2v plan``'s activation coefficients (e2v/plan.py PER_BLOCK, CHECKPOINTED_INPUT, OUTSIDE_BLOCKS).

For each precision and checkpointing setting, trains 2- and 4-block WanDiTs of 5 shapes on CPU and traces the
allocations of one forward + backward (gradient buffers already allocated) with the torch profiler; the 4- minus
2-block peak is the per-block cost, the rest the cost outside the blocks. Least squares (non-negative outside the
blocks) over tokens x dim, tokens x ffn_dim and context x dim after :func:`e2v.plan.weight_copies`; prints the
fitted coefficients beside the ones e2v/plan.py uses, and the residuals. About 10 minutes on 2 CPU cores.

    python benchmarks/fit_plan_activations.py
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from scipy.optimize import nnls

from e2v.modules.dit import PRESETS, WanDiT, WanDiTConfig
from e2v.plan import CHECKPOINTED_INPUT, OUTSIDE_BLOCKS, PER_BLOCK, meta_dit, traced_peak, weight_copies

SHAPES = [  # heads (x 32), ffn_dim, latent T, H, W, text tokens, image tokens
    (4, 512, 3, 16, 16, 16, 24), (8, 512, 3, 16, 16, 16, 24), (4, 1024, 3, 16, 16, 16, 24),
    (4, 512, 3, 32, 32, 16, 24), (4, 512, 3, 16, 16, 64, 96),
]
MODES = {"32-true": (None, False), "bf16-mixed": (None, True), "bf16-true": ("all", False)}


def config(heads: int, ffn: int, layers: int) -> WanDiTConfig:
    return WanDiTConfig.from_dict({**PRESETS["tiny"], "num_attention_heads": heads, "attention_head_dim": 32,
                                   "ffn_dim": ffn, "num_layers": layers, "added_kv_proj_dim": heads * 32})


def step_peak(shape, layers: int, precision: str, checkpointing: bool) -> int:
    heads, ffn, t, h, w, text_tokens, image_tokens = shape
    torch.manual_seed(0)
    dit = WanDiT(config(heads, ffn, layers)).set_gradient_checkpointing(checkpointing)
    if precision == "bf16-true":
        dit = dit.to(torch.bfloat16)
    inputs = (torch.randn(1, 36, t, h, w), torch.tensor([500.0]), torch.randn(1, text_tokens, 32),
              torch.randn(1, image_tokens, 32))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()

    def forward_backward():
        with autocast:
            out = dit(*inputs)
        out.float().pow(2).mean().backward()

    forward_backward()
    return traced_peak(forward_backward)


def main() -> None:
    for precision in MODES:
        rows = {}
        for checkpointing in (False, True):
            for shape in SHAPES:
                two, four = (step_peak(shape, n, precision, checkpointing) for n in (2, 4))
                heads, ffn, t, h, w, text_tokens, image_tokens = shape
                dit = meta_dit(config(heads, ffn, 1), "bfloat16" if precision == "bf16-true" else None)
                copies = weight_copies(dit.blocks[0], "blocks.0", precision, True, set())
                tokens, dim = t * h // 2 * w // 2, heads * 32
                rows[shape, checkpointing] = dict(per_block=(four - two) / 2, outside=two - (four - two),
                                                  copies=copies, tokens=tokens, dim=dim, ffn=ffn,
                                                  context=text_tokens + image_tokens)
        full = [rows[s, False] for s in SHAPES]
        a = np.array([[r["tokens"] * r["dim"], r["tokens"] * r["ffn"], r["context"] * r["dim"]] for r in full])
        y = np.array([r["per_block"] - r["copies"] for r in full])
        per_block, *_ = np.linalg.lstsq(a, y, rcond=None)
        print(f"{precision}: PER_BLOCK fitted {np.round(per_block, 2)} used {PER_BLOCK[precision]}; residuals "
              f"{np.round((a @ per_block - y) / y, 3)}")
        ckpt = [rows[s, True] for s in SHAPES]
        a = np.array([[r["tokens"] * r["dim"]] for r in ckpt])
        kept, *_ = np.linalg.lstsq(a, np.array([r["per_block"] for r in ckpt]), rcond=None)
        print(f"  CHECKPOINTED_INPUT fitted {kept[0]:.2f} used {CHECKPOINTED_INPUT[precision]}")
        for checkpointing in (False, True):
            sel = [rows[s, checkpointing] for s in SHAPES]
            a = np.array([[r["tokens"] * r["dim"], r["tokens"] * r["ffn"], r["context"] * r["dim"], r["copies"]]
                          for r in sel])
            y = np.array([r["outside"] - (rows[s, False]["per_block"] if checkpointing else 0)
                          for s, r in zip(SHAPES, sel)])
            outside, _ = nnls(a, y)
            print(f"  OUTSIDE_BLOCKS[{checkpointing}] fitted {np.round(outside, 2)} used "
                  f"{OUTSIDE_BLOCKS[precision, checkpointing]}")


if __name__ == "__main__":
    main()
