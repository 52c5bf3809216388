"""Value checks: what a plan value must be, and the one-line error when it is not.

Each check (:class:`Number`, :class:`Choice`, :class:`Bool`, :class:`Text`, :class:`Name`,
:class:`Widths`) parses a value as a plan file, a ``--fix`` string or a stored parameter gives
it, or raises :class:`Invalid` saying what was expected; :func:`message` turns that into the
line the user reads (``lr must be a number > 0, got "x" (a string)``). The training
configuration's fields (:mod:`tuner.train.config`), the plan loader (:mod:`tuner.plan`) and the
stage kinds declare their keys with these. This module imports nothing of tuner.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Upper bounds of the values checked here: far beyond any sensible plan, low enough to catch a
# typo (a network of 5000 layers) before it runs.
MAX_EPOCHS = 10_000
MAX_WIDTH = 65_536
MAX_LAYERS = 64
MAX_NAME = 64


class Invalid(Exception):
    """A value that does not fit its field: what was expected, and whether the value had the
    wrong type (``kind="type"``), was outside the range (``"range"``) or not a known choice."""

    def __init__(self, expected: str, kind: str = "type") -> None:
        super().__init__(expected)
        self.expected, self.kind = expected, kind


def show(value: Any) -> str:
    """A value as the user wrote it (TOML-like), cut short."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, (dt.date, dt.time)):
        text = value.isoformat()
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def type_word(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, numbers.Integral):
        return "an integer"
    if isinstance(value, numbers.Real):
        return "a number"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (dt.date, dt.time)):
        return "a date/time"
    return type(value).__name__


def message(key: str, value: Any, err: Invalid) -> str:
    """One line naming the key, what it must be and what it got."""
    if err.kind == "choice":
        return f"unknown {key} {show(value)}; choose one of: {err.expected}"
    got = show(value) + (f" ({type_word(value)})" if err.kind == "type" else "")
    return f"{key} must be {err.expected}, got {got}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


@dataclass(frozen=True)
class Number:
    """An integer or a finite float, within bounds. ``strict`` (plan files): only TOML numbers
    of the right kind; else (``--fix`` strings, stored params) strings are parsed, and a float
    that is a whole number is accepted as an integer."""

    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def range_text(self) -> str:
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_num(lo)}, {_num(hi)}{right}"
        if lo is not None:
            return f"{'>' if self.low_open else '>='} {_num(lo)}"
        if hi is not None:
            return f"{'<' if self.high_open else '<='} {_num(hi)}"
        return ""

    def expected(self, finite: bool = False) -> str:
        kind = "an integer" if self.integer else "a finite number" if finite else "a number"
        rng = self.range_text()
        return f"{kind} {rng}" if rng else kind

    def parse(self, value: Any, strict: bool) -> int | float:
        if isinstance(value, str) and not strict:
            text = value.strip()
            try:
                value = int(text) if self.integer else float(text)
            except ValueError:
                raise Invalid(self.expected()) from None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise Invalid(self.expected())
        if self.integer:
            if not isinstance(value, numbers.Integral):
                if strict or not (math.isfinite(value) and float(value).is_integer()):
                    raise Invalid(self.expected())
            out: int | float = int(value)
        else:
            try:
                out = float(value)
            except OverflowError:
                raise Invalid(self.expected(finite=True), "range") from None
            if not math.isfinite(out):
                raise Invalid(self.expected(finite=True), "range")
        lo, hi = self.low, self.high
        if (
            lo is not None
            and (out <= lo if self.low_open else out < lo)
            or hi is not None
            and (out >= hi if self.high_open else out > hi)
        ):
            raise Invalid(self.range_text(), "range")
        return out


@dataclass(frozen=True)
class OrAuto:
    """A :class:`Number`, or the word ``"auto"`` (the value follows the data)."""

    number: Number

    def parse(self, value: Any, strict: bool) -> int | float | str:
        if isinstance(value, str) and value.strip() == "auto":
            return "auto"
        try:
            return self.number.parse(value, strict)
        except Invalid as err:
            raise Invalid(f'{err.expected} or "auto"', err.kind) from None


