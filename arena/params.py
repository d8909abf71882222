"""Typed, validated plugin parameters.

Every plugin declares its parameters once; the same declaration validates tournament YAML, CLI
flags and Python calls, so a bad value is rejected before any compute starts, with one line that
names the parameter, the value and what is accepted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any


class ArenaError(Exception):
    """A user-facing error: its message is one line, printed without a traceback by the CLI."""


class ParamError(ArenaError, ValueError):
    """A parameter value is unknown, of the wrong type or out of range."""


_TYPES = {int: "int", float: "float", bool: "bool", str: "str", tuple: "list of int"}


@dataclass(frozen=True)
class Param:
    """One parameter: type, default, and the accepted range or choices."""

    name: str
    type: type
    default: Any
    help: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    optional: bool = False  # None is accepted (e.g. an optional checkpoint path)
    pattern: str | None = None  # str params: a regex the whole value must match (e.g. r"\d+(,\d+)+")
    example: str | None = None  # str params with a pattern: a valid value, shown in the error message

    def accepted(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        t = _TYPES.get(self.type, self.type.__name__)
        if self.pattern is not None:
            return f"{t} matching {self.pattern!r}" + (f", e.g. {self.example!r}" if self.example else "")
        if self.low is not None and self.high is not None:
            return f"{t} in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"{t} >= {self.low}"
        if self.high is not None:
            return f"{t} <= {self.high}"
        return t

    def coerce(self, value: Any, owner: str) -> Any:
        where = f"{owner}: param '{self.name}'"
        shown = show(value)
        if value is None and self.optional:
            return None
        t = self.type
        ok = True
        if t is bool:
            ok = isinstance(value, bool)
        elif t is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif t is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                try:
                    value = float(value)
                except OverflowError:  # an int too large for a float (YAML reads 1e999 digits as int)
                    raise ParamError(f"{where} = {shown}: expected a finite {self.accepted()}") from None
                if not math.isfinite(value):  # NaN passes every range check: refuse it by name
                    raise ParamError(f"{where} = {shown}: expected a finite {self.accepted()}")
        elif t is str:
            ok = isinstance(value, str)
        elif t is tuple:  # a list of ints (YAML ``[75, 90]``), kept as a tuple so a Recipe stays hashable
            ok = isinstance(value, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool)
                                                          for x in value)
            if ok:
                value = tuple(value)
        if not ok:
            raise ParamError(f"{where} = {shown}: expected {self.accepted()}")
        if self.pattern is not None and isinstance(value, str) and re.fullmatch(self.pattern, value) is None:
            raise ParamError(f"{where} = {shown}: expected {self.accepted()}")
        if self.choices is not None and value not in self.choices:
            raise ParamError(f"{where} = {shown}: expected {self.accepted()}")
        items = value if isinstance(value, tuple) else (value,)  # a list's bounds hold for each element
        if self.low is not None and any(x < self.low for x in items):
            raise ParamError(f"{where} = {shown}: expected {self.accepted()}")
        if self.high is not None and any(x > self.high for x in items):
            raise ParamError(f"{where} = {shown}: expected {self.accepted()}")
        return value


def show(value: Any, limit: int = 60) -> str:
    """A value as it goes into a one-line error: its repr (control characters escaped), shortened."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        text = f"<int of about {value.bit_length() * 3 // 10} digits>" if isinstance(value, int) else "<value>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class ParamSpec:
    """The full parameter list of a plugin."""

    params: tuple[Param, ...] = field(default_factory=tuple)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate(self, values: dict[str, Any] | None, owner: str) -> dict[str, Any]:
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ParamError(f"{owner}: params must be a mapping, got {type(values).__name__}")
        values = dict(values)
        by_name = {p.name: p for p in self.params}
        unknown = sorted((k for k in values if k not in by_name), key=str)  # YAML keys may be ints, None
        if unknown:
            valid = ", ".join(sorted(by_name)) or "(none)"
            raise ParamError(f"{owner}: unknown param {show(unknown[0])}; valid params: {valid}")
        out = {}
        for p in self.params:
            out[p.name] = p.coerce(values[p.name], owner) if p.name in values else p.default
        return out
