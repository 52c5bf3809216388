"""Model-based stages: TPE proposes the points of a stage, a round at a time.

A stage whose sampler is TPE (:class:`tuner.tune.samplers.TPE`) searches a ``[space]`` of
ranges and choices instead of a grid. Its points are proposed in rounds of ``round_size``: round
``r`` is drawn by Optuna's :class:`~optuna.samplers.TPESampler` from the results of rounds
``0..r-1`` (with the constant liar, so the points of one round spread out), and is then claimed,
trained as one fused group and told like the points of a grid stage. A round is proposed once,
by one worker, and stored in the study (:class:`tuner.tune.points.TPERounds`), so every worker
trains the same points, a resumed stage continues where it stopped, and the proposals are
reproducible: they depend on the seed and the results only.

The first round starts from the stage's incumbent (the configuration before the stage, when it
lies inside the space) and fills up with TPE's random start-up draws.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from tuner.config import StageSpec

logger = logging.getLogger(__name__)

SIGNIFICANT_DIGITS = 3  # proposals are rounded: 0.000314159 is stored as 0.000314


def distributions(spec: StageSpec) -> dict[str, BaseDistribution]:
    """Optuna distributions of a TPE stage's ``[space]``."""
    out: dict[str, BaseDistribution] = {}
    for name, rng in spec.space.items():
        if "choices" in rng:
            out[name] = CategoricalDistribution(tuple(rng["choices"]))
        elif name == "batch_size":
            out[name] = IntDistribution(int(rng["low"]), int(rng["high"]), log=rng["log"])
        else:
            out[name] = FloatDistribution(float(rng["low"]), float(rng["high"]), log=rng["log"])
    return out


def _round(value: Any, dist: BaseDistribution) -> Any:
    if not isinstance(dist, FloatDistribution) or value == 0:
        return value
    digits = SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(value)))
    return min(max(round(value, digits), dist.low), dist.high)


def propose(
    spec: StageSpec,
    history: Sequence[FrozenTrial],
    n: int,
    *,
    seed: int,
    first: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Propose ``n`` points for the next round from the stage's finished trials ``history``.

    TPE runs in a throwaway in-memory study holding copies of the complete trials, so nothing
    is written to the stage's study here. ``first`` (the incumbent) is proposed first when it
    lies inside the space. Points already tried are not proposed again.
    """
    dists = distributions(spec)
    sampler = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=spec.round_size, constant_liar=True, multivariate=True
    )
    scratch = optuna.create_study(direction="maximize", sampler=sampler)
    seen: set[tuple] = set()
    for t in history:
        if t.state == TrialState.COMPLETE and set(t.params) == set(dists):
            params = {k: t.params[k] for k in dists}
            scratch.add_trial(
                optuna.trial.create_trial(params=params, distributions=dists, value=t.value)
            )
            seen.add(_key(params))
    points: list[dict[str, Any]] = []
    if first is not None and _inside(first, dists) and _key(first) not in seen:
        scratch.enqueue_trial(dict(first))
    attempts = 0
    while len(points) < n and attempts < 20 * n:
        attempts += 1
        trial = scratch.ask(dists)
        point = {k: _round(trial.params[k], dists[k]) for k in dists}
        if _key(point) in seen:  # a repeat (a small categorical space): do not train it twice
            scratch.tell(trial, state=TrialState.FAIL)
            continue
        seen.add(_key(point))
        points.append(point)
    if len(points) < n:
        logger.info("the space of %s has only %d untried point(s) left", spec.name, len(points))
    return points


def _key(point: Mapping[str, Any]) -> tuple:
    return tuple(sorted(point.items()))


def _inside(point: Mapping[str, Any], dists: Mapping[str, BaseDistribution]) -> bool:
    if set(point) != set(dists):
        return False
    for k, d in dists.items():
        v = point[k]
        if isinstance(d, CategoricalDistribution):
            if v not in d.choices:
                return False
        elif not d.low <= v <= d.high:
            return False
    return True
