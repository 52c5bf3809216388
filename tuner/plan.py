"""Plans: which stages run, in which order, over which grids, scored how.

A plan is a TOML file in ``studies/`` (``seed.toml`` reproduces the published study,
``quick.toml`` is the same sequence made tiny). It is data, not code: this module only reads
and validates it into frozen dataclasses that the rest of the package consumes.

A plan has three parts:

``[defaults]``
    The training configuration before any stage has chosen anything (architecture, activation,
    optimizer, ...). Every field of :class:`TrainConfig` may be set.
``[[stages]]``
    In order. Each stage tunes one or more :class:`TrainConfig` fields over a categorical grid,
    or over a ``[space]`` of ranges and choices searched by TPE (``sampler = "tpe"``, see
    :mod:`tuner.tune.search`), and fixes the winners for every later stage.
``[final]``
    How the chosen configuration is retrained and scored once on the test split.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import math
import numbers
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.errors import PlanError
from tuner.train.options import FIELDS, activations, inits, losses, norms, optimizers, schedules

SAMPLERS = ("grid", "tpe")

STAGE_KINDS = ("lr_range_test", "cv", "sweep")
OBJECTIVES = ("peak", "final", "mean")

# Upper bounds of plan values: far beyond any sensible plan, low enough to catch a typo (a cv
# stage of 5000 folds) before it runs.
MAX_EPOCHS = 10_000
MAX_FOLDS = 100
MAX_WIDTH = 65_536
MAX_LAYERS = 64
MAX_BATCH = 1 << 24
MAX_GRID_VALUES = 1_000
MAX_NAME = 64


# -- schema: what each plan value must be ------------------------------------------------------
class _Invalid(Exception):
    """A value that does not fit its field: what was expected, and whether the value had the
    wrong type (``kind="type"``), was outside the range (``"range"``) or not a known choice."""

    def __init__(self, expected: str, kind: str = "type") -> None:
        super().__init__(expected)
        self.expected, self.kind = expected, kind


def _show(value: Any) -> str:
    """A value as the user wrote it (TOML-like), cut short."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, (dt.date, dt.time)):
        text = value.isoformat()
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_word(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, numbers.Integral):
        return "an integer"
    if isinstance(value, numbers.Real):
        return "a number"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (dt.date, dt.time)):
        return "a date/time"
    return type(value).__name__


def _message(key: str, value: Any, err: _Invalid) -> str:
    """One line naming the key, what it must be and what it got."""
    if err.kind == "choice":
        return f"unknown {key} {_show(value)}; choose one of: {err.expected}"
    got = _show(value) + (f" ({_type_word(value)})" if err.kind == "type" else "")
    return f"{key} must be {err.expected}, got {got}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


@dataclass(frozen=True)
class _Number:
    """An integer or a finite float, within bounds. ``strict`` (plan files): only TOML numbers
    of the right kind; else (``--fix`` strings, stored params) strings are parsed, and a float
    that is a whole number is accepted as an integer."""

    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def range_text(self) -> str:
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_num(lo)}, {_num(hi)}{right}"
        if lo is not None:
            return f"{'>' if self.low_open else '>='} {_num(lo)}"
        if hi is not None:
            return f"{'<' if self.high_open else '<='} {_num(hi)}"
        return ""

    def expected(self, finite: bool = False) -> str:
        kind = "an integer" if self.integer else "a finite number" if finite else "a number"
        rng = self.range_text()
        return f"{kind} {rng}" if rng else kind

    def parse(self, value: Any, strict: bool) -> int | float:
        if isinstance(value, str) and not strict:
            text = value.strip()
            try:
                value = int(text) if self.integer else float(text)
            except ValueError:
                raise _Invalid(self.expected()) from None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _Invalid(self.expected())
        if self.integer:
            if not isinstance(value, numbers.Integral):
                if strict or not (math.isfinite(value) and float(value).is_integer()):
                    raise _Invalid(self.expected())
            out: int | float = int(value)
        else:
            try:
                out = float(value)
            except OverflowError:
                raise _Invalid(self.expected(finite=True), "range") from None
            if not math.isfinite(out):
                raise _Invalid(self.expected(finite=True), "range")
        lo, hi = self.low, self.high
        if (
            lo is not None
            and (out <= lo if self.low_open else out < lo)
            or hi is not None
            and (out >= hi if self.high_open else out > hi)
        ):
            raise _Invalid(self.range_text(), "range")
        return out


