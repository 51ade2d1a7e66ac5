"""TripletDataModule throughput (clips/s) on the synthetic world, 1 vs 2 loader workers, same run.

    python benchmarks/bench_loader.py [--clips 32] [--frames 17] [--size 64] [--epochs 2]
"""

import argparse
import tempfile
import time

import torch

from e2v.synth import synthesize_world
from e2v.datamodules.triplets import TripletDataModule


def clips_per_second(manifest: str, workers: int, args) -> float:
    dm = TripletDataModule(manifest, frames=args.frames, height=args.size, width=args.size, batch_size=args.batch,
                           num_workers=workers, image_size=args.image_size, max_skip_fraction=1.0)
    loader = dm.train_dataloader()
    next(iter(loader))  # start the workers and warm the decoder before timing
    start, clips = time.perf_counter(), 0
    for _ in range(args.epochs):
        for batch in loader:
            clips += len(batch["id"])
    return clips / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        world = synthesize_world(root, num_clips=args.clips, num_heldout=0, frames=33, height=args.size,
                                 width=args.size, progress=False)
        one = clips_per_second(str(world["train"]), 1, args)
        two = clips_per_second(str(world["train"]), 2, args)
    print(f"clips {args.clips} x {args.frames} frames at {args.size}px, refs_clip {args.image_size}px, "
          f"batch {args.batch}, {torch.get_num_threads()} torch thread(s)")
    print(f"1 worker : {one:7.1f} clips/s")
    print(f"2 workers: {two:7.1f} clips/s  (x{two / one:.2f} vs 1 worker)")


if __name__ == "__main__":
    main()
