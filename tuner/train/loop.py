"""The fused engine's epoch loop: a stage's trials trained together as one stack, or one trial.

:func:`train_group` trains ``K`` configurations of the same widths and batch size as one
:class:`~tuner.train.stack.FusedGroup`; :func:`train_one` is one trial through it (the final
job). Ensembles (``cfg.ensemble > 1``) train through
:class:`~tuner.train.ensemble_group.EnsembleGroup` instead, in the same loop. Per epoch:
every member's batches (:class:`~tuner.train.batches.BatchPlan`), a step per batch, an
evaluation per validation subset, then ``on_epoch``, which may stop members.

What is measured does not change: member ``k``'s per-epoch train loss, validation loss and
validation accuracy equal what :func:`tuner.train.reference.train` reports for ``cfgs[k]``
alone (with dropout: what the same member reports trained alone here, since the reference draws
its masks from torch's global generator), up to floating-point rounding (different GEMM blocking
and a fused optimizer kernel: relative differences ~1e-7 after a few epochs; see
``tests/test_fused.py``). One case follows the rounding noise further: the Linear bias in front
of a normalization over the batch has a zero gradient up to noise, which an optimizer that
divides by a running gradient scale turns, without weight decay, into steps of about ``lr``;
the training loss does not see it, the running mean (hence the validation loss, ~1e-3
relative) does -- as much as the reference itself differs between one and two threads.

The CLI raises glibc's allocator thresholds (:mod:`tuner.train.runtime`): a group of 25
otherwise spent a third of its time in page faults.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tuner.train.batches import BatchPlan, dedupe
from tuner.train.compute import Compute
from tuner.train.config import TrainConfig
from tuner.train.ensemble_group import EnsembleGroup
from tuner.train.history import EarlyStopping, EpochStats, History
from tuner.train.model import class_weights, fit_inputs
from tuner.train.options import embeddings, norms
from tuner.train.stack import FusedGroup, check_group

OnEpoch = Callable[[int, list["EpochStats | None"]], "Iterable[int] | None"]


@dataclass
class GroupResult:
    """What :func:`train_group` returns: one :class:`History` per member (in ``cfgs`` order)
    and the trained stack (``None`` for no members); members stopped early have left it."""

    histories: list[History]
    stack: FusedGroup | EnsembleGroup | None

    def export(self, member: int) -> nn.Module:
        """Member ``member`` (position in ``cfgs``) as ``build_model``'s module in eval mode."""
        assert self.stack is not None
        return self.stack.export(member)


