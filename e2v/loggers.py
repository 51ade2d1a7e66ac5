"""Experiment tracking: an MLflow logger on a local sqlite store, and a LightningCLI config saver that logs the recipe.

One tracking store for the project: every recipe's runs land in ``runs/mlflow.db`` (one experiment per recipe, so
runs compare side by side in one ``mlflow ui``), whatever its ``save_dir`` under ``runs/``. Layout (recipe
``save_dir: runs/tiny/e2v``)::

    runs/mlflow.db                                  the tracking store (sqlite; mlflow 3 refuses bare file stores)
    runs/mlartifacts/<experiment id>/<run id>/       MLflow artifacts (config.yaml, samples/...)
    runs/tiny/e2v/<experiment name>/<run id>/        the logger's run folder: config.yaml, samples/
    runs/tiny/e2v/run.json                           the MLflow run id a resumed fit continues (e2v.run_folder)

``MLFLOW_TRACKING_URI`` (or the logger's ``tracking_uri``) replaces the store, ``store_dir`` moves it. Runs are
named ``<experiment>-<UTC start time>`` unless ``run_name`` is given; a run that fails before logging any metric
is deleted from the store (no empty FAILED runs).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

import e2v
from e2v.atomic import write_json_atomic, write_text_atomic  # write_text_atomic re-exported: callbacks use it
from e2v.run_folder import RUN_FILE, read_run

_PARAM_LIMIT = 250  # Lightning (and old MLflow servers) cut parameter values here


def git_state(folder: str | os.PathLike | None = None) -> dict[str, str]:
    """``{"e2v.git_commit": sha, "e2v.git_dirty": "true"|"false"}`` for the checkout holding ``folder``, or {}."""
    folder = str(folder or Path(e2v.__file__).resolve().parent)

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"e2v.git_commit": commit, "e2v.git_dirty": "true" if dirty else "false"}


def default_store_dir(save_dir: str | os.PathLike) -> Path:
    """The project's store folder for a run folder root: the nearest of ``save_dir`` and its parents named ``runs``
    (``runs/tiny/e2v`` -> ``runs``), else ``save_dir`` itself."""
    path = Path(save_dir).resolve()
    return next((p for p in (path, *path.parents) if p.name == "runs"), path)


def project_store(store: Path) -> tuple[str, str]:
    """``(tracking URI, artifact location)`` of the sqlite store in folder ``store`` (created):
    ``sqlite:///<store>/mlflow.db`` and ``<store>/mlartifacts`` as a file URI."""
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}", (store / "mlartifacts").as_uri()


class E2VMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger defaulting to the project store ``sqlite:///<store_dir>/mlflow.db`` with artifacts
    in ``<store_dir>/mlartifacts``, tagged with e2v's version and git commit, with a local run folder
    (:attr:`log_dir`).

    ``save_dir`` defaults to the trainer's ``default_root_dir`` under ``e2v fit`` (:mod:`e2v.run_folder`), else
    ``runs``. With ``run_id`` the run continues; when that run is not in the store, a new run starts, tagged with
    the old id as its parent (``mlflow.parentRunId``). The store is ``tracking_uri`` if given, else the
    ``MLFLOW_TRACKING_URI`` environment variable, else the sqlite file in ``store_dir`` (default:
    :func:`default_store_dir` of ``save_dir``, i.e. ``runs``). ``save_dir`` is always a local folder, so
    Lightning's checkpoints and config land under it.
    """

    def __init__(
        self,
        experiment_name: str = "e2v",
        run_name: str | None = None,
        save_dir: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        log_model: Literal[True, False, "all"] = False,
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
        store_dir: str | None = None,
    ) -> None:
        root = Path(save_dir or "runs").resolve()
        run_name = run_name or f"{experiment_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not tracking_uri:
            tracking_uri, store_artifacts = project_store(Path(store_dir).resolve() if store_dir else
                                                          default_store_dir(root))
            artifact_location = artifact_location or store_artifacts
        tags = {"e2v.version": e2v.__version__, **git_state(), **(tags or {})}
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=tracking_uri,
            tags=tags,
            save_dir=str(root),
            log_model=log_model,
            prefix=prefix,
            artifact_location=artifact_location,
            run_id=run_id,
            synchronous=synchronous,
        )
        self._root = root
        self._logged_metrics = False
        self._created_run = False

    @property
    @rank_zero_experiment
    def experiment(self):
        """The MLflow client, creating (or continuing) the run on first use and recording it in ``run.json``."""
        if self._initialized:
            return self._mlflow_client
        if self._run_id is not None and self._missing_run(self._run_id):
            self.tags = {**(self.tags or {}), "mlflow.parentRunId": self._run_id}
            self._run_id = None
        self._created_run = self._run_id is None  # a continued run is never deleted by finalize
        client = super().experiment
        write_json_atomic(self._root / RUN_FILE, {"mlflow_run_id": self._run_id, "run_name": self._run_name,
                                                  "experiment": self._experiment_name,
                                                  "tracking_uri": self._tracking_uri}, indent=1)
        return client

    def _missing_run(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self._mlflow_client.get_run(run_id)
        except MlflowException:
            return True
        return False

    def log_metrics(self, metrics, step=None) -> None:
        self._logged_metrics = True
        super().log_metrics(metrics, step)

    def finalize(self, status: str = "success") -> None:
        """End the run; a run this logger created that failed before any metric was logged is deleted (it would
        be an empty FAILED run) along with its ``run.json``."""
        if status == "failed" and self._initialized and self._created_run and not self._logged_metrics:
            self._mlflow_client.delete_run(self.run_id)
            if read_run(self._root).get("mlflow_run_id") == self.run_id:
                (self._root / RUN_FILE).unlink(missing_ok=True)
            return
        super().finalize(status)

    @property
    def save_dir(self) -> str:
        """The local root folder (also when the tracking store is remote)."""
        return str(self._root)

    @property
    def name(self) -> str:
        """The experiment name (Lightning puts checkpoints in ``save_dir/name/version``)."""
        return self._experiment_name

    @property
    def log_dir(self) -> str:
        """The run folder ``<save_dir>/<experiment name>/<run id>`` (creates the run; meaningful on rank 0)."""
        return str(self._root / self._experiment_name / str(self.run_id))


def mlflow_logger(trainer: pl.Trainer) -> MLFlowLogger | None:
    """The trainer's first MLflow logger, or None."""
    return next((logger for logger in trainer.loggers if isinstance(logger, MLFlowLogger)), None)


