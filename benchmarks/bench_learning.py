"""Does the tiny E2V model learn the task? Held-out reference combinations, generated vs ground truth.

For each held-out clip (element pairs never seen together in training), generates a video from the clip's own
references with the trained checkpoint and compares it (pixel MSE / PSNR after the reference frames are cut) with
the ground-truth clip, against two baselines measured in the same run with the same seeds:
  * untrained: the same recipe's DiT at its random initialisation;
  * shuffled: the trained model given another held-out clip's references (same prompt).
It also reports the latent-space distance (independent of how well the tiny VAE decodes) and the denoising (velocity) loss on the held-out latents at fixed flow times and noise, for the same
three cases: the most direct read of whether the model uses the references it is given.
Run after the main job (recipes/tiny/run.sh):

    python benchmarks/bench_learning.py --checkpoint runs/tiny/e2v/checkpoints/last.ckpt \
        --manifest data/tiny_world/heldout.jsonl [--checkpoint another.ckpt ...]
"""

import argparse

import torch
from tqdm import tqdm

from e2v import registry
from e2v.datamodules.triplets import TripletDataModule
from e2v.modules.flow import TIMESTEP_SCALE, noisy_latents, velocity_target
from e2v.pipeline.pipeline import E2VPipeline

CASES = ("trained", "untrained", "shuffled")
LABELS = {"latent": "generated-vs-truth latent MSE", "blocks": "decoded 8x8-block MSE", "loss": "denoising loss"}


def held_out_batches(args: argparse.Namespace) -> list[dict]:
    data = TripletDataModule(args.manifest, val_manifest=args.manifest, frames=args.frames, height=args.size,
                             width=args.size, batch_size=1, image_size=args.image_size,
                             max_references=args.max_references, shuffle_references=False)
    return list(data.val_dataloader())[: args.clips]


def generate(pipeline: E2VPipeline, batch: dict, refs: torch.Tensor, kinds: list, args, seed: int) -> torch.Tensor:
    """Denoised latents ``[1, 16, T, h, w]`` for the batch's prompt and the given references."""
    return pipeline(list(refs), batch["caption"][0], kinds=kinds, height=args.size, width=args.size,
                    frames=args.frames, steps=args.steps, guidance=args.guidance, seed=seed, progress=False,
                    decode=False)


def blocks(video: torch.Tensor, size: int = 8) -> torch.Tensor:
    """``[3, F, H, W]`` averaged over ``size`` x ``size`` pixel blocks: where the elements are and their colours,
    without the texture detail a tiny VAE cannot reproduce."""
    return torch.nn.functional.avg_pool2d(video.transpose(0, 1), size)


@torch.no_grad()
def target_latents(pipeline: E2VPipeline, batch: dict) -> torch.Tensor:
    """Normalised latents ``[1, 16, T, h, w]`` of the clip's training target (the references, then the clip)."""
    return pipeline.vae.normalize(pipeline.vae.encode(pipeline.layout.target_video(batch["video"], batch["refs"])))


def video_frames(pipeline: E2VPipeline, num_refs: int) -> slice:
    """The latent frames of the video itself (the a2 layout's first N latent frames are the references)."""
    return slice(num_refs if pipeline.layout.prefix_frames(num_refs) else 0, None)


@torch.no_grad()
def denoising_loss(pipeline: E2VPipeline, batch: dict, x0: torch.Tensor, source: dict, args) -> float:
    """Velocity MSE on the clip's video latents at flow times 0.1 .. 0.9 (fixed noise), given ``source``'s
    references."""
    layout = pipeline.layout
    condition = layout.condition(pipeline.vae, source["refs"], args.frames)
    text = pipeline.text_encoder(list(batch["caption"])).float()
    image = pipeline.image_encoder(source["refs_clip"]).float() if pipeline.image_encoder is not None else None
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(args.seed))
    frames = video_frames(pipeline, batch["refs"].shape[1])
    losses = []
    for t in torch.linspace(0.1, 0.9, 5):
        t = t.reshape(1)
        out = pipeline.dit(layout.dit_input(noisy_latents(x0, noise, t), condition), t * TIMESTEP_SCALE, text, image)
        error = layout.video_output(out, condition) - velocity_target(x0, noise)
        losses.append(error[:, :, frames].pow(2).mean().item())
    return sum(losses) / len(losses)


def evaluate(checkpoint: str, batches: list[dict], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Per case (trained / untrained / shuffled): generated-vs-truth latent MSE, 8x8-block pixel MSE of the
    decoded video, and the denoising loss; means over the held-out clips."""
    solver = {"name": args.solver, "shift": args.shift}
    trained = E2VPipeline.from_checkpoint(checkpoint, solver=solver, device="cpu")
    untrained = E2VPipeline.from_checkpoint(checkpoint, solver=solver, device="cpu")
    spec = torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]["dit"]
    torch.manual_seed(args.seed)
    untrained.dit.load_state_dict(registry.build("dit", spec).state_dict())
    metrics = {metric: {case: [] for case in CASES} for metric in ("latent", "blocks", "loss")}
    for i, batch in enumerate(tqdm(batches, desc=f"held-out clips ({checkpoint})")):
        # the next clip with as many references: its references in the wrong clip
        other = next(batches[(i + k) % len(batches)] for k in range(1, len(batches) + 1)
                     if batches[(i + k) % len(batches)]["refs"].shape == batch["refs"].shape)
        num_refs = batch["refs"].shape[1]
        x0, frames = target_latents(trained, batch), video_frames(trained, num_refs)
        truth = batch["video"][0, :, : args.frames - trained.layout.prefix_frames(num_refs)]
        for case, (pipeline, source) in zip(CASES, ((trained, batch), (untrained, batch), (trained, other))):
            latents = generate(pipeline, batch, source["refs"][0], source["ref_kinds"][0], args, seed=args.seed + i)
            video = pipeline.vae.decode(pipeline.vae.denormalize(latents))[0, :, trained.layout.prefix_frames(num_refs):]
            metrics["latent"][case].append((latents - x0)[:, :, frames].pow(2).mean().item())
            metrics["blocks"][case].append((blocks(video) - blocks(truth)).pow(2).mean().item())
            metrics["loss"][case].append(denoising_loss(pipeline, batch, x0, source, args))
    return {metric: {case: sum(v) / len(v) for case, v in values.items()} for metric, values in metrics.items()}


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
    batches = held_out_batches(args)
    print(f"{len(batches)} held-out clips, {args.steps} {args.solver} steps, guidance {args.guidance}")
    for checkpoint in args.checkpoint:
        result = evaluate(checkpoint, batches, args)
        print(f"\n{checkpoint}")
        for metric, values in result.items():
            print(f"  {LABELS[metric]:<31} " + "  ".join(f"{case} {values[case]:.4f}" for case in CASES)
                  + f"  | trained is {values['untrained'] / values['trained']:.2f}x lower than untrained, "
                  f"{values['shuffled'] / values['trained']:.2f}x lower than shuffled references")


if __name__ == "__main__":
    main()
