"""Normalizations: what each hidden layer applies to its Linear output before the activation.

An entry is the normalization for both engines: :meth:`Norm.module` is the ``nn.Module`` that
:func:`tuner.train.model.build_model` puts in the reference MLP (``None``: no module), and
:meth:`Norm.forward_train`, :meth:`Norm.backward` and :meth:`Norm.forward_eval` are what the
fused engine (:mod:`tuner.train.layers.hidden`) computes for one run of members of its stack: ``z``
``[k, batch, width]`` with per-member affine parameters ``gamma``/``beta`` and running
statistics ``rmean``/``rvar`` ``[k, width]`` (kept for every member, used by entries with
``running_stats``). The fused engine copies a member's parameters from the reference module
(``weight``, ``bias``, and ``running_mean``/``running_var``/``num_batches_tracked`` for
entries with ``running_stats``) and back when it exports a member.

The layer statistics come from ATen's ``native_layer_norm`` (it returns the mean and inverse
deviation its backward op takes: the hand-written backward pass, ~130 ATen calls per step for
the whole stack instead of ~290 per member with autograd; see :mod:`tuner.train.stack`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from tuner.train.options.registry import Option, lookup, registry

_aten = torch.ops.aten


class Norm(Option, ABC):
    """A normalization: its module (reference engine) and its stacked passes (fused)."""

    module_type: ClassVar[type[nn.Module] | None]
    """The class of :meth:`module`'s modules (how the fused engine finds them in a model)."""

    has_params: ClassVar[bool] = True
    """Whether it trains ``gamma``/``beta`` (the optimizer steps them)."""

    running_stats: ClassVar[bool] = False
    """Whether it keeps running statistics, so that evaluation differs from training."""

    min_batch: ClassVar[int] = 1
    """The smallest batch it can train on: a smaller last batch of an epoch is skipped."""

    @abstractmethod
    def module(self, width: int) -> nn.Module | None:
        """The module for a hidden layer of ``width`` units in the reference MLP."""

    @abstractmethod
    def forward_train(
        self,
        z: torch.Tensor,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        rmean: torch.Tensor,
        rvar: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Training-mode normalization of ``z``; updates the running statistics in place
        where it keeps them. Returns the output (written into ``out`` when given) and what
        :meth:`backward` needs."""

    @abstractmethod
    def backward(
        self,
        g: torch.Tensor,
        z: torch.Tensor,
        gamma: torch.Tensor,
        saved: tuple[torch.Tensor, ...],
        g_gamma: torch.Tensor,
        g_beta: torch.Tensor,
    ) -> torch.Tensor:
        """Gradient w.r.t. the input ``z`` given ``g`` w.r.t. the output (``g`` may be
        overwritten, and may be what is returned); writes the gradients of ``gamma`` and
        ``beta`` into ``g_gamma``/``g_beta``."""

    def forward_eval(
        self,
        z: torch.Tensor,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        rmean: torch.Tensor,
        rvar: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Eval-mode normalization: the training-mode one unless it keeps running statistics
        (then it must override this)."""
        return self.forward_train(z, gamma, beta, rmean, rvar, out)[0]

    def layers(self, model: nn.Module) -> list[nn.Module]:
        """Its modules in ``model`` (an MLP from ``build_model``), first layer first."""
        if self.module_type is None:
            return []
        return [m for m in model.modules() if isinstance(m, self.module_type)]


def _affine_backward(
    g: torch.Tensor,
    xhat: torch.Tensor,
    gamma: torch.Tensor,
    g_gamma: torch.Tensor,
    g_beta: torch.Tensor,
) -> torch.Tensor:
    """The affine step's gradients: ``gamma``'s and ``beta``'s into ``g_gamma``/``g_beta``;
    returns the gradient w.r.t. the normalized ``xhat`` (``g``, overwritten)."""
    torch.sum(g * xhat, 1, out=g_gamma)
    torch.sum(g, 1, out=g_beta)
    return g.mul_(gamma[:, None])


@dataclass(frozen=True)
class NoNorm(Norm):
    """No normalization: the Linear output goes to the activation as it is."""

    name: ClassVar[str] = "none"
    module_type: ClassVar[type[nn.Module] | None] = None
    has_params: ClassVar[bool] = False

    def module(self, width: int) -> nn.Module | None:
        return None

    def forward_train(self, z, gamma, beta, rmean, rvar, out=None):
        return (z if out is None else out.copy_(z)), ()

    def backward(self, g, z, gamma, saved, g_gamma, g_beta):
        return g


@dataclass(frozen=True)
class BatchNorm(Norm):
    """``nn.BatchNorm1d``: batch statistics in training, running statistics in evaluation."""

    name: ClassVar[str] = "batch"
    module_type: ClassVar[type[nn.Module] | None] = nn.BatchNorm1d
    running_stats: ClassVar[bool] = True
    min_batch: ClassVar[int] = 2  # no batch statistics from one row
    eps: float = 1e-5  # the module's defaults
    momentum: float = 0.1

    def module(self, width: int) -> nn.Module | None:
        return nn.BatchNorm1d(width, eps=self.eps, momentum=self.momentum)

    def forward_train(self, z, gamma, beta, rmean, rvar, out=None):
        # Two passes over the batch axis (mean, then the centred squares): torch.var_mean over
        # a middle axis is several times slower on the CPU (~7x, docs/engine.md).
        n_batch = z.shape[1]
        mean = z.mean(1, keepdim=True)
        xhat = z - mean
        var = xhat.square().mean(1, keepdim=True)
        rstd = (var + self.eps).rsqrt_()
        xhat.mul_(rstd)
        rmean.mul_(1 - self.momentum).add_(mean.squeeze(1), alpha=self.momentum)
        unbiased = var.squeeze(1).mul_(n_batch / (n_batch - 1))
        rvar.mul_(1 - self.momentum).add_(unbiased, alpha=self.momentum)
        return torch.addcmul(beta[:, None], xhat, gamma[:, None], out=out), (xhat, rstd)

    def backward(self, g, z, gamma, saved, g_gamma, g_beta):
        xhat, rstd = saved
        g_xhat = _affine_backward(g, xhat, gamma, g_gamma, g_beta)
        proj = (g_xhat * xhat).mean(1, keepdim=True)
        g_xhat.sub_(g_xhat.mean(1, keepdim=True))
        return g_xhat.sub_(xhat * proj).mul_(rstd)  # in place: g itself

    def forward_eval(self, z, gamma, beta, rmean, rvar, out=None):
        scale = (rvar + self.eps).rsqrt_().mul_(gamma)
        return torch.addcmul(beta[:, None], z - rmean[:, None], scale[:, None], out=out)


@dataclass(frozen=True)
class LayerNorm(Norm):
    """``nn.LayerNorm``: statistics over each row's units, the same in both modes."""

    name: ClassVar[str] = "layer"
    module_type: ClassVar[type[nn.Module] | None] = nn.LayerNorm
    private_apis: ClassVar[tuple[str, ...]] = (
        "ops.aten.native_layer_norm",
        "ops.aten.native_layer_norm_backward",
    )
    eps: float = 1e-5  # the module's default

    def module(self, width: int) -> nn.Module | None:
        return nn.LayerNorm(width, eps=self.eps)

    def forward_train(self, z, gamma, beta, rmean, rvar, out=None):
        xhat, mean, rstd = _aten.native_layer_norm(z, [z.shape[-1]], None, None, self.eps)
        return torch.addcmul(beta[:, None], xhat, gamma[:, None], out=out), (xhat, mean, rstd)

    def backward(self, g, z, gamma, saved, g_gamma, g_beta):
        xhat, mean, rstd = saved
        g_xhat = _affine_backward(g, xhat, gamma, g_gamma, g_beta)
        return _aten.native_layer_norm_backward(
            g_xhat, z, [z.shape[-1]], mean, rstd, None, None, [True, False, False]
        )[0]


REGISTRY: dict[str, Norm] = registry(NoNorm(), BatchNorm(), LayerNorm())
DEFAULT: str = NoNorm.name


def get(name: str) -> Norm:
    """The registered normalization called ``name``."""
    return lookup(REGISTRY, name, "norm")
