"""What a user sees while long work runs, and the periodic thread behind it.

On a terminal a tqdm bar, redrawn every :data:`TICK_S` seconds even inside a long epoch; without
one (compose logs, CI, a file) a log line every :data:`LOG_EVERY_S` seconds: what runs, how far
it is, the time elapsed and the time left at the measured pace. ``-q`` (logging at WARNING)
silences the lines. :func:`periodically` is the thread behind both, and behind the workers'
heartbeats (:mod:`tuner.tune.coordination`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm

TICK_S = 5.0
"""On a terminal, a progress bar is redrawn at least this often (its elapsed time moves during
a long epoch)."""

LOG_EVERY_S = 30.0
"""Without a terminal (no progress bar), a progress line this often while work runs."""


@contextmanager
def periodically(
    every: float, call: Callable[[], None], name: str, *, join_timeout: float | None = None
) -> Iterator[None]:
    """Run ``call`` every ``every`` seconds in a daemon thread ``name`` while the block runs.
    Leaving the block stops it and waits for the thread, at most ``join_timeout`` seconds: a
    call stuck on a busy storage must not hold up a worker that is stopping."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            call()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=join_timeout)


@contextmanager
def showing(
    bar: tqdm | None,
    line: Callable[[], str],
    logger: logging.Logger,
    *,
    tick: float | None = None,
    every: float | None = None,
) -> Iterator[None]:
    """While the block runs: on a terminal (``bar`` enabled) redraw ``bar`` every ``tick``
    seconds (:data:`TICK_S`); without one (``bar`` disabled, or None), log ``line()`` every
    ``every`` seconds (:data:`LOG_EVERY_S`) to ``logger``, when INFO is on."""
    if bar is not None and not bar.disable:
        with periodically(tick or TICK_S, bar.refresh, "tuner-progress"):
            yield
    elif logger.isEnabledFor(logging.INFO):
        log = lambda: logger.info("%s", line())  # noqa: E731 - one line, read where used
        with periodically(every or LOG_EVERY_S, log, "tuner-progress"):
            yield
    else:
        yield


def progress_line(what: str, done: int, total: int, elapsed: float, unit: str = "epoch") -> str:
    """``what: epoch 12/100, 0:40 elapsed, at most 4:53 left at this pace`` (early stopping
    may end it sooner); before the first ``unit`` is done, ``what: in epoch 1/100, 0:40
    elapsed``."""
    if done <= 0:
        return f"{what}: in {unit} 1/{total}, {clock(elapsed)} elapsed"
    left = elapsed / done * max(total - done, 0)
    return (
        f"{what}: {unit} {done}/{total}, {clock(elapsed)} elapsed, at most {clock(left)} "
        "left at this pace"
    )


def clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
