"""Never train the same thing twice: identical trials across stages, and the final job.

Every point of a stage trains with the seed, batches and data of the stage's incumbent, so a
later stage's incumbent point is often exactly an earlier stage's winning point, and the final
job often retrains the last stage's winner with the same seed for the same epochs.

A trial's *training fingerprint* (user attr ``fingerprint``, :func:`fingerprint`) hashes all that
its numbers depend on: every :class:`TrainConfig` field (after fixes), the seeds of its repeats,
the objective, what the stage's kind says its training depends on (its procedure, planned
epochs, folds, early-stopping patience), the device and precision, and the prepared data's key. Before training a claimed point a worker looks for a
COMPLETE trial with the same fingerprint in the latest matching studies of the plan's earlier
stages (:func:`sources`); if there is one, the point's trial is recorded from it (same value,
intermediate values and user attrs, plus ``reused_from = "<study>#<trial number>"``) without
training. Stages with a pruner neither record a fingerprint nor reuse: whether a point is
pruned depends on its peers.

The final job: each point trained on the train split (a kind that ``keeps_final``) whose
training equals the final's (same configuration and seed,
the same planned epochs on the same train split) keeps the weights the final job's rule would
keep -- the final's early stopping on validation loss replayed on the point's per-epoch
validation losses (:class:`FinalRule`) -- under ``WORKDIR/weights/<study>/trial-<n>.pt``; its
trial records them in user attr ``final_weights`` with a ``final_key`` (:func:`final_key`). The
final job with the same key scores those weights on test instead of training again.

:class:`StageReuse` is a stage run's side of all this: it prepares a claimed group's trials
(their configuration and fingerprint recorded, the final's rule for the points that keep
weights), saves the weights they kept, and finds a point's identical trial of an earlier stage.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from tuner.config import FinalSpec, StageSpec, content_hash, planned_epochs
from tuner.paths import inside
from tuner.train.config import TrainConfig
from tuner.train.history import EarlyStopping

if TYPE_CHECKING:
    from tuner.train.compute import Compute
    from tuner.train.tensors import TensorData

logger = logging.getLogger(__name__)

NOT_COPIED = ("worker", "reused_from", "seconds")  # per-trial bookkeeping, not results

Find = Callable[[dict[str, Any]], "tuple[str, FrozenTrial] | None"]
"""A point's identical COMPLETE trial in an earlier stage: ``point -> (study, trial)``."""


def reusable(spec: StageSpec) -> bool:
    """Whether a stage's trials take part in reuse (a pruned stage's do not)."""
    return spec.pruner == "none"


def _compute(compute: Compute) -> dict[str, str]:
    return {"device": compute.device, "precision": compute.precision}


def fingerprint(
    spec: StageSpec,
    cfg: TrainConfig,
    identity: Mapping[str, Any],
    *,
    seed: int,
    data: TensorData,
    compute: Compute,
) -> str | None:
    """The training fingerprint of a point of ``spec`` trained as ``cfg`` (``None``: the stage
    does not take part in reuse). ``identity``: what the stage's kind says the point's numbers
    depend on beyond these (its procedure, planned epochs, folds, early stopping; see
    :meth:`tuner.tune.kinds.base.StageKind.training_identity`)."""
    if not reusable(spec):
        return None
    from tuner.config import repeat_seeds

    return content_hash(
        {
            "config": cfg.to_dict(),
            "seeds": repeat_seeds(seed, spec.repeats),
            **identity,
            "objective": spec.objective,
            "compute": _compute(compute),
            "data": data.key,
            "n_train": len(data.train[1]),
        }
    )


@dataclass(frozen=True)
class FinalRule:
    """What the final job keeps of a run: its early stopping replayed on the validation
    losses (see :func:`tuner.train.loop.train_one`)."""

    epochs: int
    patience: int
    restore_best: bool
    budgeted: bool = False  # under a time budget (its runs may end early: only its own reuse)

    @classmethod
    def of(
        cls, final: FinalSpec, cfg: TrainConfig, n_train: int, *, budgeted: bool = False
    ) -> FinalRule:
        return cls(
            planned_epochs(
                final.epochs, final.min_steps, n_train, cfg.for_rows(n_train).batch_size
            ),
            final.patience,
            final.restore_best,
            budgeted,
        )


def final_key(
    cfg: TrainConfig, rule: FinalRule, *, seed: int, data: TensorData, compute: Compute
) -> str:
    """What a run on the train split must share with the final job for its kept weights to be
    the final model: configuration, seed, planned epochs, the final's rule, compute, data."""
    return content_hash(
        {
            "config": cfg.to_dict(),
            "seed": seed,
            "epochs": rule.epochs,
            "patience": rule.patience,
            "restore_best": rule.restore_best,
            **({"time_budget": True} if rule.budgeted else {}),
            "compute": _compute(compute),
            "data": data.key,
            "n_train": len(data.train[1]),
        }
    )


