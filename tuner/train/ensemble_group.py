"""The fused engine's route for ensembles (``cfg.ensemble > 1``): :class:`EnsembleGroup`.

A stack's members share :func:`tuner.train.stack.stack_shape`, which includes the ensemble's
size and kind, so a group is all ensembles or none. An ensemble group has the interface of
:class:`~tuner.train.stack.FusedGroup` that the epoch loop (:mod:`tuner.train.loop`) drives
(``train_step``, ``train_step_subset``, ``evaluate``, ``drop``, ``export``, ``active``), so
batches, per-member rows (folds), validation subsets, pruning, early stopping and best-epoch
restore are the fused engine's. But its arithmetic is autograd's: each configuration is the
reference engine's :class:`~tuner.train.ensemble.Ensemble` (built by ``build_model`` under the
member's seed) with its ``torch.optim`` optimizer and scheduler, stepped one configuration after
another on the shared batch. There is no hand-written backward for the ensemble layers yet
(BatchEnsemble's shared ``W`` with per-member ``r``/``s``/biases, or packed members as stack
members with a ``1/K`` gradient scale): this route trades the stack's speed for correctness by
construction, and a member reports what :func:`tuner.train.reference.train` reports for it alone.

Dropout masks come from torch's global generator, re-seeded per member and step from the
member's seed (``seed ^`` :data:`~tuner.train.loss.DROPOUT_SEED` and its step count), so a
member draws the same masks in any group. ``precision="bf16"`` runs the forward pass under
``torch.autocast``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from tuner.train.config import TrainConfig
from tuner.train.ensemble import EnsembleLoss
from tuner.train.loss import DROPOUT_SEED
from tuner.train.model import build_model, evaluate, make_optimizer, make_scheduler, seeded
from tuner.train.stack import check_group


class EnsembleGroup:
    """Ensemble configurations trained side by side through autograd (see the module doc)."""

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
        self.cfgs, self.seeds = cfgs, [int(s) for s in seeds]
        self.hidden, self.batch_size = tuple(cfgs[0].hidden), cfgs[0].batch_size
        self.n_features, self.n_classes = n_features, n_classes
        self.precision, self.device = precision, torch.device(device)
        self.order = list(range(len(cfgs)))
        self.n_steps = [0] * len(cfgs)
        total = [max(int(t), 1) for t in (total_steps or [1] * len(cfgs))]
        weights = list(weights or [None] * len(cfgs))
        fitted = list(fitted or [None] * len(cfgs))
        self.models: list[nn.Module] = []
        self.optimizers, self.schedulers, self.criteria = [], [], []
        for i, cfg in enumerate(cfgs):
            with seeded(self.seeds[i]):
                model = build_model(cfg, n_features, n_classes, fitted[i]).to(self.device)
            opt = make_optimizer(cfg, model.parameters())
            w = None if weights[i] is None else weights[i].to(self.device, torch.float32)
            self.models.append(model)
            self.optimizers.append(opt)
            self.schedulers.append(make_scheduler(cfg, opt, total[i]))
            self.criteria.append(
                EnsembleLoss(nn.CrossEntropyLoss(weight=w, label_smoothing=cfg.label_smoothing))
            )

    @property
    def active(self) -> list[int]:
        """Members still training (positions in ``cfgs``), in stack order."""
        return list(self.order)

    def drop(self, members: Iterable[int]) -> None:
        """Remove members (positions in ``cfgs``); the others are unaffected."""
        gone = set(members)
        self.order = [i for i in self.order if i not in gone]

    def export(self, member: int) -> nn.Module:
        """Member ``member`` (position in ``cfgs``): a copy of its model in eval mode."""
        with torch.inference_mode(False):
            return copy.deepcopy(self.models[member]).eval()

    @contextlib.contextmanager
    def _dropout_rng(self, i: int) -> Iterator[None]:
        if self.cfgs[i].dropout == 0:
            yield
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(((self.seeds[i] ^ DROPOUT_SEED) << 24) + self.n_steps[i])
            yield

    def _step(self, i: int, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One optimizer step of member ``i`` on ``(xb, yb)``; its training loss (a scalar)."""
        model, opt, scheduler = self.models[i], self.optimizers[i], self.schedulers[i]
        bf16 = self.precision == "bf16"
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            self._dropout_rng(i),
        ):
            xb, yb = xb.clone(), yb.clone()  # normal tensors: autograd saves them
            model.train()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(xb)
            loss = self.criteria[i](out.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
        self.n_steps[i] += 1
        return loss.detach()

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One step of every member: ``xb`` [B, F] shared or [K, B, F] per member, ``yb``
        [B] or [K, B]. Returns the loss per member [K] (stack order)."""
        return self.train_step_subset(list(range(len(self.order))), xb, yb)

    def train_step_subset(
        self, positions: list[int], xb: torch.Tensor, yb: torch.Tensor
    ) -> torch.Tensor:
        """A step of the members at stack ``positions`` only (the others do not move)."""
        shared = xb.dim() == 2
        losses = [
            self._step(self.order[pos], xb if shared else xb[j], yb if shared else yb[j])
            for j, pos in enumerate(positions)
        ]
        return torch.stack(losses)

    def evaluate(
        self, positions: list[int], x: torch.Tensor, y: torch.Tensor
    ) -> tuple[list[float], list[float]]:
        """Cross-entropy and accuracy of the ensembles' mean probability on ``(x, y)``."""
        scores = [evaluate(self.models[self.order[pos]], x, y) for pos in positions]
        return [s[0] for s in scores], [s[1] for s in scores]
