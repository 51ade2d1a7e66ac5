"""OpenS2V-Eval's case files -> an e2v bench cases file.

OpenS2V-Eval (huggingface ``BestWishYsh/OpenS2V-Eval``) ships ``Open-Domain_Eval.json``, ``Human-Domain_Eval.json``
and ``Single-Domain_Eval.json`` beside an ``Images/`` folder. Fields assumed (as read by OpenS2V-Nexus'
``eval/get_*.py`` scripts): one JSON object mapping a case id (``singleobj_1``, ``multiobject_30``,
``singleface_3``, ``singlehuman_7``, ...; the generated video is ``ID.mp4``) to

    {"prompt": str, "img_paths": [path relative to the OpenS2V-Eval folder, ...], "class_label": [str, ...]}

with one ``class_label`` per image. Other keys are ignored. Kinds: a "Man"/"Woman"/"person"/"human" label is
``face`` in a case whose id contains ``face`` (OpenS2V's face cases) and ``human`` otherwise; a label containing
"background" or "scene" is ``background``; anything else is ``object``. Reference paths are written relative to
the cases file, so the cases file can live anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from e2v.atomic import write_text_atomic
from e2v.bench.cases import CasesError

PERSON_LABELS = ("man", "woman", "person", "human", "boy", "girl")
BACKGROUND_WORDS = ("background", "scene")


def kind_of(label: str, case_id: str) -> str:
    text = label.strip().lower()
    if text in PERSON_LABELS:
        return "face" if "face" in case_id.lower() else "human"
    if any(word in text for word in BACKGROUND_WORDS):
        return "background"
    return "object"


def convert(eval_json: str | os.PathLike, images_root: str | os.PathLike | None, out: str | os.PathLike) -> int:
    """Write the cases file ``out`` from an OpenS2V-Eval json; ``images_root`` (default: the json's folder) is
    what ``img_paths`` are relative to. Returns the number of cases. CasesError names the bad case."""
    source = Path(eval_json)
    root = Path(images_root) if images_root is not None else source.parent
    try:
        data: Any = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CasesError(f"{source}: cannot read an OpenS2V-Eval json ({err})") from None
    if not isinstance(data, dict) or not data:
        raise CasesError(f"{source}: expected a non-empty object mapping case ids to cases")
    out = Path(out)
    base = out.resolve().parent
    lines = []
    for case_id, case in data.items():
        where = f"{source}: case {case_id!r}"
        if not isinstance(case, dict):
            raise CasesError(f"{where}: expected an object with prompt, img_paths, class_label")
        paths, labels = case.get("img_paths"), case.get("class_label", [])
        if not isinstance(case.get("prompt"), str) or not isinstance(paths, list) or not paths:
            raise CasesError(f"{where}: needs a string 'prompt' and a non-empty list 'img_paths'")
        if not isinstance(labels, list) or len(labels) not in (0, len(paths)):
            raise CasesError(f"{where}: 'class_label' must list one label per image ({len(paths)})")
        references = []
        for index, path in enumerate(paths):
            image = root / str(path)
            if not image.is_file():
                raise CasesError(f"{where}: image {path!r} not found under {root}")
            label = str(labels[index]) if labels else ""
            references.append({"path": os.path.relpath(image.resolve(), base), "kind": kind_of(label, case_id)})
        lines.append(json.dumps({"id": str(case_id), "prompt": case["prompt"], "references": references}))
    write_text_atomic(out, "\n".join(lines) + "\n")
    return len(lines)
