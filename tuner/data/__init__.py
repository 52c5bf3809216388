"""The data layer: from a file (or the UCI download, or the generator) to prepared arrays.

The flow, one module per step:

* :mod:`tuner.data.spec`: what the data is (:class:`~tuner.data.spec.DataSpec`, from flags or a
  TOML description);
* :mod:`tuner.data.uci` and :mod:`tuner.data.synthetic`: the published study's YearPredictionMSD
  data (the UCI text format, its download, and an MSD-shaped generator);
* :mod:`tuner.data.table`: any table with a header (CSV, TSV, Parquet, compressed), read and
  validated;
* :mod:`tuner.data.target`: the class labels (text or integer classes, or a numeric column
  binned);
* :mod:`tuner.data.features`: the feature encoding fitted on the train rows (imputation,
  scaling, one-hot) and stored as plain lists;
* :mod:`tuner.data.prepare`: subsample, split, encode, and cache the arrays every stage trains
  on.
"""
