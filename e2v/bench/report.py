"""The bench report (a stable contract; users script against it).

``OUT/report.json``::

    {"cases": [{"id": "case_1", "metrics": {"dynamic_degree": 0.94, "psnr": null, ...}}, ...],
     "summary": {"dynamic_degree": 0.91, ...},
     "scorers": {"dynamic_degree": {"version": "1", "range": [0.0, 1.0], "higher_is_better": true,
                                    "model": "..."}, ...}}

A metric is ``null`` for a case it does not apply to (no face reference, no ground-truth clip); ``summary`` is the
mean over the cases where it applies (``null`` if none). ``range`` bounds are ``null`` when unbounded. A video
identical to its truth has ``psnr`` ``Infinity`` (shown as "identical"; the summary averages the finite cases and
says how many were identical). ``comprehensive`` is the weighted mean (:data:`COMPREHENSIVE_WEIGHTS`) of the case's
bounded A2-Bench metrics present in the report (its ``model`` names them), each mapped to [0, 1] by its range and
direction; metrics that do not apply drop out of the mean.
Also written: ``OUT/report.md`` (tables) and ``OUT/report.html`` (tables, per-case thumbnails ``OUT/thumbs/ID.png``:
references | sampled frames, and the videos beside their truth clips). Both open with the headline (PSNR against the
truth clips, beside the flat-video baseline, where the cases have truth) and the generation settings
(``OUT/generation.json``, written by ``e2v bench run``). Every file is written atomically.
"""

from __future__ import annotations

import html
import json
import math
import os
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
GENERATION_FILE = "generation.json"  # OUT/generation.json: the model and sampling settings of `e2v bench run`
IDENTICAL = "identical"  # how an infinite PSNR (the video equals its truth) is shown


def normalised(value: float, info: Mapping[str, Any]) -> Optional[float]:
    """``value`` mapped to [0, 1] by its scorer's range (1 = best); None when the range is unbounded."""
    low, high = info["range"]
    if low is None or high is None or high <= low:
        return None
    unit = min(max((value - low) / (high - low), 0.0), 1.0)
    return unit if info["higher_is_better"] else 1.0 - unit


