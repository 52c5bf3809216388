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

import bz2
import csv
import functools
import gzip
import hashlib
import io
import logging
import lzma
import re
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from tuner.errors import DataError

logger = logging.getLogger(__name__)

MISSING_MARKERS: tuple[str, ...] = ("?",)
"""Markers of a missing value on top of pandas' defaults ("", "NA", "N/A", "NaN", "null", ...)."""

_SNIFF_BYTES = 1 << 16
_DELIMITERS = ",;\t|"
_DECIMAL_COMMA = re.compile(r"[+-]?(?:\d+,\d*|,\d+|\d+)(?:[eE][+-]?\d+)?")
"""A number written with a decimal comma (or an integer, which such a column may also hold)."""


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


def _compression(path: Path) -> str | None:
    return {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zip": "zip"}.get(path.suffix.lower())


def _format(path: Path) -> str:
    """``parquet``, ``tsv`` or ``text`` from the suffix under any compression suffix."""
    name = path.name.lower()
    if _compression(path) is not None:
        name = name.rsplit(".", 1)[0]
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".tsv", ".tab")):
        return "tsv"
    return "text"


def _open_bytes(path: Path, display: str) -> IO[bytes]:
    """The decompressed bytes of ``path`` as a stream (one member of a zip)."""
    kind = _compression(path)
    if kind == "gzip":
        return gzip.open(path, "rb")
    if kind == "bz2":
        return bz2.open(path, "rb")
    if kind == "xz":
        return lzma.open(path, "rb")
    if kind == "zip":
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise DataError(f"{display}: not a zip file") from None
        members = [
            i.filename
            for i in zf.infolist()
            if not i.is_dir()
            and not i.filename.startswith("__MACOSX/")
            and not Path(i.filename).name.startswith("._")
        ]
        if len(members) != 1:
            raise DataError(
                f"{display}: the zip holds {len(members)} files ({', '.join(members[:5])}); "
                "it must hold exactly one table"
            )
        return zf.open(members[0])
    return open(path, "rb")


def _sample(path: Path, display: str) -> str:
    """The first ~64 KiB of decompressed text (complete lines only)."""
    try:
        with _open_bytes(path, display) as fh:
            raw = fh.read(_SNIFF_BYTES)
    except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError) as err:
        raise DataError(f"{display}: cannot decompress the file ({err})") from None
    if len(raw) == _SNIFF_BYTES and b"\n" in raw:
        raw = raw[: raw.rindex(b"\n")]
    return raw.decode("utf-8", errors="replace").lstrip("\ufeff")


def sniff_sep(sample: str, display: str) -> str:
    """The delimiter of delimited text: the csv sniffer among ``, ; tab |``, else a comma."""
    lines = [line for line in sample.splitlines() if line.strip()][:50]
    if not lines:
        raise DataError(f"{display}: the file is empty")
    if len(lines) == 1:  # a header alone: the most frequent candidate
        counts = {d: lines[0].count(d) for d in _DELIMITERS}
        best = max(counts, key=counts.__getitem__)
        return best if counts[best] else ","
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=_DELIMITERS).delimiter
    except csv.Error:
        return ","


def _read_text(
    path: Path, display: str, sep: str | None, markers: list[str]
) -> tuple[pd.DataFrame, list[str]]:
    """A delimited text table and its raw header names."""
    fmt = _format(path)
    if sep is None:
        sep = "\t" if fmt == "tsv" else sniff_sep(_sample(path, display), display)
    common = {"sep": sep, "compression": _compression(path), "skipinitialspace": True}
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            header = pd.read_csv(
                path,
                header=None,
                nrows=1,
                dtype=str,
                keep_default_na=False,
                encoding=encoding,
                **common,
            )
            frame = pd.read_csv(
                path,
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
            text = " ".join(str(err).split())
            raise DataError(f"{display}: not a well-formed table ({text})") from None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError) as err:
            text = " ".join(str(err).split())
            raise DataError(f"{display}: cannot read the table ({text})") from None
        if sep != ",":
            reread = functools.partial(
                pd.read_csv,
                path,
                header=0,
                decimal=",",
                na_values=markers,
                keep_default_na=True,
                low_memory=False,
                encoding=encoding,
                **common,
            )
            _read_decimal_commas(frame, reread, display)
        return frame, ["" if pd.isna(v) else str(v).strip() for v in header.iloc[0].tolist()]
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


def _read_parquet(path: Path, display: str) -> tuple[pd.DataFrame, list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - a dependency of the package
        raise DataError(f"{display}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        with _open_bytes(path, display) as fh:
            data = fh.read() if _compression(path) else None
        source = io.BytesIO(data) if data is not None else path
        frame = pq.read_table(source).to_pandas()
    except DataError:
        raise
    except Exception as err:  # pyarrow raises ArrowInvalid/OSError for a file that is not Parquet
        text = " ".join(str(err).split())[:200]
        raise DataError(f"{display}: not a Parquet file ({text})") from None
    return frame, [str(c) for c in frame.columns]


def read_table(
    path: Path | str,
    *,
    display: str | None = None,
    sep: str | None = None,
    missing: tuple[str, ...] = (),
) -> Table:
    """Read and validate a table file (see the module doc)."""
    path = Path(path).expanduser()
    display = display or str(path)
    if not path.exists():
        raise DataError(f"{display}: no such file")
    if path.is_dir():
        raise DataError(f"{display}: is a directory, not a data file")
    t0 = time.perf_counter()
    markers = list(dict.fromkeys([*MISSING_MARKERS, *missing]))
    try:
        if _format(path) == "parquet":
            frame, header = _read_parquet(path, display)
        else:
            frame, header = _read_text(path, display, sep, markers)
        sha256 = file_sha256(path)
    except PermissionError:
        raise DataError(f"{display}: cannot read the file (permission denied)") from None
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        if name and name in seen:
            raise DataError(
                f"{display}: duplicate column name {name!r} (columns {seen[name] + 1} and {i + 1})"
            )
        seen[name] = i
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
    unnamed = tuple(n for n, h in zip(names, header, strict=True) if not h)
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


def column_list(columns: list[str] | pd.Index, limit: int = 20) -> str:
    """``'a', 'b', ...`` for messages, cut after ``limit`` names."""
    names = [repr(str(c)) for c in columns]
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
