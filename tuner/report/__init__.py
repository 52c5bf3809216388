"""Reporting: what people read and watch, computed from the storage and the saved models.

* :mod:`tuner.report.summary`: terminal tables (a stage after it runs, ``status``);
* :mod:`tuner.report.notes`: study notes and plot artifacts for optuna-dashboard;
* :mod:`tuner.report.plots`: matplotlib figures;
* :mod:`tuner.report.tables`: the one table writer (Markdown, text, HTML);
* :mod:`tuner.report.document`: ``report.md`` and ``report.html``;
* :mod:`tuner.report.dashboard`: optuna-dashboard on the storage and artifact store;
* :mod:`tuner.report.bootstrap`: paired-bootstrap intervals of two models' test differences.

Nothing here trains.
"""
