"""Training-loss class weights: how much each class's rows count in the training loss.

An entry turns a run's training labels into per-class weights (:meth:`ClassWeight.weights`),
which both engines put into the same loss: ``nn.CrossEntropyLoss(weight=...)`` in the
reference engine, and the fused engine's hand-written loss and gradient, which takes any
weights (:mod:`tuner.train.loss`). So a class weighting has one half only. Validation loss
is never weighted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from tuner.train.options.registry import Option, lookup, registry


class ClassWeight(Option, ABC):
    """A class weighting of the training loss."""

    @abstractmethod
    def weights(self, y: torch.Tensor, n_classes: int) -> torch.Tensor | None:
        """Float32 weights per class from the training labels ``y``; ``None``: unweighted."""


def _inverse_frequency(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``n / (n_classes * count)`` per class (float64), 0 for a class absent from ``y`` (it is
    never a target)."""
    counts = torch.bincount(y, minlength=n_classes).double()
    return torch.where(counts > 0, len(y) / (n_classes * counts.clamp(min=1)), 0.0)


@dataclass(frozen=True)
class Unweighted(ClassWeight):
    name: ClassVar[str] = "none"

    def weights(self, y: torch.Tensor, n_classes: int) -> torch.Tensor | None:
        return None


@dataclass(frozen=True)
class Balanced(ClassWeight):
    """scikit-learn's "balanced": a rare class weighs as much in the loss as a common one."""

    name: ClassVar[str] = "balanced"

    def weights(self, y: torch.Tensor, n_classes: int) -> torch.Tensor | None:
        return _inverse_frequency(y, n_classes).float()


@dataclass(frozen=True)
class SqrtBalanced(ClassWeight):
    """The square root of the balanced weights: a milder correction."""

    name: ClassVar[str] = "sqrt_balanced"

    def weights(self, y: torch.Tensor, n_classes: int) -> torch.Tensor | None:
        return _inverse_frequency(y, n_classes).sqrt().float()


REGISTRY: dict[str, ClassWeight] = registry(Unweighted(), Balanced(), SqrtBalanced())
DEFAULT: str = Unweighted.name


def get(name: str) -> ClassWeight:
    """The registered class weighting called ``name``."""
    return lookup(REGISTRY, name, "class_weight")
