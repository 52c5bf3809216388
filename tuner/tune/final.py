"""The final job: retrain the chosen configuration, score it once on test, save the model.

Writes ``models/<plan>/model.pt`` (weights, full config, input encoding, label names and, for a
model with a fitted embedding, its bin edges under ``fitted``: all that ``predict`` needs), ``models/<plan>/metrics.json`` and ``models/<plan>/history.json``. The final
study ``<plan>.final`` holds one trial whose value is the test accuracy; nothing is selected on it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from tuner import paths
from tuner.config import planned_epochs
from tuner.data.baselines import baselines, comparison
from tuner.data.manifest import Manifest
from tuner.data.target import class_word
from tuner.paths import atomic_write, save_torch
from tuner.train.config import TrainConfig
from tuner.train.history import EpochStats, History
from tuner.train.loop import train_one
from tuner.train.model import build_model, evaluate, fit_inputs, fitted_of
from tuner.tune import reuse
from tuner.tune.objectives import PointResult
from tuner.tune.stages import FINAL, Session, StageState

logger = logging.getLogger(__name__)


def input_encoding(manifest: Manifest) -> dict[str, Any]:
    """What ``predict`` needs to read and encode raw rows, as plain data (``model.pt`` loads
    with ``weights_only=True``): the fitted encoding (:meth:`Encoding.to_dict
    <tuner.data.encoding.Encoding.to_dict>`), how the rows are written (``file_format``) and
    the target column (a table's, to ignore it in the input)."""
    return {
        "encoding": manifest.encoding.to_dict(),
        "file_format": manifest.file_format,
        "target": manifest.target,
    }


def model_dir(session: Session) -> Path:
    return paths.model_dir(session.settings.workdir, session.plan.name)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


@torch.inference_mode()
def test_metrics(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, label_names: list[str]
) -> dict[str, Any]:
    """Accuracy, loss, per-class precision/recall/F1 and the confusion matrix on ``(x, y)``."""
    loss, acc = evaluate(model, x, y)
    pred = torch.cat([model(x[i : i + 16384]).argmax(1) for i in range(0, len(x), 16384)]).numpy()
    labels = list(range(len(label_names)))
    p, r, f1, support = precision_recall_fscore_support(
        y.numpy(), pred, labels=labels, zero_division=0
    )
    return {
        "test_accuracy": acc,
        "test_loss": loss,
        "n_test": int(len(y)),
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            name: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": confusion_matrix(y.numpy(), pred, labels=labels).tolist(),
        "labels": label_names,
    }


def stage_wall_times(session: Session) -> dict[str, float]:
    """Each stage's wall time from the storage (:attr:`StageState.wall_seconds`: the union of
    its trials' training spans plus what its kind did outside trials)."""
    return {
        spec.name: session.stage_state(spec.name).wall_seconds or 0.0
        for spec in session.plan.stages
    }


def run_final(session: Session, *, force: bool = False) -> StageState:
    """Run the final job of the session's plan (once across all workers).

    In: a session whose plan's stages are done (or whose ``--fix`` gives their winners);
    ``force``: redo the final job as a new study. Out: the final study's read model; the
    model, its metrics and history are under ``models/<plan>/`` (see the module docstring).
    """

    def evaluate(cfg: TrainConfig, fixed: dict[str, Any], *, trial, reporter) -> PointResult:
        return evaluate_final(session, cfg, fixed, trial=trial, reporter=reporter)

    return session.run_final(evaluate, force=force)


def evaluate_final(
    session: Session, cfg: TrainConfig, fixed: dict[str, Any], *, trial, reporter
) -> PointResult:
    """The final job's one trial: train the chosen configuration ``cfg`` (or take the weights
    a stage trial kept that trained exactly it, :mod:`tuner.tune.reuse`), score it once on
    test and write ``models/<plan>/``. ``fixed``: the params the stages fixed; ``reporter``
    receives each epoch's validation accuracy. Returns the trial's value (test accuracy) and
    attrs."""
    plan = session.plan
    prepared = session.prepared()
    data = session.data()
    n_train = len(data.train[1])
    epochs = planned_epochs(
        plan.final.epochs, plan.final.min_steps, n_train, cfg.for_rows(n_train).batch_size
    )
    kept = _kept_weights(session, cfg)
    t0 = time.perf_counter()

    def on_epoch(e: EpochStats) -> None:
        reporter.report(0, e.val_acc, e.epoch)
        reporter.progress(e.epoch)
        logger.log(
            logging.DEBUG if kept is not None else logging.INFO,  # a kept run's, replayed
            "final epoch %d/%d%s: train loss %.4f, val loss %.4f, val acc %.4f",
            e.epoch,
            epochs,
            " (replayed from the kept trial)" if kept is not None else "",
            e.train_loss,
            e.val_loss,
            e.val_acc,
        )

    model, history = _final_model(session, cfg, kept, epochs, on_epoch)
    reused_from = kept.origin if kept is not None else None
    train_seconds = time.perf_counter() - t0
    label_names = list(prepared.label_names)
    metrics = test_metrics(model, *data.test, label_names)
    metrics.update(
        {
            "plan": plan.name,
            "plan_content": plan.content,
            "class_name": class_word(prepared.manifest),
            "config": cfg.to_dict(),
            "fixed_params": fixed,
            "data": session.prepared().manifest["key"],
            "epochs_trained": len(history.epochs),
            **shipped(history, plan.final.restore_best),
            "stopped_early": history.stopped_early,
            **({"out_of_time": True} if history.out_of_time else {}),
            "wall_times": {
                "stages_s": stage_wall_times(session),
                "final_train_s": train_seconds,
            },
            "study": trial.study.study_name,
            "reused_from": reused_from,  # the stage trial whose weights are the model
            "baselines": baselines(prepared, session.settings.data_dir, session.settings.seed),
        }
    )
    out = _write_model(session, cfg, model, label_names, history, metrics)
    for row in comparison(metrics["test_accuracy"], metrics["baselines"]):
        logger.info(
            "final: test accuracy %+.2f points against %s (%.4f) on the same split",
            row["points"],
            row["model"],
            row["accuracy"],
        )
    summary = {k: metrics[k] for k in ("test_accuracy", "test_loss", "n_test", "macro_f1")}
    return PointResult(
        metrics["test_accuracy"],
        {
            "metrics": summary,
            "history": history.to_dict(),
            "seconds": train_seconds,
            "model_dir": str(out),
            **({"reused_from": reused_from} if reused_from else {}),
        },
    )


def shipped(history: History, restore_best: bool) -> dict[str, Any]:
    """Which epoch's weights the model holds (the lowest validation loss with
    ``restore_best``, else the last one trained) and their validation accuracy and loss."""
    epoch = history.best_loss_epoch if restore_best else history.epochs[-1].epoch
    stats = next(e for e in history.epochs if e.epoch == epoch)
    return {"shipped_epoch": epoch, "val_accuracy": stats.val_acc, "val_loss": stats.val_loss}


def _kept_weights(session: Session, cfg: TrainConfig) -> reuse.Kept | None:
    """The weights a stage trial kept that trained exactly what the final job would (the
    same configuration, seed, epochs and early stopping), when reuse is on and they are there."""
    if not session.reusing():
        return None
    data = session.data()
    rule = reuse.FinalRule.of(
        session.plan.final, cfg, len(data.train[1]), budgeted=session.deadline is not None
    )
    key = reuse.final_key(
        cfg, rule, seed=session.settings.seed, data=data, compute=session.settings.compute
    )
    studies = session.studies.earlier_studies(len(session.plan.stages))
    return reuse.find_kept(session.storage, studies, data.key, key, session.settings.workdir)


def _final_model(
    session: Session,
    cfg: TrainConfig,
    kept: reuse.Kept | None,
    epochs: int,
    on_epoch: Callable[[EpochStats], None],
) -> tuple[torch.nn.Module, History]:
    """The final model and its history: ``kept``'s weights and the epochs they were kept
    after, else a model trained now on the train split, early-stopped on validation loss."""
    data, final = session.data(), session.plan.final
    if kept is not None:
        fitted = fit_inputs(cfg, data.train[0])  # what the stage's run fitted, the same rows
        model = build_model(cfg, int(data.train[0].shape[1]), data.n_classes, fitted)
        model.load_state_dict(kept.state_dict)
        model.eval()
        history = kept.history()
        logger.info(
            "final: the model is trial %s's run (the same configuration, seed, epochs and "
            "early stopping): scoring its weights instead of training again",
            kept.origin,
        )
        for e in history.epochs:
            on_epoch(e)
        return model, history
    return train_one(
        cfg,
        data.train,
        data.val,
        epochs=epochs,
        seed=session.settings.seed,
        n_classes=data.n_classes,
        patience=final.patience,
        restore_best=final.restore_best,
        on_epoch=on_epoch,
        compute=session.settings.compute,
        deadline=session.deadline,
    )


def _write_model(
    session: Session,
    cfg: TrainConfig,
    model: torch.nn.Module,
    label_names: list[str],
    history: History,
    metrics: dict[str, Any],
) -> Path:
    """Write ``model.pt`` (all that ``predict`` needs), ``history.json`` and ``metrics.json``
    under ``models/<plan>/``; returns that directory."""
    plan, prepared, data = session.plan, session.prepared(), session.data()
    out = model_dir(session)
    paths.record_plan(out, plan, "the final model")  # warns before an edited plan overwrites
    bundle = {
        "state_dict": model.state_dict(),
        "config": cfg.to_dict(),
        "n_features": int(data.train[0].shape[1]),
        "n_classes": data.n_classes,
        "label_names": label_names,
        "plan": plan.name,
        "data_key": prepared.manifest["key"],
        "data": session.settings.data.to_dict(),
        **input_encoding(prepared.manifest),
    }
    fitted = fitted_of(model)
    if fitted is not None:  # an embedding's bin edges: plain lists
        bundle["fitted"] = fitted
    atomic_write(out / "model.pt", lambda tmp: save_torch(bundle, tmp))
    write_json(out / "history.json", history.to_dict())
    write_json(out / "metrics.json", metrics)
    logger.info(
        "final: test accuracy %.4f, test loss %.4f on %d rows; wrote %s",
        metrics["test_accuracy"],
        metrics["test_loss"],
        metrics["n_test"],
        out,
    )
    return out


def final_summary(session: Session) -> dict[str, Any] | None:
    """The final job's metrics for ``status``: from ``metrics.json`` when the final study is
    complete, else ``None``."""
    state = session.stage_state(FINAL)
    if state.state != "done":
        return None
    path = model_dir(session) / "metrics.json"
    complete = [t for t in state.trials if t.state == optuna.trial.TrialState.COMPLETE]
    summary: dict[str, Any] = dict(complete[-1].user_attrs.get("metrics", {})) if complete else {}
    summary["study"] = state.study
    if path.is_file():
        metrics = json.loads(path.read_text())
        if metrics.get("study", state.study) != state.study:  # an edited plan's final wrote it
            logger.warning(
                "%s holds the model of study %s, not of this plan's final study %s (a plan "
                "edited under the same name wrote it); `final --force` writes this plan's again",
                path.parent,
                metrics.get("study"),
                state.study,
            )
            return summary
        summary.update(
            {k: metrics[k] for k in ("test_accuracy", "test_loss", "n_test", "macro_f1")}
        )
        for key in ("shipped_epoch", "val_accuracy", "epochs_trained", "config", "fixed_params"):
            if key in metrics:
                summary[key] = metrics[key]
        if "baselines" in metrics:  # a final written before baselines has none
            summary["baselines"] = metrics["baselines"]
        summary["model"] = str(model_dir(session) / "model.pt")
        summary["metrics"] = str(path)
        summary["reused_from"] = metrics.get("reused_from")  # the stage trial it came from
    return summary
