"""The bench report (a stable contract; users script against it).

``OUT/report.json``::

    {"cases": [{"id": "case_1", "metrics": {"dynamic_degree": 0.94, "psnr": null, ...}}, ...],
     "summary": {"dynamic_degree": 0.91, ...},
     "scorers": {"dynamic_degree": {"version": "1", "range": [0.0, 1.0], "higher_is_better": true,
                                    "model": "..."}, ...}}

A metric is ``null`` for a case it does not apply to (no face reference, no ground-truth clip); ``summary`` is the
mean over the cases where it applies (``null`` if none). ``range`` bounds are ``null`` when unbounded.
``comprehensive`` is the weighted mean (:data:`COMPREHENSIVE_WEIGHTS`) of the case's bounded A2-Bench metrics,
each mapped to [0, 1] by its range and direction; metrics that do not apply drop out of the mean.
Also written: ``OUT/report.md`` (tables) and ``OUT/report.html`` (tables + per-case thumbnails
``OUT/thumbs/ID.png``: references | sampled frames). Every file is written atomically.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import cv2
import numpy as np

from e2v.atomic import write_json_atomic, write_text_atomic

COMPREHENSIVE = "comprehensive"
COMPREHENSIVE_VERSION = "1"
# A2-Bench's dimensions, equal weights (the paper gives no weights).
COMPREHENSIVE_WEIGHTS: dict[str, float] = {
    "id_consistency": 1.0,
    "object_consistency": 1.0,
    "background_consistency": 1.0,
    "image_quality": 1.0,
    "aesthetic": 1.0,
    "motion_smoothness": 1.0,
    "dynamic_degree": 1.0,
    "text_similarity": 1.0,
}
THUMB_HEIGHT = 96
THUMB_FRAMES = 4


def normalised(value: float, info: Mapping[str, Any]) -> Optional[float]:
    """``value`` mapped to [0, 1] by its scorer's range (1 = best); None when the range is unbounded."""
    low, high = info["range"]
    if low is None or high is None or high <= low:
        return None
    unit = min(max((value - low) / (high - low), 0.0), 1.0)
    return unit if info["higher_is_better"] else 1.0 - unit


def comprehensive_info() -> dict[str, Any]:
    parts = ", ".join(f"{name} x{weight:g}" for name, weight in COMPREHENSIVE_WEIGHTS.items())
    return {"version": COMPREHENSIVE_VERSION, "range": [0.0, 1.0], "higher_is_better": True,
            "model": f"weighted mean of range-normalised metrics present: {parts}"}


def comprehensive(metrics: Mapping[str, Optional[float]], scorers: Mapping[str, Mapping[str, Any]]) -> Optional[float]:
    total = weights = 0.0
    for name, weight in COMPREHENSIVE_WEIGHTS.items():
        value = metrics.get(name)
        if value is None or name not in scorers:
            continue
        unit = normalised(value, scorers[name])
        if unit is not None:
            total, weights = total + weight * unit, weights + weight
    return total / weights if weights else None


def build_report(case_metrics: Sequence[tuple[str, Mapping[str, Optional[float]]]],
                 scorers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The report.json payload from ``(case id, metrics)`` pairs and the scorers' ``info()``."""
    scorers = dict(scorers)
    if any(name in COMPREHENSIVE_WEIGHTS for name in scorers):
        scorers[COMPREHENSIVE] = comprehensive_info()
    cases = []
    for case_id, metrics in case_metrics:
        values = {name: _finite(metrics.get(name)) for name in scorers if name != COMPREHENSIVE}
        if COMPREHENSIVE in scorers:
            values[COMPREHENSIVE] = comprehensive(values, scorers)
        cases.append({"id": case_id, "metrics": values})
    summary = {}
    for name in scorers:
        present = [case["metrics"][name] for case in cases if case["metrics"][name] is not None]
        summary[name] = float(np.mean(present)) if present else None
    return {"cases": cases, "summary": summary, "scorers": scorers}


def _finite(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


def fmt(value: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"


def direction(info: Mapping[str, Any]) -> str:
    return "↑" if info["higher_is_better"] else "↓"


def range_text(info: Mapping[str, Any]) -> str:
    low, high = info["range"]
    return f"[{fmt(low) if low is not None else '-∞'}, {fmt(high) if high is not None else '∞'}]"


def markdown(report: Mapping[str, Any], title: str = "e2v bench report") -> str:
    names = list(report["scorers"])
    lines = [f"# {title}", "", f"{len(report['cases'])} cases.", "", "## Summary", "",
             "| metric | mean | range | better | model | version |", "|---|---|---|---|---|---|"]
    for name in names:
        info = report["scorers"][name]
        lines.append(f"| {name} | {fmt(report['summary'][name])} | {range_text(info)} | {direction(info)} | "
                     f"{info['model']} | {info['version']} |")
    lines += ["", "## Cases", "", "| id | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for case in report["cases"]:
        lines.append(f"| {case['id']} | " + " | ".join(fmt(case["metrics"][n]) for n in names) + " |")
    return "\n".join(lines) + "\n"


HTML_STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
              "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}"
              "td:first-child{text-align:left}img{image-rendering:pixelated;height:96px}")


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def html_report(report: Mapping[str, Any], thumbs: Mapping[str, str], title: str = "e2v bench report") -> str:
    names = list(report["scorers"])
    summary = html_table(
        ["metric", "mean", "range", "better", "model", "version"],
        [[html.escape(n), fmt(report["summary"][n]), range_text(report["scorers"][n]),
          direction(report["scorers"][n]), html.escape(report["scorers"][n]["model"]),
          html.escape(report["scorers"][n]["version"])] for n in names])
    rows = []
    for case in report["cases"]:
        thumb = thumbs.get(case["id"])
        image = f"<img src='{html.escape(thumb)}' alt='references | frames'>" if thumb else ""
        rows.append([html.escape(case["id"]) + "<br>" + image] + [fmt(case["metrics"][n]) for n in names])
    cases = html_table(["case (references | frames)"] + names, rows)
    return html_page(title, f"<h2>Summary</h2>{summary}<h2>Cases</h2>{cases}")


def thumbnail(references: Sequence[np.ndarray], frames: np.ndarray, height: int = THUMB_HEIGHT) -> np.ndarray:
    """``uint8 [height, W, 3]``: the references, a white gap, then THUMB_FRAMES evenly spaced frames."""

    def fit(image: np.ndarray) -> np.ndarray:
        width = max(1, round(image.shape[1] * height / image.shape[0]))
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)

    gap = np.full((height, 8, 3), 255, np.uint8)
    picks = frames[np.linspace(0, len(frames) - 1, min(THUMB_FRAMES, len(frames))).round().astype(int)]
    return np.concatenate([fit(r) for r in references] + [gap] + [fit(f) for f in picks], axis=1)


def write_report(out: str | Path, report: Mapping[str, Any], thumbs: Mapping[str, str] | None = None,
                 title: str = "e2v bench report") -> None:
    """``OUT/report.json``, ``OUT/report.md``, ``OUT/report.html`` (atomic writes)."""
    out = Path(out)
    write_json_atomic(out / "report.json", report, indent=1)
    write_text_atomic(out / "report.md", markdown(report, title))
    write_text_atomic(out / "report.html", html_report(report, thumbs or {}, title))
