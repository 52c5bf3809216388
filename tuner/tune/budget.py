"""A time budget over a plan's remaining work (``run-all --time-budget``,
``TunedClassifier(time_budget=...)``): the deadline of each stage and of the final job.

:func:`tuner.commands.run_plan` asks :meth:`Budget.deadline_for` before each stage and sets it on
the session; the stage's runs start no new epoch after it (:class:`tuner.train.loop.GroupTraining`).
"""

from __future__ import annotations

import time

RESERVE_S, RESERVE_SHARE = 10.0, 0.1
"""What a time budget keeps for the work after the final job (baselines, the report): 10% of
it, at most 10 s (on a 2-core machine the baselines take 1-5 s, the report 2-4 s)."""


class Budget:
    """A time budget over a plan's remaining work: a stage's share is its planned training
    (points x epochs x folds x repeats) over what is left, the final job's (its epochs) included
    unless the last stage keeps the final's weights (then the final job trains nothing)."""

    def __init__(self, end: float, work: dict[str, float]) -> None:
        self.end, self.work = end, work

    @classmethod
    def start(cls, session, seconds: float, started: float) -> Budget:
        from tuner.tune.kinds import get_kind
        from tuner.tune.stages import FINAL

        plan = session.plan
        work: dict[str, float] = {}
        for spec in plan.stages:
            done = session.stage_state(spec.name).state == "done"
            folds = getattr(spec.options, "folds", 1) or 1
            work[spec.name] = (
                0 if done else max(spec.n_points, 1) * spec.epochs * spec.repeats * folds
            )
        last = plan.stages[-1] if plan.stages else None
        keeps = (
            last is not None
            and get_kind(last.kind).keeps_final
            and session.reusing(last)
            and last.epochs == plan.final.epochs
        )
        work[FINAL] = 0 if keeps else plan.final.epochs
        reserve = min(RESERVE_S, RESERVE_SHARE * seconds)  # baselines and report, after it
        return cls(started + seconds - reserve, work)

    def deadline_for(self, stage: str) -> float:
        """Now plus ``stage``'s share of the time left."""
        names = list(self.work)
        left = sum(self.work[n] for n in names[names.index(stage) :])
        now = time.monotonic()
        share = self.work[stage] / left if left else 1.0
        return now + max(self.end - now, 0.0) * share
