"""FSDP2 (and DDP) on 2 CPU (gloo) processes: a bad batch or a non-finite loss on ONE rank skips the step on every
rank (no hang, same step counts, reported once), sample videos go through the sharded DiT with the EMA weights (equal to an unsharded
copy of them), and the EMA is saved sharded in the distributed checkpoint and read back shard by shard."""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import timedelta

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader

from e2v.callbacks import EMA, SampleVideos
from e2v.callbacks.ema import SHARDED_PREFIX
from e2v.tasks.e2v_diffusion import E2VDiffusion

MODEL = {"dit": {"name": "wan", "preset": "tiny"}, "text_encoder": {"name": "umt5", "preset": "tiny", "max_length": 8},
         "max_nonfinite_steps": 1}
STEPS, BAD_BATCH_STEP, NAN_STEP = 5, 1, 2  # rank 1's batch of step 1 is unreadable, rank 0's loss of step 2 is NaN
SAMPLE = {"every_n_steps": 2, "num_samples": 1, "steps": 2, "guidance": 1.0, "at_fit_end": False}


def online_batch(seed: int, b: int = 1, frames: int = 9, size: int = 32) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.rand(b, 3, frames, size, size, generator=g) * 2 - 1,
            "refs": torch.rand(b, 2, 3, size, size, generator=g) * 2 - 1,
            "refs_clip": torch.rand(b, 2, 3, 32, 32, generator=g) * 2 - 1,
            "caption": ["a red star"] * b, "id": [f"clip{seed}-{i}" for i in range(b)]}


def train_batches(module: E2VDiffusion, rank: int) -> list[dict]:
    """Cached-style batches; rank 1's batch BAD_BATCH_STEP has no readable sample, rank 0's NAN_STEP has NaN latents."""
    batches = []
    for step in range(STEPS):
        inputs = module.encode_batch(online_batch(100 * rank + step))
        batch = {"latents": inputs["x0"], "condition": inputs["condition"], "text": inputs["text"],
                 "image": inputs["image"], "id": [f"r{rank}s{step}"]}
        if step == BAD_BATCH_STEP and rank == 1:
            batch = {"skipped": [("r1bad", "unreadable_video", "broken file")], "id": []}
        if step == NAN_STEP and rank == 0:
            batch["latents"] = torch.full_like(batch["latents"], float("nan"))
        batches.append(batch)
    return batches


class WeightsPerStep(L.Callback):
    """Full DiT weights after each training batch (collective), and the global step each batch ended at."""

    def __init__(self):
        self.weights, self.steps = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(trainer.global_step)
        self.weights.append({n: p.full_tensor().clone() for n, p in pl_module.dit.named_parameters()})


class CheckedSamples(SampleVideos):
    """SampleVideos on a fixed online batch; each sample is checked against an unsharded DiT holding the EMA weights."""

    def __init__(self, reference: E2VDiffusion, ema: EMA):
        super().__init__(**SAMPLE)
        self.reference, self.ema, self.checked, self.resharded = reference, ema, [], []

    def _fixed_batches(self, trainer):
        return [online_batch(7)]

    def sample(self, trainer, pl_module):
        outputs, generate = [], pl_module.generate_samples
        pl_module.generate_samples = lambda *args, **kwargs: outputs.append(generate(*args, **kwargs)) or outputs[-1]
        try:
            super().sample(trainer, pl_module)
        finally:
            del pl_module.generate_samples
        # no gathered copy is left behind (it would miss the EMA swap back and the next optimizer step)
        self.resharded.append(all(isinstance(p, DTensor) for p in pl_module.dit.parameters()))
        ema_weights = {n.removeprefix("dit."): full(v, pl_module.get_parameter(n)) for n, v in self.ema.shadow.items()}
        self.reference.dit.load_state_dict(ema_weights)
        expected = self.reference.eval().generate_samples(self.batches[0], steps=SAMPLE["steps"],
                                                          guidance=SAMPLE["guidance"], seed=self.seed)["video"]
        self.checked.append((trainer.global_step, (outputs[0]["video"] - expected).abs().max().item()))


def full(value: torch.Tensor, param: DTensor) -> torch.Tensor:
    """The whole tensor of an EMA entry: a DTensor, or an offloaded local shard laid out like ``param``."""
    if not isinstance(value, DTensor):
        value = DTensor.from_local(value, param.device_mesh, param.placements, shape=param.shape, stride=param.stride())
    return value.full_tensor()


def local(value: torch.Tensor) -> torch.Tensor:
    return value.to_local() if isinstance(value, DTensor) else value


class Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def trainer(root, callbacks, max_steps):
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=True,
                                     timeout=timedelta(seconds=60))  # a rank left waiting fails instead of hanging
    return L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=max_steps, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
                     default_root_dir=root, callbacks=callbacks)


