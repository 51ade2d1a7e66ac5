"""Recipe options checked against type annotations, so ``std: "abc"`` fails where the component is built, naming
the key and the expected type, instead of deep inside the first training step.

Lenient where recipes are: an int is a float, a list is a tuple, a Path is a str; annotations it cannot judge (callables' signatures,
type variables, unresolvable names) accept anything.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import os
import types
import typing
from typing import Any, Callable, Mapping

_SEQUENCES = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable,
              collections.abc.Collection, collections.abc.Set)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits ``annotation`` (see the module docstring for the leniencies)."""
    if annotation in (Any, object, inspect.Parameter.empty):
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:  # path options given as Path objects by Python callers
        return isinstance(value, (str, os.PathLike))
    if annotation in _SEQUENCES or origin in _SEQUENCES:
        if not isinstance(value, (list, tuple, set, frozenset)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if annotation in _MAPPINGS or origin in _MAPPINGS:
        if not isinstance(value, collections.abc.Mapping):
            return False
        return len(args) != 2 or all(matches(k, args[0]) and matches(v, args[1]) for k, v in value.items())
    if origin is collections.abc.Callable or annotation is collections.abc.Callable:
        return callable(value)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def describe(annotation: Any) -> str:
    """A short reader's name of a type annotation: ``int``, ``float or None``, ``list[int]``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("collections.abc.", "")


def type_hints(target: Callable[..., Any] | type) -> dict[str, Any]:
    """The resolved annotations of a function, of a class's ``__init__`` or of a dataclass's fields ({} if they
    cannot be resolved)."""
    if isinstance(target, type) and not dataclasses.is_dataclass(target):
        target = target.__init__
    try:
        return typing.get_type_hints(target)
    except Exception:  # a name the annotations use is not importable here: check nothing rather than guess
        return {}


def check_options(what: str, options: Mapping[str, Any], hints: Mapping[str, Any]) -> None:
    """TypeError naming ``what``, the key, the expected type and the value when an option does not fit its hint."""
    for key, value in options.items():
        if key in hints and not matches(value, hints[key]):
            raise TypeError(
                f"{what}: option {key!r} must be {describe(hints[key])}, got {value!r} ({type(value).__name__})"
            )
