"""Optuna pruners for trials that train side by side.

Optuna's pruners compare a trial with *finished* trials: ``MedianPruner`` with the complete
trials' values at the same step, ``WilcoxonPruner`` with the best complete trial. tuner trains
the points of a stage together in one fused group, so while they train none of them is
finished, and the stock pruners would never prune. :class:`PeerPruner` runs a stock pruner on a
view of the study in which the trial's *peers* -- every other running or complete trial that
has reported -- stand in for the finished trials: the median is over the peers' values at the
step, and the "best trial" is the peer with the best mean over the trial's steps. The rules
themselves (warm-up, thresholds, Wilcoxon's safety checks) are Optuna's.
"""

from __future__ import annotations

import statistics
import warnings
from typing import Any

import optuna
from optuna.pruners import BasePruner, MedianPruner, NopPruner, WilcoxonPruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.config import StageSpec


class _PeerView:
    """The parts of a study that Optuna's pruners read, with the peers as finished trials."""

    def __init__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.direction = study.direction
        self._peers = [
            t
            for t in study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE)
            )
            if t.number != trial.number and t.intermediate_values
        ]
        self._steps = list(trial.intermediate_values)

    def get_trials(self, deepcopy: bool = False, states: Any = None) -> list[FrozenTrial]:
        return list(self._peers)

    @property
    def best_trial(self) -> FrozenTrial:
        """The peer with the best mean over the trial's steps (among peers that have them)."""
        ranked = [
            (statistics.fmean(t.intermediate_values[s] for s in self._steps), t)
            for t in self._peers
            if all(s in t.intermediate_values for s in self._steps)
        ]
        if not ranked:
            raise ValueError("no peer has reported these steps yet")
        pick = max if self.direction == StudyDirection.MAXIMIZE else min
        return pick(ranked, key=lambda vt: vt[0])[1]


class PeerPruner(BasePruner):
    """Run ``inner`` (an Optuna pruner) against the trial's peers (see the module docstring)."""

    def __init__(self, inner: BasePruner) -> None:
        self.inner = inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return bool(self.inner.prune(_PeerView(study, trial), trial))  # type: ignore[arg-type]


def for_stage(spec: StageSpec) -> BasePruner:
    """The pruner a stage's plan asks for (``NopPruner`` when none)."""
    if spec.pruner == "median":
        inner: BasePruner = MedianPruner(
            n_startup_trials=0, n_warmup_steps=spec.pruner_warmup, n_min_trials=2
        )
    elif spec.pruner == "wilcoxon":
        # No verdict before `pruner_min_folds` whole folds are in: the blocks of one fold are
        # scored by one trained model, so they carry validation noise but not training noise.
        with warnings.catch_warnings():  # "experimental" since Optuna 3.6
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            inner = WilcoxonPruner(
                p_threshold=spec.pruner_p, n_startup_steps=spec.blocks * spec.pruner_min_folds
            )
    else:
        return NopPruner()
    return PeerPruner(inner)
