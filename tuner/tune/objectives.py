"""Stage objectives: how the grid points of a stage are trained and scored, together.

:func:`evaluate_points` trains a group of grid points (the points one worker claimed) as fused
groups (:func:`tuner.train.fused.train_group`): every point, every repeat seed and, for a CV stage,
every fold is one member of the stack, and all members of one point see the batches they would
see alone. It returns one :class:`PointResult` per point -- the value the stage's study maximises
and the details kept as trial user attributes (per-run ``values`` and their mean, std, 95%
interval and ``n``; see :mod:`tuner.tune.decide`).

A :class:`Reporter` receives each point's intermediate values (per epoch for sweeps, mean over
repeats; per fold, or per validation block, for CV) for Optuna and the dashboard, and decides
whether a point stops early (a pruner): its members then leave the fused stack and its result
is marked ``pruned``.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from tuner.plan import StageSpec, TrainConfig, planned_epochs
from tuner.train.engine import EarlyStopping, EpochStats, History, repeat_seeds
from tuner.train.fused import Compute, FusedGroup, train_group
from tuner.train.tensors import TensorData
from tuner.tune.decide import interval
from tuner.tune.reuse import FinalRule, Keeper


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


def _score(history: History, objective: str) -> float:
    return history.peak_acc if objective == "peak" else history.final_acc


def _diverged(history: History) -> bool:
    return any(not math.isfinite(e.train_loss) for e in history.epochs)


def cv_folds(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold indices of the train split; the same folds for every grid point."""
    from sklearn.model_selection import StratifiedKFold  # 1-3 s to import: cv stages only

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # a decade rarer than the number of folds is fine: some folds validate without it
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(splitter.split(np.zeros(len(y)), y))


@dataclass(frozen=True)
class _Member:
    point: int
    repeat: int
    fold: int | None  # None: trained on the whole train split


def _fusable(cfgs: Sequence[TrainConfig]) -> list[list[int]]:
    """Point indices grouped by what one stack must share (widths, batch size), in order."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, c in enumerate(cfgs):
        groups.setdefault((tuple(c.hidden), c.batch_size), []).append(i)
    return list(groups.values())


class Reporter(Protocol):
    """Where a group's progress goes: Optuna trials, progress bars (see :class:`Session`)."""

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


def evaluate_points(
    stage: StageSpec,
    cfgs: Sequence[TrainConfig],
    data: TensorData,
    *,
    seed: int,
    reporter: Reporter | None = None,
    compute: Compute | None = None,
    keep: Mapping[int, FinalRule] | None = None,
) -> list[PointResult]:
    """Train and score ``cfgs`` (a stage's grid points) as fused groups.

    ``keep``: point index -> the final job's rule, for sweep points whose first run trains as
    the final job would (see :mod:`tuner.tune.reuse`): the weights that rule keeps come back in
    :attr:`PointResult.kept`.

    ``sweep`` (and the verification runs of ``lr_range_test``): each point trains on the train
    split for ``stage.epochs`` per repeat and is scored on the validation split (``peak`` or
    ``final`` epoch), averaged over repeats; it reports that average every epoch, and a point
    the reporter prunes leaves the group. ``cv``: each point trains ``stage.folds`` folds of
    the train split per repeat; the value is the mean over folds (and repeats) of the final
    fold accuracy. Every point uses the same seeds (and folds): grid points differ only in what
    the stage varies, so their differences can be compared pairwise.

    A CV stage with ``pruner = "wilcoxon"`` trains fold after fold (all points of a fold as one
    group) and reports, after each fold, the accuracy of each of the fold's validation blocks
    (``stage.blocks`` per fold) as separate steps: the stage's objective is their mean, so a
    point worse than the leader on most blocks so far can be pruned before its later folds.
    """
    compute = compute or Compute()
    reporter = reporter or NoReporter()
    run = _Run(stage, data, repeat_seeds(seed, stage.repeats), reporter, compute, keep or {})
    results: dict[int, PointResult] = {}
    for points in _fusable(cfgs):
        t0 = time.perf_counter()
        if stage.kind != "cv":
            done = run.sweep(cfgs, points)
        elif stage.pruner == "wilcoxon":
            done = run.cv_by_fold(cfgs, points)
        else:
            done = run.cv(cfgs, points)
        share = (time.perf_counter() - t0) / len(points)  # the group's time, split evenly
        for i, result in done.items():
            result.attrs["seconds"] = share
            results[i] = result
    return [results[i] for i in range(len(cfgs))]


