"""Stages, the final job and plans: what a plan file becomes, and how values are written.

:class:`StageSpec` is one stage (what every kind of stage shares; a kind's own options are its
dataclass, see :mod:`tuner.tune.kinds`), :class:`FinalSpec` the final job and :class:`Plan` all
of them, with the :class:`~tuner.train.config.TrainConfig` they start from; a plan's and a
stage's identity is the hash of their content (:func:`content_hash`). :func:`fmt_value` and
:func:`point_label` are how a value and a point are written wherever one is shown. This module
is data: it reads no file and knows no stage kind. One training run's configuration is
:mod:`tuner.train.config`'s, the value checks are :mod:`tuner.checks`'.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.errors import PlanError
from tuner.train.config import TrainConfig

OBJECTIVES = ("peak", "final", "mean", "best_loss")
OBJECTIVE_WORDS = {
    "peak": "peak validation accuracy",
    "final": "final validation accuracy",
    "mean": "mean validation accuracy",
    "best_loss": "validation accuracy at the lowest validation loss",
}
"""A stage's value in words. ``best_loss``: the accuracy of the epoch that early stopping with
``restore_best`` ships (the peak is an optimistic pick among epochs; this is not)."""
OBJECTIVE_HEADERS = {
    "peak": "peak val acc",
    "final": "final val acc",
    "mean": "mean val acc",
    "best_loss": "val acc at best loss",
}
"""A stage's value as a table's column header (``value`` where the objective is unknown)."""

# Upper bounds of plan values: far beyond any sensible plan, low enough to catch a typo (a
# stage of 5000 folds) before it runs.
MAX_FOLDS = 100
MAX_GRID_VALUES = 1_000


@dataclass(frozen=True)
class StageSpec:
    """One stage: which points it trains and how every kind trains them.

    What every kind shares lives here: the grid (or the TPE ``space``), epochs, objective,
    repeats, the pruner, the keep-incumbent rule. What is the kind's own (its folds, its
    early-stopping patience, an LR range test's range and candidates) is ``options``: the
    frozen dataclass its kind declares (:mod:`tuner.tune.kinds`), which also resolved
    ``params`` (the fields the stage chooses for later stages) and ``n_points``. Build one with
    :func:`tuner.tune.kinds.stage_spec` (or load a plan): it fills all three from the kind.
    """

    name: str
    kind: str  # a name registered in tuner.tune.kinds
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    epochs: int = 1
    objective: str = "peak"
    repeats: int = 1  # seeds per grid point (per fold with folds), trained together
    keep_incumbent_unless_significant: bool = False
    pruner: str = "none"  # "median" over epochs, "wilcoxon" over validation blocks
    pruner_warmup: int = 3  # median: epochs every point trains before it can be pruned
    pruner_p: float = 0.1  # wilcoxon: one-sided p-value below which a point is pruned
    blocks: int = 10  # wilcoxon: validation blocks per fold (the paired instances)
    pruner_min_folds: int = 2  # wilcoxon: folds every point trains before it can be pruned
    min_steps: int = 0  # train at least this many optimizer steps: more epochs on small data
    sampler: str = "grid"  # "tpe": points proposed by TPE over `space`, `round_size` at a time
    space: dict[str, dict[str, Any]] = field(default_factory=dict)  # tpe: {low, high, log}
    trials: int = 0  # tpe: points in all
    round_size: int = 8  # tpe: points proposed together (and trained as one fused group)
    description: str = ""
    options: Any = None  # the kind's own options (its Options dataclass)
    params: tuple[str, ...] = ()  # the TrainConfig fields the stage chooses (from its kind)
    n_points: int = 0  # points the stage trains in all (from its kind)

    def to_dict(self) -> dict[str, Any]:
        """The stage as recorded in its study (user attr ``stage``) and hashed for its plan
        content: the shared settings and the kind's options, flat."""
        d: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("options", "params", "n_points")
        }
        d["grid"] = {k: list(v) for k, v in self.grid.items()}
        d["space"] = {k: dict(v) for k, v in self.space.items()}
        # the kind's options (tuner.tune.kinds.base.KindOptions.recorded): its own keys, after
        # those every stage's dict holds
        own = self.options.recorded() if self.options is not None else {}
        return {**d, **own}


