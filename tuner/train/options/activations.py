"""Activations: the function after each hidden layer's (normalised) output.

An entry is the activation for both engines: :meth:`Activation.module` is the ``nn.Module``
that :func:`tuner.train.model.build_model` puts in the reference MLP (what
:func:`tuner.train.reference.train` trains with autograd), and :meth:`Activation.forward` /
:meth:`Activation.backward` are what the fused engine (:mod:`tuner.train.layers.hidden`)
computes on one run of members of its stack, a ``[k, batch, width]`` slice, with the kernels autograd runs
for that module, so that a member trains in a stack as it trains alone.

Both fused halves take ``out=``: a stack whose members differ in activation writes each run's
result into its slice of one tensor instead of concatenating the parts (the activation stage's
step at 0.91-0.92 of its former time, ``benchmarks/steps.py --against ee100f2``, docs/engine.md
"Measured speed"). Where the public functional form has no ``out=`` the entry calls the
``torch._C._nn`` function behind it, and the backward kernels are ATen's ``*_backward`` ops,
whose ``grad_input`` overload writes into ``out`` (the hand-written backward pass: ~130 ATen
calls per step for the whole stack instead of ~290 per member with autograd; see
:mod:`tuner.train.stack`). Each entry lists those internals in ``private_apis``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from tuner.train.options.registry import Option, lookup, registry

_aten = torch.ops.aten


class Activation(Option, ABC):
    """An activation: its module (reference engine) and its stacked forward/backward (fused)."""

    @abstractmethod
    def module(self) -> nn.Module:
        """A fresh module for one hidden layer of the reference MLP."""

    @abstractmethod
    def forward(self, u: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The activation of ``u``; written into ``out`` when given (a slice of a mixed stack's
        output, so that no concatenation follows)."""

    @abstractmethod
    def backward_kernel(
        self, g: torch.Tensor, u: torch.Tensor, a: torch.Tensor
    ) -> tuple[Any, tuple[Any, ...]]:
        """The ATen backward op autograd runs for :meth:`module` and its arguments, given ``g``
        (the gradient w.r.t. the output ``a``) and the input ``u``."""

    def backward(
        self,
        g: torch.Tensor,
        u: torch.Tensor,
        a: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Gradient w.r.t. the input ``u`` given ``g`` w.r.t. the output ``a``; written into
        ``out`` when given. One (kernel, arguments) pair serves both calls."""
        op, args = self.backward_kernel(g, u, a)
        return op(*args) if out is None else op.grad_input(*args, grad_input=out)


@dataclass(frozen=True)
class Relu(Activation):
    name: ClassVar[str] = "relu"
    private_apis: ClassVar[tuple[str, ...]] = ("ops.aten.threshold_backward.grad_input",)

    def module(self) -> nn.Module:
        return nn.ReLU()

    def forward(self, u: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.clamp_min(u, 0, out=out)  # what torch.relu computes

    def backward_kernel(self, g, u, a):
        return _aten.threshold_backward, (g, a, 0)


@dataclass(frozen=True)
class LeakyRelu(Activation):
    name: ClassVar[str] = "leaky_relu"
    private_apis: ClassVar[tuple[str, ...]] = (
        "_C._nn.leaky_relu",
        "ops.aten.leaky_relu_backward.grad_input",
    )
    negative_slope: float = 0.01  # the module's default

    def module(self) -> nn.Module:
        return nn.LeakyReLU(self.negative_slope)

    def forward(self, u: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch._C._nn.leaky_relu(u, self.negative_slope, out=out)

    def backward_kernel(self, g, u, a):
        return _aten.leaky_relu_backward, (g, u, self.negative_slope, False)


@dataclass(frozen=True)
class Gelu(Activation):
    """Exact (erf) form, the module's default; with its backward ~15% of a stacked step from
    a few members on (the module docstring of :mod:`tuner.train.stack`)."""

    name: ClassVar[str] = "gelu"
    private_apis: ClassVar[tuple[str, ...]] = ("_C._nn.gelu", "ops.aten.gelu_backward.grad_input")

    def module(self) -> nn.Module:
        return nn.GELU()

    def forward(self, u: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch._C._nn.gelu(u, out=out)

    def backward_kernel(self, g, u, a):
        return _aten.gelu_backward, (g, u)  # approximate="none", the default


@dataclass(frozen=True)
class Tanh(Activation):
    name: ClassVar[str] = "tanh"
    private_apis: ClassVar[tuple[str, ...]] = ("ops.aten.tanh_backward.grad_input",)

    def module(self) -> nn.Module:
        return nn.Tanh()

    def forward(self, u: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(u, out=out)

    def backward_kernel(self, g, u, a):
        return _aten.tanh_backward, (g, a)


@dataclass(frozen=True)
class Silu(Activation):
    name: ClassVar[str] = "silu"
    private_apis: ClassVar[tuple[str, ...]] = ("_C._nn.silu", "ops.aten.silu_backward.grad_input")

    def module(self) -> nn.Module:
        return nn.SiLU()

    def forward(self, u: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch._C._nn.silu(u, out=out)

    def backward_kernel(self, g, u, a):
        return _aten.silu_backward, (g, u)


REGISTRY: dict[str, Activation] = registry(Relu(), LeakyRelu(), Gelu(), Tanh(), Silu())
DEFAULT: str = Relu.name


def get(name: str) -> Activation:
    """The registered activation called ``name``."""
    return lookup(REGISTRY, name, "activation")
