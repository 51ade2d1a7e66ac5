"""Distilled students against their teacher on the tiny world: DiT forwards, end-to-end time, learning margins.

Rows (one sampler each, the same clips, seeds and references, measured in the same run):

  * baseline: the teacher in the ``official`` preset's loop (UniPC, legacy schedule, shift 8, 50 steps, text CFG 5
    with the official negative prompt, posterior-sampled condition), with the layout's frame cut so that its
    frames line up with the truth like every other row's;
  * teacher: the teacher at its own saved settings (``e2v generate``'s defaults for it);
  * teacher 4 steps: the same, naively at 4 steps;
  * step cache: the teacher's settings with ``--step-cache THRESH``;
  * each ``--student`` checkpoint at its own saved schedule (e.g. ``ode``, ``dmd``), and with ``--half`` also at
    every other of its timesteps (a 4-step student at 2 steps).

Columns: DiT forwards per video (samples through the first block: CFG counts twice, skipped steps not at all), the
end-to-end time ratio (baseline seconds / row seconds, encoders and VAE included), the mean PSNR of the row's video
against the teacher's own (same seed and references: how faithfully a fast sampler reproduces it; PSNR against the
truth alone rewards blur, which few-step samplers give), and the margins of
``benchmarks/bench_learning.py``: (a) PSNR own - flat, (b) PSNR own - shuffled references, (c) subject match own -
swapped subjects, then the student's share of the teacher's margins. One table per ``--manifest`` (held-out,
zero-shot, ...) and a preview PNG per manifest: per clip, references | one strip per row | truth.

    python benchmarks/bench_distill.py --checkpoint runs/tiny/e2v/checkpoints/last.ckpt \\
        --student ode=runs/tiny/distill/checkpoints/last.ckpt --student dmd=runs/tiny/distill-dmd/checkpoints/last.ckpt \\
        --manifest data/tiny_world/heldout.jsonl --out runs/tiny/distill/bench
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_learning import (background_of, held_out_items, own_references, partner, preview_row,  # noqa: E402
                            subject_names, subjects, swapped_references)

from e2v.bench.pixel_metrics import flat_video, psnr, subject_match  # noqa: E402
from e2v.callbacks.samples import enlarged  # noqa: E402
from e2v.datamodules.video_io import save_image  # noqa: E402
from e2v.pipeline.pipeline import E2VPipeline  # noqa: E402
from e2v.pipeline.presets import PRESETS  # noqa: E402
from e2v.pipeline.sampling import SamplingSettings, read_saved, resolve  # noqa: E402

OFFICIAL = dataclasses.replace(PRESETS["official"], cut="layout")  # frames aligned with the truth like the others


@dataclasses.dataclass
class Row:
    """One sampler: a pipeline and its settings; collects forwards, seconds and metrics per clip."""

    name: str
    pipe: E2VPipeline
    settings: SamplingSettings
    forwards: list = dataclasses.field(default_factory=list)
    seconds: list = dataclasses.field(default_factory=list)
    metrics: dict = dataclasses.field(default_factory=lambda: {k: [] for k in ("own", "flat", "shuffled", "subj_own",
                                                                               "subj_swapped", "vs_teacher")})

    def generate(self, item: dict, refs: dict, frames: int, seed: int, timed: bool = False) -> torch.Tensor:
        counter = [0]
        hook = self.pipe.dit.blocks[0].register_forward_hook(lambda m, i, o: counter.__setitem__(
            0, counter[0] + i[0].shape[0]))
        start = time.perf_counter()
        try:
            video = self.pipe(list(refs["refs"]), item["caption"][0], kinds=refs["kinds"],
                              height=self.settings.height, width=self.settings.width, frames=frames,
                              steps=self.settings.steps, guidance=self.settings.guidance,
                              image_guidance=self.settings.image_guidance, seed=seed, progress=False)
        finally:
            hook.remove()
        if timed:
            self.seconds.append(time.perf_counter() - start)
            self.forwards.append(counter[0])
        return video

    def mean(self, key: str) -> float:
        values = self.metrics[key]
        return sum(values) / len(values) if values else float("nan")

    def margins(self) -> dict[str, float]:
        return {"a": self.mean("own") - self.mean("flat"), "b": self.mean("own") - self.mean("shuffled"),
                "c": self.mean("subj_own") - self.mean("subj_swapped")}


def pipeline(checkpoint: str, settings: SamplingSettings, preset=None, step_cache: float | None = None) -> E2VPipeline:
    pipe = E2VPipeline.from_checkpoint(checkpoint, solver=settings.solver_spec((preset or PRESETS["e2v"]).schedule),
                                       device="cpu", preset=preset)
    return pipe.enable_step_cache(step_cache)


def build_rows(args: argparse.Namespace) -> list[Row]:
    overrides = {**json.loads(args.teacher_settings), "height": args.size, "width": args.size}
    teacher = resolve(read_saved(args.checkpoint), overrides).settings
    official = dataclasses.replace(teacher, solver="unipc", shift=8.0, steps=50, guidance=5.0, image_guidance=None,
                                   timesteps=None)
    naive = dataclasses.replace(teacher, steps=4, timesteps=None)
    rows = [Row("baseline: official loop, 50 steps, CFG 5", pipeline(args.checkpoint, official, OFFICIAL), official),
            Row(f"teacher, {teacher.steps} steps {teacher.solver}, guidance {teacher.guidance:g}"
                + (f", reference guidance {teacher.image_guidance:g}" if teacher.image_guidance else ""),
                pipeline(args.checkpoint, teacher), teacher),
            Row("teacher, 4 steps", pipeline(args.checkpoint, naive), naive),
            Row(f"teacher, step cache {args.step_cache:g}", pipeline(args.checkpoint, teacher,
                                                                   step_cache=args.step_cache), teacher)]
    for spec in args.student:
        name, _, path = spec.partition("=")
        own = resolve(read_saved(path), {"height": args.size, "width": args.size}).settings
        rows.append(Row(f"{name} student, {own.steps} steps", pipeline(path, own), own))
        if args.half and own.timesteps is not None and own.steps > 1:
            half = dataclasses.replace(own, steps=len(own.timesteps[::2]), timesteps=own.timesteps[::2])
            rows.append(Row(f"{name} student, {half.steps} steps", pipeline(path, half), half))
    return rows


def evaluate(rows: list[Row], items: list[dict], args: argparse.Namespace, manifest: str) -> list[torch.Tensor]:
    """Fill every row's numbers over ``items``; returns the preview rows."""
    names = subject_names(manifest)
    preview = []
    for i, item in enumerate(items):
        n = item["refs"].shape[1]
        truth = item["video"][0, :, : args.frames - rows[0].pipe.layout.prefix_frames(n)].float()
        own_refs = own_references(item)
        subject_refs = own_refs["refs"][subjects(item)]
        background = background_of(own_refs, truth)
        other = partner(items, i, lambda o: o["refs"].shape[1] == n, names)
        donor = partner(items, i, lambda o: len(subjects(o)) == len(subjects(item)), names)
        videos = []
        for row in rows:
            seed = args.seed + i
            own = row.generate(item, own_refs, args.frames, seed, timed=True)
            videos.append(own)
            row.metrics["own"].append(psnr(own, truth))
            row.metrics["flat"].append(psnr(flat_video(truth), truth))
            row.metrics["subj_own"].append(subject_match(own, subject_refs, background))
            if other is not None:
                shuffled = row.generate(item, own_references(other), args.frames, seed)
                row.metrics["shuffled"].append(psnr(shuffled, truth))
            if donor is not None:
                swap = row.generate(item, swapped_references(item, donor), args.frames, seed)
                row.metrics["subj_swapped"].append(subject_match(swap, subject_refs, background))
        for row, video in zip(rows, videos):  # fidelity to the teacher's own video (same seed and references)
            row.metrics["vs_teacher"].append(psnr(video, videos[1]))
        print(f"  clip {i + 1}/{len(items)} {item['id'][0]}: " + ", ".join(
            f"{row.name.split(',')[0]} {row.metrics['own'][-1]:.2f} dB" for row in rows), flush=True)
        if i < args.preview:
            preview.append(preview_row(own_refs["refs"], videos + [truth], args.preview_frames, args.size))
    return preview


