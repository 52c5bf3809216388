"""tuner: staged Optuna tuning of PyTorch models.

The data flows one way: raw file -> prepared arrays (:mod:`tuner.data.prepare`) -> stage objective
(:mod:`tuner.tune.objectives`) -> one Optuna study per stage (:mod:`tuner.tune.stages`) -> next stage ->
final model (:mod:`tuner.tune.final`). Plans live in ``studies/*.toml``.
"""

__version__ = "0.1.0"
