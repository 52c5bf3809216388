"""The prepared splits as torch tensors: what every training run of a plan reads.

:class:`TensorData` holds zero-copy views of the cached arrays of
:class:`~tuner.data.prepare.Prepared` (float32 features, int64 labels) and the prepared data's
cache key, which says which data a study was run on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tuner.data.prepare import Prepared
from tuner.train.engine import as_tensors


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
