"""Exponential moving average (EMA) of the trainable weights, as a Lightning callback.

After every optimizer step ``ema <- decay * ema + (1 - decay) * param`` for each parameter with ``requires_grad``
(frozen VAE / text / image encoders are not tracked). Under FSDP2 (``ModelParallelStrategy`` + ``fully_shard``) the
parameters are DTensors: the EMA clones them as they are and updates the local shards, so it stays sharded like the
weights and is never gathered during training. With ``save_distributed_checkpoint`` the EMA shards go into the
distributed checkpoint beside the weights (keys ``ema/<parameter name>`` of its ``state_dict``), written and read by
every rank for its own shard; a full checkpoint stores full tensors (gathered one tensor at a time, as the strategy's
full state dict does for the weights), resharded locally on load.

With ``cpu_offload`` the EMA shards live in host memory: each update starts non-blocking copies of the weights into
(pinned) staging buffers and returns; a worker thread waits for them and does the lerp while training goes on. The
EMA is brought up to date (the thread joined) before anything reads it: the next update, a swap, a checkpoint.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.distributed.tensor._dtensor_spec import DTensorSpec, TensorMeta

from e2v.export import DCP_EMA_PREFIX as SHARDED_PREFIX  # EMA keys in a distributed checkpoint: ema/<name>
from e2v.modules.reshard import fsdp_modules, reshard


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The rank-local storage of a (D)Tensor; in-place ops on it update the DTensor."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def trainable_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """``name -> parameter`` for the parameters that train (``requires_grad``), in module order."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


