"""MLflow tracking: the sqlite store gets the run's metrics and tags; LightningCLI saves and logs the recipe."""

import subprocess
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningCLI
from mlflow.tracking import MlflowClient
from torch.utils.data import DataLoader, TensorDataset

import e2v
from e2v.callbacks import SamplesPerSecond
from e2v.loggers import E2VMLFlowLogger, MLflowSaveConfigCallback

torch.set_num_threads(1)


class TinyRegression(pl.LightningModule):
    def __init__(self, lr: float = 0.1, width: int = 3, note: str = "x" * 300):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(width, 1)

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.net(batch["x"]), batch["y"])
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class TinyData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 4, width: int = 3):
        super().__init__()
        self.batch_size, self.width = batch_size, width

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(16, self.width, generator=g), torch.randn(16, 1, generator=g)
        return DataLoader([{"x": a, "y": b} for a, b in zip(x, y)], batch_size=self.batch_size)


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def save_dir(tmp_path_factory):
    """One store for the module: creating an MLflow sqlite database takes ~15 s here."""
    return tmp_path_factory.mktemp("mlflow") / "runs"


def _store(save_dir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{save_dir / 'mlflow.db'}")


def test_fit_logs_metrics_and_tags_to_sqlite(save_dir):
    logger = E2VMLFlowLogger(save_dir=str(save_dir), experiment_name="tiny", run_name="r1")
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=4, logger=logger, log_every_n_steps=1, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=True,
        callbacks=[LearningRateMonitor(logging_interval="step"), SamplesPerSecond(log_every_n_steps=2)],
    )
    trainer.fit(TinyRegression(), datamodule=TinyData())

    client = _store(save_dir)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 4
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/samples_per_sec")] == [2, 4]
    assert all(m.value > 0 for m in client.get_metric_history(run.info.run_id, "train/samples_per_sec"))
    assert client.get_metric_history(run.info.run_id, "lr-SGD")[0].value == pytest.approx(0.1)
    assert run.data.tags["e2v.version"] == e2v.__version__
    checkout = Path(e2v.__file__).parent
    if subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True).returncode == 0:
        commit = run.data.tags["e2v.git_commit"]  # others may commit meanwhile: the tag is HEAD or an ancestor
        ancestor = ["git", "-C", checkout, "merge-base", "--is-ancestor", commit, "HEAD"]
        assert len(commit) == 40 and subprocess.run(ancestor).returncode == 0
    assert run.data.params["lr"] == "0.1"
    # checkpoints live in the run folder, artifacts under save_dir/mlartifacts
    run_folder = save_dir / "tiny" / logger.run_id
    assert Path(logger.log_dir) == run_folder
    assert list((run_folder / "checkpoints").glob("*.ckpt"))
    assert run.info.artifact_uri.startswith((save_dir / "mlartifacts").as_uri())


def test_tracking_uri_env_overrides_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # a server URI: nothing is contacted yet
    logger = E2VMLFlowLogger(save_dir=str(tmp_path / "runs"))
    assert logger._tracking_uri == "http://127.0.0.1:9" and logger._artifact_location is None
    assert logger.save_dir == str(tmp_path / "runs")  # still a local run folder root
    explicit = E2VMLFlowLogger(save_dir=str(tmp_path / "runs"), tracking_uri="http://127.0.0.1:10")
    assert explicit._tracking_uri == "http://127.0.0.1:10"


def test_lightning_cli_saves_and_logs_the_recipe(save_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["e2v"])
    cli = LightningCLI(
        TinyRegression, TinyData, save_config_callback=MLflowSaveConfigCallback,
        args=[
            "fit", "--model.lr=0.05", "--data.batch_size=8",
            "--trainer.logger=e2v.loggers.E2VMLFlowLogger", f"--trainer.logger.save_dir={save_dir}",
            "--trainer.logger.experiment_name=cli", "--trainer.max_steps=2", "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        ],
    )
    logger = cli.trainer.logger
    config_path = Path(logger.log_dir) / "config.yaml"
    recipe = yaml.safe_load(config_path.read_text())
    assert recipe["model"]["lr"] == 0.05 and recipe["data"]["batch_size"] == 8
    assert recipe["model"]["note"] == "x" * 300  # the full value, which a param would cut

    client = _store(save_dir)
    assert [a.path for a in client.list_artifacts(logger.run_id)] == ["config.yaml"]
    logged = Path(client.download_artifacts(logger.run_id, "config.yaml", str(tmp_path / "dl")))
    assert yaml.safe_load(logged.read_text()) == recipe
    params = client.get_run(logger.run_id).data.params
    assert params["recipe.model.lr"] == "0.05" and params["recipe.trainer.max_steps"] == "2"
    assert "recipe.model.note" not in params  # too long for a param: the artifact holds it


def test_recipes_share_one_project_store(tmp_path):
    """Each tiny recipe's save_dir (runs/tiny/vae, runs/tiny/e2v, ...) logs to the one store runs/mlflow.db."""
    from e2v.loggers import default_store_dir

    assert default_store_dir(tmp_path / "runs" / "tiny" / "e2v") == tmp_path / "runs"
    assert default_store_dir(tmp_path / "runs") == tmp_path / "runs"
    assert default_store_dir(tmp_path / "elsewhere") == tmp_path / "elsewhere"
    logger = E2VMLFlowLogger(save_dir=str(tmp_path / "runs" / "tiny" / "refenc"), experiment_name="tiny-refenc")
    assert logger._tracking_uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert logger._artifact_location == (tmp_path / "runs" / "mlartifacts").as_uri()
    assert logger.save_dir == str(tmp_path / "runs" / "tiny" / "refenc")  # run folders stay per recipe
    moved = E2VMLFlowLogger(save_dir=str(tmp_path / "runs" / "x"), store_dir=str(tmp_path / "store"))
    assert moved._tracking_uri == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def test_bench_logs_to_the_project_store_by_default(tmp_path, monkeypatch):
    """``e2v bench --out runs/bench/x`` logs where ``e2v fit`` does (runs/mlflow.db); outside a runs/ folder it does
    not log unless asked; the option and MLFLOW_TRACKING_URI win."""
    from e2v.bench.tracking import tracking_uri

    assert tracking_uri(None, tmp_path / "runs" / "bench" / "e2v") == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert tracking_uri(None, tmp_path / "reports" / "e2v") is None
    assert tracking_uri("sqlite:///x.db", tmp_path / "runs" / "b") == "sqlite:///x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert tracking_uri(None, tmp_path / "runs" / "b") == "http://127.0.0.1:9"
