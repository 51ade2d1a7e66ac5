"""The tiny VAE recipe as users run it (in a fresh folder): reconstruction previews, export, warmup-cosine lr."""

import json
from pathlib import Path

import pytest
import torch

from e2v import registry
from e2v.cli import main
from e2v.tasks.optim import WarmupCosineLR, configure_optimization

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_tiny_vae_recipe_writes_previews_and_an_export(tmp_path, monkeypatch, tiny_world):
    monkeypatch.chdir(tmp_path)
    tiny_world("data/tiny_world", num_clips=8, num_heldout=4)
    main(["fit", "--config", str(RECIPES / "tiny/vae.yaml"), "--trainer.max_steps", "2",
          "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1",
          "--data.init_args.num_workers", "0", "--model.init_args.latent_stats_batches", "1",
          "--trainer.logger.init_args.tracking_uri", f"sqlite:///{tmp_path / 'runs/tiny/vae/mlflow.db'}"])
    previews = sorted(Path("runs/tiny/vae").rglob("reconstructions/step_*.png"))
    steps = {p.name for p in previews if "mlartifacts" not in p.parts}
    assert steps == {"step_1.png", "step_2.png"}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{Path('runs/tiny/vae/mlflow.db').resolve()}")
    run = client.search_runs([client.get_experiment_by_name("tiny-vae").experiment_id])[0]
    logged = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "reconstructions")}
    assert logged == {"step_1.png", "step_2.png"}  # logged to MLflow as well
    from PIL import Image

    with Image.open(previews[0]) as image:
        # 4 clips x (truth row over reconstruction row) x 5 frames of 32 px, 2 px gaps, enlarged 2x
        assert image.size == (2 * 5 * 32, 2 * (4 * 2 * 32 + 3 * 2))
    export = registry.build("vae", {"name": "patch", "weights": "runs/tiny/vae/export"})
    config = json.loads(Path("runs/tiny/vae/export/config.json").read_text())
    assert config["_class_name"] == "E2VPatchVAE" and config["latents_std"] != [1.0] * 16  # measured
    assert export.config.latents_std == pytest.approx(config["latents_std"])
    assert config["pixel_width"] == 16 and config["pixel_depth"] == 2  # the recipe's VAE, exported whole


def test_loss_weights_pick_the_reconstruction_terms():
    """l1_weight / mse_weight / kl_weight weigh the terms the task reports (the tiny recipe trains on MSE alone)."""
    from e2v.tasks.vae_training import VAETraining

    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    vae = {"name": "patch", "width": 16, "depth": 1}
    with torch.no_grad():
        both = VAETraining(vae=vae, kl_weight=0.5).losses(video, sample=False)
        mse_only = VAETraining(vae=vae, kl_weight=0.5, l1_weight=0.0, mse_weight=2.0).losses(video, sample=False)
    assert both["loss"].item() == pytest.approx((both["l1"] + both["mse"] + 0.5 * both["kl"]).item())
    assert mse_only["loss"].item() == pytest.approx((2 * mse_only["mse"] + 0.5 * mse_only["kl"]).item())
    assert mse_only["mse"].item() == pytest.approx(both["mse"].item())  # same seed-0 VAE, same reconstruction


def test_warmup_cosine_schedule():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    out = configure_optimization([param], lambda p: opt, lambda o: WarmupCosineLR(o, warmup_steps=10, min_ratio=0.1),
                                 max_steps=110)
    schedule = out["lr_scheduler"]["scheduler"]
    assert schedule.total_steps == 110  # taken from the trainer's max_steps
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5, abs=0.01) and lrs[-1] == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ValueError, match="min_ratio"):
        WarmupCosineLR(opt, min_ratio=2.0)


def test_decoder_only_fine_tuning_keeps_the_latents():
    """decoder_only: optimizer steps change the decoder, never the encoder, so latents (and DiTs on them) stay valid."""
    from e2v.tasks.vae_training import VAETraining

    module = VAETraining(vae={"name": "patch", "width": 16, "depth": 1, "pixel_width": 8}, decoder_only=True)
    before = {k: v.clone() for k, v in module.vae.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in module.vae.parameters() if p.requires_grad], lr=1e-2)
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    for _ in range(2):
        loss = module.losses(video, sample=True)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = module.vae.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("decoder.", "refiner.")) for k in changed)
    assert not any(k.startswith("encoder.") and p.requires_grad for k, p in module.vae.named_parameters())
    full = VAETraining(vae={"name": "patch", "width": 16, "depth": 1, "pixel_width": 8})
    assert all(p.requires_grad for p in full.vae.parameters())
