"""The configuration every part of tuner reads: training runs, stages, plans, and their checks.

:class:`TrainConfig` is one training run of the MLP, :class:`StageSpec` one stage (what every
kind of stage shares; a kind's own options are its dataclass, see :mod:`tuner.tune.kinds`),
:class:`FinalSpec` the final job and :class:`Plan` all of them. The value checks (``Number``,
``Choice``, ``Widths``, ...) say what each plan value must be and produce the one-line errors
the plan loader (:mod:`tuner.plan`) and the kinds report; :func:`fmt_value` and
:func:`point_label` are how a value and a point are written wherever one is shown. This module
is data: it reads no file and knows no stage kind.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.errors import PlanError
from tuner.train.options import FIELDS, activations, inits, losses, norms, optimizers, schedules

SAMPLERS = ("grid", "tpe")

OBJECTIVES = ("peak", "final", "mean")

# Upper bounds of plan values: far beyond any sensible plan, low enough to catch a typo (a
# stage of 5000 folds) before it runs.
MAX_EPOCHS = 10_000
MAX_FOLDS = 100
MAX_WIDTH = 65_536
MAX_LAYERS = 64
MAX_BATCH = 1 << 24
MAX_GRID_VALUES = 1_000
MAX_NAME = 64


# -- schema: what each plan value must be ------------------------------------------------------
class Invalid(Exception):
    """A value that does not fit its field: what was expected, and whether the value had the
    wrong type (``kind="type"``), was outside the range (``"range"``) or not a known choice."""

    def __init__(self, expected: str, kind: str = "type") -> None:
        super().__init__(expected)
        self.expected, self.kind = expected, kind


def show(value: Any) -> str:
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


def type_word(value: Any) -> str:
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


def message(key: str, value: Any, err: Invalid) -> str:
    """One line naming the key, what it must be and what it got."""
    if err.kind == "choice":
        return f"unknown {key} {show(value)}; choose one of: {err.expected}"
    got = show(value) + (f" ({type_word(value)})" if err.kind == "type" else "")
    return f"{key} must be {err.expected}, got {got}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


@dataclass(frozen=True)
class Number:
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
                raise Invalid(self.expected()) from None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise Invalid(self.expected())
        if self.integer:
            if not isinstance(value, numbers.Integral):
                if strict or not (math.isfinite(value) and float(value).is_integer()):
                    raise Invalid(self.expected())
            out: int | float = int(value)
        else:
            try:
                out = float(value)
            except OverflowError:
                raise Invalid(self.expected(finite=True), "range") from None
            if not math.isfinite(out):
                raise Invalid(self.expected(finite=True), "range")
        lo, hi = self.low, self.high
        if (
            lo is not None
            and (out <= lo if self.low_open else out < lo)
            or hi is not None
            and (out >= hi if self.high_open else out > hi)
        ):
            raise Invalid(self.range_text(), "range")
        return out


@dataclass(frozen=True)
class Choice:
    choices: tuple[str, ...]

    def parse(self, value: Any, strict: bool) -> str:
        if isinstance(value, str) and value in self.choices:
            return value
        raise Invalid(", ".join(self.choices), "choice")


@dataclass(frozen=True)
class Bool:
    def parse(self, value: Any, strict: bool) -> bool:
        if isinstance(value, bool):
            return value
        raise Invalid("true or false")


@dataclass(frozen=True)
class Text:
    def parse(self, value: Any, strict: bool) -> str:
        if isinstance(value, str):
            return value
        raise Invalid("a string")


@dataclass(frozen=True)
class Name:
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
            raise Invalid(self.expected)
        if len(value) > MAX_NAME or not self.pattern.fullmatch(value) or ".." in value:
            raise Invalid(self.expected, "range")
        return value


@dataclass(frozen=True)
class Widths:
    """``hidden``: a list of layer widths, or ``"256x256"``."""

    expected = (
        f"a non-empty list of at most {MAX_LAYERS} integer widths in [1, {MAX_WIDTH}] "
        '(e.g. [256, 256] or "256x256")'
    )

    def parse(self, value: Any, strict: bool) -> tuple[int, ...]:
        if isinstance(value, str):
            parts = value.lower().split("x")
            if not all(p.strip().isdigit() for p in parts):
                raise Invalid(self.expected)
            widths = [int(p) for p in parts]
        elif isinstance(value, (list, tuple)):
            widths = []
            for w in value:
                if isinstance(w, bool) or not isinstance(w, numbers.Real):
                    raise Invalid(self.expected)
                if not isinstance(w, numbers.Integral):
                    if strict or not (math.isfinite(w) and float(w).is_integer()):
                        raise Invalid(self.expected)
                widths.append(int(w))
        else:
            raise Invalid(self.expected)
        if not 1 <= len(widths) <= MAX_LAYERS or not all(1 <= w <= MAX_WIDTH for w in widths):
            raise Invalid(self.expected, "range")
        return tuple(widths)


FRACTION = Number(low=0, high=1, high_open=True)

# The option fields accept exactly the names registered in tuner.train.options.
_OPTIONS = {key: Choice(tuple(entries)) for key, entries in FIELDS.items()}

TRAIN_SCHEMA: dict[str, Any] = {
    "hidden": Widths(),
    "activation": _OPTIONS["activation"],
    "norm": _OPTIONS["norm"],
    "init": _OPTIONS["init"],
    "optimizer": _OPTIONS["optimizer"],
    "lr": Number(low=0, low_open=True),
    "weight_decay": Number(low=0),
    "momentum": FRACTION,
    "batch_size": Number(integer=True, low=1, high=MAX_BATCH),
    "dropout": FRACTION,
    "label_smoothing": FRACTION,
    "class_weight": _OPTIONS["class_weight"],
    "schedule": _OPTIONS["schedule"],
}
"""What each :class:`TrainConfig` field accepts (in ``[defaults]``, grids, spaces, ``--fix``)."""


def values_errors(
    key: str, values: Any, where: str, what: str, parse, errors: list[str], limit: int
) -> None:
    """``what`` (``grid.lr``, ``candidates``...) must be a non-empty list of distinct values,
    each accepted by ``parse``."""
    if not isinstance(values, list) or not values or len(values) > limit:
        errors.append(
            f"{where}: {what} must be a non-empty list of at most {limit} values, got "
            f"{show(values)}"
        )
        return
    seen: list[Any] = []
    for j, v in enumerate(values):
        try:
            parsed = parse(v)
        except Invalid as err:
            errors.append(f"{where}: {what}[{j}]: {message(key, v, err)}")
            continue
        if parsed in seen:
            errors.append(f"{where}: {what}[{j}]: {show(v)} is listed twice")
        seen.append(parsed)


def epochs_rule(low: int = 1) -> Number:
    return Number(integer=True, low=low, high=MAX_EPOCHS)


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
            except Invalid as err:
                errors.append(message(f.name, value, err))
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
FLOAT_FIELDS = ("lr", "weight_decay", "momentum", "dropout", "label_smoothing")


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
        except Invalid as err:
            errors.append(message(key, value, err))
    if errors:
        raise PlanError("\n".join(f"{where}: {e}" if where else e for e in errors))
    return out


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
