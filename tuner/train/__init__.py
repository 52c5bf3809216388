"""Training: the MLP and how one configuration, or a stage's many, are trained.

* :mod:`tuner.train.options`: every named choice of a configuration (activation, norm, init,
  optimizer, schedule, class weight), declared once with what each engine needs of it;
* :mod:`tuner.train.model`: the MLP built from a :class:`~tuner.train.config.TrainConfig`, its
  optimizer, learning-rate schedule and class weights (the options' reference forms), its
  evaluation;
* :mod:`tuner.train.history`: per-epoch statistics, histories, early stopping (both engines);
* :mod:`tuner.train.batches`: which rows a run trains on, batch after batch;
* :mod:`tuner.train.reference`: the reference training loop (autograd, in-memory tensors),
  short enough to hold in one's head: the tests' oracle for the fused engine;
* :mod:`tuner.train.compute`: where the fused engine trains, in which precision;
* :mod:`tuner.train.fused`: the engine every trial runs on: a stage's trials trained together
  as one stacked model (:func:`~tuner.train.fused.train_group`), or one
  (:func:`~tuner.train.fused.train_one`);
* :mod:`tuner.train.lr_range`: the LR range test (torch-lr-finder);
* :mod:`tuner.train.runtime`: process settings for training on the CPU.

Nothing here knows about Optuna or storages: it takes prepared tensors and configurations and
returns histories and models.
"""
