"""Training options, each declared once: one registry entry per choice of a configuration field.

A :class:`~tuner.train.config.TrainConfig` field that names a choice (``activation = "..."``)
is looked up in its family's registry, and the entry carries everything every engine needs: the
reference form (``nn.Module``, ``torch.optim``, ``torch.optim.lr_scheduler``) that
:mod:`tuner.train.model` builds for :mod:`tuner.train.reference` and :mod:`tuner.train.lr_range`,
and the stacked forward/backward/step that the fused engine (:mod:`tuner.train.layers`,
:mod:`tuner.train.stack`) runs. Plan validation
accepts exactly the registered names (:mod:`tuner.plan`), and the tests walk every registry,
so an entry that one engine cannot run fails a test, not a run.

* :mod:`~tuner.train.options.activations`: ``activation``;
* :mod:`~tuner.train.options.norms`: ``norm``;
* :mod:`~tuner.train.options.inits`: ``init``;
* :mod:`~tuner.train.options.optimizers`: ``optimizer`` (and an LR range test's optimizer);
* :mod:`~tuner.train.options.schedules`: ``schedule``;
* :mod:`~tuner.train.options.losses`: ``class_weight``;
* :mod:`~tuner.train.options.embeddings`: ``embedding`` (numeric feature embeddings);
* :mod:`~tuner.train.options.registry`: the base class and registry they share.

Each family module has ``REGISTRY`` (name -> entry, in the order choices are listed),
``DEFAULT`` (the name :class:`~tuner.train.config.TrainConfig` starts from) and ``get(name)``.
Nothing here imports :mod:`tuner.train.config` or :mod:`tuner.plan`: entries take plain
hyperparameters, so the configuration can import the registries.
"""

from __future__ import annotations

from collections.abc import Mapping

from tuner.train.options import (
    activations,
    embeddings,
    inits,
    losses,
    norms,
    optimizers,
    schedules,
)
from tuner.train.options.registry import Option

FIELDS: dict[str, Mapping[str, Option]] = {
    "activation": activations.REGISTRY,
    "norm": norms.REGISTRY,
    "init": inits.REGISTRY,
    "optimizer": optimizers.REGISTRY,
    "class_weight": losses.REGISTRY,
    "schedule": schedules.REGISTRY,
    "embedding": embeddings.REGISTRY,
}
"""Each option field of :class:`~tuner.train.config.TrainConfig` and the registry of its choices."""

__all__ = [
    "FIELDS",
    "Option",
    "activations",
    "embeddings",
    "inits",
    "losses",
    "norms",
    "optimizers",
    "schedules",
]