class EMA(Callback):
    """EMA of the trainable weights, swapped in for validation and for sampling (:meth:`swapped`).

    Args:
        decay: EMA decay per update.
        update_every: update the EMA every this many optimizer steps (the decay is not rescaled).
        start_step: before this optimizer step the EMA just copies the weights.
        use_for_validation: swap the EMA weights in for validation loops during fit.
        cpu_offload: keep the EMA (local shards) in CPU memory; each update copies the weights to the CPU
            without blocking and a worker thread applies them (see the module docstring).
        apply_at_fit_end: copy the EMA into the model's weights when fit ends (the final model is the EMA model).
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every: int = 1,
        start_step: int = 0,
        use_for_validation: bool = True,
        cpu_offload: bool = False,
        apply_at_fit_end: bool = False,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        if update_every < 1:
            raise ValueError(f"EMA update_every must be >= 1, got {update_every}")
        self.decay = decay
        self.update_every = update_every
        self.start_step = start_step
        self.use_for_validation = use_for_validation
        self.cpu_offload = cpu_offload
        self.apply_at_fit_end = apply_at_fit_end
        self.shadow: dict[str, torch.Tensor] = {}  # name -> EMA tensor (a DTensor when the parameter is one)
        self.num_updates = 0
        self._last_step = -1
        self._swapped = False
        self._pending: dict[str, Any] | None = None  # a loaded state waiting for the module's parameters
        self._module: torch.nn.Module | None = None
        self._save_sharded = False  # the strategy writes distributed checkpoints and the weights are DTensors
        self._checkpoint_path: str | None = None  # the distributed checkpoint a sharded EMA state is read from
        self._staging: list[torch.Tensor] | None = None  # cpu_offload: host copies of the weights for the next lerp
        self._worker: ThreadPoolExecutor | None = None
        self._applying: Future | None = None  # cpu_offload: the lerp of the last update, in the worker thread
        # (FSDP2 modules, parameters, EMA tensors) of the fit, found at its first update rather than by walking the
        # whole model (frozen encoders included) every step; the trainable set is checked again at swaps and at the end
        self._update_targets: tuple[list, list[torch.Tensor], list[torch.Tensor]] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(decay=self.decay, update_every=self.update_every, start_step=self.start_step)

    @staticmethod
    def find(trainer: pl.Trainer) -> EMA | None:
        """The trainer's EMA callback, or None."""
        return next((cb for cb in trainer.callbacks if isinstance(cb, EMA)), None)

    # ---- state ----------------------------------------------------------------------------------------------
    def _init_shadow(self, module: torch.nn.Module) -> None:
        params = trainable_parameters(module)
        if not params:
            raise ValueError("EMA: the module has no trainable parameters (none with requires_grad)")
        # With cpu_offload a DTensor keeps only its local shard, as a plain CPU tensor (a mesh fixes the device).
        self.shadow = {n: _local(p.detach()).to("cpu", copy=True) if self.cpu_offload else p.detach().clone()
                       for n, p in params.items()}

    def _pairs(self, module: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Rank-local (parameter, EMA) tensor lists, checked against the tracked names."""
        params = trainable_parameters(module)
        if params.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - params.keys())[:5]
            extra = sorted(params.keys() - self.shadow.keys())[:5]
            raise RuntimeError(
                f"EMA tracks different parameters than the module's trainable ones (tracked but missing: {missing}, "
                f"trainable but untracked: {extra}); was requires_grad changed during fit?"
            )
        return [_local(p.detach()) for p in params.values()], [_local(self.shadow[n]) for n in params]

    def _load_into_shadow(self, state: dict[str, Any]) -> None:
        self.flush()
        if "sharded" in state:
            self._load_sharded(state)
            return
        saved = state["shadow"]
        if saved.keys() != self.shadow.keys():
            raise RuntimeError(
                "EMA checkpoint state does not match the module's trainable parameters: "
                f"{len(saved)} saved vs {len(self.shadow)} trainable; first differing names: "
                f"{sorted(saved.keys() ^ self.shadow.keys())[:5]}"
            )
        for name, target in self.shadow.items():
            value, param = saved[name], self._module.get_parameter(name)
            if tuple(value.shape) != tuple(param.shape):
                raise RuntimeError(
                    f"EMA checkpoint tensor {name!r} has shape {tuple(value.shape)}, expected {tuple(param.shape)}"
                )
            if isinstance(param, DTensor):  # full tensor on every rank -> this rank's shard, no communication
                value = distribute_tensor(value.to(param.device), param.device_mesh, param.placements,
                                          src_data_rank=None)
            _local(target).copy_(_local(value))
        self.num_updates = int(state["num_updates"])
        self._last_step = int(state["last_step"])

    def _load_sharded(self, state: dict[str, Any]) -> None:
        """Read this rank's EMA shards from the distributed checkpoint (collective; no rank reads a full tensor)."""
        from torch.distributed.checkpoint import load

        if sorted(state["sharded"]) != sorted(self.shadow):
            raise RuntimeError(
                "EMA checkpoint state does not match the module's trainable parameters: "
                f"{len(state['sharded'])} saved vs {len(self.shadow)} trainable; first differing names: "
                f"{sorted(set(state['sharded']) ^ self.shadow.keys())[:5]}"
            )
        if self._checkpoint_path is None:
            raise RuntimeError("EMA: the checkpoint holds a sharded EMA but its folder is unknown (load it through "
                               "Trainer.fit(ckpt_path=...))")
        load({"state_dict": self._sharded_values(self.shadow)}, checkpoint_id=self._checkpoint_path)
        self.num_updates = int(state["num_updates"])
        self._last_step = int(state["last_step"])

    def _sharded_values(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``ema/<name> -> DTensor`` sharing the EMA's storage: an offloaded local shard is wrapped where it lives (as
        FSDP2's own CPU offload keeps host shards of a GPU mesh), not copied to the mesh's device as ``from_local``
        would, so the distributed checkpoint writes from it and reads into it."""
        out = {}
        for name, value in values.items():
            if not isinstance(value, DTensor):
                param = self._module.get_parameter(name)
                meta = TensorMeta(param.shape, param.stride(), value.dtype)
                value = DTensor(value, DTensorSpec(param.device_mesh, tuple(param.placements), tensor_meta=meta),
                                requires_grad=False)
            out[SHARDED_PREFIX + name] = value
        return out

    def state_dict(self) -> dict[str, Any]:
        """Full (unsharded) CPU tensors, collective under FSDP2 (Lightning calls it on every rank); with distributed
        checkpoints only the counters and names: the shards go into the checkpoint's state dict
        (:meth:`on_save_checkpoint`)."""
        if not self.shadow:
            return {}
        self.flush()
        meta = {"num_updates": self.num_updates, "last_step": self._last_step, "decay": self.decay}
        if self._save_sharded:
            return {"sharded": sorted(self.shadow), **meta}
        shadow = {n: self._full(n, v).detach().cpu().clone() for n, v in self._ema_values().items()}
        return {"shadow": shadow, **meta}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.shadow:  # restored after on_fit_start (strategies that restore after setup)
            self._load_into_shadow(state_dict)
        else:
            self._pending = state_dict

    def _full(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """The unsharded tensor of an EMA entry (collective for sharded parameters)."""
        param = self._module.get_parameter(name)
        if not isinstance(param, DTensor):
            return value
        if not isinstance(value, DTensor):  # an offloaded local shard
            value = DTensor.from_local(value.to(param.device), param.device_mesh, param.placements,
                                       shape=param.shape, stride=param.stride())
        return value.full_tensor()

    def _ema_values(self) -> dict[str, torch.Tensor]:
        """The EMA tensors by name; while swapped they live in the module's parameters."""
        if not self._swapped:
            return self.shadow
        params = trainable_parameters(self._module)
        return {n: p.detach() for n, p in params.items()}

    # ---- hooks ----------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._module = pl_module
        self._update_targets = None
        self._init_shadow(pl_module)
        sharded = any(isinstance(p, DTensor) for p in trainable_parameters(pl_module).values())
        self._save_sharded = sharded and bool(getattr(trainer.strategy, "_save_distributed_checkpoint", False))
        self._last_step = trainer.global_step  # the weights of this step are the EMA's start
        if self._pending is not None:
            self._load_into_shadow(self._pending)
            self._pending = None

    @torch.no_grad()
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step  # counts optimizer steps, so accumulation batches do not update
        if step == self._last_step or step % self.update_every:
            return
        self._last_step = step
        self.update(pl_module, decay=self.decay if step > self.start_step else 0.0)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._save_sharded and self.shadow:  # every rank adds its shards to the distributed state dict
            self.flush()
            reshard(pl_module)
            values = self._sharded_values(self._ema_values())
            if values.keys() & checkpoint["state_dict"].keys():
                raise RuntimeError("EMA: the checkpoint's state dict already holds EMA shards (ema/...): one EMA "
                                   "callback per run can save into a distributed checkpoint")
            checkpoint["state_dict"].update(values)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._checkpoint_path = str(trainer.ckpt_path) if trainer.ckpt_path is not None else None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.flush()
        if self._worker is not None:
            self._worker.shutdown()
            self._worker = None

    @torch.no_grad()
    def update(self, module: torch.nn.Module, decay: float | None = None) -> None:
        """One EMA step from the module's current weights (``decay=0`` copies them). With ``cpu_offload`` the step
        is started, not finished: see :meth:`flush`."""
        if self._update_targets is None or module is not self._module:
            self._update_targets = (fsdp_modules(module), *self._pairs(module))
        sharded, params, shadow = self._update_targets
        for sharded_module in sharded:  # the EMA follows the shards, which the optimizer updated (reshard)
            sharded_module.reshard()
        weight = 1.0 - (self.decay if decay is None else decay)
        self.num_updates += 1
        if not self.cpu_offload:
            torch._foreach_lerp_(shadow, params, weight)
            return
        self.flush()  # the last update's lerp reads the staging buffers
        if self._staging is None:
            pin = any(p.is_cuda for p in params)
            self._staging = [torch.empty_like(e, pin_memory=pin) for e in shadow]
        for buffer, param in zip(self._staging, params):
            buffer.copy_(param, non_blocking=True)
        copied = None
        if any(p.is_cuda for p in params):
            copied = torch.cuda.Event()
            copied.record()
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ema")
        self._applying = self._worker.submit(self._apply, shadow, self._staging, weight, copied)

    @staticmethod
    @torch.no_grad()
    def _apply(shadow: list[torch.Tensor], staged: list[torch.Tensor], weight: float, copied: Any) -> None:
        if copied is not None:
            copied.synchronize()  # the host copies of the weights have arrived
        torch._foreach_lerp_(shadow, staged, weight)

    def flush(self) -> None:
        """Finish an offloaded update still in flight (re-raising its error), so the EMA is up to date."""
        applying, self._applying = self._applying, None
        if applying is not None:
            applying.result()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.use_for_validation and self.shadow and not self._swapped and trainer.state.fn == "fit":
            self._swap(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped:
            self._swap(pl_module)

    @torch.no_grad()
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.apply_at_fit_end and self.shadow and not self._swapped:
            self.flush()
            reshard(pl_module)
            params, shadow = self._pairs(pl_module)
            for p, e in zip(params, shadow):
                p.copy_(e)

    # ---- swapping -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _swap(self, module: torch.nn.Module) -> None:
        """Exchange the weights and the EMA in place (its own inverse), one tensor-sized buffer at a time.

        Under FSDP2 gathered weights left by a forward without backward are freed first: the swap writes the shards,
        and the next forward must gather the swapped values."""
        self.flush()
        reshard(module)
        params, shadow = self._pairs(module)
        for p, e in zip(params, shadow):
            tmp = p.to(e.device, copy=True)
            p.copy_(e)
            e.copy_(tmp)
        self._swapped = not self._swapped

    @contextmanager
    def swapped(self, pl_module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Run the block with the EMA weights in ``pl_module``; the training weights come back afterwards.

        A no-op when the EMA is already swapped in (e.g. inside validation) or tracks nothing yet.
        """
        if self._swapped or not self.shadow:
            yield pl_module
            return
        self._swap(pl_module)
        try:
            yield pl_module
        finally:
            self._swap(pl_module)
