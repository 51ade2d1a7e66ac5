"""One run folder per fit (issue 28.3, 29.1): ``trainer.default_root_dir`` moves checkpoints and the MLflow run
folder; a second fit into a folder holding a run is refused before any model is built; ``--ckpt_path last``
resumes it, continuing its MLflow run."""

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from torch.utils.data import DataLoader

from e2v.cli import main
from e2v.run_folder import RUN_FILE, read_run

torch.set_num_threads(1)
BUILT: list[str] = []


class TinyRegression(pl.LightningModule):
    def __init__(self, lr: float = 0.1):
        super().__init__()
        BUILT.append("model")
        self.net = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.net(batch["x"]), batch["y"])
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.get("lr", 0.1))


class TinyData(pl.LightningDataModule):
    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)
        return DataLoader([{"x": a, "y": b} for a, b in zip(x, y)], batch_size=4)


class FailsAtStart(TinyRegression):
    def on_fit_start(self):
        raise RuntimeError("broken setup")


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _recipe(tmp_path: Path, logger: bool, model: str = "TinyRegression") -> Path:
    """A recipe in the shipped recipes' form: no checkpoint dirpath, no logger save_dir, only default_root_dir."""
    trainer = {
        "accelerator": "cpu", "max_steps": 2, "enable_progress_bar": False, "enable_model_summary": False,
        "log_every_n_steps": 1, "default_root_dir": str(tmp_path / "runs" / "exp"),
        "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}],
        "logger": ({"class_path": "e2v.loggers.E2VMLFlowLogger", "init_args": {"experiment_name": "exp"}}
                   if logger else False),
    }
    recipe = {"trainer": trainer, "model": {"class_path": f"{__name__}.{model}"},
              "data": {"class_path": f"{__name__}.TinyData"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _fit(recipe: Path, *overrides: str) -> None:
    main(["fit", "--config", str(recipe), *overrides])


def test_second_fit_into_a_run_folder_is_refused_until_resumed(tmp_path, capsys):
    recipe = _recipe(tmp_path, logger=False)
    root = tmp_path / "runs" / "exp"
    _fit(recipe)
    last = root / "checkpoints" / "last.ckpt"
    first = last.read_bytes()
    assert torch.load(last, weights_only=True)["global_step"] == 2

    BUILT.clear()
    with pytest.raises(SystemExit) as exit_info:  # the re-run that used to write last-v1.ckpt beside it
        _fit(recipe)
    assert exit_info.value.code == 2 and not BUILT  # refused before the model was built
    err = capsys.readouterr().err
    assert f"{root / 'checkpoints'} already holds another run's checkpoints (" in err and "last.ckpt" in err
    assert "--ckpt_path last" in err and "--trainer.default_root_dir" in err
    before = sorted(p.name for p in last.parent.iterdir())
    assert "last-v1.ckpt" not in before and last.read_bytes() == first

    _fit(recipe, "--ckpt_path", "last", "--trainer.max_steps", "4")  # resuming is allowed and continues
    assert torch.load(last, weights_only=True)["global_step"] == 4
    assert "last-v1.ckpt" not in {p.name for p in last.parent.iterdir()}

    moved = tmp_path / "elsewhere"  # one option moves the whole run
    _fit(recipe, "--trainer.default_root_dir", str(moved))
    assert (moved / "checkpoints" / "last.ckpt").is_file()


def test_print_config_shows_the_filled_run_folders(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _fit(_recipe(tmp_path, logger=True), "--trainer.default_root_dir", "x/y", "--print_config")
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["callbacks"][0]["init_args"]["dirpath"] == "x/y/checkpoints"
    assert trainer["logger"]["init_args"]["save_dir"] == "x/y"


def test_mlflow_run_names_resume_and_failed_starts(tmp_path):
    """Runs are named after the experiment and start time; a resumed fit continues its MLflow run; a fit that
    fails before logging anything leaves no run behind."""
    recipe = _recipe(tmp_path, logger=True)
    root = tmp_path / "runs" / "exp"
    _fit(recipe)
    run_id = read_run(root)["mlflow_run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")  # the project store: nearest runs/
    run = client.get_run(run_id)
    assert run.info.run_name.startswith("exp-20") and len(run.info.run_name) == len("exp-20261205-211850")
    assert (root / "exp" / run_id / "config.yaml").is_file()

    _fit(recipe, "--ckpt_path", "last", "--trainer.max_steps", "4")
    assert read_run(root)["mlflow_run_id"] == run_id
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [0, 1, 2, 3]
    experiment = client.get_experiment_by_name("exp").experiment_id
    assert len(client.search_runs([experiment])) == 1

    failing = _recipe(tmp_path, logger=True, model="FailsAtStart")
    with pytest.raises(RuntimeError, match="broken setup"):
        _fit(failing, "--trainer.default_root_dir", str(tmp_path / "runs" / "broken"))
    assert [r.info.run_id for r in client.search_runs([experiment])] == [run_id]  # no empty FAILED run
    assert not (tmp_path / "runs" / "broken" / RUN_FILE).exists()
    with pytest.raises(RuntimeError, match="broken setup"):  # a resumed run that fails keeps its history
        _fit(failing, "--ckpt_path", "last", "--trainer.max_steps", "6")
    assert len(client.get_metric_history(run_id, "train/loss")) == 4 and read_run(root)["mlflow_run_id"] == run_id
