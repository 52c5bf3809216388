"""Running a plan's stages as Optuna studies, chained through the storage.

One study per stage, named ``<plan>.<stage>`` (``.v2``, ``.v3``... when a stage is redone). A
stage's objective fixes the winners of every earlier stage, read from those stages' studies in
the storage (or given by ``--fix``), and records them in its study's ``fixed_params`` user attr.

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
import datetime as dt
import itertools
import json
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
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from tuner.config import Plan, StageSpec, TrainConfig, coerce_params, content_hash, planned_epochs
from tuner.data.prepare import DataSpec, Prepared, prepare
from tuner.errors import PlanError, StageError, TunerError
from tuner.paths import model_dir
from tuner.train.fused import Compute
from tuner.train.tensors import TensorData
from tuner.tune import reuse
from tuner.tune.claims import Claim, ClaimTable, new_owner_id
from tuner.tune.decide import Decision, PointStats, decide
from tuner.tune.hooks import Observers, StageObserver
from tuner.tune.kinds import get_kind, stage_spec
from tuner.tune.kinds.base import PointSource
from tuner.tune.objectives import PointResult, Reporter, evaluate_points
from tuner.tune.pruners import for_stage
from tuner.tune.search import distributions, propose
from tuner.tune.storage import (
    environment_failure,
    error_line,
    lost_storage,
    open_storage,
    storage_failure,
    study_name,
    study_version,
)

logger = logging.getLogger(__name__)

FINAL = "final"
REPORT_CLAIM = "__report__"  # the one worker writing run-all's report
CREATE_CLAIM = "__create__"  # the one worker calling Optuna's create_study for a study
STUDY_CLAIM = "__study__"  # held by the identity (plan content, data, fixed params) of a study
ROUND_CLAIM = "__round_{}__"  # who proposes a TPE stage's round r
SETTLED = (TrialState.COMPLETE, TrialState.PRUNED)  # a point with such a trial is not retried
MAX_FAILURES = 3  # a point whose training raised this often stops the stage

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

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def models_dir(self) -> Path:
        return self.workdir / "models"


def point_key(params: Mapping[str, Any]) -> str:
    """A grid point's identity: canonical JSON of its params."""
    return json.dumps(dict(params), sort_keys=True)


def normalize(params: Mapping[str, Any]) -> dict[str, Any]:
    """Params as stored in studies: typed like TrainConfig, widths as ``"256x256"``."""
    out = coerce_params(params)
    if "hidden" in out:
        out["hidden"] = "x".join(str(w) for w in out["hidden"])
    return out


