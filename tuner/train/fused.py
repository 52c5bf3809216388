"""Train the trials of one stage together: one stacked model, every trial its own weights.

:func:`train_group` trains ``K`` MLPs of the same widths and batch size as one stacked model:
layer ``l`` of all members is a ``[K, out, in]`` weight tensor and one batched matrix product
(``torch.baddbmm``) runs the layer for every member at once. Each member keeps its own
initialisation (built exactly as :func:`tuner.train.reference.train` builds it), its own optimizer state,
learning rate, weight decay and momentum, its own activation and normalisation, and sees the
batches that :func:`tuner.train.reference.train` would show it alone (the same per-epoch permutation from
a generator seeded by its seed, the same last partial batch). Members that share the seed and
the training rows see the very same batches (common random numbers), and then the input batch
is gathered once for all of them.

Members may also differ in dropout, label smoothing, class weights and learning-rate schedule
(over the member's planned steps: each optimizer call steps members at the same point of the
same schedule). Dropout masks come from a generator per member, seeded from
its seed, so a member draws the same masks in any group, and members that share a seed share
their masks.

What is measured does not change: member ``k``'s per-epoch train loss, validation loss and
validation accuracy equal what ``reference.train(cfgs[k], ...)`` reports for it alone (with
dropout: what the same member reports trained alone here, since ``reference.train`` draws its masks
from torch's global generator), up to floating-point rounding (different GEMM blocking and a fused optimizer kernel: relative
differences ~1e-7 after a few epochs; see ``tests/test_fused.py``). One case follows the
rounding noise further: the Linear bias in front of a normalization over the batch has a zero
gradient up to noise, which an optimizer that divides by a running gradient scale turns, without
weight decay, into steps of about ``lr``; the training loss does not see it, the running mean
(hence the validation loss, ~1e-3 relative) does -- as much as ``reference.train`` itself differs
between one and two threads.

The activations, normalizations, optimizers and schedules themselves are entries of
:mod:`tuner.train.options`: each carries its reference module or ``torch.optim`` form and the
stacked forward/backward/step this module runs, so this module names none of them.

Where the time goes (a 256x256 MLP with the seed plan's exact-erf activation and default
optimizer, at batch 128 on a 2-core CPU): alone, a step is three small GEMMs (~64 MFLOP) and
~290 ATen calls (autograd nodes, AccumulateGrad, dtype/scalar copies, and a ``torch.optim``
optimizer that loops over the six parameters in Python: ~1 ms of a ~3 ms step). In the stack
the step is ~130 calls whatever ``K`` is (one optimizer call more per distinct learning rate),
so the fixed cost is shared and the GEMMs are ``K`` times larger; from about six members on,
GEMMs are 70-75% of the step, the activation's forward and backward ~15% and the fused
optimizer step ~6%. To remove what is not arithmetic the module

* does the backward pass by hand (the network is fixed: ``Linear -> [norm] -> act``), with
  the same ATen backward kernels autograd would call, so no graph is recorded and every
  weight/bias gradient is written straight into a preallocated ``[K, ...]`` gradient buffer
  (``out=``); the input gradient of the first layer is never computed;
* steps the optimizers with one call for all members that share the optimizer and its
  hyperparameters, over slices of the stacked buffers built once: torch's fused multi-tensor
  kernels where torch has one (one pass over memory instead of ~8 elementwise passes), its
  ``_foreach`` ops otherwise (see :mod:`tuner.train.options.optimizers`);
* computes the output layer as ``(W @ h^T)^T``: with 10 classes as the GEMM's columns MKL is
  3-4x slower than with them as its rows;
* never synchronises per step (no ``.item()``): train losses accumulate in a ``[K]`` tensor;
* evaluates in chunks under ``torch.inference_mode()``;
* applies each normalisation to its run of members and each activation to its run, so that
  members that differ only in their norm (the normalisation stage) share one activation call,
  and writes each run into its slice of one output (``out=`` kernels) when they differ.

Matrix products at these shapes (``[K, 128, 256] x [K, 256, 256]``) run at ~100-110 GFLOP/s on
the 2-core development machine, ~60% of a large square ``mm``, so from a few members on the
step is bound by them. The CLI also raises glibc's allocator thresholds
(:mod:`tuner.train.runtime`): a group of 25 otherwise spent a third of its time in page faults.

The stacked layout: weights ``[K, out, in]`` (``nn.Linear`` orientation, so member ``k``'s
weight is the contiguous view ``W[k]``), activations ``[K, batch, width]``. A batch shared by all
members is passed as a stride-0 ``expand`` of one ``[batch, features]`` tensor, which MKL's
batched GEMM reads without copying.

``precision="bf16"`` runs the GEMMs (forward and backward) on bfloat16 copies of activations,
gradients and weights, like ``torch.autocast("cpu", dtype=torch.bfloat16)`` would, and keeps
fp32 master weights, optimizer state, normalisation and the loss (:mod:`tuner.train.compute`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch import nn

from tuner.train.batches import batch_sizes
from tuner.train.compute import PRECISIONS, Compute
from tuner.train.config import TrainConfig
from tuner.train.history import EarlyStopping, EpochStats, History
from tuner.train.model import EVAL_BATCH, build_model, class_weights, seeded
from tuner.train.options import activations, norms, optimizers, schedules
from tuner.train.options.activations import Activation
from tuner.train.options.norms import Norm
from tuner.train.options.optimizers import Optimizer
from tuner.train.options.schedules import Schedule

_DROPOUT_SEED = 0x5EED  # a member's dropout masks come from a generator seeded seed ^ this
_EVAL_ELEMENTS = 1 << 22  # activations per evaluation chunk, summed over members (16 MB fp32)

OnEpoch = Callable[[int, list["EpochStats | None"]], "Iterable[int] | None"]

_E = TypeVar("_E", Activation, Norm)


# --------------------------------------------------------------------------------------------
# Normalisations and activations on runs of the member axis
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment(Generic[_E]):
    """Members ``start:stop`` of a (sub)stack share ``kind`` (a normalisation or an activation
    entry of :mod:`tuner.train.options`)."""

    start: int
    stop: int
    kind: _E


def _segments(kinds: Sequence[_E]) -> list[_Segment[_E]]:
    """Runs of equal neighbours in ``kinds`` (one per member, stack order)."""
    segs: list[_Segment[_E]] = []
    for k, kind in enumerate(kinds):
        if segs and segs[-1].kind == kind:
            segs[-1] = _Segment(segs[-1].start, k + 1, kind)
        else:
            segs.append(_Segment(k, k + 1, kind))
    return segs


@dataclass(frozen=True)
class _Layout:
    """The normalisation runs and the activation runs of a (sub)stack. Members are sorted by
    (norm, activation), so both are runs; they are kept apart so that an activation shared by
    members with different norms (the normalisation stage) is one call over all of them."""

    norms: list[_Segment[Norm]]
    acts: list[_Segment[Activation]]

    @classmethod
    def of(cls, cfgs: Sequence[TrainConfig]) -> _Layout:
        return cls(
            _segments([norms.get(c.norm) for c in cfgs]),
            _segments([activations.get(c.activation) for c in cfgs]),
        )


def _slices(segs: list[_Segment[_E]]) -> list[tuple[_E, slice]]:
    return [(seg.kind, slice(seg.start, seg.stop)) for seg in segs]


# A layer of a stack whose members differ in normalisation or activation applies each run of
# members to its slice, writing into one output tensor: no concatenation of the parts.


def _normalize(
    segs: list[_Segment[Norm]],
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
    for norm, sl in _slices(segs):
        args = (z[sl], gamma[sl], beta[sl], rmean[sl], rvar[sl])
        if train:
            runs.append(norm.forward_train(*args, out=u[sl])[1])
        else:
            norm.forward_eval(*args, out=u[sl])
    return u, runs


def _normalize_backward(
    segs: list[_Segment[Norm]],
    g: torch.Tensor,
    z: torch.Tensor,
    gamma: torch.Tensor,
    saved: list[tuple],
    g_gamma: torch.Tensor,
    g_beta: torch.Tensor,
) -> torch.Tensor:
    """Gradient w.r.t. ``z`` of :func:`_normalize` (``g`` is overwritten)."""
    if len(segs) == 1:
        return segs[0].kind.backward(g, z, gamma, saved[0], g_gamma, g_beta)
    for (norm, sl), run in zip(_slices(segs), saved, strict=True):
        part = g[sl]
        got = norm.backward(part, z[sl], gamma[sl], run, g_gamma[sl], g_beta[sl])
        if got.data_ptr() != part.data_ptr():
            part.copy_(got)
    return g


def _activate(segs: list[_Segment[Activation]], u: torch.Tensor) -> torch.Tensor:
    """Each run's activation of ``u`` [K, B, W]."""
    if len(segs) == 1:
        return segs[0].kind.forward(u)
    a = torch.empty_like(u)
    for act, sl in _slices(segs):
        act.forward(u[sl], out=a[sl])
    return a


