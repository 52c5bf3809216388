"""The interface of a stage kind: how a stage is planned, trained, identified and described.

A kind is one object (see :mod:`tuner.tune.kinds` for the registry). The plan loader asks it to
parse and check its own keys of a ``[[stages]]`` entry (:attr:`StageKind.Options`, a frozen
dataclass whose defaults are the plan's defaults); the stage runner asks it for the points to
train (:meth:`StageKind.points`) and to train a claimed group (:meth:`StageKind.train`); reuse
asks it what its training depends on (:meth:`StageKind.training_identity`); notes, the report
and the terminal tables ask it to describe itself (:meth:`StageKind.scored_by`,
:meth:`StageKind.facts`, :meth:`StageKind.figures`). Everything else about a stage -- its grid
or TPE space, epochs, repeats, pruner, the keep-incumbent rule -- is shared by every kind and
lives in :class:`tuner.config.StageSpec`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from tuner.checks import Invalid, message
from tuner.config import OBJECTIVE_WORDS, StageSpec
from tuner.errors import PlanError
from tuner.train.config import TrainConfig
from tuner.tune.runs import PointResult, Run
from tuner.tune.samplers import SAMPLERS, Grid, sampler_named

if TYPE_CHECKING:
    from tuner.train.tensors import TensorData


_IN_EVERY_STAGE: list[type[KindOptions]] = []  # see KindOptions


class KindOptions:
    """Base of a kind's :attr:`StageKind.Options`: a frozen dataclass whose fields are the
    kind's own plan keys, and whose defaults are the plan's defaults.

    ``class XOptions(KindOptions, in_every_stage=True)`` marks the options of a kind from the
    time when one flat dataclass carried every kind's options: every stage's dict
    (:meth:`StageSpec.to_dict`, what a stage's content hash is taken of) held their keys with
    their defaults, and still does (a stage's own options override them), so that the studies
    a plan already ran keep their identity. Only the first kinds are marked, and their
    defaults never change: a new kind's keys appear only in its own stages' dicts.
    """

    def __init_subclass__(cls, *, in_every_stage: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if in_every_stage:
            _IN_EVERY_STAGE.append(cls)

    def recorded(self) -> dict[str, Any]:
        """The options as a stage's dict records them (tuples as lists), after the keys and
        defaults every stage's dict holds."""
        every = {k: v for cls in _IN_EVERY_STAGE for k, v in _plain(cls()).items()}
        return {**every, **_plain(self)}


def _plain(options: Any) -> dict[str, Any]:
    own = dataclasses.asdict(options)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in own.items()}


@dataclass(frozen=True)
class NoOptions(KindOptions):
    """A kind without keys of its own."""


@dataclass(frozen=True)
class Figure:
    """A plot a kind adds to the report and the study's artifacts: a PNG named ``file``, drawn
    by the function of :mod:`tuner.report.plots` that ``plot`` names (see its ``KIND_PLOTS``)
    from ``data``. The kind says what to draw; drawing is the report's, so that ``tune``
    imports nothing of ``report``."""

    file: str
    caption: str
    plot: str
    data: Mapping[str, Any]


class PointSource(ABC):
    """What :meth:`StageKind.points` may use of the stage runner: the study, the starting
    configuration, the data, one worker doing a thing while the others wait, and the
    session's observers. Implemented by :class:`tuner.tune.stages.Session`'s stage runs (the
    points themselves reach the runner through :class:`tuner.tune.points.KindPoints`)."""

    seed: int  # the run's seed (``--seed``)

    @abstractmethod
    def once(self, study: Any, what: str, done: Callable[[], bool], do: Callable[[], None]) -> None:
        """Run ``do`` in exactly one worker until ``done()`` (the others wait for it)."""

    @abstractmethod
    def notify(self, hook: str, *args: Any) -> None:
        """Tell the session's observers (``hook`` as in :class:`tuner.tune.hooks.StageObserver`)."""


class StageKind(ABC):
    """What a stage kind is. A kind sets :attr:`name` and :attr:`summary` and implements the
    abstract methods: :meth:`train` (train and score a claimed group), :meth:`training_identity`
    (what its training depends on, for reuse) and :meth:`scored_by` (how a point is scored, in
    words). Where the defaults do not fit, it sets its :attr:`Options` (its own plan keys), the
    :attr:`pruners`, :attr:`objectives` and :attr:`samplers` it accepts, and overrides the
    other methods (how its points are found, its checks, how it describes itself)."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for the README and ``--help``
    Options: ClassVar[type[KindOptions]] = NoOptions  # its own plan keys, with their defaults
    schema: ClassVar[Mapping[str, Any]] = {}  # what each of those keys accepts (tuner.config)
    pruners: ClassVar[tuple[str, ...]] = ("none",)
    objectives: ClassVar[tuple[str, ...]] = ("peak", "final")
    samplers: ClassVar[tuple[str, ...]] = tuple(SAMPLERS)
    needs_grid: ClassVar[bool] = True  # a grid (or a TPE space) says which points to train
    keeps_final: ClassVar[bool] = False  # a point trains on the train split as the final does

    # -- the plan ------------------------------------------------------------------------------
    def option_errors(self, raw: Mapping[str, Any], where: str) -> list[str]:
        """One line per bad value of the kind's own keys in a raw ``[[stages]]`` entry."""
        errors = []
        for key, rule in self.schema.items():
            if key in raw:
                try:
                    rule.parse(raw[key], strict=True)
                except Invalid as err:
                    errors.append(f"{where}: {message(key, raw[key], err)}")
        return errors

    def parse_options(self, raw: Mapping[str, Any], where: str) -> Any:
        """The kind's options from its keys of a ``[[stages]]`` entry (defaults elsewhere)."""
        errors = self.option_errors(raw, where)
        if errors:
            raise PlanError("\n".join(errors))
        fields = {f.name for f in dataclasses.fields(self.Options)}
        return self.Options(**{k: self.convert(k, v) for k, v in raw.items() if k in fields})

    def convert(self, key: str, value: Any) -> Any:
        """A TOML value of option ``key`` as the options dataclass holds it."""
        return value

    @property
    def option_keys(self) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(self.Options))

    def validate(self, spec: StageSpec, where: str) -> None:
        """Checks across keys, once the stage is parsed (raise :class:`PlanError`)."""
        if spec.objective not in self.objectives:
            raise PlanError(
                f"{where}: objective {spec.objective!r} is not for a {self.name} stage; "
                f"choose one of: {', '.join(self.objectives)}"
            )
        if spec.pruner not in self.pruners:
            raise PlanError(
                f"unknown {where} pruner (for a {self.name} stage) {spec.pruner!r}; "
                f"choose one of: {', '.join(self.pruners)}"
            )
        if spec.sampler not in self.samplers:
            raise PlanError(f"{where}: a {self.name} stage takes no sampler = {spec.sampler!r}")
        if self.needs_grid and spec.sampler == Grid.name and not spec.grid:
            raise PlanError(f"{where}: a {self.name} stage needs a non-empty [grid]")

    def params(self, spec: StageSpec) -> tuple[str, ...]:
        """The :class:`TrainConfig` fields the stage chooses for later stages."""
        return sampler_named(spec.sampler).params(spec)

    def n_points(self, spec: StageSpec) -> int:
        """Points the stage trains in all."""
        return sampler_named(spec.sampler).n_points(spec)

    def contains(self, spec: StageSpec, params: Mapping[str, Any]) -> bool:
        """Whether ``params`` (a point as stored in the stage's study) lies in the stage's grid
        or space: what a finished study carries forward must."""
        if set(params) != set(self.params(spec)):
            return False
        return sampler_named(spec.sampler).contains(spec, params)

    # -- running -------------------------------------------------------------------------------
    def check_data(self, spec: StageSpec, n_train: int) -> None:  # noqa: B027 - optional
        """Refuse (:class:`tuner.errors.StageError`) data the stage cannot train on, before
        anything is written (by default, none is refused)."""

    def points(
        self, source: PointSource, study: Any, spec: StageSpec, base: TrainConfig, data: TensorData
    ) -> list[dict[str, Any]] | None:
        """The points to train when the stage finds them as it runs (``None``: its grid, or
        TPE's rounds, say which)."""
        return None

    @abstractmethod
    def train(
        self, run: Run, cfgs: Sequence[TrainConfig], points: list[int]
    ) -> dict[int, PointResult]:
        """Train and score ``points`` (indices into ``cfgs``) of one fused group."""

    def rows_per_run(self, spec: StageSpec, n_train: int) -> int:
        """Rows a run of a point trains on (what the planned epochs count steps over)."""
        return n_train

    def runs_in_sequence(self, spec: StageSpec) -> int:
        """How many times the planned epochs run one after the other (the progress bar)."""
        return 1

    @abstractmethod
    def training_identity(self, spec: StageSpec, cfg: TrainConfig, n_train: int) -> dict[str, Any]:
        """What a point's numbers depend on beyond its configuration, seeds, compute and data
        (part of its training fingerprint, :func:`tuner.tune.reuse.fingerprint`)."""

    # -- describing ----------------------------------------------------------------------------
    @abstractmethod
    def scored_by(self, spec: StageSpec) -> str:
        """How a point of the stage is scored, in words."""

    def objective_name(self, spec: StageSpec) -> str:
        """What the stage study's value is, for the dashboard's axis labels."""
        return OBJECTIVE_WORDS[spec.objective]

    def points_text(
        self, spec: StageSpec, points: Sequence[Mapping[str, Any]] | None
    ) -> str | None:
        """The stage's points in words, when the kind finds them itself (``None``: the grid)."""
        return None

    def facts(self, attrs: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Extra ``(label, text)`` lines for notes and the report, from the study's attrs."""
        return []

    def figures(self, attrs: Mapping[str, Any]) -> list[Figure]:
        """Extra plots of the stage, from the study's attrs."""
        return []

    def extra_seconds(self, attrs: Mapping[str, Any]) -> float:
        """Seconds the stage spent outside its trials (counted in its elapsed time)."""
        return 0.0

    def summary_plot(self) -> tuple[str, str]:
        """The stage's summary plot: ``(file suffix, caption)``; ``"curves"`` is validation
        curves per point, ``"errorbars"`` the mean and std over folds."""
        return "curves", "curves"
