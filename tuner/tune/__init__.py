"""Tuning: stages as Optuna studies, chained through the storage, and the final job.

* :mod:`tuner.tune.kinds`: the stage kinds, registered by name;
* :mod:`tuner.tune.runs`: what kinds train with (fused runs of a group, results, reporters);
* :mod:`tuner.tune.objectives`: a stage's claimed points trained and scored by its kind;
* :mod:`tuner.tune.stages`: running a stage (its points batch after batch, claimed, trained);
* :mod:`tuner.tune.points`: which points a run of a stage trains (grid, TPE rounds, the kind's);
* :mod:`tuner.tune.samplers`: the samplers a plan names (grid, TPE), registered once;
* :mod:`tuner.tune.groups`: a worker's claimed group (trials created, reused, trained, told);
* :mod:`tuner.tune.studies`: reading and writing stage studies (names, versions, plan identity);
* :mod:`tuner.tune.state`: the read model of a stage;
* :mod:`tuner.tune.coordination`: presence, claims, heartbeats, claim-or-wait, cleanup;
* :mod:`tuner.tune.claims`: the claims table;
* :mod:`tuner.tune.storage`: storage URLs, connections, failures and their one line;
* :mod:`tuner.tune.hooks`: observers of a running plan;
* :mod:`tuner.tune.decide`: noise-aware stage decisions;
* :mod:`tuner.tune.search`: TPE proposals for model-based stages;
* :mod:`tuner.tune.pruners`: Optuna's pruners against peers trained side by side;
* :mod:`tuner.tune.reuse`: identical trials reused across stages and in the final job;
* :mod:`tuner.tune.final`: the final retrain, scored once on test.

It reads prepared arrays (:mod:`tuner.data`) and trains through :mod:`tuner.train`.
"""
