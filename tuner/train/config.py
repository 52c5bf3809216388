"""One training run's configuration: :class:`TrainConfig`, what each field accepts, and how
user- or storage-supplied values become field values (:func:`coerce_params`).

The fields that name a choice take exactly the names registered in
:mod:`tuner.train.options`; the checks are :mod:`tuner.checks`'. Stages, plans and the final
job (:mod:`tuner.config`) are built on top of this; nothing here knows of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tuner.checks import Choice, Invalid, Number, OrAuto, Widths, message
from tuner.errors import PlanError
from tuner.train.batches import AUTO, resolve_batch
from tuner.train.options import (
    FIELDS,
    activations,
    embeddings,
    inits,
    losses,
    norms,
    optimizers,
    schedules,
)

MAX_BATCH = 1 << 24  # far beyond any sensible batch, low enough to catch a typo

FRACTION = Number(low=0, high=1, high_open=True)

ENSEMBLE_KINDS = ("batch", "mini", "packed")
"""How an ensemble's members are built (:mod:`tuner.train.ensemble`): ``batch`` (TabM's
BatchEnsemble: shared weights, per-member scalings, biases and heads), ``mini`` (TabM-mini: one
per-member input scaling, shared MLP, per-member heads), ``packed`` (independent MLPs)."""
MAX_ENSEMBLE = 64  # members of one ensemble

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
    "batch_size": OrAuto(Number(integer=True, low=1, high=MAX_BATCH)),
    "dropout": FRACTION,
    "label_smoothing": FRACTION,
    "class_weight": _OPTIONS["class_weight"],
    "schedule": _OPTIONS["schedule"],
    "embedding": _OPTIONS["embedding"],
    "embedding_dim": Number(integer=True, low=1, high=1024),
    "bins": Number(integer=True, low=2, high=1024),
    "frequency_scale": Number(low=0, low_open=True, high=100),
    "frequencies": Number(integer=True, low=1, high=1024),
    "ensemble": Number(integer=True, low=1, high=MAX_ENSEMBLE),
    "ensemble_kind": Choice(ENSEMBLE_KINDS),
}
"""What each :class:`TrainConfig` field accepts (in ``[defaults]``, grids, spaces, ``--fix``)."""


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
    batch_size: int | str = 128  # or "auto": from the training rows (batches.resolve_batch)
    dropout: float = 0.0  # after every hidden activation
    label_smoothing: float = 0.0  # of the training loss (validation loss is plain cross-entropy)
    class_weight: str = losses.DEFAULT  # training loss weights per class
    schedule: str = schedules.DEFAULT  # learning rate over the planned steps
    # numeric feature embeddings (tuner.train.options.embeddings); see ADDED
    embedding: str = embeddings.DEFAULT
    embedding_dim: int = 16  # per feature: the MLP reads n_features * embedding_dim values
    bins: int = 48  # piecewise-linear: quantile bins per feature (fewer where values repeat)
    frequency_scale: float = 0.01  # periodic: sigma of the frequencies' initial draw
    frequencies: int = 48  # periodic: learned frequencies per numeric feature
    # ensembles trained as one model (tuner.train.ensemble); 1: a plain MLP. See ADDED
    ensemble: int = (
        1  # members; trained on the mean of their losses, scored on their mean probability
    )
    ensemble_kind: str = "batch"  # batch (TabM), mini (TabM-mini) or packed (independent MLPs)

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

    def for_rows(self, n_rows: int) -> TrainConfig:
        """This configuration as it trains on ``n_rows`` training rows: ``batch_size = "auto"``
        resolved (:func:`~tuner.train.batches.resolve_batch`); the engines call it."""
        if self.batch_size != AUTO:
            return self
        return dataclasses.replace(self, batch_size=resolve_batch(self.batch_size, n_rows))

    def with_params(self, params: Mapping[str, Any]) -> TrainConfig:
        """Return a copy with ``params`` applied, coerced to each field's type."""
        return dataclasses.replace(self, **coerce_params(params))

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        """The fields as plain data. Fields added after the first plans (:data:`ADDED`) are
        left out while at their defaults (unless ``full``), so that configurations written
        before them keep their content hashes, study names and training fingerprints."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        if not full:
            for name in ADDED:
                if d[name] == _DEFAULTS[name]:
                    del d[name]
        return d


TRAIN_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))
FLOAT_FIELDS = ("lr", "weight_decay", "momentum", "dropout", "label_smoothing", "frequency_scale")
ADDED: tuple[str, ...] = (
    "embedding",
    "embedding_dim",
    "bins",
    "frequency_scale",
    "frequencies",
    "ensemble",
    "ensemble_kind",
)
"""Fields that :meth:`TrainConfig.to_dict` leaves out at their defaults (identity unchanged)."""
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


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
