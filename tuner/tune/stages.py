"""Running a plan's stages as Optuna studies, chained through the storage.

A :class:`Session` is a plan opened on a storage. It is made of parts with one job each: its
:class:`~tuner.tune.studies.StudyStore` reads and writes the stage studies (one per stage,
``<plan>.<stage>``, versions, plan identity), its :class:`~tuner.tune.coordination.Coordinator`
claims points and keeps heartbeats, its observers (:mod:`tuner.tune.hooks`) write notes and
plots, and the stage's kind (:mod:`tuner.tune.kinds`) finds and trains the points. What this
module does is run a stage: a stage's objective fixes the winners of every earlier stage, read
from those stages' studies (or given by ``--fix``) and recorded in its study's
``fixed_params`` user attr; then points are claimed, their trials created, trained together
and told, until every point is settled.

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
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from tuner.config import Plan, StageSpec, TrainConfig, planned_epochs
from tuner.data.prepare import DataSpec, Prepared, prepare
from tuner.errors import PlanError, StageError, Terminated
from tuner.paths import model_dir
from tuner.train.fused import Compute
from tuner.train.tensors import TensorData
from tuner.tune import reuse
from tuner.tune.claims import ClaimTable, new_owner_id
from tuner.tune.coordination import Coordinator
from tuner.tune.hooks import Observers, StageObserver
from tuner.tune.kinds import get_kind
from tuner.tune.kinds.base import PointSource, StageKind
from tuner.tune.objectives import PointResult, Reporter, evaluate_points
from tuner.tune.points import KindPoints, StagePoints
from tuner.tune.pruners import for_stage
from tuner.tune.samplers import sampler_named
from tuner.tune.state import SETTLED, StageState, incumbent, normalize, point_key
from tuner.tune.storage import (
    environment_failure,
    error_line,
    failure_kind,
    lost_storage,
    open_storage,
    storage_failure,
)
from tuner.tune.studies import FINAL, StudyStore, create_trial

logger = logging.getLogger(__name__)

REPORT_CLAIM = "__report__"  # the one worker writing run-all's report

Evaluate = Callable[[list[dict[str, Any]], list[optuna.Trial], Reporter], list[PointResult]]
"""Trains a group of claimed points: ``(points, trials, reporter) -> results``."""
Find = Callable[[dict[str, Any]], "tuple[str, FrozenTrial] | None"]
"""A point's identical COMPLETE trial in an earlier stage: ``point -> (study, trial)``."""


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


