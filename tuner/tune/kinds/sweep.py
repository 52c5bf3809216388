"""``kind = "sweep"``: each point trains on the train split and is scored on the validation split.

Every point trains for the stage's ``epochs`` (at least ``min_steps`` optimizer steps) once per
repeat seed; its value is the ``peak`` or ``final`` epoch's validation accuracy, averaged over
repeats, reported every epoch (so the median pruner can stop a point that trails its peers).
With ``patience`` a run stops when its validation loss has not improved for that many epochs.
A sweep point trains on the train split exactly as the final job would train it, so the
weights the final job's rule would keep can be kept (:mod:`tuner.tune.reuse`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tuner.checks import epochs_rule
from tuner.config import StageSpec
from tuner.train.config import TrainConfig
from tuner.tune.kinds.base import KindOptions, StageKind
from tuner.tune.runs import (
    PointResult,
    Run,
    holdout_identity,
    holdout_scored_by,
    train_holdout,
)


@dataclass(frozen=True)
class SweepOptions(KindOptions, in_every_stage=True):
    patience: int = 0  # a run stops when validation loss stalls this many epochs (0: never)


class Sweep(StageKind):
    name = "sweep"
    summary = "train each point on the train split, score it on the validation split"
    Options = SweepOptions
    schema = {"patience": epochs_rule(0)}
    pruners = ("none", "median")
    objectives = ("peak", "final", "best_loss")
    keeps_final = True

    def train(
        self, run: Run, cfgs: Sequence[TrainConfig], points: list[int]
    ) -> dict[int, PointResult]:
        return train_holdout(run, cfgs, points, patience=run.stage.options.patience)

    def training_identity(self, spec: StageSpec, cfg: TrainConfig, n_train: int) -> dict[str, Any]:
        return holdout_identity(spec, cfg, n_train, spec.options.patience)

    def scored_by(self, spec: StageSpec) -> str:
        return holdout_scored_by(spec)
