"""``e2v bench compare``: several report folders side by side.

Writes ``OUT/compare.json`` (``{"models": {NAME: {"report": DIR, "summary": {...}, "cases": N}}, "scorers": {...},
"notes": [...]}``; NAME is the report folder's name, made unique with its parent's when needed),
``OUT/compare.md``, ``OUT/compare.html`` and, with matplotlib, ``OUT/bars.png`` (one bar chart per metric) and
``OUT/radar.png`` (the range-normalised bounded metrics, one polygon per model); each bar is labelled with its
value and the charts are cropped to their labels. A metric whose scorer version or
model differs between reports is compared anyway, with a note.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

from e2v.atomic import atomic_path, write_json_atomic, write_text_atomic
from e2v.bench.report import direction, fmt, html_page, html_table, normalised

REPORT_FILE = "report.json"


class CompareError(ValueError):
    """A report folder that cannot be compared."""


def read_report(folder: Path) -> dict[str, Any]:
    path = folder / REPORT_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompareError(f"{folder}: no {REPORT_FILE} (run e2v bench score or run first)") from None
    except (OSError, ValueError) as err:
        raise CompareError(f"{path}: unreadable report ({err})") from None
    if not isinstance(report, dict) or not all(k in report for k in ("cases", "summary", "scorers")):
        raise CompareError(f"{path}: not an e2v bench report (needs cases, summary, scorers)")
    return report


def model_names(folders: Sequence[Path]) -> list[str]:
    names = [f.resolve().name for f in folders]
    if len(set(names)) < len(names):
        names = [f"{f.resolve().parent.name}/{f.resolve().name}" for f in folders]
    if len(set(names)) < len(names):
        names = [str(f) for f in folders]
    return names


def compare(folders: Sequence[str | Path]) -> dict[str, Any]:
    """The comparison payload of several report folders."""
    folders = [Path(f) for f in folders]
    reports = [read_report(f) for f in folders]
    names = model_names(folders)
    scorers: dict[str, Any] = {}
    notes = []
    for name, report in zip(names, reports):
        for metric, info in report["scorers"].items():
            if metric not in scorers:
                scorers[metric] = info
            elif (scorers[metric]["version"], scorers[metric]["model"]) != (info["version"], info["model"]):
                notes.append(f"{metric}: {name} used version {info['version']} / {info['model']!r}, "
                             f"others {scorers[metric]['version']} / {scorers[metric]['model']!r}")
    case_sets = {name: sorted(c["id"] for c in r["cases"]) for name, r in zip(names, reports)}
    if len({tuple(ids) for ids in case_sets.values()}) > 1:
        notes.append("the reports scored different case sets: " +
                     ", ".join(f"{n} {len(ids)} cases" for n, ids in case_sets.items()))
    models = {name: {"report": str(folder), "summary": report["summary"], "cases": len(report["cases"])}
              for name, folder, report in zip(names, folders, reports)}
    return {"models": models, "scorers": scorers, "notes": notes}


def best_models(payload: dict[str, Any], metric: str) -> set[str]:
    values = {n: m["summary"].get(metric) for n, m in payload["models"].items()}
    values = {n: v for n, v in values.items() if v is not None}
    if not values:
        return set()
    pick = max if payload["scorers"][metric]["higher_is_better"] else min
    target = pick(values.values())
    return {n for n, v in values.items() if v == target}


def table_rows(payload: dict[str, Any], bold: tuple[str, str]) -> list[list[str]]:
    rows = []
    for metric, info in payload["scorers"].items():
        best = best_models(payload, metric)
        cells = []
        for name, model in payload["models"].items():
            text = fmt(model["summary"].get(metric))
            cells.append(f"{bold[0]}{text}{bold[1]}" if name in best and len(payload["models"]) > 1 else text)
        rows.append([f"{metric} {direction(info)}"] + cells)
    return rows


def markdown(payload: dict[str, Any]) -> str:
    names = list(payload["models"])
    lines = ["# e2v bench comparison", "", "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(payload, ("**", "**"))]
    lines += ["", "Best per metric in bold (↑ higher is better, ↓ lower)."]
    lines += [""] + [f"- note: {note}" for note in payload["notes"]] if payload["notes"] else []
    return "\n".join(lines) + "\n"


def html_compare(payload: dict[str, Any], charts: Sequence[str]) -> str:
    names = list(payload["models"])
    rows = [[html.escape(row[0])] + row[1:] for row in table_rows(payload, ("<b>", "</b>"))]
    body = html_table(["metric"] + names, rows)
    body += "".join(f"<p>note: {html.escape(note)}</p>" for note in payload["notes"])
    body += "".join(f"<p><img style='height:auto;max-width:100%' src='{c}'></p>" for c in charts)
    return html_page("e2v bench comparison", body)


def plot_charts(payload: dict[str, Any], out: Path) -> list[str]:
    """``bars.png`` and ``radar.png``; [] when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return []
    names = list(payload["models"])
    metrics = list(payload["scorers"])
    cols = min(4, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        values = [payload["models"][n]["summary"].get(metric) for n in names]
        finite = [v if v is not None and np.isfinite(v) else np.nan for v in values]
        bars = ax.bar(range(len(names)), finite, color="C0")
        ax.bar_label(bars, labels=[fmt(v) if np.isfinite(f) else "" for v, f in zip(values, finite)], fontsize=7,
                     padding=1)  # each bar carries its value
        for index, value in enumerate(values):  # no bar to draw: say why on the axis
            if value is None or not np.isfinite(value):
                ax.text(index, 0, fmt(value), ha="center", va="bottom", fontsize=7)
        ax.margins(y=0.2)  # room for the labels above the tallest bar
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{metric} {direction(payload['scorers'][metric])}", fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    charts = []
    with atomic_path(out / "bars.png", suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight")  # long model names are not cut off
    charts.append("bars.png")
    plt.close(fig)
    bounded = [m for m in metrics if normalised(0.0, payload["scorers"][m]) is not None]
    if len(bounded) >= 3:
        angles = np.linspace(0, 2 * np.pi, len(bounded), endpoint=False)
        fig = plt.figure(figsize=(5, 5))
        ax = fig.add_subplot(polar=True)
        for name in names:
            summary = payload["models"][name]["summary"]
            values = [normalised(summary[m], payload["scorers"][m]) if summary.get(m) is not None
                      and np.isfinite(summary[m]) else 0.0 for m in bounded]
            ax.plot(np.append(angles, angles[0]), values + values[:1], label=name)
        ax.set_xticks(angles, bounded, fontsize=7)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="lower right")
        with atomic_path(out / "radar.png", suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight")
        charts.append("radar.png")
        plt.close(fig)
    return charts


def write_compare(folders: Sequence[str | Path], out: str | Path, charts: bool = True) -> dict[str, Any]:
    out = Path(out)
    payload = compare(folders)
    out.mkdir(parents=True, exist_ok=True)
    images = plot_charts(payload, out) if charts else []
    write_json_atomic(out / "compare.json", payload, indent=1)
    write_text_atomic(out / "compare.md", markdown(payload))
    write_text_atomic(out / "compare.html", html_compare(payload, images))
    return payload
