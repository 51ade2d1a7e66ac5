"""How far the learning benchmark's colour and shape margins can go through the run's VAE (issue 23, items 2(c), 2(d)).

A DiT only makes latents: the best it can hand the decoder is the truth's own latents. This script scores the truth
clips of each split and their VAE reconstructions (the reference prefix and the clip, encoded and decoded as the
run's layout trains on them) with the measures of ``bench_learning.py``:
- (c) colour match of the foreground (unlike the clip's plate) with the clip's subject references; against it, a
  donor clip's truth (its foreground against its own plate) and its reconstruction (other subjects, the same
  count) scored with the same references: what drawing another clip's subjects perfectly gives, the level a
  perfect model's swapped-subjects video would reach (where a split's subjects share a narrow palette, as the
  zero-shot split's two hue bands, that level is high);
- (d) shape match with the clip's subject references minus with the donor's (as ``bench_learning`` computes the
  truth's margin).
The reconstruction's margins are what a DiT that gets every latent right would score, so a margin threshold above
them cannot be met by training the DiT alone. Two kinds of latent error are scored as controls, each at a PSNR a
model reaches: Gaussian noise added to the truth's latents (normalised space, ``--noise`` sigmas) and the truth's
latents averaged over 3x3 latent pixels (smoothing), each decoded; their PSNR and (d) tell which kind of error a
shape survives. Whole run on the main job's world: about a minute.

    python benchmarks/bench_vae_ceiling.py --checkpoint runs/tiny/e2v/checkpoints/last.ckpt \
      --split heldout=data/tiny_world/heldout.jsonl --split zeroshot=data/tiny_world/zeroshot.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_learning import (add_split_arguments, background_of, held_out_items, own_references,  # noqa: E402
                            parse_splits, partner, subject_names, subjects, swapped_references)

from e2v.bench.pixel_metrics import psnr, shape_match, subject_match  # noqa: E402
from e2v.pipeline.pipeline import E2VPipeline  # noqa: E402


def target_latents(pipeline: E2VPipeline, video: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """Raw latents ``[1, 16, T, h, w]`` of the clip ``video [3, F, H, W]`` as the layout's training target (the
    references ``refs [N, 3, H, W]`` in front)."""
    with torch.no_grad():
        return pipeline.vae.encode(pipeline.layout.target_video(video[None].float(), refs[None].float()))


def decoded(pipeline: E2VPipeline, latents: torch.Tensor, num_refs: int,
            spoil: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``[3, F - prefix, H, W]``: raw ``latents`` decoded, the reference prefix cut; ``spoil`` changes them in the
    normalised space first."""
    with torch.no_grad():
        if spoil is not None:
            latents = pipeline.vae.denormalize(spoil(pipeline.vae.normalize(latents)))
        video = pipeline.vae.decode(latents)[0].clamp(-1, 1)
    return video[:, pipeline.layout.prefix_frames(num_refs):]


