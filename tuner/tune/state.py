"""The read model of a stage: what the storage says about it, computed once.

:func:`read_stage` turns a stage's study (its user attrs and trials) into a
:class:`StageState`: its progress, the latest complete trial of every point in plan order
(:attr:`StageState.rows`, with values, intervals, fold values, curves, seconds and where a
reused trial came from), the per-point statistics and the stage's decision, the point carried
forward and the stage's wall time. The stage table, ``status --json``, the study notes and the
report all read this one object instead of recomputing from trials.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.config import OBJECTIVE_HEADERS, StageSpec
from tuner.train.config import TrainConfig, coerce_params
from tuner.tune.decide import Decision, PointStats

SETTLED = (TrialState.COMPLETE, TrialState.PRUNED)  # a point with such a trial is not retried


def point_key(params: Mapping[str, Any]) -> str:
    """A grid point's identity: canonical JSON of its params."""
    return json.dumps(dict(params), sort_keys=True)


def normalize(params: Mapping[str, Any]) -> dict[str, Any]:
    """Params as stored in studies: typed like TrainConfig, widths as ``"256x256"``."""
    out = coerce_params(params)
    if "hidden" in out:
        out["hidden"] = "x".join(str(w) for w in out["hidden"])
    return out


def incumbent(spec: StageSpec, base: TrainConfig) -> dict[str, Any]:
    """The grid point equal to the configuration the stage starts from."""
    current = normalize(base.to_dict(full=True))
    return {p: current[p] for p in spec.params}


@dataclass
class StageState:
    """What the storage says about one stage (the ``status`` view, notes, report)."""

    name: str
    study: str | None
    state: str  # pending | running | done
    n_complete: int
    n_total: int
    best_params: dict[str, Any] | None  # the point carried forward (the decision's choice)
    best_value: float | None
    fixed_params: dict[str, Any] | None
    user_attrs: dict[str, Any] = field(default_factory=dict, repr=False)
    trials: list[FrozenTrial] = field(default_factory=list, repr=False)
    points: list[PointStats] = field(default_factory=list, repr=False)
    decision: Decision | None = None
    n_pruned: int = 0
    reused: dict[str, str] = field(default_factory=dict)  # point key -> "<study>#<trial>"
    # one row per complete point in plan order: params, value, std, ci95, n, fold_values,
    # history, seconds, peak_epoch, trial, reused_from
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    wall_seconds: float | None = None  # some trial of the stage training, plus the kind's own

    def reused_from(self, params: Mapping[str, Any]) -> str | None:
        """Where a point's trial was reused from (``None``: it was trained here)."""
        return self.reused.get(point_key(params))

    @property
    def metric(self) -> str:
        """What the stage's values measure, as a column header (``peak val acc``, ...)."""
        objective = (self.user_attrs.get("stage") or {}).get("objective")
        return OBJECTIVE_HEADERS.get(objective, "value")

    @property
    def winner(self) -> dict[str, Any] | None:
        """The row of the point carried forward (``None`` before the stage decides)."""
        if self.best_params is None:
            return None
        key = point_key(self.best_params)
        return next((r for r in self.rows if point_key(r["params"]) == key), None)

    @property
    def runner_up(self) -> dict[str, Any] | None:
        """The best other row by value."""
        winner = self.winner
        others = [r for r in self.rows if r is not winner]
        return max(others, key=lambda r: r["value"]) if others else None

    @property
    def trained_seconds(self) -> float:
        """Training seconds summed over the stage's points (workers overlap them)."""
        return sum(r["seconds"] or 0.0 for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "study": self.study,
            "state": self.state,
            "n_complete": self.n_complete,
            "n_pruned": self.n_pruned,
            "n_total": self.n_total,
            "best_params": self.best_params,
            "best_value": self.best_value,
            "metric": self.metric,
            "fixed_params": self.fixed_params,
            "wall_seconds": self.wall_seconds,
            "points": [
                {**p.summary(), "reused_from": self.reused_from(p.params)} for p in self.points
            ],
            "decision": self.decision.to_dict() if self.decision else None,
        }


