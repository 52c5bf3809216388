"""What a training run reports: per-epoch statistics, the run's history, early stopping.

Both engines (:mod:`tuner.train.reference` and the fused one, :mod:`tuner.train.loop`) report
an :class:`EpochStats` per epoch and return a :class:`History` per run; :class:`EarlyStopping`
is the one rule both stop by.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


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
    out_of_time: bool = False  # stopped by a time budget's deadline (stopped_early too)

    @property
    def peak_acc(self) -> float:
        return max(e.val_acc for e in self.epochs)

    @property
    def final_acc(self) -> float:
        return self.epochs[-1].val_acc

    @property
    def best_loss_acc(self) -> float:
        """Validation accuracy at the epoch of lowest validation loss (the restored epoch)."""
        return min(self.epochs, key=lambda e: e.val_loss).val_acc

    def value(self, objective: str) -> float:
        """The run's value for a stage ``objective`` (``peak``, ``best_loss``, else final)."""
        if objective == "peak":
            return self.peak_acc
        if objective == "best_loss":
            return self.best_loss_acc
        return self.final_acc

    @property
    def best_loss_epoch(self) -> int:
        return min(self.epochs, key=lambda e: e.val_loss).epoch

    def to_dict(self) -> dict[str, list[float] | bool]:
        cols = {k: [getattr(e, k) for e in self.epochs] for k in asdict(self.epochs[0])}
        out = {**cols, "stopped_early": self.stopped_early}
        if self.out_of_time:  # only then: histories without a budget are as before
            out["out_of_time"] = True
        return out


class EarlyStopping:
    """Early stopping on validation loss: epochs since the lowest loss so far.

    ``patience=None`` or ``0`` never stops (what ``patience = 0`` says in a plan, for a stage
    and for ``[final]`` alike); otherwise :attr:`should_stop` is true once the loss has not
    improved for ``patience`` epochs."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience or None
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
