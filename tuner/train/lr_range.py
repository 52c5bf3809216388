"""The LR range test, run with torch-lr-finder.

One epoch of training (at least 100 steps, repeating the data when an epoch is shorter) with
the learning rate growing exponentially from ``start_lr`` to ``end_lr``; the suggestion is torch-lr-finder's "steepest gradient" rule (the smoothed loss's
steepest descent, skipping the first 10 and last 5 iterations), optionally snapped to the
nearest power of ten as the published study read its plot.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from torch_lr_finder import LRFinder

from tuner.progress import progress_line, showing
from tuner.train.batches import batch_indices
from tuner.train.config import TrainConfig
from tuner.train.ensemble import EnsembleLoss
from tuner.train.model import build_model, fit_inputs, make_optimizer, seeded

logger = logging.getLogger(__name__)

SKIP_START, SKIP_END = 10, 5
MIN_ITERATIONS = 100  # on small data one epoch is too few steps for a usable curve


class _SlicedBatches(IterableDataset):
    """One epoch of index-sliced batches per iteration (no per-sample collate work)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.served = 0  # batches handed out so far (the progress lines count them)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in batch_indices(len(self.x), self.batch_size, self.generator, min_size=2):
            self.served += 1
            yield self.x[idx], self.y[idx]


@dataclass(frozen=True)
class RangeTestResult:
    lrs: list[float]
    losses: list[float]
    suggestion: float  # steepest descent
    chosen: float  # after snapping

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def steepest_lr(lrs: list[float], losses: list[float]) -> float:
    """The steepest descent of the (smoothed) loss on its way down to its minimum.

    torch-lr-finder's "steepest gradient" suggestion takes the steepest point anywhere after
    ``skip_start`` and before the last ``skip_end`` points; past the minimum the loss of a
    diverging run jumps up and down, and a drop between two spikes can be the steepest point
    of the whole curve (on MSD-shaped data it put the suggestion at 0.23, where the default
    optimizer collapses to the majority class). Like a reader of the plot, this looks only at
    the descending part: from ``skip_start`` to the lowest loss.
    """
    need = SKIP_START + SKIP_END + 2
    if len(lrs) < need:
        raise ValueError(f"the range test ran {len(lrs)} iterations; at least {need} are needed")
    lr = np.asarray(lrs[SKIP_START:-SKIP_END])
    loss = np.asarray(losses[SKIP_START:-SKIP_END])
    lowest = int(loss.argmin())
    if lowest < 2:  # no descent to speak of: the start of the range
        return float(lr[0])
    return float(lr[: lowest + 1][np.gradient(loss[: lowest + 1]).argmin()])


def snap(lr: float, how: str) -> float:
    """``decade``: the nearest power of ten in log space (2.3e-3 -> 1e-3); ``none``: as is."""
    return float(10.0 ** round(math.log10(lr))) if how == "decade" else lr


def range_test(
    cfg: TrainConfig,
    train_xy: tuple[torch.Tensor, torch.Tensor],
    *,
    n_classes: int,
    seed: int,
    optimizer: str,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    snap_to: str = "decade",
) -> RangeTestResult:
    """Run the range test for one epoch of ``train_xy`` with ``cfg``'s model and the
    ``optimizer`` named, the learning rate growing from ``start_lr`` to ``end_lr``; return the
    curve and the suggestion (snapped as ``snap_to`` says, see :func:`snap`)."""
    x, y = train_xy
    cfg = cfg.for_rows(len(x))
    range_cfg = cfg.with_params({"optimizer": optimizer})
    with seeded(seed):
        model = build_model(range_cfg, x.shape[1], n_classes, fit_inputs(range_cfg, x))
    opt = make_optimizer(range_cfg, model.parameters(), lr=start_lr)
    batches = _SlicedBatches(x, y, cfg.batch_size, seed)
    loader = DataLoader(batches, batch_size=None)
    num_iter = max(len(x) // cfg.batch_size, MIN_ITERATIONS)
    finder = LRFinder(model, opt, EnsembleLoss(nn.CrossEntropyLoss()), device="cpu")
    # torch-lr-finder prints its progress notes; keep stdout for our own output. Its progress
    # bar (tqdm on stderr, which it offers no way to turn off) is shown on a terminal when INFO
    # is; without a terminal it is hidden and a progress line is logged instead.
    on_terminal = sys.stderr.isatty() and logger.isEnabledFor(logging.INFO)
    start = time.monotonic()

    def line() -> str:
        done = min(batches.served, num_iter)
        return progress_line("LR range test", done, num_iter, time.monotonic() - start, "step")

    with (
        contextlib.redirect_stdout(io.StringIO()) as notes,
        contextlib.nullcontext() if on_terminal else contextlib.redirect_stderr(io.StringIO()),
        contextlib.nullcontext() if on_terminal else showing(None, line, logger),
    ):
        finder.range_test(loader, end_lr=end_lr, num_iter=num_iter, step_mode="exp")
    for line in notes.getvalue().splitlines():
        if "finder_name" not in line:  # its "See the graph with {finder_name}.plot()": not ours
            logger.info("torch-lr-finder: %s", line)
    lrs = [float(v) for v in finder.history["lr"]]
    losses = [float(v) for v in finder.history["loss"]]
    suggestion = steepest_lr(lrs, losses)
    chosen = snap(suggestion, snap_to)
    logger.info("LR range test: steepest descent at %.3g, chosen %.3g", suggestion, chosen)
    return RangeTestResult(lrs, losses, suggestion, chosen)