@dataclass
class StageState:
    """What the storage says about one stage (the ``status`` view)."""

    name: str
    study: str | None
    state: str  # pending | running | done
    n_complete: int
    n_total: int
    best_params: dict[str, Any] | None
    best_value: float | None
    fixed_params: dict[str, Any] | None
    user_attrs: dict[str, Any] = field(default_factory=dict, repr=False)
    trials: list[FrozenTrial] = field(default_factory=list, repr=False)
    points: list[PointStats] = field(default_factory=list, repr=False)
    decision: Decision | None = None
    n_pruned: int = 0
    reused: dict[str, str] = field(default_factory=dict)  # point key -> "<study>#<trial>"

    def reused_from(self, params: Mapping[str, Any]) -> str | None:
        """Where a point's trial was reused from (``None``: it was trained here)."""
        return self.reused.get(point_key(params))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "study": self.study,
            "state": self.state,
            "n_complete": self.n_complete,
            "n_pruned": self.n_pruned,
            "n_total": self.n_total,
            "best_params": self.best_params,
            "best_value": self.best_value,
            "fixed_params": self.fixed_params,
            "points": [
                {**p.summary(), "reused_from": self.reused_from(p.params)} for p in self.points
            ],
            "decision": self.decision.to_dict() if self.decision else None,
        }


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
        self._presence: tuple[threading.Event, threading.Thread] | None = None

    def close(self) -> None:
        self.withdraw()
        self.claims.close()
        self.storage.remove_session()
        self.storage.engine.dispose()

    # -- presence: how many workers share the plan's stages ------------------------------------
    def announce(self) -> None:
        """Count this session as a worker of the plan until :meth:`withdraw` (or its death):
        a presence row in ``tuner_claims``, refreshed every heartbeat interval. With
        ``group_size`` 0 each worker claims its share of a stage's points (:meth:`_share`)."""
        if self._presence is not None:
            return
        self.claims.announce(self.plan.name, self.owner)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.settings.heartbeat_interval):
                try:
                    self.claims.refresh_presence(self.plan.name, self.owner)
                except Exception as err:  # noqa: BLE001 - an outage shows up in the main thread
                    logger.warning("presence heartbeat failed: %s", error_line(err))

        thread = threading.Thread(target=beat, name="tuner-presence", daemon=True)
        thread.start()
        self._presence = (stop, thread)

    def withdraw(self) -> None:
        """Stop counting as a worker (best effort: a dead worker's row goes stale anyway)."""
        if self._presence is None:
            return
        stop, thread = self._presence
        self._presence = None
        stop.set()
        thread.join(timeout=self.settings.heartbeat_interval + 5)
        try:
            self.claims.withdraw(self.plan.name, self.owner)
        except Exception as err:  # noqa: BLE001 - the storage may be what failed
            logger.debug("could not withdraw presence: %s", error_line(err))

    def _share(self, pending: int) -> int:
        """How many of a stage's ``pending`` points this worker claims at once: ``group_size``
        when set, else its share among the plan's live workers, ceil(pending / workers) (all
        of them for a single worker, which trains the stage as one fused group)."""
        if self.settings.group_size:
            return self.settings.group_size
        if self._presence is None:
            return pending
        try:
            workers = len(set(self.claims.live_workers(self.plan.name)) | {self.owner})
        except Exception as err:  # noqa: BLE001 - the claims below report a lost storage
            logger.debug("could not count live workers: %s", error_line(err))
            workers = 1
        return max(1, -(-pending // workers))

    # -- data ---------------------------------------------------------------------------------
    def prepared(self) -> Prepared:
        if self._prepared is None:
            self._prepared = prepare(self.settings.data, self.settings.data_dir)
        return self._prepared

    def data(self) -> TensorData:
        if self._data is None:
            self._data = TensorData.from_prepared(self.prepared())
        return self._data

    # -- reading the storage --------------------------------------------------------------------
    def _stage_studies(self, stage: str) -> list[tuple[int, Any]]:
        """Every study of the stage in the storage (any plan content), newest version first."""
        found = [
            (v, s)
            for s in self.storage.get_all_studies()
            if (v := study_version(s.study_name, self.plan.name, stage))
        ]
        return sorted(found, key=lambda vs: -vs[0])

    def _same_content(self, stage: str, attrs: Mapping[str, Any]) -> bool:
        """Whether a study of the stage was run with this plan's content for it (see
        :meth:`Plan.stage_content`). A study from before plan identity (no ``plan_content``
        attr) matches when the stage settings it recorded agree with this plan's."""
        recorded = attrs.get("plan_content")
        if recorded is not None:
            return recorded == self.plan.content_key(stage)
        return stage == FINAL or _legacy_spec_matches(attrs.get("stage"), self.plan.stage(stage))

    def _matching_study(self, stage: str) -> tuple[int, str] | None:
        """``(version, name)`` of the newest study of the stage with this plan's content."""
        for version, summary in self._stage_studies(stage):
            if self._same_content(stage, summary.user_attrs):
                return version, summary.study_name
        return None

    def _study_being_created(self, stage: str, identity: str) -> tuple[int, str] | None:
        """``(version, name)`` of the stage's newest study when another worker with this
        ``identity`` is creating it right now (it holds its STUDY_CLAIM, and the study has no
        plan content yet): join it rather than start the next version."""
        studies = self._stage_studies(stage)
        if not studies:
            return None
        version, summary = studies[0]
        if "plan_content" in summary.user_attrs:
            return None
        claim = self.claims.get(summary.study_name, STUDY_CLAIM)
        if claim is not None and claim.owner == identity:
            return version, summary.study_name
        return None

    def claim_report(self) -> bool:
        """Whether this worker writes run-all's report: the first of the workers finishing
        together claims REPORT_CLAIM on the final study (a claim whose owner has gone, or that
        is older than the grace period, can be taken again: a later run writes it anew)."""
        found = self._matching_study(FINAL)
        if found is None:
            return True
        got, _ = self.claims.try_claim(
            found[1], REPORT_CLAIM, self.owner, is_free=self.claims.is_stale
        )
        return got

    def latest_study(self, stage: str) -> optuna.Study | None:
        """The newest study of the stage run with this plan's content: a study of an edited
        plan under the same name is never read as this plan's."""
        found = self._matching_study(stage)
        if found is None:
            return None
        return optuna.load_study(study_name=found[1], storage=self.storage)

    def stage_state(self, stage: str, study: optuna.Study | None = None) -> StageState:
        """Read a stage's latest study (or ``study``): its state, progress and winner."""
        if study is None:
            study = self.latest_study(stage)
        n_total = self._planned_points(stage)
        if study is None:
            return StageState(stage, None, "pending", 0, n_total, None, None, None)
        attrs = study.user_attrs
        points = attrs.get("points")
        keys = {point_key(p) for p in points} if points is not None else None
        trials = study.get_trials(deepcopy=False)
        settled = [
            t
            for t in trials
            if t.state in SETTLED and (keys is None or point_key(t.params) in keys)
        ]
        complete = [t for t in settled if t.state == TrialState.COMPLETE]
        n_complete = len({point_key(t.params) for t in settled})  # pruned points count as done
        if points is not None:  # a TPE stage plans more points than it has proposed so far
            n_total = attrs.get("planned", len(points))
        latest = {point_key(t.params): t for t in sorted(complete, key=lambda t: t.number)}
        order = {point_key(p): i for i, p in enumerate(points or [])}
        stats = [
            PointStats(dict(t.params), tuple(t.user_attrs.get("values") or [t.value]))
            for k, t in sorted(latest.items(), key=lambda kt: order.get(kt[0], kt[1].number))
        ]
        decision = self._decide(stage, attrs.get("fixed_params") or {}, stats)
        chosen = next((p for p in stats if decision and p.params == decision.chosen), None)
        state = (
            "done"
            if points is not None and len(points) >= n_total and n_complete == n_total
            else "running"
        )
        return StageState(
            name=stage,
            study=study.study_name,
            state=state,
            n_complete=n_complete,
            n_total=n_total,
            best_params=dict(chosen.params) if chosen else None,
            best_value=chosen.mean if chosen else None,
            fixed_params=attrs.get("fixed_params"),
            user_attrs=attrs,
            trials=trials,
            points=stats,
            decision=decision,
            n_pruned=len({point_key(t.params) for t in settled if t.state == TrialState.PRUNED}),
            reused={
                k: t.user_attrs["reused_from"]
                for k, t in latest.items()
                if t.user_attrs.get("reused_from")
            },
        )

    def _decide(
        self, stage: str, fixed: dict[str, Any], stats: list[PointStats]
    ) -> Decision | None:
        if stage == FINAL:
            return decide(stats)
        spec = self.plan.stage(stage)
        inc = incumbent(spec, self.plan.defaults.with_params(fixed))
        return decide(stats, incumbent=inc, keep_incumbent=spec.keep_incumbent_unless_significant)

    def _planned_points(self, stage: str) -> int:
        if stage == FINAL:
            return 1
        return self.plan.stage(stage).n_points

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
        tpe = spec.sampler == "tpe"
        grid = not tpe and kind.needs_grid
        # set by the study's creator, with its other attrs (no two workers insert one attr)
        first = {"planned": spec.trials} if tpe else {"points": grid_points(spec)} if grid else {}
        study = self._open_study(
            spec.name, fixed, data.key, force=force, stage_attrs=spec.to_dict(), first=first
        )
        if study is None:
            return self.stage_state(spec.name)
        if grid:
            points = grid_points(spec)
            if study.user_attrs.get("points") != points:
                study.set_user_attr("points", points)
        elif not tpe:  # the kind finds its points (an LR range test's candidates)
            points = kind.points(_PointSource(self), study, spec, base, data) or []
        if tpe:
            if "planned" not in study.user_attrs:
                study.set_user_attr("planned", spec.trials)  # before any round: not "done"
            dists = distributions(spec)
        else:
            search_space = _search_space(points)
            dists = {k: CategoricalDistribution(v) for k, v in search_space.items()}
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
        if tpe:
            r = 0
            while (points := self._round_points(study, spec, r, incumbent(spec, base))) is not None:
                self._work(study, points, evaluate, dists, epochs, protect, find=find)
                r += 1
        else:
            self._work(study, points, evaluate, dists, epochs, protect, find=find)
        self.observers.notify("stage_done", self, study, spec.name)
        return self.stage_state(spec.name)

    def reusing(self, spec: StageSpec | None = None) -> bool:
        """Whether this run reuses identical trials (for ``spec``: a stage without a pruner)."""
        on = self.settings.reuse and self.plan.reuse
        return on and (spec is None or reuse.reusable(spec))

    def _earlier_studies(self, index: int) -> list[str]:
        """The latest matching studies of the plan's stages before ``index``, nearest first."""
        return [
            found[1]
            for s in reversed(self.plan.stages[:index])
            if (found := self._matching_study(s.name)) is not None
        ]

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
                table = reuse.sources(self.storage, self._earlier_studies(index), data.key)
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
        study = self._open_study(
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

    def _open_study(
        self,
        stage: str,
        fixed: dict[str, Any],
        data_key: str,
        *,
        force: bool,
        stage_attrs: dict[str, Any],
        first: dict[str, Any] | None = None,
    ) -> optuna.Study | None:
        """The study to work on, or ``None`` when the stage is already complete.

        The newest study of the stage with this plan's content for it (user attr
        ``plan_content``, see :meth:`Plan.stage_content`) is reused, resumed or joined when it
        ran on the same data with the same fixed params. A new version is started when
        ``force`` is set, when no study of the stage has this content (the plan was edited
        under the same name), or when that study ran on other data or with other fixed params
        (a predecessor was redone).
        """
        content = self.plan.content_key(stage)
        identity = "content:" + content_hash({"plan": content, "fixed": fixed, "data": data_key})
        version = 0  # 0: start a new version
        match = None if force else self._matching_study(stage)
        if match is None and not force:
            match = self._study_being_created(stage, identity)
        if match is not None:
            study = optuna.load_study(study_name=match[1], storage=self.storage)
            current = self.stage_state(stage, study)
            attrs = current.user_attrs
            # A study without attrs is being created by another worker right now: join it (its
            # STUDY_CLAIM says whether it is being created for this plan content, data, params).
            same_data = attrs.get("data_key", data_key) == data_key
            if same_data and attrs.get("fixed_params", fixed) == fixed:
                if current.state == "done":
                    logger.info(
                        "stage %s is already complete in study %s: nothing to do "
                        "(pass --force to redo it as a new study)",
                        stage,
                        current.study,
                    )
                    return None
                version = match[0]
            else:
                why = "other fixed params" if same_data else "other data"
                logger.info("study %s was run with %s: starting a new study", current.study, why)
        elif not force and (others := self._stage_studies(stage)):
            logger.info(
                "stage %s: plan content changed since study %s (the stage's settings, or the "
                "defaults it starts from, differ in plan %s): starting a new study",
                stage,
                others[0][1].study_name,
                self.plan.path or self.plan.name,
            )
        name = self._claim_study(stage, version, identity, join=not force)

        def init(study: optuna.Study) -> None:
            prepared = self.prepared()
            study.set_user_attr("plan_content", content)  # first: which plan this study is of
            study.set_user_attr("plan", self.plan.name)
            study.set_user_attr("stage", stage_attrs)
            study.set_user_attr("fixed_params", fixed)
            study.set_user_attr("data", _data_summary(prepared))
            study.set_user_attr("seed", self.settings.seed)
            for key, value in (first or {}).items():
                study.set_user_attr(key, value)
            # last: a worker that died before this line left a study the next one completes
            study.set_user_attr("data_key", data_key)

        study = self._create_study(name, init)
        logger.info("stage %s: study %s, fixed params %s", stage, name, fixed or "none")
        return study

    def _create_study(self, name: str, init: Callable[[optuna.Study], None]) -> optuna.Study:
        """Create (or load) study ``name`` and set its attrs (``init``, ending with
        ``data_key``): one worker at a time does it, behind the study's CREATE_CLAIM, so that
        racing workers never make the database log a unique violation (Optuna inserts a study,
        or an attr, after looking for it); the others wait and load the finished study."""
        waiting = False
        while True:
            study = self._initialised_study(name)
            if study is not None:
                return study
            got, _ = self.claims.try_claim(
                name, CREATE_CLAIM, self.owner, is_free=self.claims.is_stale
            )
            if got:
                try:
                    try:  # created by a worker that held the claim before us (or died)?
                        self.storage.get_study_id_from_name(name)
                    except KeyError:
                        optuna.create_study(
                            study_name=name,
                            storage=self.storage,
                            direction="maximize",
                            pruner=optuna.pruners.NopPruner(),
                        )
                    study = optuna.load_study(study_name=name, storage=self.storage)
                    if "data_key" not in study.user_attrs:
                        init(study)
                    return study
                finally:
                    self.claims.release(name, CREATE_CLAIM, self.owner)
            if not waiting:
                logger.info("waiting for another worker to create study %s", name)
                waiting = True
            time.sleep(min(self.settings.poll_interval, 0.2))

    def _initialised_study(self, name: str) -> optuna.Study | None:
        """Study ``name`` once it exists with its attrs set (``data_key``, the last), else None."""
        try:
            study_id = self.storage.get_study_id_from_name(name)
        except KeyError:
            return None
        if "data_key" not in self.storage.get_study_user_attrs(study_id):
            return None
        return optuna.load_study(study_name=name, storage=self.storage)

    def _claim_study(self, stage: str, version: int, identity: str, *, join: bool = False) -> str:
        """The name of the stage's study ``version`` (0: the next new version) once this worker
        may work on it: the study's STUDY_CLAIM, an atomic insert, holds ``identity`` (plan
        content, fixed params, data). A version claimed for another identity (a worker of an
        edited plan, or on other data, creating it at the same moment) is skipped, so two
        plans never share a study, however their workers race. With ``join`` (no --force), the
        newest version, when claimed for this same identity, is joined: workers of one plan
        that race to start a stage share one study."""
        floor = 0
        while True:
            if not version:
                top = max((v for v, _ in self._stage_studies(stage)), default=0)
                if join and top > floor:  # a worker with this identity just created it: join
                    newest = study_name(self.plan.name, stage, top)
                    holder = self.claims.get(newest, STUDY_CLAIM)
                    if holder is not None and holder.owner == identity:
                        return newest
                version = max(top, floor) + 1
            name = study_name(self.plan.name, stage, version)
            got, holder = self.claims.try_claim(
                name, STUDY_CLAIM, identity, is_free=lambda claim: False
            )
            if got or (holder is not None and holder.owner == identity):
                return name
            if holder is not None:
                logger.info(
                    "study %s is another plan content's, or ran on other data or with other "
                    "fixed params: starting a new study",
                    name,
                )
                floor, version = version, 0

    def once(
        self, study_name: str, key: str, what: str, done: Callable[[], bool], do: Callable[[], None]
    ) -> None:
        """Claim, else wait and log once: until ``done()``, the one worker that holds claim
        ``key`` on the study runs ``do`` (with its claim's heartbeat running) while the others
        poll. A holder that dies leaves a stale claim the next worker takes over. Used for the
        LR range test and TPE rounds; grid points are claimed the same way, many at once
        (:meth:`_work`)."""
        waiting = False
        while not done():
            got, _ = self.claims.try_claim(
                study_name, key, self.owner, is_free=self.claims.is_stale
            )
            if got:
                if not done():  # else: done by a worker that finished between read and claim
                    with self._heartbeat([study_name], []):
                        do()
                continue
            if not waiting:
                logger.info("waiting for another worker's %s on %s", what, study_name)
                waiting = True
            time.sleep(self.settings.poll_interval)

    def _round_points(
        self, study: optuna.Study, spec: StageSpec, r: int, first: dict[str, Any]
    ) -> list[dict[str, Any]] | None:
        """The points of a TPE stage's rounds ``0..r`` (round ``r`` proposed now, by one worker,
        from the settled trials of the earlier rounds), or ``None`` when no round ``r`` is
        planned. Every worker reads the same rounds from the study."""

        def rounds() -> list[list[dict[str, Any]]]:
            return study.user_attrs.get("rounds", [])

        def proposed() -> int:
            return sum(len(rnd) for rnd in rounds())

        def done() -> bool:
            return len(rounds()) > r or proposed() >= study.user_attrs.get("planned", spec.trials)

        def propose_round() -> None:
            before, count = rounds(), proposed()
            history = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            n = min(spec.round_size, spec.trials - count)
            new = propose(
                spec,
                history,
                n,
                seed=self.settings.seed + r,
                first=normalize(first) if r == 0 else None,
            )
            logger.info("%s round %d: TPE proposes %d point(s)", study.study_name, r, len(new))
            if len(new) < n:  # the space is exhausted: plan what there is
                study.set_user_attr("planned", count + len(new))
            study.set_user_attr("rounds", [*before, new])
            study.set_user_attr("points", [p for rnd in [*before, new] for p in rnd])

        self.once(study.study_name, ROUND_CLAIM.format(r), f"TPE round {r}", done, propose_round)
        have = rounds()
        return [p for rnd in have[: r + 1] for p in rnd] if len(have) > r else None

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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            done = {point_key(t.params) for t in trials if t.state in SETTLED}
            pending = [k for k in keys if k not in done]
            if not pending:
                return
            limit = self._share(len(pending))
            claimed: list[str] = []
            for key in pending:
                self._check_failures(study, trials, key)
                got, previous = self.claims.try_claim(
                    study.study_name, key, self.owner, is_free=self._claim_is_free
                )
                if got:
                    claimed.append(key)
                    if previous is not None and previous.trial_id is not None:
                        self._fail_if_running(previous.trial_id)
                    if len(claimed) >= limit:
                        break
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
                trial, trial_id = _create_trial(self.storage, study, point, dists)
                # a first heartbeat at once: a worker dying here leaves a trial Optuna can fail
                self.storage.record_heartbeat(trial_id)
                self.claims.set_trial(study.study_name, point_key(point), self.owner, trial_id)
                trial.set_user_attr("worker", self.owner)
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

        reporter = _TrialReporter(trials, bar, [point_key(p) in protect for p in group])
        ids = [trial_ids[t.number] for t in trials]
        try:
            with self._heartbeat([study.study_name], ids), bar:
                results = evaluate(group, trials, reporter)
        except BaseException as err:
            lost = lost_storage(
                err, self.settings.storage_url, f"training {study.study_name} trial(s) {numbers}"
            )
            if lost is not None:  # nothing more to write (see _storage_errors)
                raise lost from None
            kind = _failure_kind(err)  # only "error" counts towards MAX_FAILURES
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

    def _claim_is_free(self, claim: Claim) -> bool:
        if claim.trial_id is not None:
            state = self.storage.get_trial(claim.trial_id).state
            if state in SETTLED:
                return False
            if state.is_finished():
                return True
        return self.claims.is_stale(claim)

    def _fail_if_running(self, trial_id: int) -> None:
        """Fail the trial of a dead worker whose claim we took over (no trial stays RUNNING)."""
        try:
            if self.storage.get_trial(trial_id).state == TrialState.RUNNING:
                self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
                logger.info("trial id %d was left running by a dead worker: failed it", trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    @staticmethod
    def _check_failures(study: optuna.Study, trials: list[FrozenTrial], key: str) -> None:
        errors = [
            t
            for t in trials
            if t.state == TrialState.FAIL and "error" in t.user_attrs and point_key(t.params) == key
        ]
        if len(errors) >= MAX_FAILURES:
            raise StageError(
                f"{study.study_name}: point {key} failed {len(errors)} times; last error "
                f"(trial {errors[-1].number}): {errors[-1].user_attrs['error']}"
            )

    @contextmanager
    def _heartbeat(self, studies: list[str], trial_ids: list[int]) -> Iterator[None]:
        """Keep this worker's claims (and Optuna trial heartbeats) fresh while training."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.settings.heartbeat_interval):
                try:
                    for trial_id in trial_ids:
                        self.storage.record_heartbeat(trial_id)
                    self.claims.refresh(self.owner, studies)
                except Exception as err:  # keep beating; an outage shows up in the main thread
                    logger.warning("heartbeat failed: %s", error_line(err))

        for trial_id in trial_ids:
            self.storage.record_heartbeat(trial_id)
        thread = threading.Thread(target=beat, name="tuner-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            # a beat stuck on a busy storage must not hold up a worker that is stopping
            thread.join(timeout=self.settings.heartbeat_interval + 5)


class _PointSource(PointSource):
    """What a kind that finds its own points (:meth:`StageKind.points`) may use of a session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.seed = session.settings.seed

    def once(self, study: Any, what: str, done: Callable[[], bool], do: Callable[[], None]) -> None:
        key = "__" + "_".join(what.lower().split()) + "__"  # one claim per thing done once
        self.session.once(study.study_name, key, what, done, do)

    def notify(self, hook: str, *args: Any) -> None:
        self.session.observers.notify(hook, self.session, *args)


class _TrialReporter:
    """A group's :class:`~tuner.tune.objectives.Reporter`: intermediate values go to the points'
    trials, pruning is the study's pruner, progress a tqdm bar."""

    def __init__(self, trials: list[optuna.Trial], bar: tqdm, protected: list[bool]) -> None:
        self.trials, self.bar, self.protected = trials, bar, protected
        self.last: dict[int, float] = {}

    def report(self, point: int, value: float, step: int) -> None:
        self.trials[point].report(value, step)
        self.last[point] = value
        self.bar.set_postfix(best=f"{max(self.last.values()):.4f}", refresh=False)

    def should_prune(self, point: int) -> bool:
        return not self.protected[point] and self.trials[point].should_prune()

    def progress(self, epoch: int) -> None:
        self.bar.update(1)


def incumbent(spec: StageSpec, base: TrainConfig) -> dict[str, Any]:
    """The grid point equal to the configuration the stage starts from."""
    current = normalize(base.to_dict())
    return {p: current[p] for p in spec.params}


def grid_points(spec: StageSpec) -> list[dict[str, Any]]:
    """The stage's grid in plan order (first key slowest)."""
    names = list(spec.grid)
    return [
        dict(zip(names, values, strict=True)) for values in itertools.product(*spec.grid.values())
    ]


def _search_space(points: list[dict[str, Any]]) -> dict[str, list[Any]]:
    space: dict[str, list[Any]] = {}
    for p in points:
        for k, v in p.items():
            if v not in space.setdefault(k, []):
                space[k].append(v)
    return space


def _create_trial(
    storage: optuna.storages.BaseStorage,
    study: optuna.Study,
    point: dict[str, Any],
    dists: dict[str, BaseDistribution],
) -> tuple[optuna.Trial, int]:
    """Create a RUNNING trial with exactly ``point``'s params (the point this worker claimed)
    in ``study`` on ``storage`` (the session's); return it and its storage id.

    tuner picks the points (grid order, claims, TPE rounds): no Optuna sampler is asked, so
    the trial is created from a template, as ``study.add_trial`` does for finished trials.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    template = FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=dt.datetime.now(),
        datetime_complete=None,
        params=point,
        distributions={k: dists[k] for k in point},
        user_attrs={},
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )
    trial_id = storage.create_new_trial(study_id, template_trial=template)
    return optuna.Trial(study, trial_id), trial_id


def _failure_kind(err: BaseException) -> str:
    """The user attr a failed trial gets: ``interrupted`` (Ctrl-C, SIGTERM), ``environment``
    (a full disk, a path or storage that cannot be written), else ``error`` (its training
    raised: counts towards MAX_FAILURES)."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    if isinstance(err, (TunerError, OSError)) or environment_failure(err, None) is not None:
        return "environment"
    return "error"


def _data_summary(prepared: Prepared) -> dict[str, Any]:
    m = prepared.manifest
    keys = (
        "key",
        "source",
        "source_sha256",
        "split",
        "rows",
        "seed",
        "n_rows_total",
        "n_train",
        "n_val",
        "n_test",
        "target",
        "n_features",
    )
    summary = {k: m.get(k) for k in keys}
    summary["n_classes"] = prepared.n_classes
    if m.get("spec"):
        summary["spec"] = m["spec"]
    return summary


def _legacy_spec_matches(stored: Any, spec: StageSpec) -> bool:
    """Whether a study from before plan identity by content ran ``spec``: the stage settings
    it recorded (user attr ``stage``) agree with ``spec``'s on everything but the description,
    and a setting it did not record (a newer one) has its default in ``spec``. The defaults the
    stage started from were not recorded then: they are not compared. A study without the
    attr (being created right now) matches."""
    if not isinstance(stored, Mapping):
        return True
    current = json.loads(json.dumps(spec.to_dict()))
    default = json.loads(json.dumps(stage_spec(name=spec.name, kind=spec.kind).to_dict()))
    return all(
        stored.get(key, default[key]) == value
        for key, value in current.items()
        if key != "description"
    )


def plan_states(session: Session) -> list[StageState]:
    return [session.stage_state(s.name) for s in session.plan.stages]


def check_stage_name(plan: Plan, name: str) -> StageSpec:
    try:
        return plan.stage(name)
    except PlanError as err:
        raise StageError(str(err)) from None
