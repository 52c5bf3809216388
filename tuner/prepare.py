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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tuner import sources
from tuner.errors import DataError

logger = logging.getLogger(__name__)

LABEL_NAMES: tuple[str, ...] = tuple(f"{1920 + 10 * i}s" for i in range(10))
"""Class names, index = label: ``"1920s"`` .. ``"2010s"``."""

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

_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def decade_labels(years: np.ndarray) -> np.ndarray:
    """Decade class per year: ``(year // 10 * 10 - 1920) // 10`` clipped to 0..9, int64."""
    years = np.asarray(years, dtype=np.int64)
    return np.clip((years // 10 * 10 - 1920) // 10, 0, len(LABEL_NAMES) - 1).astype(np.int64)


@dataclass(frozen=True)
class DataSpec:
    """Which data to prepare: the source, an optional subsample, the split and its seed."""

    source: str = "uci"  # "uci" | "synthetic" | path to a UCI-format .txt/.csv/.zip
    rows: int | None = None  # stratified subsample size (None = all rows)
    split: str = "stratified"  # "stratified" | "canonical"
    seed: int = 42  # split/subsample random_state


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
        return len(LABEL_NAMES)

    @property
    def label_names(self) -> tuple[str, ...]:
        return LABEL_NAMES


# --------------------------------------------------------------------------- splitting


def _split_sizes(n: int, *, test_size: float | None = None, train_size: int | None = None):
    """(n_train, n_test) the way sklearn computes them for these two call forms."""
    if train_size is not None:
        return train_size, n - train_size
    assert test_size is not None
    n_test = math.ceil(test_size * n)
    return n - n_test, n_test


def _stratify_labels(y: np.ndarray, n_train: int, n_test: int) -> np.ndarray | None:
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


def _stratified_split(
    idx: np.ndarray, y: np.ndarray, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``train_test_split(idx, test_size=..., stratify=y, random_state=seed)``; ``y`` aligns
    with ``idx``."""
    from sklearn.model_selection import train_test_split  # imported only when preparing

    n_train, n_test = _split_sizes(len(idx), test_size=test_size)
    first, second = train_test_split(
        idx, test_size=test_size, random_state=seed, stratify=_stratify_labels(y, n_train, n_test)
    )
    return np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)


def _stratified_take(idx: np.ndarray, y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A stratified sample of ``k`` of ``idx`` (``y`` aligned with ``idx``), in original order."""
    if k >= len(idx):
        return np.asarray(idx, dtype=np.int64)
    from sklearn.model_selection import train_test_split

    n_train, n_test = _split_sizes(len(idx), train_size=k)
    taken, _ = train_test_split(
        idx, train_size=k, random_state=seed, stratify=_stratify_labels(y, n_train, n_test)
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
    y: np.ndarray, split: str, seed: int = 42, *, rows: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test row indices (into ``y``) for ``split``.

    ``rows`` optionally draws a stratified subsample first (for ``canonical``: from the train
    and test parts in proportion); the subsample keeps file order, so the split behaves as if
    the file held only those rows. Train/val/test indices come in the order the published
    recipe returns its rows (``X[train]`` equals the recipe's ``X_train``).
    """
    y = np.asarray(y)
    n = len(y)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    _check_rows(rows, n)
    if split == "stratified":
        pool = np.arange(n, dtype=np.int64)
        if rows is not None:
            pool = _stratified_take(pool, y, rows, seed)
        train, temp = _stratified_split(pool, y[pool], TEST_FRACTION, seed)
        val, test = _stratified_split(temp, y[temp], VAL_TEST_FRACTION, seed)
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


def cache_key(source_sha256: str, spec: DataSpec) -> str:
    """16 hex digits identifying the prepared arrays of ``spec`` on that source content."""
    blob = json.dumps(
        {
            "source_sha256": source_sha256,
            "split": spec.split,
            "rows": None if spec.rows is None else int(spec.rows),
            "seed": int(spec.seed),
            "version": PREPARE_VERSION,
        },
        sort_keys=True,
    )
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


def _build(raw: sources.RawData, spec: DataSpec, key: str) -> Prepared:
    """Split, scale and describe ``raw`` (pure computation, nothing written)."""
    y = decade_labels(raw.years)
    train, val, test = split_indices(y, spec.split, spec.seed, rows=spec.rows)
    x_train = np.ascontiguousarray(raw.features[train], dtype=np.float64)
    from sklearn.preprocessing import StandardScaler  # imported only when preparing

    scaler = StandardScaler().fit(x_train)  # train rows only: no val/test statistics leak

    def scaled(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(scaler.transform(x), dtype=np.float32)

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
        "scaler": {
            "mean": [float(v) for v in scaler.mean_],
            "scale": [float(v) for v in scaler.scale_],
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
    if spec.split not in SPLITS:
        raise DataError(f"unknown split {spec.split!r}; expected one of {', '.join(SPLITS)}")
    _check_rows(spec.rows, None)
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, (int, np.integer)):
        raise DataError(f"seed must be an integer, got {spec.seed!r}")


def prepare(spec: DataSpec, data_dir: Path) -> Prepared:
    """Load, split and scale the data of ``spec``, reusing ``data_dir/prepared/<key>`` when
    it holds the same preparation (same source content, split, rows, seed, version)."""
    _check_spec(spec)
    data_dir = Path(data_dir)
    ref = sources.resolve_source(spec.source, data_dir)
    key = cache_key(ref.sha256, spec)
    directory = data_dir / "prepared" / key
    cached = _load_cached(directory, key, ref.sha256, spec)
    if cached is not None:
        logger.info("reusing prepared data %s (%s)", key, directory)
        cached.manifest["source"] = ref.name
        return cached
    t0 = time.perf_counter()
    raw = sources.load_resolved(ref)
    if raw.sha256 != ref.sha256:  # changed since resolve_source hashed it
        key = cache_key(raw.sha256, spec)
        directory = data_dir / "prepared" / key
    prepared = _build(raw, spec, key)
    del raw
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
