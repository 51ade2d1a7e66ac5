"""Multi-node runs on localhost: `e2v fit` as 2 nodes x 1 process, sequence parallel 2 (FSDP2 over both ranks).

- torchrun (`--nnodes 2 --rdzv-backend c10d`, two agents on one host): trains, writes distributed (sharded)
  checkpoints, resumes on 2 ranks; the same checkpoint resumed on ONE rank (distributed checkpoint resharding 2 -> 1)
  ends with the same weights as the 2-rank resume (an SP group of 2 trains like one process);
- the environment-variable path (what SLURM's `srun` sets: SLURM_NTASKS, SLURM_PROCID, SLURM_NODEID, ...), read by
  Lightning's SLURMEnvironment: trains and checkpoints.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from e2v.synth import synthesize_world

FRAMES, SIZE = 9, 32
MODEL = {"dit": {"name": "wan", "preset": "tiny"}, "text_encoder": {"name": "umt5", "preset": "tiny", "max_length": 8}}
TIMEOUT = 1200  # seconds per launch; a loaded 2-core host can be slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    synthesize_world(out, num_clips=6, num_heldout=1, frames=FRAMES, height=SIZE, width=SIZE, max_elements=2,
                     progress=False)
    return out


def recipe(world: Path, root: Path, num_nodes: int, sequence_parallel: int, max_steps: int) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "num_nodes": num_nodes, "max_steps": max_steps, "logger": False,
            "strategy": {"class_path": "e2v.strategies.SequenceParallelStrategy",
                         "init_args": {"sequence_parallel": sequence_parallel, "save_distributed_checkpoint": True}},
            "enable_progress_bar": False, "default_root_dir": str(root), "use_distributed_sampler": False,
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(root / "ckpt"), "save_last": True, "every_n_train_steps": 2,
                                         "save_top_k": -1}},
                          {"class_path": "e2v.callbacks.EMA", "init_args": {"decay": 0.9}}],
        },
        "model": {"class_path": "e2v.tasks.e2v_diffusion.E2VDiffusion", "init_args": MODEL},
        "data": {"class_path": "e2v.datamodules.triplets.TripletDataModule",
                 "init_args": {"train_manifest": str(world / "train.jsonl"), "frames": FRAMES, "height": SIZE,
                               "width": SIZE, "batch_size": 1, "image_size": 32, "max_references": 2}},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"recipe-{num_nodes}x{sequence_parallel}-{max_steps}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_nodes(commands: list[list[str]], envs: list[dict], cwd: Path) -> None:
    """One process per node, all at once (output in ``cwd/node<i>.log``); every one must succeed in TIMEOUT."""
    logs = [cwd / f"node{i}.log" for i in range(len(commands))]
    processes = []
    for command, env, log in zip(commands, envs, logs):
        with log.open("w") as out:
            processes.append(subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={
                **os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **env}, start_new_session=True))
    try:
        for process in processes:
            process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # torchrun's workers too (their own session)
    for process, log in zip(processes, logs):
        assert process.returncode == 0, log.read_text()[-6000:]


def torchrun_fit(config: Path, cwd: Path, *extra: str) -> None:
    """`e2v fit` as 2 nodes x 1 process through torchrun's c10d rendezvous on localhost (two agents)."""
    endpoint = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "e2v-test", "-m", "e2v.cli",
               "fit", "--config", str(config), *extra]
    run_nodes([command, command], [{}, {}], cwd)


def single_fit(config: Path, cwd: Path, *extra: str) -> None:
    run_nodes([[sys.executable, "-m", "e2v.cli", "fit", "--config", str(config), *extra]], [{}], cwd)


def dit_weights(checkpoint: Path, scratch: Path) -> dict[str, torch.Tensor]:
    """The DiT weights of a distributed checkpoint folder (read on one process, whatever wrote it)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = scratch / f"{checkpoint.parent.parent.name}-{checkpoint.name}.pt"
    dcp_to_torch_save(str(checkpoint), str(target))
    state = torch.load(target, map_location="cpu", weights_only=True)
    return {k: v for k, v in state["state_dict"].items() if k.startswith("dit.") and "ema" not in k.lower()}


@pytest.mark.slow
def test_torchrun_two_nodes_train_checkpoint_resume_and_reshard_to_one_rank(world, tmp_path):
    two = tmp_path / "two"
    torchrun_fit(recipe(world, two, 2, 2, max_steps=2), tmp_path)
    step2 = two / "ckpt" / "epoch=0-step=2.ckpt"
    assert step2.is_dir() and (step2 / "meta.pt").is_file()  # distributed: one folder, a shard file per rank
    assert len(list(step2.glob("*.distcp"))) == 2
    torchrun_fit(recipe(world, two, 2, 2, max_steps=4), tmp_path, "--ckpt_path", str(step2))
    one = tmp_path / "one"
    single_fit(recipe(world, one, 1, 1, max_steps=4), tmp_path, "--ckpt_path", str(step2))
    resumed_two, resumed_one = two / "ckpt" / "epoch=0-step=4.ckpt", one / "ckpt" / "epoch=0-step=4.ckpt"
    assert len(list(resumed_one.glob("*.distcp"))) == 1
    start, on_two, on_one = (dit_weights(path, tmp_path) for path in (step2, resumed_two, resumed_one))
    assert max((on_two[k] - start[k]).abs().max().item() for k in start) > 1e-4  # the resumed steps trained
    for key, value in on_two.items():
        torch.testing.assert_close(on_one[key], value, atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_slurm_environment_two_nodes_train_and_checkpoint(world, tmp_path):
    config = recipe(world, tmp_path, 2, 2, max_steps=2)
    port = str(free_port())
    envs = [{"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2", "SLURM_PROCID": str(rank),
             "SLURM_LOCALID": "0", "SLURM_NODEID": str(rank), "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "e2v",
             "SLURM_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port} for rank in range(2)]
    command = [sys.executable, "-m", "e2v.cli", "fit", "--config", str(config)]
    if shutil.which("srun"):
        pytest.skip("srun is installed: Lightning would expect the job to be launched by it")
    run_nodes([command, command], envs, tmp_path)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2
