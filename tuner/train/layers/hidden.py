"""A hidden layer's normalisation, activation and dropout, applied to runs of members.

The Linear output ``z`` [K, B, W] is normalised (each member its own ``gamma``/``beta`` and
running statistics), activated and, for members with dropout, multiplied by their masks. The
normalisations and activations are entries of :mod:`tuner.train.options`, each carrying the
stacked forward/backward this layer runs, so the layer names none of them. It applies each
normalisation to its run of members and each activation to its run (the stack's
:class:`~tuner.train.layers.base.Layout`), so
members that differ only in their norm (the normalisation stage) share one activation call;
where runs differ, each writes into its slice of one output (``out=`` kernels), not a
concatenation of parts. The backward pass calls the same ATen backward kernels autograd would,
so no graph is recorded.
"""

from __future__ import annotations

import torch

from tuner.train.layers.base import Layer, Pass, Segment, slices
from tuner.train.options import norms
from tuner.train.options.activations import Activation
from tuner.train.options.norms import Norm


def normalize(
    segs: list[Segment[Norm]],
    z: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    rmean: torch.Tensor,
    rvar: torch.Tensor,
    train: bool,
) -> tuple[torch.Tensor, list[tuple]]:
    """Each run's normalisation of ``z`` [K, B, W]; with ``train``, also what the backward
    pass needs, per run."""
    if len(segs) == 1:
        if not train:
            return segs[0].kind.forward_eval(z, gamma, beta, rmean, rvar), []
        u, saved = segs[0].kind.forward_train(z, gamma, beta, rmean, rvar)
        return u, [saved]
    u = torch.empty_like(z)
    runs = []
    for norm, sl in slices(segs):
        args = (z[sl], gamma[sl], beta[sl], rmean[sl], rvar[sl])
        if train:
            runs.append(norm.forward_train(*args, out=u[sl])[1])
        else:
            norm.forward_eval(*args, out=u[sl])
    return u, runs


def normalize_backward(
    segs: list[Segment[Norm]],
    g: torch.Tensor,
    z: torch.Tensor,
    gamma: torch.Tensor,
    saved: list[tuple],
    g_gamma: torch.Tensor,
    g_beta: torch.Tensor,
) -> torch.Tensor:
    """Gradient w.r.t. ``z`` of :func:`normalize` (``g`` is overwritten)."""
    if len(segs) == 1:
        return segs[0].kind.backward(g, z, gamma, saved[0], g_gamma, g_beta)
    for (norm, sl), run in zip(slices(segs), saved, strict=True):
        part = g[sl]
        got = norm.backward(part, z[sl], gamma[sl], run, g_gamma[sl], g_beta[sl])
        if got.data_ptr() != part.data_ptr():
            part.copy_(got)
    return g


def activate(segs: list[Segment[Activation]], u: torch.Tensor) -> torch.Tensor:
    """Each run's activation of ``u`` [K, B, W]."""
    if len(segs) == 1:
        return segs[0].kind.forward(u)
    a = torch.empty_like(u)
    for act, sl in slices(segs):
        act.forward(u[sl], out=a[sl])
    return a


def activate_backward(
    segs: list[Segment[Activation]], g: torch.Tensor, u: torch.Tensor, a: torch.Tensor
) -> torch.Tensor:
    """Gradient w.r.t. ``u`` of :func:`activate` given ``g`` w.r.t. its output ``a``."""
    if len(segs) == 1:
        return segs[0].kind.backward(g, u, a)
    g_u = torch.empty_like(g)
    for act, sl in slices(segs):
        act.backward(g[sl], u[sl], a[sl], out=g_u[sl])
    return g_u


class Hidden(Layer):
    """Hidden layer ``index``'s ``norm -> activation -> dropout``: ``gamma``/``beta`` [K, W]
    (ones and zeros for members without a norm), running mean and variance [K, W]."""

    def __init__(self, index: int) -> None:
        self.index = index

    def stack(self, models, cfgs, params, running, device) -> None:
        kinds = [norms.get(c.norm) for c in cfgs]
        width = cfgs[0].hidden[self.index]
        gamma = torch.ones(len(models), width)
        beta = torch.zeros(len(models), width)
        rmean = torch.zeros(len(models), width)
        rvar = torch.ones(len(models), width)
        for k, (kind, model) in enumerate(zip(kinds, models, strict=True)):
            layers = kind.layers(model)
            if layers:
                gamma[k] = layers[self.index].weight.detach()
                beta[k] = layers[self.index].bias.detach()
                if kind.running_stats:
                    rmean[k] = layers[self.index].running_mean
                    rvar[k] = layers[self.index].running_var
        self.ids = (len(params), len(params) + 1)
        self.run = len(running)
        params += [gamma.to(device), beta.to(device)]
        running.append((rmean.to(device), rvar.to(device)))

    def forward(self, p: Pass, z: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        gamma, beta = (p.params[i] for i in self.ids)
        rmean, rvar = p.running[self.run]
        u, norm_saved = normalize(p.layout.norms, z, gamma, beta, rmean, rvar, train=True)
        a = activate(p.layout.acts, u)
        assert p.loss is not None
        mask = p.loss.masks(len(z), z.shape[1], z.shape[2], z.device)
        h = a if mask is None else a * mask
        return h, (z, u, a, norm_saved, mask)

    def backward(self, p: Pass, g: torch.Tensor, saved: tuple) -> torch.Tensor:
        z, u, a, norm_saved, mask = saved
        if mask is not None:
            g = g.mul_(mask)
        g_u = activate_backward(p.layout.acts, g, u, a)
        g_gamma, g_beta = (p.grads[i] for i in self.ids)
        gamma = p.params[self.ids[0]]
        return normalize_backward(p.layout.norms, g_u, z, gamma, norm_saved, g_gamma, g_beta)

    def forward_eval(self, p: Pass, z: torch.Tensor) -> torch.Tensor:
        gamma, beta = (p.params[i] for i in self.ids)
        rmean, rvar = p.running[self.run]
        u, _ = normalize(p.layout.norms, z, gamma, beta, rmean, rvar, train=False)
        return activate(p.layout.acts, u)

    def export(self, params, running, pos, model, cfg, n_steps) -> None:
        kind = norms.get(cfg.norm)
        layers = kind.layers(model)
        if not layers:
            return
        norm = layers[self.index]
        norm.weight.copy_(params[self.ids[0]][pos])
        norm.bias.copy_(params[self.ids[1]][pos])
        if kind.running_stats:
            norm.running_mean.copy_(running[self.run][0][pos])
            norm.running_var.copy_(running[self.run][1][pos])
            norm.num_batches_tracked.fill_(n_steps)

    def trained(self, cfg) -> bool:
        return norms.get(cfg.norm).has_params