class GroupTraining:
    """A group ready to train (the arguments of :func:`train_group`): its :attr:`stack` holds
    the members' initial weights and may export members while :meth:`run` trains them (from
    ``on_epoch``)."""

    def __init__(
        self,
        cfgs: Sequence[TrainConfig],
        x: torch.Tensor,
        y: torch.Tensor,
        val_x: torch.Tensor,
        val_y: torch.Tensor,
        *,
        epochs: int,
        seeds: Sequence[int],
        n_classes: int,
        train_idx: Sequence[torch.Tensor] | None = None,
        val_idx: Sequence[torch.Tensor] | None = None,
        precision: str = "fp32",
        device: str | torch.device = "cpu",
        deadline: float | None = None,
    ) -> None:
        self.deadline = deadline  # time.monotonic() after which no new epoch starts
        k = len(cfgs)
        cfgs = [c.for_rows(len(x)) for c in cfgs]  # "auto" batches: from the rows given
        for name, idx in (("train_idx", train_idx), ("val_idx", val_idx)):
            if idx is not None and len(idx) != k:
                raise ValueError(f"{name} has {len(idx)} entries for {k} configurations")
        check_group(cfgs, seeds, precision)
        self.epochs, self.device = epochs, torch.device(device)
        rows = [None if train_idx is None else train_idx[i] for i in range(k)]
        batches = BatchPlan(
            seeds,
            len(x),
            rows,
            cfgs[0].batch_size,
            [norms.get(c.norm).min_batch for c in cfgs],
            self.device,
        )
        group = EnsembleGroup if cfgs[0].ensemble > 1 else FusedGroup
        self.stack: FusedGroup | EnsembleGroup = group(
            cfgs,
            x.shape[1],
            n_classes,
            seeds=seeds,
            precision=precision,
            device=self.device,
            total_steps=[epochs * len(s) for s in batches.sizes],
            weights=[
                class_weights(c.class_weight, y if t is None else y[t], n_classes)
                for c, t in zip(cfgs, rows, strict=True)
            ],
            fitted=_fit_inputs(cfgs, x, rows),
        )
        self.batches = batches
        self.x, self.y = x.to(self.device), y.to(self.device)
        self._validation(val_x.to(self.device), val_y.to(self.device), val_idx)

    def _validation(
        self, val_x: torch.Tensor, val_y: torch.Tensor, val_idx: Sequence[torch.Tensor] | None
    ) -> None:
        """Each member's validation rows, one copy per distinct subset."""
        k = len(self.stack.cfgs)
        va = [None if val_idx is None else val_idx[i].to(self.device) for i in range(k)]
        self.val_set = dedupe(va)
        self.val_data: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for j in self.val_set:
            if j not in self.val_data:
                self.val_data[j] = (val_x, val_y) if va[j] is None else (val_x[va[j]], val_y[va[j]])

    def run(self, on_epoch: OnEpoch | None = None) -> GroupResult:
        """Train for the planned epochs; see :func:`train_group` for ``on_epoch``."""
        histories = [History() for _ in self.stack.cfgs]
        with torch.inference_mode():
            for epoch in range(1, self.epochs + 1):
                t0 = time.perf_counter()
                members = self.stack.active  # original indices, stack order
                train_loss = self._train_epoch(members)
                val_loss, val_acc = self._evaluate(members)
                seconds = time.perf_counter() - t0
                stats: list[EpochStats | None] = [None] * len(histories)
                for pos, i in enumerate(members):
                    stats[i] = EpochStats(
                        epoch, train_loss[pos], val_loss[pos], val_acc[pos], seconds
                    )
                    histories[i].epochs.append(stats[i])
                if on_epoch is not None:
                    self._stop(on_epoch(epoch, stats), epoch, histories)
                    if not self.stack.active:
                        break
                if self._out_of_time(epoch, histories):
                    break
        return GroupResult(histories, self.stack)

    def _out_of_time(self, epoch: int, histories: list[History]) -> bool:
        """Past the ``deadline`` (a time budget's) before the last epoch: every member still
        training ends here, its history marked (the caller restores or keeps what it kept)."""
        if self.deadline is None or epoch >= self.epochs or time.monotonic() < self.deadline:
            return False
        for i in self.stack.active:
            histories[i].stopped_early = histories[i].out_of_time = True
        return True

    def _train_epoch(self, members: list[int]) -> list[float]:
        """One epoch of steps of ``members`` (stack order); each one's mean training loss."""
        epoch = self.batches.epoch(members)
        x, y, bsz = self.x, self.y, self.batches.batch_size
        loss_sum = torch.zeros(len(members), device=self.device)
        seen = [0] * len(members)
        for idx in epoch.full_batches():
            loss_sum += self.stack.train_step(x[idx], y[idx])
        if epoch.n_full:
            loss_sum *= bsz
            seen = [epoch.n_full * bsz] * len(members)
        for batch in epoch.partial_batches():
            loss = self.stack.train_step_subset(batch.positions, x[batch.idx], y[batch.idx])
            sel = torch.tensor(batch.positions, dtype=torch.long, device=self.device)
            loss_sum.index_add_(0, sel, loss * batch.size)
            for p in batch.positions:
                seen[p] += batch.size
        return (loss_sum.double().cpu() / torch.tensor([max(n, 1) for n in seen])).tolist()

    def _evaluate(self, members: list[int]) -> tuple[list[float], list[float]]:
        """Validation loss and accuracy of ``members``, evaluated by validation subset."""
        val_loss, val_acc = [0.0] * len(members), [0.0] * len(members)
        by_val: dict[int, list[int]] = {}
        for pos, i in enumerate(members):
            by_val.setdefault(self.val_set[i], []).append(pos)
        for j, positions in by_val.items():
            losses, accs = self.stack.evaluate(positions, *self.val_data[j])
            for pos, lo, ac in zip(positions, losses, accs, strict=True):
                val_loss[pos], val_acc[pos] = lo, ac
        return val_loss, val_acc

    def _stop(self, stop: Iterable[int] | None, epoch: int, histories: list[History]) -> None:
        """Members ``on_epoch`` stopped leave the stack, their histories marked (not after the
        last epoch: then they simply end)."""
        if not stop:
            return
        gone = {int(i) for i in stop} & set(self.stack.active)
        if gone and epoch < self.epochs:
            for i in gone:
                histories[i].stopped_early = True
            self.stack.drop(gone)


