"""Held-out retrieval of e2v's reference encoder: contrastively trained vs the same encoder at random init vs chance.

Trains the tiny recipe's encoder (recipes/tiny/refenc.yaml sizes) for ``--steps`` steps on the synthetic world's
element views and matches the two views of held-out elements (never trained on) by cosine similarity.

    python benchmarks/bench_refenc_retrieval.py [--steps 400] [--size 32] [--width 64] [--depth 3] [--procedural 1000]
"""

import argparse
import time
from functools import partial

import lightning as L
import torch

from e2v.datamodules.element_views import ElementViewsDataModule
from e2v.tasks.reference_encoder_training import ReferenceEncoderTraining


def held_out_metrics(model: ReferenceEncoderTraining, data: ElementViewsDataModule) -> dict[str, float]:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.validate(model, data, verbose=False)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--procedural", type=int, default=1000, help="extra procedural training identities")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    L.seed_everything(args.seed)
    data = ElementViewsDataModule(
        image_size=args.size, batch_size=args.batch_size, samples_per_epoch=10**6, val_pairs_per_element=8,
        num_workers=1, procedural_identities=args.procedural,
    )
    encoder = {"name": "e2v_vit", "image_size": args.size, "patch_size": 8, "width": args.width, "depth": args.depth,
               "heads": 4, "dim": 24, "embed_dim": 64}
    model = ReferenceEncoderTraining(
        encoder, optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05), warmup_steps=30
    )
    untrained = held_out_metrics(model, data)
    start = time.perf_counter()
    L.Trainer(
        max_steps=args.steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    ).fit(model, data)
    seconds = time.perf_counter() - start
    trained = held_out_metrics(model, data)

    print(f"held-out elements: {', '.join(item.name for item in data.heldout_items)}")
    print(f"{args.steps} steps in {seconds:.0f} s ({seconds / args.steps:.2f} s/step)")
    for k in ("top1", "top5"):
        print(
            f"{k}: trained {trained[f'val/{k}']:.3f}  random init {untrained[f'val/{k}']:.3f}  "
            f"chance {trained[f'val/chance_{k}']:.3f}  trained/random-init {trained[f'val/{k}'] / untrained[f'val/{k}']:.2f}x"
        )


if __name__ == "__main__":
    main()
