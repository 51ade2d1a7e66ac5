"""Training-like steps (encode + tiny DiT forward/backward) from the latent cache vs online encoding, same run.

Online: decode the clip, VAE-encode target and condition, run the text and image encoders, then the DiT step.
Cached: read latents, condition, text states and image tokens from the cache, then the same DiT step.

    python benchmarks/bench_cache.py [--clips 12] [--frames 17] [--size 64] [--epochs 1]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from e2v.datamodules.cache import build_cache
from e2v.synth import synthesize_world
from e2v.datamodules.triplets import TripletDataModule
from e2v.modules.dit import WanDiT
from e2v.modules.image_encoder import ImageEncoder
from e2v.modules.layouts import A2Layout
from e2v.modules.text_encoder import TextEncoder
from e2v.modules.vae import WanVAE


def dit_step(dit, optimizer, layout, x0, condition, text, image) -> None:
    t = torch.rand(x0.shape[0])
    noise = torch.randn_like(x0)
    x_t = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * noise
    out = layout.video_output(dit(layout.dit_input(x_t, condition), t * 1000, text, image), condition)
    loss = torch.nn.functional.mse_loss(out, noise - x0)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def run(dm, dit, optimizer, layout, components, epochs: int) -> float:
    """Seconds per step over ``epochs`` epochs (data loading included)."""
    vae, text_encoder, image_encoder = components
    steps, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in dm.train_dataloader():
            if "latents" in batch:
                inputs = batch["latents"], batch["condition"], batch["text"], batch["image"]
            else:
                with torch.no_grad():
                    video, refs = batch["video"], batch["refs"]
                    inputs = (
                        vae.normalize(vae.encode(layout.target_video(video, refs))),
                        layout.condition(vae, refs, video.shape[2]),
                        text_encoder(batch["caption"]),
                        image_encoder(batch["refs_clip"]),
                    )
            dit_step(dit, optimizer, layout, *inputs)
            steps += 1
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    layout = A2Layout()
    vae = WanVAE.from_preset("tiny").eval()
    text_encoder = TextEncoder.from_preset("tiny", max_length=64)
    image_encoder = ImageEncoder.from_preset("tiny")
    dit = WanDiT.from_preset("tiny", image_dim=image_encoder.dim, text_dim=text_encoder.dim)
    optimizer = torch.optim.AdamW(dit.parameters(), lr=1e-4)
    settings = dict(frames=args.frames, height=args.size, width=args.size, batch_size=args.batch,
                    image_size=image_encoder.image_size, max_references=3, max_skip_fraction=1.0,
                    shuffle_references=False)
    with tempfile.TemporaryDirectory() as root:
        world = synthesize_world(root, num_clips=args.clips, num_heldout=0, frames=33, height=args.size,
                                 width=args.size, progress=False)
        manifest = str(world["train"])
        start = time.perf_counter()
        build_cache(manifest, Path(root) / "cache", vae, text_encoder, image_encoder, layout,
                    [[args.frames, args.size, args.size]], image_size=image_encoder.image_size, max_references=3)
        build_seconds = time.perf_counter() - start
        components = (vae, text_encoder, image_encoder)
        online = run(TripletDataModule(manifest, **settings), dit, optimizer, layout, components, args.epochs)
        cached = run(TripletDataModule(manifest, cache_dir=str(Path(root) / "cache"), **settings), dit, optimizer,
                     layout, components, args.epochs)
    print(f"{args.clips} clips, {args.frames} frames at {args.size}px, batch {args.batch}, tiny VAE/encoders/DiT, "
          f"{torch.get_num_threads()} torch threads")
    print(f"cache build: {build_seconds:.2f} s ({build_seconds / args.clips * 1000:.0f} ms/clip, paid once)")
    print(f"online step: {online * 1000:8.1f} ms")
    print(f"cached step: {cached * 1000:8.1f} ms  (x{online / cached:.2f} faster than online)")


if __name__ == "__main__":
    main()