@dataclass(frozen=True)
class _Choice:
    choices: tuple[str, ...]

    def parse(self, value: Any, strict: bool) -> str:
        if isinstance(value, str) and value in self.choices:
            return value
        raise _Invalid(", ".join(self.choices), "choice")


@dataclass(frozen=True)
class _Bool:
    def parse(self, value: Any, strict: bool) -> bool:
        if isinstance(value, bool):
            return value
        raise _Invalid("true or false")


@dataclass(frozen=True)
class _Text:
    def parse(self, value: Any, strict: bool) -> str:
        if isinstance(value, str):
            return value
        raise _Invalid("a string")


@dataclass(frozen=True)
class _Name:
    """A plan or stage name: it becomes part of study names and of paths under the workdir
    (``models/<plan>/``, ``reports/<plan>/<stage>_cv.png``), so it is a plain identifier."""

    # plan names may contain "." (never ".."); stage names may not: ``<plan>.<stage>.vN``
    dots: bool

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(
            r"[A-Za-z0-9][A-Za-z0-9_.-]*" if self.dots else r"[A-Za-z0-9][A-Za-z0-9_-]*"
        )

    @property
    def expected(self) -> str:
        chars = 'letters, digits, "_", "-" and "."' if self.dots else 'letters, digits, "_" and "-"'
        return (
            f"{chars} only, starting with a letter or digit"
            + (', without ".."' if self.dots else "")
            + f", at most {MAX_NAME} characters"
        )

    def parse(self, value: Any, strict: bool) -> str:
        if not isinstance(value, str):
            raise _Invalid(self.expected)
        if len(value) > MAX_NAME or not self.pattern.fullmatch(value) or ".." in value:
            raise _Invalid(self.expected, "range")
        return value


@dataclass(frozen=True)
class _Widths:
    """``hidden``: a list of layer widths, or ``"256x256"``."""

    expected = (
        f"a non-empty list of at most {MAX_LAYERS} integer widths in [1, {MAX_WIDTH}] "
        '(e.g. [256, 256] or "256x256")'
    )

    def parse(self, value: Any, strict: bool) -> tuple[int, ...]:
        if isinstance(value, str):
            parts = value.lower().split("x")
            if not all(p.strip().isdigit() for p in parts):
                raise _Invalid(self.expected)
            widths = [int(p) for p in parts]
        elif isinstance(value, (list, tuple)):
            widths = []
            for w in value:
                if isinstance(w, bool) or not isinstance(w, numbers.Real):
                    raise _Invalid(self.expected)
                if not isinstance(w, numbers.Integral):
                    if strict or not (math.isfinite(w) and float(w).is_integer()):
                        raise _Invalid(self.expected)
                widths.append(int(w))
        else:
            raise _Invalid(self.expected)
        if not 1 <= len(widths) <= MAX_LAYERS or not all(1 <= w <= MAX_WIDTH for w in widths):
            raise _Invalid(self.expected, "range")
        return tuple(widths)


_FRACTION = _Number(low=0, high=1, high_open=True)

# The option fields accept exactly the names registered in tuner.train.options.
_OPTIONS = {key: _Choice(tuple(entries)) for key, entries in FIELDS.items()}

TRAIN_SCHEMA: dict[str, Any] = {
    "hidden": _Widths(),
    "activation": _OPTIONS["activation"],
    "norm": _OPTIONS["norm"],
    "init": _OPTIONS["init"],
    "optimizer": _OPTIONS["optimizer"],
    "lr": _Number(low=0, low_open=True),
    "weight_decay": _Number(low=0),
    "momentum": _FRACTION,
    "batch_size": _Number(integer=True, low=1, high=MAX_BATCH),
    "dropout": _FRACTION,
    "label_smoothing": _FRACTION,
    "class_weight": _OPTIONS["class_weight"],
    "schedule": _OPTIONS["schedule"],
}
"""What each :class:`TrainConfig` field accepts (in ``[defaults]``, grids, spaces, ``--fix``)."""


