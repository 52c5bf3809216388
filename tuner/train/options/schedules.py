"""Learning-rate schedules: the learning rate of each optimizer step over a run's planned steps.

An entry is the schedule for both engines: :meth:`Schedule.torch_scheduler` is the
``torch.optim.lr_scheduler`` scheduler the reference engine steps once per batch
(:func:`tuner.train.model.make_scheduler`; ``None``: the learning rate stays), and
:meth:`Schedule.lr_at` is the same learning rate in closed form, which the fused engine
(:mod:`tuner.train.stack`) passes to each optimizer call: members at the same step of the same
schedule share a call.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from tuner.train.options.registry import Option, lookup, registry


class Schedule(Option, ABC):
    """A learning-rate schedule: torch's scheduler (reference engine), closed form (fused)."""

    depends_on_step: ClassVar[bool] = True
    """Whether the learning rate changes over the steps (then it needs the planned steps, and
    members share an optimizer call only at the same step of the same plan)."""

    @abstractmethod
    def torch_scheduler(
        self, optimizer: torch.optim.Optimizer, *, lr: float, total_steps: int
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """torch's scheduler for ``optimizer`` (base learning rate ``lr``), stepped once per
        batch over ``total_steps``; ``None`` when the learning rate stays."""

    @abstractmethod
    def lr_at(self, lr: float, step: int, total_steps: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) of ``total_steps`` planned,
        as :meth:`torch_scheduler` sets it; steps past the plan keep the last value."""


@dataclass(frozen=True)
class Constant(Schedule):
    name: ClassVar[str] = "constant"
    depends_on_step: ClassVar[bool] = False

    def torch_scheduler(self, optimizer, *, lr, total_steps):
        return None

    def lr_at(self, lr, step, total_steps):
        return lr


@dataclass(frozen=True)
class Cosine(Schedule):
    """``CosineAnnealingLR(T_max=total_steps, eta_min=0)`` stepped per batch."""

    name: ClassVar[str] = "cosine"

    def torch_scheduler(self, optimizer, *, lr, total_steps):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)

    def lr_at(self, lr, step, total_steps):
        step = min(step, total_steps)
        return lr * (1 + math.cos(math.pi * step / total_steps)) / 2


@dataclass(frozen=True)
class OneCycle(Schedule):
    """``OneCycleLR(max_lr=lr, total_steps=total_steps, cycle_momentum=False)``: cosine warm-up
    from ``lr/25`` over 30% of the steps, then cosine annealing to ``lr/25/1e4``. The constants
    are torch's defaults; momentum is not cycled."""

    name: ClassVar[str] = "onecycle"
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4

    def torch_scheduler(self, optimizer, *, lr, total_steps):
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=lr,
            total_steps=total_steps,
            pct_start=self.pct_start,
            div_factor=self.div_factor,
            final_div_factor=self.final_div_factor,
            cycle_momentum=False,
        )

    def lr_at(self, lr, step, total_steps):
        step = min(step, total_steps)
        initial = lr / self.div_factor
        phases = (
            (float(self.pct_start * total_steps) - 1, initial, lr),
            (total_steps - 1, lr, initial / self.final_div_factor),
        )
        start_step = 0.0
        for i, (end_step, start_lr, end_lr) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                return end_lr + (start_lr - end_lr) / 2.0 * (math.cos(math.pi * pct) + 1)
            start_step = end_step
        raise AssertionError("unreachable: the last phase always returns")


REGISTRY: dict[str, Schedule] = registry(Constant(), Cosine(), OneCycle())
DEFAULT: str = Constant.name


def get(name: str) -> Schedule:
    """The registered learning-rate schedule called ``name``."""
    return lookup(REGISTRY, name, "schedule")
