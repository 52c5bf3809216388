"""Raw data sources: turn a ``--data`` string into validated ``(years, features)`` arrays.

A source is one of

* ``"uci"``: the real UCI YearPredictionMSD file. It is kept as ``<data_dir>/raw/
  YearPredictionMSD.txt``, downloaded once from :data:`UCI_URLS` when absent, and verified
  against :data:`UCI_TXT_SHA256`. The verification is remembered in a small JSON sidecar
  (size, mtime, hash) so the 430 MB file is not re-hashed on every run.
* ``"synthetic"``: the MSD-shaped generator in :mod:`tuner.data.synthetic` at full size.
* a path to a ``.txt``, ``.csv`` or ``.zip`` file in the UCI format: no header, comma
  separated, 91 columns (the integer year, then 90 float features).

Why two readers: the happy path must be fast (pandas' C parser reads the full 515,345-row file
in a few seconds), but pandas is lenient (short rows become NaN) and its errors name neither
the file nor a useful line. So the fast path is followed by strict post-checks, and whenever
pandas fails or a check fails, a slow, exact line-by-line validator walks the text and reports
the *first* offending line. All user-facing messages come from that one validator, as a
one-line :class:`~tuner.errors.DataError` like ``data/x.txt: line 7: expected 91
comma-separated values, found 90``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import socket
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, NoReturn, TypeVar

import numpy as np
from tqdm import tqdm

from tuner.errors import DataError

logger = logging.getLogger(__name__)

UCI_URLS: tuple[str, ...] = (
    "https://archive.ics.uci.edu/ml/machine-learning-databases/00203/YearPredictionMSD.txt.zip",
    "https://archive.ics.uci.edu/static/public/203/yearpredictionmsd.zip",
)
"""Where the UCI zip is downloaded from, tried in order."""

UCI_TXT_SHA256 = "4b6f8e50235b359e01689ae7fb33ad0f89677e9a15f25f3d6259327a6bb927bb"
"""SHA-256 of ``YearPredictionMSD.txt`` (the zip's data member), as publicly reported."""

UCI_MEMBER = "YearPredictionMSD.txt"
"""Name of the data file inside the UCI zip, and of the cached copy under ``data_dir/raw``."""

N_COLUMNS = 91
"""Columns per row: the year, then :data:`N_FEATURES` features."""
N_FEATURES = 90
YEAR_MIN = 1900
"""Years outside ``YEAR_MIN..YEAR_MAX`` are impossible and rejected (the real file has
1922..2011)."""
YEAR_MAX = 2100

DOWNLOAD_TIMEOUT_S = 30.0
"""Socket timeout for each download attempt (connect and every read)."""

SUFFIXES = (".txt", ".csv", ".zip")

_CHUNK = 1 << 20
_USAGE_HINT = (
    "pass a local copy with --data PATH (.txt, .csv or .zip in the UCI format) "
    "or use --data synthetic"
)
_SEPARATORS = ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'"))
_LETTER = re.compile(r"[A-Za-z]")
_BINARY = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f\ufffd]")
_BOM = "\ufeff".encode()
_BLOCK_LINES = 20_000
_T = TypeVar("_T")


@dataclass(frozen=True, eq=False)
class RawData:
    """The rows of a source, in file order."""

    years: np.ndarray  # int64 (n,)
    features: np.ndarray  # float64 (n, 90); may be a column-major view
    source: str  # "uci", "synthetic", or the resolved file path
    sha256: str  # of the data file's bytes (zip: of the data member); synthetic: of its recipe

    @property
    def n_rows(self) -> int:
        return int(self.years.shape[0])


@dataclass(frozen=True)
class SourceRef:
    """A resolved source: what to read and its content hash, known before parsing.

    :func:`resolve_source` produces it cheaply (a hash, a cached verification, or a download),
    so :mod:`tuner.data.prepare` can look up its cache before parsing anything; :func:`load_resolved`
    then reads the rows.
    """

    kind: str  # "uci" | "synthetic" | "file"
    name: str  # RawData.source: "uci", "synthetic", or the resolved path
    sha256: str
    path: Path | None = None  # the file to read (None for synthetic)
    display: str = ""  # how messages name the file (the path as the user gave it)
    synthetic_seed: int = 0
    stat: tuple[int, int] | None = None  # (size, mtime_ns) of a file when it was hashed


# --------------------------------------------------------------------------- public API


def load_source(source: str, data_dir: Path, *, synthetic_seed: int = 0) -> RawData:
    """Read the rows of ``source`` ("uci", "synthetic" or a file path); see the module doc."""
    return load_resolved(resolve_source(source, data_dir, synthetic_seed=synthetic_seed))


