"""Does the tiny E2V model learn the task? Held-out reference combinations, generated vs ground truth.

For each held-out clip (element pairs never seen together in training), generates a video from the clip's own
references with the trained checkpoint and compares it (pixel MSE / PSNR after the reference frames are cut) with
the ground-truth clip, against two baselines measured in the same run with the same seeds:
  * untrained: the same recipe's DiT at its random initialisation;
  * shuffled: the trained model given another held-out clip's references (same prompt).
Run after the main job (recipes/tiny/run.sh):

    python benchmarks/bench_learning.py --checkpoint runs/tiny/e2v/checkpoints/last.ckpt \
        --manifest data/tiny_world/heldout.jsonl [--checkpoint another.ckpt ...]
"""

import argparse

import torch
from tqdm import tqdm

from e2v import registry
from e2v.datamodules.triplets import TripletDataModule
from e2v.pipeline.pipeline import E2VPipeline


def held_out_batches(args: argparse.Namespace) -> list[dict]:
    data = TripletDataModule(args.manifest, val_manifest=args.manifest, frames=args.frames, height=args.size,
                             width=args.size, batch_size=1, image_size=args.image_size,
                             max_references=args.max_references, shuffle_references=False)
    return list(data.val_dataloader())[: args.clips]


def generate(pipeline: E2VPipeline, batch: dict, refs: torch.Tensor, kinds: list, args, seed: int) -> torch.Tensor:
    return pipeline(list(refs), batch["caption"][0], kinds=kinds, height=args.size, width=args.size,
                    frames=args.frames, steps=args.steps, guidance=args.guidance, seed=seed, progress=False)


def psnr(mse: float) -> float:
    return 10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-10))).item()


def evaluate(checkpoint: str, batches: list[dict], args: argparse.Namespace) -> dict[str, float]:
    solver = {"name": args.solver, "shift": args.shift}
    trained = E2VPipeline.from_checkpoint(checkpoint, solver=solver, device="cpu")
    untrained = E2VPipeline.from_checkpoint(checkpoint, solver=solver, device="cpu")
    spec = torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]["dit"]
    torch.manual_seed(args.seed)
    untrained.dit.load_state_dict(registry.build("dit", spec).state_dict())
    errors = {"trained": [], "untrained": [], "shuffled": []}
    for i, batch in enumerate(tqdm(batches, desc=f"held-out clips ({checkpoint})")):
        other = batches[(i + 1) % len(batches)]
        truth = batch["video"][0, :, : args.frames - trained.layout.prefix_frames(batch["refs"].shape[1])]
        runs = {
            "trained": (trained, batch["refs"][0], batch["ref_kinds"][0]),
            "untrained": (untrained, batch["refs"][0], batch["ref_kinds"][0]),
            "shuffled": (trained, other["refs"][0], other["ref_kinds"][0]),
        }
        for name, (pipeline, refs, kinds) in runs.items():
            video = generate(pipeline, batch, refs, kinds, args, seed=args.seed + i)
            frames = min(video.shape[1], truth.shape[1])
            errors[name].append((video[:, :frames] - truth[:, :frames]).pow(2).mean().item())
    return {name: sum(v) / len(v) for name, v in errors.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", required=True)
    parser.add_argument("--manifest", default="data/tiny_world/heldout.jsonl")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--max-references", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--solver", default="euler")
    parser.add_argument("--shift", type=float, default=3.0)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    batches = held_out_batches(args)
    print(f"{len(batches)} held-out clips, {args.steps} {args.solver} steps, guidance {args.guidance}")
    for checkpoint in args.checkpoint:
        mse = evaluate(checkpoint, batches, args)
        print(f"\n{checkpoint}")
        for name, value in mse.items():
            print(f"  {name:<10} MSE {value:.4f}  PSNR {psnr(value):5.2f} dB")
        print(f"  trained vs untrained: {mse['untrained'] / mse['trained']:.2f}x lower MSE "
              f"(+{psnr(mse['trained']) - psnr(mse['untrained']):.2f} dB)")
        print(f"  trained vs shuffled references: {mse['shuffled'] / mse['trained']:.2f}x lower MSE "
              f"(+{psnr(mse['trained']) - psnr(mse['shuffled']):.2f} dB)")


if __name__ == "__main__":
    main()
