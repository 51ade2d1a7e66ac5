"""Logging a bench report to MLflow when tracking is on (``--tracking-uri`` or ``MLFLOW_TRACKING_URI``).

One run per report in experiment ``e2v-bench`` (or ``--experiment``): the summary as metrics (``bench/NAME``), each
scorer's version as a param, e2v's version and git commit as tags, and ``report.json`` / ``report.md`` /
``report.html`` / ``thumbs/`` as artifacts. A new experiment on a local sqlite store keeps its artifacts in
``OUT/mlartifacts`` (mlflow 3 refuses ``file:`` stores without MLFLOW_ALLOW_FILE_STORE).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional

EXPERIMENT = "e2v-bench"
REPORT_FILES = ("report.json", "report.md", "report.html")


def tracking_uri(option: Optional[str]) -> Optional[str]:
    return option or os.environ.get("MLFLOW_TRACKING_URI") or None


def log_report(out: str | Path, report: Mapping[str, Any], uri: str, experiment: str = EXPERIMENT,
               run_name: Optional[str] = None) -> str:
    """Log ``report`` (written in ``out``) as an MLflow run; returns the run id."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    import e2v
    from e2v.loggers import git_state

    out = Path(out).resolve()
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        location = (out / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    tags = {"e2v.version": e2v.__version__, "e2v.bench.report": str(out), **git_state()}
    run = client.create_run(experiment_id, run_name=run_name or out.name, tags=tags)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(f"bench/{name}", float(value), now, 0) for name, value in report["summary"].items()
               if value is not None]
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