@dataclass(frozen=True)
class StageReuse:
    """A stage run's side of reuse: its points' fingerprints, their trials prepared for
    training, the weights they kept, and their identical trials in earlier stages.

    ``base``: the configuration the stage starts from (a point's configuration is ``base`` with
    the point's params); ``identity``: what the stage's kind says a configuration's training
    depends on (:meth:`~tuner.tune.kinds.base.StageKind.training_identity`); ``keeps_final``:
    whether a point that trains as the final job would keeps the final's weights (the kind's
    points train on the train split, and reuse is on).
    """

    spec: StageSpec
    base: TrainConfig
    identity: Callable[[TrainConfig], Mapping[str, Any]]
    final: FinalSpec
    data: TensorData
    seed: int
    compute: Compute
    workdir: Path
    keeps_final: bool
    budgeted: bool = False  # a time budget may end its runs early: reused only under one

    def fingerprint(self, cfg: TrainConfig) -> str | None:
        """The training fingerprint of the point trained as ``cfg`` (:func:`fingerprint`)."""
        identity = dict(self.identity(cfg))
        if self.budgeted:
            identity["time_budget"] = True
        return fingerprint(
            self.spec,
            cfg,
            identity,
            seed=self.seed,
            data=self.data,
            compute=self.compute,
        )

    def prepare(
        self, group: Sequence[Mapping[str, Any]], trials: Sequence[optuna.Trial]
    ) -> tuple[list[TrainConfig], dict[int, FinalRule]]:
        """The configurations of a claimed group's points (their trials record them, user
        attr ``config``, and their ``fingerprint``), and the final's rule for each point (by
        index) whose first run keeps the weights the final job would keep."""
        n_train = len(self.data.train[1])
        cfgs = [self.base.with_params(p) for p in group]
        keep: dict[int, FinalRule] = {}
        for i, (trial, cfg) in enumerate(zip(trials, cfgs, strict=True)):
            trial.set_user_attr("config", cfg.to_dict())
            fp = self.fingerprint(cfg)
            if fp is not None:
                trial.set_user_attr("fingerprint", fp)
            rule = FinalRule.of(self.final, cfg, n_train, budgeted=self.budgeted)
            batch = cfg.for_rows(n_train).batch_size
            epochs = planned_epochs(self.spec.epochs, self.spec.min_steps, n_train, batch)
            if self.keeps_final and epochs == rule.epochs:
                keep[i] = rule
        return cfgs, keep

    def save_kept(
        self,
        study: str,
        trials: Sequence[optuna.Trial],
        cfgs: Sequence[TrainConfig],
        keep: Mapping[int, FinalRule],
        results: Sequence[Any],
    ) -> None:
        """Save the weights each point of a trained group kept (its
        :class:`~tuner.tune.runs.PointResult`'s ``kept``, unless pruned) and add the
        ``final_weights`` and ``final_key`` attrs to its result."""
        for i, (trial, result) in enumerate(zip(trials, results, strict=True)):
            if result.kept is not None and not result.pruned:
                result.attrs["final_weights"] = save_weights(
                    self.workdir, study, trial.number, result.kept
                )
                result.attrs["final_key"] = final_key(
                    cfgs[i], keep[i], seed=self.seed, data=self.data, compute=self.compute
                )

    def finder(
        self, storage: optuna.storages.BaseStorage, earlier: Callable[[], list[str]]
    ) -> Find:
        """A :data:`Find` over the studies ``earlier()`` names (the earlier stages' latest
        matching studies, nearest first), read once, on first use."""
        table: dict[str, tuple[str, FrozenTrial]] | None = None

        def find(point: dict[str, Any]) -> tuple[str, FrozenTrial] | None:
            nonlocal table
            fp = self.fingerprint(self.base.with_params(point))
            if fp is None:
                return None
            if table is None:
                table = sources(storage, earlier(), self.data.key)
            return table.get(fp)

        return find


class Keeper:
    """Replays a :class:`FinalRule` on one run during a stage and keeps the weights the final
    job would keep: ``update(epoch, val_loss, export)`` after every epoch; :attr:`kept` is
    ``(state_dict, epochs_trained, stopped_early)`` once the rule has stopped or run out."""

    def __init__(self, rule: FinalRule) -> None:
        self.rule = rule
        self.stopping = EarlyStopping(rule.patience)
        self.best: dict | None = None
        self.kept: tuple[dict, int, bool] | None = None

    def update(self, epoch: int, val_loss: float, export) -> None:
        if self.kept is not None or epoch > self.rule.epochs:
            return
        if self.stopping.update(val_loss) and self.rule.restore_best:
            self.best = copy.deepcopy(export().state_dict())
        stop = self.stopping.should_stop and epoch < self.rule.epochs
        if stop or epoch == self.rule.epochs:
            self._keep(epoch, stop, export)

    def out_of_time(self, epoch: int, export) -> None:
        """The run ended at ``epoch``, before the rule did (a time budget's deadline): keep
        what the rule holds now, as the final job under the same budget would."""
        if self.kept is None:
            self._keep(epoch, True, export)

    def _keep(self, epoch: int, stopped: bool, export) -> None:
        """Keep the best epoch's weights (``restore_best``) or the current ones."""
        state = self.best if self.rule.restore_best and self.best is not None else None
        state = export().state_dict() if state is None else state
        self.kept = ({k: v.detach().cpu().clone() for k, v in state.items()}, epoch, stopped)


