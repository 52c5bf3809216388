"""Feature encoding of a table: which columns are features, fitted on the train rows only.

:func:`infer_columns` decides what each column is: numeric, categorical (text, or declared so),
or not a feature (listed in ``drop``, an unnamed index column, row numbers, an identifier with a
distinct value on every row). :func:`fit` learns the encoding from the train rows with
scikit-learn (``SimpleImputer`` for numeric missing values, ``StandardScaler`` or
``QuantileTransformer`` for scaling, ``OneHotEncoder`` with rare levels grouped) and returns
what they learned as a plain, JSON-able dict. :func:`transform` applies that dict to any rows:
the prepared splits and, later, ``predict``'s input, so both go through the same code, and
``model.pt`` holds no pickled objects (it loads with ``weights_only=True``) and does not depend
on the scikit-learn version that fitted it.

Categorical missing values are a level of their own (``(missing)``); a level never seen in
train, or seen fewer than ``min_frequency`` times, goes to the column's ``(other)`` indicator
(all zeros when train had no rare level), exactly as ``OneHotEncoder(handle_unknown=
"infrequent_if_exist")`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tuner.data.spec import DataSpec
from tuner.data.table import column_list
from tuner.errors import DataError

logger = logging.getLogger(__name__)

MISSING_LEVEL = "(missing)"
OTHER_LEVEL = "(other)"
NUMERIC_SHARE = 0.9
"""A text column whose non-missing values are at least this share numbers is a numeric column
with stray text in it (an error naming the cell), not a categorical column."""
QUANTILES = 1000
"""``n_quantiles`` of the quantile transform (scikit-learn's default), at most the train rows."""


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


def _row(frame: pd.DataFrame, position: int) -> int:
    """1-based data row number of a frame position (the frame's index counts file rows)."""
    return int(frame.index[position]) + 1


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
                f"{display}: column {name!r} is numeric but row {int(values.index[i]) + 1} "
                f"holds {values.iloc[i]!r}; fix the value, mark it as missing (missing = "
                f"[{str(values.iloc[i])!r}] in a data description), or declare the column "
                "categorical"
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
        text = [str(a) for a in v.to_numpy()]
    out[present] = text
    return out


# --------------------------------------------------------------------------- fit


def fit(
    frame: pd.DataFrame, columns: Columns, spec: DataSpec, *, seed: int, display: str
) -> dict[str, Any]:
    """Learn the encoding from the train rows ``frame``; returns it as a plain dict."""
    state: dict[str, Any] = {
        "numeric": list(columns.numeric),
        "impute": spec.impute,
        "scaler": spec.scaler,
        "categorical": [],
    }
    if columns.numeric:
        x = np.column_stack([as_numbers(frame[c], c, display) for c in columns.numeric])
        missing = np.isnan(x)
        if spec.impute == "refuse" and missing.any():
            r, c = np.argwhere(missing)[0]
            raise DataError(
                f"{display}: column {columns.numeric[c]!r}, row {_row(frame, r)}: missing value "
                "(impute = 'refuse'; use impute = 'median' or 'mean' to fill it from the train rows)"
            )
        from sklearn.impute import SimpleImputer

        imputer = SimpleImputer(
            strategy="median" if spec.impute == "refuse" else spec.impute, keep_empty_features=True
        )
        x = imputer.fit_transform(x)
        state["fill"] = [float(v) for v in imputer.statistics_]
        if spec.scaler == "standard":
            from sklearn.preprocessing import StandardScaler

            with np.errstate(all="ignore"):
                scaler = StandardScaler().fit(x)
            bad = ~(np.isfinite(scaler.mean_) & np.isfinite(scaler.scale_))
            if bad.any():
                c = int(np.argmax(bad))
                raise DataError(
                    f"{display}: column {columns.numeric[c]!r} has values too large to "
                    f"standardize (largest magnitude {np.abs(x[:, c]).max():g}); use "
                    "scaler = 'quantile' (or --scaler quantile), or rescale the column"
                )
            state["mean"] = [float(v) for v in scaler.mean_]
            state["scale"] = [float(v) for v in scaler.scale_]
        else:
            from sklearn.preprocessing import QuantileTransformer

            qt = QuantileTransformer(
                n_quantiles=min(QUANTILES, len(x)),
                output_distribution="normal",
                subsample=None,
                random_state=seed,
            ).fit(x)
            state["quantiles"] = qt.quantiles_.T.tolist()  # per column
            state["references"] = [float(v) for v in qt.references_]
    if columns.categorical:
        from sklearn.preprocessing import OneHotEncoder

        # The encoder is fitted on each column's codes in sorted-level order, which gives the
        # same levels and grouping as fitting it on the strings: on 500,000 rows of a 200-level
        # column that takes 0.1 s instead of 5.7 s (scikit-learn's unique of Python objects).
        for name in columns.categorical:
            codes, uniques = pd.factorize(as_text(frame[name]), sort=True)
            enc = OneHotEncoder(
                handle_unknown="infrequent_if_exist",
                min_frequency=spec.min_frequency,
                max_categories=spec.max_levels,
                sparse_output=False,
            ).fit(codes.reshape(-1, 1))
            rare = enc.infrequent_categories_[0]
            rare = set() if rare is None else {int(v) for v in rare}
            levels = [str(uniques[int(c)]) for c in enc.categories_[0] if int(c) not in rare]
            state["categorical"].append({"name": name, "levels": levels, "other": bool(rare)})
    state["feature_names"] = feature_names(state)
    return state


def feature_names(state: Mapping[str, Any]) -> list[str]:
    """Names of the encoded columns, in order: numeric, then ``column=level`` indicators."""
    names = list(state["numeric"])
    for col in state["categorical"]:
        names += [f"{col['name']}={level}" for level in col["levels"]]
        if col["other"]:
            names.append(f"{col['name']}={OTHER_LEVEL}")
    return names


# --------------------------------------------------------------------------- transform


def _quantile(x: np.ndarray, state: Mapping[str, Any]) -> np.ndarray:
    """scikit-learn's QuantileTransformer (normal output) restored from its fitted
    quantiles and references, applied to ``x``."""
    from sklearn.preprocessing import QuantileTransformer

    quantiles = np.asarray(state["quantiles"], dtype=np.float64).T
    qt = QuantileTransformer(n_quantiles=quantiles.shape[0], output_distribution="normal")
    qt.quantiles_ = quantiles
    qt.references_ = np.asarray(state["references"], dtype=np.float64)
    qt.n_features_in_ = quantiles.shape[1]
    return qt.transform(x)


def transform(frame: pd.DataFrame, state: Mapping[str, Any], display: str) -> np.ndarray:
    """The encoded float32 features of ``frame``'s rows (columns matched by name)."""
    missing = [c for c in required_columns(state) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{display}: missing column(s) {column_list(missing)} (the model was "
            f"trained on {column_list(required_columns(state))})"
        )
    parts: list[np.ndarray] = []
    numeric = state["numeric"]
    if numeric:
        x = np.column_stack([as_numbers(frame[c], c, display) for c in numeric])
        holes = np.isnan(x)
        if holes.any():
            if state["impute"] == "refuse":
                r, c = np.argwhere(holes)[0]
                raise DataError(
                    f"{display}: column {numeric[c]!r}, row {_row(frame, r)}: missing value "
                    "(the model was trained with impute = 'refuse')"
                )
            x = np.where(holes, np.asarray(state["fill"])[None, :], x)
        if state["scaler"] == "standard":
            # StandardScaler.transform, from its fitted mean_ and scale_
            x = (x - np.asarray(state["mean"])) / np.asarray(state["scale"])
        else:
            x = _quantile(x, state)
        parts.append(x)
    for col in state["categorical"]:
        levels = col["levels"]
        codes = pd.Index(levels, dtype=object).get_indexer(as_text(frame[col["name"]]))
        width = len(levels) + int(col["other"])
        onehot = np.zeros((len(frame), width), dtype=np.float64)
        known = codes >= 0
        onehot[np.flatnonzero(known), codes[known]] = 1.0
        if col["other"]:
            onehot[~known, len(levels)] = 1.0
        parts.append(onehot)
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(np.hstack(parts), dtype=np.float32)
    if not np.isfinite(out).all():  # a value far outside the train rows' range
        r, c = np.argwhere(~np.isfinite(out))[0]
        name = state["feature_names"][c]
        raise DataError(
            f"{display}: column {name!r}, row {_row(frame, r)}: too large to standardize with "
            "the train rows' statistics (use scaler = 'quantile')"
        )
    return out


def required_columns(state: Mapping[str, Any]) -> list[str]:
    """The input columns a model trained with ``state`` needs."""
    return [*state["numeric"], *(c["name"] for c in state["categorical"])]
