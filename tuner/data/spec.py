"""What the data is: :class:`DataSpec`, from command-line flags or a small TOML file.

A spec names the source (``uci``, ``synthetic``, or a file), and for a table with a header the
target column and how to read, split and encode it. The published MSD study is the default
spec (``DataSpec()``); a table needs at least ``target``. The same description can live in a
TOML file, so a study is reproducible from files alone::

    # mydata.toml: paths are relative to this file
    path = "songs.csv.gz"
    target = "genre"
    sep = ","                   # default: sniffed (",", ";", tab or "|")
    drop = ["id"]               # columns that are not features
    categorical = ["zip"]       # one-hot encode these even if they hold numbers
    numeric = ["rating"]        # these must be numbers (text in them is an error)
    missing = ["-", "n/a"]      # more missing-value markers ("", "?", "NA", ... always are)
    impute = "median"           # numeric missing values: median | mean | refuse
    scaler = "standard"         # numeric scaling: standard | quantile | robust
    missing_indicators = false  # a 0/1 column per numeric column with missing values in train
    bins = "decade"             # a numeric target: "decade" or cut points [1990, 2000]
    split = "stratified"        # stratified | column | group (column and group need split_column)
    split_column = "fold"
    test = "songs_test.csv"     # a separate test file (the main file is then train + val)
    min_frequency = 5           # category levels seen fewer times in train are grouped
    max_levels = 50             # at most this many levels per categorical column (the rest grouped)
    max_columns = 10000         # a wider table is refused after reading its header alone

Command-line flags (``--target``, ``--sep``, ``--split column:NAME``, ``--test-data``,
``--scaler``, ...) are shorthands for these keys and override the file's values.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.errors import DataError

SPLITS = ("stratified", "canonical", "column", "group")
MIN_ROWS = 100
"""Smallest subsample (``rows``) and smallest source that can be split in three."""
IMPUTE = ("median", "mean", "refuse")
SCALERS = ("standard", "quantile", "robust")
BIN_RULES = ("decade",)
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt", ".parquet", ".pq")
COMPRESSIONS = (".gz", ".zip", ".bz2", ".xz")


_NOT_TABLE_OPTIONS = (
    "source", "rows", "split", "seed", "described_by", "rows_setting", "test", "max_columns"
)  # fmt: skip
"""Fields that identify no preparation of a table beyond source, rows, split and seed."""


@dataclass(frozen=True)
class DataSpec:
    """Which data to prepare and how.

    The first four fields describe the published study's data (UCI format, no header); the
    rest apply to a table with a header and a named ``target`` column.
    """

    source: str = "uci"  # "uci" | "synthetic" | a file path
    rows: int | None = None  # stratified subsample size (None = all rows)
    split: str = "stratified"  # "stratified" | "canonical" | "column" | "group"
    seed: int = 42  # split/subsample random_state
    target: str | None = None  # the class column of a table; None = the UCI format (year)
    sep: str | None = None  # delimiter of a text table (None = sniffed)
    drop: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    impute: str = "median"
    scaler: str = "standard"
    missing_indicators: bool = False
    bins: str | tuple[float, ...] | None = None
    split_column: str | None = None
    test: str | None = None
    min_frequency: int = 5
    max_levels: int = 50
    max_columns: int = 10_000
    described_by: str | None = field(default=None, compare=False)  # the TOML file, if any
    # where ``rows`` was set, for its errors: "--rows" or "FILE: rows =" (a description's key)
    rows_setting: str = field(default="--rows", compare=False)

    @property
    def is_table(self) -> bool:
        """A table with a header and a target column (not the UCI format)."""
        return self.target is not None

    def table_options(self) -> dict[str, Any]:
        """The table fields that differ from their defaults (what identifies a preparation
        beyond source, rows, split and seed); empty for the UCI format."""
        if not self.is_table:
            return {}
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in _NOT_TABLE_OPTIONS:
                continue
            value = getattr(self, f.name)
            if value != f.default or f.name == "target":
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description, recorded with the study and in ``model.pt``."""
        out: dict[str, Any] = {
            "source": self.source,
            "rows": self.rows,
            "split": self.split,
            "seed": self.seed,
        }
        out.update(self.table_options())
        if self.test is not None:
            out["test"] = self.test
        if self.max_columns != DataSpec.max_columns:  # a limit, not part of the cache key
            out["max_columns"] = self.max_columns
        if self.described_by is not None:
            out["described_by"] = self.described_by
        return out

    def check(self) -> DataSpec:
        """Reject inconsistent options before any file is read; returns ``self``."""
        check_rows(self.rows, None, self.rows_setting)
        if self.split not in SPLITS:
            raise DataError(f"unknown split {self.split!r}; expected one of {', '.join(SPLITS)}")
        if not self.is_table:
            table_only = {k: v for k, v in _non_defaults(self).items() if k not in _UCI_FIELDS}
            if table_only:
                names = ", ".join(sorted(table_only))
                raise DataError(
                    f"{names}: only for a table with a header; name its class column with "
                    "--target COLUMN (or 'target' in the data description)"
                )
            if self.split in ("column", "group"):
                raise DataError(f"split {self.split!r} needs a table with --target")
            return self
        if self.source in ("uci", "synthetic"):
            raise DataError(
                f"--target is for a table file; '{self.source}' is the YearPredictionMSD data "
                "(its target is the year, binned into decades)"
            )
        if not self.target:
            raise DataError("target: give the name of the class column")
        if self.split == "canonical":
            raise DataError(
                "the canonical split is UCI's YearPredictionMSD split; for a table use "
                "stratified, column:NAME, group:NAME or a separate test file"
            )
        if self.split in ("column", "group") and not self.split_column:
            raise DataError(
                f"split {self.split!r} needs split_column (e.g. --split {self.split}:NAME)"
            )
        if self.split == "stratified" and self.split_column:
            raise DataError("split_column is only for split = 'column' or 'group'")
        if self.split == "column" and self.test is not None:
            raise DataError("a split column and a separate test file cannot be combined")
        if self.impute not in IMPUTE:
            raise DataError(f"impute {self.impute!r}: expected one of {', '.join(IMPUTE)}")
        if self.scaler not in SCALERS:
            raise DataError(f"scaler {self.scaler!r}: expected one of {', '.join(SCALERS)}")
        if not isinstance(self.missing_indicators, bool):
            raise DataError(
                f"missing_indicators must be true or false, got {self.missing_indicators!r}"
            )
        if isinstance(self.bins, str) and self.bins not in BIN_RULES:
            raise DataError(
                f"bins {self.bins!r}: expected {', '.join(BIN_RULES)} or a list of cut points"
            )
        if isinstance(self.bins, tuple):
            if not self.bins or not all(math.isfinite(b) for b in self.bins):
                raise DataError("bins: give one or more finite cut points, e.g. [1990, 2000]")
            if any(b >= a for a, b in zip(self.bins[1:], self.bins, strict=False)):
                raise DataError(f"bins {list(self.bins)}: cut points must increase")
        for name in ("min_frequency", "max_levels", "max_columns"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"{name} must be a positive integer, got {value!r}")
        both = set(self.categorical) & set(self.numeric)
        if both:
            raise DataError(f"{', '.join(sorted(both))}: declared both categorical and numeric")
        special = {self.target, self.split_column} - {None}
        for name in ("drop", "categorical", "numeric"):
            clash = special & set(getattr(self, name))
            if clash:
                raise DataError(
                    f"{name} lists {', '.join(sorted(clash))}, the target or split column"
                )
        if self.sep is not None and len(self.sep) != 1:
            raise DataError(f"sep must be one character, got {self.sep!r}")
        return self


