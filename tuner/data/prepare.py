"""Prepared data: any data source in, split and encoded float32 arrays with their manifest out.

:func:`prepare` takes a :class:`~tuner.data.spec.DataSpec` and a data directory and returns
:class:`~tuner.data.manifest.Prepared`: float32 feature matrices and int64 labels of the train,
validation and test rows, and the typed :class:`~tuner.data.manifest.Manifest` that describes
them (with the fitted :class:`~tuner.data.encoding.Encoding` that ``predict`` applies to new
rows). The arrays are cached under ``<data_dir>/prepared/<key>/`` (:mod:`tuner.data.cache`), so
that every stage and worker of a tuning run trains on byte-identical data.

Every source takes the same path; only reading it differs:

1. **read**: a table with a header (:mod:`tuner.data.table`), or YearPredictionMSD in the UCI
   format (:mod:`tuner.data.uci`); either becomes a frame of raw columns and a target column;
2. **label** (:mod:`tuner.data.target`): a table's classes as they are or binned as asked;
   YearPredictionMSD's target is the year, binned by decade (``1920s`` .. ``2010s``);
3. **choose the features** (:func:`tuner.data.features.infer_columns`): every column but the
   target (and a split column), less those that are not features;
4. **split** (:func:`tuner.data.split.split_rows`): the published stratified 70/15/15 recipe,
   UCI's canonical split, a split column, groups, or a separate test file;
5. **encode**: the :class:`~tuner.data.encoding.Encoding` is fitted on the train rows only (no
   validation or test statistics leak) and applied to all three parts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from tuner.data import uci
from tuner.data.cache import (
    PREPARE_VERSION,
    TABLE_VERSION,
    cache_key,
    load_cached,
    preparing_lock,
    write_cache,
)
from tuner.data.encoding import TABLE_WORDING, Encoding, Wording
from tuner.data.manifest import MANIFEST_VERSION, Manifest, Prepared
from tuner.data.spec import MIN_ROWS, DataSpec, check_rows
from tuner.data.split import (
    CANONICAL_TEST_ROWS,
    CANONICAL_TOTAL_ROWS,
    CANONICAL_TRAIN_ROWS,
    SPLITS,
    split_indices,
    split_rows,
)
from tuner.data.table import quote
from tuner.data.target import DECADE_NAMES, decade_labels
from tuner.errors import DataError

logger = logging.getLogger(__name__)

LABEL_NAMES = DECADE_NAMES
"""Class names of YearPredictionMSD, index = label: ``"1920s"`` .. ``"2010s"``."""

__all__ = [
    "CANONICAL_TEST_ROWS",
    "CANONICAL_TOTAL_ROWS",
    "CANONICAL_TRAIN_ROWS",
    "LABEL_NAMES",
    "MANIFEST_VERSION",
    "MIN_ROWS",
    "PREPARE_VERSION",
    "SPLITS",
    "TABLE_VERSION",
    "DataSpec",
    "Manifest",
    "Prepared",
    "cache_key",
    "decade_labels",
    "prepare",
    "split_indices",
]


@dataclass
class Rows:
    """A source's rows as a table, before labelling, splitting and encoding."""

    frame: pd.DataFrame  # raw columns (a table's target and split column too); index: data row
    target: pd.Series  # the target column's raw values, one per frame row
    bins: str | tuple[float, ...] | None  # how the target becomes classes (None: as they are)
    n_main: int  # rows of the main file; the rest are a separate test file's
    display: str  # how messages name the source
    source: str  # the manifest's source: "uci", "synthetic", or the resolved path
    sha256: str
    file_format: str  # "uci" | "table": how the rows are written
    unnamed: tuple[str, ...] = ()  # columns without a header name
    wording: Wording = TABLE_WORDING  # how encoding messages name a column
    extra: dict[str, str | None] = field(default_factory=dict)  # test_source, test_sha256
    test_display: str | None = None  # how messages name a separate test file


