"""tuner from Python: a scikit-learn classifier over the same plans, studies and ``model.pt``.

:class:`TunedClassifier` is the command line's ``run-all`` behind scikit-learn's estimator
contract. ``fit(X, y)`` writes the rows as a table (Parquet, column types kept) in its working
directory and runs the very code ``python -m tuner run-all --data TABLE --target COLUMN`` runs
(:func:`tuner.commands.run_plan`: the same plan, stages, studies, decisions, final job, report
and ``model.pt``); the fitted estimator keeps that ``model.pt``'s contents (weights, encoding,
class names: plain data) and predicts from them, in memory. So:

* ``fit`` then ``predict_proba`` on the test rows gives the accuracy ``run-all`` then
  ``predict`` gives on the same table with the same seed;
* :func:`load` reads any ``model.pt`` the command line or :meth:`TunedClassifier.save` wrote;
* pickling stores the bundle (weights and encoding), never a storage connection.

The split is tuner's recipe: 70% of the rows train, 15% choose and stop (validation) and 15% are
scored once (test, :attr:`TunedClassifier.test_metrics_`). Like the command line, tuner refuses
a table too small to split that way (fewer than 100 rows, or a class with too few rows).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d, validate_data

from tuner.errors import TunerError

logger = logging.getLogger(__name__)


_SMALL = (
    "fits fewer than 100 rows: tuner splits the rows 70/15/15 (train, validation, test) and "
    "refuses a table under 100 rows, as the command line does; a tuning run on 20 rows means "
    "nothing"
)
EXPECTED_FAILED_CHECKS: dict[str, str] = {
    name: _SMALL
    for name in (
        "check_fit_score_takes_y",
        "check_estimators_overwrite_params",
        "check_dont_overwrite_parameters",
        "check_estimators_fit_returns_self",
        "check_readonly_memmap_input",
        "check_n_features_in_after_fitting",
        "check_estimators_dtypes",
        "check_dtype_object",
        "check_pipeline_consistency",
        "check_estimators_pickle",
        "check_f_contiguous_array_estimator",
        "check_classifier_data_not_an_array",
        "check_classifiers_classes",
        "check_supervised_y_2d",
        "check_methods_sample_order_invariance",
        "check_methods_subset_invariance",
        "check_fit2d_1feature",
        "check_dict_unchanged",
        "check_fit_idempotent",
        "check_fit2d_predict1d",
    )
}
"""The scikit-learn estimator checks :class:`TunedClassifier` is expected to fail, with the
reason: pass it as ``check_estimator(..., expected_failed_checks=EXPECTED_FAILED_CHECKS)``.
Each of them fits 10-80 rows; the user-facing behaviour they test (fit returns self,
pickling, column order, sample-order invariance, idempotent fits, dtypes, classes of any
type) is tested on real tables in ``tests/test_estimator.py`` instead."""


class TunerValueError(TunerError, ValueError):
    """A :class:`~tuner.errors.TunerError` raised to a Python caller: the command line's one-line
    message, as a ``ValueError`` (what scikit-learn's callers and checks expect of bad input)."""


class TunedClassifier(ClassifierMixin, BaseEstimator):
    """A classifier tuned by one of tuner's plans, as ``run-all`` tunes it.

    Parameters
    ----------
    plan : str or None
        A plan name (``studies/<name>.toml``) or a TOML path; ``None``: the default plan for a
        table (``tabular``).
    storage : str or None
        An SQLAlchemy URL for the studies (PostgreSQL for many workers); ``None``: SQLite in
        ``workdir``. With a storage URL, a second ``fit`` on the same data resumes its studies.
    workdir : str, Path or None
        Where data, studies, ``model.pt`` and the report go (kept); ``None``: a temporary
        directory, removed after ``fit`` (the fitted estimator holds the model).
    time_budget : float or None
        Seconds for the whole plan (``run-all --time-budget``): stages shrink to fit it and the
        final job always runs.
    seed : int
        The split's and the training's seed (``--seed``).
    threads : int or None
        CPU threads for torch during ``fit`` (``--threads``); ``None``: torch's default.
    verbose : int
        0: silent; 1: tuner's progress log lines and stage tables (the command line's output).
    """

    def __init__(
        self,
        plan: str | None = None,
        storage: str | None = None,
        workdir: str | Path | None = None,
        time_budget: float | None = None,
        seed: int = 42,
        threads: int | None = None,
        verbose: int = 1,
    ) -> None:
        self.plan = plan
        self.storage = storage
        self.workdir = workdir
        self.time_budget = time_budget
        self.seed = seed
        self.threads = threads
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # missing values are imputed (and flagged)
        tags.input_tags.string = True  # text columns are categories
        tags.non_deterministic = False  # the seed fixes the split and the training
        return tags

    # -- fit --------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> TunedClassifier:
        """Tune the plan on ``(X, y)`` and train its final model (``run-all``). ``X``: a
        DataFrame (numeric and text columns, missing values) or a 2-D array; ``y``: the
        labels, of any type."""
        validate_data(self, X, skip_check_array=True, reset=True)
        frame = _frame(X)
        self.n_features_in_ = frame.shape[1]
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if len(y) != len(frame):
            raise ValueError(f"X has {len(frame)} rows but y has {len(y)} labels")
        classes = np.unique(y)
        if len(classes) < 2:
            raise TunerValueError(
                f"y holds one class ({classes[0]!s}): a classifier needs at least two classes"
            )
        names = _class_names(classes)
        target = _free_name("target", frame.columns)
        table = frame.assign(**{target: [names[i] for i in np.searchsorted(classes, y)]})
        keep = self.workdir is not None
        workdir = Path(self.workdir) if keep else Path(tempfile.mkdtemp(prefix="tuner-fit-"))
        try:
            status, report = self._run(table, target, workdir)
            plan = status["plan"]
            bundle = torch.load(workdir / "models" / plan / "model.pt", weights_only=True)
        finally:
            if not keep:
                shutil.rmtree(workdir, ignore_errors=True)
        bundle["input_columns"] = list(frame.columns)  # in the order fit saw them
        bundle["input_named"] = hasattr(self, "feature_names_in_")
        self._adopt(bundle, classes=classes, names=names)
        final = status["final"] or {}
        self.best_params_ = _winners(status)
        self.decisions_ = tuple(_decision(s) for s in status["stages"])
        self.study_names_ = tuple(s["study"] for s in status["stages"] if s.get("study"))
        self.test_metrics_ = {
            k: final[k] for k in ("test_accuracy", "test_loss", "macro_f1", "n_test") if k in final
        }
        self.baselines_ = final.get("baselines")
        self.report_path_ = Path(report.markdown) if keep and report is not None else None
        self.model_path_ = workdir / "models" / plan / "model.pt" if keep else None
        return self

    def _run(self, table: pd.DataFrame, target: str, workdir: Path) -> tuple[dict, Any]:
        """``run-all`` on ``table`` in ``workdir``: the command line's parser and run."""
        from tuner import commands
        from tuner.cli import build_parser

        started = time.monotonic()  # a time budget counts writing and preparing the rows
        data = workdir / "data" / "fit"
        data.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(pd.util.hash_pandas_object(table, index=False).values).hexdigest()
        path = data / f"rows-{digest[:16]}.parquet"
        if not path.is_file():
            table.to_parquet(path, index=False)
        argv = ["run-all", "--data", str(path), "--target", target, "--workdir", str(workdir)]
        argv += ["--seed", str(self.seed)]
        for flag, value in (
            ("--plan", self.plan),
            ("--storage", self.storage),
            ("--threads", self.threads),
        ):
            if value is not None:
                argv += [flag, str(value)]
        args = build_parser().parse_args(argv)
        args.stop = threading.Event()
        if self.time_budget is not None and not self.time_budget > 0:
            raise TunerValueError(
                f"time_budget must be a positive number of seconds, got {self.time_budget}"
            )
        try:
            with _output(self.verbose), _threads(self.threads):
                session = commands.open_session(args)
                return commands.run_plan(
                    session, force=False, time_budget=self.time_budget, started=started
                )
        except TunerError as err:  # the command line's message, naming the rows, not the file
            raise TunerValueError(str(err).replace(str(path), "the rows given to fit")) from None

    def _adopt(self, bundle: dict[str, Any], *, classes: Any = None, names: Any = None) -> None:
        """Hold ``bundle`` (a ``model.pt``'s contents) as the fitted model."""
        from tuner.predict import _upgrade

        bundle = _upgrade(dict(bundle))
        if classes is None:  # a model.pt: its class names, or the labels the estimator saved
            stored = bundle.get("classes")
            classes = np.asarray(stored if stored is not None else bundle["label_names"])
            names = list(bundle["label_names"]) if stored is None else _class_names(classes)
        if names is not None and stored_order(bundle["label_names"], names) is None:
            raise TunerValueError("the model's class names do not match its labels")
        self.classes_ = np.asarray(classes)
        bundle["classes"] = self.classes_.tolist()
        if "input_columns" not in bundle:  # the command line's model.pt: the columns it reads
            from tuner.data.encoding import Encoding

            bundle["input_columns"] = Encoding.from_dict(bundle["encoding"]).required_columns
            bundle["input_named"] = True
        self._order = stored_order(bundle["label_names"], names)
        self._bundle = bundle
        self._model = None
        self.n_features_in_ = len(bundle["input_columns"])

    # -- predict ------------------------------------------------------------------------------
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, one column per class in :attr:`classes_` order."""
        from tuner.data.encoding import TABLE_WORDING
        from tuner.predict import _probabilities

        check_is_fitted(self, "_bundle")
        columns = self._columns()
        by_name = isinstance(X, pd.DataFrame) and hasattr(self, "feature_names_in_")
        if not (by_name and set(columns) <= {str(c) for c in X.columns}):
            validate_data(self, X, skip_check_array=True, reset=False)
        # else: the fitted columns by name, in any order, others ignored (as `predict` reads)
        frame = _frame(X, columns=columns)
        model, encoding = self._loaded()
        try:
            x = encoding.transform(frame, "X", TABLE_WORDING)
        except TunerError as err:
            raise TunerValueError(str(err)) from None
        return _probabilities(model, x)[:, self._order]

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def _columns(self) -> list[str]:
        return list(self._bundle["input_columns"])

    def _loaded(self):
        if self._model is None:
            from tuner.data.encoding import Encoding
            from tuner.train.config import TrainConfig
            from tuner.train.model import build_model

            b = self._bundle
            cfg = TrainConfig().with_params(b["config"])
            model = build_model(cfg, int(b["n_features"]), int(b["n_classes"]), b.get("fitted"))
            model.load_state_dict(b["state_dict"])
            self._model = (model.eval(), Encoding.from_dict(b["encoding"]))
        return self._model

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the fitted model as a ``model.pt`` (loadable with ``weights_only=True``, by
        ``predict`` and by :func:`load`)."""
        from tuner.paths import atomic_write, save_torch

        check_is_fitted(self, "_bundle")
        path = Path(path)
        atomic_write(path, lambda tmp: save_torch(self._bundle, tmp))
        return path

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None  # rebuilt from the bundle
        return state


def load(path: str | Path) -> TunedClassifier:
    """A fitted :class:`TunedClassifier` from a ``model.pt`` (the command line's or
    :meth:`TunedClassifier.save`'s)."""
    from tuner.predict import load_bundle

    path = Path(path)
    try:
        load_bundle(path)  # the command line's checks of the file
    except TunerError as err:
        raise TunerValueError(str(err)) from None
    bundle = torch.load(path, map_location="cpu", weights_only=True)
    est = TunedClassifier(plan=bundle.get("plan"), seed=int(bundle.get("data", {}).get("seed", 42)))
    est._adopt(bundle)
    if est._bundle.get("input_named"):
        est.feature_names_in_ = np.asarray(est._bundle["input_columns"], dtype=object)
    return est


# -- helpers ----------------------------------------------------------------------------------
def stored_order(label_names: list[str], names: list[str] | None) -> list[int] | None:
    """For each class (in ``classes_`` order, named ``names``), its column among the model's
    ``label_names``; ``None`` when they are not the same set."""
    if names is None:
        return list(range(len(label_names)))
    where = {n: i for i, n in enumerate(label_names)}
    if set(where) != set(names):
        return None
    return [where[n] for n in names]


def _class_names(classes: np.ndarray) -> list[str]:
    """The class column's values as tuner reads them: each label's text, or ``class <i>``
    where two labels read the same (``1`` and ``"1"``)."""
    names = [str(c) for c in classes]
    if len(set(names)) == len(names):
        return names
    return [f"class {i}" for i in range(len(classes))]


def _free_name(name: str, taken: Any) -> str:
    taken = {str(c) for c in taken}
    while name in taken:
        name = "_" + name
    return name


def _positional(n: int) -> list[str]:
    return [f"x{i}" for i in range(n)]


def _frame(X: Any, columns: list[str] | None = None) -> pd.DataFrame:
    """``X`` as a DataFrame of raw columns (text stays text): a DataFrame's own columns, an
    array's ``x0, x1, ...``. ``columns``: the fitted columns, looked up by name in a DataFrame
    (any order, extra columns ignored), by position in an array."""
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError("sparse input is not supported: pass a dense array or a DataFrame")
    if isinstance(X, pd.DataFrame):
        check_array(X, dtype=None, ensure_all_finite=False, ensure_min_features=1)
        frame = X.copy()
        frame.columns = [str(c) for c in frame.columns]
        if columns is not None:
            if all(c in frame.columns for c in columns):
                frame = frame[columns]
            elif frame.shape[1] == len(columns):
                frame.columns = columns
        return frame.reset_index(drop=True)
    values = check_array(X, dtype=None, ensure_all_finite="allow-nan")
    if values.dtype.kind in "biuf":
        values = values.astype(np.float64)
    names = columns if columns is not None and len(columns) == values.shape[1] else None
    return pd.DataFrame(values, columns=names or _positional(values.shape[1]))


def _winners(status: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in status["stages"]:
        out.update(s.get("best_params") or {})
    return out


def _decision(stage: dict[str, Any]) -> dict[str, Any]:
    """One stage of the read model the report uses, as plain data."""
    keys = ("name", "state", "study", "best_params", "best_value", "decision")
    return {k: stage.get(k) for k in keys}


@contextlib.contextmanager
def _output(verbose: int) -> Iterator[None]:
    """tuner's log lines and tables while fitting: on stderr/stdout (``verbose >= 1``), or
    nowhere (0)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as the command line: tuner says it
    log = logging.getLogger("tuner")
    if verbose:
        handler = None
        if not logging.getLogger().handlers and not log.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
            log.addHandler(handler)
        level = log.level
        log.setLevel(logging.INFO)
        try:
            yield
        finally:
            log.setLevel(level)
            if handler is not None:
                log.removeHandler(handler)
        return
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    if threads < 1:
        raise TunerValueError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
