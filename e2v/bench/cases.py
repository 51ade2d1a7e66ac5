"""The bench cases file: JSONL, one case per line, paths relative to the cases file.

    {"id": "case_1", "prompt": "a man walks his dog", "references": [{"path": "refs/man.png", "kind": "human"},
     {"path": "refs/dog.png", "kind": "animal"}], "video": "truth/case_1.mp4"}

``video`` (optional) is a ground-truth clip: the pixel metrics compare against it. ``kind`` is one of the e2v
reference kinds (human, face, object, animal, clothes, background, ...); it decides which consistency scorer judges
the reference (faces and humans: ID; backgrounds: background; the rest: object). Blank lines are skipped. Every
error is a :class:`CasesError` naming the file and line.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from e2v.datamodules.references import check_kind

CASE_KEYS = ("id", "prompt", "references", "video")
MAX_ID = 200  # ID.mp4 / ID.json stay under the usual 255-byte file name limit
ID_PATTERN = re.compile(rf"\w[\w.+=@,-]{{0,{MAX_ID - 1}}}")
REFERENCE_KEYS = ("path", "kind")


class CasesError(ValueError):
    """A cases file that cannot be used; the message names ``file:line``."""


@dataclass(frozen=True)
class CaseReference:
    path: Path
    kind: str


@dataclass(frozen=True)
class Case:
    id: str
    prompt: str
    references: tuple[CaseReference, ...]
    video: Path | None = None
    line: int = 0


def _path(value: object, root: Path, where: str, key: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise CasesError(f"{where}: {key!r} must be a non-empty path string, got {value!r}")
    path = Path(value) if os.path.isabs(value) else root / value
    if not path.is_file():
        raise CasesError(f"{where}: {key} {value!r} does not exist (looked for {path})")
    return path


def _video(path: Path, where: str) -> Path:
    """``path`` if it opens as a video (not an image FFmpeg would read as a one-frame video)."""
    import av

    try:
        with av.open(str(path)) as container:
            image = container.format.name == "image2" or container.format.name.endswith("_pipe")
            if not container.streams.video or image:
                raise CasesError(f"{where}: video {path} is not a video file ({container.format.long_name})")
    except av.error.FFmpegError as err:
        raise CasesError(f"{where}: video {path} cannot be opened as a video ({err})") from None
    return path


def parse_case(obj: object, root: Path, where: str, line: int = 0) -> Case:
    """One case from its decoded JSON ``obj``; ``where`` (``file:line``) prefixes every error."""
    if not isinstance(obj, dict):
        raise CasesError(f"{where}: a case must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(CASE_KEYS))
    if unknown:
        raise CasesError(f"{where}: unknown key(s) {unknown}; a case has {', '.join(CASE_KEYS)}")
    for key in ("id", "prompt", "references"):
        if key not in obj:
            raise CasesError(f"{where}: missing {key!r}")
    case_id = obj["id"]
    if not isinstance(case_id, str) or not ID_PATTERN.fullmatch(case_id):
        raise CasesError(f"{where}: 'id' must be 1-{MAX_ID} letters, digits and _ . - + = @ , starting with a "
                         f"letter, digit or _ (usable as a file name and in the report's links); got {case_id!r}")
    if not isinstance(obj["prompt"], str):
        raise CasesError(f"{where}: 'prompt' must be a string, got {obj['prompt']!r}")
    refs = obj["references"]
    if not isinstance(refs, list) or not refs:
        raise CasesError(f"{where}: 'references' must be a non-empty list of {{'path', 'kind'}} objects")
    references = []
    for index, ref in enumerate(refs):
        at = f"{where}: references[{index}]"
        if not isinstance(ref, dict) or "path" not in ref:
            raise CasesError(f"{at} must be an object with a 'path' (and a 'kind'), got {ref!r}")
        extra = sorted(set(ref) - set(REFERENCE_KEYS))
        if extra:
            raise CasesError(f"{at}: unknown key(s) {extra}; a reference has {', '.join(REFERENCE_KEYS)}")
        kind = ref.get("kind", "object")
        if not isinstance(kind, str) or not kind.strip():
            raise CasesError(f"{at}: 'kind' must be a non-empty string, got {kind!r}")
        try:
            kind = check_kind(kind, at)
        except ValueError as err:
            raise CasesError(str(err)) from None
        references.append(CaseReference(_path(ref["path"], root, at, "path"), kind))
    video = obj.get("video")
    video = None if video is None else _video(_path(video, root, where, "video"), where)
    return Case(case_id, obj["prompt"], tuple(references), video, line)


def read_cases(path: str | os.PathLike) -> list[Case]:
    """Every case of a JSONL cases file; CasesError naming ``file:line`` on the first bad line or duplicate id."""
    path = Path(path)
    if not path.is_file():
        raise CasesError(f"{path}: cases file does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CasesError(f"{path}: not UTF-8 text ({err})") from None
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise CasesError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        case = parse_case(obj, path.parent, where, number)
        if case.id in seen:
            raise CasesError(f"{where}: duplicate id {case.id!r} (first on line {seen[case.id]})")
        seen[case.id] = number
        cases.append(case)
    if not cases:
        raise CasesError(f"{path}: no cases (the file is empty)")
    return cases


def case_record(case: Case, root: Path) -> dict:
    """The JSON object of ``case`` with paths relative to ``root`` where possible (the inverse of parse_case)."""

    def rel(path: Path) -> str:
        try:
            return os.path.relpath(path, root)
        except ValueError:  # another drive on Windows
            return str(path)

    record = {"id": case.id, "prompt": case.prompt,
              "references": [{"path": rel(r.path), "kind": r.kind} for r in case.references]}
    if case.video is not None:
        record["video"] = rel(case.video)
    return record
