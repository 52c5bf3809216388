"""What prepared data is: :class:`Manifest` (its description) and :class:`Prepared` (arrays + it).

Every data source, a table or YearPredictionMSD, is described by the same typed manifest: where
the rows came from (source, content hash, the spec), how they were split (split, rows, seed,
part sizes, class counts), what the classes are (target column, labelling rule, names), which
columns are features (:class:`~tuner.data.features.Columns`) and the fitted
:class:`~tuner.data.encoding.Encoding` that turns raw rows into model inputs.
:meth:`Manifest.to_dict` is its JSON form (``manifest.json`` in the cache, the report's data
section); :meth:`Manifest.from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuner.data.encoding import Encoding
from tuner.data.features import Columns

MANIFEST_VERSION = 2
"""The manifest's format, checked when a cache is read (an older one is prepared again under
the same key: the arrays of the same inputs have not changed).
2: one typed manifest for every source; the fitted encoding under ``encoding`` (1 stored
YearPredictionMSD's ``scaler`` and a table's ``features``)."""

FILE_FORMATS = ("uci", "table")
"""How a source's rows are written: the UCI text format (no header, the year first) or a table
with a header. ``predict`` reads its input the same way."""

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Manifest:
    """The description of one preparation of a data source (see the module doc)."""

    key: str  # the cache key: which prepared arrays these are
    source: str  # "uci", "synthetic", or the resolved file path
    source_sha256: str
    file_format: str  # one of FILE_FORMATS
    spec: dict[str, Any]  # DataSpec.to_dict() of what was prepared
    split: str
    rows: int | None  # the stratified subsample's size, None for all rows
    seed: int
    target: str | None  # a table's class column; None for the UCI format (the year)
    label_rule: str  # "classes" | "decade" | "cut points"
    label_names: tuple[str, ...]  # class names, index = label
    n_rows_total: int  # rows of the source (and a separate test file), labelled or not
    rows_without_target: int  # left out
    n_train: int
    n_val: int
    n_test: int
    class_counts: dict[str, list[int]]  # per part: rows per class
    lumped_classes: tuple[str, ...]  # too rare to stratify on (split with the most frequent)
    columns: Columns
    missing_values: dict[str, int]  # per column with any
    encoding: Encoding
    created: str  # ISO time
    test_source: str | None = None  # a separate test file (a table's)
    test_sha256: str | None = None
    version: int = field(default=MANIFEST_VERSION)

    @property
    def n_features(self) -> int:
        return self.encoding.n_features

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    def __getitem__(self, name: str) -> Any:
        """Read access by field name, for code written when the manifest was a dict
        (``manifest["key"]``); new code reads the attributes."""
        if name not in _FIELDS and name not in ("n_features", "n_classes"):
            raise KeyError(name)
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: plain lists, strings and numbers (``n_features`` included)."""
        out = {f: getattr(self, f) for f in _FIELDS}
        out.update(
            label_names=list(self.label_names),
            lumped_classes=list(self.lumped_classes),
            class_counts={p: list(self.class_counts[p]) for p in PARTS},
            columns=self.columns.to_dict(),
            encoding=self.encoding.to_dict(),
            n_features=self.n_features,
        )
        if self.test_source is None:
            del out["test_source"], out["test_sha256"]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        """A manifest from :meth:`to_dict`'s output. Raises ``ValueError`` (``KeyError``,
        ``TypeError``) for another version's or a damaged one."""
        if d.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {d.get('version')!r}, not {MANIFEST_VERSION}")
        values = {f: d[f] for f in _FIELDS if f not in _OPTIONAL}
        values.update({f: d.get(f) for f in _OPTIONAL})
        values.update(
            label_names=tuple(d["label_names"]),
            lumped_classes=tuple(d["lumped_classes"]),
            class_counts={p: [int(c) for c in d["class_counts"][p]] for p in PARTS},
            columns=Columns.from_dict(d["columns"]),
            encoding=Encoding.from_dict(d["encoding"]),
        )
        if values["file_format"] not in FILE_FORMATS:
            raise ValueError(f"file_format {values['file_format']!r}")
        return cls(**values)

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)


_FIELDS = tuple(f.name for f in dataclasses.fields(Manifest))
_OPTIONAL = ("test_source", "test_sha256")

ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
"""The arrays of :class:`Prepared`, by name (``arrays.npz`` in the cache)."""


@dataclass
class Prepared:
    """Encoded float32 features and int64 labels of the three splits, and the
    :class:`Manifest` that describes them (see :func:`tuner.data.prepare.prepare`)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    manifest: Manifest

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        return self.manifest.n_classes

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.manifest.label_names

    @property
    def encoding(self) -> Encoding:
        return self.manifest.encoding
