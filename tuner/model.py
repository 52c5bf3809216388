"""The MLP that every stage trains, built from a :class:`~tuner.plan.TrainConfig`.

``Linear(in, h1) -> [norm] -> act -> ... -> Linear(hk, classes)``; the published Model_2 is
``hidden = (256, 256)``, Model_1 ``(128, 128)`` and Model_3 ``(256, 128, 64)``.
"""

from __future__ import annotations

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
    :func:`tuner.engine.seeded`) for reproducible weights.
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
