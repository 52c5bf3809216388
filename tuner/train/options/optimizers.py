"""Optimizers: how each step moves the weights, from their gradients.

An entry is the optimizer for both engines: :meth:`Optimizer.torch_optimizer` is the
``torch.optim`` optimizer that the reference engine, the LR range test and the benchmarks use
(:func:`tuner.train.model.make_optimizer`), and :meth:`Optimizer.step` is the fused engine's
step (:mod:`tuner.train.stack`) over per-tensor lists of slices of its stacked buffers: one
call steps every member that shares the optimizer, learning rate, weight decay and (where it
uses one) momentum. ``state_names`` are the per-parameter state tensors the fused engine
allocates (zero-initialised) and passes in the lists.

The fused steps call torch's fused multi-tensor kernels (``torch._fused_adam_``,
``torch._fused_adamw_``, ``torch._fused_sgd_``): one pass over memory instead of ~8
elementwise passes, where ``torch.optim.Adam`` alone looped over a member's six tensors in
Python for ~1 ms of a ~3 ms step (the module docstring of :mod:`tuner.train.stack`). An
optimizer without a fused kernel uses the ``torch._foreach_*`` ops of torch.optim's own
"foreach" implementation. Each entry lists those internals in ``private_apis``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from tuner.train.options.registry import Option, lookup, registry

TensorLists = Mapping[str, list[torch.Tensor]]
"""The fused step's arguments, per parameter tensor (slices of the stacked buffers): ``"p"``
parameters, ``"g"`` gradients, ``"step"`` each tensor's step count (a 0-dim float tensor,
incremented before the call), and one list per name in ``state_names``."""


class Optimizer(Option, ABC):
    """An optimizer: ``torch.optim`` form (reference engine) and fused step (fused engine)."""

    state_names: ClassVar[tuple[str, ...]]
    """Per-parameter state of the fused step, zero before the first step."""

    uses_momentum: ClassVar[bool] = False
    """Whether :meth:`step` reads ``momentum`` (else members that differ only in momentum
    share one call)."""

    @abstractmethod
    def torch_optimizer(
        self,
        params: Iterable[torch.Tensor],
        *,
        lr: float,
        weight_decay: float,
        momentum: float,
    ) -> torch.optim.Optimizer:
        """The ``torch.optim`` optimizer over ``params`` (L2 weight decay as torch defines it)."""

    @abstractmethod
    def step(self, lists: TensorLists, *, lr: float, weight_decay: float, momentum: float) -> None:
        """One step of every tensor in ``lists`` (see :data:`TensorLists`), in place, equal
        to :meth:`torch_optimizer`'s step up to rounding."""


@dataclass(frozen=True)
class Adam(Optimizer):
    name: ClassVar[str] = "adam"
    state_names: ClassVar[tuple[str, ...]] = ("exp_avg", "exp_avg_sq")
    private_apis: ClassVar[tuple[str, ...]] = ("_fused_adam_",)
    betas: tuple[float, float] = (0.9, 0.999)  # torch.optim's defaults
    eps: float = 1e-8

    def torch_optimizer(self, params, *, lr, weight_decay, momentum):
        return torch.optim.Adam(
            params, lr=lr, betas=self.betas, eps=self.eps, weight_decay=weight_decay
        )

    def step(self, lists, *, lr, weight_decay, momentum):
        self._fused_step(torch._fused_adam_, lists, lr, weight_decay)

    def _fused_step(self, kernel, lists: TensorLists, lr: float, weight_decay: float) -> None:
        kernel(
            lists["p"],
            lists["g"],
            lists["exp_avg"],
            lists["exp_avg_sq"],
            [],
            lists["step"],
            lr=lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=weight_decay,
            eps=self.eps,
            amsgrad=False,
            maximize=False,
        )


@dataclass(frozen=True)
class AdamW(Adam):
    """Adam with decoupled weight decay."""

    name: ClassVar[str] = "adamw"
    private_apis: ClassVar[tuple[str, ...]] = ("_fused_adamw_",)

    def torch_optimizer(self, params, *, lr, weight_decay, momentum):
        return torch.optim.AdamW(
            params, lr=lr, betas=self.betas, eps=self.eps, weight_decay=weight_decay
        )

    def step(self, lists, *, lr, weight_decay, momentum):
        self._fused_step(torch._fused_adamw_, lists, lr, weight_decay)


@dataclass(frozen=True)
class Sgd(Optimizer):
    """Stochastic gradient descent with (heavy-ball) momentum, the plan's ``momentum``."""

    name: ClassVar[str] = "sgd"
    state_names: ClassVar[tuple[str, ...]] = ("momentum",)
    private_apis: ClassVar[tuple[str, ...]] = ("_fused_sgd_",)
    uses_momentum: ClassVar[bool] = True

    def torch_optimizer(self, params, *, lr, weight_decay, momentum):
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def step(self, lists, *, lr, weight_decay, momentum):
        # Zero-initialised buffers make the first step buf = 0 * m + g = g, exactly
        # torch.optim.SGD's clone of the first gradient.
        torch._fused_sgd_(
            lists["p"],
            lists["g"],
            lists["momentum"] if momentum != 0 else [],
            weight_decay=weight_decay,
            momentum=momentum,
            lr=lr,
            dampening=0.0,
            nesterov=False,
            maximize=False,
            is_first_step=False,
        )


@dataclass(frozen=True)
class RmsProp(Optimizer):
    """RMSprop; torch has no fused kernel for it: its own ``foreach`` implementation's ops."""

    name: ClassVar[str] = "rmsprop"
    state_names: ClassVar[tuple[str, ...]] = ("square_avg",)
    private_apis: ClassVar[tuple[str, ...]] = (
        "_foreach_add_",
        "_foreach_mul_",
        "_foreach_addcmul_",
        "_foreach_sqrt",
        "_foreach_addcdiv_",
    )
    alpha: float = 0.99  # torch.optim's defaults
    eps: float = 1e-8

    def torch_optimizer(self, params, *, lr, weight_decay, momentum):
        return torch.optim.RMSprop(
            params, lr=lr, alpha=self.alpha, eps=self.eps, weight_decay=weight_decay
        )

    def step(self, lists, *, lr, weight_decay, momentum):
        grads = lists["g"]
        if weight_decay != 0:
            torch._foreach_add_(grads, lists["p"], alpha=weight_decay)
        sq = lists["square_avg"]
        torch._foreach_mul_(sq, self.alpha)
        torch._foreach_addcmul_(sq, grads, grads, value=1 - self.alpha)
        avg = torch._foreach_sqrt(sq)
        torch._foreach_add_(avg, self.eps)
        torch._foreach_addcdiv_(lists["p"], grads, avg, value=-lr)


REGISTRY: dict[str, Optimizer] = registry(Adam(), AdamW(), Sgd(), RmsProp())
DEFAULT: str = Adam.name


def get(name: str) -> Optimizer:
    """The registered optimizer called ``name``."""
    return lookup(REGISTRY, name, "optimizer")
