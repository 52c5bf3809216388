"""Samplers: how a stage's points are chosen, registered by the name a plan gives them.

A ``[[stages]]`` entry's ``sampler`` names one of :data:`SAMPLERS`, the one place those names
are spelled: :class:`Grid` (the default: every point of the stage's ``[grid]``) or :class:`TPE`
(points proposed by TPE over a ``[space]`` of ranges and choices, a round at a time; see
:mod:`tuner.tune.search`). A sampler answers for the plan -- which fields a stage tunes, how
many points it trains, whether a point lies in its grid or space, what the plan must give, how
notes and the report describe it -- and makes the point source of a run of the stage
(:meth:`Sampler.points`, :mod:`tuner.tune.points`). A kind that finds its own points as it runs
(an LR range test) takes the grid sampler without a grid (``StageKind.needs_grid``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from tuner.config import StageSpec, fmt_value
from tuner.errors import PlanError
from tuner.tune.coordination import Coordinator
from tuner.tune.points import GridPoints, StagePoints, TPERounds


class Sampler(ABC):
    """How a stage's points are chosen (see the module docstring)."""

    name: ClassVar[str]  # what a plan writes: ``sampler = "<name>"``
    label: ClassVar[str]  # what notes and the report call the searched values

    @abstractmethod
    def params(self, spec: StageSpec) -> tuple[str, ...]:
        """The :class:`~tuner.config.TrainConfig` fields the stage searches."""

    @abstractmethod
    def n_points(self, spec: StageSpec) -> int:
        """Points the stage trains in all."""

    @abstractmethod
    def contains(self, spec: StageSpec, params: Mapping[str, Any]) -> bool:
        """Whether ``params`` (a point of the stage's fields, as stored in its study) lies in
        the stage's grid or space."""

    @abstractmethod
    def check(self, spec: StageSpec, where: str) -> None:
        """Refuse (:class:`PlanError`, prefixed by ``where``) a stage that does not give what
        this sampler needs."""

    @abstractmethod
    def recorded_params(self, stage: Mapping[str, Any]) -> list[str]:
        """The fields a recorded stage (its study's user attr ``stage``) searches."""

    @abstractmethod
    def describe(self, stage: Mapping[str, Any]) -> str:
        """A recorded stage's grid or space in words, for notes and the report."""

    @abstractmethod
    def points(
        self, spec: StageSpec, *, incumbent: dict[str, Any], seed: int, workers: Coordinator
    ) -> StagePoints:
        """The point source of a run of the stage (``incumbent``: the configuration before
        the stage, as a point; ``seed``: the run's; ``workers``: this worker's coordinator)."""


class Grid(Sampler):
    """Every point of the stage's ``[grid]`` (the product of its lists), in plan order."""

    name = "grid"
    label = "Grid"

    def params(self, spec: StageSpec) -> tuple[str, ...]:
        return tuple(spec.grid)

    def n_points(self, spec: StageSpec) -> int:
        return math.prod(len(v) for v in spec.grid.values())

    def contains(self, spec: StageSpec, params: Mapping[str, Any]) -> bool:
        return all(params[key] in values for key, values in spec.grid.items())

    def check(self, spec: StageSpec, where: str) -> None:
        if spec.space:
            raise PlanError(
                f'{where}: [space] needs sampler = "{TPE.name}" (a grid stage takes [grid])'
            )

    def recorded_params(self, stage: Mapping[str, Any]) -> list[str]:
        return list(stage.get("grid", {}))

    def describe(self, stage: Mapping[str, Any]) -> str:
        return "; ".join(
            f"{k}: {', '.join(fmt_value(v) for v in vs)}" for k, vs in stage.get("grid", {}).items()
        )

    def points(
        self, spec: StageSpec, *, incumbent: dict[str, Any], seed: int, workers: Coordinator
    ) -> StagePoints:
        return GridPoints(spec)


class TPE(Sampler):
    """``trials`` points proposed by TPE over the stage's ``[space]``, ``round_size`` at a
    time (:mod:`tuner.tune.search`)."""

    name = "tpe"
    label = "Search space"

    def params(self, spec: StageSpec) -> tuple[str, ...]:
        return tuple(spec.space)

    def n_points(self, spec: StageSpec) -> int:
        return spec.trials

    def contains(self, spec: StageSpec, params: Mapping[str, Any]) -> bool:
        for key, rng in spec.space.items():
            value = params[key]
            if "choices" in rng:
                if value not in rng["choices"]:
                    return False
            elif not (isinstance(value, (int, float)) and rng["low"] <= value <= rng["high"]):
                return False
        return True

    def check(self, spec: StageSpec, where: str) -> None:
        if spec.grid or not spec.space:
            raise PlanError(f"{where}: a {self.name} stage searches a [space], not a [grid]")
        if spec.trials < 1 or spec.round_size < 1:
            raise PlanError(f"{where}: a {self.name} stage needs trials >= 1 and round_size >= 1")

    def recorded_params(self, stage: Mapping[str, Any]) -> list[str]:
        return list(stage.get("space", {}))

    def describe(self, stage: Mapping[str, Any]) -> str:
        ranges = "; ".join(
            f"{k}: {', '.join(fmt_value(v) for v in r['choices'])}"
            if "choices" in r
            else f"{k}: {fmt_value(r['low'])} .. {fmt_value(r['high'])}"
            + (" (log)" if r.get("log") else "")
            for k, r in stage.get("space", {}).items()
        )
        return (
            f"TPE over {ranges}: {stage.get('trials')} points in rounds of "
            f"{stage.get('round_size')}"
        )

    def points(
        self, spec: StageSpec, *, incumbent: dict[str, Any], seed: int, workers: Coordinator
    ) -> StagePoints:
        return TPERounds(spec, incumbent=incumbent, seed=seed, workers=workers)


SAMPLERS: dict[str, Sampler] = {sampler.name: sampler for sampler in (Grid(), TPE())}
"""Every sampler by the name a plan gives it, in the order error messages list them."""


def sampler_named(name: Any) -> Sampler:
    """The sampler registered as ``name``; any other name reads as the grid (a stage recorded
    by another version of tuner, or not checked yet: a plan with it is refused)."""
    if isinstance(name, str) and name in SAMPLERS:
        return SAMPLERS[name]
    return SAMPLERS[Grid.name]
