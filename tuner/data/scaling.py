"""Numeric statistics of the encoding written out, and the checks of its plain-list form.

:func:`robust_statistics` and :func:`smooth_clip` are the ``robust`` scaler (RealMLP-TD's
preprocessing for MLPs): centre on the median, divide by the inter-quartile range (by half the
range where that is 0; a constant column gets factor 0), then clip smoothly into (-3, 3).
:func:`floats` and :func:`names_list` read the lists of a stored encoding strictly (a damaged
or hand-edited ``model.pt`` is refused, not applied).
"""

from __future__ import annotations

from typing import Any

import numpy as np

CLIP = 3.0
"""The robust scaler's smooth clipping: ``z / sqrt(1 + (z / CLIP)**2)`` keeps |z| below it."""


def robust_statistics(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per column of ``x`` (filled, float64): the median and the factor that scales by the
    inter-quartile range; where that is 0, by half the range (as RealMLP-TD's robust scaling
    does); where that is 0 too (a constant column), 0, so the column encodes as 0."""
    median = np.median(x, axis=0)
    spread = np.quantile(x, 0.75, axis=0) - np.quantile(x, 0.25, axis=0)
    flat = spread == 0
    spread[flat] = 0.5 * (x.max(axis=0) - x.min(axis=0))[flat]
    with np.errstate(divide="ignore", over="ignore"):
        factor = np.where((spread > 0) & np.isfinite(spread), 1.0 / spread, 0.0)
    factor[~np.isfinite(factor)] = 0.0
    return [float(v) for v in median], [float(v) for v in factor]


def smooth_clip(z: np.ndarray) -> np.ndarray:
    """``z / sqrt(1 + (z / CLIP)**2)``: about ``z`` near 0, tending to +-CLIP; an infinite
    ``z`` (a value far beyond the train rows) gives +-CLIP."""
    with np.errstate(invalid="ignore", over="ignore"):
        out = z / np.hypot(1.0, z / CLIP)
    return np.where(np.isinf(z), np.sign(z) * CLIP, out)


def floats(values: Any, n: int, what: str) -> list[float]:
    if not isinstance(values, (list, tuple)) or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) for v in values
    ):
        raise ValueError(f"{what}: expected a list of numbers")
    out = [float(v) for v in values]
    if len(out) != n:
        raise ValueError(f"{what}: expected {n} values, got {len(out)}")
    if not all(np.isfinite(out)):
        raise ValueError(f"{what}: expected finite numbers")
    return out


def names_list(values: Any, what: str) -> list[str]:
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{what}: expected a list of strings")
    if len(set(values)) != len(values):
        raise ValueError(f"{what}: names repeat")
    return list(values)


def unique_names(names: list[str]) -> list[str]:
    """``names`` with a repeated one suffixed ``#2``, ``#3``... (the first keeps its name):
    unchanged when no name repeats."""
    if len(set(names)) == len(names):
        return names
    taken = set(names)
    seen: set[str] = set()
    out = []
    for name in names:
        if name in seen:
            k = 2
            while f"{name}#{k}" in taken:
                k += 1
            name = f"{name}#{k}"
            taken.add(name)
        seen.add(name)
        out.append(name)
    return out
