"""Prepared data: decade labels, optional subsample, train/val/test split, scaling, cache.

:func:`prepare` turns a :class:`DataSpec` into float32 feature matrices and int64 decade
labels for the three splits, and caches them under ``<data_dir>/prepared/<key>/`` so that every
stage and worker of a tuning run trains on byte-identical data without re-parsing a 430 MB file.

Splits:

* ``stratified`` reproduces the published recipe exactly: ``train_test_split(X, y,
  test_size=0.30, random_state=42, stratify=y)``, then the 30% is halved into validation and
  test the same way. The splits are made on an index array, which yields the same permutation
  as splitting ``X`` itself.
* ``canonical`` is UCI's own artist-disjoint split: the first 463,715 rows are train+validation
  (validation: a stratified 15/85 of them), the last 51,630 rows are test.

The scaler is fit on the training rows only (no leak of validation/test statistics) and its
mean/scale are stored in the manifest so a trained model can be applied to new rows.

The cache key hashes the source's content hash, the split, the subsample size, the seed and
:data:`PREPARE_VERSION`; a cache directory is written to a temporary directory and renamed into
place, so a crash or a bad input never leaves a partial cache behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuner.data import uci
from tuner.data.spec import DataSpec
from tuner.data.target import DECADE_NAMES, decade_labels
from tuner.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

LABEL_NAMES = DECADE_NAMES
"""Class names of YearPredictionMSD, index = label: ``"1920s"`` .. ``"2010s"``."""

CANONICAL_TRAIN_ROWS = 463_715
"""Rows of UCI's train part (train + validation here); the rest are test."""
CANONICAL_TEST_ROWS = 51_630
CANONICAL_TOTAL_ROWS = CANONICAL_TRAIN_ROWS + CANONICAL_TEST_ROWS

SPLITS = ("stratified", "canonical")
MIN_ROWS = 100
"""Smallest subsample (``rows``) and smallest source that can be split in three."""

TEST_FRACTION = 0.30  # stratified: train vs (val + test)
VAL_TEST_FRACTION = 0.5  # stratified: val vs test within the 30%
CANONICAL_VAL_FRACTION = 0.15 / 0.85  # canonical: validation share of the train part

PREPARE_VERSION = 1
"""Bump when the prepared arrays for the same inputs change; part of the cache key."""
TABLE_VERSION = 2
"""Bump when a table's encoding for the same inputs changes; part of a table's cache key.
2: numbers with a decimal comma are numbers (1 one-hot encoded them as text)."""

_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


@dataclass
class Prepared:
    """Scaled float32 features and int64 decade labels of the three splits, plus the
    JSON-able manifest that describes them (see :func:`prepare`)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    manifest: dict[str, Any]

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self.manifest.get("label_names") or LABEL_NAMES)


# --------------------------------------------------------------------------- splitting


def _split_sizes(n: int, *, test_size: float | None = None, train_size: int | None = None):
    """(n_train, n_test) the way sklearn computes them for these two call forms."""
    if train_size is not None:
        return train_size, n - train_size
    assert test_size is not None
    n_test = math.ceil(test_size * n)
    return n - n_test, n_test


def _stratify_labels(
    y: np.ndarray, n_train: int, n_test: int, lumped: set[int] | None = None
) -> np.ndarray | None:
    """Labels to stratify on, lumping classes only where sklearn would refuse ``y`` itself.

    sklearn needs every class to have >= 2 members and both sides to be at least as large as
    the number of classes. While that fails, the rarest class is merged into the most frequent
    one; on the full data set (and any sample with >= 2 rows per class) ``y`` is returned
    unchanged, so the split is the published one. ``None`` (no stratification) if only one
    class is left.
    """
    labels = np.asarray(y)
    classes, counts = np.unique(labels, return_counts=True)
    if counts.size == 0:
        return None
    if counts.min() >= 2 and classes.size <= min(n_train, n_test):
        return labels
    labels = labels.copy()
    most = classes[np.argmax(counts)]
    while True:
        classes, counts = np.unique(labels, return_counts=True)
        if classes.size <= 1:
            return None
        if counts.min() >= 2 and classes.size <= min(n_train, n_test):
            return labels
        rare = classes[np.argmin(counts)]
        labels[labels == rare] = most
        if lumped is not None:
            lumped.add(int(rare))


def _stratified_split(
    idx: np.ndarray, y: np.ndarray, test_size: float, seed: int, lumped: set[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``train_test_split(idx, test_size=..., stratify=y, random_state=seed)``; ``y`` aligns
    with ``idx``."""
    from sklearn.model_selection import train_test_split  # imported only when preparing

    n_train, n_test = _split_sizes(len(idx), test_size=test_size)
    first, second = train_test_split(
        idx,
        test_size=test_size,
        random_state=seed,
        stratify=_stratify_labels(y, n_train, n_test, lumped),
    )
    return np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)