def prepare(spec: DataSpec, data_dir: Path) -> Prepared:
    """The prepared data of ``spec``: read, labelled, split and encoded (see the module doc),
    reusing ``data_dir/prepared/<key>`` when it holds the same preparation (same source
    content, options, split, rows, seed).

    Raises a one-line :class:`~tuner.errors.DataError` for bad input, before anything is
    written. Workers sharing ``data_dir`` (a compose volume) prepare one at a time, behind a
    lock file ``data_dir/.prepare.lock``: one generates and prepares, the others wait and then
    read its cache."""
    _check_spec(spec)
    data_dir = Path(data_dir)
    with preparing_lock(data_dir):
        if spec.is_table:
            return _prepare_table(spec, data_dir)
        return _prepare_uci(spec, data_dir)


def _check_spec(spec: DataSpec) -> None:
    """Reject a bad spec before any file is touched."""
    spec.check()
    check_rows(spec.rows, None, spec.rows_setting)
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, (int, np.integer)):
        raise DataError(f"seed must be an integer, got {spec.seed!r}")


# --------------------------------------------------------------------------- the sources


ANNOUNCE_BYTES = 100 * 2**20
"""A file at least this large is announced before it is read: it takes seconds to prepare (a
200 MB CSV of 500,000 rows: 5.5 s). A smaller one is not, so that bad input stays one line."""


def _announce(source: str, path: Path | None) -> None:
    """Say what is coming before the first read of a large file."""
    try:
        size = 0 if path is None else path.stat().st_size
    except OSError:
        return
    if size >= ANNOUNCE_BYTES:
        logger.info(
            "preparing %s (%d MB): reading, splitting and encoding (cached for later runs)",
            source,
            size // 2**20,
        )


def _cached(data_dir: Path, key: str, sha: str, spec: DataSpec) -> Prepared | None:
    directory = data_dir / "prepared" / key
    cached = load_cached(directory, key, sha, spec)
    if cached is not None:
        logger.info("reusing prepared data %s (%s)", key, directory)
    return cached


def _prepare_uci(spec: DataSpec, data_dir: Path) -> Prepared:
    """YearPredictionMSD (the UCI format, the download or the generator): a table of 90
    feature columns whose target is the year, binned by decade."""
    # A stratified subsample of generated data is generated at its size, the data
    # `synthesize --rows` writes: preparing 20,000 rows took 2.3 s and 0.29 GB at peak,
    # against 5.1 s and 0.69 GB when all 515,345 were generated first. The canonical split
    # needs the full size (it splits by position).
    small = (
        spec.source == "synthetic"
        and spec.split == "stratified"
        and spec.rows is not None
        and spec.rows < CANONICAL_TOTAL_ROWS  # the generator's full size; more: the usual error
    )
    ref = uci.resolve_source(spec.source, data_dir, synthetic_rows=spec.rows if small else None)
    key = cache_key(ref.sha256, spec)
    cached = _cached(data_dir, key, ref.sha256, spec)
    if cached is not None:
        cached.manifest = cached.manifest.replace(source=ref.name)
        return cached
    _announce(ref.display, ref.path)
    t0 = time.perf_counter()
    raw = uci.load_resolved(ref)
    if raw.sha256 != ref.sha256:  # changed since resolve_source hashed it
        key = cache_key(raw.sha256, spec)
    frame, years = uci.as_table(raw)
    rows = Rows(
        frame=frame,
        target=years,
        bins="decade",
        n_main=len(frame),
        display=raw.source,
        source=raw.source,
        sha256=raw.sha256,
        file_format="uci",
        wording=uci.WORDING,
    )
    del raw
    return _finish(_build(rows, spec, key), data_dir, t0)


def _prepare_table(spec: DataSpec, data_dir: Path) -> Prepared:
    """A table with a header (and a separate test file, if any), its target a column."""
    sha, test_sha = _table_shas(spec)
    key = cache_key(sha, spec, test_sha)
    cached = _cached(data_dir, key, sha, spec)
    if cached is not None:
        return cached
    _announce(spec.source, Path(spec.source).expanduser())
    t0 = time.perf_counter()
    frame, n_main, display, unnamed = _read_frames(spec)
    extra: dict[str, str | None] = {}
    if spec.test is not None:
        extra = {
            "test_source": str(Path(spec.test).expanduser().resolve()),
            "test_sha256": test_sha,
        }
    rows = Rows(
        frame=frame,
        target=frame[spec.target],
        bins=spec.bins,
        n_main=n_main,
        display=display,
        source=str(Path(spec.source).expanduser().resolve()),
        sha256=sha,
        file_format="table",
        unnamed=unnamed,
        extra=extra,
        test_display=None if spec.test is None else str(Path(spec.test).expanduser()),
    )
    return _finish(_build(rows, spec, key), data_dir, t0)


