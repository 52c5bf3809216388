"""The MLP that every stage trains, built from a :class:`~tuner.plan.TrainConfig`, and how it
is optimised: optimizer, learning-rate schedule and training-loss class weights.

``Linear(in, h1) -> [norm] -> act -> [dropout] -> ... -> Linear(hk, classes)``; the published
Model_2 is ``hidden = (256, 256)``, Model_1 ``(128, 128)`` and Model_3 ``(256, 128, 64)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tuner.plan import TrainConfig

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


def build_model(cfg: TrainConfig, n_features: int, n_classes: int) -> nn.Sequential:
    """Build the MLP and initialise its Linear layers as ``cfg.init`` says.

    ``default`` keeps PyTorch's own initialisation (Kaiming-uniform with ``a=sqrt(5)``);
    ``xavier_uniform`` and ``kaiming_normal`` (fan-in, ReLU gain) re-draw the weights and zero
    the biases. Draws come from torch's global generator: seed it (see
    :func:`tuner.train.engine.seeded`) for reproducible weights.
    """
    layers: list[nn.Module] = []
    width = n_features
    for h in cfg.hidden:
        layers.append(nn.Linear(width, h))
        if cfg.norm == "batch":
            layers.append(nn.BatchNorm1d(h))
        elif cfg.norm == "layer":
            layers.append(nn.LayerNorm(h))
        layers.append(_ACTIVATIONS[cfg.activation]())
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        width = h
    layers.append(nn.Linear(width, n_classes))
    model = nn.Sequential(*layers)
    if cfg.init != "default":
        for m in model.modules():
            if isinstance(m, nn.Linear):
                if cfg.init == "xavier_uniform":
                    nn.init.xavier_uniform_(m.weight)
                else:
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
    return model


def make_optimizer(cfg: TrainConfig, params, lr: float | None = None) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.optimizer`` with its lr and (L2) weight decay."""
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


# torch.optim.lr_scheduler.OneCycleLR's defaults (momentum is not cycled: cycle_momentum=False)
ONECYCLE_PCT_START = 0.3
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4


def scheduled_lr(schedule: str, lr: float, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total_steps`` planned.

    ``constant``: ``lr``. ``cosine``: ``CosineAnnealingLR(T_max=total_steps, eta_min=0)`` stepped
    per batch, in closed form. ``onecycle``: ``OneCycleLR(max_lr=lr, total_steps=total_steps,
    cycle_momentum=False)`` (cosine warm-up from ``lr/25`` over 30% of the steps, then cosine
    annealing to ``lr/25/1e4``). Steps past the plan keep the last value.
    """
    if schedule == "constant":
        return lr
    step = min(step, total_steps)
    if schedule == "cosine":
        return lr * (1 + math.cos(math.pi * step / total_steps)) / 2
    if schedule == "onecycle":
        initial = lr / ONECYCLE_DIV
        phases = (
            (float(ONECYCLE_PCT_START * total_steps) - 1, initial, lr),
            (total_steps - 1, lr, initial / ONECYCLE_FINAL_DIV),
        )
        start_step = 0.0
        for i, (end_step, start_lr, end_lr) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                return end_lr + (start_lr - end_lr) / 2.0 * (math.cos(math.pi * pct) + 1)
            start_step = end_step
    raise ValueError(f"unknown schedule {schedule!r}")


def make_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """torch's scheduler for ``cfg.schedule``, stepped once per batch (``None``: constant)."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=cfg.lr,
            total_steps=total_steps,
            pct_start=ONECYCLE_PCT_START,
            div_factor=ONECYCLE_DIV,
            final_div_factor=ONECYCLE_FINAL_DIV,
            cycle_momentum=False,
        )
    return None


def class_weights(kind: str, y: torch.Tensor, n_classes: int) -> torch.Tensor | None:
    """Training-loss weights per class from the training labels ``y`` (``None`` for "none").

    ``balanced``: ``n / (n_classes * count)``, scikit-learn's "balanced" (a rare decade weighs
    as much in the loss as the 2000s); ``sqrt_balanced``: its square root, a milder
    correction. A class absent from ``y`` gets weight 0 (it is never a target).
    """
    if kind == "none":
        return None
    counts = torch.bincount(y, minlength=n_classes).double()
    w = torch.where(counts > 0, len(y) / (n_classes * counts.clamp(min=1)), 0.0)
    if kind == "sqrt_balanced":
        w = w.sqrt()
    elif kind != "balanced":
        raise ValueError(f"unknown class_weight {kind!r}")
    return w.float()
