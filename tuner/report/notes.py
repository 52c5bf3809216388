"""What the dashboard shows beside the numbers: study notes and plot artifacts.

Every stage study carries a Markdown note (optuna-dashboard's notes): what the stage tunes, its
grid, the params fixed from earlier stages, and once it is done the winner and its margin.
Each trial gets its learning-curve plot as an artifact, the ``lr`` study its range-test plot,
every finished stage study its summary plot (curves per grid point, or CV error bars), and the
final study its training history and test confusion matrix. Artifacts live in an Optuna
:class:`~optuna.artifacts.FileSystemArtifactStore` under ``WORKDIR/artifacts``.

:class:`DashboardNotes` subscribes the hooks (``on_*``) to a session's events (see
:mod:`tuner.tune.hooks`); they are best effort: a plot or
note that cannot be written is logged and never fails a trial or a stage. They are idempotent
across workers: notes are rebuilt from the storage (any worker that finishes a stage writes the
same text), and study artifacts have an ID derived from the study and file name, so writing
one twice replaces it instead of adding a copy.
"""

from __future__ import annotations

import functools
import json
import logging
import statistics
import tempfile
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from tuner import paths
from tuner.config import FINAL_STAGE, fmt_value
from tuner.report import plots, tables
from tuner.report.summary import shipped_lines, stopped_why
from tuner.tune.decide import decision_text
from tuner.tune.hooks import StageObserver, warn_failed
from tuner.tune.kinds import KINDS, spec_from_dict
from tuner.tune.kinds.base import Figure
from tuner.tune.samplers import sampler_named

if TYPE_CHECKING:
    from tuner.tune.stages import Session, StageState

logger = logging.getLogger(__name__)

ARTIFACTS_DIR = "artifacts"


def artifacts_dir(workdir: Path) -> Path:
    return Path(workdir) / ARTIFACTS_DIR


def artifact_store(workdir: Path) -> optuna.artifacts.FileSystemArtifactStore:
    """The artifact store of a workdir (``WORKDIR/artifacts``), created if needed."""
    path = artifacts_dir(workdir)
    path.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(path)


# -- reading a stage ---------------------------------------------------------------------------
def _kind_and_spec(stage: Mapping[str, Any]):
    """The kind of a recorded stage (user attr ``stage``) and the stage rebuilt from it; both
    ``None`` for a kind this version does not know."""
    spec = spec_from_dict(stage) if stage else None
    return (KINDS[spec.kind], spec) if spec is not None else (None, None)


def tuned_params(stage: Mapping[str, Any]) -> list[str]:
    """The fields a recorded stage chooses for later stages."""
    _, spec = _kind_and_spec(stage)
    if spec is not None:
        return list(spec.params)
    return sampler_named(stage.get("sampler")).recorded_params(stage)


def scored_by(stage: Mapping[str, Any]) -> str:
    """How a point of the stage is scored, in words (its kind says)."""
    kind, spec = _kind_and_spec(stage)
    return kind.scored_by(spec) if kind is not None else "?"


def fmt_params(params: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in (params or {}).items()) or "none"


def search_label(stage: Mapping[str, Any]) -> str:
    """What a stage's searched values are called in notes and the report: the sampler's word
    (grid, TPE space), or ``Points`` for a kind that finds its own (an LR range test)."""
    kind, _ = _kind_and_spec(stage)
    if kind is not None and not kind.needs_grid:
        return "Points"
    return sampler_named(stage.get("sampler")).label


def grid_text(stage: Mapping[str, Any], points: list | None) -> str:
    kind, spec = _kind_and_spec(stage)
    own = kind.points_text(spec, points) if kind is not None else None
    if own is not None:
        return own
    return sampler_named(stage.get("sampler")).describe(stage)


def kind_facts(stage: Mapping[str, Any], attrs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the stage's kind adds to its note and report section (an LR range test's pick)."""
    kind, _ = _kind_and_spec(stage)
    return kind.facts(attrs) if kind is not None else []


def kind_figures(stage: Mapping[str, Any], attrs: Mapping[str, Any]) -> list[Figure]:
    """The plots the stage's kind adds (an LR range test's curve)."""
    kind, _ = _kind_and_spec(stage)
    return kind.figures(attrs) if kind is not None else []


def summary_plot_name(stage: Mapping[str, Any]) -> tuple[str, str]:
    """The file suffix and caption of the stage's summary plot."""
    kind, _ = _kind_and_spec(stage)
    return kind.summary_plot() if kind is not None else ("curves", "curves")


