"""The reference training loop: in-memory tensors, index-sliced batches, autograd.

:func:`train` is the loop a reader holds in their head (build the model, then per epoch: a
seeded permutation, batches, forward, loss, backward, optimizer and scheduler steps, one
evaluation). Trials do not run through it: they run on the fused engine
(:mod:`tuner.train.fused`), which is tested against it and must reproduce what it reports.
Batches are slices of a per-epoch random permutation drawn from a generator seeded by the
run's seed, so two runs with the same seed see the same batches in the same order (common
random numbers: the points of one stage differ only in what the stage varies). Evaluation
runs in large batches under ``torch.inference_mode()``. The pieces both engines share live
here too: the batch sizes, the seeded context, early stopping, per-epoch histories.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from tuner.train.config import TrainConfig
from tuner.train.model import build_model, class_weights, make_optimizer, make_scheduler
from tuner.train.options import norms

EVAL_BATCH = 16_384


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    val_acc: float
    seconds: float


@dataclass
class History:
    """Per-epoch statistics of one training run."""

    epochs: list[EpochStats] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def peak_acc(self) -> float:
        return max(e.val_acc for e in self.epochs)

    @property
    def final_acc(self) -> float:
        return self.epochs[-1].val_acc

    @property
    def best_loss_epoch(self) -> int:
        return min(self.epochs, key=lambda e: e.val_loss).epoch

    def to_dict(self) -> dict[str, list[float] | bool]:
        cols = {k: [getattr(e, k) for e in self.epochs] for k in asdict(self.epochs[0])}
        return {**cols, "stopped_early": self.stopped_early}


class EarlyStopping:
    """Early stopping on validation loss: epochs since the lowest loss so far.

    ``patience=None`` never stops; otherwise :attr:`should_stop` is true once the loss has not
    improved for ``patience`` epochs."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.best = math.inf
        self.since = 0

    def update(self, val_loss: float) -> bool:
        """Record an epoch's validation loss; ``True`` when it is the lowest so far."""
        if val_loss < self.best:
            self.best, self.since = val_loss, 0
            return True
        self.since += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.since >= self.patience


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator inside the block and restore the outer state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def as_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-copy views of prepared arrays (float32 features, int64 labels)."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(
        np.ascontiguousarray(y, dtype=np.int64)
    )


def batch_sizes(n: int, batch_size: int, min_size: int = 1) -> list[int]:
    """The sizes of the batches :func:`batch_indices` yields for ``n`` rows."""
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    return [s for s in sizes if s >= min_size]


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator, min_size: int = 1
) -> Iterator[torch.Tensor]:
    """Yield the index slices of one epoch; a last batch smaller than ``min_size`` is dropped
    (a normalization over the batch cannot train on a single row)."""
    perm = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        if len(idx) >= min_size:
            yield idx


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
    The training loss is ``cfg``'s (label smoothing, class weights); the validation loss is
    plain cross-entropy. Dropout masks come from torch's global generator.
    ``on_epoch`` is called after each epoch (Optuna reporting, progress bars); it may raise
    (e.g. ``optuna.TrialPruned``) to stop the run.
    """
    x, y = train_xy
    with seeded(seed):
        model = build_model(cfg, x.shape[1], n_classes)
    optimizer = make_optimizer(cfg, model.parameters())
    generator = torch.Generator().manual_seed(seed)
    min_batch = norms.get(cfg.norm).min_batch
    steps_per_epoch = len(batch_sizes(len(x), cfg.batch_size, min_batch))
    scheduler = make_scheduler(cfg, optimizer, max(epochs * steps_per_epoch, 1))
    criterion = nn.CrossEntropyLoss(
        weight=class_weights(cfg.class_weight, y, n_classes), label_smoothing=cfg.label_smoothing
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


def repeat_seeds(seed: int, repeats: int) -> list[int]:
    """The seeds of a point's repeats: the run's seed first, so ``repeats = 1`` is one run."""
    return [seed + r for r in range(repeats)]