def weights_parts(study: str, number: int) -> tuple[str, ...]:
    return ("weights", study, f"trial-{number}.pt")


def save_weights(workdir: Path, study: str, number: int, kept: tuple[dict, int, bool]) -> dict:
    """Write kept weights (loadable with ``torch.load(weights_only=True)``) under the workdir;
    returns the trial's ``final_weights`` attr."""
    from tuner.paths import atomic_write, save_torch

    state, epochs, stopped = kept
    parts = weights_parts(study, number)
    path = inside(workdir, *parts)
    atomic_write(path, lambda tmp: save_torch({"state_dict": state}, tmp))
    return {"path": "/".join(parts), "epochs_trained": epochs, "stopped_early": stopped}


def load_weights(workdir: Path, attr: Mapping[str, Any]) -> dict | None:
    """The state dict a trial's ``final_weights`` attr names, or ``None`` when the file is gone."""
    path = inside(workdir, *str(attr["path"]).split("/"))
    if not path.is_file():
        return None
    return torch.load(path, weights_only=True, map_location="cpu")["state_dict"]


def origin(study: str, trial: FrozenTrial) -> str:
    """``"<study>#<number>"`` of the trial that trained (following earlier reuse)."""
    return trial.user_attrs.get("reused_from") or f"{study}#{trial.number}"


def _complete_trials(
    storage: optuna.storages.BaseStorage, studies: list[str], data_key: str
) -> Iterator[tuple[str, FrozenTrial]]:
    """``(study, trial)`` for the COMPLETE trials of ``studies`` that ran on ``data_key``, in
    the order the studies are given."""
    for name in studies:
        study = optuna.load_study(study_name=name, storage=storage)
        if study.user_attrs.get("data_key") == data_key:
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                yield name, t


def sources(
    storage: optuna.storages.BaseStorage, studies: list[str], data_key: str
) -> dict[str, tuple[str, FrozenTrial]]:
    """Fingerprint -> ``(study, trial)``: COMPLETE trials of ``studies`` (on ``data_key``)
    that recorded a fingerprint; the first study given wins a tie."""
    found: dict[str, tuple[str, FrozenTrial]] = {}
    for name, t in _complete_trials(storage, studies, data_key):
        fp = t.user_attrs.get("fingerprint")
        if fp and fp not in found:
            found[fp] = (name, t)
    return found


def copy_into(trial: optuna.Trial, source_study: str, source: FrozenTrial) -> float:
    """Record ``source``'s results on the RUNNING ``trial`` (attrs, intermediate values);
    returns the value to tell."""
    for name, value in source.user_attrs.items():
        if name not in NOT_COPIED:
            trial.set_user_attr(name, value)
    trial.set_user_attr("seconds", 0.0)
    trial.set_user_attr("reused_from", origin(source_study, source))
    for step, value in sorted(source.intermediate_values.items()):
        trial.report(value, step)
    assert source.value is not None
    return source.value


@dataclass(frozen=True)
class Kept:
    """A stage trial's kept weights that the final job may use as its model."""

    study: str
    trial: FrozenTrial
    state_dict: dict
    epochs_trained: int
    stopped_early: bool

    @property
    def origin(self) -> str:
        return origin(self.study, self.trial)

    def history(self):
        """The final job's history: the trial's first run up to the epoch the rule kept."""
        from tuner.train.history import EpochStats, History

        cols = self.trial.user_attrs["history"]
        n = self.epochs_trained
        epochs = [
            EpochStats(
                int(cols["epoch"][i]),
                float(cols["train_loss"][i]),
                float(cols["val_loss"][i]),
                float(cols["val_acc"][i]),
                float(cols["seconds"][i]),
            )
            for i in range(n)
        ]
        cut = bool(cols.get("out_of_time")) and n == len(cols["epoch"])  # a budget's deadline
        return History(epochs, self.stopped_early, out_of_time=cut)


def find_kept(
    storage: optuna.storages.BaseStorage, studies: list[str], data_key: str, key: str, workdir: Path
) -> Kept | None:
    """The first COMPLETE trial of ``studies`` whose kept weights have ``key`` (see
    :func:`final_key`) and whose weights file is still there."""
    for name, t in _complete_trials(storage, studies, data_key):
        attr = t.user_attrs.get("final_weights")
        if t.user_attrs.get("final_key") != key or not isinstance(attr, Mapping):
            continue
        if not isinstance(t.user_attrs.get("history"), Mapping):
            continue
        state = load_weights(workdir, attr)
        if state is None:
            logger.info("%s trial %d: its kept weights are gone", name, t.number)
            continue
        return Kept(name, t, state, int(attr["epochs_trained"]), bool(attr["stopped_early"]))
    return None
