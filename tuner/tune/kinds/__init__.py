"""Stage kinds, by name: how a stage of each kind is planned, trained and described.

A plan's ``kind = "..."`` picks one of :data:`KINDS`. Each kind is one module with one
:class:`~tuner.tune.kinds.base.StageKind` subclass (its name, its own plan keys and their
checks, how it finds and trains its points, how its training is identified for reuse, how it
describes itself); the stage runner, the plan loader, notes and the report ask the kind and
never switch on its name. Adding a kind is a new module here and one entry below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from tuner.config import StageSpec
from tuner.errors import PlanError
from tuner.tune.kinds.base import StageKind
from tuner.tune.kinds.cv import CrossValidation
from tuner.tune.kinds.lr_range_test import RangeTest
from tuner.tune.kinds.sweep import Sweep

KINDS: dict[str, StageKind] = {
    kind.name: kind for kind in (RangeTest(), CrossValidation(), Sweep())
}


def get_kind(name: str) -> StageKind:
    """The kind registered as ``name``; :class:`PlanError` with the known names otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise PlanError(f"unknown stage kind {name!r}; choose one of: {', '.join(KINDS)}") from None


_SHARED = frozenset(f.name for f in dataclasses.fields(StageSpec)) - {
    "options",
    "params",
    "n_points",
}


def stage_spec(*, name: str, kind: str, options: Any = None, **settings: Any) -> StageSpec:
    """A :class:`StageSpec` of ``kind``: the shared ``settings``, the kind's options (given, or
    built from the kind's own keys among ``settings``, checked by the kind) and the ``params``
    and ``n_points`` the kind resolves. ``stage_spec(name="wd", kind=..., folds=3, ...)``."""
    impl = get_kind(kind)
    own = {k: settings.pop(k) for k in list(settings) if k in impl.option_keys}
    if options is None:
        options = impl.parse_options(own, f"stage {name!r}")
    elif own:
        raise TypeError(f"stage_spec: pass either options or {', '.join(own)}")
    spec = StageSpec(name=name, kind=kind, options=options, **settings)
    return dataclasses.replace(spec, params=impl.params(spec), n_points=impl.n_points(spec))


def spec_from_dict(recorded: Mapping[str, Any]) -> StageSpec | None:
    """The stage a study recorded (its user attr ``stage``, :meth:`StageSpec.to_dict`), or
    ``None`` when its kind is not registered (a study of another version of tuner)."""
    impl = KINDS.get(str(recorded.get("kind")))
    if impl is None or "name" not in recorded:
        return None
    settings = {k: v for k, v in recorded.items() if k in _SHARED}
    settings["grid"] = {k: tuple(v) for k, v in (settings.get("grid") or {}).items()}
    settings["space"] = dict(settings.get("space") or {})
    own = {k: v for k, v in recorded.items() if k in impl.option_keys}
    try:
        return stage_spec(**settings, **own)
    except (PlanError, TypeError):
        return None
