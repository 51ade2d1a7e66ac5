"""LoRA adapters on the DiT, through peft: a frozen (optionally int8 / nf4 quantised) base plus trainable low-rank
updates ``W x + (alpha / rank) B A x`` on chosen attention projections.

A recipe turns it on with ``model.init_args.lora: {rank: 32, alpha: 32, targets: attention, quantize: int8}``
(:class:`LoRAOptions`). ``targets``: ``image_kv`` (each block's ``attn2.add_k_proj`` / ``attn2.add_v_proj``, the
reference image branch) or ``attention`` (every projection of self- and cross-attention). Only the adapter
tensors train, so the optimizer state and the checkpoints hold only them (:func:`adapter_state`); the base comes
back from the DiT spec's weights. :func:`attach_adapter` puts a trained adapter on a DiT (``e2v generate --lora``),
:func:`merge_lora` folds it into the base weights and :func:`merged_weights` gives the merged DiT's state dict
(``e2v export CHECKPOINT --merge-lora``: a release root usable by ``--weights``).

Adapter tensor names are peft's: ``blocks.3.attn2.add_k_proj.lora_A.default.weight`` ``[rank, in]`` and
``...lora_B.default.weight`` ``[out, rank]`` (B starts at zero, so a fresh adapter leaves the DiT unchanged).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping, Optional, TypedDict

import torch
from torch import nn

from e2v.modules.quantize import BITSANDBYTES_MODES as QUANTIZE_MODES  # peft wraps bitsandbytes layers only
from e2v.modules.weights import CheckpointError, load_checkpoint

ADAPTER = "default"  # peft's adapter name
TARGETS = {
    "image_kv": r"blocks\.\d+\.attn2\.(add_k_proj|add_v_proj)",
    "attention": r"blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0|add_k_proj|add_v_proj)",
}
_ADAPTER_KEY = re.compile(r"\.lora_[AB]\.")
# kept in full precision when the base is quantised: the time embedding casts its input to its weight's dtype,
# and the output projection is small and sensitive (the sampling pipeline skips the same layers)
QUANTIZE_SKIP = ("condition_embedder.*", "proj_out")


class LoRAOptions(TypedDict, total=False):
    """The recipe's ``lora`` mapping (checked when the recipe is parsed); see :class:`LoRAConfig`."""

    rank: int
    alpha: float
    dropout: float
    targets: Literal["image_kv", "attention"]
    quantize: Optional[Literal["int8", "nf4"]]


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA settings. ``rank``: adapter rank; ``alpha``: scale numerator (update = alpha / rank * B A x);
    ``dropout``: on the adapter input; ``targets``: a key of :data:`TARGETS`; ``quantize``: None (the base keeps
    the DiT spec's dtype, e.g. bf16), ``int8`` or ``nf4`` (bitsandbytes weight-only, frozen base only)."""

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = "image_kv"
    quantize: Optional[str] = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.rank, int) or self.rank < 1:
            problems.append(f"rank must be an integer >= 1, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            problems.append(f"alpha must be > 0, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.targets not in TARGETS:
            problems.append(f"targets must be one of {', '.join(TARGETS)}, got {self.targets!r}")
        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            problems.append(f"quantize must be null or one of {', '.join(QUANTIZE_MODES)}, got {self.quantize!r}")
        if problems:
            raise ValueError("lora: " + "; ".join(problems))

    @classmethod
    def from_options(cls, options: Optional[Mapping[str, Any]]) -> Optional["LoRAConfig"]:
        """The config of a recipe's ``lora`` mapping (None: LoRA off); unknown keys are an error naming them."""
        if options is None:
            return None
        if not isinstance(options, Mapping):
            raise ValueError(f"lora must be a mapping such as {{rank: 16, targets: image_kv}}, got {options!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"lora: unknown option(s) {unknown}; it accepts {', '.join(known)}")
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def is_adapter_key(key: str) -> bool:
    """True for a LoRA adapter tensor name (``...lora_A.default.weight``)."""
    return _ADAPTER_KEY.search(key) is not None


def adapter_state(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The adapter entries of a state dict, names without ``prefix`` (e.g. ``"dit."``)."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and is_adapter_key(k)}


def drop_base(state: dict[str, Any], prefix: str) -> None:
    """Remove the frozen base entries under ``prefix`` (everything but the adapters) from a state dict, in place."""
    for key in [k for k in state if k.startswith(prefix) and not is_adapter_key(k)]:
        del state[key]


def apply_lora(dit: nn.Module, config: LoRAConfig) -> nn.Module:
    """Freeze ``dit``, quantise its base Linears when ``config.quantize`` says so, and inject fresh LoRA adapters
    (peft) into the :data:`TARGETS` layers, in place. Only the adapter tensors have ``requires_grad``."""
    from peft import LoraConfig, inject_adapter_in_model

    if any(p.is_meta for p in dit.parameters()):
        raise ValueError("lora needs a DiT with real weights, got one on the meta device (fsdp sharded loading): "
                         "LoRA trains on one GPU without fsdp (recipes/a2-14b-lora.yaml)")
    if not any(re.fullmatch(TARGETS[config.targets], name) for name, _ in dit.named_modules()):
        hint = " (this DiT has no image branch; use targets: attention)" if config.targets == "image_kv" else ""
        raise ValueError(f"lora.targets {config.targets!r} matches no layer of {type(dit).__name__}{hint}")
    dit.requires_grad_(False)
    if config.quantize is not None:
        from e2v.modules.quantize import quantize_linears

        quantize_linears(dit, config.quantize, skip=QUANTIZE_SKIP)
        # peft picks its bitsandbytes LoRA layers (quantisation-aware merge) from these flags
        dit.is_loaded_in_8bit = config.quantize == "int8"
        dit.is_loaded_in_4bit = config.quantize == "nf4"
    peft_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                             target_modules=TARGETS[config.targets], init_lora_weights=True)
    inject_adapter_in_model(peft_config, dit, adapter_name=ADAPTER)
    for name, param in dit.named_parameters():
        param.requires_grad_(is_adapter_key(name))
    return dit


@contextlib.contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` computing as its frozen base for the block (every LoRA adapter off), then adapted again: the
    teacher of a LoRA student shares the student's base weights."""
    layers = [layer for _, layer in lora_layers(module)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield module
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def lora_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, peft LoRA layer)`` of every adapted layer in ``module``."""
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in module.named_modules() if isinstance(m, LoraLayer)]


@torch.no_grad()
def merge_lora(dit: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (``W += alpha / rank * B A``) and put the plain base layer back, in
    place: the result has no LoRA layer and computes what the adapted model computed. The base must not be
    quantised (merge into a full-precision base: load it without ``quantize``)."""
    layers = lora_layers(dit)
    if not layers:
        raise ValueError(f"{type(dit).__name__} has no LoRA layer to merge")
    for name, layer in layers:
        base = layer.get_base_layer()
        if type(base) is not nn.Linear:
            raise ValueError(f"cannot merge the LoRA of {name} into a {type(base).__name__} (quantised) base; load "
                             "the base in full precision (without lora.quantize) to merge")
        layer.merge(adapter_names=[ADAPTER])
        parent_name, _, attribute = name.rpartition(".")
        setattr(dit.get_submodule(parent_name) if parent_name else dit, attribute, base)
    for flag in ("is_loaded_in_8bit", "is_loaded_in_4bit", "peft_config"):
        dit.__dict__.pop(flag, None)
    return dit


def load_adapter(
    path: str | os.PathLike, ema: bool = True
) -> tuple[LoRAConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """A LoRA training checkpoint (``E2VDiffusion`` with ``lora``): its LoRA config, its hyper-parameters and its
    adapter tensors (DiT names, no ``dit.``); the EMA of the adapters when the checkpoint has one and ``ema``."""
    from e2v.pipeline.pipeline import _ema_weights

    checkpoint = load_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or not hparams.get("lora") or "dit" not in hparams:
        raise CheckpointError(f"{path} is not a LoRA checkpoint: its hyper_parameters have no 'lora' settings "
                              "(train with model.init_args.lora to make one)")
    state = adapter_state(checkpoint.get("state_dict") or {}, prefix="dit.")
    if ema:
        state.update({k: v for k, v in _ema_weights(checkpoint).items() if is_adapter_key(k)})
    if not state:
        raise CheckpointError(f"{path} holds no LoRA adapter tensors (names with lora_A / lora_B)")
    return LoRAConfig.from_options(hparams["lora"]), hparams, state


@torch.no_grad()
def load_adapter_tensors(dit: nn.Module, adapters: Mapping[str, Any], source: str) -> None:
    """Copy ``adapters`` (DiT names; tensors or lazily read ones with ``load()``) into the LoRA layers of ``dit``.
    Raises :class:`CheckpointError` naming ``source`` when names or shapes differ."""
    targets = dict(adapter_state(dit.state_dict(keep_vars=True)))
    missing, unexpected = sorted(set(targets) - set(adapters)), sorted(set(adapters) - set(targets))
    wrong = [f"{k}: {tuple(adapters[k].shape)} vs {tuple(targets[k].shape)}"
             for k in sorted(set(targets) & set(adapters)) if tuple(adapters[k].shape) != tuple(targets[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(f"LoRA adapter {source} does not fit this DiT: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}, wrong shape {wrong[:5]}")
    for key, tensor in adapters.items():
        targets[key].copy_(tensor if isinstance(tensor, torch.Tensor) else tensor.load())


def attach_adapter(dit: nn.Module, path: str | os.PathLike, merge: bool = True, ema: bool = True) -> nn.Module:
    """Put the adapter of the LoRA checkpoint ``path`` on ``dit`` (in place): injected on a full-precision base
    (the checkpoint's ``quantize`` is a training-time choice and not repeated), loaded, and merged when ``merge``
    (``e2v generate --lora``). Raises :class:`CheckpointError` when the adapter does not fit the DiT."""
    config, _, state = load_adapter(path, ema=ema)
    apply_lora(dit, dataclasses.replace(config, quantize=None))
    load_adapter_tensors(dit, state, str(path))
    dit.requires_grad_(False)
    return merge_lora(dit) if merge else dit


def merged_weights(spec: Any, lora: Mapping[str, Any], adapters: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The full DiT state dict of the base DiT ``spec`` (a registry spec whose ``weights`` folder holds the base)
    with the ``lora`` settings' adapters (``adapters``: DiT names) merged in: what ``e2v export --merge-lora``
    writes. The base is loaded in full (in the spec's dtype) on the CPU."""
    from e2v import registry

    if registry.split_spec("dit", spec)[1].get("weights") is None:
        raise CheckpointError(f"{source}: the base DiT of a LoRA run must come from a weights folder to be merged "
                              f"into, but its DiT spec {spec} is a random-init preset")
    config = dataclasses.replace(LoRAConfig.from_options(lora), quantize=None)
    dit = apply_lora(registry.build("dit", spec), config)
    load_adapter_tensors(dit, adapters, source)
    return merge_lora(dit).state_dict()
