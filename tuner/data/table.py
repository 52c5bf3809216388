"""Tables with a header: CSV, TSV, Parquet, plain or compressed, read and validated.

:func:`read_table` returns a :class:`Table`: the rows as a pandas DataFrame with unique column
names, in file order. Missing-value markers (empty, ``?``, ``NA``, ``NaN``, ``null``, ... and
the user's own) become NaN; text cells are stripped. What goes wrong is one
:class:`~tuner.errors.DataError` line naming the file: no such file, not a table, a header with
no rows, duplicate column names, a row with the wrong number of fields, a Parquet file that is
not Parquet.

Formats, by suffix (after ``.gz``, ``.bz2``, ``.xz`` or ``.zip``): ``.parquet``/``.pq``;
``.tsv``/``.tab`` (tab-separated); anything else is delimited text whose delimiter is sniffed
from the first lines (``,``, ``;``, tab or ``|``) unless given. In text not separated by
commas, a column whose every value is a number written with a decimal comma (``3,25``, what
spreadsheets in much of Europe export, with ``;`` between fields) is read as numbers.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tuner.data.delimited import (
    check_field_counts,
    check_header_width,
    check_regular_file,
    compression,
    one_line,
    open_bytes,
    read_all,
    sample,
    sniff_sep,
)
from tuner.errors import DataError

logger = logging.getLogger(__name__)

MISSING_MARKERS: tuple[str, ...] = ("?",)
"""Markers of a missing value on top of pandas' defaults ("", "NA", "N/A", "NaN", "null", ...)."""

_DECIMAL_COMMA = re.compile(r"[+-]?(?:\d+,\d*|,\d+|\d+)(?:[eE][+-]?\d+)?")
"""A number written with a decimal comma (or an integer, which such a column may also hold)."""
_NUMERIC_SHARE = 0.9
"""As :data:`tuner.data.features.NUMERIC_SHARE`: a column of at least this share of numbers is
numeric, and its text cells are errors."""


@dataclass(frozen=True, eq=False)
class Table:
    """The rows of a table file."""

    frame: pd.DataFrame  # unique column names, file order, NaN for missing
    display: str  # how messages name the file
    path: Path
    sha256: str
    unnamed: tuple[str, ...]  # columns whose header was empty (an index written by to_csv)

    @property
    def n_rows(self) -> int:
        return int(len(self.frame))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _format(path: Path) -> str:
    """``parquet``, ``tsv`` or ``text`` from the suffix under any compression suffix."""
    name = path.name.lower()
    if compression(path) is not None:
        name = name.rsplit(".", 1)[0]
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".tsv", ".tab")):
        return "tsv"
    return "text"


def _read_bytes(data: bytes, **options: object) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(data), **options)