class _Run:
    """The training of one call of :func:`evaluate_points`: shared data, seeds and folds."""

    def __init__(
        self,
        stage: StageSpec,
        data: TensorData,
        seeds: list[int],
        reporter: Reporter,
        compute: Compute,
        keep: Mapping[int, FinalRule],
    ) -> None:
        self.stage, self.data, self.seeds = stage, data, seeds
        self.reporter, self.compute, self.keep = reporter, compute, keep
        self.folds: list[tuple[torch.Tensor, torch.Tensor]] = []
        if stage.kind == "cv":
            split = cv_folds(data.train[1].numpy(), stage.folds, seeds[0])
            self.folds = [(torch.from_numpy(tr), torch.from_numpy(va)) for tr, va in split]

    def _train(
        self,
        cfgs: Sequence[TrainConfig],
        members: list[_Member],
        on_epoch: Callable[[int, list[EpochStats | None]], list[int]] | None = None,
        group: list[FusedGroup] | None = None,
    ) -> list[History]:
        x, y = self.data.train
        cv = members[0].fold is not None
        n_rows = len(self.folds[members[0].fold][0]) if cv else len(x)
        batch = cfgs[members[0].point].batch_size  # shared by the group
        epochs = planned_epochs(self.stage.epochs, self.stage.min_steps, n_rows, batch)
        return train_group(
            [cfgs[m.point] for m in members],
            x,
            y,
            x if cv else self.data.val[0],
            y if cv else self.data.val[1],
            epochs=epochs,
            seeds=[self.seeds[m.repeat] for m in members],
            n_classes=self.data.n_classes,
            train_idx=[self.folds[m.fold][0] for m in members] if cv else None,
            val_idx=[self.folds[m.fold][1] for m in members] if cv else None,
            on_epoch=on_epoch or self._progress_only,
            precision=self.compute.precision,
            device=self.compute.device,
            group=group,
        )

    def _progress_only(self, epoch: int, stats: list[EpochStats | None]) -> list[int]:
        self.reporter.progress(epoch)
        return []

    def sweep(self, cfgs: Sequence[TrainConfig], points: list[int]) -> dict[int, PointResult]:
        members = [_Member(i, r, None) for i in points for r in range(len(self.seeds))]
        pruned: set[int] = set()
        # early stopping on validation loss, run by run (patience 0: none)
        stopping = [EarlyStopping(self.stage.patience or None) for _ in members]
        # the final job's rule replayed on the first run of each point it may reuse
        keepers = {
            k: Keeper(self.keep[m.point])
            for k, m in enumerate(members)
            if m.repeat == 0 and m.point in self.keep
        }
        holder: list[FusedGroup] = []

        def on_epoch(epoch: int, stats: list[EpochStats | None]) -> list[int]:
            self.reporter.progress(epoch)
            for k, keeper in keepers.items():
                if stats[k] is not None:
                    keeper.update(epoch, stats[k].val_loss, lambda k=k: holder[0].export(k))
            active = [i for i in points if i not in pruned]
            for i in active:
                accs = [
                    s.val_acc
                    for m, s in zip(members, stats, strict=True)
                    if m.point == i and s is not None
                ]
                if accs:  # some of its runs may have stopped early
                    self.reporter.report(i, statistics.fmean(accs), epoch)
            stop = [i for i in active if self.reporter.should_prune(i)]
            pruned.update(stop)
            out = [k for k, m in enumerate(members) if m.point in stop]
            for k, s in enumerate(stats):
                if s is not None:
                    stopping[k].update(s.val_loss)
                    if stopping[k].should_stop:
                        out.append(k)
            return out

        histories = self._train(cfgs, members, on_epoch, group=holder)
        results = {
            i: _sweep_result(
                self.stage,
                [h for m, h in zip(members, histories, strict=True) if m.point == i],
                i in pruned,
            )
            for i in points
        }
        for k, keeper in keepers.items():
            results[members[k].point].kept = keeper.kept
        return results

    def cv(self, cfgs: Sequence[TrainConfig], points: list[int]) -> dict[int, PointResult]:
        """Every fold of every point in one group; fold values reported at the end."""
        members = [
            _Member(i, r, f)
            for i in points
            for r in range(len(self.seeds))
            for f in range(len(self.folds))
        ]
        histories = self._train(cfgs, members)
        out = {}
        for i in points:
            mine = [(m, h) for m, h in zip(members, histories, strict=True) if m.point == i]
            result = _cv_result(mine)
            for f, v in enumerate(result.attrs["fold_values"]):
                self.reporter.report(i, v, f)
            out[i] = result
        return out

    def cv_by_fold(self, cfgs: Sequence[TrainConfig], points: list[int]) -> dict[int, PointResult]:
        """Fold after fold, each fold's validation blocks reported as steps, pruning between."""
        x, y = self.data.train
        blocks = self.stage.blocks
        active = list(points)
        mine: dict[int, list[tuple[_Member, History]]] = {i: [] for i in points}
        pruned: set[int] = set()
        for f, (_, va) in enumerate(self.folds):
            if not active:
                break
            members = [_Member(i, r, f) for i in active for r in range(len(self.seeds))]
            holder: list[FusedGroup] = []
            histories = self._train(cfgs, members, group=holder)
            for m, h in zip(members, histories, strict=True):
                mine[m.point].append((m, h))
            fg = holder[0]
            positions = list(range(len(fg.order)))
            block_accs = []  # [block][stack position]
            for block in torch.tensor_split(va, blocks):
                block_accs.append(fg.evaluate(positions, x[block], y[block])[1])
            for i in active:
                pos = [p for p in positions if members[fg.order[p]].point == i]
                for b in range(blocks):
                    value = statistics.fmean(block_accs[b][p] for p in pos)
                    self.reporter.report(i, value, f * blocks + b)
            stop = {i for i in active if self.reporter.should_prune(i)}
            pruned |= stop
            active = [i for i in active if i not in stop]
        return {i: _cv_result(mine[i], pruned=i in pruned) for i in points}


