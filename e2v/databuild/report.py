"""The build report: ``OUT/report.json`` (counts per stage, rejections by reason, filter values, throughput) and
``OUT/report.html`` with sample triplets as PNG strips (references | frames) under ``OUT/report/``, and
``OUT/report/records.png``: every record's strip with its caption (the first ``SHEET_LIMIT``)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import cv2
import numpy as np

from e2v.atomic import write_json_atomic, write_text_atomic
from e2v.datamodules.video_io import read_video, save_image

STRIP_HEIGHT = 96


def _fit(image: np.ndarray, height: int = STRIP_HEIGHT) -> np.ndarray:
    scale = height / image.shape[0]
    return cv2.resize(image, (max(1, round(image.shape[1] * scale)), height), interpolation=cv2.INTER_NEAREST)


def triplet_strip(out: Path, record: dict, frames: int = 4) -> np.ndarray:
    """``uint8 [h, w, 3]``: a record's references, a gap, then ``frames`` frames of its clip."""
    from PIL import Image

    refs = [_fit(np.asarray(Image.open(out / r["path"]).convert("RGB"))) for r in record["references"]]
    video = read_video(out / record["video"], None).numpy()
    picks = video[np.linspace(0, len(video) - 1, frames).round().astype(int)]
    gap = np.full((STRIP_HEIGHT, 12, 3), 255, np.uint8)
    return np.concatenate([*refs, gap, *(_fit(f) for f in picks)], axis=1)


SHEET_LIMIT = 64  # records on the contact sheet (the first ones by id)


def contact_sheet(out: Path, records: list[dict], limit: int = SHEET_LIMIT) -> np.ndarray:
    """``uint8 [h, w, 3]``: every record's strip (references | frames, ``triplet_strip``) above its id, kinds and
    caption, one record per row, for the first ``limit`` records."""
    rows = []
    for record in records[:limit]:
        strip = triplet_strip(out, record)
        label = np.full((22, strip.shape[1], 3), 255, np.uint8)
        kinds = "/".join(r["kind"] for r in record["references"])
        text = f"{record['id']} [{kinds}] {record['caption']}".encode("ascii", "replace").decode()
        cv2.putText(label, text, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([strip, label]))
    width = max(row.shape[1] for row in rows)
    return np.concatenate([np.pad(row, ((0, 6), (0, width - row.shape[1]), (0, 0)), constant_values=255)
                           for row in rows])


def write_report(out: str | Path, counts: dict, samples: list[dict], results: list[dict], config: dict,
                 extra: dict | None = None, records: list[dict] | None = None) -> dict:
    """Write report.json and report.html; returns the report."""
    out = Path(out)
    seconds = sum(r.get("seconds", 0.0) for r in results)
    cut = sum(len(r.get("clips", [])) + sum(1 for c in r.get("rejected_clips", []) if c["reason"] != "too_short")
              for r in results)
    values: dict[str, list[float]] = {}
    for result in results:
        for clip in result.get("clips", []) + result.get("rejected_clips", []):
            for name, value in clip.get("values", {}).items():
                values.setdefault(name, []).append(value)
    report = {
        "counts": counts,
        "throughput": {"video_seconds": round(seconds, 2), "clips_cut": cut,
                       "clips_per_minute_per_core": round(cut / (seconds / 60), 2) if seconds else None},
        "filter_values": {k: {"min": round(min(v), 5), "median": round(float(np.median(v)), 5), "max": round(max(v), 5)}
                          for k, v in sorted(values.items())},
        "rejected_videos": [{"video": r["name"], "reason": r["reason"], "message": r["message"]}
                            for r in results if r.get("status") != "ok"],
        "config": config, **(extra or {}),
    }
    write_json_atomic(out / "report.json", report, indent=2)
    rows = []
    for record in samples:
        name = f"report/{record['id']}.png"
        save_image(out / name, triplet_strip(out, record))
        sources = ", ".join(r["ref_source"] for r in record["references"])
        rows.append(f"<figure><img src='{html.escape(name)}'><figcaption>{html.escape(record['id'])}: "
                    f"{html.escape(record['caption'])} <small>({html.escape(sources)})</small></figcaption></figure>")
    sheet = ""
    if records:
        save_image(out / "report" / "records.png", contact_sheet(out, records))
        sheet = (f"<h2>Every record (the first {min(len(records), SHEET_LIMIT)} of {len(records)})</h2>"
                 f"<img src='report/records.png'>")
    page = f"""<!doctype html><meta charset="utf-8"><title>e2v data build report</title>
<style>body{{font-family:sans-serif;margin:2em}} img{{image-rendering:pixelated}} pre{{background:#f4f4f4;padding:1em}}</style>
<h1>e2v data build</h1>
<h2>Counts</h2><pre>{html.escape(json.dumps(report["counts"], indent=2))}</pre>
<h2>Throughput</h2><pre>{html.escape(json.dumps(report["throughput"], indent=2))}</pre>
<h2>Rejected videos</h2><pre>{html.escape(json.dumps(report["rejected_videos"], indent=2))}</pre>
<h2>Filter values (every clip that reached the filters)</h2><pre>{html.escape(json.dumps(report["filter_values"], indent=2))}</pre>
<h2>Sample triplets (references | frames)</h2>{''.join(rows)}
{sheet}
"""
    write_text_atomic(out / "report.html", page)
    return report
