"""The reference training loop: in-memory tensors, index-sliced batches, autograd.

:func:`train` is the loop a reader holds in their head (build the model, then per epoch: a
seeded permutation, batches, forward, loss, backward, optimizer and scheduler steps, one
evaluation). Trials do not run through it: they run on the fused engine
(:mod:`tuner.train.loop`), which the tests hold against it: every member of a fused group must
report what :func:`train` reports for it alone, up to floating-point rounding. Batches come
from :func:`tuner.train.batches.batch_indices`; evaluation is
:func:`tuner.train.model.evaluate`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from tuner.train.batches import batch_indices, batch_sizes
from tuner.train.config import TrainConfig
from tuner.train.ensemble import EnsembleLoss
from tuner.train.history import EarlyStopping, EpochStats, History
from tuner.train.model import (
    build_model,
    class_weights,
    evaluate,
    fit_inputs,
    make_optimizer,
    make_scheduler,
    seeded,
)
from tuner.train.options import norms


def train(
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
) -> tuple[nn.Module, History]:
    """Train a fresh model for ``epochs`` and evaluate it on ``val_xy`` after each epoch.

    ``patience``: stop when validation loss has not improved for that many epochs.
    ``restore_best``: return the weights of the best-validation-loss epoch instead of the last.
    The training loss is ``cfg``'s (label smoothing, class weights; for an ensemble the mean of
    its members' losses); the validation loss is plain cross-entropy (of an ensemble's mean
    probability). Dropout masks come from torch's global generator.
    ``on_epoch`` is called after each epoch (Optuna reporting, progress bars); it may raise
    (e.g. ``optuna.TrialPruned``) to stop the run.
    """
    x, y = train_xy
    cfg = cfg.for_rows(len(x))
    with seeded(seed):
        model = build_model(cfg, x.shape[1], n_classes, fit_inputs(cfg, x))
    optimizer = make_optimizer(cfg, model.parameters())
    generator = torch.Generator().manual_seed(seed)
    min_batch = norms.get(cfg.norm).min_batch
    steps_per_epoch = len(batch_sizes(len(x), cfg.batch_size, min_batch))
    scheduler = make_scheduler(cfg, optimizer, max(epochs * steps_per_epoch, 1))
    criterion = EnsembleLoss(  # an ensemble's: the mean of its members' losses
        nn.CrossEntropyLoss(
            weight=class_weights(cfg.class_weight, y, n_classes),
            label_smoothing=cfg.label_smoothing,
        )
    )
    history = History()
    stopping, best_state = EarlyStopping(patience), None
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        loss_sum, seen = torch.zeros(()), 0
        for idx in batch_indices(len(x), cfg.batch_size, generator, min_batch):
            loss = criterion(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach() * len(idx)  # no .item(): no sync per step
            seen += len(idx)
        val_loss, val_acc = evaluate(model, *val_xy)
        stats = EpochStats(
            epoch, loss_sum.item() / max(seen, 1), val_loss, val_acc, time.perf_counter() - t0
        )
        history.epochs.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        if stopping.update(val_loss) and restore_best:
            best_state = copy.deepcopy(model.state_dict())
        if stopping.should_stop and epoch < epochs:
            history.stopped_early = True
            break
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history
