"""The component registry: components are picked by ``kind`` and ``name`` in recipes, not by import path.

A recipe names a component either as a plain string (``"wan"``) or as a mapping with a ``name`` key plus the
component's options (``{"name": "wan", "preset": "tiny"}``); :func:`build` turns that spec into an object.
Third parties register their own components with :func:`register` in a module that is imported (listed in
``E2V_PLUGINS`` or exposed through the ``e2v.plugins`` entry-point group), without editing e2v.
"""

from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Mapping

from e2v.typecheck import check_options, type_hints

KINDS = (
    "dit",
    "vae",
    "text_encoder",
    "image_encoder",
    "reference_layout",
    "solver",
    "attention",
    "timestep_sampler",
    "scorer",
    "feature_net",
)

# Modules whose import registers e2v's own components; imported lazily on first lookup.
_BUILTIN_MODULES = (
    "e2v.modules.attention",
    "e2v.modules.dit",
    "e2v.modules.vae",
    "e2v.modules.patch_vae",
    "e2v.modules.text_encoder",
    "e2v.modules.image_encoder",
    "e2v.modules.flow",
    "e2v.modules.layouts",
    "e2v.modules.solvers",
    "e2v.modules.face_encoder",
    "e2v.modules.feature_nets",
    "e2v.modules.reference_vit",
)


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    description: str


_ENTRIES: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_loaded = False


def _check_kind(kind: str) -> None:
    if kind not in _ENTRIES:
        raise ValueError(f"unknown registry kind {kind!r}; kinds are: {', '.join(KINDS)}")


def register(kind: str, name: str, description: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator registering a class or factory function as component ``name`` of ``kind``.

    ``description`` defaults to the first line of the factory's docstring (shown by ``e2v registry``).
    """
    _check_kind(kind)

    def decorator(factory: Callable) -> Callable:
        text = description or ((inspect.getdoc(factory) or "").strip().splitlines() or [""])[0]
        existing = _ENTRIES[kind].get(name)
        if existing is not None and existing.factory is not factory:
            raise ValueError(f"{kind} {name!r} is already registered by {existing.factory.__module__}")
        _ENTRIES[kind][name] = Entry(kind, name, factory, text)
        return factory

    return decorator


def _load_components() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:  # a built-in module not written yet, or an optional dependency
            if err.name != module:
                raise
    for module in filter(None, os.environ.get("E2V_PLUGINS", "").split(",")):
        importlib.import_module(module.strip())
    for entry_point in metadata.entry_points(group="e2v.plugins"):
        entry_point.load()


def entries(kind: str | None = None) -> list[Entry]:
    """All registered entries (of one kind, or of every kind), sorted by kind then name."""
    _load_components()
    kinds = [kind] if kind else list(KINDS)
    for k in kinds:
        _check_kind(k)
    return [_ENTRIES[k][n] for k in kinds for n in sorted(_ENTRIES[k])]


def get(kind: str, name: str) -> Callable[..., Any]:
    """The factory registered as ``name`` of ``kind``; a clear error lists the known names."""
    _load_components()
    _check_kind(kind)
    if name not in _ENTRIES[kind]:
        known = ", ".join(sorted(_ENTRIES[kind])) or "none"
        raise KeyError(f"no {kind} named {name!r} is registered; known {kind} names: {known}")
    return _ENTRIES[kind][name].factory


def parse_spec(kind: str, spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of a recipe spec; checks the name is registered and the options are accepted and of
    the annotated types (TypeError naming the key and the expected type)."""
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, Mapping):
        if "name" not in spec:
            raise ValueError(f"{kind} spec {dict(spec)!r} has no 'name' key; expected e.g. {{'name': ..., ...}}")
        options = {k: v for k, v in spec.items() if k != "name"}
        name = spec["name"]
        if not isinstance(name, str):
            raise TypeError(f"{kind} spec 'name' must be a string, got {name!r}")
    else:
        raise TypeError(f"{kind} spec must be a name or a mapping with a 'name' key, got {type(spec).__name__}")
    factory = get(kind, name)
    parameters = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(options) - set(parameters))
        if unknown:
            raise TypeError(f"{kind} {name!r} got unknown option(s) {unknown}; it accepts: {', '.join(parameters)}")
    check_options(f"{kind} {name!r}", options, type_hints(factory))
    return name, options


def build(kind: str, spec: str | Mapping[str, Any] | None, **defaults: Any) -> Any:
    """Build a component from a recipe spec: ``"name"`` or ``{"name": ..., **options}``.

    ``defaults`` are options the caller supplies (e.g. the DiT's attention backend) that the spec may override;
    those the component does not accept are dropped.
    """
    if spec is None:
        return None
    name, options = parse_spec(kind, spec)
    factory = get(kind, name)
    parameters = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        defaults = {k: v for k, v in defaults.items() if k in parameters}
    return factory(**{**defaults, **options})
