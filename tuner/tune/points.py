"""Which points a run of a stage trains: its grid, TPE's rounds, or the points its kind finds.

A :class:`StagePoints` is the point source of one run of a stage
(:meth:`tuner.tune.stages.Session.run_stage`). It names the attrs the stage's study is created
with (:meth:`~StagePoints.first_attrs`), records or finds the points once the study is open
(:meth:`~StagePoints.start`), gives the Optuna distributions the points' trials are created
with (:meth:`~StagePoints.distributions`) and yields the points to settle, batch after batch
(:meth:`~StagePoints.batches`). Every worker reads the same points from the study, so workers
joining a stage, or resuming it, train the same points.

* :class:`GridPoints`: every point of the stage's ``[grid]`` in plan order, in one batch;
* :class:`TPERounds`: TPE's proposals (:mod:`tuner.tune.search`), a round per batch, each round
  proposed once, by one worker, from the results of the rounds before it;
* :class:`KindPoints`: the points the stage's kind finds as it runs (an LR range test's
  candidates, :meth:`tuner.tune.kinds.base.StageKind.points`), in one batch.

Which source a stage uses is its sampler's (:mod:`tuner.tune.samplers`), or its kind's when the
kind finds its own points.
"""

from __future__ import annotations

import itertools
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import TrialState

from tuner.config import StageSpec
from tuner.tune.coordination import Coordinator
from tuner.tune.search import distributions, propose
from tuner.tune.state import normalize

logger = logging.getLogger(__name__)

ROUND_CLAIM = "__round_{}__"  # who proposes a TPE stage's round r

Point = dict[str, Any]


class StagePoints(ABC):
    """The points of one run of a stage (see the module docstring)."""

    def first_attrs(self) -> dict[str, Any]:
        """User attrs the study's creator sets with its other attrs (no two workers insert
        one attr): what a study that has not trained yet already knows of its points."""
        return {}

    @abstractmethod
    def start(self, study: optuna.Study) -> None:
        """Record (or find) the points in the open ``study``, before anything trains."""

    @abstractmethod
    def distributions(self) -> dict[str, BaseDistribution]:
        """The Optuna distributions of the points' params (after :meth:`start`)."""

    @abstractmethod
    def batches(self, study: optuna.Study) -> Iterator[list[Point]]:
        """The points to settle, batch after batch: every point of the stage so far (the next
        batch is read once the previous one is settled)."""


class _ListedPoints(StagePoints):
    """Points known once the study is open, settled in one batch; each param's distribution is
    categorical over the values the points take."""

    points: list[Point]

    def distributions(self) -> dict[str, BaseDistribution]:
        return {k: CategoricalDistribution(v) for k, v in search_space(self.points).items()}

    def batches(self, study: optuna.Study) -> Iterator[list[Point]]:
        yield self.points


class GridPoints(_ListedPoints):
    """Every point of the stage's ``[grid]``, in plan order (user attr ``points``)."""

    def __init__(self, spec: StageSpec) -> None:
        self.spec = spec
        self.points = grid_points(spec)

    def first_attrs(self) -> dict[str, Any]:
        return {"points": grid_points(self.spec)}

    def start(self, study: optuna.Study) -> None:
        if study.user_attrs.get("points") != self.points:
            study.set_user_attr("points", self.points)


class KindPoints(_ListedPoints):
    """The points the stage's kind finds in the open study (``find``: the kind's
    :meth:`~tuner.tune.kinds.base.StageKind.points`, done once across workers)."""

    def __init__(self, find: Callable[[optuna.Study], list[Point] | None]) -> None:
        self.find = find
        self.points = []

    def start(self, study: optuna.Study) -> None:
        self.points = self.find(study) or []


class TPERounds(StagePoints):
    """A TPE stage's points, a round at a time (user attrs ``planned``, ``rounds`` and
    ``points``): round ``r`` is proposed once, by one worker, from the settled trials of the
    rounds before it, and every worker trains the rounds the study holds.

    ``incumbent``: the configuration before the stage, proposed first in round 0 when it lies
    in the space; ``seed``: the run's seed (round ``r`` is drawn with ``seed + r``);
    ``workers``: who proposes a round while the others wait.
    """

    def __init__(
        self, spec: StageSpec, *, incumbent: Point, seed: int, workers: Coordinator
    ) -> None:
        self.spec, self.incumbent, self.seed, self.workers = spec, incumbent, seed, workers

    def first_attrs(self) -> dict[str, Any]:
        return {"planned": self.spec.trials}

    def start(self, study: optuna.Study) -> None:
        if "planned" not in study.user_attrs:
            study.set_user_attr("planned", self.spec.trials)  # before any round: not "done"

    def distributions(self) -> dict[str, BaseDistribution]:
        return distributions(self.spec)

    def batches(self, study: optuna.Study) -> Iterator[list[Point]]:
        r = 0
        while (points := self.round_points(study, r)) is not None:
            yield points
            r += 1

    def round_points(self, study: optuna.Study, r: int) -> list[Point] | None:
        """The points of rounds ``0..r`` (round ``r`` proposed now, by one worker), or ``None``
        when no round ``r`` is planned."""
        spec = self.spec

        def rounds() -> list[list[Point]]:
            return study.user_attrs.get("rounds", [])

        def proposed() -> int:
            return sum(len(rnd) for rnd in rounds())

        def done() -> bool:
            return len(rounds()) > r or proposed() >= study.user_attrs.get("planned", spec.trials)

        def propose_round() -> None:
            before, count = rounds(), proposed()
            history = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            n = min(spec.round_size, spec.trials - count)
            new = propose(
                spec,
                history,
                n,
                seed=self.seed + r,
                first=normalize(self.incumbent) if r == 0 else None,
            )
            logger.info("%s round %d: TPE proposes %d point(s)", study.study_name, r, len(new))
            if len(new) < n:  # the space is exhausted: plan what there is
                study.set_user_attr("planned", count + len(new))
            study.set_user_attr("rounds", [*before, new])
            study.set_user_attr("points", [p for rnd in [*before, new] for p in rnd])

        self.workers.once(
            study.study_name,
            ROUND_CLAIM.format(r),
            f"round {r} of {study.study_name}'s TPE proposals",
            done,
            propose_round,
        )
        have = rounds()
        return [p for rnd in have[: r + 1] for p in rnd] if len(have) > r else None


def grid_points(spec: StageSpec) -> list[Point]:
    """The stage's grid in plan order (first key slowest)."""
    names = list(spec.grid)
    return [
        dict(zip(names, values, strict=True)) for values in itertools.product(*spec.grid.values())
    ]


def search_space(points: list[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Each param of ``points`` and the values it takes, in the order they first appear."""
    space: dict[str, list[Any]] = {}
    for p in points:
        for k, v in p.items():
            if v not in space.setdefault(k, []):
                space[k].append(v)
    return space
