"""Train, validation and test rows: the published split, UCI's canonical one, a table's own.

:func:`split_indices` takes class labels and returns the row indices of the three parts:

* ``stratified`` reproduces the published recipe exactly: ``train_test_split(X, y,
  test_size=0.30, random_state=42, stratify=y)``, then the 30% is halved into validation and
  test the same way. The splits are made on an index array, which yields the same permutation
  as splitting ``X`` itself.
* ``canonical`` is UCI's own artist-disjoint split of YearPredictionMSD: the first 463,715 rows
  are train+validation (validation: a stratified 15/85 of them), the last 51,630 rows are test.

:func:`split_rows` is what preparation calls for any source: those two, or a table's split
column (``column``), its groups (``group``: no group in two parts), or a separate test file.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from tuner.data.spec import DataSpec, check_rows
from tuner.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

CANONICAL_TRAIN_ROWS = 463_715
"""Rows of UCI's train part (train + validation here); the rest are test."""
CANONICAL_TEST_ROWS = 51_630
CANONICAL_TOTAL_ROWS = CANONICAL_TRAIN_ROWS + CANONICAL_TEST_ROWS

SPLITS = ("stratified", "canonical")
"""The splits :func:`split_indices` makes (a table adds ``column`` and ``group``)."""

MIN_PART_ROWS = {"train": 70, "val": 15, "test": 15}
"""Fewest rows a part of a group split may have: what the stratified split gives the smallest
data it splits (:data:`MIN_ROWS` rows)."""
TEST_FRACTION = 0.30  # stratified: train vs (val + test)
VAL_TEST_FRACTION = 0.5  # stratified: val vs test within the 30%
CANONICAL_VAL_FRACTION = 0.15 / 0.85  # canonical: validation share of the train part


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
        # the rarest class other than ``most``: with ties (perfectly balanced classes) the
        # rarest may be ``most`` itself, and merging it into itself would loop for ever
        others = classes != most
        rare = classes[others][np.argmin(counts[others])]
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


def split_indices(
    y: np.ndarray,
    split: str,
    seed: int = 42,
    *,
    rows: int | None = None,
    lumped: set[int] | None = None,
    rows_setting: str = "--rows",
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
    check_rows(rows, n, rows_setting)
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


SPLIT_VALUES = {"train": 0, "training": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}
"""Values of a split column (case-insensitive) and the part each names."""


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
    parts = {"train": pool[first], "val": pool[rest[val]], "test": pool[rest[test]]}
    _check_group_parts(parts, {"train": 0.70, "val": 0.15, "test": 0.15}, display, column)
    return parts["train"], parts["val"], parts["test"]


def _check_group_parts(
    parts: dict[str, np.ndarray], shares: dict[str, float], display: str, column: str
) -> None:
    """Groups of very different sizes make parts of very different sizes: a part with fewer
    rows than :data:`MIN_PART_ROWS` is refused, and parts whose share of the rows is off by
    more than half the share they should have are a warning (one line, the parts' rows)."""
    sizes = {name: len(idx) for name, idx in parts.items()}
    total = sum(sizes[name] for name in shares)
    counts = ", ".join(f"{name} {n:,}" for name, n in sizes.items())
    for name, n in sizes.items():
        if n < MIN_PART_ROWS[name]:
            raise DataError(
                f"{display}: group column {column!r} splits the rows into {counts}: {name} needs "
                f"at least {MIN_PART_ROWS[name]} rows (a few groups hold most rows; use more, "
                "smaller groups or --split stratified)"
            )
    off = [name for name, share in shares.items() if abs(sizes[name] / total - share) > share / 2]
    if off:
        target = "/".join(f"{round(100 * share)}" for share in shares.values())
        logger.warning(
            "%s: group column %r splits the rows into %s, far from %s (groups of very "
            "different sizes)",
            display,
            column,
            counts,
            target,
        )


def split_rows(
    frame: pd.DataFrame, y: np.ndarray, n_main: int, spec: DataSpec, display: str, lumped: set[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test positions into ``frame`` (labels ``y``, one per row) for
    ``spec``'s split: ``stratified`` or ``canonical`` (:func:`split_indices`), a split column,
    groups, or a separate test file (its rows are those from ``n_main`` on; the main file is
    then split into train and validation). ``rows`` draws a stratified subsample first.
    ``lumped`` collects classes too rare to stratify on."""
    if spec.test is not None:  # the main file is train + validation
        pool = np.arange(n_main, dtype=np.int64)
        check_rows(spec.rows, n_main, spec.rows_setting)
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
            shares = {"train": 1 - CANONICAL_VAL_FRACTION, "val": CANONICAL_VAL_FRACTION}
            _check_group_parts({"train": train, "val": val}, shares, display, spec.split_column)
        else:
            train, val = _stratified_split(pool, y[pool], CANONICAL_VAL_FRACTION, spec.seed, lumped)
        return train, val, np.arange(n_main, len(frame), dtype=np.int64)
    if spec.split in SPLITS:
        return split_indices(
            y, spec.split, spec.seed, rows=spec.rows, lumped=lumped, rows_setting=spec.rows_setting
        )
    check_rows(spec.rows, len(frame), spec.rows_setting)
    pool = np.arange(len(frame), dtype=np.int64)
    if spec.rows is not None:
        pool = _stratified_take(pool, y, spec.rows, spec.seed, lumped)
    if spec.split == "group":
        return _group_split(frame[spec.split_column], pool, spec.seed, display, spec.split_column)
    part = _column_split(frame[spec.split_column], display, spec.split_column)[pool]
    return pool[part == 0], pool[part == 1], pool[part == 2]
