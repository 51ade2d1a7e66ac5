"""The sampling settings a run was trained for: saved in its checkpoint (``checkpoint["sampling"]``) and its export
(``sampling.json``), and the defaults of ``e2v generate`` / ``e2v bench run`` for that model.

Fields: ``solver`` (``euler`` / ``unipc``), ``shift``, ``steps``, ``guidance`` (text CFG scale, 1 = off),
``image_guidance`` (the reference scale of dual guidance; None or 0: off), ``fps``,
``frames`` (frames of the written video, reference frames excluded), ``height``, ``width`` and, for a distilled
student, ``timesteps``: the fixed DiT timesteps (``1000 * sigma``, shift applied) it was trained to sample at.
Command-line flags override them; :func:`resolve` says where each value came from and warns when a flag leaves a
student's trained schedule.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Optional

SETTINGS_FILE = "sampling.json"  # in an export folder, beside transformer/
SOLVERS = ("unipc", "euler")
SCHEDULE_KEYS = ("solver", "shift", "steps", "guidance")  # what a distilled student's timesteps were trained with


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How to sample a model (see the module docstring). ``timesteps``: None, or ``steps`` DiT timesteps."""

    solver: str = "unipc"
    shift: float = 8.0
    steps: int = 50
    guidance: float = 5.0
    image_guidance: Optional[float] = None
    fps: float = 16.0
    frames: int = 69
    height: int = 480
    width: int = 832
    timesteps: Optional[tuple[float, ...]] = None

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"sampling solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        for key in ("shift", "fps"):
            if not getattr(self, key) > 0:
                raise ValueError(f"sampling {key} must be > 0, got {getattr(self, key)}")
        for key in ("steps", "frames", "height", "width"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"sampling {key} must be an integer >= 1, got {value!r}")
        if not self.guidance >= 0:
            raise ValueError(f"sampling guidance must be >= 0, got {self.guidance}")
        if self.image_guidance is not None and not self.image_guidance >= 0:
            raise ValueError(f"sampling image_guidance must be >= 0 or null (off), got {self.image_guidance}")
        if self.image_guidance == 0:  # 0 turns it off, as in the app's form
            object.__setattr__(self, "image_guidance", None)
        if self.timesteps is not None and len(self.timesteps) != self.steps:
            raise ValueError(f"sampling timesteps {list(self.timesteps)} are not {self.steps} steps")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "sampling settings") -> "SamplingSettings":
        """Settings from a saved dict; ValueError naming ``where`` and the key for an unknown key or bad value."""
        if not isinstance(values, dict):
            raise ValueError(f"{where}: expected a mapping of sampling settings, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown sampling setting(s) {unknown}; known: {', '.join(sorted(known))}")
        values = dict(values)
        if values.get("timesteps") is not None:
            values["timesteps"] = tuple(float(t) for t in values["timesteps"])
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["timesteps"] = None if self.timesteps is None else list(self.timesteps)
        return values

    def solver_spec(self, schedule: str = "current") -> dict[str, Any]:
        """The registry spec of the solver these settings sample with."""
        spec = {"name": self.solver, "shift": self.shift, "num_steps": self.steps, "schedule": schedule}
        if self.timesteps is not None:
            spec["timesteps"] = list(self.timesteps)
        return spec


DEFAULTS = SamplingSettings()  # a model that saved none: the official SkyReels-A2 settings (69 frames = 81 - 12)


def read_saved(source: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The sampling settings saved with a model: a checkpoint file's ``"sampling"``, a distributed checkpoint's
    ``meta.pt``, or an export / release folder's ``sampling.json``; None when it has none (older runs, official
    weights)."""
    from e2v.modules.weights import load_checkpoint

    path = Path(source)
    if path.is_dir() and (path / SETTINGS_FILE).is_file():
        try:
            return json.loads((path / SETTINGS_FILE).read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"{path / SETTINGS_FILE} is not valid JSON: {err}") from None
    if path.is_dir():
        path = path / "meta.pt"
        if not path.is_file():
            return None
    checkpoint = load_checkpoint(path, mmap=True)
    if "sampling" in checkpoint:
        return checkpoint["sampling"]
    solver = (checkpoint.get("hyper_parameters") or {}).get("sample_solver")  # a run from before saved settings
    if not solver:
        return None
    name, options = (solver, {}) if isinstance(solver, str) else (solver["name"], solver)
    saved = {"solver": name, "shift": options.get("shift"), "steps": options.get("num_steps")}
    return {key: value for key, value in saved.items() if value is not None}


@dataclasses.dataclass(frozen=True)
class Resolved:
    """Settings in force, where each came from (``flag`` / ``model`` / ``default``) and warnings to show."""

    settings: SamplingSettings
    sources: dict[str, str]
    warnings: list[str]

    def describe(self) -> str:
        """One line: every value and its source, e.g. ``sampling: solver euler (model), steps 8 (flag), ...``."""
        s = self.settings
        values = {"solver": s.solver, "shift": f"{s.shift:g}", "steps": s.steps, "guidance": f"{s.guidance:g}",
                  "image guidance": "off" if s.image_guidance is None else f"{s.image_guidance:g}",
                  "fps": f"{s.fps:g}", "frames": s.frames, "size": f"{s.height}x{s.width}"}
        source = {**self.sources, "size": self.sources["height"], "image guidance": self.sources["image_guidance"]}
        parts = [f"{key} {value} ({source[key]})" for key, value in values.items()]
        if s.timesteps is not None:
            parts.append(f"timesteps {[round(t, 1) for t in s.timesteps]} ({self.sources['timesteps']})")
        return "sampling: " + ", ".join(parts)


def resolve(saved: Optional[dict[str, Any]], flags: dict[str, Any], where: str = "the model") -> Resolved:
    """Merge ``flags`` (None: not given) over the ``saved`` settings over :data:`DEFAULTS`.

    A student's ``timesteps`` hold only while ``steps``, ``solver`` and ``shift`` stay as trained; a flag changing
    any of them (or the guidance it was distilled for) drops back to the solver's own schedule with a warning."""
    model = SamplingSettings.from_dict(saved, f"{where}: saved sampling settings") if saved else None
    base = model or DEFAULTS
    given = {key: value for key, value in flags.items() if value is not None}
    values = {**dataclasses.asdict(base), **given}
    sources = {f.name: "flag" if f.name in given else "model" if model else "default"
               for f in dataclasses.fields(SamplingSettings)}
    warnings = []
    if base.timesteps is not None:
        changed = [f"--{key} {given[key]:g}" if isinstance(given[key], float) else f"--{key} {given[key]}"
                   for key in SCHEDULE_KEYS if key in given and given[key] != getattr(base, key)]
        if changed:
            warnings.append(f"{' '.join(changed)} leaves the trained schedule of {where} ({base.steps} {base.solver} "
                            f"steps at timesteps {[round(t, 1) for t in base.timesteps]}, guidance {base.guidance:g})")
            if any(key in given and given[key] != getattr(base, key) for key in ("steps", "solver", "shift")):
                values["timesteps"] = None
    return Resolved(SamplingSettings(**values), sources, warnings)
