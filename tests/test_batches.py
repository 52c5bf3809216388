"""The batch plan of a fused group, without a model: which rows each member trains on."""

from __future__ import annotations

import torch

from tuner.train.batches import BatchPlan, batch_indices, batch_sizes
from tuner.train.options import norms

CPU = torch.device("cpu")


def _steps(plan: BatchPlan, members: list[int]) -> list[list[torch.Tensor]]:
    """One epoch of ``members``: each one's batches (row indices), in the order it takes them,
    and a check that every step's index tensor has the shape its members need."""
    epoch = plan.epoch(members)
    seen: list[list[torch.Tensor]] = [[] for _ in members]
    for idx in epoch.full_batches():
        assert idx.dim() == (1 if epoch.shared else 2)
        for pos in range(len(members)):
            seen[pos].append(idx if idx.dim() == 1 else idx[pos])
    for batch in epoch.partial_batches():
        for j, pos in enumerate(batch.positions):
            seen[pos].append(batch.idx if batch.idx.dim() == 1 else batch.idx[j])
    return seen


def _folds(n: int, k: int, seed: int = 0) -> list[torch.Tensor]:
    """Training rows of ``k`` folds of ``n`` rows (unequal sizes when ``k`` does not divide n)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = torch.tensor_split(perm, k)
    return [torch.cat([f for j, f in enumerate(held) if j != i]) for i in range(k)]


def test_every_member_sees_each_of_its_rows_once_per_epoch():
    folds = _folds(600, 3)  # 400 training rows each: 6 full batches of 64 and one of 16
    rows = [None, folds[0], folds[1], folds[2], None]
    plan = BatchPlan([0, 0, 1, 0, 7], 600, rows, 64, [1] * 5, CPU)
    epochs = [_steps(plan, list(range(5))) for _ in range(2)]
    for seen in epochs:
        for mine, got in zip(rows, seen, strict=True):
            want = torch.arange(600) if mine is None else mine.sort().values
            assert torch.equal(torch.cat(got).sort().values, want)
    assert not torch.equal(epochs[0][0][0], epochs[1][0][0])  # each epoch a new order


def test_a_member_sees_the_batches_the_reference_engine_shows_it_alone():
    folds = _folds(577, 3)  # training rows: 384, 385, 385
    rows = [None, None, folds[0], folds[1]]
    seeds, min_sizes = [3, 3, 4, 5], [1, 2, 1, 2]  # 577 = 9 x 64 + 1: min 2 skips the last
    plan = BatchPlan(seeds, 577, rows, 64, min_sizes, CPU)
    alone = [torch.Generator().manual_seed(s) for s in seeds]
    for _ in range(2):
        seen = _steps(plan, [0, 1, 2, 3])
        for i, got in enumerate(seen):
            n = 577 if rows[i] is None else len(rows[i])
            want = list(batch_indices(n, 64, alone[i], min_sizes[i]))
            if rows[i] is not None:
                want = [rows[i][idx] for idx in want]
            assert len(got) == len(want) == len(batch_sizes(n, 64, min_sizes[i]))
            assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_members_that_share_seed_and_rows_share_their_batches():
    fold = _folds(300, 2)[0]
    rows = [fold, fold.clone(), fold, None]  # equal rows, even as another tensor
    plan = BatchPlan([2, 2, 3, 2], 300, rows, 32, [1] * 4, CPU)
    epoch = plan.epoch([0, 1, 2, 3])
    assert epoch.rows[0] is epoch.rows[1]  # one gather of the input batch serves both
    assert not torch.equal(epoch.rows[0], epoch.rows[2])  # another seed: another order
    assert not epoch.shared
    shared = BatchPlan([2, 2], 300, [fold, fold.clone()], 32, [1, 1], CPU).epoch([0, 1])
    assert shared.shared
    assert all(idx.dim() == 1 for idx in shared.full_batches())  # one [B] index for all


def test_the_last_partial_batch_and_the_batch_size_rule_of_a_norm():
    assert batch_sizes(577, 64) == [64] * 9 + [1]
    assert batch_sizes(640, 64) == [64] * 10
    assert batch_sizes(129, 128, norms.get("batch").min_batch) == [128]  # no batch of one row
    assert batch_sizes(129, 128, norms.get("layer").min_batch) == [128, 1]
    # A member whose norm needs two rows skips the one-row batch the others train on.
    plan = BatchPlan([0, 0], 577, [None, None], 64, [1, norms.get("batch").min_batch], CPU)
    epoch = plan.epoch([0, 1])
    assert epoch.n_full == 9
    partial = list(epoch.partial_batches())
    assert [(b.positions, b.size) for b in partial] == [([0], 1)]


def test_members_with_more_rows_take_their_extra_batches_and_equal_sizes_step_together():
    rows = [torch.arange(385), torch.arange(400), torch.arange(415), torch.arange(400) + 5]
    plan = BatchPlan([1, 1, 1, 1], 420, rows, 64, [1] * 4, CPU)
    epoch = plan.epoch([0, 1, 2, 3])
    assert epoch.n_full == 6
    partial = [(b.positions, b.size) for b in epoch.partial_batches()]
    assert partial == [([0], 1), ([1, 3], 16), ([2], 31)]  # one step per size, in member order


def test_a_stopped_member_draws_nothing_and_leaves_the_others_alone():
    plan = BatchPlan([0, 1], 200, [None, None], 50, [1, 1], CPU)
    alone = BatchPlan([0], 200, [None], 50, [1], CPU)
    plan.epoch([0, 1])
    alone.epoch([0])
    assert torch.equal(plan.epoch([0]).rows[0], alone.epoch([0]).rows[0])