def _epochs(low: int = 1) -> _Number:
    return _Number(integer=True, low=low, high=MAX_EPOCHS)


STAGE_SCHEMA: dict[str, Any] = {
    "name": _Name(dots=False),
    "kind": _Choice(STAGE_KINDS),
    "epochs": _epochs(),
    "objective": _Choice(OBJECTIVES),
    "folds": _Number(integer=True, low=0, high=MAX_FOLDS),
    "repeats": _Number(integer=True, low=1, high=100),
    "keep_incumbent_unless_significant": _Bool(),
    "pruner": _Choice(("none", "median", "wilcoxon")),
    "pruner_warmup": _epochs(),
    "pruner_p": _Number(low=0, high=1, low_open=True, high_open=True),
    "blocks": _Number(integer=True, low=2, high=1000),
    "pruner_min_folds": _Number(integer=True, low=1, high=MAX_FOLDS),
    "patience": _epochs(0),
    "min_steps": _Number(integer=True, low=0, high=10**9),
    "sampler": _Choice(SAMPLERS),
    "trials": _Number(integer=True, low=0, high=10_000),
    "round_size": _Number(integer=True, low=1, high=1_000),
    "description": _Text(),
    "param": _Choice(("lr",)),
    "start_lr": _Number(low=0, low_open=True),
    "end_lr": _Number(low=0, low_open=True),
    "optimizer": _OPTIONS["optimizer"],  # lr_range_test: the range test's optimizer
    "range_optimizer": _OPTIONS["optimizer"],  # the same, by its field name
    "snap": _Choice(("none", "decade")),
    # "grid", "space" and "candidates" are lists and tables: see _schema_errors_stage
}
"""What each key of a ``[[stages]]`` entry accepts."""

FINAL_SCHEMA: dict[str, Any] = {
    "epochs": _epochs(),
    "patience": _epochs(0),
    "restore_best": _Bool(),
    "min_steps": _Number(integer=True, low=0, high=10**9),
}
"""What each key of ``[final]`` accepts."""

PLAN_NAME = _Name(dots=True)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run of the MLP.

    Stages tune these fields by name: a stage grid over ``activation`` varies :attr:`activation`
    and keeps every other field as fixed by earlier stages or the defaults. The fields that
    name a choice (activation, norm, init, optimizer, class_weight, schedule) take the names
    registered in :mod:`tuner.train.options`, and default to each family's ``DEFAULT``.
    """

    hidden: tuple[int, ...] = (256, 256)
    activation: str = activations.DEFAULT
    norm: str = norms.DEFAULT
    init: str = inits.DEFAULT
    optimizer: str = optimizers.DEFAULT
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 128
    dropout: float = 0.0  # after every hidden activation
    label_smoothing: float = 0.0  # of the training loss (validation loss is plain cross-entropy)
    class_weight: str = losses.DEFAULT  # training loss weights per class
    schedule: str = schedules.DEFAULT  # learning rate over the planned steps

    def __post_init__(self) -> None:
        errors = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                TRAIN_SCHEMA[f.name].parse(value, strict=False)
            except _Invalid as err:
                errors.append(_message(f.name, value, err))
        if errors:
            raise PlanError("\n".join(errors))

    def with_params(self, params: Mapping[str, Any]) -> TrainConfig:
        """Return a copy with ``params`` applied, coerced to each field's type."""
        return dataclasses.replace(self, **coerce_params(params))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d


TRAIN_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))
_FLOAT_FIELDS = ("lr", "weight_decay", "momentum", "dropout", "label_smoothing")