def _read_text(
    path: Path, display: str, sep: str | None, markers: list[str], max_columns: int
) -> tuple[pd.DataFrame, list[str]]:
    """A delimited text table and its raw header names."""
    fmt = _format(path)
    if sep is None:
        sep = "\t" if fmt == "tsv" else sniff_sep(sample(path, display), display)
    check_header_width(path, display, sep, max_columns)
    data = read_all(path, display)
    layout = check_field_counts(data, sep, display)
    if layout.n_fields > max_columns:  # a header that only the full read could measure
        raise DataError(f"{display}: the header has {layout.n_fields:,} columns, more than "
                        f"{max_columns:,}; raise the limit with max_columns = N")  # fmt: skip
    common = {"sep": sep, "skipinitialspace": True, "index_col": False}
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            header = [field.decode(encoding).lstrip("\ufeff") for field in layout.header]
            frame = pd.read_csv(
                io.BytesIO(data),
                header=0,
                na_values=markers,
                keep_default_na=True,
                low_memory=False,
                encoding=encoding,
                **common,
            )
        except UnicodeDecodeError:
            logger.warning("%s is not UTF-8; reading it as Latin-1", display)
            continue
        except pd.errors.EmptyDataError:
            raise DataError(f"{display}: the file is empty") from None
        except pd.errors.ParserError as err:
            raise DataError(f"{display}: not a well-formed table ({one_line(err)})") from None
        except (ValueError, csv.Error) as err:
            raise DataError(f"{display}: cannot read the table ({one_line(err)})") from None
        if sep != ",":
            reread = functools.partial(
                _read_bytes,
                data,
                header=0,
                decimal=",",
                na_values=markers,
                keep_default_na=True,
                low_memory=False,
                encoding=encoding,
                **common,
            )
            _read_decimal_commas(frame, reread, display)
        return frame, [v.strip() for v in header]
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def _read_decimal_commas(
    frame: pd.DataFrame, reread: Callable[..., pd.DataFrame], display: str
) -> None:
    """Text columns whose every value is a number with a decimal comma become numbers.

    A column qualifies when its first 1,000 values look like such numbers (or integers) and
    at least one value has a comma; those columns are read again by pandas' parser with
    ``decimal=","`` (``reread(usecols=positions)``, ~10x faster than converting the strings), and one
    that comes back as numbers with the same missing cells replaces the text. Anything else in
    a column (a word, a thousands separator) leaves it as it is, for the feature rules to judge.
    """
    candidates = []
    for position, name in enumerate(frame.columns):
        column = frame[name]
        if not is_text(column):
            continue
        values = column.dropna()
        if values.empty or not all(isinstance(v, str) for v in values.head(50)):
            continue
        head = values.head(1000).astype(str).str.strip()
        if head.str.fullmatch(_DECIMAL_COMMA).all() and values.str.contains(",", regex=False).any():
            candidates.append(position)
    if not candidates:
        return
    again = reread(usecols=candidates)
    for position, name in zip(candidates, again.columns, strict=True):
        numbers, column = again[name], frame.iloc[:, position]
        if pd.api.types.is_float_dtype(numbers) and (numbers.isna() == column.isna()).all():
            frame[frame.columns[position]] = numbers.to_numpy()
            logger.info("%s: column %r holds numbers with a decimal comma", display, name)
            continue
        # Mostly such numbers and some text (a stray word after the first 1,000 rows): the
        # numbers are written with a decimal point, so that the feature rules judge the
        # column as they judge one with decimal points (text in a numeric column is an error
        # naming the cell; a column declared categorical stays text).
        present = column.dropna()
        text = present.astype(str).str.strip()
        numeric = text.str.fullmatch(_DECIMAL_COMMA)
        if float(numeric.mean()) >= _NUMERIC_SHARE:
            fixed = text.where(~numeric, text.str.replace(",", ".", regex=False))
            frame[frame.columns[position]] = column.astype(object).where(
                column.isna(), fixed.reindex(column.index)
            )


