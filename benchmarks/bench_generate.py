"""Generation speed: e2v's pipeline vs the official sampling loop, same weights, same schedule, same seed, same run.

Baseline (the ``official`` preset's loop, as SkyReels-A2's ``infer.py`` samples): diffusers' ``WanTransformer3DModel``
loaded from the same weights (saved with ``save_pretrained``; float64 RoPE tables), cond and uncond as two sequential
forwards per step, the official UniPC schedule (``legacy``: integer timesteps, what diffusers of April 2025 did),
the official negative prompt, noise and posterior-sampled condition from one seeded generator, guidance summed in the
DiT's dtype, no caching. Every fast path below samples with the same ``official`` preset (schedule, seed, negative
prompt, condition), so its PSNR against the baseline's output measures what the speed-up costs, nothing else.
Conditioning (text / image encoders, layout condition) and the VAE decode are shared with ours, so both runs do the
same work outside the denoising loop.

Ours: :class:`E2VPipeline` (cond + uncond in one batched forward, fp32 RoPE tables), each speed option on top of
the last: the cross-attention context recomputed every step (``cache_context = False``, the uncached
output), computed once per video (the default, exact), then the step cache (first-block indicator) and TeaCache's
rescaled time-embedding indicator at each threshold. Prints end-to-end and denoising-loop wall-time ratios against
the baseline, the PSNR of the decoded frames against the baseline's, and the largest end-to-end speed-up whose PSNR
is >= 35 dB.

Weights: a "small" random DiT by default (no trained weights exist offline), or ``--checkpoint run.ckpt`` from
``e2v fit``; random weights make the step-cache accuracy unrepresentative of a trained model (report both). With
``--manifest``, the references, kinds and prompt are those of the manifest's first clip (e.g. the tiny world's
held-out split). Several ``--threshold`` / ``--teacache-threshold`` values print one line each, to pick one.

    python benchmarks/bench_generate.py [--steps 20] [--threshold 0.05 0.1] [--teacache-threshold 0.1 0.3]
        [--checkpoint run.ckpt]
    python benchmarks/bench_generate.py --checkpoint runs/tiny/e2v/checkpoints/last.ckpt \
        --manifest data/tiny_world/heldout.jsonl --height 32 --width 32 --frames 17 --guidance 1 --shift 3
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from e2v import registry
from e2v.pipeline.pipeline import E2VPipeline
from e2v.pipeline.presets import PRESETS
from e2v.pipeline.step_cache import TEACACHE_WAN

MIN_PSNR = 35.0  # dB against the baseline's output: the quality bar for the reported speed-up

SMALL_DIT = dict(num_attention_heads=4, attention_head_dim=64, ffn_dim=1024, num_layers=8, text_dim=32,
                 freq_dim=64, image_dim=32, added_kv_proj_dim=256, in_channels=36)


def small_pipeline(args) -> E2VPipeline:
    solver = {"name": "unipc", "num_steps": args.steps, "shift": args.shift, "schedule": PRESETS["official"].schedule}
    if args.checkpoint:
        return E2VPipeline.from_checkpoint(args.checkpoint, solver=solver, device=args.device, preset="official")
    registry.entries()
    torch.manual_seed(0)
    return E2VPipeline(
        dit=registry.build("dit", {"name": "wan", "preset": "tiny", **SMALL_DIT}),
        vae=registry.build("vae", "wan"),
        text_encoder=registry.build("text_encoder", {"name": "umt5", "max_length": 512}),  # official: 512 tokens
        image_encoder=registry.build("image_encoder", "clip"),
        layout=registry.build("reference_layout", "a2"),
        solver=registry.build("solver", solver),
        device=args.device,
        preset="official",
    )


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1] (peak = the full range)."""
    mse = ((a.float() - b.float()) / 2).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def refs_for(count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return [torch.rand(3, 96 + 16 * i, 80, generator=generator) * 2 - 1 for i in range(count)]


def manifest_request(path: str) -> dict:
    """References (paths), kinds and prompt of the first clip of a manifest."""
    record = json.loads(Path(path).read_text().splitlines()[0])
    refs = [str(Path(path).parent / ref["path"]) for ref in record["references"]]
    return dict(refs=refs, kinds=[ref.get("kind", "object") for ref in record["references"]],
                prompt=record.get("caption", ""))


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class LoopTimer:
    """Wall time of the denoising loop: from the first DiT call to the last (conditioning and decode excluded)."""

    def __init__(self) -> None:
        self.start = self.end = None

    def tick(self, device) -> None:
        synchronize(device)
        now = time.perf_counter()
        self.start = self.start or now
        self.end = now


@torch.no_grad()
def baseline_generate(pipe: E2VPipeline, model, request: dict, timer: LoopTimer) -> torch.Tensor:
    """The official loop: diffusers' transformer, sequential cond / uncond, the official preset's schedule, noise,
    negative prompt and condition (``pipe`` is built with it)."""
    preset = pipe.preset
    height, width, frames = request["height"], request["width"], request["frames"]
    layout_refs, clip_refs = pipe.prepare_references(request["refs"], request.get("kinds"), height, width)
    factor = pipe.vae.spatial_factor
    shape = (1, pipe.vae.z_dim, (frames - 1) // 4 + 1, height // factor, width // factor)
    latents, generator = preset.initial_noise(shape, request["seed"], pipe.device)  # noise first, as officially
    branches = pipe._branches(request["prompt"], preset.negative_prompt, layout_refs, clip_refs, frames,
                              request["guidance"], None, generator)
    condition, text, image = branches["condition"][:1], branches["text"], branches["image"]
    timesteps = pipe.solver.timesteps(request["steps"]).to(pipe.device)
    timer.tick(pipe.device)
    for i, t in enumerate(timesteps):
        x = pipe.layout.dit_input(latents, condition)
        timestep = t.expand(1)
        cond = model(x, timestep, text[0:1], image[0:1], return_dict=False)[0]
        uncond = model(x, timestep, text[1:2], image[1:2], return_dict=False)[0]
        latents = pipe.solver.step(uncond + request["guidance"] * (cond - uncond), i, latents)
    timer.tick(pipe.device)
    video = pipe.vae.decode(pipe.vae.denormalize(latents))[0].float()
    return video[:, preset.prefix_frames(pipe.layout, len(request["refs"])) :].clamp(-1, 1).cpu()


def ours_generate(pipe: E2VPipeline, request: dict, timer: LoopTimer) -> torch.Tensor:
    original = pipe.predict

    def timed_predict(*args, **kwargs):
        timer.tick(pipe.device)  # the first call starts the loop clock
        out = original(*args, **kwargs)
        timer.tick(pipe.device)
        return out

    pipe.predict = timed_predict
    try:
        args = {k: v for k, v in request.items() if k != "refs"}
        return pipe(request["refs"], progress=False, **args)
    finally:
        del pipe.predict


def measure(fn, repeats: int):
    """(output, best end-to-end seconds, best loop seconds) over ``repeats`` runs."""
    best_total = best_loop = math.inf
    out = None
    for _ in range(repeats):
        timer = LoopTimer()
        start = time.perf_counter()
        out = fn(timer)
        best_total = min(best_total, time.perf_counter() - start)
        best_loop = min(best_loop, timer.end - timer.start)
    return out, best_total, best_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--shift", type=float, default=5.0)
    parser.add_argument("--threshold", type=float, nargs="*", default=[0.1], help="step-cache threshold(s)")
    parser.add_argument("--teacache", choices=list(TEACACHE_WAN), default="wan2.1-i2v-14b-480p",
                        help="TeaCache4Wan2.1 fit for the --teacache-threshold rows")
    parser.add_argument("--teacache-threshold", type=float, nargs="*", default=[0.1, 0.2],
                        help="TeaCache threshold(s) (accumulated rescaled change)")
    parser.add_argument("--manifest", default=None, help="take references and prompt from its first clip")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--refs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import WanTransformer3DModel

    pipe = small_pipeline(args)
    with tempfile.TemporaryDirectory() as folder:
        pipe.dit.save_pretrained(folder)
        baseline_model = WanTransformer3DModel.from_pretrained(folder).to(pipe.device).eval()
    inputs = manifest_request(args.manifest) if args.manifest else dict(
        refs=refs_for(args.refs), kinds=None, prompt="a cat chases a red ball over a brick wall")
    request = dict(inputs, height=args.height, width=args.width, frames=args.frames, steps=args.steps,
                   guidance=args.guidance, seed=0)
    cfg = pipe.dit.config
    print(f"device {pipe.device}, threads {torch.get_num_threads()}; DiT {cfg.num_layers} layers x dim {cfg.dim}; "
          f"{args.frames} frames {args.width}x{args.height}, {len(request['refs'])} refs, {args.steps} UniPC steps, "
          f"guidance {args.guidance}")

    base_video, base_total, base_loop = measure(
        lambda timer: baseline_generate(pipe, baseline_model, request, timer), args.repeats)

    def run():
        return measure(lambda timer: ours_generate(pipe, request, timer), args.repeats)

    pipe.enable_step_cache(None)
    pipe.cache_context = False
    uncached, total, loop = run()
    rows = [("baseline (official loop, sequential CFG)", base_total, base_loop, None, ""),
            ("ours: batched CFG", total, loop, psnr(uncached, base_video), "")]
    pipe.cache_context = True
    video, total, loop = run()
    rows.append(("+ context K/V once per video", total, loop, psnr(video, base_video), ""))
    options = [(f"+ step cache {t}", t, None) for t in args.threshold]
    options += [(f"+ TeaCache {t} ({args.teacache})", t, args.teacache) for t in args.teacache_threshold]
    for name, threshold, teacache in options:
        pipe.enable_step_cache(threshold, teacache=teacache)
        video, total, loop = run()
        cache = pipe.step_cache
        rows.append((name, total, loop, psnr(video, base_video), f"{cache.computed}/{cache.computed + cache.skipped} "
                                                                 "steps computed"))
    pipe.enable_step_cache(None)
    print(f"{'run':44s} {'total s':>8s} {'loop s':>8s} {'x total':>8s} {'x loop':>8s} {'PSNR dB':>8s}  note")
    for name, total, loop, quality, note in rows:
        shown = "" if quality is None else f"{quality:8.1f}"
        print(f"{name:44s} {total:8.2f} {loop:8.2f} {base_total / total:8.2f} {base_loop / loop:8.2f} {shown:>8s}  "
              f"{note}")
    passing = [row for row in rows if row[3] is not None and row[3] >= MIN_PSNR]
    name, total, loop, quality, _ = max(passing, key=lambda row: base_total / row[1])
    print(f"largest speed-up at PSNR >= {MIN_PSNR:g} dB vs the baseline: {name}: {base_total / total:.2f}x end to end, "
          f"{base_loop / loop:.2f}x for the loop ({quality:.1f} dB)")


if __name__ == "__main__":
    main()
