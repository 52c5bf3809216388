"""Delimited text before pandas parses it: the decompressed bytes (one member of a zip),
their encoding (UTF-8, Latin-1, or UTF-16/32 with a byte-order mark), the delimiter, and the
checks that bound the work: the header alone is read first and a table wider than
``max_columns`` refused (:func:`check_header_width`); every line must have as many fields as
the header (:func:`check_field_counts`), or every data line one empty field more (a delimiter
at the end of each line). Errors are one :class:`~tuner.errors.DataError` line naming the file
and the line, never quoting the file's content.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import errno
import gzip
import io
import logging
import lzma
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from tuner.errors import DataError

logger = logging.getLogger(__name__)

SNIFF_BYTES = 1 << 16
DELIMITERS = ",;\t|"


def check_regular_file(
    path: Path, display: str, *, missing: str = "no such file", what: str = "a data file"
) -> None:
    """Refuse what is not a regular file before opening it (``os.stat`` only: a FIFO without
    a writer is refused at once, never opened): no such file (``missing``), a symbolic link
    loop, a directory, a FIFO, device or socket (read once, it could not be read again:
    pass a file on disk)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{display}: {missing}") from None
    except NotADirectoryError:  # a file where a directory of the path should be
        raise DataError(f"{display}: {missing}") from None
    except PermissionError:
        raise DataError(f"{display}: cannot read the file (permission denied)") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DataError(f"{display}: symbolic link loop") from None
        raise DataError(f"{display}: cannot read the file ({err.strerror or 'error'})") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{display}: is a directory, not {what}")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{display}: not a regular file (a FIFO, device or socket): pass a "
                        "file on disk")  # fmt: skip


def compression(path: Path) -> str | None:
    return {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zip": "zip"}.get(path.suffix.lower())


def open_bytes(path: Path, display: str) -> IO[bytes]:
    """The decompressed bytes of ``path`` as a stream (one member of a zip)."""
    kind = compression(path)
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


def sample(path: Path, display: str) -> str:
    """The first ~64 KiB of decompressed text (complete lines only)."""
    raw = _head_bytes(path, display)
    if len(raw) == SNIFF_BYTES and b"\n" in raw:
        raw = raw[: raw.rindex(b"\n")]
    return raw.decode("utf-8", errors="replace").lstrip("\ufeff")


def _head_bytes(path: Path, display: str) -> bytes:
    """The first ~64 KiB of the decompressed file, as UTF-8 (a UTF-16 file transcoded)."""
    try:
        with open_bytes(path, display) as fh:
            raw = fh.read(SNIFF_BYTES)
    except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError) as err:
        raise DataError(f"{display}: cannot decompress the file ({one_line(err)})") from None
    wide = _wide_encoding(raw)
    if wide is not None:
        return raw.decode(wide, errors="ignore").encode("utf-8")
    return raw


def one_line(err: BaseException, limit: int = 200) -> str:
    return " ".join(str(err).split())[:limit]


_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _wide_encoding(head: bytes) -> str | None:
    """``utf-16`` or ``utf-32`` when ``head`` starts with that byte-order mark, else None."""
    for bom, name in _WIDE_BOMS:  # UTF-32-LE's mark starts with UTF-16-LE's: checked first
        if head.startswith(bom):
            return name
    return None


def read_all(path: Path, display: str) -> bytes:
    """The whole decompressed file (the one member of a zip), UTF-16/32 transcoded to UTF-8."""
    try:
        with open_bytes(path, display) as fh:
            data = fh.read()
    except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError) as err:
        raise DataError(f"{display}: cannot decompress the file ({one_line(err)})") from None
    wide = _wide_encoding(data[:4])
    if wide is not None:
        try:
            data = data.decode(wide).encode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{display}: starts with a {wide.upper()} byte-order mark but is "
                            f"not valid {wide.upper()} text") from None  # fmt: skip
        logger.info("%s: read as %s", display, wide.upper())
    return data


def check_header_width(path: Path, display: str, sep: str, max_columns: int) -> None:
    """Refuse a header of more than ``max_columns`` names, reading at most that header line
    (in 1 MiB pieces) and stopping as soon as it is known to be too wide."""
    count = 0
    line = bytearray()
    try:
        with open_bytes(path, display) as fh:
            if _wide_encoding(fh.read(4)) is not None:  # the whole file is read and checked later
                return
            fh.seek(0)
            while True:
                piece = fh.readline(1 << 20)
                if not piece:
                    break
                line += piece
                count += piece.count(sep.encode())
                if count >= max_columns and _fields(bytes(line), sep) > max_columns:
                    raise DataError(
                        f"{display}: the header has more than {max_columns:,} columns; raise "
                        "the limit with max_columns = N in a data description (or "
                        "--max-columns N) if the table really is that wide"
                    )
                if line.endswith(b"\n"):
                    if line.strip(b"\r\n\t \xef\xbb\xbf"):
                        break
                    line, count = bytearray(), 0  # a blank line before the header
    except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError) as err:
        raise DataError(f"{display}: cannot decompress the file ({one_line(err)})") from None