def _read_parquet(path: Path, display: str, max_columns: int) -> tuple[pd.DataFrame, list[str]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - a dependency of the package
        raise DataError(f"{display}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        with open_bytes(path, display) as fh:
            data = fh.read() if compression(path) else None
        source = pa.BufferReader(data) if data is not None else path
        parquet = pq.ParquetFile(source)
        schema = parquet.schema_arrow
    except DataError:
        raise
    except Exception as err:  # pyarrow raises ArrowInvalid/OSError for a file that is not Parquet
        raise DataError(f"{display}: not a Parquet file ({one_line(err)})") from None
    names = [str(name) for name in schema.names]
    if len(names) > max_columns:
        raise DataError(
            f"{display}: the file has {len(names):,} columns, more than {max_columns:,}; raise "
            "the limit with max_columns = N in a data description (or --max-columns N) if the "
            "table really is that wide"
        )
    _check_duplicates(names, display)
    for name, kind in zip(names, schema.types, strict=True):
        if (
            pa.types.is_nested(kind)
            or pa.types.is_dictionary(kind)
            and pa.types.is_nested(kind.value_type)
        ):
            raise DataError(
                f"{display}: column {quote(name)} holds {kind} values (lists or records), not "
                "numbers or text; flatten it or leave it out of the file"
            )
    try:
        frame = parquet.read().to_pandas()
    except Exception as err:  # a damaged file whose schema still reads
        raise DataError(f"{display}: not a Parquet file ({one_line(err)})") from None
    return frame, names


def _check_duplicates(header: list[str], display: str) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        if name and name in seen:
            raise DataError(
                f"{display}: duplicate column name {quote(name)} (columns {seen[name] + 1} and "
                f"{i + 1})"
            )
        seen[name] = i


DEFAULT_MAX_COLUMNS = 10_000
"""The most columns a table may have unless told otherwise (``max_columns``): a wider header
is refused after reading the header line alone, before pandas parses anything."""


def read_table(
    path: Path | str,
    *,
    display: str | None = None,
    sep: str | None = None,
    missing: tuple[str, ...] = (),
    max_columns: int = DEFAULT_MAX_COLUMNS,
) -> Table:
    """Read and validate a table file (see the module doc)."""
    path = Path(path).expanduser()
    display = display or str(path)
    check_regular_file(path, display)
    t0 = time.perf_counter()
    markers = list(dict.fromkeys([*MISSING_MARKERS, *missing]))
    try:
        if _format(path) == "parquet":
            frame, header = _read_parquet(path, display, max_columns)
        else:
            frame, header = _read_text(path, display, sep, markers, max_columns)
        sha256 = file_sha256(path)
    except PermissionError:
        raise DataError(f"{display}: cannot read the file (permission denied)") from None
    except OSError as err:
        raise DataError(f"{display}: cannot read the file ({err.strerror or 'error'})") from None
    _check_duplicates(header, display)
    if len(header) > 1 and all(_is_number(name) for name in header):
        raise DataError(
            f"{display}: the first line holds numbers, not column names; a table needs a header "
            "row (a YearPredictionMSD file in the UCI format has none: leave out --target)"
        )
    names = [name or f"Unnamed: {i}" for i, name in enumerate(header)]
    if len(names) != frame.shape[1]:  # pragma: no cover - pandas keeps the header's width
        raise DataError(
            f"{display}: the header has {len(names)} names for {frame.shape[1]} columns"
        )
    frame.columns = names
    if len(names) > 1 and not header[-1] and frame.iloc[:, -1].isna().all():
        # every line ends with a delimiter: an empty column without a name, not data
        frame = frame.iloc[:, :-1]
        names, header = names[:-1], header[:-1]
    # only the first column can be a row index written without a name (DataFrame.to_csv);
    # an unnamed column elsewhere holds data
    unnamed = (names[0],) if not header[0] else ()
    if frame.empty:
        raise DataError(f"{display}: the file has a header but no data rows")
    for name in frame.columns:
        column = frame[name]
        if is_text(column):
            frame[name] = _strip(column, markers)
    logger.info(
        "read %d rows x %d columns from %s in %.1fs",
        len(frame),
        frame.shape[1],
        display,
        time.perf_counter() - t0,
    )
    return Table(frame=frame, display=display, path=path, sha256=sha256, unnamed=unnamed)


def is_text(column: pd.Series) -> bool:
    """A column pandas read as text: ``object`` (pandas 2) or its string dtype (pandas 3)."""
    return column.dtype == object or isinstance(column.dtype, pd.StringDtype)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def quote(value: object, limit: int = 40) -> str:
    """A cell value or a name for a message: ``repr`` of its text (control characters
    escaped), cut after ``limit`` characters."""
    text = str(value)
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


def column_list(columns: list[str] | pd.Index, limit: int = 20) -> str:
    """``'a', 'b', ...`` for messages, cut after ``limit`` names (each quoted, bounded)."""
    names = [quote(c) for c in columns]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names)} in all)"


def _strip(column: pd.Series, markers: list[str]) -> pd.Series:
    """Text cells stripped of surrounding spaces; markers (after stripping) become NaN."""
    if isinstance(column.dtype, pd.StringDtype):  # every value a string: vectorized, ~25x faster
        text = column.str.strip()
    else:  # object: strings among other values (Parquet)
        text = column.map(lambda v: v.strip() if isinstance(v, str) else v)
    missing = text.isin(["", *markers])
    return text.mask(missing, np.nan) if missing.any() else text