def _activate_backward(
    segs: list[_Segment[Activation]], g: torch.Tensor, u: torch.Tensor, a: torch.Tensor
) -> torch.Tensor:
    """Gradient w.r.t. ``u`` of :func:`_activate` given ``g`` w.r.t. its output ``a``."""
    if len(segs) == 1:
        return segs[0].kind.backward(g, u, a)
    g_u = torch.empty_like(g)
    for act, sl in _slices(segs):
        act.backward(g[sl], u[sl], a[sl], out=g_u[sl])
    return g_u


@dataclass
class _LossSpec:
    """Per-member dropout and training-loss settings of a (sub)stack, in stack order."""

    dropout: list[float] | None  # None: no member drops out
    generators: list[torch.Generator]  # each member's dropout generator
    smoothing: torch.Tensor | None  # [K] label smoothing; None: none
    weights: torch.Tensor | None  # [K, classes] class weights; None: unweighted

    def masks(self, k: int, n_batch: int, width: int, device: torch.device) -> torch.Tensor | None:
        """Inverted-dropout masks [K, B, width]: 0 or ``1/(1-p)``, one generator per member."""
        if self.dropout is None:
            return None
        mask = torch.ones(k, n_batch, width, device=device)
        for m, p in enumerate(self.dropout):
            if p > 0:
                dropout_mask(p, (n_batch, width), self.generators[m], out=mask[m])
        return mask


def dropout_mask(
    p: float, shape: tuple[int, ...], generator: torch.Generator, out: torch.Tensor | None = None
) -> torch.Tensor:
    """One member's inverted-dropout mask: ``(u >= p) / (1 - p)`` for ``u ~ U[0, 1)`` drawn
    from ``generator``; kept activations are scaled so the expectation is unchanged."""
    u = torch.rand(shape, generator=generator, device=generator.device, out=out)
    return u.ge_(p).mul_(1.0 / (1.0 - p))