def report(rows: list[Row], manifest: str, clips: int) -> None:
    base_seconds = sum(rows[0].seconds)
    teacher = rows[1].margins()
    naive = rows[2].margins()
    print(f"\n{manifest}: {clips} clips, end-to-end seconds of the baseline {base_seconds:.1f}")
    print("| sampler | DiT forwards | end-to-end time ratio | PSNR vs the teacher's video | margins (a) / (b) / (c) | "
          "share of the teacher's |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        m = row.margins()
        share = " / ".join(f"{100 * m[k] / teacher[k]:.0f}%" if teacher[k] > 0 else "n/a" for k in "abc")
        fidelity = "(itself)" if row is rows[1] else f"{row.mean('vs_teacher'):.2f} dB"
        print(f"| {row.name} | {sum(row.forwards) / len(row.forwards):.0f} | {base_seconds / sum(row.seconds):.1f}x | "
              f"{fidelity} | {m['a']:+.2f} / {m['b']:+.2f} / {m['c']:+.3f} | {share} |")
    print(f"(teacher 4 steps margins: {naive['a']:+.2f} / {naive['b']:+.2f} / {naive['c']:+.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the teacher: an E2VDiffusion checkpoint")
    parser.add_argument("--teacher-settings", default="{}", metavar="JSON",
                        help="sampling settings over the teacher's saved ones (a run from before they were saved), "
                             "e.g. '{\"solver\": \"euler\", \"shift\": 3, \"steps\": 20, \"guidance\": 1}'")
    parser.add_argument("--student", action="append", default=[], metavar="NAME=CKPT",
                        help="a distilled student checkpoint, repeatable (e.g. ode=runs/tiny/distill/.../last.ckpt)")
    parser.add_argument("--manifest", action="append", required=True,
                        help="a split to measure on (held-out, zero-shot, ...), repeatable")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=17, help="sampled clip length (4k+1), as the truth clips")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--max-references", type=int, default=3)
    parser.add_argument("--step-cache", type=float, default=0.1)
    parser.add_argument("--half", action="store_true", help="also each student at every other timestep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/tiny/distill/bench", help="folder for the preview PNGs")
    parser.add_argument("--preview", type=int, default=4, help="clips in each preview PNG")
    parser.add_argument("--preview-frames", type=int, default=3)
    args = parser.parse_args()
    if args.clips < 2:
        parser.error("--clips must be >= 2 (the shuffled baseline needs another clip)")
    torch.set_grad_enabled(False)
    rows = build_rows(args)
    for manifest in args.manifest:
        for row in rows:
            row.forwards, row.seconds = [], []
            row.metrics = {k: [] for k in row.metrics}
        items = held_out_items(manifest, args)
        preview = evaluate(rows, items, args, manifest)
        report(rows, manifest, len(items))
        if preview:
            width = max(r.shape[-1] for r in preview)
            image = torch.cat([F.pad(r, (0, width - r.shape[-1]), value=1.0) for r in preview], dim=-2)
            path = Path(args.out) / f"{Path(manifest).stem}_preview.png"
            save_image(path, enlarged(image, 512))
            print(f"preview: {path} (per clip: references | " + " | ".join(r.name for r in rows)
                  + " | truth)")


if __name__ == "__main__":
    main()
