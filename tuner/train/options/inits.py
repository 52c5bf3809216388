"""Initializations: how the Linear layers' weights are drawn before training.

An entry re-draws one ``nn.Linear`` in place (:meth:`Init.apply`), from torch's global
generator, after :func:`tuner.train.model.build_model` has built the whole MLP. Both engines
get their initial weights from ``build_model`` (the fused engine builds each member with it,
seeded by the member's seed, and stacks the result), so an initialization has one half only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from tuner.train.options.registry import Option, lookup, registry


class Init(Option, ABC):
    """An initialization of the MLP's Linear layers."""

    @abstractmethod
    def apply(self, linear: nn.Linear) -> None:
        """Re-draw ``linear``'s parameters in place (or keep them)."""


@dataclass(frozen=True)
class TorchDefault(Init):
    """PyTorch's own initialization of ``nn.Linear`` (Kaiming-uniform with ``a=sqrt(5)``)."""

    name: ClassVar[str] = "default"

    def apply(self, linear: nn.Linear) -> None:
        pass


@dataclass(frozen=True)
class XavierUniform(Init):
    """Glorot-uniform weights, zero biases."""

    name: ClassVar[str] = "xavier_uniform"

    def apply(self, linear: nn.Linear) -> None:
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)


@dataclass(frozen=True)
class KaimingNormal(Init):
    """He-normal weights (fan-in, the rectifier gain sqrt(2)), zero biases."""

    name: ClassVar[str] = "kaiming_normal"

    def apply(self, linear: nn.Linear) -> None:
        # a=0: torch's gain for its default nonlinearity with slope 0 is exactly sqrt(2), the
        # rectifier gain (the same float as naming the rectifier; tests/test_options.py checks)
        nn.init.kaiming_normal_(linear.weight, a=0)
        nn.init.zeros_(linear.bias)


REGISTRY: dict[str, Init] = registry(TorchDefault(), XavierUniform(), KaimingNormal())
DEFAULT: str = TorchDefault.name


def get(name: str) -> Init:
    """The registered initialization called ``name``."""
    return lookup(REGISTRY, name, "init")
