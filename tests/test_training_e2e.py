"""End-to-end training on a small synthetic world: resume equality, and sharded (FSDP2) / DDP fits on 2 CPU
processes through the `e2v` command."""

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from e2v.callbacks import EMA
from e2v.synth import synthesize_world
from e2v.datamodules.triplets import TripletDataModule
from e2v.tasks.e2v_diffusion import E2VDiffusion

FRAMES, SIZE = 9, 32
MODEL = {
    "dit": {"name": "wan", "preset": "tiny"},
    "text_encoder": {"name": "umt5", "preset": "tiny", "max_length": 8},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    synthesize_world(out, num_clips=10, num_heldout=2, frames=FRAMES, height=SIZE, width=SIZE, max_elements=2,
                     progress=False)
    return out


def datamodule(world):
    return TripletDataModule(str(world / "train.jsonl"), frames=FRAMES, height=SIZE, width=SIZE, batch_size=2,
                             image_size=32, max_references=2, seed=3)


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = outputs["loss"].item()


def fit(world, root, max_steps, ckpt_path=None):
    torch.manual_seed(0)
    recorder, ema = LossRecorder(), EMA(decay=0.9)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=3,
                                                     save_top_k=-1)
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, deterministic=True, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder, ema, checkpoint],
                        default_root_dir=root, num_sanity_val_steps=0)
    module = E2VDiffusion(**MODEL)
    trainer.fit(module, datamodule=datamodule(world), ckpt_path=ckpt_path)
    return recorder.losses, module, ema


def test_resume_continues_the_uninterrupted_run(world, tmp_path):
    full_losses, full_module, full_ema = fit(world, tmp_path / "full", max_steps=8)
    fit(world, tmp_path / "part", max_steps=3)
    resumed_losses, resumed_module, resumed_ema = fit(world, tmp_path / "part", max_steps=8,
                                                      ckpt_path=str(tmp_path / "part" / "last.ckpt"))
    assert sorted(resumed_losses) == [4, 5, 6, 7, 8]  # crosses the epoch boundary (5 batches per epoch)
    for step, loss in resumed_losses.items():
        assert loss == pytest.approx(full_losses[step], rel=1e-6, abs=1e-7), step
    for (name, a), b in zip(full_module.dit.state_dict().items(), resumed_module.dit.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    for a, b in zip(full_ema.state_dict()["shadow"].values(), resumed_ema.state_dict()["shadow"].values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_per_step_diagnostics_are_logged_at_the_steps_lightning_writes(world, tmp_path, monkeypatch):
    """Grad norm, skip counts and the loss by noise level are computed only on the steps whose logs are written
    (``log_every_n_steps``), and they are written on each of those steps."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    norms = []
    total_norm = torch.nn.utils.get_total_norm
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", lambda *a, **k: norms.append(1) or total_norm(*a, **k))
    logger = CSVLogger(str(tmp_path), name="run")
    trainer = L.Trainer(accelerator="cpu", max_steps=5, logger=logger, log_every_n_steps=2, limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(E2VDiffusion(**MODEL), datamodule=datamodule(world))
    logger.save()
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    steps = {name: sorted(int(r["step"]) for r in rows if r.get(name)) for name in rows[0]}
    assert steps["train/loss"] == [1, 3]  # Lightning writes after steps 2 and 4 (0-based step 1 and 3)
    assert len(norms) == 2  # not on the other three steps
    for name in ("train/grad_norm", "data/skipped_samples", "data/skipped_fraction"):
        assert steps[name] == steps["train/loss"], name
    assert [float(r["train/grad_norm"]) > 0 for r in rows if r.get("train/grad_norm")] == [True, True]
    assert any(name.startswith("train/loss_t") for name in steps)


def write_recipe(world, root, strategy):
    recipe = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 2, "strategy": strategy, "max_steps": 3, "logger": False,
            "enable_progress_bar": False, "default_root_dir": str(root), "use_distributed_sampler": False,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(root / "ckpt"), "save_last": True, "every_n_train_steps": 2}},
                {"class_path": "e2v.callbacks.EMA", "init_args": {"decay": 0.9}},
            ],
        },
        "model": {"class_path": "e2v.tasks.e2v_diffusion.E2VDiffusion", "init_args": MODEL},
        "data": {"class_path": "e2v.datamodules.triplets.TripletDataModule",
                 "init_args": {"train_manifest": str(world / "train.jsonl"), "frames": FRAMES, "height": SIZE,
                               "width": SIZE, "batch_size": 1, "image_size": 32, "max_references": 2}},
    }
    path = root / "recipe.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_e2v(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", "e2v.cli", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


FSDP = {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
        "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1}}


@pytest.mark.slow
@pytest.mark.parametrize("distributed", [True, False], ids=["sharded-checkpoint", "full-checkpoint"])
def test_fsdp2_two_cpu_processes_fit_save_and_resume(world, tmp_path, distributed):
    strategy = {**FSDP, "init_args": {**FSDP["init_args"], "save_distributed_checkpoint": distributed}}
    recipe = write_recipe(world, tmp_path, strategy)
    run_e2v("fit", "--config", str(recipe), cwd=tmp_path)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.is_dir() == distributed and last.exists()
    run_e2v("fit", "--config", str(recipe), "--trainer.max_steps", "4", "--ckpt_path", str(last), cwd=tmp_path)


@pytest.mark.slow
def test_ddp_two_cpu_processes_fit_and_resume(world, tmp_path):
    recipe = write_recipe(world, tmp_path, "ddp")
    run_e2v("fit", "--config", str(recipe), cwd=tmp_path)
    last = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2 and all(k.startswith("dit.") for k in state["state_dict"])  # every 2 steps
    run_e2v("fit", "--config", str(recipe), "--trainer.max_steps", "4", "--ckpt_path", str(last), cwd=tmp_path)