def _stratified_take(
    idx: np.ndarray, y: np.ndarray, k: int, seed: int, lumped: set[int] | None = None
) -> np.ndarray:
    """A stratified sample of ``k`` of ``idx`` (``y`` aligned with ``idx``), in original order."""
    if k >= len(idx):
        return np.asarray(idx, dtype=np.int64)
    from sklearn.model_selection import train_test_split

    n_train, n_test = _split_sizes(len(idx), train_size=k)
    taken, _ = train_test_split(
        idx, train_size=k, random_state=seed, stratify=_stratify_labels(y, n_train, n_test, lumped)
    )
    return np.sort(np.asarray(taken, dtype=np.int64))


def _check_rows(rows: int | None, n: int | None) -> None:
    """Validate a subsample size (and, with ``n`` known, the data size)."""
    if rows is None:
        if n is not None and n < MIN_ROWS:
            raise DataError(f"the data has {n} rows; at least {MIN_ROWS} are needed to split it")
        return
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)):
        raise DataError(f"rows must be an integer, got {rows!r}")
    if rows < MIN_ROWS:
        raise DataError(f"--rows {rows}: at least {MIN_ROWS} rows are needed")
    if n is not None and rows > n:
        raise DataError(f"--rows {rows}: the data has only {n} rows")


