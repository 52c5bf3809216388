"""The commands behind the command line: what each does with its parsed arguments.

:mod:`tuner.cli` parses the arguments and dispatches to one function here per command
(``prepare``, ``run_stage``, ``run_all``, ``final``, ``status``, ``report``, ``dashboard``,
``predict``, ``synthesize``; each takes the parsed arguments and returns the exit status). What
they share lives here too: the data description and the session the arguments give
(:func:`data_spec`, :func:`open_session`), checks of the paths they write, the one line a failure
of the environment prints (:func:`failure_line`) and how SIGTERM stops a command
(:func:`sigterm_stops`). The work itself is done by the packages: data, tune, report.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from tuner.errors import StageError, Terminated, TunerError

logger = logging.getLogger("tuner")  # the command line's


def _parse_fixes(items: Sequence[str]) -> dict[str, Any]:
    fixes: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise StageError(f"--fix {item!r}: expected KEY=VALUE, e.g. --fix lr=0.001")
        fixes[key.strip()] = value.strip()
    return fixes


def _columns(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(c.strip() for c in text.split(",") if c.strip())


def data_spec(args: argparse.Namespace, table_defaults: dict[str, Any] | None = None):
    """The :class:`~tuner.data.spec.DataSpec` of ``--data`` and the table flags (for a table,
    ``table_defaults``, a plan's ``[data]``, fill what neither sets)."""
    from tuner.data.spec import build_spec, parse_bins, parse_split

    split, split_column = parse_split(args.split) if args.split else (None, None)
    overrides = {
        "rows": args.rows,
        "split": split,
        "split_column": split_column,
        "seed": args.seed,
        "target": args.target,
        "sep": args.sep,
        "test": args.test_data,
        "drop": _columns(args.drop),
        "categorical": _columns(args.categorical),
        "bins": parse_bins(args.bins, "--bins") if args.bins else None,
        "impute": args.impute,
        "scaler": args.scaler,
        "missing_indicators": args.missing_indicators,
        "max_columns": args.max_columns,
    }
    return build_spec(args.data or "uci", overrides, table_defaults)


SEED_PLAN = "seed"
"""The plan for YearPredictionMSD data (the UCI format, synthetic): the published study."""
TABLE_PLAN = "tabular"
"""The plan for a table (a target column) when ``--plan`` is not given."""


def default_plan(spec) -> str:
    """``--plan``'s default for the data of ``spec``: :data:`TABLE_PLAN` for a table,
    :data:`SEED_PLAN` for the UCI format."""
    return TABLE_PLAN if spec.is_table else SEED_PLAN


def open_session(args: argparse.Namespace, *, with_data: bool = True, stage: str | None = None):
    """The :class:`~tuner.tune.stages.Session` of the arguments: their plan opened on their
    storage, with their settings (``--fix``, seed, heartbeats, compute...) checked first. With
    ``with_data`` the data is read and validated first too, so that a bad data file stops the
    command before anything (a storage file) is written; ``stage``: a stage name to check."""
    from tuner.data.prepare import prepare
    from tuner.plan import load_plan
    from tuner.report.notes import DashboardNotes
    from tuner.train.compute import Compute
    from tuner.train.config import coerce_params
    from tuner.tune.stages import Session, Settings, check_stage_name
    from tuner.tune.storage import default_storage_url
    from tuner.tune.studies import check_exists, stored_plans

    writes = with_data or (args.command == "report" and args.out is None)
    workdir = _workdir(args, write=writes)
    spec = data_spec(args)
    storage_url = args.storage or default_storage_url(workdir)
    plan_name = args.plan
    if plan_name is None and args.data is None and not with_data:
        # status/report with neither --plan nor --data: the one plan the storage holds
        found = stored_plans(storage_url)
        plan_name = found[0] if len(found) == 1 else None
    plan = load_plan(plan_name or default_plan(spec), workdir)
    if not with_data:  # status, report: they read a storage, they do not create one
        check_exists(storage_url)
    if plan.data and spec.is_table:
        spec = data_spec(args, dict(plan.data))
    if stage is not None:
        check_stage_name(plan, stage)
    fixes = _parse_fixes(getattr(args, "fix", []))
    coerce_params(fixes, where="--fix")  # bad keys or values (inf, nan): before anything runs
    if args.rows is not None and args.rows < 1:
        raise TunerError(f"--rows must be positive, got {args.rows}")
    group_size = getattr(args, "group_size", 0)
    if group_size < 0:
        raise TunerError(f"--group-size must be >= 0, got {group_size}")
    try:
        compute = Compute.resolve(
            getattr(args, "device", "auto"), getattr(args, "precision", "fp32")
        )
    except ValueError as err:
        raise TunerError(str(err)) from None
    settings = Settings(
        workdir=workdir,
        storage_url=storage_url,
        data=spec,
        seed=args.seed,
        fixes=fixes,
        heartbeat_interval=getattr(args, "heartbeat_interval", 5),
        grace_period=getattr(args, "grace_period", 20),
        group_size=group_size,
        compute=compute,
        reuse=getattr(args, "reuse", True),
        stop=getattr(args, "stop", None),
    )
    if settings.grace_period <= settings.heartbeat_interval:
        raise TunerError("--grace-period must be longer than --heartbeat-interval")
    prepared = prepare(settings.data, settings.data_dir) if with_data else None
    return Session(plan, settings, prepared, observers=[DashboardNotes()])


def _writable_dir(path: Path, what: str, *, write: bool = True) -> None:
    """Refuse (one line starting with ``what``) a directory ``path`` that cannot be one, or
    cannot be written: the path itself or, where it does not exist yet, the nearest one above
    it (nothing is created here)."""
    existing = path.resolve()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise TunerError(f"{what}: {existing} is not a directory")
    if write and not os.access(existing, os.W_OK | os.X_OK):
        raise TunerError(f"{what}: cannot write in {existing} (permission denied or read-only)")


def _workdir(args: argparse.Namespace, *, write: bool) -> Path:
    """``--workdir``, absolute; a file, or a directory the command cannot write to (``write``),
    is refused before anything runs."""
    _writable_dir(args.workdir, f"--workdir {args.workdir}", write=write)
    return args.workdir.resolve()


def prepare(args: argparse.Namespace) -> int:
    """``prepare``: read, split and encode ``--data`` into the workdir's cache; prints the
    split sizes and where the arrays are."""
    from tuner.data.prepare import prepare as prepare_data

    workdir = _workdir(args, write=True)
    prepared = prepare_data(data_spec(args), workdir / "data")
    m = prepared.manifest
    print(
        f"prepared {m['source']} ({m['split']} split, {m['n_rows_total']} rows in source): "
        f"train {m['n_train']}, val {m['n_val']}, test {m['n_test']} -> "
        f"{workdir / 'data' / 'prepared' / m['key']}"
    )
    return 0


def _run_stages(session, stages: list[str], force: bool) -> None:
    from tuner.report.summary import stage_table

    for name in stages:
        state = session.run_stage(name, force=force)
        print(stage_table(state), end="\n\n", flush=True)


def run_stage(args: argparse.Namespace) -> int:
    """``run-stage STAGE``: run (or resume, or join) one stage's study; prints its table."""
    session = open_session(args, stage=args.stage)
    with session.working():
        _run_stages(session, [args.stage], args.force)
    return 0


def run_all(args: argparse.Namespace) -> int:
    """``run-all``: every stage in order, then the final job; prints each stage's table and
    the status, and one of the workers writes the report."""
    started = time.monotonic()  # a budget counts reading and preparing the data too
    budget = getattr(args, "time_budget", None)
    if budget is not None and not budget > 0:
        raise TunerError(f"--time-budget must be a positive number of seconds, got {budget}")
    run_plan(
        open_session(args),
        args.force,
        failure=lambda err: failure_message(err, args),
        time_budget=budget,
        started=started,
    )
    return 0


def run_plan(
    session,
    force: bool,
    *,
    failure: Callable[[BaseException], str | None] = lambda err: None,
    time_budget: float | None = None,
    started: float | None = None,
) -> tuple[dict[str, Any], Any]:
    """Every stage of ``session``'s plan in order, the final job, the status table and (by one
    worker) the report: the one implementation of a whole run, for ``run-all`` and
    :meth:`tuner.sklearn.TunedClassifier.fit`. Returns the plan's status (``status --json``'s
    fields) and the report's paths (``None``: another worker writes it, or it failed: the
    results are in the storage and ``tuner report`` retries).

    ``time_budget`` (seconds, from ``started``, a ``time.monotonic()``; default now) bounds the
    whole run (:class:`~tuner.tune.budget.Budget`): each stage gets a deadline for its share, after which its runs
    start no new epoch, and the final job gets the rest (at least one epoch: it always runs),
    less a reserve for what follows it (baselines, report)."""
    from tuner.report.summary import plan_status, status_table
    from tuner.tune.final import run_final

    paths = None
    t0 = time.perf_counter()
    budget = None
    if time_budget is not None:
        from tuner.tune.budget import Budget

        start = time.monotonic() if started is None else started
        budget = Budget.start(session, time_budget, start)
    stages = session.plan.stages
    with session.working():
        for k, spec in enumerate(stages, 1):
            logger.info("stage %d/%d: %s (%s)", k, len(stages), spec.name, spec.kind)
            if budget is not None:
                session.deadline = budget.deadline_for(spec.name)
            _run_stages(session, [spec.name], force)
        if budget is not None:
            session.deadline = budget.end
        logger.info("final job: train the chosen configuration, score it once on test")
        run_final(session, force=force)
        status = plan_status(session)
        print(status_table(status))
        try:
            if session.claim_report():
                paths = _print_report(session)
            else:
                logger.info("another worker writes the report")
            print(_closing(session, time.perf_counter() - t0), flush=True)
        except Exception as err:
            why = failure(err)
            logger.warning(
                "could not write the report (%s); run `tuner report`",
                why or type(err).__name__,
                exc_info=why is None,
            )
    return status, paths


def _closing(session, seconds: float) -> str:
    """The run's last lines: its wall time and how to look at it."""
    workdir = session.settings.workdir
    storage = "" if session.settings.storage_url.startswith("sqlite") else " --storage URL"
    return (
        f"done in {_duration(seconds)}. Look at it: python -m tuner dashboard --workdir {workdir}"
        f"{storage} (Optuna's dashboard); the report is under {workdir / 'reports'}"
    )


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def _print_report(session, out: Path | None = None):
    from tuner.report.document import write_report

    paths = write_report(session, out)
    print(f"report: {paths.markdown}, {paths.html.name} and {len(paths.plots)} plots", flush=True)
    return paths


def report(args: argparse.Namespace) -> int:
    """``report``: write plots, report.md and report.html from the storage (``--out``, else
    ``WORKDIR/reports/PLAN``); prints what it wrote."""
    if args.out is not None:
        _writable_dir(args.out, f"--out {args.out}")
    session = open_session(args, with_data=False)
    try:
        if args.out is not None:
            try:
                args.out.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise TunerError(f"--out {args.out}: cannot create it ({err.strerror})") from None
        _print_report(session, args.out)
    finally:
        session.close()
    return 0


def dashboard(args: argparse.Namespace) -> int:
    """``dashboard``: serve optuna-dashboard on the storage and artifacts until stopped."""
    from tuner.report.dashboard import serve
    from tuner.tune.storage import default_storage_url

    workdir = _workdir(args, write=False)
    serve(args.storage or default_storage_url(workdir), workdir, args.host, args.port)
    return 0


def final(args: argparse.Namespace) -> int:
    """``final``: retrain the chosen configuration and score it on test; prints its test
    accuracy and loss, and where the model is."""
    from tuner.tune.final import final_summary, run_final

    session = open_session(args)
    with session.working():
        run_final(session, force=args.force)
        summary = final_summary(session)
        if summary:
            print(
                f"test accuracy {summary['test_accuracy']:.4f}, test loss {summary['test_loss']:.4f}, "
                f"n_test {summary['n_test']}; model {summary.get('model', '?')}"
            )
    return 0


def status(args: argparse.Namespace) -> int:
    """``status``: each stage's study, progress and winner, and the final metrics; a table,
    or strict JSON with ``--json``."""
    from tuner.report.summary import plan_status, status_json, status_table

    session = open_session(args, with_data=False)
    try:
        found = plan_status(session)
    finally:
        session.close()
    print(status_json(found) if args.json else status_table(found))
    return 0


def _write_output(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole (a temporary file renamed into place), or exit 2 with
    one line when the path cannot be written."""
    from tuner.paths import write_text

    if path.is_dir():
        raise TunerError(f"{path}: is a directory; give a file name for --output")
    if not path.parent.is_dir():
        raise TunerError(f"{path}: no such directory {str(path.parent)!r}")
    try:
        write_text(path, text)
    except OSError as err:
        raise TunerError(f"{path}: cannot write ({err.strerror or err})") from None


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same existing file (through links too)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def predict(args: argparse.Namespace) -> int:
    """``predict``: the predictions of ``--model`` for each row of ``--input`` (a CSV with a
    prediction and one probability per class, or one decade per line for a YearPredictionMSD
    model), to ``--output`` or stdout (no ``--output``, or ``-``). An ``--output`` that is the
    ``--input`` file is refused."""
    from tuner.predict import is_table_model, load_bundle, predict_file, predict_table

    if args.output is not None and str(args.output) != "-" and _same_file(args.output, args.input):
        raise TunerError(
            f"--output {args.output} is the --input file: the predictions would replace the "
            "rows they were made from; give another path"
        )
    _, bundle = load_bundle(args.model)
    if is_table_model(bundle):
        table = predict_table(args.model, args.input)
        text = table.to_csv(index=False, float_format="%.6g")
        n = len(table)
    else:
        labels = predict_file(args.model, args.input)
        text = "\n".join(labels) + "\n"
        n = len(labels)
    if args.output is not None and str(args.output) != "-":
        _write_output(args.output, text)
        logger.info("wrote %d predictions to %s", n, args.output)
    else:
        sys.stdout.write(text)
    return 0


def synthesize(args: argparse.Namespace) -> int:
    """``synthesize``: write ``--rows`` rows of MSD-shaped synthetic data to ``--out`` (UCI
    format)."""
    from tuner.data import synthetic

    if args.rows < 100:
        raise TunerError(f"--rows must be at least 100, got {args.rows}")
    out = args.out
    if out.is_dir():
        raise TunerError(f"--out {out}: is a directory; give a file name, e.g. {out / 'msd.txt'}")
    _writable_dir(out.parent, f"--out {out}")
    years, features = synthetic.generate(rows=args.rows, seed=args.seed)
    existed = out.exists()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        synthetic.write_uci(out, years, features)
    except OSError as err:
        if not existed:
            out.unlink(missing_ok=True)  # no half-written file left behind
        raise TunerError(f"--out {out}: cannot write ({err.strerror or err})") from None
    print(f"wrote {args.rows} rows to {out}")
    return 0


def failure_message(err: BaseException, args: argparse.Namespace) -> str | None:
    """One line for a failure of the environment behind ``err`` (see
    :func:`tuner.tune.storage.failure_line`), else ``None`` (a bug: a traceback)."""
    from tuner.tune.storage import default_storage_url, failure_line

    workdir = getattr(args, "workdir", Path("."))
    return failure_line(err, getattr(args, "storage", None) or default_storage_url(workdir))


@contextmanager
def sigterm_stops(stop: threading.Event) -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`Terminated` in the main thread (the
    Ctrl-C path: running trials failed, claims released, exit 143) and sets ``stop``: the
    exception can land where Python ignores it (a garbage collector's finalizer), so the stage
    runner also checks ``stop`` every epoch. A second SIGTERM does not interrupt the cleanup."""

    def on_sigterm(signum, frame) -> NoReturn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop.set()
        raise Terminated("SIGTERM")

    def unraisable(info) -> None:
        if isinstance(info.exc_value, Terminated):
            return  # ignored in a finalizer: ``stop`` ends the run at the next check instead
        previous_hook(info)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = previous_hook