class Session:
    """A plan opened on a storage: studies, claims and (lazily) the prepared data."""

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
        self._data: TensorData | None = None
        # reading and writing studies; presence, claims and heartbeats
        self.workers = Coordinator(plan.name, self.storage, self.claims, self.owner, settings)
        self.studies = StudyStore(plan, self.storage, self.workers, settings, self.prepared)

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

    # -- running ------------------------------------------------------------------------------
    def run_stage(self, stage_name: str, *, force: bool = False) -> StageState:
        """Run (or resume, or join) a stage until every grid point is complete."""
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
        n_train = len(data.train[1])
        kind.check_data(spec, n_train)
        source = self._points(spec, kind, base, data)
        study = self.studies.open_study(
            spec.name,
            fixed,
            data.key,
            force=force,
            stage_attrs=spec.to_dict(),
            first=source.first_attrs(),
        )
        if study is None:
            return self.stage_state(spec.name)
        source.start(study)
        dists = source.distributions()
        self.observers.notify("stage_started", self, study, spec.name)
        seed, compute = self.settings.seed, self.settings.compute
        reusing = self.reusing(spec)

        def evaluate(
            group: list[dict[str, Any]], trials: list[optuna.Trial], reporter: Reporter
        ) -> list[PointResult]:
            cfgs = [base.with_params(p) for p in group]
            keep: dict[int, reuse.FinalRule] = {}
            for i, (trial, cfg) in enumerate(zip(trials, cfgs, strict=True)):
                trial.set_user_attr("config", cfg.to_dict())
                identity = kind.training_identity(spec, cfg, n_train)
                fp = reuse.fingerprint(spec, cfg, identity, seed=seed, data=data, compute=compute)
                if fp is not None:
                    trial.set_user_attr("fingerprint", fp)
                rule = reuse.FinalRule.of(self.plan.final, cfg, n_train)
                epochs = planned_epochs(spec.epochs, spec.min_steps, n_train, cfg.batch_size)
                if reusing and kind.keeps_final and epochs == rule.epochs:
                    keep[i] = rule
            results = evaluate_points(
                spec, cfgs, data, seed=seed, reporter=reporter, compute=compute, keep=keep
            )
            for i, (trial, result) in enumerate(zip(trials, results, strict=True)):
                if result.kept is not None and not result.pruned:
                    result.attrs["final_weights"] = reuse.save_weights(
                        self.settings.workdir, study.study_name, trial.number, result.kept
                    )
                    result.attrs["final_key"] = reuse.final_key(
                        cfgs[i], keep[i], seed=seed, data=data, compute=compute
                    )
            return results

        find = self._reuse_lookup(spec, index, base, data) if reusing else None

        study.pruner = for_stage(spec)
        n_rows = kind.rows_per_run(spec, n_train)
        per_run = planned_epochs(spec.epochs, spec.min_steps, n_rows, base.batch_size)
        epochs = per_run * kind.runs_in_sequence(spec)  # the progress bar's length
        protect = (
            {point_key(incumbent(spec, base))} if spec.keep_incumbent_unless_significant else set()
        )
        for points in source.batches(study):
            self._work(study, points, evaluate, dists, epochs, protect, find=find)
        self.observers.notify("stage_done", self, study, spec.name)
        return self.stage_state(spec.name)

    def _points(
        self, spec: StageSpec, kind: StageKind, base: TrainConfig, data: TensorData
    ) -> StagePoints:
        """The stage's point source: what its kind finds as it runs (a kind that finds its
        own points takes no grid and no TPE space), else its sampler's."""
        if not kind.needs_grid:
            services = _KindServices(self)
            return KindPoints(lambda study: kind.points(services, study, spec, base, data))
        return sampler_named(spec.sampler).points(
            spec, incumbent=incumbent(spec, base), seed=self.settings.seed, workers=self.workers
        )

    def reusing(self, spec: StageSpec | None = None) -> bool:
        """Whether this run reuses identical trials (for ``spec``: a stage without a pruner)."""
        on = self.settings.reuse and self.plan.reuse
        return on and (spec is None or reuse.reusable(spec))

    def _reuse_lookup(
        self, spec: StageSpec, index: int, base: TrainConfig, data: TensorData
    ) -> Find:
        """A :data:`Find` over the earlier stages' studies (read once, on first use)."""
        table: dict[str, tuple[str, FrozenTrial]] | None = None

        def find(point: dict[str, Any]) -> tuple[str, FrozenTrial] | None:
            nonlocal table
            cfg = base.with_params(point)
            identity = get_kind(spec.kind).training_identity(spec, cfg, len(data.train[1]))
            fp = reuse.fingerprint(
                spec,
                cfg,
                identity,
                seed=self.settings.seed,
                data=data,
                compute=self.settings.compute,
            )
            if fp is None:
                return None
            if table is None:
                table = reuse.sources(self.storage, self.studies.earlier_studies(index), data.key)
            return table.get(fp)

        return find

    def run_final(
        self, evaluate_final: Callable[..., PointResult], *, force: bool = False
    ) -> StageState:
        """Run the final job once (a one-trial study ``<plan>.final``)."""
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
            group: list[dict[str, Any]], trials: list[optuna.Trial], reporter: Reporter
        ) -> list[PointResult]:
            trials[0].set_user_attr("config", cfg.to_dict())
            return [evaluate_final(cfg, fixed, trial=trials[0], reporter=reporter)]

        final = self.plan.final
        epochs = planned_epochs(final.epochs, final.min_steps, len(data.train[1]), cfg.batch_size)
        self._work(study, [{}], evaluate, {}, epochs)
        metrics = model_dir(self.settings.workdir, self.plan.name) / "metrics.json"
        self.observers.notify("final_done", self, study, metrics)
        return self.stage_state(FINAL)

    def _work(
        self,
        study: optuna.Study,
        points: list[dict[str, Any]],
        evaluate: Evaluate,
        dists: dict[str, BaseDistribution],
        epochs: int,
        protect: set[str] | None = None,
        *,
        find: Find | None = None,
    ) -> None:
        """Claim, train and tell points until every point of the study is complete.

        A worker claims up to ``Settings.group_size`` pending points (all it can get when 0)
        and trains them together as one fused group; each point keeps its own claim and
        trial, so every point still completes exactly once whatever the workers do.
        """
        keys = {point_key(p): i for i, p in enumerate(points)}
        waited = False
        while True:
            self._check_stop()
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
            group = [points[keys[k]] for k in claimed]
            self._run_group(study, group, evaluate, dists, epochs, protect or set(), find=find)

    def _run_group(
        self,
        study: optuna.Study,
        group: list[dict[str, Any]],
        evaluate: Evaluate,
        dists: dict[str, BaseDistribution],
        epochs: int,
        protect: set[str],
        *,
        find: Find | None = None,
    ) -> None:
        """Create the claimed points' trials, train them together, tell each result.

        ``find``: where a point's identical trial of an earlier stage is (:mod:`tuner.tune.reuse`);
        such a point's trial is recorded from it and the group trains without it.

        ``epochs``: how many epochs the group trains in all (the progress bar's length);
        ``protect``: keys of points never pruned (the incumbent of a keep-incumbent stage).
        """
        trials: list[optuna.Trial] = []
        trial_ids: dict[int, int] = {}  # trial number -> storage id (heartbeats, claims)
        with self._storage_errors(f"starting {study.study_name} trials"):
            for point in group:
                trial, trial_id = create_trial(self.storage, study, point, dists, self.owner)
                # a first heartbeat at once: a worker dying here leaves a trial Optuna can fail
                self.storage.record_heartbeat(trial_id)
                self.claims.set_trial(study.study_name, point_key(point), self.owner, trial_id)
                trials.append(trial)
                trial_ids[trial.number] = trial_id
        if find is not None:
            group, trials = self._reuse_trials(study, group, trials, find)
            if not group:
                return
        labels = [", ".join(f"{k}={v}" for k, v in p.items()) or "final" for p in group]
        numbers = ", ".join(str(t.number) for t in trials)
        logger.info(
            "%s trial(s) %s (%s): training together",
            study.study_name,
            numbers,
            "; ".join(labels),
        )
        desc = f"{study.study_name} {labels[0]}" + (
            f" +{len(group) - 1} more" if len(group) > 1 else ""
        )
        bar = tqdm(total=epochs, desc=desc, unit="epoch", leave=False, disable=None)

        reporter = _TrialReporter(
            trials, bar, [point_key(p) in protect for p in group], self._check_stop
        )
        ids = [trial_ids[t.number] for t in trials]
        try:
            with self.workers.heartbeat([study.study_name], ids), bar:
                results = evaluate(group, trials, reporter)
        except BaseException as err:
            lost = lost_storage(
                err, self.settings.storage_url, f"training {study.study_name} trial(s) {numbers}"
            )
            if lost is not None:  # nothing more to write (see _storage_errors)
                raise lost from None
            kind = failure_kind(err)  # only "error" counts towards MAX_FAILURES
            for trial in trials:
                try:
                    trial.set_user_attr(kind, f"{type(err).__name__}: {err}")
                except Exception:  # noqa: BLE001 - a full disk: failing the trial matters more
                    pass
                try:
                    study.tell(trial, state=TrialState.FAIL)
                except Exception as tell_err:  # the storage itself may be what failed
                    logger.warning(
                        "could not mark trial %d as failed: %s", trial.number, error_line(tell_err)
                    )
            failure = environment_failure(
                err, self.settings.storage_url, f"training {study.study_name} trial(s) {numbers}"
            )
            if failure is not None:  # a full disk, a corrupt storage: one line
                raise failure from None
            raise
        with self._storage_errors(f"telling {study.study_name} trial(s) {numbers}"):
            for point, trial, label, result in zip(group, trials, labels, results, strict=True):
                for name, value in result.attrs.items():
                    trial.set_user_attr(name, value)
                self.observers.notify("trial_done", self, study, trial, point, result.attrs)
                if result.pruned:
                    study.tell(trial, state=TrialState.PRUNED)
                    logger.info("%s trial %d (%s): pruned", study.study_name, trial.number, label)
                    continue
                study.tell(trial, result.value)
                logger.info(
                    "%s trial %d (%s): %.4f", study.study_name, trial.number, label, result.value
                )

    def _reuse_trials(
        self,
        study: optuna.Study,
        group: list[dict[str, Any]],
        trials: list[optuna.Trial],
        find: Find,
    ) -> tuple[list[dict[str, Any]], list[optuna.Trial]]:
        """Record each claimed point that has an identical trial in an earlier stage from that
        trial (no training); return the points (and trials) left to train."""
        left: list[tuple[dict[str, Any], optuna.Trial]] = []
        with self._storage_errors(f"reusing trials for {study.study_name}"):
            for point, trial in zip(group, trials, strict=True):
                source = find(point)
                if source is None:
                    left.append((point, trial))
                    continue
                try:
                    value = reuse.copy_into(trial, *source)
                    self.observers.notify(
                        "trial_done", self, study, trial, point, source[1].user_attrs
                    )
                    study.tell(trial, value)
                except BaseException:
                    for t in trials:  # none stays RUNNING: the next worker retries them
                        try:
                            study.tell(t, state=TrialState.FAIL)
                        except Exception:  # noqa: BLE001 - already told, or the storage is gone
                            pass
                    raise
                logger.info(
                    "%s trial %d (%s): %.4f, reused from %s (identical training)",
                    study.study_name,
                    trial.number,
                    ", ".join(f"{k}={v}" for k, v in point.items()),
                    value,
                    reuse.origin(*source),
                )
        return [p for p, _ in left], [t for _, t in left]

    def _check_stop(self) -> None:
        """Raise :class:`Terminated` when the worker was told to stop (``Settings.stop``)."""
        if self.settings.stop is not None and self.settings.stop.is_set():
            raise Terminated("SIGTERM")

    @contextmanager
    def _storage_errors(self, doing: str) -> Iterator[None]:
        """Turn a lost database connection into the one-line error that names what was being
        done; the trials' heartbeats stop, so the next worker (or run) fails and retries them."""
        try:
            yield
        except Exception as err:
            lost = storage_failure(err, self.settings.storage_url, doing)
            if lost is not None:  # a full disk too: the worker fails its trials on the way out
                raise lost from None
            raise


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


class _TrialReporter:
    """A group's :class:`~tuner.tune.objectives.Reporter`: intermediate values go to the points'
    trials, pruning is the study's pruner, progress a tqdm bar; every epoch it checks whether
    the worker was told to stop (``check_stop``)."""

    def __init__(
        self,
        trials: list[optuna.Trial],
        bar: tqdm,
        protected: list[bool],
        check_stop: Callable[[], None],
    ) -> None:
        self.trials, self.bar, self.protected = trials, bar, protected
        self.check_stop = check_stop
        self.last: dict[int, float] = {}

    def report(self, point: int, value: float, step: int) -> None:
        self.trials[point].report(value, step)
        self.last[point] = value
        self.bar.set_postfix(best=f"{max(self.last.values()):.4f}", refresh=False)

    def should_prune(self, point: int) -> bool:
        return not self.protected[point] and self.trials[point].should_prune()

    def progress(self, epoch: int) -> None:
        self.bar.update(1)
        self.check_stop()


def plan_states(session: Session) -> list[StageState]:
    return [session.stage_state(s.name) for s in session.plan.stages]


def check_stage_name(plan: Plan, name: str) -> StageSpec:
    try:
        return plan.stage(name)
    except PlanError as err:
        raise StageError(str(err)) from None
