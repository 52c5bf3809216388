"""What every stage kind trains with: the fused runs of a group of points, and their results.

A stage kind (:mod:`tuner.tune.kinds`) trains the points one worker claimed as fused groups
(:mod:`tuner.train.loop`): every point, every repeat seed and, where the kind
has folds, every fold is one :class:`Member` of the stack, and all members of one point see the
batches they would see alone. :class:`Run` holds what one call shares (the stage, the data,
the repeat seeds, the reporter, where and how to compute) and trains a list of members;
:class:`PointResult` is what comes back for a point -- the value the stage's study maximises and
the details kept as trial user attributes (per-run ``values`` and their mean, std, 95% interval
and ``n``: see :func:`summarize` and :mod:`tuner.tune.decide`).

A :class:`Reporter` receives each point's intermediate values for Optuna and the dashboard and
decides whether a point stops early (a pruner): its members then leave the fused stack and its
result is marked ``pruned``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from tuner.config import OBJECTIVE_WORDS, StageSpec, planned_epochs
from tuner.train.compute import Compute
from tuner.train.config import TrainConfig
from tuner.train.history import EarlyStopping, EpochStats, History
from tuner.train.loop import GroupTraining
from tuner.train.stack import stack_shape
from tuner.train.tensors import TensorData
from tuner.tune.decide import interval
from tuner.tune.reuse import FinalRule, Keeper

OnEpoch = Callable[[int, list[EpochStats | None]], list[int]]
Folds = list[tuple[torch.Tensor, torch.Tensor]]  # (train rows, validation rows) per fold


@dataclass
class PointResult:
    value: float
    attrs: dict[str, Any] = field(default_factory=dict)
    pruned: bool = False
    # what a FinalRule kept of the point's first run: (state_dict, epochs_trained, stopped_early)
    kept: tuple[dict, int, bool] | None = None


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std and a 95% t-interval of the mean of ``values`` (the interval is the
    mean itself twice for one run)."""
    n = len(values)
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if n > 1 else 0.0,
        "ci95": list(interval(values)),
        "n": n,
    }


def diverged(history: History) -> bool:
    """Whether a run's training loss stopped being a number."""
    return any(not math.isfinite(e.train_loss) for e in history.epochs)


@dataclass(frozen=True)
class Member:
    """One member of a fused stack: a point's run with one repeat seed (on one fold)."""

    point: int
    repeat: int
    fold: int | None = None  # None: trained on the whole train split, scored on validation


class Reporter(Protocol):
    """Where a group's progress goes: Optuna trials, progress bars (see the stage runner)."""

    def report(self, point: int, value: float, step: int) -> None:
        """Point ``point``'s intermediate value at ``step``."""

    def should_prune(self, point: int) -> bool:
        """Whether point ``point`` should stop now (asked after every point has reported)."""

    def progress(self, epoch: int) -> None:
        """One more epoch of the group is trained (``epoch`` counts within the fold)."""


class NoReporter:
    """Reports nowhere and never prunes."""

    def report(self, point: int, value: float, step: int) -> None:
        return None

    def should_prune(self, point: int) -> bool:
        return False

    def progress(self, epoch: int) -> None:
        return None


class Run:
    """The training of one call of :func:`tuner.tune.objectives.evaluate_points`: the stage,
    the data, the repeat seeds, the reporter, the compute settings and the final job's rule
    for the points whose first run may be kept as the final model (``keep``)."""

    def __init__(
        self,
        stage: StageSpec,
        data: TensorData,
        seeds: list[int],
        reporter: Reporter,
        compute: Compute,
        keep: Mapping[int, FinalRule],
        deadline: float | None = None,
    ) -> None:
        self.stage, self.data, self.seeds = stage, data, seeds
        self.reporter, self.compute, self.keep = reporter, compute, keep
        self.deadline = deadline  # a time budget's: no epoch starts after it

    def group(
        self, cfgs: Sequence[TrainConfig], members: list[Member], folds: Folds | None = None
    ) -> GroupTraining:
        """``members`` as one fused stack, ready to train for the stage's planned epochs (its
        ``stack`` exports members, also while it trains).

        Without ``folds`` every member trains on the train split and is scored on the
        validation split; with them, member ``m`` trains on ``folds[m.fold][0]`` of the train
        split and is scored on ``folds[m.fold][1]``."""
        x, y = self.data.train
        by_fold = folds is not None
        n_rows = len(folds[members[0].fold][0]) if by_fold else len(x)
        batch = cfgs[members[0].point].for_rows(len(x)).batch_size  # shared by the group
        epochs = planned_epochs(self.stage.epochs, self.stage.min_steps, n_rows, batch)
        return GroupTraining(
            [cfgs[m.point] for m in members],
            x,
            y,
            x if by_fold else self.data.val[0],
            y if by_fold else self.data.val[1],
            epochs=epochs,
            seeds=[self.seeds[m.repeat] for m in members],
            n_classes=self.data.n_classes,
            train_idx=[folds[m.fold][0] for m in members] if by_fold else None,
            val_idx=[folds[m.fold][1] for m in members] if by_fold else None,
            precision=self.compute.precision,
            device=self.compute.device,
            deadline=self.deadline,
        )

    def train(
        self,
        cfgs: Sequence[TrainConfig],
        members: list[Member],
        on_epoch: OnEpoch | None = None,
        folds: Folds | None = None,
    ) -> list[History]:
        """Train :meth:`group` and return each member's history. ``on_epoch`` (default:
        progress only) may return members to stop."""
        return self.group(cfgs, members, folds).run(on_epoch or self.progress_only).histories

    def progress_only(self, epoch: int, stats: list[EpochStats | None]) -> list[int]:
        self.reporter.progress(epoch)
        return []


