"""Stage objectives: how one grid point of a stage is trained and scored.

Each function trains one configuration and returns a :class:`PointResult` -- the value the
stage's study maximises and the details kept as trial user attributes. ``report(value, step)``
receives intermediate values (per epoch for sweeps, per fold for CV) for Optuna and the
dashboard's learning curves.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from tuner.engine import EpochStats, History, as_tensors, train
from tuner.plan import StageSpec, TrainConfig
from tuner.prepare import Prepared

Report = Callable[[float, int], None]


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
            key=prepared.manifest["key"],
        )


@dataclass
class PointResult:
    value: float
    attrs: dict[str, Any] = field(default_factory=dict)


def _score(history: History, objective: str) -> float:
    return history.peak_acc if objective == "peak" else history.final_acc


def _diverged(history: History) -> bool:
    return any(not math.isfinite(e.train_loss) for e in history.epochs)


def sweep_point(
    stage: StageSpec, cfg: TrainConfig, data: TensorData, *, seed: int, report: Report
) -> PointResult:
    """Train on the train split for ``stage.epochs``; score on validation (peak or final)."""
    t0 = time.perf_counter()

    def on_epoch(e: EpochStats) -> None:
        report(e.val_acc, e.epoch)

    _, history = train(
        cfg,
        data.train,
        data.val,
        epochs=stage.epochs,
        seed=seed,
        n_classes=data.n_classes,
        on_epoch=on_epoch,
    )
    value = _score(history, stage.objective)
    peak_epoch = max(history.epochs, key=lambda e: e.val_acc).epoch
    return PointResult(
        value,
        {
            "history": history.to_dict(),
            "peak_epoch": peak_epoch,
            "diverged": _diverged(history),
            "seconds": time.perf_counter() - t0,
        },
    )


def cv_folds(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold indices of the train split; the same folds for every grid point."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # a decade rarer than the number of folds is fine: some folds validate without it
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(splitter.split(np.zeros(len(y)), y))


def cv_point(
    stage: StageSpec, cfg: TrainConfig, data: TensorData, *, seed: int, report: Report
) -> PointResult:
    """``stage.folds``-fold CV on the train split; the value is the mean final fold accuracy."""
    t0 = time.perf_counter()
    x, y = data.train
    fold_values: list[float] = []
    histories: list[dict[str, Any]] = []
    diverged = False
    for k, (tr, va) in enumerate(cv_folds(y.numpy(), stage.folds, seed)):
        tr_t, va_t = torch.from_numpy(tr), torch.from_numpy(va)
        _, history = train(
            cfg,
            (x[tr_t], y[tr_t]),
            (x[va_t], y[va_t]),
            epochs=stage.epochs,
            seed=seed,
            n_classes=data.n_classes,
        )
        fold_values.append(history.final_acc)
        histories.append(history.to_dict())
        diverged = diverged or _diverged(history)
        report(history.final_acc, k)
    return PointResult(
        statistics.fmean(fold_values),
        {
            "fold_values": fold_values,
            "std": statistics.stdev(fold_values) if len(fold_values) > 1 else 0.0,
            "history": histories,
            "diverged": diverged,
            "seconds": time.perf_counter() - t0,
        },
    )


def evaluate_point(
    stage: StageSpec, cfg: TrainConfig, data: TensorData, *, seed: int, report: Report
) -> PointResult:
    """Dispatch on the stage kind (an ``lr_range_test`` candidate is verified like a sweep)."""
    if stage.kind == "cv":
        return cv_point(stage, cfg, data, seed=seed, report=report)
    return sweep_point(stage, cfg, data, seed=seed, report=report)