def coerce_params(
    params: Mapping[str, Any], *, strict: bool = False, where: str = ""
) -> dict[str, Any]:
    """Convert user- or storage-supplied values to :class:`TrainConfig` field types, checking
    each against :data:`TRAIN_SCHEMA` (type, range, finiteness).

    Values arrive as TOML scalars (``strict``: an integer field takes only an integer, a float
    field only a number), ``--fix`` strings or Optuna-stored params; a width list may arrive as
    ``"256x256"``. Raises :class:`PlanError` with one line per bad value, prefixed by ``where``.
    """
    out: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in params.items():
        if key not in TRAIN_SCHEMA:
            errors.append(f"unknown parameter {key!r}; known: {', '.join(TRAIN_FIELDS)}")
            continue
        try:
            out[key] = TRAIN_SCHEMA[key].parse(value, strict)
        except _Invalid as err:
            errors.append(_message(key, value, err))
    if errors:
        raise PlanError("\n".join(f"{where}: {e}" if where else e for e in errors))
    return out


@dataclass(frozen=True)
class StageSpec:
    """One stage: a categorical grid over :class:`TrainConfig` fields and how a point is scored.

    ``kind``:
      * ``sweep`` -- train each grid point on the train split for ``epochs`` and score it on the
        validation split (``objective`` ``peak``: best epoch; ``final``: last epoch).
      * ``cv`` -- ``folds``-fold stratified cross-validation on the train split; the objective is
        the mean over folds of each fold's final validation accuracy (per-fold values are kept).
      * ``lr_range_test`` -- an LR range test (torch-lr-finder) picks a learning rate at the
        steepest loss descent; each candidate (a multiple of the snapped suggestion) is then
        verified by a short training run scored like a sweep.
    """

    name: str
    kind: str
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    epochs: int = 1
    objective: str = "peak"
    folds: int = 0
    repeats: int = 1  # seeds per grid point (per fold in CV), trained together
    keep_incumbent_unless_significant: bool = False
    pruner: str = "none"  # sweeps: "median" over epochs; cv: "wilcoxon" over validation blocks
    pruner_warmup: int = 3  # median: epochs every point trains before it can be pruned
    pruner_p: float = 0.1  # wilcoxon: one-sided p-value below which a point is pruned
    blocks: int = 10  # wilcoxon: validation blocks per fold (the paired instances)
    pruner_min_folds: int = 2  # wilcoxon: folds every point trains before it can be pruned
    patience: int = 0  # sweeps: a run stops when validation loss stalls this many epochs
    min_steps: int = 0  # train at least this many optimizer steps: more epochs on small data
    sampler: str = "grid"  # "tpe": points proposed by TPE over `space`, `round_size` at a time
    space: dict[str, dict[str, Any]] = field(default_factory=dict)  # tpe: {low, high, log}
    trials: int = 0  # tpe: points in all
    round_size: int = 8  # tpe: points proposed together (and trained as one fused group)
    description: str = ""
    # lr_range_test only
    param: str = "lr"
    start_lr: float = 1e-7
    end_lr: float = 1.0
    range_optimizer: str = optimizers.DEFAULT
    snap: str = "decade"
    candidates: tuple[float, ...] = (1.0,)

    @property
    def params(self) -> tuple[str, ...]:
        """The :class:`TrainConfig` fields this stage chooses for later stages."""
        if self.kind == "lr_range_test":
            return (self.param,)
        return tuple(self.space) if self.sampler == "tpe" else tuple(self.grid)

    @property
    def n_points(self) -> int:
        """Points the stage trains in all (the LR candidates, the grid, or TPE's trials)."""
        if self.kind == "lr_range_test":
            return len(self.candidates)
        if self.sampler == "tpe":
            return self.trials
        return math.prod(len(v) for v in self.grid.values())

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["grid"] = {k: list(v) for k, v in self.grid.items()}
        d["space"] = {k: dict(v) for k, v in self.space.items()}
        d["candidates"] = list(self.candidates)
        return d

    def contains(self, params: Mapping[str, Any]) -> bool:
        """Whether ``params`` (a point as stored in the stage's study) lies in this stage's
        grid or space: what a finished study carries forward must."""
        if set(params) != set(self.params):
            return False
        if self.kind == "lr_range_test":  # the candidates are multiples of the range test's pick
            value = params[self.param]
            return isinstance(value, (int, float)) and math.isfinite(value) and value > 0
        if self.sampler == "tpe":
            for key, rng in self.space.items():
                value = params[key]
                if "choices" in rng:
                    if value not in rng["choices"]:
                        return False
                elif not (isinstance(value, (int, float)) and rng["low"] <= value <= rng["high"]):
                    return False
            return True
        return all(params[key] in values for key, values in self.grid.items())


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