def _fields(line: bytes, sep: str) -> int:
    """The number of fields of one (possibly quoted) line of delimited text."""
    text = line.decode("latin-1")
    if '"' not in text:
        return text.count(sep) + 1
    row = next(csv.reader(io.StringIO(text), delimiter=sep, skipinitialspace=True), [])
    return max(len(row), 1)


@dataclass(frozen=True)
class Layout:
    """The header's fields (raw bytes) and whether every data line ends with one empty field
    more (a trailing delimiter the header lacks)."""

    header: list[bytes]
    trailing: bool

    @property
    def n_fields(self) -> int:
        return len(self.header)


def _split_header(line: str, sep: str) -> list[bytes]:
    row = next(csv.reader([line], delimiter=sep, skipinitialspace=True), [""])
    return [field.encode("latin-1") for field in row] or [b""]


def check_field_counts(data: bytes, sep: str, display: str) -> Layout:
    """Every non-blank line must have as many fields as the header (pandas would otherwise
    turn surplus leading fields into a row index, or fill a short row with missing values),
    or every data line one more, empty (a delimiter at the end of each line, dropped). Else a
    :class:`~tuner.errors.DataError` naming the first line that differs."""
    if b'"' in data:
        return _check_quoted(data, sep, display)
    arr = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(arr == 10)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(arr)]))
    has_cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13)
    ends = ends - has_cr
    seps = np.flatnonzero(arr == ord(sep))
    fields = np.bincount(np.searchsorted(newlines, seps), minlength=len(starts)) + 1
    lines = np.flatnonzero(ends > starts)
    if len(lines) == 0:
        raise DataError(f"{display}: the file is empty")
    head = int(lines[0])
    header = _split_header(data[starts[head] : ends[head]].decode("latin-1"), sep)
    n = int(fields[head])
    rows = lines[1:]
    if len(rows) == 0 or (fields[rows] == n).all():
        return Layout(header, trailing=False)
    if (fields[rows] == n + 1).all() and (arr[ends[rows] - 1] == ord(sep)).all():
        return Layout(header, trailing=True)
    bad = int(rows[np.argmax(fields[rows] != n)])
    raise DataError(_count_message(display, bad + 1, int(fields[bad]), n))


def _check_quoted(data: bytes, sep: str, display: str) -> Layout:
    """:func:`check_field_counts` for text with quoted fields (a Python pass over the rows)."""
    reader = csv.reader(
        io.StringIO(data.decode("latin-1"), newline=""), delimiter=sep, skipinitialspace=True
    )
    header: list[str] | None = None
    first_bad: tuple[int, int] | None = None
    exact, all_trailing = False, True
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if header is None:
                header = row
                continue
            if len(row) == len(header):
                exact = True
                if first_bad is not None:
                    break
                continue
            trailing = len(row) == len(header) + 1 and not row[-1].strip()
            all_trailing &= trailing
            if first_bad is None:
                first_bad = (reader.line_num, len(row))
            if exact or not trailing:
                break
    except csv.Error as err:
        raise DataError(f"{display}: not a well-formed table (line {reader.line_num}: "
                        f"{one_line(err)})") from None  # fmt: skip
    if header is None:
        raise DataError(f"{display}: the file is empty")
    fields = [field.encode("latin-1") for field in header]
    if first_bad is None:
        return Layout(fields, trailing=False)
    if all_trailing and not exact:
        return Layout(fields, trailing=True)
    raise DataError(_count_message(display, first_bad[0], first_bad[1], len(header)))


def _count_message(display: str, line: int, width: int, n: int) -> str:
    return (
        f"{display}: line {line} has {width} field(s), the header {n}; every row needs one "
        "value per column (an empty field for a missing value)"
    )


def sniff_sep(sample: str, display: str) -> str:
    """The delimiter of delimited text: the csv sniffer among ``, ; tab |``, else a comma."""
    lines = [line for line in sample.splitlines() if line.strip()][:50]
    if not lines:
        raise DataError(f"{display}: the file is empty")
    if len(lines) == 1:  # a header alone: the most frequent candidate
        counts = {d: lines[0].count(d) for d in DELIMITERS}
        best = max(counts, key=counts.__getitem__)
        return best if counts[best] else ","
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","