_UCI_FIELDS = ("source", "rows", "split", "seed", "described_by", "rows_setting")


def _non_defaults(spec: DataSpec) -> dict[str, Any]:
    return {
        f.name: getattr(spec, f.name)
        for f in dataclasses.fields(spec)
        if getattr(spec, f.name) != f.default
    }


# --------------------------------------------------------------------------- TOML and flags

_LIST_KEYS = ("drop", "categorical", "numeric", "missing")
_STR_KEYS = ("target", "sep", "impute", "scaler", "split", "split_column")
_INT_KEYS = ("min_frequency", "max_levels", "max_columns", "rows")
_BOOL_KEYS = ("missing_indicators",)
_KNOWN = {"path", "test", "bins", *_LIST_KEYS, *_STR_KEYS, *_INT_KEYS, *_BOOL_KEYS}


def is_description(source: str) -> bool:
    """Whether ``--data`` names a TOML data description rather than a data file."""
    return source.lower().endswith(".toml")


def read_description(path: Path) -> dict[str, Any]:
    """The keys of a TOML data description, checked and with paths made absolute."""
    from tuner.data.delimited import check_regular_file  # imports nothing of tuner's but errors

    display = str(path)
    check_regular_file(Path(path), display, missing="no such data description",
                       what="a data description")  # fmt: skip
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")  # a byte-order mark is fine
        raw = tomllib.loads(text)
    except FileNotFoundError:
        raise DataError(f"{display}: no such data description") from None
    except IsADirectoryError:
        raise DataError(f"{display}: is a directory, not a data description") from None
    except OSError as err:
        raise DataError(f"{display}: cannot read the data description ({err.strerror})") from None
    except UnicodeDecodeError:
        raise DataError(f"{display}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise DataError(f"{display}: not valid TOML ({err})") from None
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise DataError(
            f"{display}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}"
        )
    if "path" not in raw:
        raise DataError(f"{display}: 'path' (the data file) is required")
    base = Path(path).resolve().parent
    out: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{display}: {key}"
        if key in ("path", "test"):
            if not isinstance(value, str) or not value:
                raise DataError(f"{where}: expected a file path (a string), got {value!r}")
            p = Path(value).expanduser()
            out["source" if key == "path" else key] = str(
                p if p.is_absolute() else (base / p).resolve()
            )
        elif key in _LIST_KEYS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DataError(f"{where}: expected a list of strings, got {value!r}")
            out[key] = tuple(value)
        elif key in _STR_KEYS:
            if not isinstance(value, str):
                raise DataError(f"{where}: expected a string, got {value!r}")
            if key == "split" and ":" in value:
                out["split"], out["split_column"] = parse_split(value)
            else:
                out[key] = value
        elif key in _INT_KEYS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise DataError(f"{where}: expected an integer, got {value!r}")
            if value < 1:
                raise DataError(f"{where}: expected a positive integer, got {value!r}")
            out[key] = value
        elif key in _BOOL_KEYS:
            if not isinstance(value, bool):
                raise DataError(f"{where}: expected true or false, got {value!r}")
            out[key] = value
        elif key == "bins":
            out[key] = parse_bins(value, where)
    out["described_by"] = str(Path(path).resolve())
    return out


def parse_bins(value: Any, where: str = "bins") -> str | tuple[float, ...]:
    """``"decade"``, or cut points from a list or a comma-separated string (``"1990,2000"``)."""
    if isinstance(value, str):
        if value in BIN_RULES:
            return value
        try:
            return tuple(float(v) for v in value.split(","))
        except ValueError:
            raise DataError(
                f"{where}: expected {', '.join(BIN_RULES)} or cut points like 1990,2000, "
                f"got {value!r}"
            ) from None
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return tuple(float(v) for v in value)
    raise DataError(f"{where}: expected {', '.join(BIN_RULES)} or a list of numbers, got {value!r}")


def parse_split(text: str) -> tuple[str, str | None]:
    """``--split`` value: ``stratified``, ``canonical``, ``column:NAME`` or ``group:NAME``."""
    kind, sep, column = text.partition(":")
    if kind not in SPLITS:
        raise DataError(
            f"--split {text!r}: expected stratified, canonical, column:NAME or group:NAME"
        )
    if sep and kind not in ("column", "group"):
        raise DataError(f"--split {text!r}: only column and group take a column name")
    if kind in ("column", "group") and not column:
        raise DataError(f"--split {text!r}: name the column, e.g. --split {kind}:fold")
    return kind, (column or None)


def check_rows(rows: int | None, n: int | None, setting: str = "--rows") -> None:
    """Validate a subsample size (and, with ``n`` known, the data size); ``setting`` names
    where ``rows`` was set in errors (``--rows``, or a description's ``FILE: rows =``)."""
    if rows is None:
        if n is not None and n < MIN_ROWS:
            raise DataError(f"the data has {n} rows; at least {MIN_ROWS} are needed to split it")
        return
    if isinstance(rows, bool) or not isinstance(rows, numbers.Integral):
        raise DataError(f"rows must be an integer, got {rows!r}")
    if rows < MIN_ROWS:
        raise DataError(f"{setting} {rows}: at least {MIN_ROWS} rows are needed")
    if n is not None and rows > n:
        raise DataError(f"{setting} {rows}: the data has only {n} rows")


def build_spec(
    source: str, overrides: Mapping[str, Any], table_defaults: Mapping[str, Any] | None = None
) -> DataSpec:
    """The spec for ``--data SOURCE`` (a data file, ``uci``, ``synthetic`` or a TOML
    description) with command-line ``overrides`` (``None`` values are not given). For a table
    (a target given), ``table_defaults`` (a plan's ``[data]``) fill what neither the
    description nor the flags set."""
    values: dict[str, Any] = {"source": source}
    if is_description(source):
        values = read_description(Path(source).expanduser())
    if values.get("rows") is not None and overrides.get("rows") is None:
        values["rows_setting"] = f"{source}: rows ="
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    if values.get("target") is not None:
        for key, value in (table_defaults or {}).items():
            values.setdefault(key, value)
    if is_description(source) and values.get("target") is None:
        raise DataError(
            f"{source}: 'target' (the class column) is required in a data description (or "
            "--target COLUMN); a YearPredictionMSD file in the UCI format takes no description: "
            "pass the file itself with --data"
        )
    return DataSpec(**values).check()
