"""The feature encoding every data source goes through: raw columns in, float32 model inputs out.

:class:`Encoding` is fitted on the train rows only and then applied to any rows: the prepared
splits and, later, ``predict``'s input, so both go through the same code. It works like a
scikit-learn transformer (:meth:`~Encoding.fit`, :meth:`~Encoding.transform`,
:meth:`~Encoding.fit_transform`) and uses scikit-learn's transformers to learn its statistics
(``StandardScaler`` or ``QuantileTransformer`` for numeric columns, ``SimpleImputer`` for their
missing values, ``OneHotEncoder`` for the levels of categorical columns), but keeps what they
learned as plain lists: :meth:`~Encoding.to_dict` is JSON-able, so the prepared data's
manifest and ``model.pt`` hold no pickled objects (``torch.load(weights_only=True)``) and do
not depend on the scikit-learn version that fitted them. Standardization is written here
once: :meth:`Encoding.transform` is the only place that applies a mean and a scale.

The encoded columns, in order: the numeric columns (missing values filled with the train
rows' median or mean, or refused; then standardized, mapped to a normal distribution, or
robustly scaled: minus the median, divided by the inter-quartile range, then smoothly clipped
to (-3, 3)), then, with ``missing_indicators``, one 0/1 indicator ``NAME=(missing)`` per numeric
column that has missing values in the train rows, then one 0/1 indicator per kept level of
each categorical column. Categorical missing values are a
level of their own (``(missing)``); a level never seen in train, or seen fewer than
``min_frequency`` times (or beyond the ``max_levels`` most frequent), goes to the column's
``(other)`` indicator (absent when train had no rare level, so such a level encodes as all
zeros), exactly as ``OneHotEncoder(handle_unknown="infrequent_if_exist")`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tuner.data.features import MISSING_LEVEL, OTHER_LEVEL, as_numbers, as_text
from tuner.data.scaling import floats, names_list, robust_statistics, smooth_clip, unique_names
from tuner.data.table import column_list
from tuner.errors import DataError

IMPUTE = ("median", "mean", "refuse")
SCALERS = ("standard", "quantile", "robust")
QUANTILES = 1000
"""``n_quantiles`` of the quantile transform (scikit-learn's default), at most the train rows."""
INDICATOR = "(missing)"
"""The level a numeric column's missing-value indicator is named after (``b=(missing)``)."""

__all__ = ["MISSING_LEVEL", "OTHER_LEVEL", "Encoding", "Levels", "Wording"]


def _column(name: str) -> str:
    return f"column {name!r}"


@dataclass(frozen=True)
class Wording:
    """How an encoding's error messages name a column, and what they suggest for a value too
    large to standardize (a table's columns have names; a UCI file's are numbered)."""

    column: Callable[[str], str] = _column
    remedy: str = "use scaler = 'robust' or 'quantile' (--scaler robust), or rescale the column"


TABLE_WORDING = Wording()


@dataclass(frozen=True)
class Levels:
    """The fitted levels of one categorical column: one indicator per level, in order, then
    one ``(other)`` indicator when train had rare levels (``other``)."""

    name: str
    levels: tuple[str, ...]
    other: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "levels": list(self.levels), "other": self.other}


def _row(frame: pd.DataFrame, position: int) -> int:
    """1-based data row number of a frame position (the frame's index counts file rows)."""
    return int(frame.index[position]) + 1


