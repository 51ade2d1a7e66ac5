"""The stock tiny E2V recipe, with every callback it ships (checkpoints, EMA, sample videos, throughput), killed
mid-epoch and resumed from its last periodic checkpoint: the resumed run continues and writes its samples."""

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from e2v.cli import main

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "e2v.yaml"
# the recipe's trained reference encoder, at random initialisation (same widths), so no other recipe runs first
RANDOM_REFENC = '{"name": "e2v_vit", "image_size": 32, "patch_size": 8, "width": 64, "depth": 3, "heads": 4, "dim": 24}'


def fit(max_steps: int, *extra: str) -> None:
    main(["fit", "--config", str(RECIPE), "--trainer.max_steps", str(max_steps), "--trainer.limit_val_batches", "1",
          "--trainer.val_check_interval", "3", "--model.init_args.image_encoder", RANDOM_REFENC, *extra])


class KillAt(Callback):
    """Dies right after optimizer step ``step``, as a killed run does: no end-of-fit checkpoint, no samples."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"killed at step {self.step}")


def callback(class_path: str, **init_args) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": class_path, "init_args": init_args})


def test_stock_tiny_recipe_killed_mid_epoch_resumes(tmp_path, monkeypatch, tiny_world):
    monkeypatch.chdir(tmp_path)
    tiny_world("data/tiny_world", num_clips=40, num_heldout=4)
    # 5 batches per epoch: killed after step 3 (mid-epoch), resumed from the checkpoint of step 2
    periodic = callback("lightning.pytorch.callbacks.ModelCheckpoint", dirpath="periodic", every_n_train_steps=2,
                        save_top_k=-1, filename="{step}")
    with pytest.raises(RuntimeError, match="killed at step 3"):
        fit(12, periodic, callback(f"{__name__}.KillAt", step=3))
    resume = Path("periodic/step=2.ckpt")
    assert torch.load(resume, map_location="cpu", weights_only=True)["global_step"] == 2
    assert not Path("runs/tiny/e2v/checkpoints/last.ckpt").exists()
    fit(12, "--ckpt_path", str(resume))  # past the throughput callback's first log (every 10 steps)
    state = torch.load("runs/tiny/e2v/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 12
    assert any("EMA" in key for key in state["callbacks"])
    samples = sorted(p.name for p in Path("runs/tiny/e2v").rglob("samples/step_*") if "mlartifacts" not in p.parts)
    assert samples == ["step_12"]  # the sample callback ran at the end of the resumed run only
    assert not list(Path(".").rglob(".*.tmp*"))  # nothing half-written anywhere