def planned_epochs(epochs: int, min_steps: int, n_rows: int, batch_size: int) -> int:
    """``epochs``, or more where that many epochs over ``n_rows`` rows would take fewer than
    ``min_steps`` optimizer steps: a plan written for the full data set still trains a small
    one long enough (early stopping, where set, ends it when validation loss stalls)."""
    if min_steps <= 0 or n_rows <= 0:
        return epochs
    return max(epochs, math.ceil(min_steps / math.ceil(n_rows / batch_size)))


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise PlanError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def _parse_stage(raw: Mapping[str, Any], defaults: TrainConfig, where: str) -> StageSpec:
    allowed = {f.name for f in dataclasses.fields(StageSpec)} | {"optimizer"}
    unknown = set(raw) - allowed
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if "name" not in raw or "kind" not in raw:
        raise PlanError(f"{where}: every stage needs 'name' and 'kind'")
    kind = raw["kind"]
    _check_choice(f"{where} kind", kind, STAGE_KINDS)
    grid_raw = raw.get("grid", {})
    if not isinstance(grid_raw, Mapping):
        raise PlanError(f"{where}: 'grid' must be a table of lists")
    grid: dict[str, tuple[Any, ...]] = {}
    for key, values in grid_raw.items():
        if not isinstance(values, list) or not values:
            raise PlanError(f"{where}: grid.{key} must be a non-empty list")
        # Validate every value by building a config with it.
        for v in values:
            defaults.with_params({key: v})
        grid[key] = tuple(_stored(v) for v in values)
    space = _parse_space(raw.get("space", {}), defaults, where)
    kwargs = {k: v for k, v in raw.items() if k not in ("grid", "space", "optimizer", "candidates")}
    if "optimizer" in raw:
        kwargs["range_optimizer"] = raw["optimizer"]
    if "candidates" in raw:
        kwargs["candidates"] = tuple(float(c) for c in raw["candidates"])
    spec = StageSpec(grid=grid, space=space, **kwargs)
    _check_choice(f"{where} sampler", spec.sampler, SAMPLERS)
    if spec.sampler == "tpe":
        if spec.kind == "lr_range_test" or spec.grid or not spec.space:
            raise PlanError(f"{where}: a tpe stage is a sweep or cv over a [space], not a [grid]")
        if spec.trials < 1 or spec.round_size < 1:
            raise PlanError(f"{where}: a tpe stage needs trials >= 1 and round_size >= 1")
    elif spec.space:
        raise PlanError(f'{where}: [space] needs sampler = "tpe" (a grid stage takes [grid])')
    elif spec.kind != "lr_range_test" and not spec.grid:
        raise PlanError(f"{where}: a {kind} stage needs a non-empty [grid]")
    if spec.kind == "lr_range_test":
        if spec.grid:
            raise PlanError(f"{where}: an lr_range_test stage takes 'candidates', not a grid")
        if not 0 < spec.start_lr < spec.end_lr:
            raise PlanError(f"{where}: need 0 < start_lr < end_lr")
        _check_choice(f"{where} snap", spec.snap, ("none", "decade"))
        _check_choice(f"{where} optimizer", spec.range_optimizer, tuple(optimizers.REGISTRY))
    _check_choice(f"{where} objective", spec.objective, OBJECTIVES)
    if spec.kind == "cv":
        if spec.folds < 2:
            raise PlanError(f"{where}: a cv stage needs folds >= 2")
        if spec.objective != "mean":
            raise PlanError(f"{where}: a cv stage's objective is 'mean' (over folds)")
    elif spec.objective == "mean":
        raise PlanError(f"{where}: objective 'mean' needs kind = 'cv'")
    if spec.epochs < 1:
        raise PlanError(f"{where}: epochs must be >= 1")
    if spec.repeats < 1:
        raise PlanError(f"{where}: repeats must be >= 1")
    pruners = ("none", "wilcoxon") if spec.kind == "cv" else ("none", "median")
    _check_choice(f"{where} pruner (for a {spec.kind} stage)", spec.pruner, pruners)
    if spec.blocks < 2 or spec.pruner_warmup < 1 or not 0 < spec.pruner_p < 1:
        raise PlanError(f"{where}: need blocks >= 2, pruner_warmup >= 1, 0 < pruner_p < 1")
    if spec.pruner_min_folds < 1 or (spec.kind == "cv" and spec.pruner_min_folds > spec.folds):
        raise PlanError(f"{where}: need 1 <= pruner_min_folds <= folds")
    if spec.min_steps < 0:
        raise PlanError(f"{where}: min_steps must be >= 0")
    if spec.patience < 0 or (spec.patience and spec.kind != "sweep"):
        raise PlanError(f"{where}: patience (early stopping) is a sweep option, >= 0")
    return spec