def resolve_source(source: str, data_dir: Path, *, synthetic_seed: int = 0) -> SourceRef:
    """Locate ``source`` and compute its content hash without parsing it.

    For ``"uci"`` this downloads and verifies the file when needed; for a file it checks that
    the file exists, has a known extension and (for a zip) holds a data member, and hashes it.
    """
    if source == "synthetic":
        from tuner.data import synthetic

        recipe = json.dumps(["synthetic", synthetic.GENERATOR_VERSION, int(synthetic_seed)])
        return SourceRef(
            kind="synthetic",
            name="synthetic",
            sha256=hashlib.sha256(recipe.encode()).hexdigest(),
            display="synthetic",
            synthetic_seed=int(synthetic_seed),
        )
    if source == "uci":
        path = ensure_uci(Path(data_dir))
        return SourceRef(
            kind="uci", name="uci", sha256=UCI_TXT_SHA256, path=path, display=str(path)
        )
    path = _check_path(Path(source).expanduser(), source)
    stat = _stat(path)
    return SourceRef(
        kind="file",
        name=str(path.resolve()),
        sha256=_guarded(file_sha256, path, source),
        path=path,
        display=source,
        stat=stat,
    )


def load_resolved(ref: SourceRef) -> RawData:
    """Read the rows of a :class:`SourceRef` from :func:`resolve_source`."""
    if ref.kind == "synthetic":
        from tuner.data import synthetic

        t0 = time.perf_counter()
        years, features = synthetic.generate(seed=ref.synthetic_seed)
        logger.info(
            "generated %d synthetic rows (seed %d) in %.1fs",
            len(years),
            ref.synthetic_seed,
            time.perf_counter() - t0,
        )
        return RawData(
            years=np.asarray(years, dtype=np.int64),
            features=np.ascontiguousarray(features, dtype=np.float64),
            source="synthetic",
            sha256=ref.sha256,
        )
    assert ref.path is not None
    sha256: str | None = ref.sha256
    if ref.stat is not None and _stat(ref.path) != ref.stat:
        logger.warning("%s changed since it was hashed; hashing it again", ref.display)
        sha256 = None
    return _read(ref.path, ref.display, source=ref.name, sha256=sha256)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def read_uci_file(path: Path) -> RawData:
    """Read and validate a UCI-format ``.txt``, ``.csv`` or ``.zip`` file.

    Raises :class:`DataError` (one line: file, first bad line number, what is wrong) on any
    deviation from the format.
    """
    display = str(path)
    path = _check_path(Path(path).expanduser(), display)
    return _read(path, display, source=str(path.resolve()), sha256=None)


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a data file's bytes; for a ``.zip``, of its data member's bytes."""
    path = Path(path)
    if path.suffix.lower() == ".zip":
        with _open_zip(path, str(path)) as (zf, member):
            try:
                with zf.open(member) as fh:
                    return _hash_stream(fh)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                raise DataError(f"{path}: corrupt zip file ({_reason(exc)})") from None
    with open(path, "rb") as fh:
        return _hash_stream(fh)


def ensure_uci(data_dir: Path) -> Path:
    """Path of a verified ``data_dir/raw/YearPredictionMSD.txt``, downloading it if needed."""
    path = Path(data_dir) / "raw" / UCI_MEMBER
    if path.is_file():
        if _sidecar_ok(path):
            return path
        logger.info("verifying %s (SHA-256)", path)
        digest = file_sha256(path)
        if digest == UCI_TXT_SHA256:
            _write_sidecar(path, digest)
            return path
        logger.warning(
            "%s has SHA-256 %s, expected %s; downloading a fresh copy",
            path,
            digest,
            UCI_TXT_SHA256,
        )
    return download_uci(data_dir)


def download_uci(data_dir: Path) -> Path:
    """Download the UCI zip, extract and verify ``YearPredictionMSD.txt`` into
    ``data_dir/raw`` and return its path.

    Each URL of :data:`UCI_URLS` is tried in turn. A checksum mismatch raises at once (naming
    both hashes) and leaves no file behind; when every URL fails the :class:`DataError` says
    why and how to proceed without the network.
    """
    raw_dir = Path(data_dir) / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    target = raw_dir / UCI_MEMBER
    failures: list[str] = []
    for url in UCI_URLS:
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".zip", dir=raw_dir)
        os.close(fd)
        tmp_zip = Path(tmp_name)
        try:
            try:
                _fetch(url, tmp_zip)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                failures.append(f"{url}: {_reason(exc)}")
                logger.info("download of %s failed: %s", url, _reason(exc))
                continue
            try:
                extracted, digest = _extract_member(tmp_zip, url, raw_dir)
            except DataError as exc:
                failures.append(str(exc))
                logger.info("%s", exc)
                continue
            if digest != UCI_TXT_SHA256:
                extracted.unlink(missing_ok=True)
                raise DataError(
                    f"{UCI_MEMBER} downloaded from {url} has SHA-256 {digest}, expected "
                    f"{UCI_TXT_SHA256}; the bad file was deleted"
                )
            os.replace(extracted, target)
            _write_sidecar(target, digest)
            logger.info("downloaded and verified %s", target)
            return target
        finally:
            tmp_zip.unlink(missing_ok=True)
    raise DataError(
        f"cannot download the UCI YearPredictionMSD data ({'; '.join(failures)}); {_USAGE_HINT}"
    )


# --------------------------------------------------------------------------- download helpers


def _reason(exc: BaseException) -> str:
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


def _fetch(url: str, dest: Path) -> None:
    """Stream ``url`` into ``dest`` with a progress bar on stderr."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:  # noqa: S310
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with (
            open(dest, "wb") as out,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="YearPredictionMSD",
                disable=None,
                leave=False,
            ) as bar,
        ):
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def _extract_member(zip_path: Path, url: str, dest_dir: Path) -> tuple[Path, str]:
    """Extract the data member of a downloaded zip to a temporary file in ``dest_dir``,
    hashing it on the way; returns the file and its SHA-256 (the caller verifies and renames).
    """
    fd, tmp_name = tempfile.mkstemp(prefix=".extract-", suffix=".txt", dir=dest_dir)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, _open_zip(zip_path, url) as (zf, member):
            try:
                with zf.open(member) as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise DataError(f"{url}: corrupt zip file ({_reason(exc)})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sidecar_ok(path: Path) -> bool:
    """Whether ``path`` was verified before and has not changed since (size and mtime)."""
    try:
        info = json.loads(_sidecar(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    return (
        isinstance(info, dict)
        and info.get("sha256") == UCI_TXT_SHA256
        and info.get("size") == st.st_size
        and info.get("mtime_ns") == st.st_mtime_ns
    )


def _write_sidecar(path: Path, digest: str) -> None:
    st = path.stat()
    side = _sidecar(path)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(
        json.dumps({"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}) + "\n"
    )
    os.replace(tmp, side)


# --------------------------------------------------------------------------- file access


def _hash_stream(fh: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _check_path(path: Path, display: str) -> Path:
    """Reject missing files, directories and unknown extensions with a clear message."""
    if not path.exists():
        raise DataError(
            f"{display}: no such file (--data takes 'uci', 'synthetic' or a path to a .txt, "
            ".csv or .zip file in the UCI format)"
        )
    if path.is_dir():
        raise DataError(f"{display}: is a directory, not a data file")
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
def _open_zip(path: Path, display: str) -> Iterator[tuple[zipfile.ZipFile, str]]:
    """Open a zip and select its data member; corrupt archives become :class:`DataError`."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{display}: corrupt zip file ({_reason(exc)})") from None
    with zf:
        yield zf, _pick_member(zf, display)


# --------------------------------------------------------------------------- reading


def _guarded(func: Callable[..., _T], path: Path, display: str, *args: Any, **kwargs: Any) -> _T:
    """``func(path, ...)`` with OS errors (unreadable, vanished) turned into :class:`DataError`."""
    try:
        return func(path, *args, **kwargs)
    except OSError as exc:
        raise DataError(f"{display}: cannot read the file ({_reason(exc)})") from None


def _read(path: Path, display: str, *, source: str, sha256: str | None) -> RawData:
    """Read a UCI-format file (or zip), validate it, and build :class:`RawData`."""
    return _guarded(_read_unguarded, path, display, display, source=source, sha256=sha256)


def _read_unguarded(path: Path, display: str, *, source: str, sha256: str | None) -> RawData:
    t0 = time.perf_counter()
    if path.suffix.lower() == ".zip":
        with _open_zip(path, display) as (zf, member):
            where = f"{display}/{member}"
            try:
                if sha256 is None:
                    with zf.open(member) as fh:
                        sha256 = _hash_stream(fh)
                years, features = _parse(lambda: zf.open(member), where)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise DataError(f"{display}: corrupt zip file ({_reason(exc)})") from None
    else:
        if sha256 is None:
            sha256 = file_sha256(path)
        years, features = _parse(lambda: open(path, "rb"), display)
    logger.info("read %d rows from %s in %.1fs", len(years), display, time.perf_counter() - t0)
    return RawData(years=years, features=features, source=source, sha256=sha256)


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
        _raise_first_problem(opener, where, start_row=0, fallback=_reason(exc))
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
