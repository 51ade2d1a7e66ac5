"""argparse value types that reject bad numbers at parse time (argparse then exits with code 2, naming the option),
and :class:`BadInput`, what e2v's commands raise for bad options or input files found after parsing (exit code 2)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any, Callable

from e2v.frames import RULE, is_frame_count


class BadInput(ValueError):
    """An option or input file of an ``e2v`` command that cannot work; the command exits with code 2."""


def _number(cast: Callable[[str], Any], minimum: float, inclusive: bool, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, True, "an integer >= 1")
nonnegative_int = _number(int, 0, True, "an integer >= 0")
positive_float = _number(float, 0.0, False, "a finite number > 0")
nonnegative_float = _number(float, 0.0, True, "a finite number >= 0")


def frame_count(text: str) -> int:
    """A 4k+1 frame count (1, 5, 9, ...)."""
    value = positive_int(text)
    if not is_frame_count(value):
        raise argparse.ArgumentTypeError(f"frames must be {RULE}, got {text!r}")
    return value


def json_value(text: str) -> Any:
    """A JSON value (e.g. ``'[[17, 256, 256]]'``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None


def registry_spec(text: str) -> Any:
    """A registry spec: JSON (``'{"name": "wan", "preset": "tiny"}'``) or a bare name."""
    stripped = text.strip()
    if not stripped:
        raise argparse.ArgumentTypeError("expected a component name or a JSON spec, got an empty string")
    return json_value(stripped) if stripped[0] in "{[\"" else stripped