def _table_shas(spec: DataSpec) -> tuple[str, str | None]:
    """Content hashes of the table file and of the separate test file, before parsing."""
    from tuner.data.delimited import check_regular_file
    from tuner.data.table import file_sha256

    shas: list[str | None] = []
    for path in (spec.source, spec.test):
        if path is None:
            shas.append(None)
            continue
        p = Path(path).expanduser()
        check_regular_file(p, path)
        try:
            shas.append(file_sha256(p))
        except OSError as exc:
            raise DataError(f"{path}: cannot read the file ({exc.strerror})") from None
    assert shas[0] is not None
    return shas[0], shas[1]


def _read_frames(spec: DataSpec) -> tuple[pd.DataFrame, int, str, tuple[str, ...]]:
    """The table (and the test file's rows appended), the main file's row count, a display
    name and the unnamed columns."""
    from tuner.data.table import column_list, quote, read_table

    table = read_table(
        spec.source, sep=spec.sep, missing=spec.missing, max_columns=spec.max_columns
    )
    frame = table.frame
    display = table.display
    for name, what in ((spec.target, "target"), (spec.split_column, "split column")):
        if name is not None and name not in frame.columns and frame.shape[1] == 1:
            # not a table (or another delimiter): its first line is not echoed
            raise DataError(
                f"{display}: no {what} column {quote(name)}: the file reads as a single column, "
                "not a delimited table (name its delimiter with --sep, or sep in a data "
                "description, if it has one)"
            )
        if name is not None and name not in frame.columns:
            raise DataError(
                f"{display}: no {what} column {name!r}; the columns are "
                f"{column_list(frame.columns)}"
            )
    n_main = len(frame)
    if spec.test is not None:
        test = read_table(
            spec.test, sep=spec.sep, missing=spec.missing, max_columns=spec.max_columns
        )
        needed = [c for c in frame.columns if c not in table.unnamed and c not in spec.drop]
        absent = [c for c in needed if c not in test.frame.columns]
        if absent:
            raise DataError(
                f"{test.display}: the test file lacks column(s) {column_list(absent)} of {display}"
            )
        part = test.frame[[c for c in frame.columns if c in test.frame.columns]]
        _check_test_numbers(frame, part, spec, test.display)
        frame = pd.concat([frame, part], ignore_index=True)
    return frame, n_main, display, table.unnamed


def _check_test_numbers(
    main: pd.DataFrame, test: pd.DataFrame, spec: DataSpec, display: str
) -> None:
    """Text in a column that is numbers in the main file is an error naming the test file and
    its own row (once appended, the row would count on from the main file's and be reported
    against it)."""
    from tuner.data.features import as_numbers
    from tuner.data.table import is_text

    for name in test.columns:
        if name in spec.categorical or name == spec.split_column:
            continue
        if name == spec.target and spec.bins is None:
            continue
        numeric = name in spec.numeric or pd.api.types.is_numeric_dtype(main[name])
        if numeric and (is_text(test[name]) or pd.api.types.is_numeric_dtype(test[name])):
            as_numbers(test[name], name, display)  # text, or an infinite value


# --------------------------------------------------------------------------- the one path