def reconstructed(pipeline: E2VPipeline, video: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """``[3, F - prefix, H, W]``: the clip ``video [3, F, H, W]`` after the VAE, as the layout's training target
    (the references ``refs [N, 3, H, W]`` in front) is encoded and decoded, the prefix cut."""
    return decoded(pipeline, target_latents(pipeline, video, refs), len(refs))


def latent_controls(noise: list[float], seed: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """``{name: spoil}``: Gaussian noise of each sigma (drawn from ``seed``), and a 3x3 spatial average."""
    generator = torch.Generator().manual_seed(seed)

    def noisy(sigma: float) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda z: z + sigma * torch.randn(z.shape, generator=generator)

    controls = {f"noise {sigma:g}": noisy(sigma) for sigma in noise}
    controls["3x3 average"] = lambda z: F.avg_pool3d(z, (1, 3, 3), 1, (0, 1, 1), count_include_pad=False)
    return controls


def ceiling(split: str, manifest: str, pipeline: E2VPipeline, args: argparse.Namespace) -> dict[str, float]:
    """Mean scores of a split's truth clips, their reconstructions and their donors' truths."""
    items = held_out_items(manifest, args)
    names = subject_names(manifest)
    scores: dict[str, list[float]] = {}
    for i, item in enumerate(items):
        n = item["refs"].shape[1]
        prefix = pipeline.layout.prefix_frames(n)
        truth = item["video"][0, :, : args.frames - prefix].float()
        refs = item["refs"][0]
        own = refs[subjects(item)]
        latents = target_latents(pipeline, item["video"][0], refs)
        rec = decoded(pipeline, latents, n)
        donor = partner(items, i, lambda o: len(subjects(o)) == len(subjects(item)), names)
        if donor is None:
            continue
        donated = swapped_references(item, donor)["refs"][subjects(item)]
        for name, spoil in latent_controls(args.noise, args.seed + i).items():
            spoilt = decoded(pipeline, latents, n, spoil)
            scores.setdefault(f"psnr {name}", []).append(psnr(spoilt, truth))
            scores.setdefault(f"shape {name}", []).append(shape_match(spoilt, own) - shape_match(spoilt, donated))
        donor_truth = donor["video"][0, :, : args.frames - pipeline.layout.prefix_frames(donor["refs"].shape[1])]
        donor_rec = reconstructed(pipeline, donor["video"][0], donor["refs"][0])
        plate = background_of(own_references(item), truth)
        donor_plate = background_of(own_references(donor), donor_truth.float())
        for key, value in (("psnr_rec", psnr(rec, truth)),
                           ("colour_truth", subject_match(truth, own, plate)),
                           ("colour_rec", subject_match(rec, own, plate)),
                           ("colour_donor", subject_match(donor_truth.float(), own, donor_plate)),
                           ("colour_donor_rec", subject_match(donor_rec, own, donor_plate)),
                           ("shape_truth", shape_match(truth, own) - shape_match(truth, donated)),
                           ("shape_rec", shape_match(rec, own) - shape_match(rec, donated))):
            scores.setdefault(key, []).append(value)
    means = {k: sum(v) / len(v) for k, v in scores.items()}
    print(f"{split}: {len(scores['psnr_rec'])} clips with a donor; VAE reconstruction {means['psnr_rec']:.2f} dB")
    print(f"  colour match with own subject refs: truth {means['colour_truth']:.3f} | VAE reconstruction "
          f"{means['colour_rec']:.3f} | donor's truth {means['colour_donor']:.3f}, its reconstruction "
          f"{means['colour_donor_rec']:.3f}")
    print(f"  (c) own - swapped for a perfect model: truth - donor's truth "
          f"{means['colour_truth'] - means['colour_donor']:+.3f} | through the VAE "
          f"{means['colour_rec'] - means['colour_donor_rec']:+.3f}")
    print(f"  (d) shape margin own - swapped refs: truth {means['shape_truth']:+.3f} | VAE reconstruction "
          f"{means['shape_rec']:+.3f}")
    controls = [key[len("psnr "):] for key in means if key.startswith("psnr ") and key != "psnr_rec"]
    print("  truth latents spoilt, then decoded: " + " | ".join(
        f"{name} {means['psnr ' + name]:.2f} dB, (d) {means['shape ' + name]:+.3f}" for name in controls))
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a run whose VAE and layout are scored")
    add_split_arguments(parser)
    parser.add_argument("--noise", type=float, nargs="*", default=[0.2, 0.5],
                        help="sigmas of the Gaussian-noise controls (normalised latents)")
    parser.add_argument("--seed", type=int, default=0, help="the noise of clip i is drawn from seed + i")
    args = parser.parse_args()
    if args.clips < 2:
        parser.error("--clips must be >= 2 (each clip needs a donor)")
    pipeline = E2VPipeline.from_checkpoint(args.checkpoint, device="cpu")
    for split, manifest in parse_splits(args, parser).items():
        ceiling(split, manifest, pipeline, args)


if __name__ == "__main__":
    main()
