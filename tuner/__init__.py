"""tuner: staged Optuna tuning of PyTorch models.

The data flows one way: raw file -> prepared arrays (:mod:`tuner.data.prepare`) -> stage objective
(:mod:`tuner.tune.objectives`) -> one Optuna study per stage (:mod:`tuner.tune.stages`) -> next stage ->
final model (:mod:`tuner.tune.final`). Plans live in ``studies/*.toml``.
"""

__version__ = "0.1.0"

__all__ = ["TunedClassifier", "load"]


def __getattr__(name: str):
    """``tuner.TunedClassifier`` and ``tuner.load`` (:mod:`tuner.estimator`), imported on first
    use: ``import tuner`` stays light for the command line."""
    if name in __all__:
        from tuner import estimator

        return getattr(estimator, name)
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")
