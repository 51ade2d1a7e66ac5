"""``e2v plan --config RECIPE``: parameter counts and per-GPU memory of a training recipe, before launching it.

    e2v plan --config recipes/a2-14b.yaml --gpus 8
    e2v plan --config recipes/a2-14b-lora.yaml --frames 49 --height 480 --width 832 --references 3

The DiT is built on the meta device from the recipe (its weights folder's config.json when it exists here, else the
preset of the recipe's family), so nothing is allocated or read. The frozen VAE / text / image encoders are counted
from the headers of their safetensors files (or from their random-init presets; for an official release folder that
is not here, from the release's known sizes). Memory per GPU, in the recipe's strategy (FSDP2 shards weights,
gradients and optimizer state over the GPUs and gathers ``fsdp.param_dtype`` copies two blocks at a time; DDP
replicates everything and adds a gradient bucket copy), precision (``bf16-mixed``: the parameters' stored dtype plus,
without FSDP, autocast's bf16 copies of fp32 weights; ``bf16-true``: everything bf16; ``32-true``: fp32) and shapes
(the largest bucket, or ``--frames/--height/--width/--references``):

- weights: the DiT as stored (LoRA base quantised to int8 / nf4 when the recipe says so) + the frozen encoders;
- gradients: one per trainable parameter, in its dtype;
- optimizer state: AdamW 2 moments in the parameter's dtype, bitsandbytes 8-bit AdamW about 2 bytes per parameter;
- activations: what the forward keeps for the backward, per sample times the batch size: per block, tokens x
  (a x dim + b x ffn_dim) + context tokens x dim + the attention projections' concatenated weights; with activation
  checkpointing, each block's input plus one block's activations during its recomputation. The coefficients were
  measured on e2v's own DiT (torch profiler allocation trace, CPU); ``tests/test_plan.py`` checks the estimate against
  measured peaks of small training steps. Under sequence parallelism (``SequenceParallelStrategy``, or
  ``--sequence-parallel N``) the video tokens are a rank's share ``ceil(S / N)``, plus one block's Ulysses
  all-to-all buffers; the text / image context stays whole on every rank.

Not counted: the data loader, CUDA context and kernels' workspaces (about 1-3 GB), allocator fragmentation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import yaml

from e2v.argtypes import HelpFormatter

GB = 1024**3
DEFAULT_GPUS = 8  # for ``devices: -1`` / ``auto`` without --gpus
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# parameter counts of the official release's encoders (SkyReels-A2-14B / Wan2.1-I2V-14B), for when the release
# folder is not on this machine, from their configs: umT5-XXL encoder (vocab 256384 x 4096 + 24 layers of attention
# 4 x 4096^2, gated FFN 3 x 4096 x 10240, norms, relative bias), CLIP ViT-H/14 vision tower (32 layers, 1280 wide,
# MLP 5120, 257 positions); the Wan VAE is counted from e2v's ``wan2.1`` VAE preset on the meta device
RELEASE_SIZES = {"text_encoder": 5_680_910_336, "image_encoder": 630_766_080}
CLIP_TOKENS = 257  # CLIP ViT-H/14 tokens per reference at 224 px
LATENT_STRIDE = (4, 8, 8)  # Wan VAE: frames (first alone), height, width


class PlanError(ValueError):
    """A recipe the planner cannot read; the message names the file and key."""


# ------------------------------------------------------------------------------------------------------- recipe
def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_recipe(paths: Sequence[str | Path]) -> dict[str, Any]:
    """The recipes' YAML, later files laid over earlier ones (as repeated ``--config`` do)."""
    merged: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"recipe {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise PlanError(f"recipe {path} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise PlanError(f"recipe {path} must be a mapping (trainer:, model:, data:)")
        merged = _merge(merged, data)
    return merged


def _init_args(recipe: dict[str, Any], section: str) -> dict[str, Any]:
    value = recipe.get(section) or {}
    return dict(value.get("init_args", value) if isinstance(value, dict) else {})