@dataclass(frozen=True)
class Choice:
    choices: tuple[str, ...]

    def parse(self, value: Any, strict: bool) -> str:
        if isinstance(value, str) and value in self.choices:
            return value
        raise Invalid(", ".join(self.choices), "choice")


@dataclass(frozen=True)
class Bool:
    def parse(self, value: Any, strict: bool) -> bool:
        if isinstance(value, bool):
            return value
        raise Invalid("true or false")


@dataclass(frozen=True)
class Text:
    def parse(self, value: Any, strict: bool) -> str:
        if isinstance(value, str):
            return value
        raise Invalid("a string")


@dataclass(frozen=True)
class Name:
    """A plan or stage name: it becomes part of study names and of paths under the workdir
    (``models/<plan>/``, ``reports/<plan>/<stage>_cv.png``), so it is a plain identifier."""

    # plan names may contain "." (never ".."); stage names may not: ``<plan>.<stage>.vN``
    dots: bool

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(
            r"[A-Za-z0-9][A-Za-z0-9_.-]*" if self.dots else r"[A-Za-z0-9][A-Za-z0-9_-]*"
        )

    @property
    def expected(self) -> str:
        chars = 'letters, digits, "_", "-" and "."' if self.dots else 'letters, digits, "_" and "-"'
        return (
            f"{chars} only, starting with a letter or digit"
            + (', without ".."' if self.dots else "")
            + f", at most {MAX_NAME} characters"
        )

    def parse(self, value: Any, strict: bool) -> str:
        if not isinstance(value, str):
            raise Invalid(self.expected)
        if len(value) > MAX_NAME or not self.pattern.fullmatch(value) or ".." in value:
            raise Invalid(self.expected, "range")
        return value


@dataclass(frozen=True)
class Widths:
    """``hidden``: a list of layer widths, or ``"256x256"``."""

    expected = (
        f"a non-empty list of at most {MAX_LAYERS} integer widths in [1, {MAX_WIDTH}] "
        '(e.g. [256, 256] or "256x256")'
    )

    def parse(self, value: Any, strict: bool) -> tuple[int, ...]:
        if isinstance(value, str):
            parts = value.lower().split("x")
            if not all(p.strip().isdigit() for p in parts):
                raise Invalid(self.expected)
            widths = [int(p) for p in parts]
        elif isinstance(value, (list, tuple)):
            widths = []
            for w in value:
                if isinstance(w, bool) or not isinstance(w, numbers.Real):
                    raise Invalid(self.expected)
                if not isinstance(w, numbers.Integral):
                    if strict or not (math.isfinite(w) and float(w).is_integer()):
                        raise Invalid(self.expected)
                widths.append(int(w))
        else:
            raise Invalid(self.expected)
        if not 1 <= len(widths) <= MAX_LAYERS or not all(1 <= w <= MAX_WIDTH for w in widths):
            raise Invalid(self.expected, "range")
        return tuple(widths)


def values_errors(
    key: str, values: Any, where: str, what: str, parse, errors: list[str], limit: int
) -> None:
    """``what`` (``grid.lr``, ``candidates``...) must be a non-empty list of distinct values,
    each accepted by ``parse``."""
    if not isinstance(values, list) or not values or len(values) > limit:
        errors.append(
            f"{where}: {what} must be a non-empty list of at most {limit} values, got "
            f"{show(values)}"
        )
        return
    seen: list[Any] = []
    for j, v in enumerate(values):
        try:
            parsed = parse(v)
        except Invalid as err:
            errors.append(f"{where}: {what}[{j}]: {message(key, v, err)}")
            continue
        if parsed in seen:
            errors.append(f"{where}: {what}[{j}]: {show(v)} is listed twice")
        seen.append(parsed)


def epochs_rule(low: int = 1) -> Number:
    return Number(integer=True, low=low, high=MAX_EPOCHS)
