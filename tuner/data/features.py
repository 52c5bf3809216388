"""Which columns of a table are features, and how their cells read as numbers or levels.

:func:`infer_columns` takes a table (a DataFrame, the spec and the file's name for messages) and
returns :class:`Columns`: numeric, categorical (text, or declared so), or not a feature (listed
in ``drop``, an unnamed index column, row numbers, an identifier with a distinct value on every
row, each with why). :func:`as_numbers` and :func:`as_text` read one column's cells as float64
(NaN for missing; text is an error naming the cell) or as category strings
(:data:`MISSING_LEVEL` for missing). The encoding fitted on those columns is
:class:`tuner.data.encoding.Encoding`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tuner.data.spec import DataSpec
from tuner.data.table import column_list, quote
from tuner.errors import DataError

logger = logging.getLogger(__name__)

MISSING_LEVEL = "(missing)"
OTHER_LEVEL = "(other)"
NUMERIC_SHARE = 0.9
"""A text column whose non-missing values are at least this share numbers is a numeric column
with stray text in it (an error naming the cell), not a categorical column."""


@dataclass(frozen=True)
class Columns:
    """What each column of a table is."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    dropped: dict[str, str] = field(default_factory=dict)  # column -> why it is not a feature

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "dropped": dict(self.dropped),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Columns:
        return cls(
            numeric=tuple(d["numeric"]),
            categorical=tuple(d["categorical"]),
            dropped=dict(d.get("dropped") or {}),
        )


def _check_names(names: Iterable[str], frame: pd.DataFrame, what: str, display: str) -> None:
    unknown = [n for n in names if n not in frame.columns]
    if unknown:
        raise DataError(
            f"{display}: {what} names no column {column_list(unknown)}; the columns "
            f"are {column_list(frame.columns)}"
        )


def _is_row_number(values: pd.Series) -> bool:
    """Integers equal to 0..n-1 or 1..n in file order: row numbers, not a measurement."""
    if len(values) < 3 or values.isna().any():
        return False
    x = values.to_numpy()
    if not np.issubdtype(x.dtype, np.number):
        return False
    start = x[0]
    return start in (0, 1) and bool(np.array_equal(x, np.arange(start, start + len(x))))


def as_numbers(values: pd.Series, name: str, display: str) -> np.ndarray:
    """``values`` as float64 with NaN for missing; text or an infinite value is an error
    naming the column, the row and the value."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(np.float64).to_numpy()
    if pd.api.types.is_numeric_dtype(values):
        x = values.to_numpy(dtype=np.float64)
    else:
        converted = pd.to_numeric(values, errors="coerce")
        bad = converted.isna() & values.notna()
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise DataError(
                f"{display}: column {quote(name)} is numeric but row "
                f"{int(values.index[i]) + 1} holds {quote(values.iloc[i])}; fix the value, mark "
                f"it as missing (missing = [{quote(values.iloc[i])}] in a data description), or "
                "declare the column categorical"
            )
        x = converted.to_numpy(dtype=np.float64)
    inf = np.isinf(x)
    if inf.any():
        i = int(np.argmax(inf))
        raise DataError(
            f"{display}: column {name!r}, row {int(values.index[i]) + 1}: {x[i]} is not a "
            "finite number"
        )
    return x


def infer_columns(
    frame: pd.DataFrame, spec: DataSpec, display: str, unnamed: Iterable[str] = ()
) -> Columns:
    """Numeric, categorical and dropped columns of ``frame`` (target and split column
    excluded); see the module doc for the rules."""
    for what in ("drop", "categorical", "numeric"):
        _check_names(getattr(spec, what), frame, what, display)
    special = {spec.target, spec.split_column}
    unnamed = set(unnamed)
    numeric: list[str] = []
    categorical: list[str] = []
    dropped: dict[str, str] = {}
    for name in frame.columns:
        if name in special:
            continue
        values = frame[name]
        declared = name in spec.categorical or name in spec.numeric
        if name in spec.drop:
            dropped[name] = "listed in drop"
            continue
        if values.isna().all():
            raise DataError(
                f"{display}: column {name!r} is empty (every value missing); leave it out with "
                f"--drop {name} (or drop = [{name!r}] in a data description)"
            )
        if name in unnamed and not declared:
            dropped[name] = "unnamed column (a row index, as DataFrame.to_csv writes it)"
            continue
        if name in spec.categorical:
            categorical.append(name)
            continue
        if name in spec.numeric:
            as_numbers(values, name, display)
            numeric.append(name)
            continue
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            if _is_row_number(values):
                dropped[name] = "row numbers (0..n-1 or 1..n in file order)"
                continue
            as_numbers(values, name, display)  # rejects infinities
            numeric.append(name)
            continue
        present = values.dropna()
        # A sample decides plainly textual columns without converting every row (2.3 s of
        # 13 s for two text columns of 500,000 rows); the share rule runs on all rows otherwise.
        sample = pd.to_numeric(present.iloc[:2000], errors="coerce")
        share = float(sample.notna().mean())
        if share >= NUMERIC_SHARE / 2:
            share = float(pd.to_numeric(present, errors="coerce").notna().mean())
        if share >= NUMERIC_SHARE:
            as_numbers(values, name, display)  # all numbers, or an error naming the stray text
            numeric.append(name)
            continue
        if present.nunique() == len(present) and len(present) > 20:
            dropped[name] = "an identifier (a distinct value on every row)"
            continue
        categorical.append(name)
    if not numeric and not categorical:
        raise DataError(f"{display}: no feature columns are left besides the target")
    for name, why in dropped.items():
        logger.info("%s: column %r is not a feature: %s", display, name, why)
    return Columns(numeric=tuple(numeric), categorical=tuple(categorical), dropped=dropped)


def as_text(values: pd.Series) -> np.ndarray:
    """Category values as strings: integral numbers without ``.0`` (a column read as float
    because of a missing value still matches ``3``), missing as :data:`MISSING_LEVEL`."""
    out = np.full(len(values), MISSING_LEVEL, dtype=object)
    present = values.notna().to_numpy()
    v = values[present]
    if pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v):
        x = v.to_numpy(dtype=np.float64)
        text = [str(int(a)) if float(a).is_integer() else repr(float(a)) for a in x]
    else:
        text = [_apart(str(a)) for a in v.to_numpy()]
    out[present] = text
    return out


_PLACEHOLDER = re.compile(r'"*\((?:missing|other)\)"*')


def _apart(level: str) -> str:
    """A level kept apart from the placeholders: a value written ``(missing)`` or ``(other)``
    (or one of them already in quotes) gets one more pair of double quotes; any other value
    is unchanged."""
    if level[:1] in ('"', "(") and _PLACEHOLDER.fullmatch(level):
        return f'"{level}"'
    return level