def _stored(value: Any) -> Any:
    """A grid value or choice as Optuna stores it: a scalar, so widths become "256x256"."""
    return "x".join(str(int(w)) for w in value) if isinstance(value, list) else value


def _parse_space(raw: Any, defaults: TrainConfig, where: str) -> dict[str, dict[str, Any]]:
    """``[stages.space]``: per field ``{low, high[, log]}`` (a float or, for ``batch_size``, an
    int range) or ``{choices = [...]}``; every bound and choice must make a valid config."""
    if not isinstance(raw, Mapping):
        raise PlanError(f"{where}: 'space' must be a table of ranges")
    space: dict[str, dict[str, Any]] = {}
    for key, rng in raw.items():
        if not isinstance(rng, Mapping):
            raise PlanError(f"{where}: space.{key} must be {{low, high[, log]}} or {{choices}}")
        unknown = set(rng) - {"low", "high", "log", "choices"}
        if unknown:
            raise PlanError(f"{where}: space.{key}: unknown key(s) {', '.join(sorted(unknown))}")
        if "choices" in rng:
            choices = rng["choices"]
            if set(rng) != {"choices"} or not isinstance(choices, list) or not choices:
                raise PlanError(f"{where}: space.{key}.choices must be a non-empty list alone")
            for v in choices:
                defaults.with_params({key: v})
            space[key] = {"choices": [_stored(v) for v in choices]}
            continue
        if "low" not in rng or "high" not in rng:
            raise PlanError(f"{where}: space.{key} needs low and high")
        if key not in _FLOAT_FIELDS and key != "batch_size":
            raise PlanError(f"{where}: space.{key}: a range needs a numeric field; use choices")
        low, high, log = rng["low"], rng["high"], bool(rng.get("log", False))
        defaults.with_params({key: low})
        defaults.with_params({key: high})
        if not low < high or (log and low <= 0):
            raise PlanError(f"{where}: space.{key}: need low < high (and low > 0 with log)")
        space[key] = {"low": low, "high": high, "log": log}
    return space


_TOP_KEYS = ("name", "description", "reuse", "defaults", "stages", "final")


def _check_table(
    schema: Mapping[str, Any], table: Mapping[str, Any], where: str, errors: list[str]
) -> None:
    """Check every key of ``table`` that ``schema`` knows; one line per bad value."""
    for key, value in table.items():
        if key in schema:
            try:
                schema[key].parse(value, strict=True)
            except _Invalid as err:
                errors.append(f"{where}: {_message(key, value, err)}")


def _values_errors(
    key: str, values: Any, where: str, what: str, parse, errors: list[str], limit: int
) -> None:
    """``what`` (``grid.lr``, ``candidates``...) must be a non-empty list of distinct values,
    each accepted by ``parse``."""
    if not isinstance(values, list) or not values or len(values) > limit:
        errors.append(
            f"{where}: {what} must be a non-empty list of at most {limit} values, got "
            f"{_show(values)}"
        )
        return
    seen: list[Any] = []
    for j, v in enumerate(values):
        try:
            parsed = parse(v)
        except _Invalid as err:
            errors.append(f"{where}: {what}[{j}]: {_message(key, v, err)}")
            continue
        if parsed in seen:
            errors.append(f"{where}: {what}[{j}]: {_show(v)} is listed twice")
        seen.append(parsed)


