"""The data layer: from a file (or the UCI download, or the generator) to prepared arrays.

The flow, one module per step; every source goes through the same steps after reading:

* :mod:`tuner.data.spec`: what the data is (:class:`~tuner.data.spec.DataSpec`, from flags or a
  TOML description);
* reading: :mod:`tuner.data.table`, any table with a header (CSV, TSV, Parquet, compressed);
  :mod:`tuner.data.uci` (with :mod:`~tuner.data.uci_format` and :mod:`~tuner.data.uci_download`)
  and :mod:`tuner.data.synthetic`, the published study's YearPredictionMSD data: a table of 90
  feature columns whose target is the year;
* :mod:`tuner.data.target`: the class labels (text or integer classes, or a numeric column
  binned: the year by decade);
* :mod:`tuner.data.features`: which columns are features;
* :mod:`tuner.data.split`: the train, validation and test rows;
* :mod:`tuner.data.encoding`: the one feature encoding (imputation, scaling, one-hot), fitted on
  the train rows and stored as plain lists;
* :mod:`tuner.data.prepare`: the path above, for any source, giving
  :class:`~tuner.data.manifest.Prepared` arrays and their typed
  :class:`~tuner.data.manifest.Manifest`, cached by :mod:`tuner.data.cache`.
"""
