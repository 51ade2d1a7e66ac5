"""argparse value types that reject bad numbers at parse time (argparse then exits with code 2, naming the option),
:class:`BadInput`, what e2v's commands raise for bad options or input files found after parsing (exit code 2), and
:class:`HelpFormatter`, the ``--help`` layout of every e2v command (defaults shown, docstring markup removed)."""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
from typing import Any, Callable

from e2v.frames import RULE, is_frame_count


class BadInput(ValueError):
    """An option or input file of an ``e2v`` command that cannot work; the command exits with code 2."""


_REST_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|ref):`~?([^`]+)`")


def plain_text(text: str) -> str:
    """Docstring text without reST markup: ``x`` and :func:`x` become x."""
    return _REST_ROLE.sub(r"\1", text).replace("``", "")


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` text with each option's default (when it has one to show) and without reST markup."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain_text(text))

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        return bool(action.option_strings) and action.default not in (None, False, argparse.SUPPRESS)

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._shows_default(action):  # an option without help still shows its default
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = plain_text(action.help or "")
        if self._shows_default(action) and "default" not in text:
            text += " (default: %(default)s)"
        return text


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
