"""``K`` MLPs of equal widths trained as one stacked model: :class:`FusedGroup`.

Layer ``l`` of all members is one ``[K, out, in]`` weight tensor and one batched matrix
product runs it for every member (:mod:`tuner.train.layers`). Each member keeps its own
initialisation (built exactly as :func:`tuner.train.model.build_model` builds it, under its
seed), its own optimizer state, learning rate, weight decay and momentum, its own activation and
normalisation, dropout, label smoothing, class weights and learning-rate schedule (over the
member's planned steps: each optimizer call steps members at the same point of the same
schedule).

Why by hand. Alone, a step of a 256x256 MLP (the seed plan's exact-erf activation and default
optimizer, batch 128, a 2-core CPU) is three small GEMMs (~64 MFLOP) and ~290 ATen calls
(autograd nodes, AccumulateGrad, dtype/scalar copies, and a ``torch.optim`` optimizer that loops
over the six parameters in Python: ~1 ms of a ~3 ms step). In the stack a step is ~130 calls
whatever ``K`` is (one optimizer call more per distinct learning rate), so the fixed cost is
shared and the GEMMs are ``K`` times larger; from about six members on, GEMMs are 70-75% of the
step, the activation's forward and backward ~15% and the fused optimizer step ~6%. To remove
what is not arithmetic the stack

* runs the backward pass by hand, layer by layer (:mod:`tuner.train.layers`), with the ATen
  backward kernels autograd would call, so no graph is recorded and every gradient is written
  straight into a preallocated ``[K, ...]`` buffer (``out=``);
* steps the optimizers with one call for all members that share the optimizer and its
  hyperparameters, over slices of the stacked buffers built once: torch's fused multi-tensor
  kernels where torch has one (one pass over memory instead of ~8 elementwise passes), its
  ``_foreach`` ops otherwise (:mod:`tuner.train.options.optimizers`);
* never synchronises per step (no ``.item()``): losses come back as a ``[K]`` tensor;
* evaluates in chunks under ``torch.inference_mode()``.

The network is data: the layers :func:`tuner.train.layers.mlp` lists, each holding the
positions of its tensors in the stack's one parameter list (gradients and optimizer state are
lists alongside), run forward in order and backward in reverse. Members are kept sorted by
(norm, activation), so each kind is one slice of the stack, then by optimizer settings, so
that members stepped by one call are neighbours.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tuner.train.compute import PRECISIONS
from tuner.train.config import TrainConfig
from tuner.train.layers import mlp
from tuner.train.layers.base import Layout, Pass
from tuner.train.loss import DROPOUT_SEED, LossSpec, loss_and_grad
from tuner.train.model import EVAL_BATCH, build_model, seeded
from tuner.train.options import embeddings, optimizers, schedules
from tuner.train.options.optimizers import Optimizer
from tuner.train.options.schedules import Schedule

_EVAL_ELEMENTS = 1 << 22  # activations per evaluation chunk, summed over members (16 MB fp32)


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

    The epoch loop (:mod:`tuner.train.loop`) drives it: ``train_step`` steps every member on
    one batch, ``train_step_subset`` only some (last partial batches, folds of other sizes),
    ``evaluate`` scores members on shared rows, ``drop`` removes members from the stack, and
    ``export`` rebuilds a member as the ``nn.Sequential`` that
    :func:`tuner.train.model.build_model` gives, with its current weights. ``drop`` and
    ``export`` take positions in ``cfgs``; the step and evaluation methods take stack positions
    (``active`` lists the members in stack order).
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
        fitted: Sequence[dict[str, Any] | None] | None = None,
    ) -> None:
        cfgs = list(cfgs)
        check_group(cfgs, seeds, precision)
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
            torch.Generator(device=self.device).manual_seed(s ^ DROPOUT_SEED) for s in self.seeds
        ]
        self.order: list[int] = sorted(range(len(cfgs)), key=lambda i: _stack_key(cfgs[i]))
        # what each member's embedding fitted on its training rows (bin edges)
        self.fitted = list(fitted or [None] * len(cfgs))
        models = []
        for i in self.order:
            with seeded(self.seeds[i]):
                models.append(build_model(cfgs[i], n_features, n_classes, self.fitted[i]))
        embedding = cfgs[0].embedding
        self.layers = mlp(
            len(self.hidden),
            precision,
            None if embeddings.get(embedding).module_free else embedding,
        )
        self._build_stack(models)

    # ---------------------------------------------------------------- construction

    def _build_stack(self, models: list[nn.Sequential]) -> None:
        dev = self.device
        params: list[torch.Tensor] = []
        self.running: list[tuple[torch.Tensor, torch.Tensor]] = []
        cfgs = [self.cfgs[i] for i in self.order]
        for layer in self.layers:
            layer.stack(models, cfgs, params, self.running, dev)
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
        self.layout = Layout.of([self.cfgs[i] for i in self.order])
        self.loss_spec = self._loss_spec(self.order)
        self.opt_groups = self._opt_groups(list(range(len(self.order))))
        self._groups_stale = False

    def _loss_spec(self, members: list[int]) -> LossSpec:
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
        return LossSpec(
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
        stack with the same step count and the same trained parameters (with or without norm
        parameters) form a run whose tensors are passed as slices ``buffer[k0:k1]``: a group
        of ``K`` members with one learning rate is one call over a handful of tensors, not
        ``K`` x (number of parameter tensors)."""
        runs: dict[tuple, list[list]] = {}
        for pos in positions:
            i = self.order[pos]
            ids = tuple(
                j for layer in self.layers if layer.trained(self.cfgs[i]) for j in layer.ids
            )
            sub = (self.n_steps[i], ids)
            rs = runs.setdefault(self._opt_key(pos), [])
            if rs and rs[-1][1] == pos and rs[-1][2] == sub:
                rs[-1][1] = pos + 1
            else:
                rs.append([pos, pos + 1, sub])
        return [self._opt_group(key, rs) for key, rs in runs.items()]

    def _opt_group(self, key: tuple, runs: list[list]) -> _OptGroup:
        """One optimizer call over ``runs`` ``[k0, k1, (steps, parameter ids)]`` of the stack."""
        kind, lr, wd, mom, schedule = key[:5]
        optimizer = optimizers.get(kind)
        names = optimizer.state_names
        lists: dict[str, list[torch.Tensor]] = {n: [] for n in ("p", "g", "step", *names)}
        members = []
        for k0, k1, (_, ids) in runs:
            members.extend(range(k0, k1))
            for i in ids:
                lists["p"].append(self.params[i][k0:k1])
                lists["g"].append(self.grads[i][k0:k1])
                lists["step"].append(self.steps[k0])
                for name in names:
                    lists[name].append(self.state[name][i][k0:k1])
        first = self.order[members[0]]
        return _OptGroup(
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
            pos = self.order.index(member)
            cfg = self.cfgs[member]
            model = build_model(cfg, self.n_features, self.n_classes, self.fitted[member])
            with torch.no_grad():
                for layer in self.layers:
                    layer.export(self.params, self.running, pos, model, cfg, self.n_steps[member])
            return model.to(self.device).eval()

    # ---------------------------------------------------------------- arithmetic

    def _minus_one(self, dtype: torch.dtype) -> torch.Tensor:
        cached = getattr(self, "_minus_one_cache", None)
        if cached is None or cached.dtype != dtype:
            cached = self._minus_one_cache = torch.full(
                (1, 1, 1), -1.0, dtype=dtype, device=self.device
            )
        return cached

    def _forward_backward(self, p: Pass, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One training step's forward and backward pass for a (sub)stack.

        ``xb`` [K, B, F] (may be a stride-0 expand), ``yb`` [K, B]. Writes every gradient into
        ``p.grads``, updates the running statistics of norms that keep them in ``p.running``,
        returns the training loss per member [K] (what ``nn.CrossEntropyLoss(weight,
        label_smoothing)`` gives)."""
        h, tape = xb, []
        for layer in self.layers:
            h, saved = layer.forward(p, h)
            tape.append(saved)
        assert p.loss is not None
        loss, g = loss_and_grad(h, yb, p.loss, self._minus_one(h.dtype))
        for layer, saved in zip(reversed(self.layers), reversed(tape), strict=True):
            g = layer.backward(p, g, saved)
        return loss

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
        whole = Pass(self.params, self.grads, self.running, self.layout, self.loss_spec)
        loss = self._forward_backward(whole, xb, yb)
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
        layout = Layout.of([self.cfgs[i] for i in members])
        part = Pass(params, grads, running, layout, self._loss_spec(members))
        loss = self._forward_backward(part, xb, yb)
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
            p = Pass(self.params, [], self.running, self.layout, None)
        else:
            sel = torch.tensor(positions, dtype=torch.long, device=self.device)
            params = [t.index_select(0, sel) for t in self.params]
            running = [(m.index_select(0, sel), v.index_select(0, sel)) for m, v in self.running]
            layout = Layout.of([self.cfgs[self.order[pos]] for pos in positions])
            p = Pass(params, [], running, layout, None)
        n = len(x)
        cfg = self.cfgs[self.order[0]]
        embed = embeddings.get(cfg.embedding).elements(cfg, self.n_features)
        widest = max(*self.hidden, self.n_classes, embed)
        chunk = max(1, min(EVAL_BATCH, _EVAL_ELEMENTS // (k * widest)))
        loss_sum = torch.zeros(k, dtype=torch.float64, device=self.device)
        correct = torch.zeros(k, dtype=torch.long, device=self.device)
        for start in range(0, n, chunk):
            xb = x[start : start + chunk]
            yb = y[start : start + chunk]
            logits = xb.expand(k, *xb.shape)
            for layer in self.layers:
                logits = layer.forward_eval(p, logits)
            logp = torch.log_softmax(logits, dim=2)
            target = yb.expand(k, len(yb)).unsqueeze(2)
            loss_sum -= logp.gather(2, target).sum((1, 2), dtype=torch.float64)
            correct += (logits.argmax(dim=2) == yb).sum(1)
        denom = max(n, 1)
        return (loss_sum / denom).tolist(), (correct.double() / denom).tolist()


def stack_shape(cfg: TrainConfig) -> tuple:
    """What members of one stack must share: the hidden widths, the batch size, the
    embedding's kind and shape and the ensemble's size and kind (an ensemble trains through
    :class:`~tuner.train.ensemble_group.EnsembleGroup`); :func:`tuner.tune.runs.fusable` groups
    a stage's points by it."""
    embedding = embeddings.get(cfg.embedding).shape(cfg)
    ensemble = (cfg.ensemble, cfg.ensemble_kind) if cfg.ensemble > 1 else (1, "")
    return (tuple(cfg.hidden), cfg.batch_size, cfg.embedding, *embedding, *ensemble)


def check_group(cfgs: Sequence[TrainConfig], seeds: Sequence[int], precision: str) -> None:
    """Raise ``ValueError`` unless ``cfgs`` can be one stack: at least one member, a seed
    each, the same widths and batch size, a known precision."""
    if not cfgs:
        raise ValueError("train_group needs at least one configuration")
    if len(seeds) != len(cfgs):
        raise ValueError(f"got {len(seeds)} seeds for {len(cfgs)} configurations")
    shapes = {stack_shape(c) for c in cfgs}
    if len(shapes) != 1:
        raise ValueError(
            "all members must share their widths, batch size, embedding shape and ensemble "
            f"(`hidden`, `batch_size`, embedding, `ensemble`); got {sorted(shapes)}"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _stack_key(cfg: TrainConfig) -> tuple:
    """Stack order: members sorted by (norm, activation) so that each kind is one slice, then
    by optimizer settings so that members stepped by one call are neighbours."""
    return (
        cfg.norm,
        cfg.activation,
        cfg.optimizer,
        cfg.lr,
        cfg.schedule,
        cfg.weight_decay,
        cfg.momentum,
    )
