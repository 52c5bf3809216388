"""The UCI YearPredictionMSD text format: read a file, validate it, say what is wrong.

The format: no header, comma separated, 91 columns (the integer year, then 90 float features),
in a ``.txt`` or ``.csv`` file or a ``.zip`` holding one. :func:`read` takes a path and returns
``(years, features, sha256)``: int64 years, float64 features (a column-major view), the hash of
the data bytes.

Why two readers: the happy path must be fast (pandas' C parser reads the full 515,345-row file
in a few seconds), but pandas is lenient (short rows become NaN) and its errors name neither
the file nor a useful line. So the fast path is followed by strict post-checks, and whenever
pandas fails or a check fails, a slow, exact line-by-line validator (:func:`first_problem`,
:func:`check_line`) walks the text and reports the *first* offending line. All user-facing
messages come from that one validator, as a one-line :class:`~tuner.errors.DataError` like
``data/x.txt: line 7: expected 91 comma-separated values, found 90``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import re
import socket
import time
import urllib.error
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any, NoReturn, TypeVar

import numpy as np

from tuner.errors import DataError

logger = logging.getLogger(__name__)

UCI_MEMBER = "YearPredictionMSD.txt"
"""Name of the data file inside the UCI zip, and of the cached copy under ``data_dir/raw``."""

N_COLUMNS = 91
"""Columns per row: the year, then :data:`N_FEATURES` features."""
N_FEATURES = 90
YEAR_MIN = 1900
"""Years outside ``YEAR_MIN..YEAR_MAX`` are impossible and rejected (the real file has
1922..2011)."""
YEAR_MAX = 2100

SUFFIXES = (".txt", ".csv", ".zip")

CHUNK = 1 << 20
_SEPARATORS = ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'"))
_LETTER = re.compile(r"[A-Za-z]")
_BINARY = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f\ufffd]")
_BOM = "\ufeff".encode()
_BLOCK_LINES = 20_000
_T = TypeVar("_T")


def reason(exc: BaseException) -> str:
    """A short, one-line reason for a failed download or read."""
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        text = str(exc.reason)
    elif isinstance(exc, (socket.timeout, TimeoutError)):
        text = "timed out"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a data file's bytes; for a ``.zip``, of its data member's bytes."""
    path = Path(path)
    if path.suffix.lower() == ".zip":
        with open_zip(path, str(path)) as (zf, member):
            try:
                with zf.open(member) as fh:
                    return hash_stream(fh)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                raise DataError(f"{path}: corrupt zip file ({reason(exc)})") from None
    with open(path, "rb") as fh:
        return hash_stream(fh)


# --------------------------------------------------------------------------- file access


