"""Training: the MLP and how one configuration, or a stage's many, are trained.

* :mod:`tuner.train.config`: one training run's configuration
  (:class:`~tuner.train.config.TrainConfig`) and the checks of its fields;
* :mod:`tuner.train.options`: every named choice of a configuration (activation, norm, init,
  optimizer, schedule, class weight), declared once with what each engine needs of it;
* :mod:`tuner.train.model`: the MLP built from a configuration, its optimizer, learning-rate
  schedule and class weights (the options' reference forms), its evaluation;
* :mod:`tuner.train.history`: per-epoch statistics, histories, early stopping (both engines);
* :mod:`tuner.train.batches`: which rows each run trains on, batch after batch (both engines);
* :mod:`tuner.train.reference`: the reference training loop (autograd, in-memory tensors),
  short enough to hold in one's head: the tests' oracle for the fused engine;
* the fused engine, which every trial runs on: :mod:`tuner.train.loop` (the epoch loop:
  :func:`~tuner.train.loop.train_group` trains a stage's trials together as one stack,
  :func:`~tuner.train.loop.train_one` one trial), :mod:`tuner.train.stack` (the stacked model,
  its steps and optimizer calls), :mod:`tuner.train.layers` (its layers' hand-written forward and
  backward passes), :mod:`tuner.train.loss` (the training loss and its gradient) and
  :mod:`tuner.train.compute` (device and precision);
* :mod:`tuner.train.tensors`: the prepared splits as tensors;
* :mod:`tuner.train.lr_range`: the LR range test (torch-lr-finder);
* :mod:`tuner.train.runtime`: process settings for training on the CPU.

Nothing here knows about Optuna, storages, stages or plans: it takes prepared tensors and
configurations and returns histories and models.
"""
