"""Sequence-parallel (Ulysses) training on gloo CPU ranks equals single-rank training.

- one step: the flow loss and every DiT gradient with SP 2, SP 4 and FSDP2 2 x SP 2 (the real ``configure_model``:
  FSDP2 over all ranks, tokens split over the SP group) equal a single unsharded process's on the same samples, for
  an even token count (32) and an uneven one (27 tokens: padded to 28), also with activation checkpointing;
- ten Lightning steps (``SequenceParallelStrategy``, sampler and per-step noise by data-parallel rank) give the
  same weights: SP 2 on 2 ranks against 1 process, FSDP2 2 x SP 2 on 4 ranks against FSDP2 on 2 ranks.

Tolerance: fp32, atol 1e-5 / rtol 1e-4 (the collectives only reorder float sums). The DiT is the tiny preset with 4
heads of 8 (SP 4 needs the heads divisible by 4).
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from e2v.modules.sequence_parallel import SequenceShards
from e2v.strategies import SequenceParallelStrategy
from e2v.tasks.e2v_diffusion import E2VDiffusion

MODEL = {"dit": {"name": "wan", "preset": "tiny", "num_attention_heads": 4, "attention_head_dim": 8},
         "text_encoder": {"name": "umt5", "preset": "tiny", "max_length": 8},
         "text_dropout": 0.0, "reference_dropout": 0.0}
GRIDS = {"even": (2, 8, 8), "uneven": (3, 6, 6)}  # latent T, h, w: 32 and 27 tokens (patch 1 x 2 x 2)
ATOL, RTOL = 1e-5, 1e-4


def sample_inputs(seed: int, grid: tuple[int, int, int], batch: int = 1) -> dict:
    """Cached-style latent inputs of the A2 layout (one reference: mask on latent frame 0)."""
    g = torch.Generator().manual_seed(seed)
    t, h, w = grid
    condition = torch.randn(batch, 20, t, h, w, generator=g)
    condition[:, :4] = 0
    condition[:, :4, 0] = 1
    return {"latents": torch.randn(batch, 16, t, h, w, generator=g), "condition": condition,
            "text": torch.randn(batch, 5, 32, generator=g), "image": torch.randn(batch, 6, 32, generator=g)}


def step_inputs(samples: list[dict]) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The flow-loss inputs of the samples batched, their flow times and noise (fixed, not the module's streams)."""
    batch = {k: torch.cat([s[k] for s in samples]) for k in samples[0]}
    g = torch.Generator().manual_seed(99)
    t = torch.rand(len(samples), generator=g)
    noise = torch.randn(batch["latents"].shape, generator=g)
    inputs = {"x0": batch["latents"], "condition": batch["condition"], "text": batch["text"], "image": batch["image"],
              "num_refs": 1}
    return inputs, t, noise


def loss_and_grads(module: E2VDiffusion, inputs: dict, t: torch.Tensor, noise: torch.Tensor):
    module.dit.zero_grad(set_to_none=True)
    loss = module.flow_loss(inputs, t, noise).mean()
    loss.backward()
    grads = {n: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
             for n, p in module.dit.named_parameters()}
    return loss.detach(), grads