def _fit_inputs(
    cfgs: Sequence[TrainConfig], x: torch.Tensor, rows: Sequence[torch.Tensor | None]
) -> list[dict | None]:
    """What each member's embedding fits on its own training rows (on the group's rows where
    the embedding's fit does not depend on the member's, ``fits_members``), once per distinct
    (embedding, bins, rows)."""
    done: dict[tuple, dict | None] = {}
    out = []
    for c, t in zip(cfgs, rows, strict=True):
        if not embeddings.get(c.embedding).fits_members:
            t = None
        key = (c.embedding, c.bins, None if t is None else id(t))
        if key not in done:
            done[key] = fit_inputs(c, x if t is None else x[t])
        out.append(done[key])
    return out


def train_group(
    cfgs: Sequence[TrainConfig],
    x: torch.Tensor,
    y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    *,
    epochs: int,
    seeds: Sequence[int],
    n_classes: int,
    train_idx: Sequence[torch.Tensor] | None = None,
    val_idx: Sequence[torch.Tensor] | None = None,
    on_epoch: OnEpoch | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
) -> GroupResult:
    """Train ``cfgs`` together as one stacked model: one :class:`History` per member.

    Member ``k`` trains as ``reference.train(cfgs[k], (x[train_idx[k]], y[train_idx[k]]),
    (val_x[val_idx[k]], val_y[val_idx[k]]), epochs=epochs, seed=seeds[k], ...)`` would train
    it alone: the same initial weights, batches, optimizer and per-epoch statistics (up to
    floating-point rounding). All members must share ``hidden`` and ``batch_size``; activation,
    norm, init, optimizer, lr, weight_decay, momentum, dropout, label_smoothing, class_weight
    (computed from the member's training rows) and schedule (over ``epochs`` times the member's
    batches per epoch) may differ.

    ``train_idx`` / ``val_idx``: per-member row subsets (CV folds); ``None``: all rows.
    ``on_epoch(epoch, stats)`` runs after every epoch with one :class:`EpochStats` per member
    (``None`` for members already stopped); it may return member indices to stop now (pruned
    trials: they leave the stack and their histories end here, marked ``stopped_early``), or
    raise to abort the whole group. ``EpochStats.seconds`` is the group's wall time for the
    epoch (training and evaluation of all members).
    ``precision``: ``"fp32"`` or ``"bf16"`` (:mod:`tuner.train.compute`). ``device``: where the
    stack lives; the data are copied there once. To export members during training (from
    ``on_epoch``), build a :class:`GroupTraining` and run it.
    """
    if not cfgs:
        return GroupResult([], None)
    return GroupTraining(
        cfgs,
        x,
        y,
        val_x,
        val_y,
        epochs=epochs,
        seeds=seeds,
        n_classes=n_classes,
        train_idx=train_idx,
        val_idx=val_idx,
        precision=precision,
        device=device,
    ).run(on_epoch)


def train_one(
    cfg: TrainConfig,
    train_xy: tuple[torch.Tensor, torch.Tensor],
    val_xy: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    seed: int,
    n_classes: int,
    patience: int | None = None,
    restore_best: bool = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
    compute: Compute | None = None,
    deadline: float | None = None,
) -> tuple[nn.Module, History]:
    """One trial through the fused engine; the contract of :func:`tuner.train.reference.train`.

    ``patience``: stop when validation loss has not improved for that many epochs.
    ``restore_best``: return the weights of the best-validation-loss epoch instead of the last.
    ``deadline``: a ``time.monotonic()`` after which no new epoch starts (a time budget).
    The model is returned as a plain ``nn.Sequential`` on the CPU, in eval mode.
    """
    compute = compute or Compute()
    group = GroupTraining(
        [cfg],
        *train_xy,
        *val_xy,
        epochs=epochs,
        seeds=[seed],
        n_classes=n_classes,
        precision=compute.precision,
        device=compute.device,
        deadline=deadline,
    )
    stopping = EarlyStopping(patience)
    best_state: dict | None = None
    stopped: nn.Module | None = None  # the model at an early stop (it leaves the stack)

    def hook(epoch: int, stats: list[EpochStats | None]) -> list[int]:
        nonlocal best_state, stopped
        e = stats[0]
        assert e is not None
        if on_epoch is not None:
            on_epoch(e)
        if stopping.update(e.val_loss) and restore_best:
            best_state = copy.deepcopy(group.stack.export(0).state_dict())
        if stopping.should_stop and epoch < epochs:
            stopped = group.stack.export(0)
            return [0]
        return []

    result = group.run(hook)
    model = stopped if stopped is not None else result.export(0)
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return model.cpu().eval(), result.histories[0]
