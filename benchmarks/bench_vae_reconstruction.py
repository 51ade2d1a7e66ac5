"""How well does a video VAE reconstruct held-out clips? PSNR over whole clips, over the still background and over
the moving subjects (pixels the truth's own temporal median does not explain, e2v.bench.pixel_metrics), against
the simplest baseline: a flat video of each clip's mean colour. A preview PNG (truth | reconstruction, frames
side by side) goes to ``--out``.

    python benchmarks/bench_vae_reconstruction.py --manifest data/tiny_world/heldout.jsonl --vae '{"name": "patch", "pretrained": "tiny-world"}'
    python benchmarks/bench_vae_reconstruction.py --manifest data/tiny_world/heldout.jsonl --vae '{"name": "patch", "weights": "runs/vae_asset/export"}'
"""

import argparse
import json
import math
from pathlib import Path

import torch

from e2v import registry
from e2v.bench.pixel_metrics import flat_video, moving_foreground, psnr
from e2v.callbacks.samples import enlarged, evenly_spaced_frames
from e2v.datamodules.video_io import read_video, save_image


def mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="clips to reconstruct (JSONL manifest)")
    parser.add_argument("--vae", default='{"name": "patch", "pretrained": "tiny-world"}', help="registry spec (JSON)")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--out", default="runs/bench_vae", help="folder for the preview PNG ('' = none)")
    args = parser.parse_args()
    root = Path(args.manifest).parent
    records = [json.loads(line) for line in open(args.manifest) if line.strip()][: args.clips]
    vae = registry.build("vae", json.loads(args.vae)).eval()
    scores = {"whole": [], "background": [], "subjects": [], "flat": []}
    rows = []
    for record in records:
        truth = read_video(root / record["video"], None).permute(3, 0, 1, 2).float() / 127.5 - 1  # [3, F, H, W]
        with torch.no_grad():
            reconstruction = vae.decode(vae.encode(truth[None]))[0].clamp(-1, 1)
        moving = moving_foreground(truth)
        scores["whole"].append(psnr(reconstruction, truth))
        scores["background"].append(psnr(reconstruction, truth, ~moving))
        scores["subjects"].append(psnr(reconstruction, truth, moving))
        scores["flat"].append(psnr(flat_video(truth), truth))
        if len(rows) < 8:
            rows.append(torch.cat(evenly_spaced_frames(truth, 4) + [torch.full((3, truth.shape[-2], 2), -1.0)]
                                  + evenly_spaced_frames(reconstruction, 4), dim=-1))
    print(f"{len(records)} clips of {args.manifest}, VAE {args.vae}")
    print(f"  PSNR (dB): whole clips {mean(scores['whole']):.2f} | still background {mean(scores['background']):.2f} | "
          f"moving subjects {mean(scores['subjects']):.2f} | flat mean-colour video {mean(scores['flat']):.2f}")
    if rows and args.out:
        path = Path(args.out) / "reconstructions.png"
        save_image(path, enlarged(torch.cat(rows, dim=-2), 512))
        print(f"preview: {path} (per clip: 4 truth frames | the same 4 reconstructed)")


if __name__ == "__main__":
    main()
