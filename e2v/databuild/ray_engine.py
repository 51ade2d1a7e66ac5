"""The per-video stage on Ray Data (``e2v data build --engine ray``): one Ray task per video, at most ``workers``
at a time, each with one CPU; results stream back to the driver as they finish (in any order).

Uses the Ray the process is already connected to, else the cluster ``RAY_ADDRESS`` names, else a local one with
``workers`` CPUs (stopped afterwards). Workers of a remote cluster need e2v installed and ``--out`` on storage
they share with the driver. Jobs and results cross Ray as JSON strings, so their nested dicts and lists come back
exactly (Arrow would turn them into structs: missing keys become None, empty lists lose their type).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterator

from e2v.databuild.video import VideoJob, process_video

RAY_VERSION = "2.60.0"


def _process_row(row: dict) -> dict:
    """``{"job": VideoJob as JSON}`` -> ``{"result": process_video's result as JSON}`` (runs on a Ray worker)."""
    return {"result": json.dumps(process_video(VideoJob(**json.loads(row["job"]))))}


def run_with_ray(jobs: list[VideoJob], workers: int) -> Iterator[dict]:
    """``process_video(job)`` for every job on Ray Data, yielded as each finishes."""
    if not jobs:
        return
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise ImportError(f"--engine ray needs Ray Data: pip install 'ray[data]=={RAY_VERSION}' "
                          f"(or pip install 'e2v[ray]')") from err
    started = not ray.is_initialized()
    if started:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    context.enable_progress_bars = False  # e2v's own bar counts the videos
    try:
        rows = [{"job": json.dumps(dataclasses.asdict(job))} for job in jobs]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))  # one block, so one task, per video
        done = dataset.map(_process_row, num_cpus=1, compute=ray.data.TaskPoolStrategy(size=workers))
        for row in done.iter_rows():
            yield json.loads(row["result"])
    finally:
        context.enable_progress_bars = bars
        if started:
            ray.shutdown()
