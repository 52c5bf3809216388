"""Running a plan's stages as Optuna studies, chained through the storage.

A :class:`Session` is a plan opened on a storage. It is made of parts with one job each: its
:class:`~tuner.tune.studies.StudyStore` reads and writes the stage studies (one per stage,
``<plan>.<stage>``, versions, plan identity), its :class:`~tuner.tune.coordination.Coordinator`
claims points and keeps heartbeats, its observers (:mod:`tuner.tune.hooks`) write notes and
plots, a stage's point source (:mod:`tuner.tune.points`: its grid, TPE's rounds, or what its
kind finds) says which points to train, and the stage's kind (:mod:`tuner.tune.kinds`) trains
them. What this module does is run a stage: a stage's objective fixes the winners of every
earlier stage, read from those stages' studies (or given by ``--fix``) and recorded in its
study's ``fixed_params`` user attr; then, batch after batch of its points, points are claimed,
their trials created, trained together and told, until every point is settled.

Workers cooperate through the storage only: a worker claims a grid point
(:mod:`tuner.tune.claims`), creates its trial, trains it with heartbeats running, and tells the
result. Any number of workers can run the same stage; each point completes exactly once, a
point whose worker died is trained again, and a finished stage is not run twice.

A claimed point whose training is identical to a COMPLETE trial of an earlier stage (the same
training fingerprint, :mod:`tuner.tune.reuse`) is recorded from that trial instead of trained
(``reused_from``); ``--no-reuse`` (``Settings.reuse``) or ``reuse = false`` in the plan turn
that off.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution

from tuner.config import Plan, StageSpec, planned_epochs
from tuner.data.prepare import DataSpec, Prepared, prepare
from tuner.errors import PlanError, StageError
from tuner.paths import model_dir
from tuner.train.compute import Compute
from tuner.train.config import TrainConfig
from tuner.train.tensors import TensorData
from tuner.tune import reuse
from tuner.tune.claims import ClaimTable, new_owner_id
from tuner.tune.coordination import Coordinator
from tuner.tune.groups import GroupRunner, Training, check_stop
from tuner.tune.hooks import Observers, StageObserver
from tuner.tune.kinds import get_kind
from tuner.tune.kinds.base import PointSource, StageKind
from tuner.tune.objectives import PointResult, Reporter, evaluate_points
from tuner.tune.points import KindPoints, StagePoints
from tuner.tune.pruners import for_stage
from tuner.tune.samplers import sampler_named
from tuner.tune.state import SETTLED, StageState, incumbent, normalize, point_key
from tuner.tune.storage import open_storage
from tuner.tune.studies import FINAL, StudyStore

logger = logging.getLogger(__name__)

REPORT_CLAIM = "__report__"  # the one worker writing run-all's report

Point = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    """What one CLI invocation was asked to do, beyond the plan."""

    workdir: Path
    storage_url: str
    data: DataSpec
    seed: int = 42
    fixes: Mapping[str, Any] = field(default_factory=dict)
    heartbeat_interval: int = 5
    grace_period: int = 20
    poll_interval: float = 2.0
    group_size: int = 0  # points a worker claims and trains together; 0: all it can claim
    compute: Compute = field(default_factory=Compute)
    reuse: bool = True  # reuse identical trials (tuner.tune.reuse); --no-reuse: train everything
    # set when the worker is told to stop (SIGTERM): checked every epoch and between groups, so a
    # stop is not lost when the signal's exception lands where Python ignores it (a finalizer)
    stop: threading.Event | None = field(default=None, compare=False)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def models_dir(self) -> Path:
        return self.workdir / "models"


@dataclass(frozen=True)
class StageRun:
    """What a run of a stage starts from: the stage, its number in the plan, its kind, the
    params fixed for it (earlier stages' winners and ``--fix``), the configuration those give
    (``base``: every point is ``base`` with the point's params) and the data."""

    spec: StageSpec
    index: int
    kind: StageKind
    fixed: dict[str, Any]
    base: TrainConfig
    data: TensorData

    @property
    def n_train(self) -> int:
        return len(self.data.train[1])


class Session:
    """A plan opened on a storage: studies, claims and (lazily) the prepared data.

    In: the ``plan``, the invocation's :class:`Settings` (storage URL, data, seed, ``--fix``,
    heartbeats, compute...), the ``prepared`` data when the caller has read it already (else it
    is prepared on first use) and the ``observers`` to tell what happens (notes, plots). Out:
    :meth:`run_stage` and :meth:`run_final` run the plan's studies in the storage and return
    their read models (:class:`~tuner.tune.state.StageState`); :meth:`stage_state` reads one
    without running anything. :meth:`working` wraps a worker's run; :meth:`close` ends it.
    """

    def __init__(
        self,
        plan: Plan,
        settings: Settings,
        prepared: Prepared | None = None,
        observers: Sequence[StageObserver] = (),
    ) -> None:
        self.plan = plan
        self.observers = Observers(observers)  # notes, plots: see tuner.tune.hooks
        self.settings = settings
        self.storage = open_storage(
            settings.storage_url,
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.grace_period,
        )
        self.claims = ClaimTable(settings.storage_url, settings.grace_period)
        self.owner = new_owner_id()
        self._prepared = prepared
        self.deadline: float | None = None  # a time budget's, for what trains next (run_plan)
        self._data: TensorData | None = None
        # reading and writing studies; presence, claims and heartbeats
        self.workers = Coordinator(plan.name, self.storage, self.claims, self.owner, settings)
        self.studies = StudyStore(plan, self.storage, self.workers, settings, self.prepared)
        # a claimed group's trials: created, trained together, told
        self.groups = GroupRunner(
            self.workers,
            lambda hook, *args: self.observers.notify(hook, self, *args),
            settings.storage_url,
            settings.stop,
        )

    def close(self) -> None:
        self.workers.withdraw()
        self.claims.close()
        self.storage.remove_session()
        self.storage.engine.dispose()

    @contextmanager
    def working(self) -> Iterator[None]:
        """A worker's run: while it runs the session counts as one of the plan's workers
        (:meth:`announce`); whatever stops it (an error, Ctrl-C, SIGTERM, a full disk), the
        trials it left RUNNING are failed and its claims released on the way out
        (:meth:`Coordinator.abandon`), so that the next run (or another worker) trains those
        points again at once; then the session is closed."""
        try:
            self.announce()
            yield
        except BaseException as err:
            self.workers.abandon(err)
            raise
        finally:
            self.close()

    # -- what other parts ask of a session ------------------------------------------------------
    def announce(self) -> None:
        """Count this session as one of the plan's workers (:meth:`Coordinator.announce`)."""
        self.workers.announce()

    def withdraw(self) -> None:
        self.workers.withdraw()

    def latest_study(self, stage: str) -> optuna.Study | None:
        """The newest study of the stage run with this plan's content."""
        return self.studies.latest_study(stage)

    def stage_state(self, stage: str, study: optuna.Study | None = None) -> StageState:
        """The read model of a stage (:mod:`tuner.tune.state`)."""
        return self.studies.stage_state(stage, study)

    # -- data ---------------------------------------------------------------------------------
    def prepared(self) -> Prepared:
        if self._prepared is None:
            self._prepared = prepare(self.settings.data, self.settings.data_dir)
        return self._prepared

    def loaded(self) -> Prepared | None:
        """The prepared data when this session has read it, else ``None`` (nothing is read)."""
        return self._prepared

    def data(self) -> TensorData:
        if self._data is None:
            self._data = TensorData.from_prepared(self.prepared())
        return self._data

    def claim_report(self) -> bool:
        """Whether this worker writes run-all's report: the first of the workers finishing
        together claims REPORT_CLAIM on the final study (a claim whose owner has gone, or that
        is older than the grace period, can be taken again: a later run writes it anew)."""
        found = self.studies.matching_study(FINAL)
        if found is None:
            return True
        got, _ = self.claims.try_claim(
            found[1], REPORT_CLAIM, self.owner, is_free=self.claims.is_stale
        )
        return got

    def resolve_fixed(self, upto: int) -> dict[str, Any]:
        """The params fixed for stage number ``upto``: every earlier stage's winner, read from
        its study, unless ``--fix`` gives it; ``--fix`` values for other fields apply too."""
        fixes = normalize(self.settings.fixes)
        fixed: dict[str, Any] = {}
        for spec in self.plan.stages[:upto]:
            if all(p in fixes for p in spec.params):
                continue
            state = self.stage_state(spec.name)
            if state.state != "done":
                needed = upto < len(self.plan.stages) and self.plan.stages[upto].name or FINAL
                hint = " ".join(f"--fix {p}=VALUE" for p in spec.params)
                raise StageError(
                    f"stage {needed!r} needs stage {spec.name!r} first (its study is "
                    f"{state.state}): run `python -m tuner run-stage {spec.name}` or pass {hint}"
                )
            kind = get_kind(spec.kind)
            if state.best_params is not None and not kind.contains(spec, state.best_params):
                raise StageError(
                    f"study {state.study} carries forward {state.best_params}, which is not in "
                    f"stage {spec.name!r}'s grid in plan {self.plan.name!r}: run `python -m "
                    f"tuner run-stage {spec.name} --force`"
                )
            fixed.update(normalize(state.best_params or {}))
        fixed.update(fixes)
        return fixed

    def reusing(self, spec: StageSpec | None = None) -> bool:
        """Whether this run reuses identical trials (for ``spec``: a stage without a pruner)."""
        on = self.settings.reuse and self.plan.reuse
        return on and (spec is None or reuse.reusable(spec))

    # -- running a stage ----------------------------------------------------------------------
    def run_stage(self, stage_name: str, *, force: bool = False) -> StageState:
        """Run (or resume, or join) a stage until every one of its points is settled.

        In: the name of one of the plan's stages; ``force``: redo a finished stage as a new
        study. Out: the stage's read model once its study is done (at once when it was done
        already). Raises :class:`StageError` when an earlier stage has not run (and ``--fix``
        does not give its winner), ``--fix`` names what the stage tunes, or the data is too
        small for the stage.
        """
        run = self._stage_run(stage_name)
        points = self._points(run)
        study = self.studies.open_study(
            run.spec.name,
            run.fixed,
            run.data.key,
            force=force,
            stage_attrs=run.spec.to_dict(),
            first=points.first_attrs(),
        )
        if study is None:
            return self.stage_state(run.spec.name)
        points.start(study)
        self.observers.notify("stage_started", self, study, run.spec.name)
        training = self._training(run, study, points.distributions())
        for batch in points.batches(study):
            self._work(study, batch, training)
        self.observers.notify("stage_done", self, study, run.spec.name)
        return self.stage_state(run.spec.name)

    def _stage_run(self, stage_name: str) -> StageRun:
        """What the stage starts from; refuses a ``--fix`` of what it tunes, and data it cannot
        train on, before anything is written."""
        spec = self.plan.stage(stage_name)
        index = self.plan.index(stage_name)
        clash = set(normalize(self.settings.fixes)) & set(spec.params)
        if clash:
            raise StageError(
                f"--fix {', '.join(sorted(clash))}: that is what stage {stage_name!r} tunes"
            )
        fixed = self.resolve_fixed(index)
        base = self.plan.defaults.with_params(fixed)
        data = self.data()
        kind = get_kind(spec.kind)
        kind.check_data(spec, len(data.train[1]))
        return StageRun(spec, index, kind, fixed, base, data)

    def _points(self, run: StageRun) -> StagePoints:
        """The stage's point source: what its kind finds as it runs (a kind that finds its
        own points takes no grid and no TPE space), else its sampler's."""
        if not run.kind.needs_grid:
            source = _KindServices(self)
            return KindPoints(
                lambda study: run.kind.points(source, study, run.spec, run.base, run.data)
            )
        return sampler_named(run.spec.sampler).points(
            run.spec,
            incumbent=incumbent(run.spec, run.base),
            seed=self.settings.seed,
            workers=self.workers,
        )

    def _training(
        self, run: StageRun, study: optuna.Study, dists: dict[str, BaseDistribution]
    ) -> Training:
        """How the stage's claimed groups train (its kind, reuse, the final's kept weights),
        and the study's pruner."""
        spec, kind, seed, compute = run.spec, run.kind, self.settings.seed, self.settings.compute
        reusing = self.reusing(spec)
        stage_reuse = reuse.StageReuse(
            spec,
            run.base,
            lambda cfg: kind.training_identity(spec, cfg, run.n_train),
            self.plan.final,
            run.data,
            seed,
            compute,
            self.settings.workdir,
            keeps_final=reusing and kind.keeps_final,
            budgeted=self.deadline is not None,
        )
        deadline = self.deadline

        def evaluate(
            group: list[Point], trials: list[optuna.Trial], reporter: Reporter
        ) -> list[PointResult]:
            cfgs, keep = stage_reuse.prepare(group, trials)
            results = evaluate_points(
                spec,
                cfgs,
                run.data,
                seed=seed,
                reporter=reporter,
                compute=compute,
                keep=keep,
                deadline=deadline,
            )
            stage_reuse.save_kept(study.study_name, trials, cfgs, keep, results)
            return results

        def earlier() -> list[str]:
            return self.studies.earlier_studies(run.index)

        study.pruner = for_stage(spec)
        n_rows = kind.rows_per_run(spec, run.n_train)
        batch = run.base.for_rows(run.n_train).batch_size
        per_run = planned_epochs(spec.epochs, spec.min_steps, n_rows, batch)
        keep_incumbent = spec.keep_incumbent_unless_significant
        return Training(
            evaluate,
            dists,
            epochs=per_run * kind.runs_in_sequence(spec),
            protect=frozenset({point_key(incumbent(spec, run.base))} if keep_incumbent else ()),
            find=stage_reuse.finder(self.storage, earlier) if reusing else None,
        )

    # -- running the final job ----------------------------------------------------------------
    def run_final(
        self, evaluate_final: Callable[..., PointResult], *, force: bool = False
    ) -> StageState:
        """Run the final job once across workers (a one-trial study ``<plan>.final``).

        In: ``evaluate_final(cfg, fixed, *, trial, reporter) -> PointResult``, which trains (or
        loads) and scores the chosen configuration ``cfg`` (:func:`tuner.tune.final.run_final`);
        ``force``: redo it as a new study. Out: the final study's read model.
        """
        fixed = self.resolve_fixed(len(self.plan.stages))
        cfg = self.plan.defaults.with_params(fixed)
        data = self.data()
        attrs = {"final": True, **dataclasses.asdict(self.plan.final)}
        study = self.studies.open_study(
            FINAL, fixed, data.key, force=force, stage_attrs=attrs, first={"points": [{}]}
        )
        if study is None:
            return self.stage_state(FINAL)
        if study.user_attrs.get("points") != [{}]:
            study.set_user_attr("points", [{}])

        def evaluate(
            group: list[Point], trials: list[optuna.Trial], reporter: Reporter
        ) -> list[PointResult]:
            trials[0].set_user_attr("config", cfg.to_dict())
            return [evaluate_final(cfg, fixed, trial=trials[0], reporter=reporter)]

        final = self.plan.final
        n_train = len(data.train[1])
        batch = cfg.for_rows(n_train).batch_size
        epochs = planned_epochs(final.epochs, final.min_steps, n_train, batch)
        self._work(study, [{}], Training(evaluate, {}, epochs))
        metrics = model_dir(self.settings.workdir, self.plan.name) / "metrics.json"
        self.observers.notify("final_done", self, study, metrics)
        return self.stage_state(FINAL)

    # -- claimed groups -----------------------------------------------------------------------
    def _work(self, study: optuna.Study, points: list[Point], training: Training) -> None:
        """Claim, train and tell ``points`` until every one of them is settled in the study.

        A worker claims up to ``Settings.group_size`` pending points (all it can get when 0)
        and trains them together as one fused group; each point keeps its own claim and
        trial, so every point still completes exactly once whatever the workers do.
        """
        keys = {point_key(p): i for i, p in enumerate(points)}
        waited = False
        while True:
            check_stop(self.settings.stop)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            done = {point_key(t.params) for t in trials if t.state in SETTLED}
            pending = [k for k in keys if k not in done]
            if not pending:
                return
            claimed = self.workers.claim_points(study, trials, pending)
            if not claimed:
                if not waited:
                    logger.info(
                        "%s: %d point(s) are being trained by other workers; waiting",
                        study.study_name,
                        len(pending),
                    )
                    waited = True
                time.sleep(self.settings.poll_interval)
                continue
            waited = False
            self._run_group(study, [points[keys[k]] for k in claimed], training)

    def _run_group(self, study: optuna.Study, group: list[Point], training: Training) -> None:
        """Create the claimed points' trials, train them together, tell each result
        (:meth:`GroupRunner.run`)."""
        self.groups.run(study, group, training)


class _KindServices(PointSource):
    """What a kind that finds its own points (:meth:`StageKind.points`) may use of a session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.seed = session.settings.seed

    def once(self, study: Any, what: str, done: Callable[[], bool], do: Callable[[], None]) -> None:
        key = "__" + "_".join(what.lower().split()) + "__"  # one claim per thing done once
        self.session.workers.once(study.study_name, key, f"{what} of {study.study_name}", done, do)

    def notify(self, hook: str, *args: Any) -> None:
        self.session.observers.notify(hook, self.session, *args)


def plan_states(session: Session) -> list[StageState]:
    return [session.stage_state(s.name) for s in session.plan.stages]


def check_stage_name(plan: Plan, name: str) -> StageSpec:
    try:
        return plan.stage(name)
    except PlanError as err:
        raise StageError(str(err)) from None
