"""Reading and writing a plan's stage studies: versions, plan identity, attrs and trials.

One study per stage, named ``<plan>.<stage>`` (``.v2``, ``.v3``... when a stage is redone:
:func:`study_name`). A
:class:`StudyStore` finds the study of a stage that ran with this plan's content for it (user
attr ``plan_content``, :meth:`tuner.config.Plan.content_key`), on the same data with the same
fixed params; creates a new version otherwise (one worker at a time, behind the study's
claims, so that two plans or two data sets never share a study however their workers race);
reads a stage into its read model (:mod:`tuner.tune.state`); and creates the trial of a
claimed point with exactly that point's params.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tuner.config import FINAL_STAGE, Plan, StageSpec, content_hash
from tuner.data.prepare import Prepared
from tuner.errors import StorageError
from tuner.tune.coordination import Coordinator
from tuner.tune.decide import Decision, PointStats, decide
from tuner.tune.kinds import get_kind, stage_spec
from tuner.tune.state import StageState, incumbent, pending, read_stage
from tuner.tune.storage import engine_kwargs, resolve_url

logger = logging.getLogger(__name__)

FINAL = FINAL_STAGE
CREATE_CLAIM = "__create__"  # the one worker calling Optuna's create_study for a study
STUDY_CLAIM = "__study__"  # held by the identity (plan content, data, fixed params) of a study


class StudyStore:
    """The stage studies of one plan on one storage (see the module docstring)."""

    def __init__(
        self,
        plan: Plan,
        storage: optuna.storages.BaseStorage,
        workers: Coordinator,
        settings: Any,
        prepared: Callable[[], Prepared],
    ) -> None:
        self.plan, self.storage, self.workers = plan, storage, workers
        self.claims, self.owner = workers.claims, workers.owner
        self.settings = settings  # seed, poll_interval
        self.prepared = prepared  # the prepared data, read when a study is created

    def stage_studies(self, stage: str) -> list[tuple[int, Any]]:
        """Every study of the stage in the storage (any plan content), newest version first."""
        found = [
            (v, s)
            for s in self.storage.get_all_studies()
            if (v := study_version(s.study_name, self.plan.name, stage))
        ]
        return sorted(found, key=lambda vs: -vs[0])

    def same_content(self, stage: str, attrs: Mapping[str, Any]) -> bool:
        """Whether a study of the stage was run with this plan's content for it (see
        :meth:`Plan.stage_content`). A study from before plan identity (no ``plan_content``
        attr) matches when the stage settings it recorded agree with this plan's."""
        recorded = attrs.get("plan_content")
        if recorded is not None:
            return recorded == self.plan.content_key(stage)
        return stage == FINAL or legacy_spec_matches(attrs.get("stage"), self.plan.stage(stage))

    def matching_study(self, stage: str) -> tuple[int, str] | None:
        """``(version, name)`` of the newest study of the stage with this plan's content."""
        for version, summary in self.stage_studies(stage):
            if self.same_content(stage, summary.user_attrs):
                return version, summary.study_name
        return None

    def study_being_created(self, stage: str, identity: str) -> tuple[int, str] | None:
        """``(version, name)`` of the stage's newest study when another worker with this
        ``identity`` is creating it right now (it holds its STUDY_CLAIM, and the study has no
        plan content yet): join it rather than start the next version."""
        studies = self.stage_studies(stage)
        if not studies:
            return None
        version, summary = studies[0]
        if "plan_content" in summary.user_attrs:
            return None
        claim = self.claims.get(summary.study_name, STUDY_CLAIM)
        if claim is not None and claim.owner == identity:
            return version, summary.study_name
        return None

    def latest_study(self, stage: str) -> optuna.Study | None:
        """The newest study of the stage run with this plan's content: a study of an edited
        plan under the same name is never read as this plan's."""
        found = self.matching_study(stage)
        if found is None:
            return None
        return optuna.load_study(study_name=found[1], storage=self.storage)

    def stage_state(self, stage: str, study: optuna.Study | None = None) -> StageState:
        """The read model of a stage's latest study (or of ``study``): see
        :mod:`tuner.tune.state`."""
        if study is None:
            study = self.latest_study(stage)
        n_total = self.planned_points(stage)
        if study is None:
            return pending(stage, n_total)
        extra = self._extra_seconds(stage)
        return read_stage(
            stage, study, n_total, lambda fixed, stats: self.decide(stage, fixed, stats), extra
        )

    def _extra_seconds(self, stage: str) -> Callable[[Mapping[str, Any]], float]:
        if stage == FINAL:
            return lambda attrs: 0.0
        spec = self.plan.stage(stage)
        return get_kind(spec.kind).extra_seconds

    def decide(self, stage: str, fixed: dict[str, Any], stats: list[PointStats]) -> Decision | None:
        if stage == FINAL:
            return decide(stats)
        spec = self.plan.stage(stage)
        inc = incumbent(spec, self.plan.defaults.with_params(fixed))
        return decide(stats, incumbent=inc, keep_incumbent=spec.keep_incumbent_unless_significant)

    def planned_points(self, stage: str) -> int:
        if stage == FINAL:
            return 1
        return self.plan.stage(stage).n_points

    def earlier_studies(self, index: int) -> list[str]:
        """The latest matching studies of the plan's stages before ``index``, nearest first."""
        return [
            found[1]
            for s in reversed(self.plan.stages[:index])
            if (found := self.matching_study(s.name)) is not None
        ]

    def open_study(
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
        match = None if force else self.matching_study(stage)
        if match is None and not force:
            match = self.study_being_created(stage, identity)
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
        elif not force and (others := self.stage_studies(stage)):
            logger.info(
                "stage %s: plan content changed since study %s (the stage's settings, or the "
                "defaults it starts from, differ in plan %s): starting a new study",
                stage,
                others[0][1].study_name,
                self.plan.path or self.plan.name,
            )
        name = self.claim_study(stage, version, identity, join=not force)

        def init(study: optuna.Study) -> None:
            prepared = self.prepared()
            study.set_user_attr("plan_content", content)  # first: which plan this study is of
            study.set_user_attr("plan", self.plan.name)
            study.set_user_attr("stage", stage_attrs)
            study.set_user_attr("fixed_params", fixed)
            study.set_user_attr("data", data_summary(prepared))
            study.set_user_attr("seed", self.settings.seed)
            for key, value in (first or {}).items():
                study.set_user_attr(key, value)
            # last: a worker that died before this line left a study the next one completes
            study.set_user_attr("data_key", data_key)

        study = self.create_study(name, init)
        logger.info("stage %s: study %s, fixed params %s", stage, name, fixed or "none")
        return study

    def create_study(self, name: str, init: Callable[[optuna.Study], None]) -> optuna.Study:
        """Create (or load) study ``name`` and set its attrs (``init``, ending with
        ``data_key``): one worker at a time does it, behind the study's CREATE_CLAIM, so that
        racing workers never make the database log a unique violation (Optuna inserts a study,
        or an attr, after looking for it); the others wait and load the finished study."""

        def create() -> None:
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

        self.workers.once(
            name,
            CREATE_CLAIM,
            f"creating study {name}",
            lambda: self.initialised_study(name) is not None,
            create,
            release=True,
            poll=min(self.settings.poll_interval, 0.2),
        )
        study = self.initialised_study(name)
        assert study is not None  # once() returns when it is
        return study

    def initialised_study(self, name: str) -> optuna.Study | None:
        """Study ``name`` once it exists with its attrs set (``data_key``, the last), else None."""
        try:
            study_id = self.storage.get_study_id_from_name(name)
        except KeyError:
            return None
        if "data_key" not in self.storage.get_study_user_attrs(study_id):
            return None
        return optuna.load_study(study_name=name, storage=self.storage)

    def claim_study(self, stage: str, version: int, identity: str, *, join: bool = False) -> str:
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
                top = max((v for v, _ in self.stage_studies(stage)), default=0)
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


def create_trial(
    storage: optuna.storages.BaseStorage,
    study: optuna.Study,
    point: dict[str, Any],
    dists: dict[str, BaseDistribution],
    worker: str,
) -> tuple[optuna.Trial, int]:
    """Create a RUNNING trial with exactly ``point``'s params (the point this worker claimed)
    in ``study`` on ``storage`` (the session's); return it and its storage id.

    tuner picks the points (grid order, claims, TPE rounds): no Optuna sampler is asked, so
    the trial is created from a template, as ``study.add_trial`` does for finished trials. The
    ``worker`` user attr is part of the template: a worker stopped right after the insert
    still finds (and fails) the trial it created, and so does a worker that takes its claim
    over (:func:`tuner.tune.coordination.running_trials_of`).
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
        user_attrs={"worker": worker},
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )
    trial_id = storage.create_new_trial(study_id, template_trial=template)
    return optuna.Trial(study, trial_id), trial_id


def data_summary(prepared: Prepared) -> dict[str, Any]:
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
    summary: dict[str, Any] = {k: getattr(m, k) for k in keys}
    summary["n_classes"] = prepared.n_classes
    summary["spec"] = m.spec
    return summary


def legacy_spec_matches(stored: Any, spec: StageSpec) -> bool:
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


def study_name(plan: str, stage: str, version: int = 1) -> str:
    """``seed.weight_decay`` for the first study of a stage, ``seed.weight_decay.v2`` after --force."""
    return f"{plan}.{stage}" if version <= 1 else f"{plan}.{stage}.v{version}"


def latest_version(study_names: list[str], plan: str, stage: str) -> int:
    """The highest version of the stage's study among ``study_names``; 0 when there is none."""
    return max((study_version(n, plan, stage) for n in study_names), default=0)


def study_version(name: str, plan: str, stage: str) -> int:
    """The version of study ``name`` as a study of the plan's stage; 0 when it is not one."""
    pattern = re.compile(rf"^{re.escape(plan)}\.{re.escape(stage)}(?:\.v(\d+))?$")
    m = pattern.match(name)
    return int(m.group(1) or 1) if m else 0


def stored_plans(url: str) -> list[str]:
    """The plans whose stages have studies in the storage at ``url``, read with one query that
    creates nothing (no storage yet, or one tuner cannot read: none)."""
    url = resolve_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        return []
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        return []
    engine = sqlalchemy.create_engine(url, **engine_kwargs(url))
    try:
        with engine.connect() as conn:
            names = conn.execute(sqlalchemy.text("SELECT study_name FROM studies")).scalars()
            plans = {n.split(".")[0] for n in names if "." in n and not n.startswith("__")}
    except sqlalchemy.exc.SQLAlchemyError:
        return []
    finally:
        engine.dispose()
    return sorted(plans)


def check_exists(url: str) -> None:
    """A SQLite file that does not exist is a wrong path (or nothing has run there yet), not a
    storage to create: for the commands that only read one (status, report, dashboard)."""
    try:
        parsed = make_url(resolve_url(url))
    except Exception:
        return  # check_url says what is wrong with it
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            raise StorageError(
                f"no study storage at {parsed.database}: nothing has run there yet (run "
                "`python -m tuner run-all` first), or pass the --workdir or --storage of a run"
            )
