"""YearPredictionMSD as a data source: a ``--data`` string in, a feature table and years out.

A source is one of

* ``"uci"``: the real UCI YearPredictionMSD file, downloaded once and verified
  (:mod:`tuner.data.uci_download`);
* ``"synthetic"``: the MSD-shaped generator in :mod:`tuner.data.synthetic`, at full size or,
  asked for ``rows``, at that size (the data ``synthesize --rows`` writes: a 20,000-row
  stratified data set never generates the 515,345 rows it would otherwise be drawn from);
* a path to a ``.txt``, ``.csv`` or ``.zip`` file in the UCI format (no header, comma
  separated, 91 columns: the integer year, then 90 float features), read and validated by
  :mod:`tuner.data.uci_format`.

:func:`resolve_source` locates a source and hashes it without parsing (so the prepared-data
cache can be looked up first); :func:`load_resolved` reads its rows into :class:`RawData`
(years and a float64 feature matrix, file order). :func:`as_table` turns those into what every
data source becomes before encoding: a frame of named feature columns (``feature 1`` ..
``feature 90``) and the target column (the year, which preparation bins into decades).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tuner.data import uci_download
from tuner.data.encoding import Wording
from tuner.data.uci_download import ensure_uci
from tuner.data.uci_format import (
    N_COLUMNS,
    N_FEATURES,
    SUFFIXES,
    UCI_MEMBER,
    YEAR_MAX,
    YEAR_MIN,
    check_path,
    file_sha256,
    guarded,
    read,
)

logger = logging.getLogger(__name__)

__all__ = [
    "FEATURE_NAMES",
    "N_COLUMNS",
    "N_FEATURES",
    "SUFFIXES",
    "TARGET",
    "UCI_MEMBER",
    "WORDING",
    "YEAR_MAX",
    "YEAR_MIN",
    "RawData",
    "SourceRef",
    "as_table",
    "file_sha256",
    "load_resolved",
    "load_source",
    "read_uci_file",
    "resolve_source",
]

FEATURE_NAMES: tuple[str, ...] = tuple(f"feature {i}" for i in range(1, N_FEATURES + 1))
"""Names of the feature columns of a UCI-format file (its columns 2..91), as the encoding and
``model.pt`` know them."""
TARGET = "year"
"""Name of the target column (column 1)."""


def _column(name: str) -> str:
    return f"{name} (column {FEATURE_NAMES.index(name) + 2})"


WORDING = Wording(column=_column, remedy="rescale the feature")
"""How messages about a UCI file's features name them: ``feature 5 (column 6)``."""


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
    synthetic_rows: int | None = None  # rows to generate; None: the full size
    stat: tuple[int, int] | None = None  # (size, mtime_ns) of a file when it was hashed


def load_source(
    source: str, data_dir: Path, *, synthetic_seed: int = 0, synthetic_rows: int | None = None
) -> RawData:
    """Read the rows of ``source`` ("uci", "synthetic" or a file path); see the module doc."""
    ref = resolve_source(
        source, data_dir, synthetic_seed=synthetic_seed, synthetic_rows=synthetic_rows
    )
    return load_resolved(ref)


def resolve_source(
    source: str, data_dir: Path, *, synthetic_seed: int = 0, synthetic_rows: int | None = None
) -> SourceRef:
    """Locate ``source`` and compute its content hash without parsing it.

    For ``"uci"`` this downloads and verifies the file when needed; for a file it checks that
    the file exists, has a known extension and (for a zip) holds a data member, and hashes it.
    ``synthetic_rows`` sizes the generated data (ignored for files); its recipe, hence its
    hash, names the size, so no cache mistakes one size for another.
    """
    if source == "synthetic":
        from tuner.data import synthetic

        recipe = ["synthetic", synthetic.GENERATOR_VERSION, int(synthetic_seed)]
        if synthetic_rows is not None:
            recipe.append(int(synthetic_rows))
        return SourceRef(
            kind="synthetic",
            name="synthetic",
            sha256=hashlib.sha256(json.dumps(recipe).encode()).hexdigest(),
            display="synthetic",
            synthetic_seed=int(synthetic_seed),
            synthetic_rows=None if synthetic_rows is None else int(synthetic_rows),
        )
    if source == "uci":
        path = ensure_uci(Path(data_dir))
        return SourceRef(
            kind="uci", name="uci", sha256=uci_download.UCI_TXT_SHA256, path=path, display=str(path)
        )
    path = check_path(Path(source).expanduser(), source)
    stat = _stat(path)
    return SourceRef(
        kind="file",
        name=str(path.resolve()),
        sha256=guarded(file_sha256, path, source),
        path=path,
        display=source,
        stat=stat,
    )


def load_resolved(ref: SourceRef) -> RawData:
    """Read the rows of a :class:`SourceRef` from :func:`resolve_source`."""
    if ref.kind == "synthetic":
        from tuner.data import synthetic

        t0 = time.perf_counter()
        rows = synthetic.FULL_ROWS if ref.synthetic_rows is None else ref.synthetic_rows
        years, features = synthetic.generate(rows=rows, seed=ref.synthetic_seed)
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
    years, features, sha256 = read(ref.path, ref.display, sha256)
    return RawData(years=years, features=features, source=ref.name, sha256=sha256)


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
    path = check_path(Path(path).expanduser(), display)
    years, features, sha256 = read(path, display)
    return RawData(years=years, features=features, source=str(path.resolve()), sha256=sha256)


def as_table(raw: RawData) -> tuple[pd.DataFrame, pd.Series]:
    """The rows of ``raw`` as a table: a frame of the float64 feature columns
    :data:`FEATURE_NAMES` (no copy; its index numbers the file's data rows from 0) and the
    int64 year of each row (:data:`TARGET`)."""
    frame = pd.DataFrame(raw.features, columns=list(FEATURE_NAMES), copy=False)
    return frame, pd.Series(raw.years, name=TARGET, copy=False)
