"""The batches of an epoch: which rows each run trains on, step after step.

A run's batches are slices of a per-epoch random permutation of its training rows, drawn from a
generator seeded by the run's seed: two runs with the same seed and the same rows see the same
batches in the same order (common random numbers: the points of a stage differ only in what the
stage varies). The last batch of an epoch may be smaller; one smaller than ``min_size`` is
skipped (a normalization over the batch cannot train on a single row, see
:attr:`tuner.train.options.norms.Norm.min_batch`).

:func:`batch_indices` is that for one run (the reference engine, the LR range test).
:class:`BatchPlan` is that for every member of a fused group at once, and shows each member
the very batches :func:`batch_indices` would show it alone: one permutation per distinct (seed,
number of rows), drawn in stack order, taken through the member's own rows (a CV fold). An
epoch's :meth:`Epoch.full_batches` are the steps every member takes with ``batch_size`` rows --
one ``[B]`` index tensor when all members share their rows (the input batch is then gathered
once for all of them), a ``[K, B]`` one otherwise -- and :meth:`Epoch.partial_batches` the rest:
last partial batches and the extra batches of members with more rows, each stepping only the
members that take it. Everything here is index arithmetic; no model is involved.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

AUTO = "auto"
"""``batch_size = "auto"``: the batch size follows the training rows (:func:`resolve_batch`)."""


def resolve_batch(batch_size: int | str, n_rows: int) -> int:
    """``batch_size``, or for ``"auto"`` the power of two nearest ``n_rows / 64``, between 32
    and 512: about 64 steps per epoch from 2,000 to 32,000 rows, small batches (more steps) on
    small tables and at most 512 rows on large ones. Measured over 16 tables x 3 splits with
    early stopping (``benchmarks/recipes``): it keeps tiny tables from taking seconds per epoch
    for nothing and 50k-row tables from being starved of steps."""
    if batch_size != AUTO:
        return int(batch_size)
    nearest = 2 ** round(math.log2(max(n_rows, 1) / 64))
    return int(min(max(nearest, 32), 512))


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


def same_rows(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Whether two row selections are the same rows in the same order (``None``: all rows)."""
    if a is None or b is None:
        return a is b
    return a is b or (a.shape == b.shape and bool(torch.equal(a, b)))


def dedupe(idx: Sequence[torch.Tensor | None]) -> list[int]:
    """For each entry, the position of its first equal entry (rows identical)."""
    firsts: list[int] = []
    ids = []
    for t in idx:
        for j in firsts:
            if same_rows(idx[j], t):
                ids.append(j)
                break
        else:
            firsts.append(len(ids))
            ids.append(len(ids))
    return ids


@dataclass(frozen=True)
class Batch:
    """A step of some members: ``positions`` in the epoch's member list, and their rows,
    ``idx``: ``[b]`` shared by all of them, or ``[len(positions), b]`` one row per member."""

    positions: list[int]
    idx: torch.Tensor

    @property
    def size(self) -> int:
        return self.idx.shape[-1]


@dataclass(frozen=True)
class Epoch:
    """One epoch's batches of the members training in it (in the order they were given)."""

    rows: list[torch.Tensor]  # each member's rows in this epoch's order
    sizes: list[list[int]]  # each member's batch sizes (batch_sizes)
    batch_size: int
    shared: bool  # every member trains on the same rows in the same order

    @property
    def n_full(self) -> int:
        """Steps that every member takes with ``batch_size`` rows."""
        return min(len(r) // self.batch_size for r in self.rows)

    def full_batches(self) -> Iterator[torch.Tensor]:
        """The row indices of the :attr:`n_full` steps every member takes: ``[B]`` when the
        rows are shared, ``[K, B]`` (one row per member) otherwise."""
        bsz, n_full = self.batch_size, self.n_full
        if self.shared:
            r = self.rows[0]
            for s in range(n_full):
                yield r[s * bsz : (s + 1) * bsz]
        elif n_full:
            mat = torch.stack([r[: n_full * bsz] for r in self.rows])
            for s in range(n_full):
                yield mat[:, s * bsz : (s + 1) * bsz]

    def partial_batches(self) -> Iterator[Batch]:
        """The steps after :meth:`full_batches`: last partial batches, and the batches of
        members with more rows than others. Members whose batch at a step has the same size
        step together."""
        bsz = self.batch_size
        for s in range(self.n_full, max(len(sizes) for sizes in self.sizes)):
            by_size: dict[int, list[int]] = {}
            for pos, sizes in enumerate(self.sizes):
                if s < len(sizes):
                    by_size.setdefault(sizes[s], []).append(pos)
            for b, positions in by_size.items():
                if len({id(self.rows[p]) for p in positions}) == 1:
                    idx = self.rows[positions[0]][s * bsz : s * bsz + b]
                else:
                    idx = torch.stack([self.rows[p][s * bsz : s * bsz + b] for p in positions])
                yield Batch(positions, idx)


class BatchPlan:
    """The batches of every member of a group, epoch after epoch.

    ``rows[i]``: member ``i``'s training rows (a CV fold), ``None`` for all ``n`` rows;
    ``min_sizes[i]``: the smallest batch member ``i`` trains on. Member ``i`` sees, epoch after
    epoch, what ``batch_indices(len(rows[i]), batch_size, Generator().manual_seed(seeds[i]),
    min_sizes[i])`` yields, taken through ``rows[i]``.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        n: int,
        rows: Sequence[torch.Tensor | None],
        batch_size: int,
        min_sizes: Sequence[int],
        device: torch.device,
    ) -> None:
        self.seeds, self.batch_size, self.device = [int(s) for s in seeds], batch_size, device
        self.rows = [None if t is None else t.to(device) for t in rows]
        self.n_rows = [n if t is None else len(t) for t in rows]
        self.sizes = [
            batch_sizes(n_i, batch_size, m) for n_i, m in zip(self.n_rows, min_sizes, strict=True)
        ]
        self.row_set = dedupe(self.rows)  # members with equal rows share their epoch's rows
        self.generators: dict[tuple[int, int], torch.Generator] = {}
        for key in zip(self.seeds, self.n_rows, strict=True):
            if key not in self.generators:
                self.generators[key] = torch.Generator().manual_seed(key[0])

    def epoch(self, members: Sequence[int]) -> Epoch:
        """The next epoch of ``members`` (indices into ``seeds``; the others do not draw): one
        permutation per distinct (seed, number of rows), drawn in ``members``' order."""
        perms: dict[tuple[int, int], torch.Tensor] = {}
        for i in members:
            key = (self.seeds[i], self.n_rows[i])
            if key not in perms:
                perms[key] = torch.randperm(key[1], generator=self.generators[key]).to(self.device)
        rows: dict[tuple[int, int, int], torch.Tensor] = {}
        for i in members:
            key = (self.seeds[i], self.n_rows[i], self.row_set[i])
            if key not in rows:
                perm, mine = perms[key[:2]], self.rows[i]
                rows[key] = perm if mine is None else mine[perm]
        return Epoch(
            [rows[(self.seeds[i], self.n_rows[i], self.row_set[i])] for i in members],
            [self.sizes[i] for i in members],
            self.batch_size,
            shared=len(rows) == 1,
        )