def winner_text(state: StageState) -> str:
    """``hidden=256x256 (0.6123), +0.0042 over hidden=128x128 (0.6081)``: the point the stage
    carries forward (its decision's choice, which may be a kept incumbent) against the best
    other point, with a warning where the margin is smaller than the winner's std."""
    best, second = state.winner, state.runner_up
    if best is None:
        return "none yet"
    text = f"**{fmt_params(best['params'])}** ({best['value']:.4f})"
    if second is not None:
        margin = best["value"] - second["value"]
        text += f", {margin:+.4f} over {fmt_params(second['params'])} ({second['value']:.4f})"
        if best.get("std") and abs(margin) < best["std"]:
            text += f"; the margin is within one std ({best['std']:.4f})"
    return text


def points_table(state: StageState, params: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of a stage's point table (plan order, the winner marked)."""
    rows, best = state.rows, state.winner
    has_std = any(r.get("fold_values") or (r.get("n") or 1) > 1 for r in rows)
    header = [*params, state.metric] + (["std", "95% CI", "n", "folds"] if has_std else [])
    header += ["seconds", "trial"]
    reused = any(r.get("reused_from") for r in rows)
    header += ["reused from", ""] if reused else [""]
    cells = []
    for r in rows:
        row = [fmt_value(r["params"].get(p)) for p in params] + [f"{r['value']:.4f}"]
        if has_std:
            ci = r.get("ci95")
            row.append(f"{r['std']:.4f}" if r.get("std") is not None else "")
            row.append(f"{ci[0]:.4f}..{ci[1]:.4f}" if ci and r.get("n", 1) > 1 else "")
            row.append(str(r.get("n") or ""))
            row.append(", ".join(f"{v:.4f}" for v in r.get("fold_values") or []))
        row += [f"{r['seconds']:.1f}" if r.get("seconds") is not None else "", str(r["trial"])]
        if reused:
            row.append(r.get("reused_from") or "")
        row.append("winner" if r is best else "")
        cells.append(row)
    return header, cells


def reused_text(state: StageState) -> str:
    """Which points of a stage were recorded from an identical trial of an earlier stage."""
    items = [
        f"{fmt_params(json.loads(key))} from `{source}`" for key, source in state.reused.items()
    ]
    return "; ".join(items) + " (the same training: not trained again)"


def model_from_text(source: str) -> str:
    return (
        f"trial `{source}` (it trained exactly the final configuration with the final's rule: "
        "its kept weights, not trained again)"
    )


# -- notes -------------------------------------------------------------------------------------
def stage_note(state: StageState) -> str:
    """The Markdown note of a stage study, from what the storage holds."""
    attrs = state.user_attrs
    stage = attrs.get("stage") or {}
    params = tuned_params(stage) or sorted({k for r in state.rows for k in r["params"]})
    lines = [
        f"## Stage `{state.name}` ({stage.get('kind', '?')}): {state.state}, "
        f"{state.n_complete}/{state.n_total} points complete",
        "",
    ]
    if stage.get("description"):
        lines += [stage["description"], ""]
    lines += [
        f"- **Tunes:** {', '.join(params)}",
        f"- **{search_label(stage)}:** {grid_text(stage, attrs.get('points'))}",
        f"- **Scored by:** {scored_by(stage)}",
        f"- **Fixed from earlier stages:** {fmt_params(attrs.get('fixed_params'))}",
    ]
    for label, text in kind_facts(stage, attrs):
        lines.append(f"- **{label}:** {text}")
    data = attrs.get("data") or {}
    if data:
        lines.append(
            f"- **Data:** {data.get('source')} ({data.get('split')} split, key "
            f"`{data.get('key')}`): train {data.get('n_train')}, val {data.get('n_val')}"
        )
    lines.append(f"- **Winner:** {winner_text(state)}")
    lines.append(f"- **Decision:** {decision_text(state.decision)}")
    if state.best_params is not None:
        lines.append(f"- **Carried forward:** {fmt_params(state.best_params)}")
    if state.n_pruned:
        lines.append(f"- **Pruned:** {state.n_pruned} point(s) stopped early")
    if state.reused:
        lines.append(f"- **Reused:** {reused_text(state)}")
    if state.rows:
        header, cells = points_table(state, params)
        lines += ["", tables.markdown(header, cells)]
    return "\n".join(lines) + "\n"


def final_note(state: StageState, metrics: Mapping[str, Any] | None) -> str:
    """The Markdown note of the final study: configuration and test scores."""
    attrs = state.user_attrs
    lines = [f"## Final model: {state.state}", ""]
    lines.append(f"- **Fixed params (stage winners):** {fmt_params(attrs.get('fixed_params'))}")
    complete = [t for t in state.trials if t.state == TrialState.COMPLETE]
    if complete:
        t = complete[-1]
        cfg = t.user_attrs.get("config")
        if cfg:
            lines.append(f"- **Configuration:** {fmt_params(cfg)}")
    if metrics:
        lines += [
            f"- **Test accuracy:** {metrics['test_accuracy']:.4f}, **test loss:** "
            f"{metrics['test_loss']:.4f}, macro F1 {metrics['macro_f1']:.4f} on "
            f"{metrics['n_test']} test rows",
            f"- **Epochs trained:** {metrics.get('epochs_trained')}" + stopped_why(metrics),
        ]
        lines += [f"- {line}" for line in shipped_lines(metrics)]
        if metrics.get("reused_from"):
            lines.append(f"- **Model from:** {model_from_text(metrics['reused_from'])}")
        lines += ["", per_class_caption(metrics), ""]
        lines.append(
            tables.markdown(
                per_class_header(metrics), per_class_rows(metrics.get("per_class") or {})
            )
        )
    return "\n".join(lines) + "\n"


def save_note(study: optuna.Study, body: str) -> bool:
    """Write ``body`` as the study's note unless it already is (no needless version bumps)."""
    from optuna_dashboard import get_note
    from optuna_dashboard import save_note as _save

    if get_note(study) == body:
        return False
    _save(study, body)
    return True


# -- artifacts ---------------------------------------------------------------------------------
def put_study_artifact(store, storage, study: optuna.Study, path: Path) -> str:
    """Attach ``path`` to ``study`` under an ID derived from the study and file name: writing
    it again (another worker, a rerun) replaces the artifact instead of adding a copy.

    Optuna's public ``upload_artifact`` draws a random ID, so every worker that finishes a
    stage would add another copy of its summary plot; the artifact's metadata is therefore
    written here as ``upload_artifact`` writes it (a study system attr under Optuna's
    ``ARTIFACTS_ATTR_PREFIX``). That prefix and ``ArtifactMeta`` are the one private Optuna
    import of the package; ``tests/test_dashboard.py`` fails if an Optuna upgrade moves them.
    """
    from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX, ArtifactMeta

    path = Path(path)
    artifact_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"tuner:{study.study_name}/{path.name}"))
    with open(path, "rb") as f:
        store.write(artifact_id, f)  # the file first: the dashboard never lists a missing one
    meta = ArtifactMeta(artifact_id, path.name, "image/png", None)
    study_id = storage.get_study_id_from_name(study.study_name)
    storage.set_study_system_attr(
        study_id, ARTIFACTS_ATTR_PREFIX + artifact_id, json.dumps(asdict(meta))
    )
    return artifact_id


