"""Logging a bench report to MLflow: to ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``, else, like ``e2v fit``, to
the project store ``runs/mlflow.db`` when ``OUT`` lies under a ``runs`` folder (``--out runs/bench/e2v``);
``--no-tracking`` turns it off.

One run per report in experiment ``e2v-bench`` (or ``--experiment``): the summary as metrics (``bench/NAME``), each
scorer's version as a param, e2v's version and git commit as tags, and ``report.json`` / ``report.md`` /
``report.html`` / ``thumbs/`` as artifacts. A new experiment on the project store keeps its artifacts in
``runs/mlartifacts`` (as fit's), on another local sqlite store in ``OUT/mlartifacts``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional

EXPERIMENT = "e2v-bench"
REPORT_FILES = ("report.json", "report.md", "report.html")


def tracking_uri(option: Optional[str], out: str | Path) -> Optional[str]:
    """The store a report in ``out`` logs to: ``option``, ``$MLFLOW_TRACKING_URI``, the project store of a ``runs``
    folder holding ``out``, else None (not logged)."""
    from e2v.loggers import default_store_dir, project_store

    if option or os.environ.get("MLFLOW_TRACKING_URI"):
        return option or os.environ["MLFLOW_TRACKING_URI"]
    store = default_store_dir(out)
    return project_store(store)[0] if store.name == "runs" else None


def log_report(out: str | Path, report: Mapping[str, Any], uri: str, experiment: str = EXPERIMENT,
               run_name: Optional[str] = None) -> str:
    """Log ``report`` (written in ``out``) as an MLflow run; returns the run id."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    import e2v
    from e2v.loggers import default_store_dir, git_state, project_store

    out = Path(out).resolve()
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        store = default_store_dir(out)
        project = store.name == "runs" and uri == project_store(store)[0]
        location = (store if project else out).joinpath("mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    tags = {"e2v.version": e2v.__version__, "e2v.bench.report": str(out), **git_state()}
    run = client.create_run(experiment_id, run_name=run_name or out.name, tags=tags)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(f"bench/{name}", float(value), now, 0) for name, value in report["summary"].items()
               if value is not None and math.isfinite(value)]
    params = [Param(f"scorer.{name}", f"v{info['version']}") for name, info in report["scorers"].items()]
    params.append(Param("cases", str(len(report["cases"]))))
    client.log_batch(run_id, metrics=metrics, params=params)
    for name in REPORT_FILES:
        if (out / name).is_file():
            client.log_artifact(run_id, str(out / name))
    if (out / "thumbs").is_dir():
        client.log_artifacts(run_id, str(out / "thumbs"), artifact_path="thumbs")
    client.set_terminated(run_id)
    return run_id
