"""The prepared splits as torch tensors: what every training run of a plan reads.

:class:`TensorData` holds zero-copy views of the cached arrays of
:class:`~tuner.data.prepare.Prepared` (float32 features, int64 labels) and the prepared data's
cache key, which says which data a study was run on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tuner.data.prepare import Prepared


def as_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-copy views of prepared arrays (float32 features, int64 labels)."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(
        np.ascontiguousarray(y, dtype=np.int64)
    )


@dataclass(frozen=True)
class TensorData:
    """The prepared splits as torch tensors (zero-copy views of the cached arrays)."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    n_classes: int
    key: str  # the prepared data's cache key: which data a study was run on

    @classmethod
    def from_prepared(cls, prepared: Prepared) -> TensorData:
        return cls(
            train=as_tensors(prepared.x_train, prepared.y_train),
            val=as_tensors(prepared.x_val, prepared.y_val),
            test=as_tensors(prepared.x_test, prepared.y_test),
            n_classes=prepared.n_classes,
            key=prepared.manifest.key,
        )
