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
    :mod:`tuner.search`), and fixes the winners for every later stage.
``[final]``
    How the chosen configuration is retrained and scored once on the test split.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.errors import PlanError

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "tanh", "silu")
NORMS = ("none", "batch", "layer")
INITS = ("default", "xavier_uniform", "kaiming_normal")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "onecycle")
CLASS_WEIGHTS = ("none", "balanced", "sqrt_balanced")
SAMPLERS = ("grid", "tpe")

STAGE_KINDS = ("lr_range_test", "cv", "sweep")
OBJECTIVES = ("peak", "final", "mean")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run of the MLP.

    Stages tune these fields by name: a stage grid ``{"activation": ["relu", "gelu"]}`` varies
    :attr:`activation` and keeps every other field as fixed by earlier stages or the defaults.
    """

    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    norm: str = "none"
    init: str = "default"
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 128
    dropout: float = 0.0  # after every hidden activation
    label_smoothing: float = 0.0  # of the training loss (validation loss is plain cross-entropy)
    class_weight: str = "none"  # training loss weights: inverse class frequency, or its root
    schedule: str = "constant"  # learning rate over the planned steps: cosine or one-cycle

    def __post_init__(self) -> None:
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("init", self.init, INITS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("class_weight", self.class_weight, CLASS_WEIGHTS)
        if not self.hidden or any(int(h) <= 0 for h in self.hidden):
            raise PlanError(
                f"hidden must be a non-empty list of positive widths, got {self.hidden}"
            )
        if not self.lr > 0:
            raise PlanError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise PlanError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.batch_size < 1:
            raise PlanError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.dropout < 1:
            raise PlanError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.label_smoothing < 1:
            raise PlanError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def with_params(self, params: Mapping[str, Any]) -> TrainConfig:
        """Return a copy with ``params`` applied, coerced to each field's type."""
        return dataclasses.replace(self, **coerce_params(params))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d


TRAIN_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))
_FLOAT_FIELDS = ("lr", "weight_decay", "momentum", "dropout", "label_smoothing")


def coerce_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Convert user- or storage-supplied values to :class:`TrainConfig` field types.

    Values arrive as TOML scalars, ``--fix`` strings or Optuna-stored params; a width list may
    arrive as ``"256x256"``.
    """
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key not in TRAIN_FIELDS:
            raise PlanError(f"unknown parameter {key!r}; known: {', '.join(TRAIN_FIELDS)}")
        try:
            if key == "hidden":
                if isinstance(value, str):
                    value = [int(v) for v in value.lower().split("x")]
                out[key] = tuple(int(v) for v in value)
            elif key in _FLOAT_FIELDS:
                out[key] = float(value)
            elif key == "batch_size":
                out[key] = int(value)
            else:
                out[key] = str(value)
        except (TypeError, ValueError) as err:
            raise PlanError(f"bad value {value!r} for parameter {key!r}: {err}") from None
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
    range_optimizer: str = "adam"
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

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.stages)
        raise PlanError(f"plan {self.name!r} has no stage {name!r}; its stages are: {known}")

    def index(self, name: str) -> int:
        return self.stages.index(self.stage(name))


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
        _check_choice(f"{where} optimizer", spec.range_optimizer, OPTIMIZERS)
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


def parse_plan(data: Mapping[str, Any], *, name: str, path: Path | None = None) -> Plan:
    """Validate a plan read from TOML. Raises :class:`PlanError` naming the bad entry."""
    unknown = set(data) - {"name", "description", "defaults", "stages", "final"}
    if unknown:
        raise PlanError(f"plan {name!r}: unknown top-level key(s) {', '.join(sorted(unknown))}")
    defaults = TrainConfig().with_params(data.get("defaults", {}))
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
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise PlanError(f"{path}: not valid TOML: {err}") from None
    return parse_plan(data, name=path.stem, path=path)
