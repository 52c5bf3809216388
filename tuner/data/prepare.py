"""Prepared data: decade labels, optional subsample, train/val/test split, scaling, cache.

:func:`prepare` turns a :class:`DataSpec` into float32 feature matrices and int64 decade
labels for the three splits, and caches them under ``<data_dir>/prepared/<key>/``
(:mod:`tuner.data.cache`) so that every stage and worker of a tuning run trains on
byte-identical data without re-parsing a 430 MB file. The splits are made by
:mod:`tuner.data.split`.

The scaler is fit on the training rows only (no leak of validation/test statistics) and its
mean/scale are stored in the manifest so a trained model can be applied to new rows.

The cache key hashes the source's content hash, the split, the subsample size, the seed and
:data:`PREPARE_VERSION`; a cache directory is written to a temporary directory and renamed into
place, so a crash or a bad input never leaves a partial cache behind.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuner.data import uci
from tuner.data.cache import (
    PREPARE_VERSION,
    TABLE_VERSION,
    cache_key,
    load_cached,
    preparing_lock,
    write_cache,
)
from tuner.data.manifest import Prepared
from tuner.data.spec import DataSpec
from tuner.data.split import (
    CANONICAL_TEST_ROWS,
    CANONICAL_TOTAL_ROWS,
    CANONICAL_TRAIN_ROWS,
    MIN_ROWS,
    SPLITS,
    check_rows,
    split_indices,
    split_rows,
)
from tuner.data.target import DECADE_NAMES, decade_labels
from tuner.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

LABEL_NAMES = DECADE_NAMES
"""Class names of YearPredictionMSD, index = label: ``"1920s"`` .. ``"2010s"``."""

__all__ = [
    "CANONICAL_TEST_ROWS",
    "CANONICAL_TOTAL_ROWS",
    "CANONICAL_TRAIN_ROWS",
    "LABEL_NAMES",
    "MIN_ROWS",
    "PREPARE_VERSION",
    "SPLITS",
    "TABLE_VERSION",
    "DataSpec",
    "Prepared",
    "cache_key",
    "decade_labels",
    "prepare",
    "split_indices",
]


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
    check_rows(spec.rows, None)
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
    with preparing_lock(data_dir):
        return _prepare_unlocked(spec, data_dir)


def _prepare_unlocked(spec: DataSpec, data_dir: Path) -> Prepared:
    if spec.is_table:
        return _prepare_table(spec, data_dir)
    ref = uci.resolve_source(spec.source, data_dir)
    key = cache_key(ref.sha256, spec)
    directory = data_dir / "prepared" / key
    cached = load_cached(directory, key, ref.sha256, spec)
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
        write_cache(prepared, directory)
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
    cached = load_cached(directory, key, sha, spec)
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
    train, val, test = split_rows(frame, y, n_main, spec, display, lumped)
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
