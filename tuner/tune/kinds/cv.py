"""``kind = "cv"``: each point is scored by stratified k-fold cross-validation on the train split.

Every point trains ``folds`` folds of the train split (per repeat seed), all folds and points of
a group in one fused stack; its value is the mean over folds of each fold's final validation
accuracy, and the per-fold values are kept. Every point uses the same folds, so their
differences pair fold by fold (:mod:`tuner.tune.decide`).

With ``pruner = "wilcoxon"`` the stage trains fold after fold (all points of a fold as one
group) and reports, after each fold, the accuracy on each of the fold's ``blocks`` validation
blocks as separate steps: a point worse than the leader on most blocks so far can be pruned
before its later folds.
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tuner.checks import Number
from tuner.config import MAX_FOLDS, StageSpec
from tuner.errors import PlanError, StageError
from tuner.train.config import TrainConfig
from tuner.train.history import History
from tuner.tune.kinds.base import KindOptions, StageKind
from tuner.tune.runs import Folds, Member, PointResult, Run, diverged, summarize


@dataclass(frozen=True)
class CVOptions(KindOptions, in_every_stage=True):
    folds: int = 0  # stratified folds of the train split (at least 2)


class CrossValidation(StageKind):
    name = "cv"
    summary = "score each point by stratified k-fold cross-validation on the train split"
    Options = CVOptions
    schema = {"folds": Number(integer=True, low=0, high=MAX_FOLDS)}
    pruners = ("none", "wilcoxon")
    objectives = ("mean",)

    def validate(self, spec: StageSpec, where: str) -> None:
        if spec.options.folds < 2:
            raise PlanError(f"{where}: a {self.name} stage needs folds >= 2")
        if spec.objective != "mean":
            raise PlanError(f"{where}: a {self.name} stage's objective is 'mean' (over folds)")
        if spec.pruner_min_folds > spec.options.folds:
            raise PlanError(f"{where}: need 1 <= pruner_min_folds <= folds")
        super().validate(spec, where)

    def check_data(self, spec: StageSpec, n_train: int) -> None:
        """At least one validation row per fold (``blocks`` with the Wilcoxon pruner): say so
        before anything is written, rather than fail inside the split."""
        folds = spec.options.folds
        need = spec.blocks if spec.pruner == "wilcoxon" else 1
        if n_train // folds < need:
            raise StageError(
                f"stage {spec.name!r}: {folds} folds of {n_train} train rows leave "
                f"{n_train // folds} validation rows per fold; it needs at least {need}: "
                "lower `folds` in the plan or use more rows"
            )

    def train(
        self, run: Run, cfgs: Sequence[TrainConfig], points: list[int]
    ) -> dict[int, PointResult]:
        folds = [
            (torch.from_numpy(tr), torch.from_numpy(va))
            for tr, va in cv_folds(run.data.train[1].numpy(), run.stage.options.folds, run.seeds[0])
        ]
        if run.stage.pruner == "wilcoxon":
            return _by_fold(run, cfgs, points, folds)
        return _together(run, cfgs, points, folds)

    def rows_per_run(self, spec: StageSpec, n_train: int) -> int:
        return n_train * (spec.options.folds - 1) // spec.options.folds

    def runs_in_sequence(self, spec: StageSpec) -> int:
        return spec.options.folds if spec.pruner == "wilcoxon" else 1

    def training_identity(self, spec: StageSpec, cfg: TrainConfig, n_train: int) -> dict[str, Any]:
        # fold sizes differ by a row: min_steps counts as given
        return {
            "procedure": self.name,
            "epochs": spec.epochs,
            "min_steps": spec.min_steps,
            "folds": spec.options.folds,
            "patience": 0,
        }

    def scored_by(self, spec: StageSpec) -> str:
        ep = f"{spec.epochs} epoch{'s' if spec.epochs != 1 else ''}"
        return (
            f"mean over {spec.options.folds} stratified folds of the train split of the final "
            f"validation accuracy ({ep} per fold); per-fold values and std kept"
        )

    def objective_name(self, spec: StageSpec) -> str:
        return "validation accuracy (mean over folds)"

    def summary_plot(self) -> tuple[str, str]:
        return self.name, "CV mean +- std"


def cv_folds(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold indices of the train split; the same folds for every point."""
    from sklearn.model_selection import StratifiedKFold  # 1-3 s to import: here only

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # a class rarer than the number of folds is fine: some folds validate without it
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(splitter.split(np.zeros(len(y)), y))


def _together(
    run: Run, cfgs: Sequence[TrainConfig], points: list[int], folds: Folds
) -> dict[int, PointResult]:
    """Every fold of every point in one group; fold values reported at the end."""
    members = [
        Member(i, r, f) for i in points for r in range(len(run.seeds)) for f in range(len(folds))
    ]
    histories = run.train(cfgs, members, folds=folds)
    out = {}
    for i in points:
        mine = [(m, h) for m, h in zip(members, histories, strict=True) if m.point == i]
        result = _result(mine)
        for f, v in enumerate(result.attrs["fold_values"]):
            run.reporter.report(i, v, f)
        out[i] = result
    return out


def _by_fold(
    run: Run, cfgs: Sequence[TrainConfig], points: list[int], folds: Folds
) -> dict[int, PointResult]:
    """Fold after fold, each fold's validation blocks reported as steps, pruning between."""
    x, y = run.data.train
    blocks = run.stage.blocks
    active = list(points)
    mine: dict[int, list[tuple[Member, History]]] = {i: [] for i in points}
    pruned: set[int] = set()
    for f, (_, va) in enumerate(folds):
        if not active:
            break
        members = [Member(i, r, f) for i in active for r in range(len(run.seeds))]
        training = run.group(cfgs, members, folds)
        histories = training.run(run.progress_only).histories
        for m, h in zip(members, histories, strict=True):
            mine[m.point].append((m, h))
        fg = training.stack  # its members score the validation blocks after training
        positions = list(range(len(fg.order)))
        block_accs = []  # [block][stack position]
        for block in torch.tensor_split(va, blocks):
            block_accs.append(fg.evaluate(positions, x[block], y[block])[1])
        for i in active:
            pos = [p for p in positions if members[fg.order[p]].point == i]
            for b in range(blocks):
                value = statistics.fmean(block_accs[b][p] for p in pos)
                run.reporter.report(i, value, f * blocks + b)
        stop = {i for i in active if run.reporter.should_prune(i)}
        pruned |= stop
        active = [i for i in active if i not in stop]
    return {i: _result(mine[i], pruned=i in pruned) for i in points}


def _result(mine: list[tuple[Member, History]], *, pruned: bool = False) -> PointResult:
    """A point from its members' histories (the folds it reached, if pruned)."""
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
        "diverged": any(diverged(h) for _, h in mine),
        "member_epochs": sum(len(h.epochs) for _, h in mine),
        "values": values,
        **summarize(values),  # with one repeat, "std" is the std over folds
    }
    return PointResult(statistics.fmean(fold_values), attrs, pruned=pruned)