def fusable(cfgs: Sequence[TrainConfig]) -> list[list[int]]:
    """Point indices grouped by what one stack must share (widths, batch size, embedding
    shape: :func:`tuner.train.stack.stack_shape`), in order."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, c in enumerate(cfgs):
        groups.setdefault(stack_shape(c), []).append(i)
    return list(groups.values())


# -- training on the train split, scored on the validation split ---------------------------------
def holdout_identity(
    spec: StageSpec, cfg: TrainConfig, n_train: int, patience: int
) -> dict[str, Any]:
    """What a point trained by :func:`train_holdout` depends on beyond its configuration, seeds,
    compute and data: the planned epochs and the early-stopping patience."""
    return {
        "procedure": "holdout",
        "epochs": planned_epochs(
            spec.epochs, spec.min_steps, n_train, cfg.for_rows(n_train).batch_size
        ),
        "patience": patience,
    }


def holdout_scored_by(spec: StageSpec) -> str:
    """How :func:`train_holdout` scores a point, in words."""
    ep = f"{spec.epochs} epoch{'s' if spec.epochs != 1 else ''}"
    return f"{OBJECTIVE_WORDS[spec.objective]} over {ep}"


def train_holdout(
    run: Run, cfgs: Sequence[TrainConfig], points: list[int], *, patience: int = 0
) -> dict[int, PointResult]:
    """Train ``points`` on the train split, score them on the validation split, report the
    mean over repeats every epoch and prune between epochs; with ``patience``, stop a run
    when its validation loss stalls. The first run of a point in ``run.keep`` keeps the
    weights the final job's rule would keep (:class:`tuner.tune.reuse.Keeper`)."""
    members = [Member(i, r) for i in points for r in range(len(run.seeds))]
    pruned: set[int] = set()
    stopping = [EarlyStopping(patience or None) for _ in members]
    keepers = {
        k: Keeper(run.keep[m.point])
        for k, m in enumerate(members)
        if m.repeat == 0 and m.point in run.keep
    }
    training = run.group(cfgs, members)

    def on_epoch(epoch: int, stats: list[EpochStats | None]) -> list[int]:
        run.reporter.progress(epoch)
        for k, keeper in keepers.items():
            if stats[k] is not None:
                keeper.update(epoch, stats[k].val_loss, lambda k=k: training.stack.export(k))
        active = [i for i in points if i not in pruned]
        for i in active:
            accs = [
                s.val_acc
                for m, s in zip(members, stats, strict=True)
                if m.point == i and s is not None
            ]
            if accs:  # some of its runs may have stopped early
                run.reporter.report(i, statistics.fmean(accs), epoch)
        stop = [i for i in active if run.reporter.should_prune(i)]
        pruned.update(stop)
        out = [k for k, m in enumerate(members) if m.point in stop]
        for k, s in enumerate(stats):
            if s is not None:
                stopping[k].update(s.val_loss)
                if stopping[k].should_stop:
                    out.append(k)
        return out

    histories = training.run(on_epoch).histories
    for k, keeper in keepers.items():
        if histories[k].out_of_time:
            keeper.out_of_time(len(histories[k].epochs), lambda k=k: training.stack.export(k))
    results = {
        i: _holdout_result(
            run.stage.objective,
            [h for m, h in zip(members, histories, strict=True) if m.point == i],
            i in pruned,
        )
        for i in points
    }
    for k, keeper in keepers.items():
        results[members[k].point].kept = keeper.kept
    return results


def _holdout_result(objective: str, histories: list[History], pruned: bool) -> PointResult:
    values = [h.value(objective) for h in histories]
    first = histories[0]
    attrs: dict[str, Any] = {
        "history": first.to_dict(),
        "peak_epoch": max(first.epochs, key=lambda e: e.val_acc).epoch,
        "diverged": any(diverged(h) for h in histories),
        "epochs_trained": max(len(h.epochs) for h in histories),
        "stopped_early": any(h.stopped_early for h in histories) and not pruned,
        **({"out_of_time": True} if any(h.out_of_time for h in histories) else {}),
        "member_epochs": sum(len(h.epochs) for h in histories),
        "values": values,
        **summarize(values),
    }
    return PointResult(statistics.fmean(values), attrs, pruned=pruned)