def comprehensive_info(scorers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``comprehensive`` entry: its model text names the metrics it averages (and the A2-Bench ones absent)."""
    averaged = [n for n in COMPREHENSIVE_WEIGHTS if n in scorers and normalised(0.0, scorers[n]) is not None]
    absent = [n for n in COMPREHENSIVE_WEIGHTS if n not in averaged]
    weights = {COMPREHENSIVE_WEIGHTS[n] for n in averaged}
    how = "equal-weight" if len(weights) <= 1 else "weighted"
    parts = ", ".join(averaged if how == "equal-weight" else (f"{n} x{COMPREHENSIVE_WEIGHTS[n]:g}" for n in averaged))
    model = f"{how} mean of the range-normalised {parts}"
    return {"version": COMPREHENSIVE_VERSION, "range": [0.0, 1.0], "higher_is_better": True,
            "model": model + (f" (not scored here: {', '.join(absent)})" if absent else "")}


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
        scorers[COMPREHENSIVE] = comprehensive_info(scorers)
    cases = []
    for case_id, metrics in case_metrics:
        values = {name: _finite(metrics.get(name)) for name in scorers if name != COMPREHENSIVE}
        if COMPREHENSIVE in scorers:
            values[COMPREHENSIVE] = comprehensive(values, scorers)
        cases.append({"id": case_id, "metrics": values})
    summary = {}
    for name in scorers:
        present = [case["metrics"][name] for case in cases if case["metrics"][name] is not None]
        finite = [value for value in present if math.isfinite(value)]
        summary[name] = float(np.mean(finite)) if finite else (math.inf if present else None)
    return {"cases": cases, "summary": summary, "scorers": scorers}


def _finite(value: Optional[float]) -> Optional[float]:
    """A metric as stored: NaN and -inf are None (no value); +inf stays (PSNR of a video equal to its truth)."""
    return None if value is None or math.isnan(value) or value == -math.inf else float(value)


def identical_cases(report: Mapping[str, Any], name: str) -> int:
    return sum(case["metrics"].get(name) == math.inf for case in report["cases"])


def fmt(value: Optional[float]) -> str:
    if value is None:
        return "–"
    if value == math.inf:
        return IDENTICAL
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"


def summary_text(report: Mapping[str, Any], name: str) -> str:
    """A metric's summary cell: the mean, and how many cases were identical to their truth when some were."""
    identical = identical_cases(report, name)
    text = fmt(report["summary"][name])
    return f"{text} ({identical} of {len(report['cases'])} cases {IDENTICAL})" if identical and text != IDENTICAL \
        else text


def headline(report: Mapping[str, Any]) -> Optional[str]:
    """The report's headline where the cases have truth clips: PSNR against them beside the flat-video baseline
    (``psnr_flat``), the margin a model must earn; None without truth."""
    value = report["summary"].get("psnr")
    if value is None:
        return None
    with_truth = sum(case["metrics"].get("psnr") is not None for case in report["cases"])
    text = f"PSNR against the truth clips: {summary_text(report, 'psnr')} dB over {with_truth} cases"
    flat = report["summary"].get("psnr_flat")
    if flat is not None and math.isfinite(flat):
        margin = f", margin {value - flat:+.2f} dB" if math.isfinite(value) else ""
        text += f"; a flat mean-colour video scores {fmt(flat)} dB{margin}"
    return text


def read_settings(out: Path) -> dict[str, Any]:
    """``OUT/generation.json`` (the settings ``e2v bench run`` generated with), or {}."""
    try:
        settings = json.loads((out / GENERATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def settings_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in settings.items() if value is not None)


def direction(info: Mapping[str, Any]) -> str:
    return "↑" if info["higher_is_better"] else "↓"


def range_text(info: Mapping[str, Any]) -> str:
    low, high = info["range"]
    return f"[{fmt(low) if low is not None else '-∞'}, {fmt(high) if high is not None else '∞'}]"


def markdown(report: Mapping[str, Any], title: str = "e2v bench report",
             settings: Optional[Mapping[str, Any]] = None) -> str:
    names = list(report["scorers"])
    lines = [f"# {title}", "", f"{len(report['cases'])} cases."]
    top = headline(report)
    lines += ["", f"**Headline**: {top}."] if top else []
    lines += ["", f"Generated with: {settings_text(settings)}."] if settings else []
    lines += ["", "## Summary", "", "| metric | mean | range | better | model | version |", "|---|---|---|---|---|---|"]
    for name in names:
        info = report["scorers"][name]
        lines.append(f"| {name} | {summary_text(report, name)} | {range_text(info)} | {direction(info)} | "
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


def html_video(src: str, label: str) -> str:
    return (f"<figure style='display:inline-block;margin:0 6px'><video src='{html.escape(src)}' controls loop muted "
            f"height='96'></video><figcaption>{html.escape(label)}</figcaption></figure>")


def html_report(report: Mapping[str, Any], thumbs: Mapping[str, str], title: str = "e2v bench report",
                media: Optional[Mapping[str, Sequence[Optional[str]]]] = None,
                settings: Optional[Mapping[str, Any]] = None) -> str:
    """The report page; ``media``: case id -> (its video, its truth clip or None), paths relative to the page."""
    names, media = list(report["scorers"]), media or {}
    top = headline(report)
    intro = f"<p><b>Headline</b>: {html.escape(top)}.</p>" if top else ""
    intro += f"<p>Generated with: {html.escape(settings_text(settings))}.</p>" if settings else ""
    summary = html_table(
        ["metric", "mean", "range", "better", "model", "version"],
        [[html.escape(n), summary_text(report, n), range_text(report["scorers"][n]),
          direction(report["scorers"][n]), html.escape(report["scorers"][n]["model"]),
          html.escape(report["scorers"][n]["version"])] for n in names])
    rows = []
    for case in report["cases"]:
        thumb = thumbs.get(case["id"])
        cell = html.escape(case["id"]) + "<br>"
        cell += f"<img src='{html.escape(thumb)}' alt='references | frames'>" if thumb else ""
        video, truth = (list(media.get(case["id"], ())) + [None, None])[:2]
        if video:
            cell += "<br>" + html_video(video, "video") + (html_video(truth, "truth") if truth else "")
        rows.append([cell] + [fmt(case["metrics"][n]) for n in names])
    cases = html_table(["case (references | frames; video | truth)"] + names, rows)
    return html_page(title, f"{intro}<h2>Summary</h2>{summary}<h2>Cases</h2>{cases}")


def thumbnail(references: Sequence[np.ndarray], frames: np.ndarray, height: int = THUMB_HEIGHT) -> np.ndarray:
    """``uint8 [height, W, 3]``: the references, a white gap, then THUMB_FRAMES evenly spaced frames."""

    def fit(image: np.ndarray) -> np.ndarray:
        width = max(1, round(image.shape[1] * height / image.shape[0]))
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)

    gap = np.full((height, 8, 3), 255, np.uint8)
    picks = frames[np.linspace(0, len(frames) - 1, min(THUMB_FRAMES, len(frames))).round().astype(int)]
    return np.concatenate([fit(r) for r in references] + [gap] + [fit(f) for f in picks], axis=1)


def relative_media(out: Path, videos: Mapping[str, tuple[Path, Optional[Path]]]) -> dict[str, list[Optional[str]]]:
    """Case id -> (video, truth) as paths relative to ``out`` (where report.html lies)."""
    def rel(path: Optional[Path]) -> Optional[str]:
        return None if path is None else Path(os.path.relpath(Path(path).resolve(), out.resolve())).as_posix()

    return {case_id: [rel(video), rel(truth)] for case_id, (video, truth) in videos.items()}


def write_report(out: str | Path, report: Mapping[str, Any], thumbs: Mapping[str, str] | None = None,
                 title: str = "e2v bench report", videos: Mapping[str, tuple[Path, Optional[Path]]] | None = None) -> None:
    """``OUT/report.json``, ``OUT/report.md``, ``OUT/report.html`` (atomic writes); ``videos``: case id -> (video,
    truth clip or None), embedded in the page."""
    out = Path(out)
    settings = read_settings(out)
    write_json_atomic(out / "report.json", report, indent=1)
    write_text_atomic(out / "report.md", markdown(report, title, settings))
    write_text_atomic(out / "report.html", html_report(report, thumbs or {}, title,
                                                       relative_media(out, videos or {}), settings))