def split_indices(
    y: np.ndarray,
    split: str,
    seed: int = 42,
    *,
    rows: int | None = None,
    lumped: set[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test row indices (into ``y``) for ``split``.

    ``rows`` optionally draws a stratified subsample first (for ``canonical``: from the train
    and test parts in proportion); the subsample keeps file order, so the split behaves as if
    the file held only those rows. Train/val/test indices come in the order the published
    recipe returns its rows (``X[train]`` equals the recipe's ``X_train``). Classes too rare
    to stratify on are lumped into the most frequent one for stratification only; ``lumped``
    collects them.
    """
    y = np.asarray(y)
    n = len(y)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    _check_rows(rows, n)
    if split == "stratified":
        pool = np.arange(n, dtype=np.int64)
        if rows is not None:
            pool = _stratified_take(pool, y, rows, seed, lumped)
        train, temp = _stratified_split(pool, y[pool], TEST_FRACTION, seed, lumped)
        val, test = _stratified_split(temp, y[temp], VAL_TEST_FRACTION, seed, lumped)
        return train, val, test
    if n != CANONICAL_TOTAL_ROWS:
        raise DataError(
            f"the canonical split needs the full UCI file of {CANONICAL_TOTAL_ROWS:,} rows "
            f"(first {CANONICAL_TRAIN_ROWS:,} train, last {CANONICAL_TEST_ROWS:,} test); this "
            f"data has {n:,} rows; use --split stratified"
        )
    part = np.arange(CANONICAL_TRAIN_ROWS, dtype=np.int64)
    test = np.arange(CANONICAL_TRAIN_ROWS, n, dtype=np.int64)
    if rows is not None:
        k_part = round(rows * CANONICAL_TRAIN_ROWS / CANONICAL_TOTAL_ROWS)
        part = _stratified_take(part, y[part], k_part, seed)
        test = _stratified_take(test, y[test], rows - k_part, seed)
    train, val = _stratified_split(part, y[part], CANONICAL_VAL_FRACTION, seed)
    return train, val, test


# --------------------------------------------------------------------------- cache


def cache_key(source_sha256: str, spec: DataSpec, test_sha256: str | None = None) -> str:
    """16 hex digits identifying the prepared arrays of ``spec`` on that source content.

    A table's options (target, columns, encoding, split column) and its test file's content
    are part of the key; for the UCI format the key is what it always was, so caches and
    studies made before tables existed are still found.
    """
    fields: dict[str, Any] = {
        "source_sha256": source_sha256,
        "split": spec.split,
        "rows": None if spec.rows is None else int(spec.rows),
        "seed": int(spec.seed),
        "version": PREPARE_VERSION,
    }
    if spec.is_table:
        fields["table"] = spec.table_options()
        fields["table_version"] = TABLE_VERSION
        fields["test_sha256"] = test_sha256
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_cached(directory: Path, key: str, source_sha256: str, spec: DataSpec) -> Prepared | None:
    """The cached :class:`Prepared` in ``directory`` if complete and matching, else None."""
    manifest_path = directory / "manifest.json"
    arrays_path = directory / "arrays.npz"
    if not manifest_path.is_file() or not arrays_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = {
            "key": key,
            "version": PREPARE_VERSION,
            "source_sha256": source_sha256,
            "split": spec.split,
            "rows": spec.rows,
            "seed": spec.seed,
        }
        if any(manifest.get(k) != v for k, v in expected.items()):
            logger.warning("ignoring stale prepared data in %s (manifest differs)", directory)
            return None
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in _ARRAYS}
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("ignoring unreadable prepared data in %s: %s", directory, exc)
        return None
    for part in ("train", "val", "test"):
        n = manifest.get(f"n_{part}")
        if arrays[f"x_{part}"].shape[0] != n or arrays[f"y_{part}"].shape[0] != n:
            logger.warning("ignoring inconsistent prepared data in %s", directory)
            return None
    return Prepared(manifest=manifest, **arrays)


def _write_cache(prepared: Prepared, directory: Path) -> None:
    """Write arrays and manifest to a temporary directory, then rename it to ``directory``.

    Concurrent workers may prepare the same key at once: whoever renames first wins, and a
    complete cache written by another process meanwhile is kept, never deleted.
    """
    root = directory.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=root))
    try:
        np.savez(tmp / "arrays.npz", **{name: getattr(prepared, name) for name in _ARRAYS})
        (tmp / "manifest.json").write_text(json.dumps(prepared.manifest, indent=1) + "\n")
        if directory.exists():
            if _is_complete(directory, prepared.manifest["key"]):
                logger.info("another process wrote %s meanwhile; keeping its copy", directory)
                return
            stale = Path(tempfile.mkdtemp(prefix=f".stale-{directory.name}-", dir=root))
            os.replace(directory, stale / "old")  # move aside atomically, then delete
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, directory)
        except OSError:
            if not _is_complete(directory, prepared.manifest["key"]):
                raise
            logger.info("another process wrote %s first; keeping its copy", directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _is_complete(directory: Path, key: str) -> bool:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("key") == key
        and (directory / "arrays.npz").is_file()
    )


# --------------------------------------------------------------------------- prepare


def _build(raw: uci.RawData, spec: DataSpec, key: str) -> Prepared:
    """Split, scale and describe ``raw`` (pure computation, nothing written)."""
    y = decade_labels(raw.years)
    train, val, test = split_indices(y, spec.split, spec.seed, rows=spec.rows)
    x_train = np.ascontiguousarray(raw.features[train], dtype=np.float64)
    from sklearn.preprocessing import StandardScaler  # imported only when preparing

    with np.errstate(all="ignore"):
        scaler = StandardScaler().fit(x_train)  # train rows only: no val/test statistics leak
    bad = ~(np.isfinite(scaler.mean_) & np.isfinite(scaler.scale_))
    if bad.any():  # finite values whose squares overflow float64 (|x| > ~1e154)
        c = int(np.argmax(bad))
        row = int(train[int(np.argmax(np.abs(x_train[:, c])))]) + 1
        raise DataError(
            f"{raw.source}: feature {c + 1} (column {c + 2}) has values too large to standardize "
            f"(data row {row}: {raw.features[row - 1, c]:g}); the scaled column would be NaN"
        )

    def scaled(x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            out = np.ascontiguousarray(scaler.transform(x), dtype=np.float32)
        if not np.isfinite(out).all():  # a validation/test value far outside the train range
            r, c = np.argwhere(~np.isfinite(out))[0]
            raise DataError(
                f"{raw.source}: feature {c + 1} (column {c + 2}) holds {x[r, c]:g}, too large "
                "to standardize with the train rows' statistics"
            )
        return out

    def counts(idx: np.ndarray) -> list[int]:
        return [int(c) for c in np.bincount(y[idx], minlength=len(LABEL_NAMES))]

    manifest: dict[str, Any] = {
        "key": key,
        "version": PREPARE_VERSION,
        "source": raw.source,
        "source_sha256": raw.sha256,
        "split": spec.split,
        "rows": None if spec.rows is None else int(spec.rows),
        "seed": int(spec.seed),
        "n_rows_total": int(len(y)),
        "n_train": int(len(train)),
        "n_val": int(len(val)),
        "n_test": int(len(test)),
        "class_counts": {"train": counts(train), "val": counts(val), "test": counts(test)},
        "label_names": list(LABEL_NAMES),
        "target": None,
        "n_features": int(x_train.shape[1]),
        "scaler": {
            "mean": [float(v) for v in scaler.mean_],
            "scale": [float(v) for v in scaler.scale_],
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return Prepared(
        x_train=scaled(x_train),
        y_train=y[train],
        x_val=scaled(raw.features[val]),
        y_val=y[val],
        x_test=scaled(raw.features[test]),
        y_test=y[test],
        manifest=manifest,
    )


def _check_spec(spec: DataSpec) -> None:
    """Reject a bad spec before any file is touched."""
    spec.check()
    _check_rows(spec.rows, None)
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, (int, np.integer)):
        raise DataError(f"seed must be an integer, got {spec.seed!r}")


def prepare(spec: DataSpec, data_dir: Path) -> Prepared:
    """Load, split and scale the data of ``spec``, reusing ``data_dir/prepared/<key>`` when
    it holds the same preparation (same source content, split, rows, seed, version).

    Workers sharing ``data_dir`` (a compose volume) prepare one at a time, behind a lock file
    ``data_dir/.prepare.lock``: one generates and prepares, the others wait and then read
    its cache."""
    _check_spec(spec)
    data_dir = Path(data_dir)
    with _preparing_lock(data_dir):
        return _prepare_unlocked(spec, data_dir)


@contextmanager
def _preparing_lock(data_dir: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``data_dir/.prepare.lock`` (none where it cannot be made:
    a read-only data directory has nothing to race on). When preparing fails (bad input), the
    lock file and a data directory this call made are removed again: nothing is left written."""
    import fcntl

    made = [p for p in (data_dir.parent, data_dir) if not p.exists()]
    lock = data_dir / ".prepare.lock"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    failed = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another worker is preparing the data in %s; waiting for it", data_dir)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks
            pass
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if failed:
            lock.unlink(missing_ok=True)
            for path in reversed(made):
                try:
                    path.rmdir()  # only if still empty
                except OSError:
                    pass
        os.close(fd)  # releases the lock


def _prepare_unlocked(spec: DataSpec, data_dir: Path) -> Prepared:
    if spec.is_table:
        return _prepare_table(spec, data_dir)
    ref = uci.resolve_source(spec.source, data_dir)
    key = cache_key(ref.sha256, spec)
    directory = data_dir / "prepared" / key
    cached = _load_cached(directory, key, ref.sha256, spec)
    if cached is not None:
        logger.info("reusing prepared data %s (%s)", key, directory)
        cached.manifest["source"] = ref.name
        return cached
    t0 = time.perf_counter()
    raw = uci.load_resolved(ref)
    if raw.sha256 != ref.sha256:  # changed since resolve_source hashed it
        key = cache_key(raw.sha256, spec)
        directory = data_dir / "prepared" / key
    prepared = _build(raw, spec, key)
    del raw
    return _finish(prepared, directory, t0)


def _finish(prepared: Prepared, directory: Path, t0: float) -> Prepared:
    """Cache freshly prepared arrays and log what was prepared."""
    try:
        _write_cache(prepared, directory)
    except OSError as exc:
        logger.warning("could not cache the prepared data in %s: %s", directory, exc)
    m = prepared.manifest
    logger.info(
        "prepared %s (%s split): train %d, val %d, test %d in %.1fs -> %s",
        m["source"],
        m["split"],
        m["n_train"],
        m["n_val"],
        m["n_test"],
        time.perf_counter() - t0,
        directory,
    )
    return prepared


# --------------------------------------------------------------------------- tables

SPLIT_VALUES = {"train": 0, "training": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}
"""Values of a split column (case-insensitive) and the part each names."""


def _table_shas(spec: DataSpec) -> tuple[str, str | None]:
    """Content hashes of the table file and of the separate test file, before parsing."""
    from tuner.data.table import file_sha256

    shas: list[str | None] = []
    for path in (spec.source, spec.test):
        if path is None:
            shas.append(None)
            continue
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataError(
                f"{path}: {'is a directory, not a data file' if p.is_dir() else 'no such file'}"
            )
        try:
            shas.append(file_sha256(p))
        except OSError as exc:
            raise DataError(f"{path}: cannot read the file ({exc.strerror})") from None
    assert shas[0] is not None
    return shas[0], shas[1]


def _column_split(values: pd.Series, display: str, column: str) -> np.ndarray:
    """Part per row (0 train, 1 validation, 2 test) from a split column's values."""

    text = values.astype("string").str.strip().str.lower()
    part = text.map(SPLIT_VALUES)
    bad = part.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{display}: split column {column!r}, row {int(values.index[i]) + 1}: "
            f"{values.iloc[i]!r} is not one of train, val, test"
        )
    part = part.to_numpy(dtype=np.int64)
    for code, name in enumerate(("train", "val", "test")):
        if not (part == code).any():
            raise DataError(f"{display}: split column {column!r} has no {name!r} rows")
    return part


def _group_split(
    groups: pd.Series, pool: np.ndarray, seed: int, display: str, column: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """70/15/15 of the groups (not the rows): no group is in two parts."""
    import pandas as pd
    from sklearn.model_selection import GroupShuffleSplit

    g = groups.to_numpy()[pool]
    if pd.isna(g).any():
        i = int(np.argmax(pd.isna(g)))
        raise DataError(
            f"{display}: group column {column!r}, row {int(pool[i]) + 1}: missing value"
        )
    g = g.astype(str)
    if np.unique(g).size < 3:
        raise DataError(f"{display}: group column {column!r} has fewer than 3 groups")
    splitter = GroupShuffleSplit(n_splits=1, test_size=TEST_FRACTION, random_state=seed)
    first, rest = next(splitter.split(pool, groups=g))
    if np.unique(g[rest]).size < 2:
        raise DataError(f"{display}: group column {column!r}: too few groups to split in three")
    splitter = GroupShuffleSplit(n_splits=1, test_size=VAL_TEST_FRACTION, random_state=seed)
    val, test = next(splitter.split(rest, groups=g[rest]))
    return pool[first], pool[rest[val]], pool[rest[test]]


def _table_splits(
    frame: pd.DataFrame, y: np.ndarray, n_main: int, spec: DataSpec, display: str, lumped: set[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/val/test positions into ``frame`` (rows ``n_main`` on are the test file's)."""
    if spec.test is not None:  # the main file is train + validation
        pool = np.arange(n_main, dtype=np.int64)
        _check_rows(spec.rows, n_main)
        if spec.rows is not None:
            pool = _stratified_take(pool, y[pool], spec.rows, spec.seed, lumped)
        if spec.split == "group":
            g = frame[spec.split_column].astype(str).to_numpy()
            from sklearn.model_selection import GroupShuffleSplit

            splitter = GroupShuffleSplit(
                n_splits=1, test_size=CANONICAL_VAL_FRACTION, random_state=spec.seed
            )
            a, b = next(splitter.split(pool, groups=g[pool]))
            train, val = pool[a], pool[b]
        else:
            train, val = _stratified_split(pool, y[pool], CANONICAL_VAL_FRACTION, spec.seed, lumped)
        return train, val, np.arange(n_main, len(frame), dtype=np.int64)
    if spec.split == "stratified":
        return split_indices(y, "stratified", spec.seed, rows=spec.rows, lumped=lumped)
    _check_rows(spec.rows, len(frame))
    pool = np.arange(len(frame), dtype=np.int64)
    if spec.rows is not None:
        pool = _stratified_take(pool, y, spec.rows, spec.seed, lumped)
    if spec.split == "group":
        return _group_split(frame[spec.split_column], pool, spec.seed, display, spec.split_column)
    part = _column_split(frame[spec.split_column], display, spec.split_column)[pool]
    return pool[part == 0], pool[part == 1], pool[part == 2]


def _read_frames(spec: DataSpec) -> tuple[pd.DataFrame, int, str, tuple[str, ...]]:
    """The table (and the test file's rows appended), the main file's row count, a display
    name and the unnamed columns."""
    import pandas as pd

    from tuner.data.table import column_list, read_table

    table = read_table(spec.source, sep=spec.sep, missing=spec.missing)
    frame = table.frame
    display = table.display
    for name, what in ((spec.target, "target"), (spec.split_column, "split column")):
        if name is not None and name not in frame.columns:
            raise DataError(
                f"{display}: no {what} column {name!r}; the columns are "
                f"{column_list(frame.columns)}"
            )
    n_main = len(frame)
    if spec.test is not None:
        test = read_table(spec.test, sep=spec.sep, missing=spec.missing)
        needed = [c for c in frame.columns if c not in table.unnamed and c not in spec.drop]
        absent = [c for c in needed if c not in test.frame.columns]
        if absent:
            raise DataError(
                f"{test.display}: the test file lacks column(s) {column_list(absent)} of {display}"
            )
        part = test.frame[[c for c in frame.columns if c in test.frame.columns]]
        frame = pd.concat([frame, part], ignore_index=True)
    return frame, n_main, display, table.unnamed


def _prepare_table(spec: DataSpec, data_dir: Path) -> Prepared:
    """Read, label, split, encode and cache a table with a header."""
    from tuner.data import features, target

    sha, test_sha = _table_shas(spec)
    key = cache_key(sha, spec, test_sha)
    directory = data_dir / "prepared" / key
    cached = _load_cached(directory, key, sha, spec)
    if cached is not None:
        logger.info("reusing prepared data %s (%s)", key, directory)
        return cached
    t0 = time.perf_counter()
    frame, n_main, display, unnamed = _read_frames(spec)
    labels = target.encode(frame[spec.target], spec.target, display, spec.bins)
    n_unlabelled = int((~labels.keep).sum())
    if n_unlabelled:
        logger.warning(
            "%s: %d row(s) have no value in the target column %r and are left out",
            display,
            n_unlabelled,
            spec.target,
        )
        n_main -= int((~labels.keep[:n_main]).sum())
        frame = frame[labels.keep]
    y = labels.y
    if len(y) < MIN_ROWS:
        raise DataError(f"{display}: {len(y)} labelled rows; at least {MIN_ROWS} are needed")
    columns = features.infer_columns(frame, spec, display, unnamed)
    lumped: set[int] = set()
    train, val, test = _table_splits(frame, y, n_main, spec, display, lumped)
    state = features.fit(frame.iloc[train], columns, spec, seed=spec.seed, display=display)
    n_classes = len(labels.names)

    def counts(idx: np.ndarray) -> list[int]:
        return [int(c) for c in np.bincount(y[idx], minlength=n_classes)]

    class_counts = {"train": counts(train), "val": counts(val), "test": counts(test)}
    absent = [labels.names[i] for i, c in enumerate(class_counts["train"]) if c == 0]
    if absent:
        logger.warning("%s: class(es) %s have no training rows", display, ", ".join(absent))
    if lumped:
        logger.info(
            "%s: class(es) %s too rare to stratify on; split as part of the most frequent class",
            display,
            ", ".join(labels.names[i] for i in sorted(lumped)),
        )
    missing = {c: int(n) for c, n in frame.isna().sum().items() if n}
    manifest: dict[str, Any] = {
        "key": key,
        "version": PREPARE_VERSION,
        "source": str(Path(spec.source).expanduser().resolve()),
        "source_sha256": sha,
        "split": spec.split,
        "rows": None if spec.rows is None else int(spec.rows),
        "seed": int(spec.seed),
        "spec": spec.to_dict(),
        "target": spec.target,
        "label_rule": labels.rule,
        "n_rows_total": int(len(frame) + n_unlabelled),
        "rows_without_target": n_unlabelled,
        "n_train": int(len(train)),
        "n_val": int(len(val)),
        "n_test": int(len(test)),
        "class_counts": class_counts,
        "label_names": list(labels.names),
        "lumped_classes": [labels.names[i] for i in sorted(lumped)],
        "columns": columns.to_dict(),
        "missing_values": missing,
        "n_features": len(state["feature_names"]),
        "features": state,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if spec.test is not None:
        manifest["test_source"] = str(Path(spec.test).expanduser().resolve())
        manifest["test_sha256"] = test_sha
    parts = {
        name: features.transform(frame.iloc[idx], state, display)
        for name, idx in (("train", train), ("val", val), ("test", test))
    }
    prepared = Prepared(
        x_train=parts["train"],
        y_train=y[train],
        x_val=parts["val"],
        y_val=y[val],
        x_test=parts["test"],
        y_test=y[test],
        manifest=manifest,
    )
    return _finish(prepared, directory, t0)
