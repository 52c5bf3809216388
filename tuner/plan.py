"""Plans: which stages run, in which order, over which grids, scored how.

A plan is a TOML file in ``studies/`` (``seed.toml`` reproduces the published study,
``quick.toml`` is the same sequence made tiny). It is data, not code: this module only reads
and validates it into the frozen dataclasses of :mod:`tuner.config` (and
:mod:`tuner.train.config`) that the rest of the package consumes.

A plan has three parts:

``[defaults]``
    The training configuration before any stage has chosen anything (architecture, activation,
    optimizer, ...). Every field of :class:`~tuner.train.config.TrainConfig` may be set.
``[[stages]]``
    In order. Each stage has a ``kind`` (:mod:`tuner.tune.kinds`: how its points are found,
    trained and scored) and tunes one or more :class:`~tuner.train.config.TrainConfig`
    fields over a categorical grid, or over a ``[space]`` of ranges and choices searched by TPE (its
    ``sampler``, see :mod:`tuner.tune.samplers`), and fixes the winners for every later
    stage. The keys every stage takes are checked here, a kind's own keys by the kind.
``[final]``
    How the chosen configuration is retrained and scored once on the test split.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tuner.checks import (
    Bool,
    Choice,
    Invalid,
    Name,
    Number,
    Text,
    epochs_rule,
    message,
    show,
    type_word,
    values_errors,
)
from tuner.config import (
    FINAL_STAGE,
    MAX_FOLDS,
    MAX_GRID_VALUES,
    OBJECTIVES,
    FinalSpec,
    Plan,
    StageSpec,
)
from tuner.data.spec import IMPUTE, SCALERS
from tuner.errors import PlanError
from tuner.train.config import FLOAT_FIELDS, TRAIN_FIELDS, TRAIN_SCHEMA, TrainConfig, coerce_params
from tuner.tune.kinds import KINDS, stage_spec
from tuner.tune.samplers import SAMPLERS

STAGE_SCHEMA: dict[str, Any] = {
    "name": Name(dots=False),
    "kind": Choice(tuple(KINDS)),
    "epochs": epochs_rule(),
    "objective": Choice(OBJECTIVES),
    "repeats": Number(integer=True, low=1, high=100),
    "keep_incumbent_unless_significant": Bool(),
    "pruner": Choice(("none", "median", "wilcoxon")),
    "pruner_warmup": epochs_rule(),
    "pruner_p": Number(low=0, high=1, low_open=True, high_open=True),
    "blocks": Number(integer=True, low=2, high=1000),
    "pruner_min_folds": Number(integer=True, low=1, high=MAX_FOLDS),
    "min_steps": Number(integer=True, low=0, high=10**9),
    "sampler": Choice(tuple(SAMPLERS)),
    "trials": Number(integer=True, low=0, high=10_000),
    "round_size": Number(integer=True, low=1, high=1_000),
    "description": Text(),
    # "grid" and "space" are tables: see _stage_schema_errors; a kind's own keys: its schema
}
"""What each key every ``[[stages]]`` entry may have accepts."""

FINAL_SCHEMA: dict[str, Any] = {
    "epochs": epochs_rule(),
    "patience": epochs_rule(0),
    "restore_best": Bool(),
    "min_steps": Number(integer=True, low=0, high=10**9),
}
"""What each key of ``[final]`` accepts."""

PLAN_NAME = Name(dots=True)


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise PlanError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def _parse_stage(raw: Mapping[str, Any], defaults: TrainConfig, where: str) -> StageSpec:
    if "name" not in raw or "kind" not in raw:
        raise PlanError(f"{where}: every stage needs 'name' and 'kind'")
    _check_choice(f"{where} kind", raw["kind"], tuple(KINDS))
    kind = KINDS[raw["kind"]]
    unknown = set(raw) - set(STAGE_SCHEMA) - {"grid", "space"} - kind.option_keys
    if unknown:
        raise PlanError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))} (for a {kind.name} stage)"
        )
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
    shared = {k: v for k, v in raw.items() if k in STAGE_SCHEMA}
    options = kind.parse_options({k: v for k, v in raw.items() if k in kind.option_keys}, where)
    spec = stage_spec(grid=grid, space=space, options=options, **shared)
    _check_choice(f"{where} sampler", spec.sampler, tuple(SAMPLERS))
    SAMPLERS[spec.sampler].check(spec, where)
    _check_choice(f"{where} objective", spec.objective, OBJECTIVES)
    if spec.epochs < 1:
        raise PlanError(f"{where}: epochs must be >= 1")
    if spec.repeats < 1:
        raise PlanError(f"{where}: repeats must be >= 1")
    if spec.blocks < 2 or spec.pruner_warmup < 1 or not 0 < spec.pruner_p < 1:
        raise PlanError(f"{where}: need blocks >= 2, pruner_warmup >= 1, 0 < pruner_p < 1")
    if spec.pruner_min_folds < 1:
        raise PlanError(f"{where}: need 1 <= pruner_min_folds <= folds")
    if spec.min_steps < 0:
        raise PlanError(f"{where}: min_steps must be >= 0")
    kind.validate(spec, where)
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
        if key not in FLOAT_FIELDS and key != "batch_size":
            raise PlanError(f"{where}: space.{key}: a range needs a numeric field; use choices")
        low, high, log = rng["low"], rng["high"], bool(rng.get("log", False))
        defaults.with_params({key: low})
        defaults.with_params({key: high})
        if not low < high or (log and low <= 0):
            raise PlanError(f"{where}: space.{key}: need low < high (and low > 0 with log)")
        space[key] = {"low": low, "high": high, "log": log}
    return space


_TOP_KEYS = ("name", "description", "reuse", "data", "defaults", "stages", "final")

DATA_SCHEMA: dict[str, Any] = {
    "scaler": Choice(SCALERS),
    "missing_indicators": Bool(),
    "impute": Choice(IMPUTE),
}
"""The keys of a plan's ``[data]``: how a table is encoded when neither a flag nor the data
description says (:func:`tuner.data.spec.build_spec`); the UCI format ignores them."""


def _check_table(
    schema: Mapping[str, Any], table: Mapping[str, Any], where: str, errors: list[str]
) -> None:
    """Check every key of ``table`` that ``schema`` knows; one line per bad value."""
    for key, value in table.items():
        if key in schema:
            try:
                schema[key].parse(value, strict=True)
            except Invalid as err:
                errors.append(f"{where}: {message(key, value, err)}")


def _stage_schema_errors(raw: Any, where: str) -> list[str]:
    """Type and range errors of one ``[[stages]]`` entry, one line each."""
    if not isinstance(raw, Mapping):
        return [f"{where} must be a table ([[stages]]), got {show(raw)} ({type_word(raw)})"]
    if isinstance(raw.get("name"), str):
        where += f" ({raw['name']!r})"
    errors: list[str] = []
    kind = KINDS.get(raw["kind"]) if isinstance(raw.get("kind"), str) else None
    own = kind.option_keys if kind is not None else frozenset()
    unknown = set(raw) - set(STAGE_SCHEMA) - {"grid", "space"} - own
    if kind is None:  # an unknown kind is reported below; its keys are not guessed at
        unknown -= set().union(*(k.option_keys for k in KINDS.values()))
    if unknown:
        what = f" (for a {kind.name} stage)" if kind is not None else ""
        errors.append(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}{what}")
    if "name" not in raw or "kind" not in raw:
        errors.append(f"{where}: every stage needs 'name' and 'kind'")
    _check_table(STAGE_SCHEMA, raw, where, errors)
    if kind is not None:
        errors += kind.option_errors(raw, where)
    stage_name = raw.get("name")
    if isinstance(stage_name, str) and (
        stage_name == FINAL_STAGE or re.fullmatch(r"v\d+", stage_name)
    ):
        errors.append(
            f"{where}: name {show(stage_name)} is reserved ('final' is the final job, "
            "'vN' a study version)"
        )
    grid = raw.get("grid", {})
    if not isinstance(grid, Mapping):
        errors.append(f"{where}: grid must be a table of lists, got {show(grid)}")
        grid = {}
    for key, values in grid.items():
        if key not in TRAIN_SCHEMA:
            errors.append(
                f"{where}: grid.{key}: unknown parameter {key!r}; known: {', '.join(TRAIN_FIELDS)}"
            )
            continue
        parse = functools.partial(TRAIN_SCHEMA[key].parse, strict=True)
        values_errors(key, values, where, f"grid.{key}", parse, errors, MAX_GRID_VALUES)
    space = raw.get("space", {})
    if not isinstance(space, Mapping):
        space = {}  # _parse_space says why
    for key, rng in space.items():
        if key not in TRAIN_SCHEMA or not isinstance(rng, Mapping):
            continue  # _parse_space says why
        parse = functools.partial(TRAIN_SCHEMA[key].parse, strict=True)
        for bound in ("low", "high"):
            if bound in rng and isinstance(TRAIN_SCHEMA[key], Number):  # else: use choices
                try:
                    parse(rng[bound])
                except Invalid as err:
                    errors.append(f"{where}: space.{key}.{bound}: {message(key, rng[bound], err)}")
        if "log" in rng and not isinstance(rng["log"], bool):
            errors.append(f"{where}: space.{key}.log must be true or false, got {show(rng['log'])}")
        if "choices" in rng:
            what = f"space.{key}.choices"
            values_errors(key, rng["choices"], where, what, parse, errors, MAX_GRID_VALUES)
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
    _check_table({"name": PLAN_NAME, "description": Text(), "reuse": Bool()}, data, top, errors)
    _section_errors(data, "data", DATA_SCHEMA, top, errors)
    defaults = data.get("defaults", {})
    if not isinstance(defaults, Mapping):
        errors.append(
            f"{top}: defaults must be a table ([defaults]), got {show(defaults)} "
            f"({type_word(defaults)})"
        )
    else:
        try:
            coerce_params(defaults, strict=True, where=f"{top} [defaults]")
        except PlanError as err:
            errors.extend(str(err).splitlines())
    stages = data.get("stages", [])
    if not isinstance(stages, list):
        errors.append(
            f"{top}: stages must be a list of tables ([[stages]]), got {show(stages)} "
            f"({type_word(stages)})"
        )
    else:
        for i, raw in enumerate(stages):
            errors += _stage_schema_errors(raw, f"{top} stage {i + 1}")
    _section_errors(data, "final", FINAL_SCHEMA, top, errors)
    return errors


def _section_errors(
    data: Mapping[str, Any], key: str, schema: Mapping[str, Any], top: str, errors: list[str]
) -> None:
    """Errors of the plan's ``[key]`` table (``[final]``, ``[data]``): not a table, unknown
    keys, bad values; one line each."""
    section = data.get(key, {})
    if not isinstance(section, Mapping):
        errors.append(
            f"{top}: {key} must be a table ([{key}]), got {show(section)} ({type_word(section)})"
        )
        return
    unknown = set(section) - set(schema)
    if unknown:
        errors.append(
            f"{top} [{key}]: unknown key(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(schema)}"
        )
    _check_table(schema, section, f"{top} [{key}]", errors)


def parse_plan(data: Mapping[str, Any], *, name: str, path: Path | None = None) -> Plan:
    """Validate a plan read from TOML. Raises :class:`PlanError` naming the bad entries: every
    type or range error first (one line each), else the first inconsistency."""
    errors = _schema_errors(data, name)
    if "name" not in data:  # the plan is named after its file: that name must do too
        try:
            PLAN_NAME.parse(name, strict=True)
        except Invalid as err:
            errors.insert(
                0,
                f"plan file {name!r}: the plan is named after its file, and "
                f'{message("name", name, err)}; set name = "..." in the plan',
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
        data=dict(data.get("data", {})),
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
