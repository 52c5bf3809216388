"""Numeric feature embeddings: what the MLP's first Linear layer reads instead of the raw features.

Gorishniy et al. 2022, "On Embeddings for Numerical Features in Tabular Deep Learning"
(reference code: ``rtdl_num_embeddings``). Each feature ``x_f`` becomes a ``dim``-vector and
the MLP reads the ``n_features * dim`` concatenation:

* ``none``: no embedding (the MLP reads the features);
* ``ple``: piecewise-linear encoding over quantile bins fitted on the training rows, then a
  linear layer per feature and ReLU (the paper's "PLE-Q-LR"; rtdl's
  ``PiecewiseLinearEmbeddings(bins, dim, activation=True, version="A")``);
* ``plr``: periodic, ``cos``/``sin`` of ``2 pi c_fj x_f`` with ``frequencies`` learned
  frequencies ``c_fj`` per feature drawn from ``N(0, frequency_scale)`` (truncated at 3 sigma),
  then one linear layer shared by the features and ReLU (rtdl's
  ``PeriodicEmbeddings(lite=True)``). Only the numeric columns are embedded: a column whose
  training values are all 0 or 1 (a one-hot, a missing-value indicator, a 0/1 flag) is passed
  through as it is, after the embedded ones. Embedding 0/1 columns adds no expressiveness (a
  0/1 value's embedding is one of two learned vectors, which the first Linear layer already
  gives it) and, on a table with many one-hots, multiplies the first layer's width by
  ``embedding_dim``: on 30,000 rows x 100 columns (20 numeric, 80 one-hot), 16 frequencies,
  it cut an epoch of the 8-member ensemble from 10.94 s to 3.95 s and of one MLP from 1.51 s
  to 0.40 s (2 threads, quiet machine; ``benchmarks/tabular_epoch.py`` against
  ``--all-numeric``).

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
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from tuner.train.options.registry import Option, lookup, registry


class Fields(Protocol):
    """The :class:`~tuner.train.config.TrainConfig` fields an embedding reads."""

    embedding_dim: int
    bins: int
    frequencies: int
    frequency_scale: float


_aten = torch.ops.aten


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


def numeric_columns(x: np.ndarray | torch.Tensor) -> list[int]:
    """The columns of ``x`` (training rows) that take a value other than 0 and 1: what a
    periodic embedding embeds (the others pass through)."""
    values = torch.as_tensor(x)
    if values.ndim != 2:
        raise ValueError("numeric columns need a [rows, features] array")
    binary = ((values == 0) | (values == 1)).all(dim=0)
    return [int(i) for i in torch.nonzero(~binary).flatten()]


class Periodic(nn.Module):
    """Reference PLR (lite) embedding of the ``columns``: ``cos``/``sin`` of learned
    frequencies, a Linear shared by the features, ReLU, flatten; the other columns follow as
    they are. ``columns=None``: every column (``model.pt`` bundles written before the choice)."""

    def __init__(
        self, n_features: int, dim: int, frequencies: int, sigma: float, columns: list[int] | None
    ) -> None:
        super().__init__()
        cols = list(range(n_features)) if columns is None else [int(c) for c in columns]
        if columns is not None:
            self.fitted = {"columns": cols}
        rest = sorted(set(range(n_features)) - set(cols))
        self.register_buffer("columns", torch.tensor(cols, dtype=torch.long), persistent=False)
        self.register_buffer("rest", torch.tensor(rest, dtype=torch.long), persistent=False)
        self.frequency = nn.Parameter(torch.empty(len(cols), frequencies))
        nn.init.trunc_normal_(self.frequency, 0.0, sigma, a=-3 * sigma, b=3 * sigma)
        linear = nn.Linear(2 * frequencies, dim)  # its own init, not the plan's `init`
        self.weight = nn.Parameter(linear.weight.detach().clone())  # [d, 2k]
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = 2 * math.pi * self.frequency * x[:, self.columns].unsqueeze(-1)
        h = nn.functional.linear(
            torch.cat([torch.cos(v), torch.sin(v)], -1), self.weight, self.bias
        )
        return torch.cat([h.clamp_min(0.0).flatten(1), x[:, self.rest]], 1)  # ReLU


class Embedding(Option, ABC):
    """A numeric feature embedding: its module (reference engine), what it fits on the training
    rows, and its stacked forward/backward (fused). The fused half sees the module's tensors in
    the order :meth:`tensors` lists them: trained ones (stepped by the optimizer) and constants.
    An entry reads the configuration fields it needs (``embedding_dim``, ``bins``, ...)."""

    module_free: ClassVar[bool] = False
    """Whether it adds no module (the MLP reads the features)."""

    fits_members: ClassVar[bool] = True
    """Whether what it fits depends on each member's own training rows (PLE's bin edges). If
    not, members of one stack (CV folds) are fitted on the rows of the whole group, so that
    they share their shape."""

    def shape(self, cfg: Fields) -> tuple[int, ...]:
        """What its tensors' shapes depend on (members of one stack share it)."""
        return (cfg.embedding_dim,)

    def width(self, cfg: Fields, n_features: int, fitted: dict[str, Any] | None) -> int:
        """Values per row it hands to the first Linear layer."""
        return n_features * cfg.embedding_dim

    def elements(self, cfg: Fields, n_features: int) -> int:
        """Values per row of its largest intermediate tensor (evaluation chunks)."""
        return n_features * cfg.embedding_dim

    def fit(self, cfg: Fields, x: torch.Tensor) -> dict[str, Any] | None:
        """What the embedding learns from the training rows ``x`` [N, F], as plain data."""
        return None

    @abstractmethod
    def module(
        self, cfg: Fields, n_features: int, fitted: dict[str, Any] | None
    ) -> nn.Module | None:
        """A fresh module (``None``: no embedding); draws from torch's global generator."""

    def tensors(self, module: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``module``'s trained tensors and constants, in the fused half's order."""
        return [], []

    def forward(
        self, x: torch.Tensor, trained: list[torch.Tensor], consts: list[torch.Tensor]
    ) -> tuple[torch.Tensor, Any]:
        """Stacked output [K, B, width] of ``x`` [K, B, F], and what :meth:`backward` needs."""
        raise NotImplementedError

    def backward(
        self, g: torch.Tensor, trained: list[torch.Tensor], saved: Any, grads: list[torch.Tensor]
    ) -> None:
        """Write the gradients of the trained tensors into ``grads`` given ``g`` [K, B, width]."""
        raise NotImplementedError


@dataclass(frozen=True)
class NoEmbedding(Embedding):
    name: ClassVar[str] = "none"
    module_free: ClassVar[bool] = True

    def shape(self, cfg):
        return ()

    def width(self, cfg, n_features, fitted):
        return n_features

    def elements(self, cfg, n_features):
        return 0

    def module(self, cfg, n_features, fitted):
        return None


def _relu_out(h: torch.Tensor) -> torch.Tensor:
    return torch.clamp_min_(h, 0).flatten(2)


@dataclass(frozen=True)
class Ple(Embedding):
    name: ClassVar[str] = "ple"
    private_apis: ClassVar[tuple[str, ...]] = ("ops.aten.threshold_backward",)

    def fit(self, cfg, x):
        return {"edges": quantile_edges(x, cfg.bins)}

    def shape(self, cfg):
        return (cfg.embedding_dim, cfg.bins)

    def elements(self, cfg, n_features):
        return n_features * max(cfg.embedding_dim, cfg.bins)

    def module(self, cfg, n_features, fitted):
        if fitted is None or len(fitted.get("edges", ())) != n_features:
            raise ValueError("a piecewise-linear embedding needs bin edges for every feature")
        return PiecewiseLinear(fitted["edges"], cfg.bins, cfg.embedding_dim)

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
    fits_members: ClassVar[bool] = False  # which columns are numeric: the group's rows

    def fit(self, cfg, x):
        return {"columns": numeric_columns(x)}

    def shape(self, cfg):
        return (cfg.embedding_dim, cfg.frequencies)

    def width(self, cfg, n_features, fitted):
        n = n_features if fitted is None else len(fitted["columns"])
        return n * cfg.embedding_dim + n_features - n

    def module(self, cfg, n_features, fitted):
        columns = None if fitted is None else fitted["columns"]
        return Periodic(
            n_features, cfg.embedding_dim, cfg.frequencies, cfg.frequency_scale, columns
        )

    def elements(self, cfg, n_features):
        return n_features * max(cfg.embedding_dim, 2 * cfg.frequencies)

    def tensors(self, module):
        return [module.frequency, module.weight, module.bias], [module.columns, module.rest]

    def forward(self, x, trained, consts):
        c, w, b = trained  # [K, F', k], [K, d, 2k], [K, d]
        columns, rest = consts[0][0], consts[1][0]  # every member's (fitted on the group's rows)
        xe = x.index_select(-1, columns)  # [K, B, F']
        v = (2 * math.pi) * c.unsqueeze(1) * xe.unsqueeze(-1)  # [K, B, F', k]
        cs = torch.cat([torch.cos(v), torch.sin(v)], -1)  # [K, B, F', 2k]
        h = torch.einsum("kbfj,kdj->kbfd", cs, w).add_(b[:, None, None, :])
        out = _relu_out(h)
        return torch.cat([out, x.index_select(-1, rest)], -1), (xe, cs, out)

    def backward(self, g, trained, saved, grads):
        c, w, _ = trained
        xe, cs, out = saved
        g = g[..., : out.shape[-1]]  # the passed-through columns have no parameters
        gh = _aten.threshold_backward(g, out, 0).reshape(*cs.shape[:3], -1)  # [K, B, F', d]
        grads[1].copy_(torch.einsum("kbfd,kbfj->kdj", gh, cs))
        torch.sum(gh, (1, 2), out=grads[2])
        gcs = torch.einsum("kbfd,kdj->kbfj", gh, w)
        k = c.shape[-1]
        cos, sin = cs[..., :k], cs[..., k:]
        gv = gcs[..., k:].mul(cos).sub_(gcs[..., :k].mul(sin))  # d/dv: -sin * g_cos + cos * g_sin
        torch.mul(torch.einsum("kbfj,kbf->kfj", gv, xe), 2 * math.pi, out=grads[0])


REGISTRY: dict[str, Embedding] = registry(NoEmbedding(), Ple(), Plr())
DEFAULT: str = NoEmbedding.name


def get(name: str) -> Embedding:
    """The registered embedding called ``name``."""
    return lookup(REGISTRY, name, "embedding")