def _stage_schema_errors(raw: Any, where: str) -> list[str]:
    """Type and range errors of one ``[[stages]]`` entry, one line each."""
    if not isinstance(raw, Mapping):
        return [f"{where} must be a table ([[stages]]), got {_show(raw)} ({_type_word(raw)})"]
    if isinstance(raw.get("name"), str):
        where += f" ({raw['name']!r})"
    errors: list[str] = []
    unknown = set(raw) - set(STAGE_SCHEMA) - {"grid", "space", "candidates"}
    if unknown:
        errors.append(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    if "name" not in raw or "kind" not in raw:
        errors.append(f"{where}: every stage needs 'name' and 'kind'")
    _check_table(STAGE_SCHEMA, raw, where, errors)
    stage_name = raw.get("name")
    if isinstance(stage_name, str) and (
        stage_name == FINAL_STAGE or re.fullmatch(r"v\d+", stage_name)
    ):
        errors.append(
            f"{where}: name {_show(stage_name)} is reserved ('final' is the final job, "
            "'vN' a study version)"
        )
    grid = raw.get("grid", {})
    if not isinstance(grid, Mapping):
        errors.append(f"{where}: grid must be a table of lists, got {_show(grid)}")
        grid = {}
    for key, values in grid.items():
        if key not in TRAIN_SCHEMA:
            errors.append(
                f"{where}: grid.{key}: unknown parameter {key!r}; known: {', '.join(TRAIN_FIELDS)}"
            )
            continue
        parse = functools.partial(TRAIN_SCHEMA[key].parse, strict=True)
        _values_errors(key, values, where, f"grid.{key}", parse, errors, MAX_GRID_VALUES)
    space = raw.get("space", {})
    if not isinstance(space, Mapping):
        space = {}  # _parse_space says why
    for key, rng in space.items():
        if key not in TRAIN_SCHEMA or not isinstance(rng, Mapping):
            continue  # _parse_space says why
        parse = functools.partial(TRAIN_SCHEMA[key].parse, strict=True)
        for bound in ("low", "high"):
            if bound in rng and isinstance(TRAIN_SCHEMA[key], _Number):  # else: use choices
                try:
                    parse(rng[bound])
                except _Invalid as err:
                    errors.append(f"{where}: space.{key}.{bound}: {_message(key, rng[bound], err)}")
        if "log" in rng and not isinstance(rng["log"], bool):
            errors.append(
                f"{where}: space.{key}.log must be true or false, got {_show(rng['log'])}"
            )
        if "choices" in rng:
            what = f"space.{key}.choices"
            _values_errors(key, rng["choices"], where, what, parse, errors, MAX_GRID_VALUES)
    if "candidates" in raw:
        parse = functools.partial(_Number(low=0, low_open=True).parse, strict=True)
        _values_errors("candidates", raw["candidates"], where, "candidates", parse, errors, 100)
    return errors


def _schema_errors(data: Mapping[str, Any], name: str) -> list[str]:
    """Every type and range error of a plan file, one line each: the key, what it must be and
    what it is."""
    top = f"plan {name!r}"
    errors: list[str] = []
    unknown = set(data) - set(_TOP_KEYS)
    if unknown:
        errors.append(
            f"{top}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(_TOP_KEYS)}"
        )
    _check_table({"name": PLAN_NAME, "description": _Text(), "reuse": _Bool()}, data, top, errors)
    defaults = data.get("defaults", {})
    if not isinstance(defaults, Mapping):
        errors.append(
            f"{top}: defaults must be a table ([defaults]), got {_show(defaults)} "
            f"({_type_word(defaults)})"
        )
    else:
        try:
            coerce_params(defaults, strict=True, where=f"{top} [defaults]")
        except PlanError as err:
            errors.extend(str(err).splitlines())
    stages = data.get("stages", [])
    if not isinstance(stages, list):
        errors.append(
            f"{top}: stages must be a list of tables ([[stages]]), got {_show(stages)} "
            f"({_type_word(stages)})"
        )
    else:
        for i, raw in enumerate(stages):
            errors += _stage_schema_errors(raw, f"{top} stage {i + 1}")
    final = data.get("final", {})
    if not isinstance(final, Mapping):
        errors.append(
            f"{top}: final must be a table ([final]), got {_show(final)} ({_type_word(final)})"
        )
    else:
        unknown = set(final) - set(FINAL_SCHEMA)
        if unknown:
            errors.append(
                f"{top} [final]: unknown key(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(FINAL_SCHEMA)}"
            )
        _check_table(FINAL_SCHEMA, final, f"{top} [final]", errors)
    return errors


def parse_plan(data: Mapping[str, Any], *, name: str, path: Path | None = None) -> Plan:
    """Validate a plan read from TOML. Raises :class:`PlanError` naming the bad entries: every
    type or range error first (one line each), else the first inconsistency."""
    errors = _schema_errors(data, name)
    if "name" not in data:  # the plan is named after its file: that name must do too
        try:
            PLAN_NAME.parse(name, strict=True)
        except _Invalid as err:
            errors.insert(
                0,
                f"plan file {name!r}: the plan is named after its file, and "
                f'{_message("name", name, err)}; set name = "..." in the plan',
            )
    if errors:
        raise PlanError("\n".join(errors))
    defaults = TrainConfig().with_params(coerce_params(data.get("defaults", {}), strict=True))
    stages_raw = data.get("stages", [])
    if not isinstance(stages_raw, list) or not stages_raw:
        raise PlanError(f"plan {name!r}: needs at least one [[stages]] entry")
    stages = tuple(
        _parse_stage(s, defaults, f"plan {name!r} stage {i + 1}") for i, s in enumerate(stages_raw)
    )
    names = [s.name for s in stages]
    if len(set(names)) != len(names) or "final" in names:
        raise PlanError(f"plan {name!r}: stage names must be unique and not 'final'")
    owners: dict[str, str] = {}
    for s in stages:
        for p in s.params:
            if p in owners:
                raise PlanError(
                    f"plan {name!r}: {p!r} is tuned by both {owners[p]!r} and {s.name!r}"
                )
            owners[p] = s.name
    final_raw = dict(data.get("final", {}))
    try:
        final = FinalSpec(**final_raw)
    except TypeError as err:
        raise PlanError(f"plan {name!r} [final]: {err}") from None
    return Plan(
        name=str(data.get("name", name)),
        defaults=defaults,
        stages=stages,
        final=final,
        description=str(data.get("description", "")),
        path=path,
        reuse=bool(data.get("reuse", True)),
    )


def plan_search_dirs(workdir: Path) -> list[Path]:
    """Where ``--plan NAME`` is looked up: the workdir's ``studies/``, the checkout's, the wheel's."""
    package_dir = Path(__file__).resolve().parent
    return [workdir / "studies", package_dir.parent / "studies", package_dir / "_studies"]


def load_plan(name_or_path: str, workdir: Path) -> Plan:
    """Load ``--plan NAME|PATH``: a path to a TOML file, or the name of one in ``studies/``."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.parent != Path("."):
        if not candidate.is_file():
            raise PlanError(f"plan file {candidate} does not exist")
        path = candidate
    else:
        dirs = plan_search_dirs(workdir)
        found = [d / f"{name_or_path}.toml" for d in dirs if (d / f"{name_or_path}.toml").is_file()]
        if not found:
            available = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.toml")})
            raise PlanError(
                f"no plan named {name_or_path!r}; available: {', '.join(available) or 'none'}"
            )
        path = found[0]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise PlanError(f"{path}: not valid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise PlanError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise PlanError(f"{path}: cannot read the plan ({err.strerror or err})") from None
    return parse_plan(data, name=path.stem, path=path)
