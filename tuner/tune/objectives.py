"""Stage objectives: a stage's claimed points trained and scored together, by the stage's kind.

:func:`evaluate_points` trains a group of points (the points one worker claimed) as fused
groups: it splits them by what one stack must share (widths, batch size) and asks the stage's
kind (:mod:`tuner.tune.kinds`) to train each group (:meth:`~tuner.tune.kinds.base.StageKind.train`).
Every point uses the same seeds (and, where the kind has folds, the same folds): points differ
only in what the stage varies, so their differences can be compared pairwise. It returns one
:class:`~tuner.tune.runs.PointResult` per point, with the group's wall time split evenly over
its points in the ``seconds`` attr.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from tuner.config import StageSpec, repeat_seeds
from tuner.train.compute import Compute
from tuner.train.config import TrainConfig
from tuner.train.tensors import TensorData
from tuner.tune.kinds import get_kind
from tuner.tune.reuse import FinalRule
from tuner.tune.runs import NoReporter, PointResult, Reporter, Run, fusable


def evaluate_points(
    stage: StageSpec,
    cfgs: Sequence[TrainConfig],
    data: TensorData,
    *,
    seed: int,
    reporter: Reporter | None = None,
    compute: Compute | None = None,
    keep: Mapping[int, FinalRule] | None = None,
    deadline: float | None = None,
) -> list[PointResult]:
    """Train and score ``cfgs`` (a stage's points) as fused groups, as ``stage``'s kind does.

    ``reporter`` receives intermediate values and decides pruning; ``keep``: point index -> the
    final job's rule, for points whose first run trains on the train split as the final job
    would (see :mod:`tuner.tune.reuse`): the weights that rule keeps come back in
    :attr:`PointResult.kept`. ``deadline``: a time budget's ``time.monotonic()`` after which
    no epoch starts (the runs then end where they are, ``out_of_time``).
    """
    kind = get_kind(stage.kind)
    run = Run(
        stage,
        data,
        repeat_seeds(seed, stage.repeats),
        reporter or NoReporter(),
        compute or Compute(),
        keep or {},
        deadline,
    )
    results: dict[int, PointResult] = {}
    for points in fusable(cfgs):
        t0 = time.perf_counter()
        done = kind.train(run, cfgs, points)
        share = (time.perf_counter() - t0) / len(points)  # the group's time, split evenly
        for i, result in done.items():
            result.attrs["seconds"] = share
            results[i] = result
    return [results[i] for i in range(len(cfgs))]
