"""Stage decisions that know the noise: which grid point a stage carries forward, and whether
its win is real.

Every grid point of a stage is trained with the same seeds (and, in CV, the same folds), so two
points' per-run values pair up: run ``i`` of the winner and run ``i`` of the runner-up saw the
same initial-weight seed, the same batch order and the same fold. The paired differences cancel
the part of the noise the two runs share; their mean and a 95% t-interval say how much better
the winner is and how sure that is. A win is *significant* when the interval's lower end is
above zero. With one run per point (``repeats = 1`` in a stage) there is no interval: the win
is reported as not significant, because nothing measured says it is.

``keep_incumbent_unless_significant``: the point equal to the configuration the stage started
from (the plan's default, or what earlier stages chose) stays unless the best challenger beats
it significantly.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

CONFIDENCE = 0.95


@dataclass(frozen=True)
class PointStats:
    """One grid point's runs: ``values`` in run order (repeat-major, then fold)."""

    params: dict[str, Any]
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def n(self) -> int:
        return len(self.values)

    def summary(self) -> dict[str, Any]:
        """``{"params", "mean", "std", "ci95", "n"}`` (``status --json`` per point)."""
        lo, hi = interval(self.values)
        return {
            "params": self.params,
            "mean": self.mean,
            "std": _stdev(self.values) if self.n > 1 else 0.0,
            "ci95": [lo, hi] if self.n > 1 else None,
            "n": self.n,
        }


@dataclass(frozen=True)
class Decision:
    """What a stage chose and how sure it is (``status --json`` per stage)."""

    winner: dict[str, Any]  # the best mean
    runner_up: dict[str, Any] | None
    diff: float | None  # winner - runner-up, mean of paired differences
    diff_ci95: list[float] | None
    significant: bool
    n: int  # paired runs behind diff
    rule: str  # "best" | "keep_incumbent_unless_significant"
    incumbent: dict[str, Any] | None
    chosen: dict[str, Any]  # what later stages get
    versus_incumbent: dict[str, Any] | None = None  # the winner against the incumbent

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stdev(values: Sequence[float]) -> float:
    """The sample standard deviation; NaN when a value is not finite (a diverged run stored
    before values were checked), where ``statistics.stdev`` raises."""
    if not all(math.isfinite(v) for v in values):
        return math.nan
    return statistics.stdev(values)


def _rank(point: PointStats) -> float:
    """A point's sort key: its mean, with a non-finite mean last (it never wins)."""
    return point.mean if math.isfinite(point.mean) else -math.inf


def interval(values: Sequence[float]) -> tuple[float, float]:
    """95% t-interval of the mean of ``values`` (the mean itself twice when n < 2)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, mean
    from scipy import stats  # 1-2 s to import: only when an interval is needed

    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * _stdev(values)
    half /= math.sqrt(n)
    return mean - half, mean + half


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """``a - b`` run by run: ``{"diff", "diff_ci95", "significant", "n"}``.

    Runs pair up by position (same seed, same fold); the extra runs of the longer sequence (a
    point whose runs were cut short) are left out."""
    n = min(len(a), len(b))
    diffs = [x - y for x, y in zip(a[:n], b[:n], strict=True)]
    if n == 0:
        return {"diff": None, "diff_ci95": None, "significant": False, "n": 0}
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"diff": mean, "diff_ci95": None, "significant": False, "n": n}
    lo, hi = interval(diffs)
    return {"diff": mean, "diff_ci95": [lo, hi], "significant": lo > 0, "n": n}


def decide(
    points: Sequence[PointStats],
    *,
    incumbent: Mapping[str, Any] | None = None,
    keep_incumbent: bool = False,
) -> Decision | None:
    """The stage's decision over its complete points (``None`` when there are none).

    ``incumbent``: the params of the configuration the stage started from, if it is a grid
    point; with ``keep_incumbent`` it is chosen unless the winner beats it significantly.
    """
    if not points:
        return None
    ranked = sorted(points, key=_rank, reverse=True)
    best = ranked[0]
    runner = ranked[1] if len(ranked) > 1 else None
    vs_runner = paired(best.values, runner.values) if runner else paired([], [])
    inc = next((p for p in points if incumbent is not None and p.params == dict(incumbent)), None)
    chosen = best.params
    versus = None
    if inc is not None and inc is not best:
        versus = paired(best.values, inc.values)
        if keep_incumbent and not versus["significant"]:
            chosen = inc.params
    return Decision(
        winner=best.params,
        runner_up=runner.params if runner else None,
        diff=vs_runner["diff"],
        diff_ci95=vs_runner["diff_ci95"],
        significant=vs_runner["significant"],
        n=vs_runner["n"],
        rule="keep_incumbent_unless_significant" if keep_incumbent else "best",
        incumbent=inc.params if inc is not None else None,
        chosen=chosen,
        versus_incumbent=versus,
    )


def _fmt(params: Mapping[str, Any] | None) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (params or {}).items()
    )


def decision_text(decision: Decision | None) -> str:
    """One line for tables, notes and reports, e.g. ``hidden=256x256 over hidden=128x128 by
    +0.0042 (95% CI -0.0010..+0.0094, n=5): not significant; kept the incumbent 128x128``."""
    if decision is None:
        return "no complete point yet"
    text = f"{_fmt(decision.winner)}"
    if decision.runner_up is not None and decision.diff is not None:
        text += f" over {_fmt(decision.runner_up)} by {decision.diff:+.4f}"
        if decision.diff_ci95 is not None:
            lo, hi = decision.diff_ci95
            text += f" (95% CI {lo:+.4f}..{hi:+.4f}, n={decision.n})"
            text += ": significant" if decision.significant else ": not significant"
        else:
            text += " (one run per point: no estimate of the noise)"
    if decision.chosen != decision.winner:
        text += f"; kept the incumbent {_fmt(decision.chosen)}"
        vs = decision.versus_incumbent
        if vs and vs.get("diff_ci95"):
            lo, hi = vs["diff_ci95"]
            text += f" (winner - incumbent {vs['diff']:+.4f}, 95% CI {lo:+.4f}..{hi:+.4f})"
    return text