def hash_stream(fh: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := fh.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def check_path(path: Path, display: str) -> Path:
    """Reject missing files, directories and unknown extensions with a clear message."""
    from tuner.data.delimited import check_regular_file

    check_regular_file(path, display, missing="no such file (--data takes 'uci', 'synthetic' "
                       "or a path to a .txt, .csv or .zip file in the UCI format)")  # fmt: skip
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(
            f"{display}: unsupported file type {path.suffix or '(no extension)'!r}; expected "
            ".txt, .csv or .zip in the UCI format"
        )
    return path


def _pick_member(zf: zipfile.ZipFile, display: str) -> str:
    """The zip's data member: ``YearPredictionMSD.txt`` in any folder, else the single
    ``.txt``/``.csv`` member (macOS ``__MACOSX``/``._`` resource forks ignored)."""
    names = [i.filename for i in zf.infolist() if not i.is_dir()]
    real = [
        n
        for n in names
        if not n.startswith("__MACOSX/") and not PurePosixPath(n).name.startswith("._")
    ]
    exact = [n for n in real if PurePosixPath(n).name == UCI_MEMBER]
    if exact:
        return exact[0]
    candidates = [n for n in real if PurePosixPath(n).suffix.lower() in (".txt", ".csv")]
    if len(candidates) == 1:
        return candidates[0]
    listing = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    if not candidates:
        raise DataError(
            f"{display}: the zip holds no {UCI_MEMBER} (nor any .txt/.csv file); members: "
            f"{listing or '(none)'}"
        )
    raise DataError(
        f"{display}: the zip holds no {UCI_MEMBER} and several .txt/.csv files "
        f"({', '.join(candidates)}); extract the right one and pass it with --data"
    )


@contextlib.contextmanager
def open_zip(path: Path, display: str) -> Iterator[tuple[zipfile.ZipFile, str]]:
    """Open a zip and select its data member; corrupt archives become :class:`DataError`."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{display}: corrupt zip file ({reason(exc)})") from None
    with zf:
        yield zf, _pick_member(zf, display)


# --------------------------------------------------------------------------- reading


def guarded(func: Callable[..., _T], path: Path, display: str, *args: Any, **kwargs: Any) -> _T:
    """``func(path, ...)`` with OS errors (unreadable, vanished) turned into :class:`DataError`."""
    try:
        return func(path, *args, **kwargs)
    except OSError as exc:
        raise DataError(f"{display}: cannot read the file ({reason(exc)})") from None


def read(path: Path, display: str, sha256: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Read and validate the UCI-format file (or zip) at ``path``: ``(years, features,
    sha256)``, int64 years and float64 features (a column-major view) in file order, and the
    data bytes' SHA-256 (``sha256`` when the caller hashed them already). Messages name the
    file as ``display``; any deviation from the format, or an unreadable file, is one
    :class:`DataError` line naming the first bad line."""
    return guarded(_read_unguarded, path, display, display, sha256)


def _read_unguarded(
    path: Path, display: str, sha256: str | None
) -> tuple[np.ndarray, np.ndarray, str]:
    t0 = time.perf_counter()
    if path.suffix.lower() == ".zip":
        with open_zip(path, display) as (zf, member):
            where = f"{display}/{member}"
            try:
                if sha256 is None:
                    with zf.open(member) as fh:
                        sha256 = hash_stream(fh)
                years, features = _parse(lambda: zf.open(member), where)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise DataError(f"{display}: corrupt zip file ({reason(exc)})") from None
    else:
        if sha256 is None:
            sha256 = file_sha256(path)
        years, features = _parse(lambda: open(path, "rb"), display)
    logger.info("read %d rows from %s in %.1fs", len(years), display, time.perf_counter() - t0)
    return years, features, sha256


def _pandas_table(fh: IO[bytes]) -> np.ndarray:
    """Parse UCI text with pandas' C parser into a float64 table, column-major.

    No ``dtype`` is forced: type inference is markedly faster than a float64 dtype (about
    3 s instead of 4-5 s for the full file). A column that is not all numbers comes back as
    ``object`` and raises :class:`ValueError` here, like every parser failure.
    """
    import pandas as pd  # imported only when a file is parsed (not for cached arrays)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.DtypeWarning)
        frame = pd.read_csv(fh, header=None, engine="c")
    for column, dtype in frame.dtypes.items():
        if dtype.kind == "O":  # e.g. an integer too large for int64: give numbers a chance
            frame[column] = pd.to_numeric(frame[column])  # ValueError if not all numbers
    odd = sorted({str(t) for t in frame.dtypes if t.kind not in "iuf"})
    if odd:
        raise ValueError(f"non-numeric column types {odd}")
    return frame.to_numpy(dtype=np.float64)


def _parse(opener: Callable[[], IO[bytes]], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Fast pandas parse plus strict checks; on any problem, the exact validator explains it.

    ``opener()`` returns a fresh binary stream of the data text (called again for validation).
    """
    try:
        with opener() as fh:
            table = _pandas_table(fh)
    except (ValueError, OverflowError) as exc:  # pandas' ParserError/EmptyDataError included
        _raise_first_problem(opener, where, start_row=0, fallback=reason(exc))
    first = _first_bad_row(table)
    if first is not None:
        _raise_first_problem(
            opener,
            where,
            start_row=first,
            fallback=f"{table.shape[1]} columns"
            if table.shape[1] != N_COLUMNS
            else f"bad value in data row {first + 1}",
        )
    # The features stay a view of the (column-major) table: a C-order copy costs a second or
    # more on the full file, and every consumer makes its own arrays anyway.
    return table[:, 0].astype(np.int64), table[:, 1:]


def _raise_first_problem(
    opener: Callable[[], IO[bytes]], where: str, *, start_row: int, fallback: str
) -> NoReturn:
    """Raise the :class:`DataError` for the first bad line (at or after data row
    ``start_row``, 0-based, blank lines not counted); ``fallback`` if the validator finds
    nothing (pandas rejected something the validator accepts)."""
    found = None
    for start in dict.fromkeys((start_row, 0)):
        with opener() as fh:
            found = first_problem(fh, start_row=start)
        if found is not None:
            break
    if found is None:
        raise DataError(f"{where}: not in the UCI YearPredictionMSD format ({fallback})")
    lineno, message = found
    if lineno == 0:
        raise DataError(f"{where}: {message}")
    raise DataError(f"{where}: line {lineno}: {message}")


def first_problem(lines: Iterable[bytes], *, start_row: int = 0) -> tuple[int, str] | None:
    """The first line that breaks the UCI format, as ``(1-based line number, message)``.

    ``(0, message)`` means the whole input is wrong (no data rows at all); ``None`` means
    everything checked is fine. Blank (or whitespace-only) lines are skipped, like pandas does.
    Data rows before ``start_row`` (0-based, counting non-blank lines) are only counted, not
    checked: the fast path tells where its first failure was.

    Lines are checked in blocks: a block that pandas parses into valid rows is accepted at C
    speed, and only a failing block is walked line by line, so finding a bad line near the
    end of the 515,345-row file takes seconds, not minutes.
    """
    rows = 0
    block: list[tuple[int, int, bytes]] = []  # (line number, data row number, stripped line)
    for lineno, raw in enumerate(_split_lines(lines), 1):
        line = raw.strip()
        if lineno == 1 and line.startswith(_BOM):
            line = line[len(_BOM) :].strip()
        if not line:
            continue
        rows += 1
        if rows <= start_row:
            continue
        block.append((lineno, rows, line))
        if len(block) >= _BLOCK_LINES:
            found = _check_block(block)
            if found is not None:
                return found
            block = []
    found = _check_block(block) if block else None
    if found is not None:
        return found
    if rows == 0:
        return 0, "the file is empty (no data rows)"
    return None


def _split_lines(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Lines split at ``\\n``, ``\\r\\n`` and lone ``\\r`` (old Mac files), like pandas."""
    for raw in lines:
        body = raw.rstrip(b"\r\n")
        if b"\r" in body:
            yield from body.split(b"\r")
        else:
            yield raw


def _check_block(block: list[tuple[int, int, bytes]]) -> tuple[int, str] | None:
    """The first bad line of a block of non-blank lines, or None."""
    try:
        table = _pandas_table(io.BytesIO(b"\n".join(line for _, _, line in block)))
        if _first_bad_row(table) is None:
            return None
    except (ValueError, OverflowError):
        pass
    for lineno, row, line in block:
        if row > 1 and _valid_row(line):
            continue
        message = check_line(line.decode("utf-8", errors="replace"), header_candidate=row == 1)
        if message is not None:
            return lineno, message
    return None


def _first_bad_row(table: np.ndarray) -> int | None:
    """Index of the first row of a parsed table that is not a valid UCI row (0 when the
    column count is wrong), or None if all are valid."""
    if table.ndim != 2 or table.shape[1] != N_COLUMNS or table.shape[0] == 0:
        return 0
    bad = ~np.isfinite(table).all(axis=1)
    year = table[:, 0]
    with np.errstate(invalid="ignore"):
        bad |= (year != np.floor(year)) | (year < YEAR_MIN) | (year > YEAR_MAX)
    return int(np.argmax(bad)) if bad.any() else None


def _valid_row(line: bytes) -> bool:
    """Quick accept of a well-formed row (the common case); anything else goes to
    :func:`check_line` for the exact verdict."""
    fields = line.split(b",")
    if len(fields) != N_COLUMNS or b"_" in line:
        return False
    try:
        values = list(map(float, fields))
    except ValueError:
        return False
    year = values[0]
    return all(map(math.isfinite, values)) and year.is_integer() and YEAR_MIN <= year <= YEAR_MAX


def _number(token: str) -> float | None:
    """Parse a number the way the format allows (no ``_`` digit separators), else None."""
    if "_" in token:
        return None
    try:
        return float(token)
    except ValueError:
        return None


def _show(token: str, limit: int = 30) -> str:
    return repr(token if len(token) <= limit else token[:limit] + "...")


def check_line(text: str, *, header_candidate: bool = False) -> str | None:
    """What is wrong with one stripped, non-blank line, or None if it is a valid row."""
    if _BINARY.search(text):
        return (
            f"not plain text ({_show(text)}): binary or non-UTF-8 data, not the UCI "
            "comma-separated text format"
        )
    fields = text.split(",")
    if header_candidate:
        head = fields[0]
        for sep, _ in _SEPARATORS:
            head = head.split(sep)[0]
        head = head.strip()
        if _number(head) is None and _LETTER.search(head):
            return (
                f"looks like a header ({_show(text, 40)}); the UCI format has no header row, "
                "remove it"
            )
    if len(fields) != N_COLUMNS:
        hint = ""
        if len(fields) == 1:
            for sep, name in _SEPARATORS:
                if sep in text:
                    hint = f" (the values seem to be separated by {name}, not commas)"
                    break
            else:
                if len(text.split()) > 1:
                    hint = " (the values seem to be separated by spaces, not commas)"
        return f"expected {N_COLUMNS} comma-separated values, found {len(fields)}{hint}"
    for column, token in enumerate(fields, 1):
        token = token.strip()
        what = "column 1 (the year)" if column == 1 else f"column {column} (feature {column - 1})"
        if not token:
            return f"{what} is empty"
        value = _number(token)
        if value is None:
            return f"{what} is not a number: {_show(token)}"
        if not math.isfinite(value):
            return f"{what} is not a finite number: {_show(token)}"
        if column == 1:
            if not value.is_integer():
                return f"impossible year {_show(token)}: not an integer"
            if not YEAR_MIN <= value <= YEAR_MAX:
                return f"impossible year {int(value)}: outside {YEAR_MIN}..{YEAR_MAX}"
    return None