class Encoding:
    """Raw feature columns -> float32 model inputs, fitted on the train rows only.

    ``numeric`` and ``categorical`` name the input columns (a frame may hold others: they are
    ignored). ``impute`` (median, mean, refuse) fills numeric missing values or refuses them;
    ``scaler`` (standard, quantile, robust) scales the numeric columns;
    ``missing_indicators`` adds a 0/1 column per numeric column with missing values in the
    train rows; ``min_frequency`` and ``max_levels`` decide which categorical levels get their
    own indicator; ``seed`` is the quantile transform's ``random_state``. The fitted state (attributes ending in ``_``) is
    plain floats and strings.
    """

    def __init__(
        self,
        numeric: Sequence[str] = (),
        categorical: Sequence[str] = (),
        *,
        impute: str = "median",
        scaler: str = "standard",
        min_frequency: int = 5,
        max_levels: int = 50,
        seed: int = 0,
        missing_indicators: bool = False,
    ) -> None:
        if impute not in IMPUTE:
            raise ValueError(f"impute {impute!r}: expected one of {', '.join(IMPUTE)}")
        if scaler not in SCALERS:
            raise ValueError(f"scaler {scaler!r}: expected one of {', '.join(SCALERS)}")
        self.numeric = tuple(str(c) for c in numeric)
        self.categorical = tuple(str(c) for c in categorical)
        if not self.numeric and not self.categorical:
            raise ValueError("an encoding needs at least one column")
        self.impute = impute
        self.scaler = scaler
        self.min_frequency = int(min_frequency)
        self.max_levels = int(max_levels)
        self.seed = int(seed)
        self.missing_indicators = bool(missing_indicators)
        self.fill_: list[float] | None = None  # per numeric column (impute median/mean)
        self.mean_: list[float] | None = None  # scaler standard
        self.scale_: list[float] | None = None
        self.quantiles_: list[list[float]] | None = None  # scaler quantile: per column
        self.references_: list[float] | None = None
        self.center_: list[float] | None = None  # scaler robust: the median
        self.factor_: list[float] | None = None  # 1 / IQR (or / half the range; 0: constant)
        self.indicators_: list[str] | None = None  # missing_indicators: numeric columns with holes
        self.levels_: list[Levels] | None = None  # per categorical column

    # ------------------------------------------------------------------ description

    @property
    def fitted(self) -> bool:
        return self.levels_ is not None

    @property
    def required_columns(self) -> list[str]:
        """The input columns the encoding reads: numeric, then categorical."""
        return [*self.numeric, *self.categorical]

    @property
    def feature_names(self) -> list[str]:
        """Names of the encoded columns, in order: numeric, then ``column=level`` indicators."""
        return unique_names(self._plain_names())

    def _plain_names(self) -> list[str]:
        """The encoded columns' names before :func:`~tuner.data.scaling.unique_names` (a
        numeric column ``c=x`` and the level ``x`` of a column ``c`` have the same one)."""
        self._check_fitted()
        names = list(self.numeric)
        names += [f"{name}={INDICATOR}" for name in self.indicators_ or ()]
        for col in self.levels_ or ():
            names += [f"{col.name}={level}" for level in col.levels]
            if col.other:
                names.append(f"{col.name}={OTHER_LEVEL}")
        return names

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return (
            f"Encoding({len(self.numeric)} numeric, {len(self.categorical)} categorical, "
            f"impute={self.impute!r}, scaler={self.scaler!r}, {state})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Encoding) and self.to_dict() == other.to_dict()

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("the encoding is not fitted: call fit() first")

    # ------------------------------------------------------------------ fit

    def fit(
        self, frame: pd.DataFrame, display: str = "data", wording: Wording = TABLE_WORDING
    ) -> Encoding:
        """Learn the encoding from the train rows ``frame`` (a DataFrame holding at least
        :attr:`required_columns`; its index numbers the file's data rows from 0, for
        messages). Returns ``self``, fitted. A :class:`~tuner.errors.DataError` (one line,
        naming ``display``, the column and the row) for text in a numeric column, a missing
        value with ``impute = 'refuse'``, or values too large to standardize."""
        self._fit_matrix(frame, display, wording)
        return self

    def fit_transform(
        self, frame: pd.DataFrame, display: str = "data", wording: Wording = TABLE_WORDING
    ) -> np.ndarray:
        """:meth:`fit` on ``frame``, then :meth:`transform` of the same rows (their numeric
        columns read once): the encoded float32 array, ``(len(frame), n_features)``."""
        x = self._fit_matrix(frame, display, wording)
        return self._encode(frame, x, display, wording)

    def _fit_matrix(self, frame: pd.DataFrame, display: str, wording: Wording) -> np.ndarray | None:
        """Fit on ``frame``; returns its numeric matrix (C order, float64) for reuse."""
        self._check_columns(frame, display)
        x = self._numbers(frame, display)
        self.fill_ = self.mean_ = self.scale_ = self.quantiles_ = self.references_ = None
        self.center_ = self.factor_ = None
        self.indicators_ = [] if self.missing_indicators else None
        if x is not None:
            self._fit_numeric(x, frame, display, wording)
        self.levels_ = [self._fit_levels(frame[name]) for name in self.categorical]
        return x

    def _fit_numeric(
        self, x: np.ndarray, frame: pd.DataFrame, display: str, wording: Wording
    ) -> None:
        holes = np.isnan(x)
        if self.missing_indicators:
            self.indicators_ = [self.numeric[c] for c in np.flatnonzero(holes.any(axis=0))]
        if self.impute == "refuse":
            if holes.any():
                r, c = np.argwhere(holes)[0]
                raise DataError(
                    f"{display}: {wording.column(self.numeric[c])}, row {_row(frame, r)}: "
                    "missing value (impute = 'refuse'; use impute = 'median' or 'mean' to fill "
                    "it from the train rows)"
                )
            filled = x
        else:
            from sklearn.impute import SimpleImputer

            imputer = SimpleImputer(strategy=self.impute, keep_empty_features=True)
            filled = imputer.fit_transform(x)
            self.fill_ = [float(v) for v in imputer.statistics_]
        if self.scaler == "standard":
            from sklearn.preprocessing import StandardScaler

            with np.errstate(all="ignore"):
                scaler = StandardScaler().fit(filled)
            bad = ~(np.isfinite(scaler.mean_) & np.isfinite(scaler.scale_))
            if bad.any():  # finite values whose squares overflow float64 (|x| > ~1e154)
                c = int(np.argmax(bad))
                r = int(np.nanargmax(np.abs(filled[:, c])))
                raise DataError(
                    f"{display}: {wording.column(self.numeric[c])} has values too large to "
                    f"standardize (data row {_row(frame, r)}: {filled[r, c]:g}); {wording.remedy}"
                )
            self.mean_ = [float(v) for v in scaler.mean_]
            self.scale_ = [float(v) for v in scaler.scale_]
        elif self.scaler == "robust":
            self.center_, self.factor_ = robust_statistics(filled)
        else:
            from sklearn.preprocessing import QuantileTransformer

            qt = QuantileTransformer(
                n_quantiles=min(QUANTILES, len(filled)),
                output_distribution="normal",
                subsample=None,
                random_state=self.seed,
            ).fit(filled)
            self.quantiles_ = qt.quantiles_.T.tolist()
            self.references_ = [float(v) for v in qt.references_]

    def _fit_levels(self, values: pd.Series) -> Levels:
        from sklearn.preprocessing import OneHotEncoder

        # The encoder is fitted on the column's codes in sorted-level order, which gives the
        # same levels and grouping as fitting it on the strings: on 500,000 rows of a
        # 200-level column that takes 0.1 s instead of 5.7 s (scikit-learn's unique of
        # Python objects).
        codes, uniques = pd.factorize(as_text(values), sort=True)
        enc = OneHotEncoder(
            handle_unknown="infrequent_if_exist",
            min_frequency=self.min_frequency,
            max_categories=self.max_levels,
            sparse_output=False,
        ).fit(codes.reshape(-1, 1))
        rare = enc.infrequent_categories_[0]
        rare = set() if rare is None else {int(v) for v in rare}
        levels = tuple(str(uniques[int(c)]) for c in enc.categories_[0] if int(c) not in rare)
        return Levels(name=str(values.name), levels=levels, other=bool(rare))

    # ------------------------------------------------------------------ transform

    def transform(
        self, frame: pd.DataFrame, display: str = "input", wording: Wording = TABLE_WORDING
    ) -> np.ndarray:
        """The encoded rows of ``frame``: a C-contiguous float32 array of shape
        ``(len(frame), n_features)``, columns in :attr:`feature_names` order.

        ``frame`` holds :attr:`required_columns` in any order (other columns are ignored);
        its index numbers the data rows from 0, for messages. Numeric columns are computed in
        float64 and rounded to float32 once, at the end. A :class:`~tuner.errors.DataError`
        (one line naming ``display``) for a missing column, text in a numeric column, a
        missing value the encoding refuses, or a value too large to scale with the train
        rows' statistics. Unseen categorical levels are not errors (``(other)``)."""
        self._check_fitted()
        self._check_columns(frame, display)
        return self._encode(frame, self._numbers(frame, display), display, wording)

    def _encode(
        self, frame: pd.DataFrame, x: np.ndarray | None, display: str, wording: Wording
    ) -> np.ndarray:
        parts: list[np.ndarray] = []
        if x is not None:
            parts.append(self._scale(self._impute(x, frame, display, wording)))
            if self.indicators_:
                where = [self.numeric.index(name) for name in self.indicators_]
                parts.append(np.isnan(x[:, where]).astype(np.float64))
        for col in self.levels_ or ():
            codes = pd.Index(col.levels, dtype=object).get_indexer(as_text(frame[col.name]))
            onehot = np.zeros((len(frame), len(col.levels) + int(col.other)), dtype=np.float64)
            known = codes >= 0
            onehot[np.flatnonzero(known), codes[known]] = 1.0
            if col.other:
                onehot[~known, len(col.levels)] = 1.0
            parts.append(onehot)
        with np.errstate(over="ignore"):
            out = np.ascontiguousarray(parts[0] if len(parts) == 1 else np.hstack(parts),
                                       dtype=np.float32)  # fmt: skip
        if not np.isfinite(out).all():  # a value far outside the train rows' range
            r, c = np.argwhere(~np.isfinite(out))[0]
            value = f": {x[r, c]:g}" if x is not None and c < x.shape[1] else ""
            raise DataError(
                f"{display}: {wording.column(self.feature_names[c])}, row {_row(frame, r)}"
                f"{value} is too large to standardize with the train rows' statistics "
                f"({wording.remedy})"
            )
        return out

    def _impute(
        self, x: np.ndarray, frame: pd.DataFrame, display: str, wording: Wording
    ) -> np.ndarray:
        holes = np.isnan(x)
        if not holes.any():
            return x
        if self.fill_ is None:  # impute = 'refuse'
            r, c = np.argwhere(holes)[0]
            raise DataError(
                f"{display}: {wording.column(self.numeric[c])}, row {_row(frame, r)}: missing "
                "value (the model was trained with impute = 'refuse')"
            )
        return np.where(holes, np.asarray(self.fill_)[None, :], x)

    def _scale(self, x: np.ndarray) -> np.ndarray:
        """Scale the (filled) numeric columns with the fitted statistics, in float64."""
        if self.mean_ is not None and self.scale_ is not None:
            # StandardScaler.transform: subtract the mean, then divide by the scale
            return (x - np.asarray(self.mean_)) / np.asarray(self.scale_)
        if self.center_ is not None and self.factor_ is not None:
            factor = np.asarray(self.factor_)
            with np.errstate(invalid="ignore", over="ignore"):
                z = (x - np.asarray(self.center_)) * factor
            return smooth_clip(np.where(factor == 0, 0.0, z))  # a constant column: 0
        from sklearn.preprocessing import QuantileTransformer

        # scikit-learn's QuantileTransformer (normal output), restored from its fitted state
        quantiles = np.asarray(self.quantiles_, dtype=np.float64).T
        qt = QuantileTransformer(n_quantiles=quantiles.shape[0], output_distribution="normal")
        qt.quantiles_ = quantiles
        qt.references_ = np.asarray(self.references_, dtype=np.float64)
        qt.n_features_in_ = quantiles.shape[1]
        return qt.transform(x)

    # ------------------------------------------------------------------ reading columns

    def _check_columns(self, frame: pd.DataFrame, display: str) -> None:
        missing = [c for c in self.required_columns if c not in frame.columns]
        if missing:
            raise DataError(
                f"{display}: missing column(s) {column_list(missing)} (the model was "
                f"trained on {column_list(self.required_columns)})"
            )

    def _numbers(self, frame: pd.DataFrame, display: str) -> np.ndarray | None:
        """The numeric columns as one C-order float64 matrix, NaN for missing (None if the
        encoding has no numeric column)."""
        if not self.numeric:
            return None
        return np.column_stack([as_numbers(frame[c], c, display) for c in self.numeric])

    # ------------------------------------------------------------------ plain data

    def to_dict(self) -> dict[str, Any]:
        """The encoding as plain lists, strings and numbers (JSON-able; what the manifest and
        ``model.pt`` store); :meth:`from_dict` restores it."""
        self._check_fitted()
        out: dict[str, Any] = {
            "numeric": list(self.numeric),
            "categorical": [col.to_dict() for col in self.levels_ or ()],
            "impute": self.impute,
            "scaler": self.scaler,
            "min_frequency": self.min_frequency,
            "max_levels": self.max_levels,
            "seed": self.seed,
        }
        if self.missing_indicators:  # absent otherwise: earlier encodings' dicts are unchanged
            out["missing_indicators"] = True
            out["indicators"] = list(self.indicators_ or ())
        fitted = {
            "fill": self.fill_,
            "mean": self.mean_,
            "scale": self.scale_,
            "quantiles": self.quantiles_,
            "references": self.references_,
            "center": self.center_,
            "factor": self.factor_,
        }
        out.update({k: v for k, v in fitted.items() if v is not None})
        out["feature_names"] = self.feature_names
        return out

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Encoding:
        """A fitted encoding from :meth:`to_dict`'s output (also the table encoding that
        ``model.pt`` files of earlier versions stored under ``features``). Raises
        :class:`ValueError` (or ``KeyError``/``TypeError``) for a state that does not fit
        together."""
        if not isinstance(state.get("categorical"), list) or not all(
            isinstance(c, Mapping) and isinstance(c.get("name"), str)
            and isinstance(c.get("other"), bool) for c in state["categorical"]
        ):  # fmt: skip
            raise ValueError("categorical: expected a list of {name, levels, other}")
        levels = [
            Levels(name=c["name"], levels=tuple(names_list(c["levels"], f"levels of {c['name']!r}")),
                   other=c["other"])
            for c in state["categorical"]
        ]  # fmt: skip
        enc = cls(
            names_list(state["numeric"], "numeric"),
            [c.name for c in levels],
            impute=state["impute"],
            scaler=state["scaler"],
            min_frequency=state.get("min_frequency", 5),
            max_levels=state.get("max_levels", 50),
            seed=state.get("seed", 0),
            missing_indicators=state.get("missing_indicators", False),
        )
        n = len(enc.numeric)
        if len(set(enc.required_columns)) != len(enc.required_columns):
            raise ValueError("a column is both numeric and categorical")
        if enc.missing_indicators:
            enc.indicators_ = names_list(state["indicators"], "indicators")
            if not set(enc.indicators_) <= set(enc.numeric) or len(set(enc.indicators_)) != len(
                enc.indicators_
            ):
                raise ValueError("indicators: each a numeric column, once")
        if n:
            if enc.impute != "refuse":
                enc.fill_ = floats(state["fill"], n, "fill")
            if enc.scaler == "standard":
                enc.mean_ = floats(state["mean"], n, "mean")
                enc.scale_ = floats(state["scale"], n, "scale")
            elif enc.scaler == "robust":
                enc.center_ = floats(state["center"], n, "center")
                enc.factor_ = floats(state["factor"], n, "factor")
            else:
                if not isinstance(state["quantiles"], list) or not isinstance(
                    state["references"], list
                ):
                    raise ValueError("quantiles and references: expected lists")
                enc.references_ = floats(state["references"], len(state["references"]),
                                          "references")  # fmt: skip
                enc.quantiles_ = [
                    floats(q, len(enc.references_), "quantiles") for q in state["quantiles"]
                ]
                if len(enc.quantiles_) != n or any(
                    len(q) != len(enc.references_) for q in enc.quantiles_
                ):
                    raise ValueError("quantiles: one list per numeric column, one per reference")
        enc.levels_ = levels
        names = state.get("feature_names")
        # earlier versions stored names that could repeat (the same columns and arrays)
        if names is not None and list(names) not in (enc.feature_names, enc._plain_names()):
            raise ValueError("feature_names do not match the columns and levels")
        return enc

    @classmethod
    def standardized(
        cls, names: Sequence[str], mean: Sequence[float], scale: Sequence[float]
    ) -> Encoding:
        """A fitted encoding of the numeric columns ``names`` that standardizes them with the
        given statistics (one per column) and refuses missing values: what
        YearPredictionMSD's scaler was in ``model.pt`` files of earlier versions."""
        enc = cls(names, impute="refuse", scaler="standard")
        enc.mean_ = floats(mean, len(enc.numeric), "mean")
        enc.scale_ = floats(scale, len(enc.numeric), "scale")
        enc.levels_ = []
        return enc
