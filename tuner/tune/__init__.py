"""Tuning: stages as Optuna studies, chained through the storage, and the final job.

* :mod:`tuner.tune.storage`: storage URLs, connections, study names;
* :mod:`tuner.tune.claims`: exactly-once claims on grid points between workers;
* :mod:`tuner.tune.stages`: a plan's stages run as studies (chaining, resume, workers);
* :mod:`tuner.tune.objectives`: how the claimed points of a stage are trained and scored;
* :mod:`tuner.tune.decide`: noise-aware stage decisions;
* :mod:`tuner.tune.search`: TPE proposals for model-based stages;
* :mod:`tuner.tune.pruners`: Optuna's pruners against peers trained side by side;
* :mod:`tuner.tune.reuse`: identical trials reused across stages and in the final job;
* :mod:`tuner.tune.final`: the final retrain, scored once on test.

It reads prepared arrays (:mod:`tuner.data`) and trains through :mod:`tuner.train`.
"""