def pending(name: str, n_total: int) -> StageState:
    """A stage with no study yet."""
    return StageState(name, None, "pending", 0, n_total, None, None, None)


def read_stage(
    name: str,
    study: optuna.Study,
    n_total: int,
    decide: Callable[[dict[str, Any], list[PointStats]], Decision | None],
    extra_seconds: Callable[[Mapping[str, Any]], float] = lambda attrs: 0.0,
) -> StageState:
    """The read model of stage ``name`` from its ``study``.

    ``n_total``: the points the plan says the stage has (a TPE stage records its own
    ``planned``); ``decide(fixed_params, point_stats)``: the stage's decision rule;
    ``extra_seconds(attrs)``: what the stage's kind spent outside its trials.
    """
    attrs = study.user_attrs
    points = attrs.get("points")
    order = {point_key(p): i for i, p in enumerate(points or [])}
    trials = study.get_trials(deepcopy=False)
    settled = [
        t for t in trials if t.state in SETTLED and (points is None or point_key(t.params) in order)
    ]
    n_complete = len({point_key(t.params) for t in settled})  # pruned points count as done
    if points is not None:  # a TPE stage plans more points than it has proposed so far
        n_total = attrs.get("planned", len(points))
    complete = sorted(
        (t for t in settled if t.state == TrialState.COMPLETE), key=lambda t: t.number
    )
    latest = {point_key(t.params): t for t in complete}
    ranked = sorted(latest.items(), key=lambda kt: order.get(kt[0], kt[1].number))
    stats = [
        PointStats(dict(t.params), tuple(t.user_attrs.get("values") or [t.value]))
        for _, t in ranked
    ]
    decision = decide(attrs.get("fixed_params") or {}, stats)
    chosen = next((p for p in stats if decision and p.params == decision.chosen), None)
    done = points is not None and len(points) >= n_total and n_complete == n_total
    return StageState(
        name=name,
        study=study.study_name,
        state="done" if done else "running",
        n_complete=n_complete,
        n_total=n_total,
        best_params=dict(chosen.params) if chosen else None,
        best_value=chosen.mean if chosen else None,
        fixed_params=attrs.get("fixed_params"),
        user_attrs=attrs,
        trials=trials,
        points=stats,
        decision=decision,
        n_pruned=len({point_key(t.params) for t in settled if t.state == TrialState.PRUNED}),
        reused={
            k: t.user_attrs["reused_from"] for k, t in ranked if t.user_attrs.get("reused_from")
        },
        rows=[_row(t) for _, t in ranked],
        wall_seconds=_wall_seconds(settled, extra_seconds(attrs)) if settled else None,
    )


def _row(t: FrozenTrial) -> dict[str, Any]:
    a = t.user_attrs
    return {
        "params": dict(t.params),
        "value": t.value,
        "std": a.get("std"),
        "ci95": a.get("ci95"),
        "n": a.get("n"),
        "fold_values": a.get("fold_values"),
        "history": a.get("history"),
        "seconds": a.get("seconds"),
        "peak_epoch": a.get("peak_epoch"),
        "trial": t.number,
        "reused_from": a.get("reused_from"),
    }


def _wall_seconds(settled: list[FrozenTrial], extra: float) -> float:
    """Seconds during which some settled trial was training: the length of the union of their
    start-to-end intervals (trials trained together overlap), plus ``extra``."""
    spans = sorted(
        (t.datetime_start, t.datetime_complete)
        for t in settled
        if t.datetime_start and t.datetime_complete
    )
    total, end = 0.0, None
    for start, stop in spans:
        if end is None or start > end:
            total += (stop - start).total_seconds()
            end = stop
        elif stop > end:
            total += (stop - end).total_seconds()
            end = stop
    return total + extra