def worker(rank: int, port: int, root, cpu_offload: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    handler = Messages()
    logging.getLogger("e2v.tasks.e2v_diffusion").addHandler(handler)
    torch.manual_seed(0)
    module = E2VDiffusion(**MODEL)
    torch.manual_seed(0)
    reference = E2VDiffusion(**MODEL)  # the same frozen components; gets the EMA weights at each sample
    batches = DataLoader(train_batches(module, rank), batch_size=None)
    ema, weights = EMA(decay=0.5, cpu_offload=cpu_offload), WeightsPerStep()
    samples = CheckedSamples(reference, ema)
    first = trainer(root, [weights, ema, samples], STEPS)
    first.fit(module, train_dataloaders=batches)
    first.save_checkpoint(root / "sharded.ckpt")

    result = {"steps": weights.steps, "global_step": first.global_step, "skipped": module.skipped_steps,
              "nonfinite": module.nonfinite_steps, "messages": handler.messages, "checked": samples.checked,
              "resharded": samples.resharded,
              "unchanged": [all(torch.equal(weights.weights[s][n], weights.weights[s - 1][n]) for n in weights.weights[s])
                            for s in range(1, STEPS)]}
    # resume: a fresh EMA reads its shards back from the distributed checkpoint
    torch.manual_seed(1)
    resumed_module, resumed_ema = E2VDiffusion(**MODEL), EMA(decay=0.5, cpu_offload=cpu_offload)
    trainer(root, [resumed_ema], STEPS).fit(resumed_module, train_dataloaders=batches,
                                            ckpt_path=str(root / "sharded.ckpt"))
    result["ema_restored"] = all(torch.equal(local(resumed_ema.shadow[n]), local(v)) for n, v in ema.shadow.items())
    result["ema_offloaded"] = all(isinstance(v, DTensor) != cpu_offload for v in resumed_ema.shadow.values())
    result["ema_updates"] = (ema.num_updates, resumed_ema.num_updates)
    torch.save(result, root / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(target, root, *args) -> None:
    """``target(rank, port, root, *args)`` on 2 forked processes; fails (killing them) when they hang."""
    context = mp.start_processes(target, args=(free_port(), root, *args), nprocs=2, join=False, start_method="fork")
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-rank fit hung")


@pytest.mark.slow
@pytest.mark.parametrize("cpu_offload", [False, True], ids=["ema-on-device", "ema-cpu-offload"])
def test_one_bad_rank_skips_everywhere_and_sharded_sampling_and_ema(tmp_path, cpu_offload):
    run_two_ranks(worker, tmp_path, cpu_offload)
    results = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    for rank, result in enumerate(results):
        assert result["steps"] == [1, 2, 3, 4, 5] and result["global_step"] == STEPS, rank
        assert result["skipped"] == 2 and result["nonfinite"] == 1, rank
        # the two skipped steps left the weights as they were; the others changed them
        assert result["unchanged"] == [True, True, False, False], rank
        assert [step for step, _ in result["checked"]] == [2, 4], rank
        assert all(error < 1e-5 for _, error in result["checked"]), result["checked"]
        assert result["resharded"] == [True, True], rank
        assert result["ema_restored"] and result["ema_offloaded"], rank
        assert result["ema_updates"] == (STEPS, STEPS), rank
    warnings = results[0]["messages"]
    assert len(warnings) == 2 and results[1]["messages"] == []  # reported once, by rank 0
    assert "global step 1" in warnings[0] and "rank(s) [1] had no readable sample" in warnings[0]
    assert "global step 2" in warnings[1] and "non-finite loss on rank(s) [0]" in warnings[1]
    sample = tmp_path / "samples" / "step_2" / "sample_0.mp4"
    assert sample.is_file() and (tmp_path / "samples" / "step_4" / "sample_0.png").is_file()
    metadata = torch.load(tmp_path / "sharded.ckpt" / "meta.pt", weights_only=True)
    ema_state = next(v for k, v in metadata["callbacks"].items() if k.startswith("EMA"))
    assert "shadow" not in ema_state and all(name.startswith("dit.") for name in ema_state["sharded"])
    from torch.distributed.checkpoint import FileSystemReader

    keys = FileSystemReader(str(tmp_path / "sharded.ckpt")).read_metadata().state_dict_metadata
    assert {f"state_dict.{SHARDED_PREFIX}{name}" for name in ema_state["sharded"]} <= set(keys)


def ddp_worker(rank: int, port: int, root) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module, weights = E2VDiffusion(**MODEL), {}

    class Weights(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            weights[trainer.global_step] = {n: p.detach().clone() for n, p in pl_module.dit.named_parameters()}

    strategy = DDPStrategy(timeout=timedelta(seconds=60))
    L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=STEPS, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
              callbacks=[Weights()]).fit(module, train_dataloaders=DataLoader(train_batches(module, rank), batch_size=None))
    unchanged = [all(torch.equal(weights[s + 1][n], weights[s][n]) for n in weights[s]) for s in range(1, STEPS)]
    torch.save({"steps": sorted(weights), "skipped": module.skipped_steps, "unchanged": unchanged}, root / f"ddp{rank}.pt")


@pytest.mark.slow
def test_ddp_one_bad_rank_skips_everywhere(tmp_path):
    run_two_ranks(ddp_worker, tmp_path)
    for rank in range(2):
        result = torch.load(tmp_path / f"ddp{rank}.pt", weights_only=True)
        assert result == {"steps": [1, 2, 3, 4, 5], "skipped": 2, "unchanged": [True, True, False, False]}, rank