def _best_effort(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            warn_failed(logger, fn.__name__, err)
            return None

    return wrapper


def _store(session: Session) -> optuna.artifacts.FileSystemArtifactStore:
    return artifact_store(session.settings.workdir)


def stage_plot(state: StageState, path: Path) -> Path | None:
    """The summary plot of a stage: CV error bars, or validation curves per grid point."""
    rows = state.rows
    stage = state.user_attrs.get("stage") or {}
    param = ", ".join(tuned_params(stage)) or None
    if not rows:
        return None
    if all(r.get("fold_values") for r in rows):  # mean and std over folds
        return plots.cv_errorbars(state.name, rows, path, param=param)
    curves = [r for r in rows if isinstance(r.get("history"), dict)]
    return plots.stage_curves(state.name, curves, path, param=param) if curves else None


def objective_name(stage: Mapping[str, Any]) -> str:
    """What a stage study's value is, for the dashboard's axis labels."""
    if stage.get("final"):
        return "test accuracy"
    kind, spec = _kind_and_spec(stage)
    return kind.objective_name(spec) if kind is not None else "validation accuracy"


def _name_objective(study: optuna.Study, stage: Mapping[str, Any]) -> None:
    name = objective_name(stage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if study.metric_names != [name]:
            study.set_metric_names([name])


NOTE_CLAIM = "__note__"  # the one worker writing a study's note at a time


@_best_effort
def on_stage_started(session: Session, study: optuna.Study, stage: str) -> None:
    """Write the stage's note before training: what it tunes, grid, fixed params. Workers
    that start the stage together write the same note: one of them does (the others would
    collide with its first insert of the note's attrs)."""
    with session.workers.exclusive(study.study_name, NOTE_CLAIM) as mine:
        if mine:
            state = session.stage_state(stage)
            _name_objective(study, state.user_attrs.get("stage") or {})
            save_note(study, stage_note(state))


@_best_effort
def on_stage_attrs(session: Session, study: optuna.Study, stage: str) -> None:
    """The plots the stage's kind draws from what it recorded (an LR range test's curve)."""
    attrs = study.user_attrs
    with tempfile.TemporaryDirectory() as tmp:
        for figure in kind_figures(attrs.get("stage") or {}, attrs):
            path = plots.draw_figure(figure, paths.inside(Path(tmp), figure.file))
            if path is not None:
                put_study_artifact(_store(session), session.storage, study, path)


@_best_effort
def on_trial_done(
    session: Session,
    study: optuna.Study,
    trial: optuna.Trial,
    point: Mapping[str, Any],
    attrs: Mapping[str, Any],
) -> None:
    """Attach the trial's learning-curve plot (before it is told: finished trials are frozen)."""
    history = attrs.get("history")
    if not history:
        return
    label = fmt_params(point) if point else "final"
    value = ""
    if "fold_values" in attrs:
        folds = attrs["fold_values"]
        value = f": {statistics.fmean(folds):.4f} +- {attrs.get('std', 0.0):.4f} over folds"
    title = f"{study.study_name} trial {trial.number} ({label}){value}"
    with tempfile.TemporaryDirectory() as tmp:
        path = plots.trial_curve(title, history, Path(tmp) / f"trial_{trial.number}_curve.png")
        optuna.artifacts.upload_artifact(
            artifact_store=_store(session), file_path=str(path), study_or_trial=trial
        )


@_best_effort
def on_stage_done(session: Session, study: optuna.Study, stage: str) -> None:
    """The finished stage: its note with the winner, and its summary plot (written by one of
    the workers that finish together; a later one rewrites the same)."""
    with session.workers.exclusive(study.study_name, NOTE_CLAIM) as mine:
        if not mine:
            return
        state = session.stage_state(stage)
        save_note(study, stage_note(state))
        with tempfile.TemporaryDirectory() as tmp:
            path = stage_plot(state, paths.inside(Path(tmp), f"{stage}_summary.png"))
            if path is not None:
                put_study_artifact(_store(session), session.storage, study, path)


@_best_effort
def on_final_done(session: Session, study: optuna.Study, metrics_path: Path) -> None:
    """The final study's note (test scores) and plots (history, confusion matrix).

    Written by the worker that ran the final job (the one holding ``metrics.json``); another
    worker that waited for it leaves them alone rather than write a note without the scores.
    """
    if not metrics_path.is_file():
        return
    metrics = json.loads(metrics_path.read_text())
    with session.workers.exclusive(study.study_name, NOTE_CLAIM) as mine:
        if not mine:
            return
        _name_objective(study, {"final": True})
        save_note(study, final_note(session.stage_state(FINAL_STAGE), metrics))
        with tempfile.TemporaryDirectory() as tmp:
            history_path = metrics_path.parent / "history.json"
            if history_path.is_file():
                history = json.loads(history_path.read_text())
                path = plots.final_history(
                    history,
                    Path(tmp) / "final_history.png",
                    shipped=metrics.get("shipped_epoch"),
                )
                put_study_artifact(_store(session), session.storage, study, path)
            if metrics:
                path = plots.confusion_matrix(metrics, Path(tmp) / "confusion_matrix.png")
                put_study_artifact(_store(session), session.storage, study, path)


def per_class_caption(metrics: Mapping[str, Any]) -> str:
    """The line above the per-class test table: which weights it scores."""
    epoch = metrics.get("shipped_epoch")
    return f"Per class on the test rows{f', weights of epoch {epoch}' if epoch else ''}:"


def per_class_header(metrics: dict[str, Any]) -> list[str]:
    """Header of the per-class test table: the class word (``decade``, or the target column)."""
    return [metrics.get("class_name", "decade"), "precision", "recall", "F1", "support"]


def per_class_rows(per_class: dict[str, dict[str, float]]) -> list[list[str]]:
    """Rows of the per-class test table (metrics.json's ``per_class``), for notes and reports."""
    return [
        [name, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"])]
        for name, c in per_class.items()
    ]


class DashboardNotes(StageObserver):
    """The dashboard's notes and plot artifacts, written as a session's stages run."""

    def stage_started(self, session: Session, study: optuna.Study, stage: str) -> None:
        on_stage_started(session, study, stage)

    def stage_attrs(self, session: Session, study: optuna.Study, stage: str) -> None:
        on_stage_attrs(session, study, stage)

    def trial_done(
        self,
        session: Session,
        study: optuna.Study,
        trial: optuna.Trial,
        point: Mapping[str, Any],
        attrs: Mapping[str, Any],
    ) -> None:
        on_trial_done(session, study, trial, point, attrs)

    def stage_done(self, session: Session, study: optuna.Study, stage: str) -> None:
        on_stage_done(session, study, stage)

    def final_done(self, session: Session, study: optuna.Study, metrics_path: Path) -> None:
        on_final_done(session, study, metrics_path)