# ------------------------------------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class Shapes:
    """One training sample: pixel ``frames`` x ``height`` x ``width``, ``references``, ``text_tokens``."""

    frames: int
    height: int
    width: int
    references: int
    text_tokens: int
    batch_size: int = 1

    def latent_grid(self, patch: tuple[int, int, int], extra_frames: int = 0) -> tuple[int, int, int]:
        t = (self.frames - 1) // LATENT_STRIDE[0] + 1 + extra_frames
        return (t // patch[0], self.height // LATENT_STRIDE[1] // patch[1], self.width // LATENT_STRIDE[2] // patch[2])


# --------------------------------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """The estimate; byte counts are per GPU."""

    recipe: str
    strategy: str
    gpus: int
    precision: str
    checkpointing: bool
    shapes: Shapes
    tokens: int
    context_tokens: int
    sequence_parallel: int
    parameters: int
    trainable: int
    frozen_parameters: int
    weights: float
    frozen_weights: float
    gradients: float
    optimizer: float
    activations: float
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_gpu(self) -> int:
        return -(-self.tokens // self.sequence_parallel)

    @property
    def total(self) -> float:
        return self.weights + self.frozen_weights + self.gradients + self.optimizer + self.activations

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["total"] = self.total
        out["tokens_per_gpu"] = self.tokens_per_gpu
        return out

    def format(self) -> str:
        s = self.shapes
        lines = [
            f"plan for {self.recipe}",
            f"  strategy {self.strategy} over {self.gpus} GPU(s), precision {self.precision}, activation "
            f"checkpointing {'on' if self.checkpointing else 'off'}",
            f"  sample: {s.frames} frames x {s.height} x {s.width}, {s.references} reference(s), batch {s.batch_size} "
            f"per GPU -> {self.tokens:,} video tokens, {self.context_tokens:,} context tokens (text + image)",
            *([f"  sequence parallel {self.sequence_parallel}: {self.tokens_per_gpu:,} video tokens per GPU, "
               f"{self.gpus // self.sequence_parallel} data-parallel group(s)"] if self.sequence_parallel > 1 else []),
            f"  DiT parameters {self.parameters:,} ({self.parameters / 1e9:.2f} B), trainable {self.trainable:,} "
            f"({100 * self.trainable / max(1, self.parameters):.2f} %); frozen encoders {self.frozen_parameters:,}",
            "  memory per GPU (GiB):",
        ]
        for label, value in (("DiT weights", self.weights), ("frozen encoders", self.frozen_weights),
                             ("gradients", self.gradients), ("optimizer state", self.optimizer),
                             ("activations", self.activations), ("total", self.total)):
            lines.append(f"    {label:<18}{value / GB:10.2f}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ the DiT
def _dit_config(specs: dict[str, Any], family: Any, notes: list[str]):
    """The DiT's config (from its weights folder's config.json, or a preset) and the spec's options."""
    from e2v import registry
    from e2v.modules.dit import PRESETS, WanDiTConfig
    from e2v.modules.weights import read_config

    _, options = registry.split_spec("dit", specs["dit"])
    known = {f.name for f in dataclasses.fields(WanDiTConfig)}
    weights = options.get("weights")
    if weights is not None and (Path(weights) / "config.json").is_file():
        return WanDiTConfig.from_dict(read_config(weights)), options
    if weights is not None:
        family_name = family.get("name") if isinstance(family, dict) else family
        if family_name not in PRESETS:
            raise PlanError(f"DiT weights folder {weights} is not here and family {family_name!r} has no preset to "
                            f"stand in for its config.json; run e2v plan where the weights are")
        notes.append(f"DiT config from the {family_name!r} preset ({weights}/config.json is not here)")
        return WanDiTConfig.from_dict(PRESETS[family_name]), options
    preset = options.get("preset", "tiny")
    if preset not in PRESETS:
        raise PlanError(f"model.init_args.dit: unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    overrides = {k: v for k, v in options.items() if k in known}
    return WanDiTConfig.from_dict({**PRESETS[preset], **overrides}), options


def meta_dit(config, dtype: Optional[str]):
    """The DiT on the meta device, parameters in ``dtype`` (fp32 islands kept, as :meth:`WanDiT.to_dtype`)."""
    from e2v.modules.dit import WanDiT

    with torch.device("meta"):
        dit = WanDiT(config)
    return dit.to_dtype(dtype or "float32")


def adapter_parameters(dit: torch.nn.Module, lora: dict[str, Any]) -> list[torch.nn.Parameter]:
    """The adapters ``lora`` would add to ``dit``, on the meta device: ``A [rank, in]`` and ``B [out, rank]`` for
    each targeted Linear."""
    from e2v.lora import TARGETS, LoRAConfig

    config = LoRAConfig.from_options(lora)
    shapes = [shape for name, m in dit.named_modules()
              if isinstance(m, torch.nn.Linear) and re.fullmatch(TARGETS[config.targets], name)
              for shape in ((config.rank, m.in_features), (m.out_features, config.rank))]
    return [torch.nn.Parameter(torch.empty(shape, device="meta")) for shape in shapes]


def quantized_bytes(dit: torch.nn.Module, mode: str) -> float:
    """Bytes of ``dit`` with its Linear weights quantised (``int8``: 1 byte + a fp32 scale per row; ``nf4``: half a
    byte + a fp32 absmax per 64 values), the layers :data:`e2v.lora.QUANTIZE_SKIP` keeps excepted."""
    from fnmatch import fnmatch

    from e2v.lora import QUANTIZE_SKIP

    total = float(sum(p.numel() * p.element_size() for p in dit.parameters()))
    for name, m in dit.named_modules():
        if type(m) is torch.nn.Linear and not any(fnmatch(name, pattern) for pattern in QUANTIZE_SKIP):
            n = m.weight.numel()
            quantized = n + 4 * m.out_features if mode == "int8" else n / 2 + 4 * n / 64
            total += quantized - n * m.weight.element_size()
    return total


# ------------------------------------------------------------------------------------------- frozen components
def _folder_parameters(folder: Path) -> int:
    from safetensors import safe_open

    from e2v.modules.weights import shard_files

    count = 0
    for path in shard_files(folder):
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            count += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
    return count


def frozen_parameters(kind: str, spec: Any, notes: list[str]) -> tuple[int, float]:
    """``(parameters, bytes)`` of a frozen component spec: from its safetensors headers, its random-init preset, or
    :data:`RELEASE_SIZES` for an official folder that is not here."""
    from e2v import registry

    registry_kind = {"layout": "reference_layout"}.get(kind, kind)
    _, options = registry.split_spec(registry_kind, spec)
    folder = options.get("weights") or options.get("path")
    if folder is not None:
        folder = Path(folder)
        sub = folder / kind
        folder = sub if sub.is_dir() else folder
        if folder.is_dir():
            count = _folder_parameters(folder)
        else:
            count = RELEASE_SIZES[kind] if kind in RELEASE_SIZES else _meta_parameters(kind, {"name": "wan",
                                                                                            "preset": "wan2.1"})
            notes.append(f"{kind}: {folder} is not here; counted as the official release's {count / 1e9:.2f} B")
    else:
        count = _meta_parameters(registry_kind, spec)
    quantize = options.get("quantize")
    per = {"int8": 1.0, "nf4": 0.5}.get(quantize) or BYTES[str(_dtype(options.get("dtype"))).removeprefix("torch.")]
    return count, count * per


def _meta_parameters(kind: str, spec: Any) -> int:
    from e2v import registry

    with torch.device("meta"):
        return sum(p.numel() for p in registry.build(kind, spec).parameters())


def _dtype(value: Any) -> torch.dtype:
    from e2v.modules.weights import parse_dtype

    return parse_dtype(value) or torch.float32


# ------------------------------------------------------------------------------------------ strategy / precision
def sequence_parallel_of(trainer: dict[str, Any], gpus: int, override: Optional[int]) -> int:
    """The SP group size: ``override``, else the recipe's ``SequenceParallelStrategy`` ``sequence_parallel`` (1)."""
    strategy = trainer.get("strategy")
    value = override
    if value is None and isinstance(strategy, dict) and "SequenceParallel" in strategy.get("class_path", ""):
        value = (strategy.get("init_args") or {}).get("sequence_parallel", 1)
    try:
        value = int(value or 1)
    except (TypeError, ValueError):
        raise PlanError(f"trainer.strategy.init_args.sequence_parallel must be an integer, got {value!r}") from None
    if value < 1 or gpus % value:
        raise PlanError(f"sequence_parallel {value} must be >= 1 and divide the {gpus} GPU(s)")
    return value


def strategy_of(trainer: dict[str, Any], gpus: Optional[int], notes: list[str]) -> tuple[str, int]:
    """``("fsdp2" | "ddp" | "single", GPUs)`` from the recipe's trainer section (``gpus`` overrides its devices)."""
    devices, nodes = trainer.get("devices", 1), int(trainer.get("num_nodes", 1) or 1)
    if gpus is None:
        if devices in (-1, "-1", "auto", None):
            gpus = DEFAULT_GPUS
            notes.append(f"devices: {devices} -> planned for {DEFAULT_GPUS} GPUs per node (set --gpus)")
        elif isinstance(devices, (list, tuple)):
            gpus = len(devices)
        else:
            try:
                gpus = int(devices)
            except (TypeError, ValueError):
                raise PlanError(f"trainer.devices {devices!r} is not a GPU count; pass --gpus") from None
        gpus *= nodes
    strategy = trainer.get("strategy")
    name = (strategy.get("class_path", "") if isinstance(strategy, dict) else str(strategy or "")).lower()
    if "modelparallel" in name or "fsdp" in name or "sequenceparallel" in name:
        return "fsdp2", gpus
    return ("ddp" if gpus > 1 else "single"), gpus


PRECISIONS = {"bf16-mixed": "bf16-mixed", "16-mixed": "bf16-mixed", "bf16": "bf16-mixed", "bf16-true": "bf16-true",
              "16-true": "bf16-true", "32-true": "32-true", "32": "32-true", "64-true": "32-true"}


def precision_of(trainer: dict[str, Any]) -> str:
    value = str(trainer.get("precision", "32-true"))
    if value not in PRECISIONS:
        raise PlanError(f"trainer.precision {value!r}: expected one of {', '.join(PRECISIONS)}")
    return PRECISIONS[value]


def optimizer_bytes(model: dict[str, Any], params: list[torch.nn.Parameter], storage: float, notes: list[str]) -> float:
    """Optimizer state bytes of the trainable ``params`` (``storage``: bytes per parameter element)."""
    optimizer = model.get("optimizer") or {"class_path": "torch.optim.AdamW"}
    name = (optimizer.get("class_path", "") if isinstance(optimizer, dict) else str(optimizer)).rsplit(".", 1)[-1]
    if "8bit" in name.lower():  # bitsandbytes: 2 uint8 moments + a fp32 absmax per 256 values; fp32 below 4096
        return float(sum(2 * p.numel() * (1 + 4 / 256) if p.numel() >= 4096 else 8 * p.numel() for p in params))
    count = sum(p.numel() for p in params)
    if name in ("SGD",):
        return count * storage
    if not name.startswith("Adam"):
        notes.append(f"optimizer {name}: counted as AdamW (two moments per parameter)")
    return 2 * count * storage + 4 * len(params)  # + torch's fp32 step counter per parameter tensor


# --------------------------------------------------------------------------------------------------- activations
# Activation bytes per sample, fitted to torch profiler allocation traces of forward + backward steps of e2v's
# WanDiT on CPU (2- vs 4-block models over 5 shapes per precision: dim 128-256, ffn 512-1024, 192-768 tokens, 40-160
# context tokens; residuals under 0.1 % per block, under 4 % outside the blocks). SDPA keeps q, k, v, its output and
# the log-sum-exp, as the GPU flash / cuDNN kernels do.
# Per block: TOKEN_DIM x tokens x dim + TOKEN_FFN x tokens x ffn_dim + CONTEXT_DIM x context x dim (+ weight copies).
PER_BLOCK = {  # precision: (TOKEN_DIM, TOKEN_FFN, CONTEXT_DIM)
    "32-true": (96.6, 8.02, 16.2),
    "bf16-mixed": (76.6, 4.02, 14.2),
    "bf16-true": (76.6, 4.02, 14.3),
}
# With activation checkpointing a block keeps only its input (tokens x dim, in the activation dtype).
CHECKPOINTED_INPUT = {"32-true": 4.08, "bf16-mixed": 2.08, "bf16-true": 2.14}
# Outside the blocks and the backward's own peak (gradients of the block being differentiated, embeddings, head):
# (tokens x dim, tokens x ffn_dim, context x dim, x one block's weight copies), without / with checkpointing.
OUTSIDE_BLOCKS = {
    ("32-true", False): (0.0, 6.66, 14.3, 0.33), ("32-true", True): (0.0, 5.56, 17.6, 0.24),
    ("bf16-mixed", False): (21.3, 1.99, 6.65, 0.16), ("bf16-mixed", True): (7.92, 3.39, 10.9, 0.21),
    ("bf16-true", False): (19.8, 2.33, 6.71, 0.13), ("bf16-true", True): (5.85, 3.89, 11.1, 0.24),
}


def weight_copies(block: torch.nn.Module, block_name: str, precision: str, fused: bool,
                  adapted: set[str]) -> float:
    """Bytes of weight copies one block's forward keeps for its backward: the concatenated q/k/v (self-attention)
    and k/v (text, image) weights of attention groups run as one matmul (``fused``: none of their layers adapted
    by LoRA or quantised), in the compute dtype; under bf16 autocast also the bf16 casts of fp32-stored weights."""
    groups = [("attn1", ("to_q", "to_k", "to_v")), ("attn2", ("to_k", "to_v")), ("attn2", ("add_k_proj", "add_v_proj"))]
    compute = 4 if precision == "32-true" else 2
    total = 0.0
    counted: set[str] = set()
    for attention, names in groups:
        layers = [(f"{attention}.{n}", getattr(block.get_submodule(attention), n)) for n in names]
        if any(layer is None for _, layer in layers) or not fused:
            continue
        if any(f"{block_name}.{name}" in adapted for name, _ in layers):
            continue
        total += compute * sum(layer.weight.numel() for _, layer in layers)
        counted.update(name for name, _ in layers)
    if precision == "bf16-mixed":
        for name, m in block.named_modules():
            if isinstance(m, torch.nn.Linear) and name not in counted and m.weight.dtype == torch.float32:
                total += 2 * m.weight.numel()
    return total


def activation_bytes(dit: torch.nn.Module, precision: str, tokens: int, context: int, checkpointing: bool,
                     adapted: set[str], quantized: bool) -> float:
    """Peak bytes of one sample's activations over a forward + backward (see :data:`PER_BLOCK`): every block's
    saved tensors, or with activation checkpointing every block's input plus one block's while it is recomputed."""
    cfg = dit.config
    per_dim, per_ffn, per_context = PER_BLOCK[precision]
    tokens_part = tokens * (per_dim * cfg.dim + per_ffn * cfg.ffn_dim) + per_context * context * cfg.dim
    copies = [weight_copies(block, f"blocks.{i}", precision, not quantized, adapted)
              for i, block in enumerate(dit.blocks)]
    out_dim, out_ffn, out_context, out_copies = OUTSIDE_BLOCKS[precision, checkpointing]
    outside = (tokens * (out_dim * cfg.dim + out_ffn * cfg.ffn_dim) + out_context * context * cfg.dim
               + out_copies * max(copies))
    if checkpointing:
        return outside + len(copies) * CHECKPOINTED_INPUT[precision] * tokens * cfg.dim + tokens_part + max(copies)
    return outside + len(copies) * tokens_part + sum(copies)


def traced_peak(fn) -> int:
    """Measured peak bytes of the CPU tensors ``fn()`` allocates (the torch profiler's allocation and free events, in
    order): what the tests and ``benchmarks/fit_plan_activations.py`` check the activation estimate against."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


# -------------------------------------------------------------------------------------------------------- estimate
def sample_shapes(recipe: dict[str, Any], specs: dict[str, Any], **overrides: Optional[int]) -> Shapes:
    """The planned sample: the recipe's largest bucket (most pixels) and ``max_references``, text tokens from the
    text encoder's ``max_length``; ``overrides`` (frames, height, width, references, batch_size) replace them."""
    from e2v import registry

    data = _init_args(recipe, "data")
    buckets = data.get("buckets") or [[data.get("frames", 81), data.get("height", 480), data.get("width", 832)]]
    try:
        frames, height, width = max((tuple(int(v) for v in b) for b in buckets), key=math.prod)
    except (TypeError, ValueError):
        raise PlanError(f"data.init_args.buckets must be [[frames, height, width], ...], got {buckets!r}") from None
    text = registry.split_spec("text_encoder", specs["text_encoder"])[1] if specs.get("text_encoder") else {}
    values = dict(frames=frames, height=height, width=width, references=int(data.get("max_references", 3)),
                  text_tokens=int(text.get("max_length", 512)), batch_size=int(data.get("batch_size", 1)))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Shapes(**values)


def distillation_memory(task: str, model: dict[str, Any], lora: Any, fsdp: bool, gpus: int,
                        notes: list[str]) -> tuple[int, int]:
    """``(extra DiT weight copies, activation factor)`` of a distillation task (:mod:`e2v.tasks.distill`): the
    frozen teacher is a second copy unless the student is LoRA (the teacher is its base with the adapters off); the
    ``ode`` student's forward holds ``steps_per_batch`` of its steps per sample."""
    copies = 0 if lora else 1
    factor = 1
    if task.endswith("ODEDistillation"):
        factor = model.get("steps_per_batch") or len(model.get("timesteps") or [1000, 750, 500, 250])
        notes.append(f"ode distillation: the student's forward holds {factor} of its steps per sample")
    if task.endswith("DMDDistillation"):
        notes.append("dmd: the fake-score critic is a third DiT, trained: its gradients and optimizer state are not "
                     "counted (about as much again as the student's)")
        copies += 1
    notes.append("distillation teacher: " + ("the student's frozen base with the LoRA adapters off (no copy)" if lora
                                             else "a frozen copy of the DiT") + "; its CFG forwards run without "
                 "gradients (no stored activations)")
    return copies, factor


def estimate(configs: Sequence[str | Path], gpus: Optional[int] = None, sequence_parallel: Optional[int] = None,
             **shape_overrides: Optional[int]) -> Plan:
    """The :class:`Plan` of the recipe ``configs`` (layered like repeated ``--config``); ``sequence_parallel``
    overrides the recipe's SP group size."""
    from e2v import registry
    from e2v.families import COMPONENTS, resolve
    from e2v.lora import TARGETS, LoRAConfig

    recipe = load_recipe(configs)
    notes: list[str] = []
    trainer, model = recipe.get("trainer") or {}, _init_args(recipe, "model")
    try:
        specs = resolve(model.get("family"), {key: model.get(key) for key in COMPONENTS})
    except (KeyError, TypeError, ValueError) as err:
        raise PlanError(f"model.init_args: cannot resolve the components: {err}") from None
    strategy, gpus = strategy_of(trainer, gpus, notes)
    sp = sequence_parallel_of(trainer, gpus, sequence_parallel)
    if sp > 1 and strategy != "fsdp2":
        raise PlanError("sequence parallelism needs trainer.strategy e2v.strategies.SequenceParallelStrategy")
    precision = precision_of(trainer)
    config, options = _dit_config(specs, model.get("family"), notes)
    dit = meta_dit(config, "bfloat16" if precision == "bf16-true" else options.get("dtype"))
    lora = model.get("lora")
    quantize = (lora or {}).get("quantize")
    parameters = sum(p.numel() for p in dit.parameters())
    adapted: set[str] = set()
    if lora:
        targets = TARGETS[LoRAConfig.from_options(lora).targets]
        adapted = {name for name, _ in dit.named_modules() if re.fullmatch(targets, name)}
        params = adapter_parameters(dit, lora)
        trainable = sum(p.numel() for p in params)
        storage = 2 if precision == "bf16-true" else 4  # adapters train in fp32 (bf16 when Lightning casts all)
        base = quantized_bytes(dit, quantize) if quantize else float(sum(p.numel() * p.element_size()
                                                                          for p in dit.parameters()))
        weights_total = base + trainable * storage
        notes.append("LoRA: activations counted as for full fine-tuning, an upper bound (frozen linears keep no "
                     "input for a weight gradient; measured 0.5-0.7x of it on small CPU runs)")
    else:
        params = list(dit.parameters())
        trainable = parameters
        storage = sum(p.numel() * p.element_size() for p in params) / parameters
        weights_total = float(sum(p.numel() * p.element_size() for p in params))
    gradients = trainable * storage
    optimizer = optimizer_bytes(model, params, storage, notes)

    layout = registry.build("reference_layout", specs["layout"])
    shapes = sample_shapes(recipe, specs, **shape_overrides)
    extra_frames = shapes.references if type(layout).__name__ == "TemporalAppendLayout" else 0
    tokens = math.prod(shapes.latent_grid(config.patch_size, extra_frames))
    image_tokens = CLIP_TOKENS * shapes.references if layout.uses_image_tokens else 0
    context = shapes.text_tokens + image_tokens
    checkpointing = bool(options.get("gradient_checkpointing", False))
    fsdp = strategy == "fsdp2"
    computed = dit
    if fsdp and precision == "bf16-mixed":  # the blocks run on FSDP2's gathered copies, in fsdp.param_dtype
        param_dtype = (model.get("fsdp") or {}).get("param_dtype", "bfloat16")
        computed = meta_dit(config, str(_dtype(param_dtype)).removeprefix("torch."))
    local_tokens = -(-tokens // sp)  # a sequence-parallel rank's share (padded)
    activations = shapes.batch_size * activation_bytes(computed, precision, local_tokens, context, checkpointing,
                                                       adapted, quantize is not None)
    if sp > 1:
        # one block's Ulysses exchange: q, k, v and the attention output, each also in its head-split form
        activations += shapes.batch_size * 8 * local_tokens * computed.config.dim * (4 if precision == "32-true" else 2)
        notes.append(f"sequence parallel {sp}: per-token activations of {local_tokens:,} tokens per GPU (+ one "
                     "block's all-to-all buffers); the text / image context is whole on every GPU")
    if fsdp:
        block = max(sum(p.numel() for p in b.parameters()) for b in dit.blocks)
        gathered = 2 * block * (2 if precision != "32-true" else 4)  # the block running and the one prefetched
        weights_total = weights_total / gpus + gathered
        gradients = gradients / gpus + block * 4  # one block's unsharded gradients before the reduce-scatter
        optimizer /= gpus
        notes.append("FSDP2: weights, gradients and optimizer state sharded over the GPUs, plus two gathered blocks")
    elif strategy == "ddp":
        gradients *= 2  # DDP's gradient buckets are a second copy (gradient_as_bucket_view=False)
    task = str((recipe.get("model") or {}).get("class_path", ""))
    if task.startswith("e2v.tasks.distill."):
        copies, extra_activations = distillation_memory(task, model, lora, strategy == "fsdp2", gpus, notes)
        activations *= extra_activations
        weights_total += copies * float(sum(p.numel() * p.element_size() for p in dit.parameters())) / (
            gpus if fsdp else 1)
    frozen_count, frozen_bytes = 0, 0.0
    for kind in ("vae", "text_encoder", "image_encoder"):
        if specs.get(kind) is not None and (kind != "image_encoder" or layout.uses_image_tokens):
            count, size = frozen_parameters(kind, specs[kind], notes)
            size = min(size, 2.0 * count) if precision == "bf16-true" else size  # Lightning casts the whole module
            frozen_count, frozen_bytes = frozen_count + count, frozen_bytes + size
    return Plan(recipe=", ".join(str(c) for c in configs), strategy=strategy, gpus=gpus, precision=precision,
                checkpointing=checkpointing, shapes=shapes, tokens=tokens * shapes.batch_size,
                context_tokens=context, sequence_parallel=sp, parameters=parameters, trainable=trainable, frozen_parameters=frozen_count,
                weights=weights_total, frozen_weights=frozen_bytes, gradients=gradients, optimizer=optimizer,
                activations=activations, notes=notes)


def plan_command(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``e2v plan``; returns the exit code (2 for a recipe it cannot read)."""
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="e2v plan", description="Parameters and per-GPU memory of a recipe.")
    parser.add_argument("--config", action="append", required=True, help="recipe YAML (repeatable, later wins)")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs in all (default: the recipe's devices x nodes)")
    for name in ("frames", "height", "width", "references", "batch-size"):
        parser.add_argument(f"--{name}", type=int, default=None)
    parser.add_argument("--sequence-parallel", type=int, default=None,
                        help="GPUs per sequence-parallel group (default: the recipe's SequenceParallelStrategy, or 1)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args(argv)
    try:
        plan = estimate(args.config, args.gpus, args.sequence_parallel, frames=args.frames, height=args.height, width=args.width,
                        references=args.references, batch_size=args.batch_size)
    except PlanError as err:
        print(f"e2v plan: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_dict(), indent=1) if args.json else plan.format())
    return 0
