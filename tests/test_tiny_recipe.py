"""The stock tiny E2V recipe, with every callback it ships (checkpoints, EMA, sample videos, throughput), stopped
mid-epoch and resumed: the resumed run continues and writes its samples."""

from pathlib import Path

import torch

from e2v.cli import main
from e2v.datamodules.synth import synthesize_world

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "e2v.yaml"
# the recipe's trained reference encoder, at random initialisation (same widths), so no other recipe runs first
RANDOM_REFENC = '{"name": "e2v_vit", "image_size": 32, "patch_size": 8, "width": 64, "depth": 3, "heads": 4, "dim": 24}'


def fit(max_steps: int, *extra: str) -> None:
    main(["fit", "--config", str(RECIPE), "--trainer.max_steps", str(max_steps), "--trainer.limit_val_batches", "1",
          "--trainer.val_check_interval", "3", "--model.init_args.image_encoder", RANDOM_REFENC, *extra])


def test_stock_tiny_recipe_stops_mid_epoch_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    synthesize_world("data/tiny_world", num_clips=40, num_heldout=4, frames=17, height=32, width=32,
                     background_ref_prob=1.0, progress=False)
    fit(3)  # 5 batches per epoch: step 3 is mid-epoch
    last = Path("runs/tiny/e2v/checkpoints/last.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
    fit(12, "--ckpt_path", "last")  # past the throughput callback's first log (every 10 steps)
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 12
    assert any("EMA" in key for key in state["callbacks"])
    samples = sorted(p.name for p in Path("runs/tiny/e2v").rglob("samples/step_*") if "mlartifacts" not in p.parts)
    assert samples == ["step_12", "step_3"]  # the sample callback ran at the end of both runs
