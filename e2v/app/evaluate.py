"""The app's Evaluate and Compare tabs: one video scored with the ``e2v bench`` scorers into a bench report folder
(``OUT/evals/NNNN``, which ``e2v bench compare`` reads like any other), its metrics beside the published A2-Bench
anchors; several report folders compared with ``e2v bench compare``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

from e2v.bench.anchors import ANCHOR_MODELS, anchors_of
from e2v.bench.cases import Case, CaseReference
from e2v.bench.compare import write_compare
from e2v.bench.report import direction, fmt, range_text
from e2v.bench.runner import score_cases
from e2v.bench.scorers import build_scorers

EVALS_DIR = "evals"
COMPARES_DIR = "compares"
METRIC_COLUMNS = ["metric", "value", "range", *ANCHOR_MODELS]


def next_folder(root: Path) -> Path:
    """A new numbered folder ``root/NNNN``."""
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
    folder = root / f"{max(numbers, default=0) + 1:04d}"
    folder.mkdir()
    return folder


def evaluate(video: Path, references: Sequence[tuple[Path, str]], prompt: str, scorers: Sequence[str],
             out: Path) -> tuple[dict[str, Any], list[list[str]], Path]:
    """Score ``video`` against its ``references`` ((path, kind) each) with the named ``scorers`` into a new report
    folder under ``out/evals``; returns the report, the table rows (METRIC_COLUMNS) and the folder."""
    built = build_scorers(list(scorers))
    case = Case("video", prompt, tuple(CaseReference(Path(path), kind) for path, kind in references))
    folder = next_folder(out / EVALS_DIR)
    try:
        report = score_cases([case], lambda _: Path(video), built, folder, progress=False, title="e2v app evaluation")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    rows = []
    for metric, info in report["scorers"].items():
        anchors = anchors_of(metric)
        rows.append([f"{metric} {direction(info)}", fmt(report["summary"].get(metric)), range_text(info),
                     *(fmt(anchors.get(model)) for model in ANCHOR_MODELS)])
    return report, rows, folder


def report_folders(roots: Sequence[Path]) -> list[str]:
    """Every bench report folder (holding ``report.json``) under ``roots``, sorted."""
    found = {str(path.parent) for root in roots if Path(root).is_dir() for path in Path(root).glob("**/report.json")}
    return sorted(found)


def compare_reports(folders: Sequence[str], out: Path) -> tuple[str, list[str], Path]:
    """``e2v bench compare`` of ``folders`` into a new ``out/compares/NNNN``; returns its markdown, its chart
    files and the folder. CompareError names a folder that is not a report."""
    folder = next_folder(out / COMPARES_DIR)
    try:
        write_compare(folders, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    charts = [str(folder / name) for name in ("bars.png", "radar.png") if (folder / name).is_file()]
    return (folder / "compare.md").read_text(encoding="utf-8"), charts, folder
