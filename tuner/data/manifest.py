"""Prepared data: :class:`Prepared` holds the arrays of the three splits and their manifest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tuner.data.target import DECADE_NAMES

ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
"""The arrays of :class:`Prepared`, by name (``arrays.npz`` in the cache)."""


@dataclass
class Prepared:
    """Scaled float32 features and int64 decade labels of the three splits, plus the
    JSON-able manifest that describes them (see :func:`tuner.data.prepare.prepare`)."""

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
        return tuple(self.manifest.get("label_names") or DECADE_NAMES)