def _loss_and_grad(
    logits: torch.Tensor, yb: torch.Tensor, spec: _LossSpec, minus_one: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss per member [K] and its gradient w.r.t. ``logits`` [K, B, C].

    Plain cross-entropy (the mean over the batch) has the gradient ``(softmax - onehot) / B``.
    With class weights ``w`` and label smoothing ``e`` the loss is torch's: per row
    ``(1-e) w_y (-log p_y) + e/C sum_c w_c (-log p_c)``, summed and divided by ``sum w_y``; its
    gradient is ``[p ((1-e) w_y + e/C sum_c w_c) - (1-e) w_y onehot - e/C w] / sum w_y``."""
    logp = torch.log_softmax(logits, dim=2)
    target = yb.unsqueeze(2)
    n_batch, n_classes = logits.shape[1], logits.shape[2]
    if spec.smoothing is None and spec.weights is None:
        loss = logp.gather(2, target).squeeze(2).mean(1).neg_()
        g = logp.exp_()
        g.scatter_add_(2, target, minus_one.expand(target.shape))
        return loss, g.mul_(1.0 / n_batch)
    k = logits.shape[0]
    eps = spec.smoothing if spec.smoothing is not None else logits.new_zeros(k)
    w = spec.weights if spec.weights is not None else logits.new_ones(k, n_classes)
    wy = w.gather(1, yb)  # [K, B]
    total = wy.sum(1)  # [K]
    keep = (1 - eps)[:, None] * wy  # [K, B]: (1-e) w_y
    share = (eps / n_classes)[:, None]  # [K, 1]: e/C
    nll = logp.gather(2, target).squeeze(2).neg_()  # [K, B]
    smooth = torch.einsum("kbc,kc->kb", logp, w).neg_()  # [K, B]: sum_c w_c (-log p_c)
    loss = (keep * nll + share * smooth).sum(1) / total
    coef = keep + share * w.sum(1, keepdim=True)  # [K, B]
    g = logp.exp_().mul_(coef.unsqueeze(2))
    g.scatter_add_(2, target, keep.neg().unsqueeze(2))
    g.sub_((share * w).unsqueeze(1))
    return loss, g.div_(total[:, None, None])


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------


@dataclass
class _OptGroup:
    """Members trained by one optimizer call: same optimizer, lr, weight decay, momentum."""

    optimizer: Optimizer
    lr: float  # the base learning rate; the step's is schedule.lr_at(lr, t, total)
    weight_decay: float
    momentum: float
    schedule: Schedule
    total: int  # planned optimizer steps (scheduled members only)
    first: int  # a member (position in cfgs) whose step count is the group's
    members: list[int]  # stack positions
    lists: dict[str, list[torch.Tensor]]  # "p", "g", state names, "step": per-tensor views


class FusedGroup:
    """``K`` MLPs of equal widths trained as one stack (see the module docstring).

    Lower-level than :func:`train_group`, which drives it: ``train_step`` steps every member
    on one batch, ``train_step_subset`` only some (last partial batches, folds of other sizes),
    ``evaluate`` scores members on shared rows, ``drop`` removes members from the stack, and
    ``export`` rebuilds a member as the ``nn.Sequential`` that :func:`tuner.train.model.build_model`
    gives, with its current weights. ``drop`` and ``export`` take positions in ``cfgs``; the
    step and evaluation methods take stack positions (``active`` lists the members in stack
    order: members are sorted by normalisation and activation so that each kind is one slice).
    """

    def __init__(
        self,
        cfgs: Sequence[TrainConfig],
        n_features: int,
        n_classes: int,
        *,
        seeds: Sequence[int],
        precision: str = "fp32",
        device: str | torch.device = "cpu",
        total_steps: Sequence[int] | None = None,
        weights: Sequence[torch.Tensor | None] | None = None,
    ) -> None:
        cfgs = list(cfgs)
        if not cfgs:
            raise ValueError("train_group needs at least one configuration")
        if len(seeds) != len(cfgs):
            raise ValueError(f"got {len(seeds)} seeds for {len(cfgs)} configurations")
        hidden = {tuple(c.hidden) for c in cfgs}
        if len(hidden) != 1:
            raise ValueError(f"all members must share `hidden`; got {sorted(hidden)}")
        batch = {c.batch_size for c in cfgs}
        if len(batch) != 1:
            raise ValueError(f"all members must share `batch_size`; got {sorted(batch)}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.hidden: tuple[int, ...] = tuple(cfgs[0].hidden)
        self.batch_size: int = cfgs[0].batch_size
        self.n_features, self.n_classes = n_features, n_classes
        self.precision = precision
        self.device = torch.device(device)
        self.cfgs, self.seeds = cfgs, [int(s) for s in seeds]
        self.n_steps = [0] * len(cfgs)  # optimizer steps taken, per member
        # planned steps, per member: what a learning-rate schedule spans
        self.total_steps = [max(int(t), 1) for t in (total_steps or [1] * len(cfgs))]
        # training-loss class weights, per member (None: unweighted)
        self.weights = [
            None if w is None else w.to(self.device, torch.float32)
            for w in (weights or [None] * len(cfgs))
        ]
        scheduled = any(schedules.get(c.schedule).depends_on_step for c in cfgs)
        if scheduled and total_steps is None:
            raise ValueError("a learning-rate schedule needs total_steps")
        self._dropout_gens = [
            torch.Generator(device=self.device).manual_seed(s ^ _DROPOUT_SEED) for s in self.seeds
        ]

        # Stack order: members sorted by (norm, activation) so that each kind is one slice,
        # then by optimizer settings so that members stepped by one call are neighbours.
        self.order: list[int] = sorted(
            range(len(cfgs)),
            key=lambda i: (
                cfgs[i].norm,
                cfgs[i].activation,
                cfgs[i].optimizer,
                cfgs[i].lr,
                cfgs[i].schedule,
                cfgs[i].weight_decay,
                cfgs[i].momentum,
            ),
        )
        models = []
        for i in self.order:
            with seeded(self.seeds[i]):
                models.append(build_model(cfgs[i], n_features, n_classes))
        self._build_stack(models)

    # ---------------------------------------------------------------- construction

    def _build_stack(self, models: list[nn.Sequential]) -> None:
        dev = self.device
        linears = [[m for m in model if isinstance(m, nn.Linear)] for model in models]
        member_norms = [norms.get(self.cfgs[i].norm) for i in self.order]
        norm_layers = [norm.layers(model) for norm, model in zip(member_norms, models, strict=True)]
        n_layers = len(self.hidden) + 1
        params: list[torch.Tensor] = []
        self._w_idx, self._b_idx = [], []
        self._gamma_idx: list[int] = []
        self._beta_idx: list[int] = []
        for layer in range(n_layers):
            w = torch.stack([lin[layer].weight.detach() for lin in linears]).to(dev)
            b = torch.stack([lin[layer].bias.detach() for lin in linears]).to(dev)
            self._w_idx.append(len(params))
            params.append(w.contiguous())
            self._b_idx.append(len(params))
            params.append(b.contiguous())
        self.running: list[tuple[torch.Tensor, torch.Tensor]] = []
        for layer, width in enumerate(self.hidden):
            gamma = torch.ones(len(models), width)
            beta = torch.zeros(len(models), width)
            rmean = torch.zeros(len(models), width)
            rvar = torch.ones(len(models), width)
            for k, ns in enumerate(norm_layers):
                if ns:
                    gamma[k] = ns[layer].weight.detach()
                    beta[k] = ns[layer].bias.detach()
                    if member_norms[k].running_stats:
                        rmean[k] = ns[layer].running_mean
                        rvar[k] = ns[layer].running_var
            self._gamma_idx.append(len(params))
            params.append(gamma.to(dev))
            self._beta_idx.append(len(params))
            params.append(beta.to(dev))
            self.running.append((rmean.to(dev), rvar.to(dev)))
        self.params = params
        self.grads = [torch.zeros_like(p) for p in params]
        # Every state buffer any member's optimizer keeps, zero, for all members (a member
        # uses its slices of its optimizer's buffers); optimizers that share a state name share
        # its buffers. Allocated in registry order.
        used = {self.cfgs[i].optimizer for i in self.order}
        self.state: dict[str, list[torch.Tensor]] = {}
        for name, opt in optimizers.REGISTRY.items():
            if name in used:
                for state in opt.state_names:
                    if state not in self.state:
                        self.state[state] = [torch.zeros_like(p) for p in params]
        self.steps = torch.zeros(len(models), device=dev)  # per-member optimizer step counts
        self._rebuild()

    def _rebuild(self) -> None:
        """Recompute everything derived from ``self.order`` and the buffers."""
        self.layout = _Layout.of([self.cfgs[i] for i in self.order])
        self.loss_spec = self._loss_spec(self.order)
        self.opt_groups = self._opt_groups(list(range(len(self.order))))
        self._groups_stale = False

    def _loss_spec(self, members: list[int]) -> _LossSpec:
        """Dropout and training-loss settings of ``members`` (positions in cfgs, stack order)."""
        cfgs = [self.cfgs[i] for i in members]
        dev = self.device
        drop = [c.dropout for c in cfgs]
        eps = [c.label_smoothing for c in cfgs]
        ws = [self.weights[i] for i in members]
        weights = None
        if any(w is not None for w in ws):
            ones = torch.ones(self.n_classes, device=dev)
            weights = torch.stack([ones if w is None else w for w in ws])
        return _LossSpec(
            dropout=drop if any(drop) else None,
            generators=[self._dropout_gens[i] for i in members],
            smoothing=torch.tensor(eps, device=dev) if any(eps) else None,
            weights=weights,
        )

    def _opt_key(self, pos: int) -> tuple:
        """Members stepped by one optimizer call share this. A scheduled learning rate depends
        on the step count and the planned steps, so those join the key."""
        i = self.order[pos]
        cfg = self.cfgs[i]
        momentum = cfg.momentum if optimizers.get(cfg.optimizer).uses_momentum else 0.0
        key = (cfg.optimizer, cfg.lr, cfg.weight_decay, momentum, cfg.schedule)
        if schedules.get(cfg.schedule).depends_on_step:
            key += (self.n_steps[i], self.total_steps[i])
        return key

    def _opt_groups(self, positions: list[int]) -> list[_OptGroup]:
        """The optimizer calls that step the members at stack ``positions`` (ascending).

        One call per (optimizer, lr, weight decay, momentum). Inside a call, neighbours in the
        stack with the same step count and the same parameter set (with or without norm
        parameters) form a run whose tensors are passed as slices ``buffer[k0:k1]``: a group
        of ``K`` members with one learning rate is one call over a handful of tensors, not
        ``K`` x (number of parameter tensors)."""
        runs: dict[tuple, list[list]] = {}
        for pos in positions:
            i = self.order[pos]
            sub = (self.n_steps[i], norms.get(self.cfgs[i].norm).has_params)
            rs = runs.setdefault(self._opt_key(pos), [])
            if rs and rs[-1][1] == pos and rs[-1][2] == sub:
                rs[-1][1] = pos + 1
            else:
                rs.append([pos, pos + 1, sub])
        groups = []
        for key, rs in runs.items():
            kind, lr, wd, mom, schedule = key[:5]
            optimizer = optimizers.get(kind)
            names = optimizer.state_names
            lists: dict[str, list[torch.Tensor]] = {n: [] for n in ("p", "g", "step", *names)}
            members = []
            for k0, k1, (_, has_norm) in rs:
                members.extend(range(k0, k1))
                ids = [*self._w_idx, *self._b_idx]
                if has_norm:
                    ids += [*self._gamma_idx, *self._beta_idx]
                for i in ids:
                    lists["p"].append(self.params[i][k0:k1])
                    lists["g"].append(self.grads[i][k0:k1])
                    lists["step"].append(self.steps[k0])
                    for name in names:
                        lists[name].append(self.state[name][i][k0:k1])
            first = self.order[members[0]]
            groups.append(
                _OptGroup(
                    optimizer,
                    lr,
                    wd,
                    mom,
                    schedules.get(schedule),
                    self.total_steps[first],
                    first,
                    members,
                    lists,
                )
            )
        return groups

    # ---------------------------------------------------------------- members

    @property
    def active(self) -> list[int]:
        """Members still in the stack (positions in ``cfgs``), in stack order."""
        return list(self.order)

    def drop(self, members: Iterable[int]) -> None:
        """Remove members (positions in ``cfgs``) from the stack; the others are unaffected."""
        gone = set(members)
        keep = [pos for pos, i in enumerate(self.order) if i not in gone]
        if len(keep) == len(self.order):
            return
        sel = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.order = [self.order[pos] for pos in keep]

        def take(ts: list[torch.Tensor]) -> list[torch.Tensor]:
            return [t.index_select(0, sel) for t in ts]

        self.params, self.grads = take(self.params), take(self.grads)
        self.state = {name: take(ts) for name, ts in self.state.items()}
        self.running = [(m.index_select(0, sel), v.index_select(0, sel)) for m, v in self.running]
        self.steps = self.steps.index_select(0, sel)
        self._rebuild()

    def export(self, member: int) -> nn.Sequential:
        """Member ``member`` (position in ``cfgs``) as a plain ``nn.Sequential`` in eval mode."""
        with torch.inference_mode(False):  # export() may run inside train_group's on_epoch
            return self._export(member)

    def _export(self, member: int) -> nn.Sequential:
        pos = self.order.index(member)
        cfg = self.cfgs[member]
        model = build_model(cfg, self.n_features, self.n_classes)
        linears = [m for m in model if isinstance(m, nn.Linear)]
        kind = norms.get(cfg.norm)
        with torch.no_grad():
            for layer, lin in enumerate(linears):
                lin.weight.copy_(self.params[self._w_idx[layer]][pos])
                lin.bias.copy_(self.params[self._b_idx[layer]][pos])
            for layer, norm in enumerate(kind.layers(model)):
                norm.weight.copy_(self.params[self._gamma_idx[layer]][pos])
                norm.bias.copy_(self.params[self._beta_idx[layer]][pos])
                if kind.running_stats:
                    norm.running_mean.copy_(self.running[layer][0][pos])
                    norm.running_var.copy_(self.running[layer][1][pos])
                    norm.num_batches_tracked.fill_(self.n_steps[member])
        return model.to(self.device).eval()

    # ---------------------------------------------------------------- arithmetic

    def _minus_one(self, dtype: torch.dtype) -> torch.Tensor:
        cached = getattr(self, "_minus_one_cache", None)
        if cached is None or cached.dtype != dtype:
            cached = self._minus_one_cache = torch.full(
                (1, 1, 1), -1.0, dtype=dtype, device=self.device
            )
        return cached

    def _mm(self, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """``h @ w^T + b`` per member: h [K, B, in], w [K, out, in], b [K, out]."""
        if self.precision == "bf16":
            z = torch.bmm(h.to(torch.bfloat16), w.to(torch.bfloat16).transpose(1, 2)).float()
            return z if b is None else z.add_(b.unsqueeze(1))
        if b is None:
            return torch.bmm(h, w.transpose(1, 2))
        return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))

    def _mm_logits(self, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The output layer, ``h @ w^T + b`` [K, B, classes], computed as ``(w @ h^T)^T``: with
        few classes MKL is several times faster with them as the GEMM's rows."""
        if self.precision == "bf16":
            zt = torch.bmm(w.to(torch.bfloat16), h.to(torch.bfloat16).transpose(1, 2)).float()
            return zt.add_(b.unsqueeze(2)).transpose(1, 2)
        return torch.baddbmm(b.unsqueeze(2), w, h.transpose(1, 2)).transpose(1, 2)

    def _mm_grads(
        self, g: torch.Tensor, h: torch.Tensor, w: torch.Tensor, gw: torch.Tensor, need_h: bool
    ) -> torch.Tensor | None:
        """Write ``g^T h`` (the weight gradient) into ``gw``; return ``g w`` if ``need_h``."""
        if self.precision == "bf16":
            gb = g.to(torch.bfloat16)
            gw.copy_(torch.bmm(gb.transpose(1, 2), h.to(torch.bfloat16)))
            return torch.bmm(gb, w.to(torch.bfloat16)).float() if need_h else None
        torch.bmm(g.transpose(1, 2), h, out=gw)
        return torch.bmm(g, w) if need_h else None

    def _forward_backward(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        running: list[tuple[torch.Tensor, torch.Tensor]],
        layout: _Layout,
        spec: _LossSpec,
        xb: torch.Tensor,
        yb: torch.Tensor,
    ) -> torch.Tensor:
        """One training step's forward and backward pass for a (sub)stack.

        ``xb`` [K, B, F] (may be a stride-0 expand), ``yb`` [K, B]. Writes every gradient into
        ``grads``, updates the running statistics of norms that keep them in ``running``,
        returns the training loss per member [K] (what ``nn.CrossEntropyLoss(weight,
        label_smoothing)`` gives)."""
        n_batch = xb.shape[1]
        saved = []
        h = xb
        for layer in range(len(self.hidden)):
            z = self._mm(h, params[self._w_idx[layer]], params[self._b_idx[layer]])
            gamma, beta = params[self._gamma_idx[layer]], params[self._beta_idx[layer]]
            rmean, rvar = running[layer]
            u, norm_saved = _normalize(layout.norms, z, gamma, beta, rmean, rvar, train=True)
            a = _activate(layout.acts, u)
            mask = spec.masks(len(z), n_batch, z.shape[2], z.device)
            saved.append((h, z, u, a, norm_saved, mask))
            h = a if mask is None else a * mask
        logits = self._mm_logits(h, params[self._w_idx[-1]], params[self._b_idx[-1]])
        loss, g = _loss_and_grad(logits, yb, spec, self._minus_one(logits.dtype))

        # Backward, output layer first.
        n_layers = len(self.hidden) + 1
        for layer in reversed(range(n_layers)):
            w_i, b_i = self._w_idx[layer], self._b_idx[layer]
            h_in = saved[layer][0] if layer < len(self.hidden) else h
            torch.sum(g, 1, out=grads[b_i])
            g_h = self._mm_grads(g, h_in, params[w_i], grads[w_i], need_h=layer > 0)
            if layer == 0:
                break
            _, z, u, a, norm_saved, mask = saved[layer - 1]
            if mask is not None:
                g_h = g_h.mul_(mask)
            g_u = _activate_backward(layout.acts, g_h, u, a)
            gamma = params[self._gamma_idx[layer - 1]]
            g_gamma, g_beta = grads[self._gamma_idx[layer - 1]], grads[self._beta_idx[layer - 1]]
            g = _normalize_backward(layout.norms, g_u, z, gamma, norm_saved, g_gamma, g_beta)
        return loss

    def _forward_eval(self, params, running, layout: _Layout, xb: torch.Tensor) -> torch.Tensor:
        h = xb
        for layer in range(len(self.hidden)):
            z = torch.baddbmm(
                params[self._b_idx[layer]].unsqueeze(1),
                h,
                params[self._w_idx[layer]].transpose(1, 2),
            )
            gamma, beta = params[self._gamma_idx[layer]], params[self._beta_idx[layer]]
            rmean, rvar = running[layer]
            u, _ = _normalize(layout.norms, z, gamma, beta, rmean, rvar, train=False)
            h = _activate(layout.acts, u)
        w, b = params[self._w_idx[-1]], params[self._b_idx[-1]]
        return torch.baddbmm(b.unsqueeze(2), w, h.transpose(1, 2)).transpose(1, 2)

    def _optimizer_step(self, groups: list[_OptGroup]) -> None:
        for grp in groups:
            lr = grp.schedule.lr_at(grp.lr, self.n_steps[grp.first], grp.total)
            grp.optimizer.step(
                grp.lists, lr=lr, weight_decay=grp.weight_decay, momentum=grp.momentum
            )

    # ---------------------------------------------------------------- steps

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One optimizer step of every member: ``xb`` [B, F] shared or [K, B, F] per member,
        ``yb`` [B] or [K, B]. Returns the mean loss per member [K] (stack order)."""
        k = len(self.order)
        if xb.dim() == 2:
            xb, yb = xb.expand(k, *xb.shape), yb.expand(k, yb.shape[0])
        loss = self._forward_backward(
            self.params, self.grads, self.running, self.layout, self.loss_spec, xb, yb
        )
        if self._groups_stale:
            self.opt_groups = self._opt_groups(list(range(k)))
            self._groups_stale = False
        self.steps += 1
        self._optimizer_step(self.opt_groups)
        for i in self.order:
            self.n_steps[i] += 1
        return loss

    def train_step_subset(
        self, positions: list[int], xb: torch.Tensor, yb: torch.Tensor
    ) -> torch.Tensor:
        """A step of the members at stack ``positions`` only (the others do not move)."""
        if len(positions) == len(self.order):
            return self.train_step(xb, yb)
        k = len(positions)
        if xb.dim() == 2:
            xb, yb = xb.expand(k, *xb.shape), yb.expand(k, yb.shape[0])
        lo, hi = positions[0], positions[-1] + 1
        contiguous = positions == list(range(lo, hi))
        if contiguous:  # views: gradients and running statistics land in place
            params = [p[lo:hi] for p in self.params]
            grads = [g[lo:hi] for g in self.grads]
            running = [(m[lo:hi], v[lo:hi]) for m, v in self.running]
        else:
            sel = torch.tensor(positions, dtype=torch.long, device=self.device)
            params = [p.index_select(0, sel) for p in self.params]
            grads = [torch.empty_like(p) for p in params]
            running = [(m.index_select(0, sel), v.index_select(0, sel)) for m, v in self.running]
        members = [self.order[pos] for pos in positions]
        layout = _Layout.of([self.cfgs[i] for i in members])
        spec = self._loss_spec(members)
        loss = self._forward_backward(params, grads, running, layout, spec, xb, yb)
        if not contiguous:
            for dst, src in zip(self.grads, grads, strict=True):
                dst.index_copy_(0, sel, src)
            for (m, v), (ms, vs) in zip(self.running, running, strict=True):
                m.index_copy_(0, sel, ms)
                v.index_copy_(0, sel, vs)
        groups = self._opt_groups(positions)
        for pos in positions:
            self.steps[pos] += 1
            self.n_steps[self.order[pos]] += 1
        self._optimizer_step(groups)
        self._groups_stale = True  # step counts may differ now: regroup the runs
        return loss

    @torch.inference_mode()
    def evaluate(
        self, positions: list[int], x: torch.Tensor, y: torch.Tensor
    ) -> tuple[list[float], list[float]]:
        """Mean cross-entropy and accuracy on ``(x, y)`` of the members at stack ``positions``
        (all evaluated on the same rows), in eval mode (norms use their running statistics)."""
        k = len(positions)
        if k == len(self.order):
            params, running, layout = self.params, self.running, self.layout
        else:
            sel = torch.tensor(positions, dtype=torch.long, device=self.device)
            params = [p.index_select(0, sel) for p in self.params]
            running = [(m.index_select(0, sel), v.index_select(0, sel)) for m, v in self.running]
            layout = _Layout.of([self.cfgs[self.order[pos]] for pos in positions])
        n = len(x)
        chunk = max(1, min(EVAL_BATCH, _EVAL_ELEMENTS // (k * max(*self.hidden, self.n_classes))))
        loss_sum = torch.zeros(k, dtype=torch.float64, device=self.device)
        correct = torch.zeros(k, dtype=torch.long, device=self.device)
        for start in range(0, n, chunk):
            xb = x[start : start + chunk]
            yb = y[start : start + chunk]
            logits = self._forward_eval(params, running, layout, xb.expand(k, *xb.shape))
            logp = torch.log_softmax(logits, dim=2)
            target = yb.expand(k, len(yb)).unsqueeze(2)
            loss_sum -= logp.gather(2, target).sum((1, 2), dtype=torch.float64)
            correct += (logits.argmax(dim=2) == yb).sum(1)
        denom = max(n, 1)
        return (loss_sum / denom).tolist(), (correct.double() / denom).tolist()


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def _same_rows(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a is b or (a.shape == b.shape and bool(torch.equal(a, b)))


def _dedupe(idx: Sequence[torch.Tensor | None]) -> list[int]:
    """For each entry, the position of its first equal entry (rows identical)."""
    firsts: list[int] = []
    ids = []
    for t in idx:
        for j in firsts:
            if _same_rows(idx[j], t):
                ids.append(j)
                break
        else:
            firsts.append(len(ids))
            ids.append(len(ids))
    return ids


# --------------------------------------------------------------------------------------------
# The public entry point
# --------------------------------------------------------------------------------------------


def train_group(
    cfgs: Sequence[TrainConfig],
    x: torch.Tensor,
    y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    *,
    epochs: int,
    seeds: Sequence[int],
    n_classes: int,
    train_idx: Sequence[torch.Tensor] | None = None,
    val_idx: Sequence[torch.Tensor] | None = None,
    on_epoch: OnEpoch | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    group: list[FusedGroup] | None = None,
) -> list[History]:
    """Train ``cfgs`` together as one stacked model; return one :class:`History` per member.

    Member ``k`` trains as ``reference.train(cfgs[k], (x[train_idx[k]], y[train_idx[k]]),
    (val_x[val_idx[k]], val_y[val_idx[k]]), epochs=epochs, seed=seeds[k], ...)`` would train
    it alone: the same initial weights, batches, optimizer and per-epoch statistics (up to
    floating-point rounding). All members must share ``hidden`` and ``batch_size``; activation,
    norm, init, optimizer, lr, weight_decay, momentum, dropout, label_smoothing, class_weight
    (computed from the member's training rows) and schedule (over ``epochs`` times the member's
    batches per epoch) may differ.

    ``train_idx`` / ``val_idx``: per-member row subsets (CV folds); ``None``: all rows.
    ``on_epoch(epoch, stats)`` runs after every epoch with one :class:`EpochStats` per member
    (``None`` for members already stopped); it may return member indices to stop now (pruned
    trials: they leave the stack and their histories end here, marked ``stopped_early``), or
    raise to abort the whole group. ``EpochStats.seconds`` is the group's wall time for the
    epoch (training and evaluation of all members).
    ``precision``: ``"fp32"`` or ``"bf16"`` (bfloat16 GEMMs, fp32 master weights; see the module
    docstring). ``device``: where the stack lives; the data are copied there once.
    ``group``: if a list is given, the :class:`FusedGroup` is appended to it (to export the
    trained members).
    """
    k_all = len(cfgs)
    if k_all == 0:
        return []
    if train_idx is not None and len(train_idx) != k_all:
        raise ValueError(f"train_idx has {len(train_idx)} entries for {k_all} configurations")
    if val_idx is not None and len(val_idx) != k_all:
        raise ValueError(f"val_idx has {len(val_idx)} entries for {k_all} configurations")
    dev = torch.device(device)
    tr_cpu = [None if train_idx is None else train_idx[i] for i in range(k_all)]
    n_rows = [len(x) if t is None else len(t) for t in tr_cpu]
    min_size = [norms.get(c.norm).min_batch for c in cfgs]
    sizes = [batch_sizes(n_rows[i], cfgs[i].batch_size, min_size[i]) for i in range(k_all)]
    weights = [
        class_weights(c.class_weight, y if t is None else y[t], n_classes)
        for c, t in zip(cfgs, tr_cpu, strict=True)
    ]
    fg = FusedGroup(
        cfgs,
        x.shape[1],
        n_classes,
        seeds=seeds,
        precision=precision,
        device=dev,
        total_steps=[epochs * len(s) for s in sizes],
        weights=weights,
    )
    if group is not None:
        group.append(fg)
    x, y = x.to(dev), y.to(dev)
    val_x, val_y = val_x.to(dev), val_y.to(dev)
    tr = [None if t is None else t.to(dev) for t in tr_cpu]
    va = [None if val_idx is None else val_idx[i].to(dev) for i in range(k_all)]
    row_set = _dedupe(tr)
    val_set = _dedupe(va)
    val_data: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i in range(k_all):
        j = val_set[i]
        if j not in val_data:
            val_data[j] = (val_x, val_y) if va[j] is None else (val_x[va[j]], val_y[va[j]])
    generators: dict[tuple[int, int], torch.Generator] = {}
    for i in range(k_all):
        key = (fg.seeds[i], n_rows[i])
        if key not in generators:
            generators[key] = torch.Generator().manual_seed(fg.seeds[i])
    histories = [History() for _ in range(k_all)]
    bsz = fg.batch_size

    with torch.inference_mode():
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            members = fg.active  # original indices, stack order
            # One permutation per distinct (seed, n), drawn in the order reference.train would.
            perms = {}
            for i in members:
                key = (fg.seeds[i], n_rows[i])
                if key not in perms:
                    perms[key] = torch.randperm(n_rows[i], generator=generators[key]).to(dev)
            rows = {}
            for i in members:
                key = (fg.seeds[i], n_rows[i], row_set[i])
                if key not in rows:
                    perm = perms[key[:2]]
                    rows[key] = perm if tr[i] is None else tr[i][perm]
            row_of = [rows[(fg.seeds[i], n_rows[i], row_set[i])] for i in members]
            shared = len(rows) == 1
            n_full = min(n_rows[i] // bsz for i in members)
            loss_sum = torch.zeros(len(members), device=dev)
            seen = [0] * len(members)
            if shared:
                r = row_of[0]
                for s in range(n_full):
                    idx = r[s * bsz : (s + 1) * bsz]
                    loss_sum += fg.train_step(x[idx], y[idx])
            elif n_full:
                mat = torch.stack([r[: n_full * bsz] for r in row_of])
                for s in range(n_full):
                    idx = mat[:, s * bsz : (s + 1) * bsz]
                    loss_sum += fg.train_step(x[idx], y[idx])
            if n_full:
                loss_sum *= bsz
                seen = [n_full * bsz] * len(members)
            # The rest: last partial batches, members with more rows than others.
            n_steps = max(len(sizes[i]) for i in members)
            for s in range(n_full, n_steps):
                by_size: dict[int, list[int]] = {}
                for pos, i in enumerate(members):
                    if s < len(sizes[i]):
                        by_size.setdefault(sizes[i][s], []).append(pos)
                for b, positions in by_size.items():
                    if len({id(row_of[p]) for p in positions}) == 1:
                        idx = row_of[positions[0]][s * bsz : s * bsz + b]
                    else:
                        idx = torch.stack([row_of[p][s * bsz : s * bsz + b] for p in positions])
                    loss = fg.train_step_subset(positions, x[idx], y[idx])
                    sel = torch.tensor(positions, dtype=torch.long, device=dev)
                    loss_sum.index_add_(0, sel, loss * b)
                    for p in positions:
                        seen[p] += b
            train_loss = (
                loss_sum.double().cpu() / torch.tensor([max(n, 1) for n in seen])
            ).tolist()

            # Evaluation, grouped by validation subset.
            val_loss, val_acc = [0.0] * len(members), [0.0] * len(members)
            by_val: dict[int, list[int]] = {}
            for pos, i in enumerate(members):
                by_val.setdefault(val_set[i], []).append(pos)
            for j, positions in by_val.items():
                losses, accs = fg.evaluate(positions, *val_data[j])
                for pos, lo, ac in zip(positions, losses, accs, strict=True):
                    val_loss[pos], val_acc[pos] = lo, ac
            seconds = time.perf_counter() - t0
            stats: list[EpochStats | None] = [None] * k_all
            for pos, i in enumerate(members):
                stats[i] = EpochStats(epoch, train_loss[pos], val_loss[pos], val_acc[pos], seconds)
                histories[i].epochs.append(stats[i])
            if on_epoch is not None:
                stop = on_epoch(epoch, stats)
                if stop:
                    stop = {int(i) for i in stop} & set(members)
                    if stop and epoch < epochs:
                        for i in stop:
                            histories[i].stopped_early = True
                        fg.drop(stop)
                        if not fg.active:
                            break
    return histories


def train_one(
    cfg: TrainConfig,
    train_xy: tuple[torch.Tensor, torch.Tensor],
    val_xy: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    seed: int,
    n_classes: int,
    patience: int | None = None,
    restore_best: bool = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
    compute: Compute | None = None,
) -> tuple[nn.Module, History]:
    """One trial through the fused engine; the contract of :func:`tuner.train.reference.train`.

    ``patience``: stop when validation loss has not improved for that many epochs.
    ``restore_best``: return the weights of the best-validation-loss epoch instead of the last.
    The model is returned as a plain ``nn.Sequential`` on the CPU, in eval mode.
    """
    compute = compute or Compute()
    stopping = EarlyStopping(patience)
    best_state: dict | None = None
    holder: list[FusedGroup] = []
    stopped: list[nn.Module] = []  # the model at an early stop (it leaves the stack)

    def hook(epoch: int, stats: list[EpochStats | None]) -> list[int]:
        nonlocal best_state
        e = stats[0]
        assert e is not None
        if on_epoch is not None:
            on_epoch(e)
        if stopping.update(e.val_loss) and restore_best:
            best_state = copy.deepcopy(holder[0].export(0).state_dict())
        if stopping.should_stop and epoch < epochs:
            stopped.append(holder[0].export(0))
            return [0]
        return []

    (history,) = train_group(
        [cfg],
        *train_xy,
        *val_xy,
        epochs=epochs,
        seeds=[seed],
        n_classes=n_classes,
        on_epoch=hook,
        precision=compute.precision,
        device=compute.device,
        group=holder,
    )
    model = stopped[0] if stopped else holder[0].export(0)
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return model.cpu().eval(), history
