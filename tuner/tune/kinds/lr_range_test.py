"""``kind = "lr_range_test"``: an LR range test picks the learning rate, short runs verify it.

One worker runs the range test (torch-lr-finder, :mod:`tuner.train.lr_range`: one epoch with
the learning rate growing exponentially from ``start_lr`` to ``end_lr``, the suggestion at the
steepest loss descent, optionally snapped to a power of ten) while the others wait; the curve
is kept in the study's user attr named after this kind. The stage's points are the
``candidates`` (multiples of the chosen learning rate), each verified by a short run on the
train split scored on the validation split (:func:`tuner.tune.runs.train_holdout`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.checks import Choice, Number, values_errors
from tuner.config import StageSpec, fmt_value, point_label
from tuner.errors import PlanError
from tuner.train.config import TrainConfig
from tuner.train.options import optimizers
from tuner.tune.kinds.base import Figure, KindOptions, PointSource, StageKind
from tuner.tune.runs import (
    PointResult,
    Run,
    holdout_identity,
    holdout_scored_by,
    train_holdout,
)
from tuner.tune.samplers import TPE, Grid

if TYPE_CHECKING:
    from tuner.train.tensors import TensorData

SNAPS = ("none", "decade")


@dataclass(frozen=True)
class RangeTestOptions(KindOptions, in_every_stage=True):
    param: str = "lr"  # the TrainConfig field the stage chooses
    start_lr: float = 1e-7
    end_lr: float = 1.0
    range_optimizer: str = optimizers.DEFAULT  # ``optimizer`` in a plan: the test's optimizer
    snap: str = "decade"  # "decade": the suggestion rounded to the nearest power of ten
    candidates: tuple[float, ...] = (1.0,)  # multiples of the chosen learning rate to verify


class RangeTest(StageKind):
    name = "lr_range_test"
    summary = "an LR range test picks the learning rate; short runs verify its candidates"
    Options = RangeTestOptions
    schema = {
        "param": Choice(("lr",)),
        "start_lr": Number(low=0, low_open=True),
        "end_lr": Number(low=0, low_open=True),
        "optimizer": Choice(tuple(optimizers.REGISTRY)),  # the range test's optimizer
        "range_optimizer": Choice(tuple(optimizers.REGISTRY)),  # the same, by its field name
        "snap": Choice(SNAPS),
        # "candidates" is a list: checked by the plan loader's list rules
    }
    samplers = (Grid.name,)
    needs_grid = False
    keeps_final = True  # its verification runs train on the train split

    def option_errors(self, raw: Mapping[str, Any], where: str) -> list[str]:
        errors = super().option_errors(raw, where)
        if "candidates" in raw:
            parse = functools.partial(Number(low=0, low_open=True).parse, strict=True)
            values_errors("candidates", raw["candidates"], where, "candidates", parse, errors, 100)
        return errors

    def parse_options(self, raw: Mapping[str, Any], where: str) -> RangeTestOptions:
        raw = dict(raw)
        if "optimizer" in raw:
            raw["range_optimizer"] = raw.pop("optimizer")
        return super().parse_options(raw, where)

    def convert(self, key: str, value: Any) -> Any:
        return tuple(float(c) for c in value) if key == "candidates" else value

    @property
    def option_keys(self) -> frozenset[str]:
        return super().option_keys | {"optimizer"}

    def validate(self, spec: StageSpec, where: str) -> None:
        opts = spec.options
        if spec.sampler == TPE.name or spec.space:
            raise PlanError(f"{where}: an {self.name} stage takes no [space] or {TPE.name} sampler")
        if spec.grid:
            raise PlanError(f"{where}: an {self.name} stage takes 'candidates', not a grid")
        if not 0 < opts.start_lr < opts.end_lr:
            raise PlanError(f"{where}: need 0 < start_lr < end_lr")
        super().validate(spec, where)

    def params(self, spec: StageSpec) -> tuple[str, ...]:
        return (spec.options.param,)

    def n_points(self, spec: StageSpec) -> int:
        return len(spec.options.candidates)

    def contains(self, spec: StageSpec, params: Mapping[str, Any]) -> bool:
        # the candidates are multiples of the range test's pick: any positive learning rate
        if set(params) != {spec.options.param}:
            return False
        value = params[spec.options.param]
        return isinstance(value, (int, float)) and math.isfinite(value) and value > 0

    def points(
        self, source: PointSource, study: Any, spec: StageSpec, base: TrainConfig, data: TensorData
    ) -> list[dict[str, Any]]:
        """Run the range test once per study (one worker does it, the others wait for it) and
        return the candidate learning rates to verify."""

        def run_test() -> None:
            from tuner.train.lr_range import range_test  # torch-lr-finder pulls in matplotlib

            opts = spec.options
            t0 = time.perf_counter()
            result = range_test(
                base,
                data.train,
                n_classes=data.n_classes,
                seed=source.seed,
                optimizer=opts.range_optimizer,
                start_lr=opts.start_lr,
                end_lr=opts.end_lr,
                snap_to=opts.snap,
            )
            curve = {**result.to_dict(), "seconds": round(time.perf_counter() - t0, 3)}
            study.set_user_attr(self.name, curve)
            source.notify("stage_attrs", study, spec.name)
            chosen = result.chosen
            points = [{opts.param: float(f"{chosen * c:.6g}")} for c in opts.candidates]
            study.set_user_attr("points", points)

        source.once(study, "LR range test", lambda: "points" in study.user_attrs, run_test)
        return list(study.user_attrs["points"])

    def train(
        self, run: Run, cfgs: Sequence[TrainConfig], points: list[int]
    ) -> dict[int, PointResult]:
        return train_holdout(run, cfgs, points)

    def training_identity(self, spec: StageSpec, cfg: TrainConfig, n_train: int) -> dict[str, Any]:
        # the verification runs train on the train split, without early stopping
        return holdout_identity(spec, cfg, n_train, patience=0)

    def scored_by(self, spec: StageSpec) -> str:
        opts = spec.options
        cands = ", ".join(f"x{fmt_value(c)}" for c in opts.candidates)
        return (
            f"LR range test ({opts.range_optimizer}, one epoch, {fmt_value(opts.start_lr)} -> "
            f"{fmt_value(opts.end_lr)}), suggestion at the steepest loss descent (snap: "
            f"{opts.snap}); the candidates ({cands} the chosen LR) are verified by a run scored "
            f"by {holdout_scored_by(spec)}"
        )

    def points_text(self, spec: StageSpec, points: Sequence[Mapping[str, Any]] | None) -> str:
        times = ", ".join(f"x{fmt_value(c)}" for c in spec.options.candidates)
        if points:
            found = ", ".join(point_label(p) for p in points)
            return f"{found}: the range test's pick {times} (found by the test, not a grid)"
        return f"the range test's pick {times}, decided by the test"

    def facts(self, attrs: Mapping[str, Any]) -> list[tuple[str, str]]:
        curve = attrs.get(self.name)
        if not curve:
            return []
        return [
            (
                "Range test",
                f"steepest descent at {curve['suggestion']:.3g}, chosen "
                f"{fmt_value(curve['chosen'])} (plot: `{self.name}.png`)",
            )
        ]

    def figures(self, attrs: Mapping[str, Any]) -> list[Figure]:
        curve = attrs.get(self.name)
        if not curve:
            return []
        return [Figure(f"{self.name}.png", "LR range test", "loss_vs_lr", curve)]

    def extra_seconds(self, attrs: Mapping[str, Any]) -> float:
        return float((attrs.get(self.name) or {}).get("seconds", 0.0))
