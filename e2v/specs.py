"""Component specs as jsonargparse types: how LightningCLI sees ``dit: {name: wan, preset: tiny, ...}``.

A LightningModule annotates a component argument with the spec type of its kind (``dit: DiTSpec``). jsonargparse
then checks the spec when the recipe is parsed, against the registry entry it names (:func:`e2v.registry.parse_spec`:
an unknown name, an unknown option or an option of the wrong type fails at parse time, naming the key and the
accepted ones), and ``--print_config`` writes the spec with every option and its default
(:func:`e2v.registry.full_spec`). The value handed to the module is the spec as written, a plain ``dict`` (a bare
name ``"a2"`` becomes ``{"name": "a2"}``), so checkpoints keep plain ``{name: ...}`` hyper-parameters that :func:`e2v.registry.build` rebuilds
without LightningCLI. ``e2v registry KIND NAME`` lists one component's options, types and defaults.
"""

from __future__ import annotations

from typing import Any, Mapping

import yaml
from jsonargparse.typing import register_type

from e2v import registry


class ComponentSpec(dict):
    """Annotation-only base: a registry spec ``"name"`` or ``{"name": ..., **options}`` of ``kind``; values are
    plain strings / dicts, never instances of this class."""

    kind: str = ""


def _deserializer(kind: str):
    def deserialize(value: Any) -> str | dict[str, Any]:
        if isinstance(value, str):  # a name, or a mapping written inline on the command line
            try:
                value = yaml.safe_load(value) if value.lstrip().startswith("{") else value
            except yaml.YAMLError as err:
                raise ValueError(f"a {kind} spec written inline must be YAML/JSON: {err}") from err
        if not isinstance(value, (str, Mapping)):
            raise TypeError(f"a {kind} spec is a name or {{name: ..., ...options}}, got {value!r}")
        registry.parse_spec(kind, value)
        # a bare name becomes {name: ...} (so --print_config can show its options); the same component either way
        return {"name": value} if isinstance(value, str) else dict(value)

    return deserialize


def _serializer(kind: str):
    def serialize(value: Any) -> Any:
        try:
            return registry.full_spec(kind, value)
        except (KeyError, TypeError, ValueError):  # not a valid spec: show it as written
            return value

    return serialize


def spec_type(kind: str, class_name: str) -> type:
    """The jsonargparse-registered annotation type for specs of ``kind``."""
    cls = type(class_name, (ComponentSpec,), {"kind": kind, "__module__": __name__,
                                               "__doc__": f"A {kind} spec: a name or {{name: ..., ...options}}."})
    register_type(cls, _serializer(kind), _deserializer(kind), deserializer_exceptions=(ValueError, TypeError, KeyError),
                  type_check=lambda value, t: False)
    return cls


DiTSpec = spec_type("dit", "DiTSpec")
VAESpec = spec_type("vae", "VAESpec")
TextEncoderSpec = spec_type("text_encoder", "TextEncoderSpec")
ImageEncoderSpec = spec_type("image_encoder", "ImageEncoderSpec")
LayoutSpec = spec_type("reference_layout", "LayoutSpec")
SolverSpec = spec_type("solver", "SolverSpec")
TimestepSamplerSpec = spec_type("timestep_sampler", "TimestepSamplerSpec")
FeatureNetSpec = spec_type("feature_net", "FeatureNetSpec")
FamilySpec = spec_type("family", "FamilySpec")


def spec_kinds(cls: type) -> dict[str, str]:
    """``{argument: kind}`` of the spec-typed ``__init__`` arguments of ``cls`` (e.g. ``{"dit": "dit", ...}``),
    also those a ``**kwargs`` passes on to the parent classes' ``__init__``."""
    import inspect
    import typing

    found = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        for name, hint in typing.get_type_hints(klass.__init__).items():
            for candidate in (hint, *typing.get_args(hint)):
                if isinstance(candidate, type) and issubclass(candidate, ComponentSpec):
                    found.setdefault(name, candidate.kind)
        parameters = inspect.signature(klass.__init__).parameters.values()
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    return found
