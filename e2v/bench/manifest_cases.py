"""A triplet manifest (e.g. the tiny world's ``heldout.jsonl`` written by ``e2v data synth``) -> a bench cases file.

Each record becomes a case with the same id, ``caption`` as ``prompt``, its references (path and kind; masks and
boxes are not part of the cases format and are dropped) and its clip as the ground-truth ``video``. So
``e2v bench score --videos`` on a folder of ``ID.mp4`` compares a model's videos with the truth, and scoring the
manifest's own clips gives the truth's scores. ``rotate=True`` is the control: every case gets the references of
the next case (the last the first's), so consistency should drop when the references are not the clip's own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from e2v.atomic import write_text_atomic
from e2v.bench.cases import CasesError
from e2v.datamodules.manifest import ManifestError, read_manifest


def convert_manifest(manifest: str | os.PathLike, out: str | os.PathLike, rotate: bool = False) -> int:
    """Write the cases file ``out`` from a triplet manifest; returns the number of cases. CasesError when the
    manifest has bad records (naming the first) or cannot be read."""
    try:
        report = read_manifest(manifest)
    except (FileNotFoundError, ManifestError) as err:
        raise CasesError(str(err)) from None
    if report.bad:
        raise CasesError(f"{report.bad[0]} ({len(report.bad)} bad record(s); see e2v data check)")
    base = Path(out).resolve().parent
    records = report.good
    references = [record.references for record in records]
    if rotate:
        if len(records) < 2:
            raise CasesError(f"{manifest}: rotating references needs at least 2 records")
        references = references[1:] + references[:1]
    lines = []
    for record, refs in zip(records, references):
        lines.append(json.dumps({
            "id": record.id,
            "prompt": record.caption,
            "references": [{"path": os.path.relpath(ref.path.resolve(), base), "kind": ref.kind} for ref in refs],
            "video": os.path.relpath(record.video.resolve(), base),
        }))
    write_text_atomic(out, "\n".join(lines) + "\n")
    return len(lines)
