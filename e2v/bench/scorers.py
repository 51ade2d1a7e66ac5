"""The scorer set of a bench run: every e2v scorer module imported (so ``registry.build("scorer", ...)`` finds them;
this module is e2v's ``e2v.plugins`` entry point, so ``e2v registry scorer`` lists them), the default CPU set, and
building a set from specs.

A spec is a registered name or a mapping / JSON object ``{"name": ..., **options}``. Defaults that cannot be built
here (``id_consistency`` without dlib) are skipped with a message; a scorer asked for explicitly must build.
"""

from __future__ import annotations

import importlib
import json
from typing import Any, Callable, Mapping, Sequence

from e2v import registry
from e2v.bench.scorer import Scorer

SCORER_MODULES = ("e2v.bench.motion", "e2v.bench.consistency", "e2v.bench.quality", "e2v.bench.truth", "e2v.bench.text")

DEFAULT_SCORERS = (
    "id_consistency",
    "object_consistency",
    "background_consistency",
    "image_quality",
    "aesthetic",
    "motion_smoothness",
    "dynamic_degree",
    "motion_amplitude",
    "subject_match",
    "psnr",
    "psnr_flat",
)


def load_scorers() -> None:
    """Import every e2v scorer module (registers them under the ``scorer`` kind)."""
    for module in SCORER_MODULES:
        importlib.import_module(module)


def parse_scorer_spec(text: str) -> str | dict[str, Any]:
    """A ``--scorer`` value: a name, or a JSON object with a ``name`` key."""
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--scorer {text!r}: not valid JSON ({err.msg})") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ValueError(f"--scorer {text!r}: a JSON spec needs a string 'name'")
        return spec
    return text


def spec_name(spec: str | Mapping[str, Any]) -> str:
    return spec if isinstance(spec, str) else spec["name"]


def build_scorers(specs: Sequence[str | Mapping[str, Any]] | None = None,
                  warn: Callable[[str], None] = print) -> list[Scorer]:
    """Scorers from ``specs`` (None: the defaults, skipping those whose optional dependency is missing)."""
    load_scorers()
    defaults = specs is None
    scorers: list[Scorer] = []
    for spec in DEFAULT_SCORERS if defaults else specs:
        try:
            scorer = registry.build("scorer", spec)
        except ImportError as err:
            if not defaults:
                raise
            warn(f"skipping {spec_name(spec)}: {err}")
            continue
        scorer.name = scorer.name or spec_name(spec)
        if scorer.name in {s.name for s in scorers}:
            raise ValueError(f"scorer {scorer.name!r} is asked for twice")
        scorers.append(scorer)
    return scorers


load_scorers()  # importing this module (the e2v.plugins entry point) registers every e2v scorer