def run_dir(trainer: pl.Trainer) -> Path:
    """The folder for this run's files: the first logger's ``log_dir`` if it has one, else ``default_root_dir``.

    Not collective (unlike ``trainer.log_dir``): call it from rank-zero-only code.
    """
    logger = trainer.loggers[0] if trainer.loggers else None
    return Path(getattr(logger, "log_dir", None) or trainer.default_root_dir)


def _short_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested dicts to ``a.b.c`` keys, keeping scalar leaves whose text fits an MLflow param."""
    params = {}
    for key, value in config.items():
        name = re.sub(r"[^\w\-. /]", "_", f"{prefix}{key}")
        if isinstance(value, dict):
            params.update(_short_params(value, f"{name}."))
        elif isinstance(value, (str, int, float, bool)) or value is None:
            if len(str(value)) <= _PARAM_LIMIT:
                params[name] = str(value)
    return params


class MLflowSaveConfigCallback(SaveConfigCallback):
    """Writes the fully resolved recipe to ``<run folder>/config.yaml`` and logs it to the MLflow run as an
    artifact (the source of truth: params are cut at 250 characters), plus its short scalar values as
    ``recipe.*`` params. A resumed run keeps its first params; the resumed fit's recipe is ``resumed/config.yaml``.

    Works with any logger (or none): the run folder is :func:`run_dir`; MLflow logging happens when the trainer
    has an MLflow logger.
    """

    def __init__(
        self,
        parser,
        config,
        config_filename: str = "config.yaml",
        overwrite: bool = False,
        multifile: bool = False,
        save_to_log_dir: bool = False,
    ) -> None:
        super().__init__(parser, config, config_filename, overwrite, multifile, save_to_log_dir)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        path = run_dir(trainer) / self.config_filename
        if path.exists() and not self.overwrite:
            raise RuntimeError(
                f"{path} already exists; refusing to overwrite a previous run's config "
                '(set save_config_kwargs={"overwrite": True} to allow it)'
            )
        write_text_atomic(path, self.parser.dump(self.config, skip_none=False))
        logger = mlflow_logger(trainer)
        if logger is None:
            return
        from mlflow.entities import Param

        logged = logger.experiment.get_run(logger.run_id).data.params  # a resumed run has its first fit's params
        logger.experiment.log_artifact(logger.run_id, str(path), "resumed" if logged else None)
        params = [Param(key, value) for key, value in _short_params(self.config.as_dict(), "recipe.").items()
                  if key not in logged]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            logger.experiment.log_batch(logger.run_id, params=params[start : start + 100])