@dataclass(frozen=True)
class FinalSpec:
    """The final retrain on the train split, early-stopped on validation loss, scored on test."""

    epochs: int = 15
    patience: int = 5
    restore_best: bool = False
    min_steps: int = 0  # train at least this many optimizer steps: more epochs on small data


@dataclass(frozen=True)
class Plan:
    name: str
    defaults: TrainConfig
    stages: tuple[StageSpec, ...]
    final: FinalSpec
    description: str = ""
    path: Path | None = None
    # reuse identical trials across stages and in the final job (tuner.tune.reuse); never changes
    # a number, so it is not part of the plan's content
    reuse: bool = True
    # ``[data]``: how a table is encoded unless the user says otherwise (scaler, missing
    # indicators, impute). Not part of the plan's content: it changes the prepared data, whose
    # key every study records already.
    data: Mapping[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.stages)
        raise PlanError(f"plan {self.name!r} has no stage {name!r}; its stages are: {known}")

    def index(self, name: str) -> int:
        return self.stages.index(self.stage(name))

    # -- identity by content ------------------------------------------------------------------
    def stage_content(self, name: str) -> dict[str, Any]:
        """What a stage's results depend on in this plan: its own settings (all but its
        description) and the ``[defaults]`` it starts from, less the fields earlier stages tune
        (those come from their winners, compared as the study's ``fixed_params``). ``"final"``:
        the ``[final]`` settings and the defaults no stage tunes."""
        if name == FINAL_STAGE:
            index, spec = len(self.stages), dataclasses.asdict(self.final)
        else:
            index = self.index(name)
            spec = {k: v for k, v in self.stages[index].to_dict().items() if k != "description"}
        tuned = {p for s in self.stages[:index] for p in s.params}
        defaults = {k: v for k, v in self.defaults.to_dict().items() if k not in tuned}
        return {"stage": spec, "defaults": defaults}

    def content_key(self, name: str) -> str:
        """The hash of :meth:`stage_content`: recorded in the stage's study (user attr
        ``plan_content``); a study is reused only by a plan whose stage has the same."""
        return content_hash(self.stage_content(name))

    @property
    def content(self) -> str:
        """The hash of the whole plan's content (every stage, defaults, final; no
        descriptions): what ``models/<plan>/`` and ``reports/<plan>/`` were written from."""
        return content_hash(
            {
                "stages": [self.stage_content(s.name)["stage"] for s in self.stages],
                "defaults": self.defaults.to_dict(),
                "final": dataclasses.asdict(self.final),
            }
        )


FINAL_STAGE = "final"  # the final job's name among stages (a plan's stages may not use it)


def content_hash(obj: Any) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as canonical JSON."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def repeat_seeds(seed: int, repeats: int) -> list[int]:
    """The seeds of a point's repeats: the run's seed first, so ``repeats = 1`` is one run."""
    return [seed + r for r in range(repeats)]


def planned_epochs(epochs: int, min_steps: int, n_rows: int, batch_size: int) -> int:
    """``epochs``, or more where that many epochs over ``n_rows`` rows would take fewer than
    ``min_steps`` optimizer steps: a plan written for the full data set still trains a small
    one long enough (early stopping, where set, ends it when validation loss stalls).
    ``batch_size``: the one the run trains with (an ``"auto"`` one resolved,
    :meth:`TrainConfig.for_rows <tuner.train.config.TrainConfig.for_rows>`)."""
    if min_steps <= 0 or n_rows <= 0:
        return epochs
    return max(epochs, math.ceil(min_steps / math.ceil(n_rows / batch_size)))


# -- how values are written in labels, tables and notes -------------------------------------
def fmt_value(value: Any) -> str:
    """A grid value for labels and tables: ``1e-05``, ``0.001``, ``256x256``, a name as is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # nan, inf, -inf
    if isinstance(value, float) and value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        mantissa, _, exp = f"{value:.2e}".partition("e")  # 7.11e-04 -> 7.11e-4, 1.00e-05 -> 1e-5
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{exp[0]}{exp[1:].lstrip('0')}"
    return f"{value:g}"


def point_label(params: Mapping[str, Any]) -> str:
    """``lr=0.001, hidden=256x256``; a single-param point shows only its value."""
    if len(params) == 1:
        return fmt_value(next(iter(params.values())))
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in params.items()) or "final"
