"""Numeric feature embeddings: what the MLP's first Linear layer reads instead of the raw features.

Gorishniy et al. 2022, "On Embeddings for Numerical Features in Tabular Deep Learning"
(reference code: ``rtdl_num_embeddings``). Each feature ``x_f`` becomes a ``dim``-vector and
the MLP reads the ``n_features * dim`` concatenation:

* ``none``: no embedding (the MLP reads the features);
* ``ple``: piecewise-linear encoding over quantile bins fitted on the training rows, then a
  linear layer per feature and ReLU (the paper's "PLE-Q-LR"; rtdl's
  ``PiecewiseLinearEmbeddings(bins, dim, activation=True, version="A")``);
* ``plr``: periodic, ``cos``/``sin`` of ``2 pi c_fj x_f`` with learned frequencies ``c_fj``
  drawn from ``N(0, frequency_scale)`` (truncated at 3 sigma), then one linear layer shared by
  the features and ReLU (rtdl's ``PeriodicEmbeddings(lite=True)``, 48 frequencies).

An entry is the embedding for both engines: :meth:`Embedding.module` is the ``nn.Module`` that
:func:`tuner.train.model.build_model` puts first in the reference MLP, and :meth:`Embedding.forward`
/ :meth:`Embedding.backward` are what the fused engine (:mod:`tuner.train.layers.embed`)
computes for every member at once on stacked tensors ``[K, ...]``. The backward pass is written
by hand: it is a few einsums (no input gradient: the features need none), shorter than the
``inference_mode``/autograd hand-over it would otherwise take, and it keeps the stack free of
recorded graphs.

What an embedding learns from data (the bin edges) is fitted once on the training rows
(:meth:`Embedding.fit`), kept as plain lists (``model.pt`` stores them so that it loads with
``torch.load(weights_only=True)``; ``predict`` rebuilds the module from them) and passed to
:meth:`Embedding.module`. The encoding's constants derived from them are non-persistent buffers:
the ``state_dict`` holds only what is learned.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from tuner.train.options.registry import Option, lookup, registry

_aten = torch.ops.aten
N_FREQUENCIES = 48  # periodic: frequencies per feature (rtdl's default)


def quantile_edges(x: np.ndarray | torch.Tensor, bins: int) -> list[list[float]]:
    """Per feature (column of ``x``, the training rows), the distinct quantiles at ``0, 1/bins,
    ..., 1``: at most ``bins`` bins, fewer for a column with few distinct values (one-hot
    columns get one bin). A constant column ``v`` gets the one bin ``[v, v + 1]``."""
    values = np.asarray(x, dtype=np.float64)
    if values.ndim != 2 or len(values) == 0:
        raise ValueError("bin edges need a non-empty [rows, features] array")
    qs = np.quantile(values, np.linspace(0.0, 1.0, bins + 1), axis=0)
    edges = []
    for column in qs.T:
        uniq = np.unique(column.astype(np.float32)).astype(np.float64)
        edges.append(uniq.tolist() if len(uniq) > 1 else [float(uniq[0]), float(uniq[0]) + 1.0])
    return edges


def ple_constants(edges: list[list[float]], bins: int) -> tuple[torch.Tensor, ...]:
    """The encoding of ``edges`` as ``(scale, shift, free)`` [F, bins], [F, bins], [F]:
    component ``t`` of feature ``f`` is ``clamp(scale * x + shift)``. Feature ``f``'s ``n`` bins
    fill the first ``n - 1`` components and the last (rtdl's layout; zeros between); ``free``
    marks one-bin features, whose one component is not clamped (min-max scaling)."""
    n_features = len(edges)
    scale = torch.zeros(n_features, bins, dtype=torch.float64)
    shift = torch.zeros(n_features, bins, dtype=torch.float64)
    free = torch.zeros(n_features, dtype=torch.bool)
    for f, feature in enumerate(edges):
        e = torch.tensor(feature, dtype=torch.float64)
        width = e.diff()
        w, b = 1.0 / width, -e[:-1] / width
        n = len(width)
        if n > bins:
            raise ValueError(f"feature {f} has {n} bins, more than {bins}")
        scale[f, -1], shift[f, -1] = w[-1], b[-1]
        scale[f, : n - 1], shift[f, : n - 1] = w[:-1], b[:-1]
        free[f] = n == 1
    return scale.float(), shift.float(), free


def ple_encode(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, free: torch.Tensor
) -> torch.Tensor:
    """Piecewise-linear encoding of ``x`` [..., F] -> [..., F, T]: the first component capped
    at 1, the middle ones clamped to [0, 1], the last floored at 0 (not for one-bin features).
    ``scale``/``shift`` broadcast against ``x[..., None]`` ([F, T] or [K, 1, F, T])."""
    e = torch.addcmul(shift, scale, x.unsqueeze(-1))
    if e.shape[-1] == 1:
        return e
    last = e[..., -1:]
    last = torch.where(free.unsqueeze(-1), last, last.clamp_min(0.0))
    return torch.cat([e[..., :1].clamp_max(1.0), e[..., 1:-1].clamp(0.0, 1.0), last], dim=-1)


class PiecewiseLinear(nn.Module):
    """Reference PLE embedding: encoding, per-feature ``Linear(bins -> dim)``, ReLU, flatten."""

    def __init__(self, edges: list[list[float]], bins: int, dim: int) -> None:
        super().__init__()
        self.fitted = {"edges": [list(map(float, e)) for e in edges]}
        scale, shift, free = ple_constants(edges, bins)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("free", free, persistent=False)
        bound = bins**-0.5  # rtdl's _NLinear: uniform(+-1/sqrt(in))
        self.weight = nn.Parameter(torch.empty(len(edges), bins, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(len(edges), dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = ple_encode(x, self.scale, self.shift, self.free)  # [B, F, T]
        h = (e.transpose(0, 1) @ self.weight).transpose(0, 1) + self.bias  # [B, F, d]
        return h.clamp_min(0.0).flatten(1)  # ReLU


class Periodic(nn.Module):
    """Reference PLR (lite) embedding: ``cos``/``sin`` of learned frequencies, a Linear shared
    by the features, ReLU, flatten."""

    def __init__(self, n_features: int, dim: int, sigma: float) -> None:
        super().__init__()
        self.frequency = nn.Parameter(torch.empty(n_features, N_FREQUENCIES))
        nn.init.trunc_normal_(self.frequency, 0.0, sigma, a=-3 * sigma, b=3 * sigma)
        linear = nn.Linear(2 * N_FREQUENCIES, dim)  # its own init, not the plan's `init`
        self.weight = nn.Parameter(linear.weight.detach().clone())  # [d, 2k]
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = 2 * math.pi * self.frequency * x.unsqueeze(-1)
        h = nn.functional.linear(
            torch.cat([torch.cos(v), torch.sin(v)], -1), self.weight, self.bias
        )
        return h.clamp_min(0.0).flatten(1)  # ReLU


class Embedding(Option, ABC):
    """A numeric feature embedding: its module (reference engine), what it fits on the training
    rows, and its stacked forward/backward (fused). The fused half sees the module's tensors in
    the order :meth:`tensors` lists them: trained ones (stepped by the optimizer) and constants."""

    module_free: ClassVar[bool] = False
    """Whether it adds no module (the MLP reads the features)."""

    def shape(self, dim: int, bins: int) -> tuple[int, ...]:
        """What its tensors' shapes depend on (members of one stack share it)."""
        return (dim,)

    def elements(self, n_features: int, dim: int, bins: int) -> int:
        """Values per row of its largest intermediate tensor (evaluation chunks)."""
        return n_features * dim

    def fit(self, x: torch.Tensor, bins: int) -> dict[str, Any] | None:
        """What the embedding learns from the training rows ``x`` [N, F], as plain data."""
        return None

    @abstractmethod
    def module(
        self, n_features: int, dim: int, bins: int, scale: float, fitted: dict[str, Any] | None
    ) -> nn.Module | None:
        """A fresh module (``None``: no embedding); draws from torch's global generator."""

    def tensors(self, module: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``module``'s trained tensors and constants, in the fused half's order."""
        return [], []

    def forward(
        self, x: torch.Tensor, trained: list[torch.Tensor], consts: list[torch.Tensor]
    ) -> tuple[torch.Tensor, Any]:
        """Stacked output [K, B, F * dim] of ``x`` [K, B, F], and what :meth:`backward` needs."""
        raise NotImplementedError

    def backward(
        self, g: torch.Tensor, trained: list[torch.Tensor], saved: Any, grads: list[torch.Tensor]
    ) -> None:
        """Write the gradients of the trained tensors into ``grads`` given ``g`` [K, B, F * dim]."""
        raise NotImplementedError


@dataclass(frozen=True)
class NoEmbedding(Embedding):
    name: ClassVar[str] = "none"
    module_free: ClassVar[bool] = True

    def shape(self, dim, bins):
        return ()

    def elements(self, n_features, dim, bins):
        return 0

    def module(self, n_features, dim, bins, scale, fitted):
        return None


def _relu_out(h: torch.Tensor) -> torch.Tensor:
    return torch.clamp_min_(h, 0).flatten(2)


@dataclass(frozen=True)
class Ple(Embedding):
    name: ClassVar[str] = "ple"
    private_apis: ClassVar[tuple[str, ...]] = ("ops.aten.threshold_backward",)

    def fit(self, x, bins):
        return {"edges": quantile_edges(x, bins)}

    def shape(self, dim, bins):
        return (dim, bins)

    def elements(self, n_features, dim, bins):
        return n_features * max(dim, bins)

    def module(self, n_features, dim, bins, scale, fitted):
        if fitted is None or len(fitted.get("edges", ())) != n_features:
            raise ValueError("a piecewise-linear embedding needs bin edges for every feature")
        return PiecewiseLinear(fitted["edges"], bins, dim)

    def tensors(self, module):
        return [module.weight, module.bias], [module.scale, module.shift, module.free]

    def forward(self, x, trained, consts):
        w, b = trained  # [K, F, T, d], [K, F, d]
        scale, shift, free = consts  # [K, F, T], [K, F, T], [K, F]
        e = ple_encode(x, scale.unsqueeze(1), shift.unsqueeze(1), free.unsqueeze(1))
        h = torch.einsum("kbft,kftd->kbfd", e, w).add_(b.unsqueeze(1))
        out = _relu_out(h)
        return out, (e, out)

    def backward(self, g, trained, saved, grads):
        e, out = saved
        gh = _aten.threshold_backward(g, out, 0).view(*e.shape[:3], -1)  # [K, B, F, d]
        grads[0].copy_(torch.einsum("kbft,kbfd->kftd", e, gh))
        torch.sum(gh, 1, out=grads[1])


@dataclass(frozen=True)
class Plr(Embedding):
    name: ClassVar[str] = "plr"
    private_apis: ClassVar[tuple[str, ...]] = ("ops.aten.threshold_backward",)

    def module(self, n_features, dim, bins, scale, fitted):
        return Periodic(n_features, dim, scale)

    def elements(self, n_features, dim, bins):
        return n_features * max(dim, 2 * N_FREQUENCIES)

    def tensors(self, module):
        return [module.frequency, module.weight, module.bias], []

    def forward(self, x, trained, consts):
        c, w, b = trained  # [K, F, k], [K, d, 2k], [K, d]
        v = (2 * math.pi) * c.unsqueeze(1) * x.unsqueeze(-1)  # [K, B, F, k]
        cs = torch.cat([torch.cos(v), torch.sin(v)], -1)  # [K, B, F, 2k]
        h = torch.einsum("kbfj,kdj->kbfd", cs, w).add_(b[:, None, None, :])
        out = _relu_out(h)
        return out, (x, cs, out)

    def backward(self, g, trained, saved, grads):
        c, w, _ = trained
        x, cs, out = saved
        gh = _aten.threshold_backward(g, out, 0).view(*cs.shape[:3], -1)  # [K, B, F, d]
        grads[1].copy_(torch.einsum("kbfd,kbfj->kdj", gh, cs))
        torch.sum(gh, (1, 2), out=grads[2])
        gcs = torch.einsum("kbfd,kdj->kbfj", gh, w)
        k = c.shape[-1]
        cos, sin = cs[..., :k], cs[..., k:]
        gv = gcs[..., k:].mul(cos).sub_(gcs[..., :k].mul(sin))  # d/dv: -sin * g_cos + cos * g_sin
        torch.mul(torch.einsum("kbfj,kbf->kfj", gv, x), 2 * math.pi, out=grads[0])


REGISTRY: dict[str, Embedding] = registry(NoEmbedding(), Ple(), Plr())
DEFAULT: str = NoEmbedding.name


def get(name: str) -> Embedding:
    """The registered embedding called ``name``."""
    return lookup(REGISTRY, name, "embedding")