def one_step_worker(rank: int, port: int, out, world: int, sp: int) -> None:
    """Each rank: the single-process reference on all data-parallel samples, then its sharded SP step."""
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    dp = world // sp
    torch.manual_seed(0)
    reference = E2VDiffusion(**MODEL)
    torch.manual_seed(0)
    module = E2VDiffusion(**MODEL)
    module._device_mesh = init_device_mesh("cpu", (dp, sp), mesh_dim_names=("data_parallel", "sequence_parallel"))
    module.configure_model()
    dp_rank = module.data_parallel_rank
    results = {}
    for name, grid in [*GRIDS.items(), ("uneven-checkpointed", GRIDS["uneven"])]:
        for dit in (reference.dit, module.dit):  # the recomputation reruns the all-to-alls
            dit.set_gradient_checkpointing("checkpointed" in name)
        inputs, t, noise = step_inputs([sample_inputs(d, grid) for d in range(dp)])
        ref_loss, ref_grads = loss_and_grads(reference, inputs, t, noise)
        mine = {k: v[dp_rank : dp_rank + 1] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        loss, grads = loss_and_grads(module, mine, t[dp_rank : dp_rank + 1], noise[dp_rank : dp_rank + 1])
        dist.all_reduce(loss)
        loss = loss / world  # the mean over data-parallel ranks (each SP rank holds its sample's whole loss)
        results[name] = {"loss": (loss.item(), ref_loss.item()),
                         "grads": {n: (grads[n] - ref_grads[n]).abs().max().item() for n in ref_grads},
                         "scale": {n: ref_grads[n].abs().max().item() for n in ref_grads}}
    if rank == 0:
        torch.save(results, os.path.join(out, "one_step.pt"))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(target, world: int, out, *args, limit: float = 600) -> None:
    """``target(rank, port, out, *args)`` on ``world`` forked processes; fails (killing them) when they hang."""
    context = mp.start_processes(target, args=(free_port(), str(out), *args), nprocs=world, join=False,
                                 start_method="fork")
    deadline = time.monotonic() + limit
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {world}-rank run hung")


@pytest.mark.slow
@pytest.mark.parametrize("world,sp", [(2, 2), (4, 4), (4, 2)], ids=["sp2", "sp4", "fsdp2xsp2"])
def test_one_step_loss_and_gradients_equal_single_rank(tmp_path, world, sp):
    run_ranks(one_step_worker, world, tmp_path, world, sp)
    results = torch.load(tmp_path / "one_step.pt", weights_only=True)
    for name, result in results.items():
        loss, ref_loss = result["loss"]
        worst = max(result["grads"], key=lambda n: result["grads"][n] / (ATOL + RTOL * result["scale"][n]))
        print(f"{name}: loss {loss:.6f} vs {ref_loss:.6f}; worst gradient {worst} off by {result['grads'][worst]:.2e}")
        assert loss == pytest.approx(ref_loss, rel=RTOL, abs=ATOL), name
        for n, error in result["grads"].items():
            assert error <= ATOL + RTOL * result["scale"][n], (name, n, error)


# ---------------------------------------------------------------------------------------------- ten Lightning steps
STEPS = 10


def batches(dp_rank: int) -> list[dict]:
    """Cached-style batches of one data-parallel rank, uneven tokens (27)."""
    return [{**sample_inputs(100 * dp_rank + step, GRIDS["uneven"]), "id": [f"d{dp_rank}s{step}"]}
            for step in range(STEPS)]


def fit(world: int, sp: int, root) -> dict:
    """Ten steps; the DiT's full weights afterwards."""
    torch.manual_seed(0)
    module = E2VDiffusion(**MODEL)
    if world > 1:
        strategy = SequenceParallelStrategy(sequence_parallel=sp, timeout=timedelta(seconds=120))
        options = dict(devices=world, strategy=strategy)
        dp_rank = int(os.environ["RANK"]) // sp
    else:
        options, dp_rank = dict(devices=1), 0
    trainer = L.Trainer(accelerator="cpu", max_steps=STEPS, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, use_distributed_sampler=False, default_root_dir=str(root), **options)
    trainer.fit(module, train_dataloaders=DataLoader(batches(dp_rank), batch_size=None))
    return {n: p.full_tensor() if hasattr(p, "full_tensor") else p.detach().clone()
            for n, p in module.dit.named_parameters()}


def fit_worker(rank: int, port: int, out, world: int, sp: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), NODE_RANK="0",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    weights = fit(world, sp, out)
    if rank == 0:
        torch.save(weights, os.path.join(out, f"weights_{world}_{sp}.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("world,sp,base_world", [(2, 2, 1), (4, 2, 2)], ids=["sp2-vs-1", "fsdp2xsp2-vs-fsdp2"])
def test_ten_steps_give_the_same_weights(tmp_path, world, sp, base_world):
    run_ranks(fit_worker, world, tmp_path, world, sp)
    if base_world == 1:
        torch.set_num_threads(1)
        base = fit(1, 1, tmp_path)
    else:
        run_ranks(fit_worker, base_world, tmp_path, base_world, 1)
        base = torch.load(tmp_path / f"weights_{base_world}_1.pt", weights_only=True)
    weights = torch.load(tmp_path / f"weights_{world}_{sp}.pt", weights_only=True)
    torch.manual_seed(0)
    initial = E2VDiffusion(**MODEL)
    moved = max((w - initial.dit.get_parameter(n)).abs().max().item() for n, w in base.items())
    difference = max((w - base[n]).abs().max().item() for n, w in weights.items())
    print(f"after {STEPS} steps: weights moved up to {moved:.2e}, SP run differs by up to {difference:.2e}")
    assert moved > 1e-3  # the steps trained
    for name, value in weights.items():
        torch.testing.assert_close(value, base[name], atol=ATOL, rtol=RTOL, msg=name)


def test_sequence_shards_pad_and_gather_on_one_rank(tmp_path):
    """A group of one: shard is the identity (no padding), gather returns the tokens, UlyssesAttention is exact."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        shards = SequenceShards(dist.group.WORLD)
        tokens = torch.randn(1, 5, 8)
        rope = (torch.ones(5, 1, 4), torch.zeros(5, 1, 4))
        local, local_rope, attention = shards.shard(tokens, rope, "sdpa")
        assert torch.equal(local, tokens) and torch.equal(local_rope[0], rope[0])
        q = torch.randn(1, 5, 2, 4)
        torch.testing.assert_close(attention(q, q, q), torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), q.transpose(1, 2), q.transpose(1, 2)).transpose(1, 2))
        assert torch.equal(shards.gather(local, 5), tokens)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ memory per rank
@pytest.mark.slow
def test_peak_activation_memory_per_rank_falls_with_sp():
    """benchmarks/bench_sp_memory.py's measurement (CPU profiler, SP 1, 2, 4): the peak per rank falls about 1/N (the
    context and the exchange buffers do not shrink) and ``e2v plan``'s SP estimate is within 10 % of it."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sp_memory.py"
    spec = importlib.util.spec_from_file_location("bench_sp_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.measure([1, 2, 4])
    base = results[1]["measured"]
    print({sp: round(r["measured"] / base, 3) for sp, r in results.items()})
    assert 0.5 <= results[2]["measured"] / base < 0.6 and 0.25 <= results[4]["measured"] / base < 0.35
    for result in results.values():
        assert abs(result["planned"] - result["measured"]) <= 0.1 * result["measured"], result


# ---------------------------------------------------------------------------------------------------- plan / errors
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "a2-14b-720p-sp.yaml"


def test_plan_counts_a_ranks_share_of_the_tokens():
    """The 720p SP recipe (16 GPUs, SP 8) against the same run without SP: the weights, gradients and optimizer
    shards are the same, the activations follow the tokens per GPU (the context and exchange buffers stay)."""
    from e2v.plan import estimate

    plan = estimate([RECIPE], frames=121)
    alone = estimate([RECIPE], sequence_parallel=1, frames=121)
    assert plan.sequence_parallel == 8 and plan.gpus == 16
    assert plan.tokens == alone.tokens == 31 * 45 * 80 and plan.tokens_per_gpu == 31 * 45 * 80 // 8
    assert (plan.weights, plan.gradients, plan.optimizer) == (alone.weights, alone.gradients, alone.optimizer)
    assert 1 / 8 < plan.activations / alone.activations < 0.2
    assert "sequence parallel 8: 13,950 video tokens per GPU" in plan.format()


def test_bad_sequence_parallel_sizes_are_refused():
    from e2v.plan import PlanError, estimate

    with pytest.raises(ValueError, match="sequence_parallel must be >= 1"):
        SequenceParallelStrategy(sequence_parallel=0)
    with pytest.raises(PlanError, match="sequence_parallel 3 must be >= 1 and divide the 16 GPU"):
        estimate([RECIPE], sequence_parallel=3)
