"""Ensembles trained as one model (``cfg.ensemble`` members, ``cfg.ensemble_kind``).

Three kinds, each one ``nn.Module`` that :func:`tuner.train.model.build_model` returns for
``ensemble > 1``:

* ``batch``: TabM's BatchEnsemble MLP (Gorishniy et al., ICLR 2025; reference code
  ``yandex-research/tabm``, its default ``tabm`` arrangement). Every hidden Linear layer's weight
  ``W`` is shared by the members; member ``k`` computes ``((h * r_k) @ W^T) * s_k + b_k`` with
  its own input-side scaling ``r_k``, output-side scaling ``s_k`` and bias ``b_k``. As in TabM
  (``TabM.make``) the first layer's ``r`` is drawn as random signs (+-1), or from ``N(0, 1)``
  behind a numeric embedding, and every other ``r`` and every ``s`` starts at ones; the
  members' biases start as one draw of the layer's bias (``nn.Linear``'s), copied to every
  member. The numeric feature embedding, normalizations (their statistics over
  all members' rows) and the activation are shared; each member has its own output head (an
  ``nn.Linear``, TabM's ``LinearEnsemble``).
* ``mini``: TabM-mini, the paper's cheapest variant and, with numeric embeddings, one of its
  best: one per-member scaling ``r_k`` of the input (drawn as ``batch``'s first ``r``), then the
  shared MLP (plain Linear layers: the members differ only by ``r_k`` and their heads) and
  per-member heads.
* ``packed``: ``K`` independent MLPs (each the plain MLP of ``build_model``, with its own
  embedding), drawn one after another from the generator seeded with the trial's seed, so the
  members start from different weights that the seed determines.

In training mode ``forward`` returns the members' logits ``[K, B, classes]``:
:class:`EnsembleLoss` (the training loss of both engines' reference forms) is the mean of the
members' losses on the same batch. In eval mode it returns the log of the members' mean softmax
probability ``[B, classes]``, which is what validation loss and accuracy, early stopping, the
test metrics and ``predict`` score: ``log_softmax`` leaves it unchanged, so cross-entropy of it
is the ensemble's negative log-likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def log_mean_prob(logits: torch.Tensor) -> torch.Tensor:
    """The log of the members' mean softmax probability: ``logits`` [K, B, C] -> [B, C]."""
    k = logits.shape[0]
    return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - math.log(k)


class Ensemble(nn.Module):
    """Members' logits in training mode, log-mean-probabilities in eval mode."""

    def members(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.members(x)
        return logits if self.training else log_mean_prob(logits)


class PackedEnsemble(Ensemble):
    """``K`` independent MLPs (``nn.Sequential`` each)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(members)

    def members(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(x) for net in self.nets])


class BatchLinear(nn.Module):
    """TabM's ``LinearBatchEnsemble``: ``h`` [K, B, in] -> ``((h * r) @ W^T) * s + b``."""

    def __init__(self, linear: nn.Linear, k: int, *, start: str | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone())  # [out, in], shared
        out_features, in_features = self.weight.shape
        r = torch.ones(k, in_features)
        if start == "signs":  # TabM's init_random_signs_
            r = torch.bernoulli(torch.full((k, in_features), 0.5)).mul_(2).sub_(1)
        elif start == "normal":  # TabM's start scaling behind numeric embeddings
            r = torch.randn(k, in_features)
        self.r = nn.Parameter(r)
        self.s = nn.Parameter(torch.ones(k, out_features))
        self.bias = nn.Parameter(linear.bias.detach().expand(k, out_features).clone())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = torch.matmul(h * self.r.unsqueeze(1), self.weight.t())
        return z * self.s.unsqueeze(1) + self.bias.unsqueeze(1)


class Adapter(nn.Module):
    """TabM-mini's one per-member scaling of the input: ``h`` [K, B, in] -> ``h * r``."""

    def __init__(self, k: int, in_features: int, start: str) -> None:
        super().__init__()
        if start == "signs":
            r = torch.bernoulli(torch.full((k, in_features), 0.5)).mul_(2).sub_(1)
        else:
            r = torch.randn(k, in_features)
        self.r = nn.Parameter(r)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.r.unsqueeze(1)


class BatchEnsemble(Ensemble):
    """The BatchEnsemble MLP: ``[embedding] -> (BatchLinear -> [norm] -> act -> [dropout])* ->
    per-member heads``; ``hidden`` holds each hidden layer's modules after its BatchLinear."""

    def __init__(
        self,
        k: int,
        embed: nn.Module | None,
        linears: list[nn.Module],
        hidden: list[list[nn.Module]],
        heads: list[nn.Linear],
    ) -> None:
        super().__init__()
        self.k = k
        self.embed = embed
        self.linears = nn.ModuleList(linears)
        self.hidden = nn.ModuleList(nn.Sequential(*mods) for mods in hidden)
        self.heads = nn.ModuleList(heads)

    def members(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.embed is None else self.embed(x)
        h = h.unsqueeze(0).expand(self.k, *h.shape)  # every member reads the same rows
        for linear, rest in zip(self.linears, self.hidden, strict=True):
            z = linear(h)
            h = rest(z.reshape(-1, z.shape[-1])).view(z.shape)  # shared norm over all rows
        return torch.stack([head(h[m]) for m, head in enumerate(self.heads)])


def build_ensemble(
    cfg, build_mlp: Callable[[], nn.Sequential], init: Callable[[nn.Module], None]
) -> Ensemble:
    """The ensemble of ``cfg`` (``cfg.ensemble`` members of ``cfg.ensemble_kind``).
    ``build_mlp`` draws one plain MLP (``build_model``'s, initialised); ``init`` applies the
    configuration's initialization to a Linear layer. Draws from torch's global generator."""
    k = cfg.ensemble
    if cfg.ensemble_kind == "packed":
        return PackedEnsemble([build_mlp() for _ in range(k)])
    base = build_mlp()  # the shared weights, the embedding, norms and the first head
    mods = list(base)
    embed = None if isinstance(mods[0], nn.Linear) else mods.pop(0)
    starts = [i for i, m in enumerate(mods) if isinstance(m, nn.Linear)]
    start = "signs" if embed is None else "normal"  # TabM.make's start_scaling_init
    linears: list[nn.Module]
    if cfg.ensemble_kind == "mini":  # one adapter, then the shared layers
        first = mods[starts[0]]
        linears = [nn.Sequential(Adapter(k, first.in_features, start), first)]
        linears += [mods[i] for i in starts[1:-1]]
    else:
        linears = [
            BatchLinear(mods[i], k, start=start if n == 0 else None)
            for n, i in enumerate(starts[:-1])
        ]
    hidden = [mods[a + 1 : b] for a, b in zip(starts[:-1], starts[1:], strict=True)]
    head = mods[starts[-1]]
    heads = [head]
    for _ in range(k - 1):
        extra = nn.Linear(head.in_features, head.out_features)
        init(extra)
        heads.append(extra)
    return BatchEnsemble(k, embed, linears, hidden, heads)


class EnsembleLoss(nn.Module):
    """A criterion for models that may be ensembles: logits [B, C] as they are, members'
    logits [K, B, C] as the mean of the members' losses on the same targets."""

    def __init__(self, criterion: nn.Module) -> None:
        super().__init__()
        self.criterion = criterion

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if out.dim() == 2:
            return self.criterion(out, y)
        return torch.stack([self.criterion(o, y) for o in out]).mean()
