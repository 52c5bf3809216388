"""The batches of an epoch: which rows a run trains on, step after step.

A run's batches are slices of a per-epoch random permutation of its training rows, drawn from a
generator seeded by the run's seed: two runs with the same seed and the same rows see the same
batches in the same order (common random numbers: the points of a stage differ only in what the
stage varies). The last batch of an epoch may be smaller; one smaller than ``min_size`` is
skipped (a normalization over the batch cannot train on a single row, see
:attr:`tuner.train.options.norms.Norm.min_batch`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def batch_sizes(n: int, batch_size: int, min_size: int = 1) -> list[int]:
    """The sizes of the batches :func:`batch_indices` yields for ``n`` rows."""
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    return [s for s in sizes if s >= min_size]


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator, min_size: int = 1
) -> Iterator[torch.Tensor]:
    """Yield the index slices of one epoch; a last batch smaller than ``min_size`` is dropped
    (a normalization over the batch cannot train on a single row)."""
    perm = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        if len(idx) >= min_size:
            yield idx