def _sweep_result(stage: StageSpec, histories: list[History], pruned: bool) -> PointResult:
    values = [_score(h, stage.objective) for h in histories]
    first = histories[0]
    attrs: dict[str, Any] = {
        "history": first.to_dict(),
        "peak_epoch": max(first.epochs, key=lambda e: e.val_acc).epoch,
        "diverged": any(_diverged(h) for h in histories),
        "epochs_trained": max(len(h.epochs) for h in histories),
        "stopped_early": any(h.stopped_early for h in histories) and not pruned,
        "member_epochs": sum(len(h.epochs) for h in histories),
        "values": values,
        **summarize(values),
    }
    return PointResult(statistics.fmean(values), attrs, pruned=pruned)


def _cv_result(mine: list[tuple[_Member, History]], *, pruned: bool = False) -> PointResult:
    """A CV point from its members' histories (the folds it reached, if pruned)."""
    mine = sorted(mine, key=lambda mh: (mh[0].repeat, mh[0].fold))
    by_fold: dict[int, list[float]] = {}
    for m, h in mine:
        by_fold.setdefault(m.fold, []).append(h.final_acc)
    fold_values = [statistics.fmean(by_fold[f]) for f in sorted(by_fold)]
    values = [h.final_acc for _, h in mine]  # repeat-major, then fold: pairs across points
    attrs: dict[str, Any] = {
        "fold_values": fold_values,
        "folds_trained": len(fold_values),
        "history": [h.to_dict() for m, h in mine if m.repeat == 0],
        "diverged": any(_diverged(h) for _, h in mine),
        "member_epochs": sum(len(h.epochs) for _, h in mine),
        "values": values,
        **summarize(values),  # with one repeat, "std" is the std over folds
    }
    return PointResult(statistics.fmean(fold_values), attrs, pruned=pruned)