def _build(rows: Rows, spec: DataSpec, key: str) -> Prepared:
    """Label, choose features, split, encode and describe ``rows`` (nothing is written)."""
    from tuner.data import features, target

    frame, display, n_main = rows.frame, rows.display, rows.n_main
    n_read = n_main  # the main file's rows as read: a test file's rows are numbered from here
    labels = target.encode(rows.target, str(rows.target.name), display, rows.bins)
    n_unlabelled = int((~labels.keep).sum())
    if n_unlabelled:
        logger.warning(
            "%s: %d row(s) have no value in the target column %r and are left out",
            display,
            n_unlabelled,
            rows.target.name,
        )
        n_main -= int((~labels.keep[:n_main]).sum())
        frame = frame[labels.keep]
    y = labels.y
    if len(y) < MIN_ROWS:
        raise DataError(f"{display}: {len(y)} labelled rows; at least {MIN_ROWS} are needed")
    columns = features.infer_columns(frame, spec, display, rows.unnamed)
    lumped: set[int] = set()
    train, val, test = split_rows(frame, y, n_main, spec, display, lumped)
    encoding = Encoding(
        columns.numeric,
        columns.categorical,
        impute=spec.impute,
        scaler=spec.scaler,
        min_frequency=spec.min_frequency,
        max_levels=spec.max_levels,
        seed=spec.seed,
        missing_indicators=spec.missing_indicators,
    )
    x_train = encoding.fit_transform(frame.iloc[train], display, rows.wording)
    n_classes = len(labels.names)

    def counts(idx: np.ndarray) -> list[int]:
        return [int(c) for c in np.bincount(y[idx], minlength=n_classes)]

    class_counts = {"train": counts(train), "val": counts(val), "test": counts(test)}
    absent = [labels.names[i] for i, c in enumerate(class_counts["train"]) if c == 0]
    unseen = [  # a class the model never trains on, yet validated or tested on
        labels.names[i] for i, c in enumerate(class_counts["train"])
        if c == 0 and (class_counts["val"][i] or class_counts["test"][i])
    ]  # fmt: skip
    if unseen and spec.split == "group":
        raise DataError(
            f"{display}: group column {spec.split_column!r} leaves class(es) "
            f"{', '.join(quote(name) for name in unseen[:10])} out of the train rows, but "
            "validation or test has them; use more, smaller groups or --split stratified"
        )
    if absent:
        logger.warning("%s: class(es) %s have no training rows", display, ", ".join(absent))
    if lumped:
        logger.info(
            "%s: class(es) %s too rare to stratify on; split as part of the most frequent class",
            display,
            ", ".join(labels.names[i] for i in sorted(lumped)),
        )
    manifest = Manifest(
        key=key,
        source=rows.source,
        source_sha256=rows.sha256,
        file_format=rows.file_format,
        spec=spec.to_dict(),
        split=spec.split,
        rows=None if spec.rows is None else int(spec.rows),
        seed=int(spec.seed),
        target=spec.target,
        label_rule=labels.rule,
        label_names=tuple(labels.names),
        n_rows_total=int(len(frame) + n_unlabelled),
        rows_without_target=n_unlabelled,
        n_train=int(len(train)),
        n_val=int(len(val)),
        n_test=int(len(test)),
        class_counts=class_counts,
        lumped_classes=tuple(labels.names[i] for i in sorted(lumped)),
        columns=columns,
        missing_values={str(c): int(n) for c, n in frame.isna().sum().items() if n},
        encoding=encoding,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        **rows.extra,
    )
    return Prepared(
        x_train=x_train,
        y_train=y[train],
        x_val=encoding.transform(frame.iloc[val], display, rows.wording),
        y_val=y[val],
        x_test=_transform_test(encoding, frame.iloc[test], rows, n_read),
        y_test=y[test],
        manifest=manifest,
    )


def _transform_test(encoding: Encoding, part: pd.DataFrame, rows: Rows, n_read: int) -> np.ndarray:
    """The encoded test rows; those of a separate test file are named in messages by that
    file and their own row (appended, they would count on from the main file's rows)."""
    if rows.test_display is None:
        return encoding.transform(part, rows.display, rows.wording)
    part = part.set_axis(part.index - n_read)
    return encoding.transform(part, rows.test_display, rows.wording)


def _finish(prepared: Prepared, data_dir: Path, t0: float) -> Prepared:
    """Cache freshly prepared arrays and log what was prepared."""
    m = prepared.manifest
    directory = data_dir / "prepared" / m.key
    try:
        write_cache(prepared, directory)
    except OSError as exc:
        logger.warning("could not cache the prepared data in %s: %s", directory, exc)
    logger.info(
        "prepared %s (%s split): train %d, val %d, test %d in %.1fs -> %s",
        m.source,
        m.split,
        m.n_train,
        m.n_val,
        m.n_test,
        time.perf_counter() - t0,
        directory,
    )
    return prepared
