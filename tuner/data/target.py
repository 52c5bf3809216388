"""Class labels from a target column: classes as they are, or a numeric column binned.

* Text (or boolean) values are classes as they are, in sorted order.
* Integer values are classes as they are (``0``, ``1``, ``2``, ... named by their value).
* A numeric column is binned by a named rule (``decade``: YearPredictionMSD's ``1920s`` ..
  ``2010s``) or by cut points (``[1990, 2000]``: three classes, ``<1990``, ``1990..2000``,
  ``>=2000``).

A target with one class, or one that is obviously continuous (fractional values, or more than
:data:`MAX_CLASSES` distinct values) and not binned, is refused with what to do instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tuner.errors import DataError

logger = logging.getLogger(__name__)

MAX_CLASSES = 100
"""More classes than this is refused: a tabular classifier with so many is rarely meant."""

DECADE_NAMES: tuple[str, ...] = tuple(f"{1920 + 10 * i}s" for i in range(10))
"""Class names of the ``decade`` rule, index = label: ``"1920s"`` .. ``"2010s"``."""


def decade_labels(years: np.ndarray) -> np.ndarray:
    """Decade class per year: ``(year // 10 * 10 - 1920) // 10`` clipped to 0..9, int64."""
    years = np.asarray(years, dtype=np.int64)
    return np.clip((years // 10 * 10 - 1920) // 10, 0, len(DECADE_NAMES) - 1).astype(np.int64)


@dataclass(frozen=True)
class Labels:
    """Encoded labels of the rows that have a target value."""

    y: np.ndarray  # int64 class index per kept row
    names: tuple[str, ...]  # class names, index = label
    keep: np.ndarray  # bool per input row: it has a target value
    rule: str  # "classes" | "decade" | "cut points"


def class_word(manifest: Any) -> str:
    """What a class is called in tables and plots: ``decade`` for YearPredictionMSD, else
    the target column's name. ``manifest``: a :class:`~tuner.data.manifest.Manifest`, its
    JSON form (a dict), or ``None``."""
    if isinstance(manifest, Mapping):
        target = manifest.get("target")
    else:
        target = getattr(manifest, "target", None)
    return target or "decade"


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def encode(
    values: pd.Series, column: str, display: str, bins: str | tuple[float, ...] | None
) -> Labels:
    """Labels of ``values`` (the target column of a table named ``display``)."""
    keep = values.notna().to_numpy()
    present = values[keep]
    if present.empty:
        raise DataError(f"{display}: the target column {column!r} is empty")
    numeric = pd.api.types.is_numeric_dtype(present) and not pd.api.types.is_bool_dtype(present)
    if bins is not None:
        if not numeric:
            converted = pd.to_numeric(present, errors="coerce")
            bad = converted.isna()
            if bad.any():
                row = int(np.flatnonzero(keep)[int(np.argmax(bad.to_numpy()))]) + 1
                raise DataError(
                    f"{display}: target {column!r} is binned but row {row} holds "
                    f"{present[bad].iloc[0]!r}, not a number"
                )
            present = converted
        x = present.to_numpy(dtype=np.float64)
        if not np.isfinite(x).all():
            raise DataError(f"{display}: target {column!r} holds an infinite value")
        if bins == "decade":
            y = decade_labels(np.floor(x).astype(np.int64))
            return Labels(y=y, names=DECADE_NAMES, keep=keep, rule="decade")
        edges = np.asarray(bins, dtype=np.float64)
        y = np.searchsorted(edges, x, side="right").astype(np.int64)
        names = (
            [f"<{_fmt(edges[0])}"]
            + [f"{_fmt(a)}..{_fmt(b)}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
            + [f">={_fmt(edges[-1])}"]
        )
        used = np.unique(y)
        if used.size < 2:
            raise DataError(
                f"{display}: target {column!r} binned at {list(bins)} falls into one class "
                f"({names[int(used[0])]}); choose cut points inside its range "
                f"{_fmt(x.min())}..{_fmt(x.max())}"
            )
        return Labels(y=y, names=tuple(names), keep=keep, rule="cut points")
    if numeric:
        x = present.to_numpy(dtype=np.float64)
        if not np.isfinite(x).all() or not np.all(x == np.floor(x)):
            raise DataError(
                f"{display}: target {column!r} holds fractional numbers (e.g. "
                f"{_example_fraction(x)}): it looks continuous; tuner classifies, so bin it "
                "(bins = [cut, points] in a data description, or --bins)"
            )
        present = pd.Series(x.astype(np.int64), index=present.index)
    classes, y = np.unique(
        present.to_numpy().astype(str) if not numeric else present.to_numpy(), return_inverse=True
    )
    if classes.size < 2:
        raise DataError(
            f"{display}: target {column!r} has one class ({classes[0]!s}); a classifier needs "
            "at least two"
        )
    if classes.size > MAX_CLASSES:
        hint = (
            "it looks continuous; bin it (bins = [cut, points] in a data description, or --bins)"
            if numeric
            else "is it the right column? (--target)"
        )
        raise DataError(
            f"{display}: target {column!r} has {classes.size:,} distinct values, more than "
            f"{MAX_CLASSES} classes: {hint}"
        )
    if not numeric:
        _warn_numeric_spellings([str(c) for c in classes], column, display)
    return Labels(
        y=np.asarray(y, dtype=np.int64).reshape(-1),
        names=tuple(str(c) for c in classes),
        keep=keep,
        rule="classes",
    )


def _warn_numeric_spellings(names: list[str], column: str, display: str) -> None:
    """Text classes are the values as they are (``1``, ``1.0`` and ``'1'`` are three classes):
    warn when some differ only in how a number is written."""
    spellings: dict[float, list[str]] = {}
    for name in names:
        try:
            value = float(name.strip().strip("'\""))
        except ValueError:
            continue
        spellings.setdefault(value, []).append(name)
    same = [group for group in spellings.values() if len(group) > 1]
    if same:
        shown = "; ".join(", ".join(repr(n[:20]) for n in group[:4]) for group in same[:3])
        logger.warning(
            "%s: target %r: classes %s are the same number written differently; they stay "
            "separate classes (text classes are the values as they are): write them one way "
            "if they are one class",
            display,
            column,
            shown,
        )


def _example_fraction(x: np.ndarray) -> str:
    frac = x[np.isfinite(x) & (x != np.floor(x))]
    return f"{frac[0]:g}" if frac.size else "inf"
