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
    "family",
    "shot_detector",
    "quality_filter",
    "element_detector",
    "face_detector",
    "plate_estimator",
    "element_embedder",
    "captioner",
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
    "e2v.modules.canvas_layout",
    "e2v.modules.solvers",
    "e2v.modules.face_encoder",
    "e2v.modules.feature_nets",
    "e2v.modules.reference_vit",
    "e2v.modules.sequence_parallel",
    "e2v.families",
    "e2v.databuild.shots",
    "e2v.databuild.quality",
    "e2v.databuild.elements",
    "e2v.databuild.detectors",
    "e2v.databuild.plate",
    "e2v.databuild.identity",
    "e2v.databuild.captions",
    "e2v.databuild.faces",
    "e2v.databuild.plugins",
)


_EMPTY = inspect.Parameter.empty


@dataclass(frozen=True)
class Option:
    """One option of a component: its type annotation and default (``Option.REQUIRED`` when it has none)."""

    name: str
    annotation: Any
    default: Any

    REQUIRED = _EMPTY


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    # options a ``**kwargs`` factory accepts beyond its signature; given the options of a spec (defaults may depend
    # on them, e.g. a DiT preset's config values), returns ``{name: Option}``
    extra_options: Callable[[Mapping[str, Any]], dict[str, Option]] | None = None


_ENTRIES: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_loaded = False


def _check_kind(kind: str) -> None:
    if kind not in _ENTRIES:
        raise ValueError(f"unknown registry kind {kind!r}; kinds are: {', '.join(KINDS)}")


def register(
    kind: str,
    name: str,
    description: str | None = None,
    extra_options: Callable[[Mapping[str, Any]], dict[str, Option]] | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator registering a class or factory function as component ``name`` of ``kind``.

    ``description`` defaults to the first line of the factory's docstring (shown by ``e2v registry``).
    ``extra_options`` declares what a factory's ``**kwargs`` accept (see :class:`Entry`); without it a ``**kwargs``
    factory accepts any option.
    """
    _check_kind(kind)

    def decorator(factory: Callable) -> Callable:
        text = description or ((inspect.getdoc(factory) or "").strip().splitlines() or [""])[0]
        existing = _ENTRIES[kind].get(name)
        if existing is not None and existing.factory is not factory:
            raise ValueError(f"{kind} {name!r} is already registered by {existing.factory.__module__}")
        _ENTRIES[kind][name] = Entry(kind, name, factory, text, extra_options)
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


def entry(kind: str, name: str) -> Entry:
    """The registry entry of ``name`` of ``kind`` (KeyError listing the known names)."""
    get(kind, name)
    return _ENTRIES[kind][name]


def options(kind: str, name: str, given: Mapping[str, Any] | None = None) -> tuple[dict[str, Option], bool]:
    """``({option: Option}, open)`` of a component: its factory's parameters plus declared extra options;
    ``open`` is True when it also takes undeclared options (a ``**kwargs`` factory without ``extra_options``)."""
    found = entry(kind, name)
    hints = type_hints(found.factory)
    result: dict[str, Option] = {}
    var_keyword = False
    for parameter in inspect.signature(found.factory).parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            var_keyword = True
        elif parameter.kind is not parameter.VAR_POSITIONAL:
            result[parameter.name] = Option(parameter.name, hints.get(parameter.name, _EMPTY), parameter.default)
    if found.extra_options is not None:
        result.update({k: v for k, v in found.extra_options(dict(given or {})).items() if k not in result})
    return result, var_keyword and found.extra_options is None


def split_spec(kind: str, spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of a spec's syntax: ``"name"`` or ``{"name": ..., **options}`` (no lookup)."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ValueError(f"{kind} spec {dict(spec)!r} has no 'name' key; expected e.g. {{'name': ..., ...}}")
        name = spec["name"]
        if not isinstance(name, str):
            raise TypeError(f"{kind} spec 'name' must be a string, got {name!r}")
        return name, {k: v for k, v in spec.items() if k != "name"}
    raise TypeError(f"{kind} spec must be a name or a mapping with a 'name' key, got {type(spec).__name__}")


def parse_spec(kind: str, spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of a recipe spec; checks the name is registered and the options are accepted and of
    the annotated types (TypeError naming the key and the expected type)."""
    name, given = split_spec(kind, spec)
    accepted, open_ended = options(kind, name, given)
    unknown = sorted(set(given) - set(accepted))
    if unknown and not open_ended:
        raise TypeError(f"{kind} {name!r} got unknown option(s) {unknown}; it accepts: {', '.join(accepted)}")
    check_options(f"{kind} {name!r}", given, {k: o.annotation for k, o in accepted.items()})
    return name, given


def _plain(value: Any) -> Any:
    """``value`` as YAML writes it (tuples as lists, dtypes as names); ``_EMPTY`` for what YAML cannot hold."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _EMPTY if any(v is _EMPTY for v in items) else items
    if isinstance(value, Mapping):
        items = {str(k): _plain(v) for k, v in value.items()}
        return _EMPTY if any(v is _EMPTY for v in items.values()) else items
    if type(value).__name__ == "dtype":  # torch.dtype, without importing torch here
        return str(value).removeprefix("torch.")
    return _EMPTY


def full_spec(kind: str, spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """``{"name": ..., **every option}``: the given options plus every other option's default (what
    ``--print_config`` shows). Building it gives the same component as building ``spec``."""
    name, given = parse_spec(kind, spec)
    accepted, _ = options(kind, name, given)
    result: dict[str, Any] = {"name": name}
    for key, option in accepted.items():
        value = _plain(given[key]) if key in given else _plain(option.default)
        if key in given and value is _EMPTY:
            value = given[key]
        if value is not _EMPTY:
            result[key] = value
    result.update({k: v for k, v in given.items() if k not in result})
    return result


def build(kind: str, spec: str | Mapping[str, Any] | None, **defaults: Any) -> Any:
    """Build a component from a recipe spec: ``"name"`` or ``{"name": ..., **options}``.

    ``defaults`` are options the caller supplies (e.g. the DiT's attention backend) that the spec may override;
    those the component does not accept are dropped.
    """
    if spec is None:
        return None
    name, given = parse_spec(kind, spec)
    factory = get(kind, name)
    parameters = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        defaults = {k: v for k, v in defaults.items() if k in parameters}
    return factory(**{**defaults, **given})
