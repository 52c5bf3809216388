"""The MLP that every stage trains, built from a :class:`~tuner.train.config.TrainConfig`, and
how it is optimised (optimizer, learning-rate schedule, training-loss class weights) and scored.

``[embedding] -> Linear(in, h1) -> [norm] -> act -> [dropout] -> ... -> Linear(hk, classes)``;
the published Model_2 is ``hidden = (256, 256)``, Model_1 ``(128, 128)`` and Model_3
``(256, 128, 64)``. A numeric feature embedding (``cfg.embedding``) comes first where there is
one; what it fits on the training rows (:func:`fit_inputs`: bin edges, plain lists) is passed
to :func:`build_model` as ``fitted`` and read back from a model by :func:`fitted_of`.

The configuration's named choices (activation, norm, init, optimizer, schedule, class weight)
are entries of :mod:`tuner.train.options`; this module reads a configuration and asks each
entry for its reference form (module, ``torch.optim`` optimizer, scheduler, weights). Weights
are drawn from torch's global generator, reproducibly under :func:`seeded`; :func:`evaluate`
scores a model (the reference engine's validation, the final model's test metrics).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from tuner.train.config import TrainConfig
from tuner.train.ensemble import build_ensemble
from tuner.train.options import (
    activations,
    embeddings,
    inits,
    losses,
    norms,
    optimizers,
    schedules,
)

EVAL_BATCH = 16_384  # rows per evaluation batch


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask is ``U[0, 1) >= p`` (then ``1/(1-p)``), drawn from torch's
    global generator as the fused stack draws its own (:func:`tuner.train.loss.dropout_mask`):
    the same distribution as torch's, which draws it with ``bernoulli_``, about twice as slow on
    CPU (a [8, 512, 256] mask: 5.5 ms against 10.6 ms on 2 cores). It is the ensembles' route
    (:mod:`tuner.train.ensemble_group`): ``benchmarks/tabular_epoch.py --epochs 4``, 8-member
    ensemble, median of 5 runs interleaved with torch's dropout: 3.62 s per epoch against 4.34 s.
    The masks differ from torch's draws, so runs of dropout ensembles differ from those of
    earlier versions as another seed's would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, device=x.device).ge_(self.p)  # fp32 even under autocast
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator inside the block and restore the outer state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def fit_inputs(cfg: TrainConfig, x: torch.Tensor) -> dict[str, Any] | None:
    """What ``cfg``'s embedding learns from the training rows ``x`` (``None``: nothing)."""
    return embeddings.get(cfg.embedding).fit(cfg, x)


def fitted_of(model: nn.Module) -> dict[str, Any] | None:
    """The ``fitted`` data ``model`` was built with (``None``: none)."""
    for m in model.modules():
        fitted = getattr(m, "fitted", None)
        if isinstance(fitted, dict):
            return fitted
    return None


def build_model(
    cfg: TrainConfig,
    n_features: int,
    n_classes: int,
    fitted: dict[str, Any] | None = None,
) -> nn.Module:
    """Build the MLP and initialise its Linear layers as ``cfg.init`` says.

    Each Linear layer is drawn by ``nn.Linear`` and then re-drawn by the initialization entry
    (its default keeps PyTorch's own). Draws come from torch's global generator: seed it (see
    :func:`seeded`) for reproducible weights. The embedding (drawn first, with its own init)
    takes ``fitted``, what :func:`fit_inputs` fitted on the training rows. With
    ``cfg.ensemble > 1`` the model is an :class:`~tuner.train.ensemble.Ensemble` of such MLPs
    (:mod:`tuner.train.ensemble`); otherwise an ``nn.Sequential``.
    """
    if cfg.ensemble > 1:
        return build_ensemble(
            cfg,
            lambda: _mlp(cfg, n_features, n_classes, fitted),
            inits.get(cfg.init).apply,
        )
    return _mlp(cfg, n_features, n_classes, fitted)


def _mlp(
    cfg: TrainConfig, n_features: int, n_classes: int, fitted: dict[str, Any] | None
) -> nn.Sequential:
    """The plain MLP of :func:`build_model`."""
    norm = norms.get(cfg.norm)
    activation = activations.get(cfg.activation)
    layers: list[nn.Module] = []
    width = n_features
    embedding = embeddings.get(cfg.embedding)
    embed = embedding.module(cfg, n_features, fitted)
    if embed is not None:
        layers.append(embed)
        width = embedding.width(cfg, n_features, fitted)
    for h in cfg.hidden:
        layers.append(nn.Linear(width, h))
        norm_module = norm.module(h)
        if norm_module is not None:
            layers.append(norm_module)
        layers.append(activation.module())
        if cfg.dropout > 0:
            layers.append(Dropout(cfg.dropout))
        width = h
    layers.append(nn.Linear(width, n_classes))
    model = nn.Sequential(*layers)
    init = inits.get(cfg.init)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            init.apply(m)
    return model


def make_optimizer(cfg: TrainConfig, params, lr: float | None = None) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.optimizer`` with its lr (``lr`` overrides it), (L2) weight
    decay and momentum (where it has one)."""
    return optimizers.get(cfg.optimizer).torch_optimizer(
        params,
        lr=cfg.lr if lr is None else lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
    )


def make_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """torch's scheduler for ``cfg.schedule``, stepped once per batch (``None``: the learning
    rate stays)."""
    return schedules.get(cfg.schedule).torch_scheduler(
        optimizer, lr=cfg.lr, total_steps=total_steps
    )


def class_weights(kind: str, y: torch.Tensor, n_classes: int) -> torch.Tensor | None:
    """Training-loss weights per class from the training labels ``y`` (``None``: unweighted),
    as the class-weight entry ``kind`` computes them."""
    return losses.get(kind).weights(y, n_classes)


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), EVAL_BATCH):
        logits = model(x[start : start + EVAL_BATCH])
        yb = y[start : start + EVAL_BATCH]
        loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == yb).sum())
    model.train(was_training)
    return loss_sum / len(x), correct / len(x)
