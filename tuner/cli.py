"""Command line: ``python -m tuner COMMAND`` (or the ``tuner`` script).

Every command has ``--help``. Errors in the user's input or environment (out-of-range numbers,
unwritable paths, a full disk, a corrupt or lost storage) exit with status 2 and one line on
stderr; an interrupted run exits 130 (Ctrl-C) or 143 (SIGTERM) with its finished trials kept in
the storage, its running trials failed and its claims released.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from tuner.errors import StageError, Terminated, TunerError

logger = logging.getLogger("tuner")

SEED_MAX = 2**32 - 1  # numpy's and scikit-learn's seeds are unsigned 32-bit integers
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, as a shell reports a process SIGTERM stopped


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error format: one line ``tuner: error: ...``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tuner: error: {message} (see `{self.prog} --help`)\n")


def _int_in(low: int, high: int | None = None):
    """An argparse type: an integer in ``[low, high]``, else a one-line error naming the range."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {value}")
        return value

    return integer


def _storage_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--storage",
        default=os.environ.get("TUNER_STORAGE"),
        help="SQLAlchemy URL of the study storage (default: $TUNER_STORAGE, else "
        "sqlite:///WORKDIR/studies/tuner.sqlite3)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("plan, storage and data")
    g.add_argument(
        "--plan",
        default="seed",
        help="plan name in studies/ or path to a TOML plan (default: seed)",
    )
    _storage_arg(g)
    g.add_argument(
        "--data",
        default="uci",
        help="'uci' (download and verify the UCI YearPredictionMSD file), 'synthetic' "
        "(MSD-shaped generated data), a table file with a header (CSV/TSV/Parquet, plain or "
        ".gz/.zip; needs --target), a .txt/.csv/.zip in the UCI format, or a TOML data "
        "description (default: uci)",
    )
    g.add_argument(
        "--rows", type=_int_in(1), default=None, help="use a stratified subsample of N rows"
    )
    g.add_argument(
        "--split",
        default=None,
        help="stratified 70/15/15 (the published recipe, default), canonical (UCI's "
        "YearPredictionMSD split), column:NAME (a column of train/val/test values) or "
        "group:NAME (no value of the column in two parts)",
    )
    t = parser.add_argument_group(
        "tables (shorthands for the keys of a TOML data description; see README 'Your own data')"
    )
    t.add_argument("--target", default=None, help="the class column of a table file")
    t.add_argument("--sep", default=None, help="delimiter of a text table (default: sniffed)")
    t.add_argument(
        "--test-data", default=None, metavar="PATH", help="a separate test file (same columns)"
    )
    t.add_argument(
        "--drop",
        default=None,
        metavar="COL,COL",
        help="comma-separated columns that are not features",
    )
    t.add_argument(
        "--categorical",
        default=None,
        metavar="COL,COL",
        help="comma-separated columns to one-hot encode even if they hold numbers",
    )
    t.add_argument(
        "--bins",
        default=None,
        help="bin a numeric target: 'decade' or cut points such as 1990,2000",
    )
    t.add_argument(
        "--impute",
        choices=("median", "mean", "refuse"),
        default=None,
        help="numeric missing values: filled from the train rows (median, default; or mean), "
        "or refused",
    )
    t.add_argument(
        "--scaler",
        choices=("standard", "quantile"),
        default=None,
        help="numeric scaling fitted on the train rows: standard (default) or quantile "
        "(normal output)",
    )
    g.add_argument(
        "--seed",
        type=_int_in(0, SEED_MAX),
        default=42,
        help="seed of the split and of training, 0 to 2**32-1 (default: 42)",
    )
    g.add_argument(
        "--workdir",
        type=Path,
        default=Path("."),
        help="where data, studies, models go (default: .)",
    )
    g.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    g.add_argument(
        "--threads",
        type=_int_in(1, 4096),
        default=None,
        help="CPU threads for training (default: torch's, one per core); with several workers "
        "on one machine give each cores/workers, oversubscribed threads slow training badly",
    )


def _runner(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("running stages")
    g.add_argument(
        "--fix",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a parameter by hand instead of reading an earlier stage's winner (repeatable)",
    )
    g.add_argument("--force", action="store_true", help="redo a finished stage as a new study")
    g.add_argument(
        "--no-reuse",
        dest="reuse",
        action="store_false",
        help="train every point and the final model even when an earlier stage's trial trained "
        "exactly the same thing (default: reuse it; see 'Trial reuse' in the README)",
    )
    g.add_argument(
        "--heartbeat-interval",
        type=_int_in(1, 3600),
        default=5,
        help="seconds between worker heartbeats, 1 to 3600 (default: 5)",
    )
    g.add_argument(
        "--grace-period",
        type=_int_in(2, 7 * 86400),
        default=20,
        help="seconds without a heartbeat after which another worker retries a point (default: 20)",
    )
    g = parser.add_argument_group("training engine")
    g.add_argument(
        "--group-size",
        type=_int_in(0),
        default=0,
        metavar="N",
        help="grid points a worker claims and trains together as one fused model (default 0: "
        "all it can claim, fastest for one worker; with W workers on a stage of P points, "
        "about P/W spreads the work)",
    )
    g.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where training runs (default auto: CUDA when torch sees a GPU, else the CPU)",
    )
    g.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32, or bf16 matrix products with fp32 master weights (pays only on hardware "
        "with native bf16: recent GPUs, CPUs with AVX512-BF16/AMX; default fp32)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tuner",
        description="Staged Optuna tuning of a PyTorch MLP: one study per stage, each stage "
        "fixing the winners of the stages before it, then a final model scored on test.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="load, split and scale the data; cache the arrays")
    _common(p)

    p = sub.add_parser("run-stage", help="run (or resume, or join) one stage's study")
    p.add_argument("stage", help="stage name from the plan, e.g. weight_decay")
    _common(p)
    _runner(p)

    p = sub.add_parser("run-all", help="run every stage in order, then the final job")
    _common(p)
    _runner(p)

    p = sub.add_parser("final", help="retrain the chosen configuration and score it on test")
    _common(p)
    _runner(p)

    p = sub.add_parser("status", help="show each stage's study, progress and winner")
    _common(p)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = sub.add_parser(
        "report",
        help="write plots, report.md and a self-contained report.html under WORKDIR/reports/PLAN/",
    )
    _common(p)
    p.add_argument(
        "--out", type=Path, default=None, help="output directory (default: WORKDIR/reports/PLAN)"
    )

    p = sub.add_parser(
        "dashboard",
        help="serve optuna-dashboard on the storage and artifacts (works while stages run)",
    )
    _storage_arg(p)
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("."),
        help="where studies and artifacts are (default: .)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, loopback only; the dashboard has no "
        "login and can edit and delete studies)",
    )
    p.add_argument(
        "--port",
        type=_int_in(0, 65535),
        default=8080,
        help="port (default: 8080; 0 picks a free one)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")

    p = sub.add_parser(
        "predict",
        help="predict the class of each row of a file with a model.pt (a CSV with a prediction "
        "and one probability per class; one decade per line for a YearPredictionMSD model)",
    )
    p.add_argument("--model", type=Path, required=True, help="a model.pt written by the final job")
    p.add_argument(
        "--input",
        type=Path,
        required=True,
        help="for a model trained on a table: a table with a header (columns matched by name, "
        "any order, the target column ignored); for a YearPredictionMSD model: CSV rows of 90 "
        "features (or 91 with the year first)",
    )
    p.add_argument(
        "--output", type=Path, default=None, help="write the predictions here (default: stdout)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")

    p = sub.add_parser("synthesize", help="write MSD-shaped synthetic data as a UCI-format file")
    p.add_argument("--out", type=Path, required=True, help="output .txt path")
    p.add_argument(
        "--rows", type=_int_in(100), default=515_345, help="number of rows (default: 515345)"
    )
    p.add_argument(
        "--seed", type=_int_in(0, SEED_MAX), default=0, help="generator seed (default: 0)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    return parser


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


def data_spec(args: argparse.Namespace):
    """The :class:`~tuner.data.spec.DataSpec` of ``--data`` and the table flags."""
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
    }
    return build_spec(args.data, overrides)


def _session(args: argparse.Namespace, *, with_data: bool = True, stage: str | None = None):
    """Open the plan on its storage. With ``with_data`` the data is read and validated first,
    so that a bad data file stops the command before anything (a storage file) is written."""
    from tuner.config import coerce_params
    from tuner.data.prepare import prepare
    from tuner.plan import load_plan
    from tuner.report.notes import DashboardNotes
    from tuner.train.fused import Compute
    from tuner.tune.stages import Session, Settings, check_stage_name
    from tuner.tune.storage import default_storage_url

    writes = with_data or (args.command == "report" and args.out is None)
    workdir = _workdir(args, write=writes)
    plan = load_plan(args.plan, workdir)
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
        storage_url=args.storage or default_storage_url(workdir),
        data=data_spec(args),
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


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN and infinity replaced by ``None``: strict JSON (``null``)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _status(session) -> dict[str, Any]:
    from tuner.tune.final import final_summary
    from tuner.tune.stages import plan_states
    from tuner.tune.storage import redact

    return {
        "plan": session.plan.name,
        "storage": redact(session.settings.storage_url),
        "stages": [s.to_dict() for s in plan_states(session)],
        "final": final_summary(session),
    }


def _cmd_prepare(args: argparse.Namespace) -> int:
    from tuner.data.prepare import prepare

    workdir = _workdir(args, write=True)
    prepared = prepare(data_spec(args), workdir / "data")
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


def _cmd_run_stage(args: argparse.Namespace) -> int:
    session = _session(args, stage=args.stage)
    with session.working():
        _run_stages(session, [args.stage], args.force)
    return 0


def _cmd_run_all(args: argparse.Namespace) -> int:
    from tuner.report.summary import status_table
    from tuner.tune.final import run_final

    session = _session(args)
    with session.working():
        _run_stages(session, [s.name for s in session.plan.stages], args.force)
        run_final(session, force=args.force)
        print(status_table(_status(session)))
        try:
            if session.claim_report():
                _print_report(session)
            else:
                logger.info("another worker writes the report")
        except Exception as err:  # the results are in the storage; `tuner report` can retry
            failure = _environment_failure(err, args)
            logger.warning(
                "could not write the report (%s); run `tuner report`",
                failure or type(err).__name__,
                exc_info=failure is None,
            )
    return 0


def _print_report(session, out: Path | None = None) -> None:
    from tuner.report.document import write_report

    paths = write_report(session, out)
    print(f"report: {paths.markdown}, {paths.html.name} and {len(paths.plots)} plots", flush=True)


def _cmd_report(args: argparse.Namespace) -> int:
    if args.out is not None:
        _writable_dir(args.out, f"--out {args.out}")
    session = _session(args, with_data=False)
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


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from tuner.report.dashboard import serve
    from tuner.tune.storage import default_storage_url

    workdir = _workdir(args, write=False)
    serve(args.storage or default_storage_url(workdir), workdir, args.host, args.port)
    return 0


def _cmd_final(args: argparse.Namespace) -> int:
    from tuner.tune.final import final_summary, run_final

    session = _session(args)
    with session.working():
        run_final(session, force=args.force)
        summary = final_summary(session)
        if summary:
            print(
                f"test accuracy {summary['test_accuracy']:.4f}, test loss {summary['test_loss']:.4f}, "
                f"n_test {summary['n_test']}; model {summary.get('model', '?')}"
            )
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from tuner.report.summary import status_table

    session = _session(args, with_data=False)
    try:
        status = _status(session)
    finally:
        session.close()
    if args.json:  # strict JSON: a non-finite value (a diverged run's loss) is null
        print(json.dumps(_finite(status), indent=2, allow_nan=False))
    else:
        print(status_table(status))
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


def _cmd_predict(args: argparse.Namespace) -> int:
    from tuner.predict import is_table_model, load_bundle, predict_file, predict_table

    _, bundle = load_bundle(args.model)
    if is_table_model(bundle):
        table = predict_table(args.model, args.input)
        text = table.to_csv(index=False, float_format="%.6g")
        n = len(table)
    else:
        labels = predict_file(args.model, args.input)
        text = "\n".join(labels) + "\n"
        n = len(labels)
    if args.output:
        _write_output(args.output, text)
        logger.info("wrote %d predictions to %s", n, args.output)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_synthesize(args: argparse.Namespace) -> int:
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


COMMANDS = {
    "prepare": _cmd_prepare,
    "run-stage": _cmd_run_stage,
    "run-all": _cmd_run_all,
    "final": _cmd_final,
    "status": _cmd_status,
    "report": _cmd_report,
    "dashboard": _cmd_dashboard,
    "predict": _cmd_predict,
    "synthesize": _cmd_synthesize,
}


def _environment_failure(err: BaseException, args: argparse.Namespace) -> str | None:
    """One line for a failure of the environment behind ``err`` (see
    :func:`tuner.tune.storage.failure_line`), else ``None`` (a bug: a traceback)."""
    from tuner.tune.storage import default_storage_url, failure_line

    workdir = getattr(args, "workdir", Path("."))
    return failure_line(err, getattr(args, "storage", None) or default_storage_url(workdir))


@contextmanager
def _sigterm_stops(stop: threading.Event) -> Iterator[None]:
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    args.stop = threading.Event()  # set by SIGTERM (see _sigterm_stops)
    try:
        with _sigterm_stops(args.stop):
            return _run(args)
    except Terminated:
        print(
            "tuner: terminated by SIGTERM; finished trials are kept in the storage, running ones "
            "were failed and are trained again by the next run",
            file=sys.stderr,
        )
        return EXIT_TERMINATED


def _run(args: argparse.Namespace) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from tuner.train.runtime import keep_freed_memory

    keep_freed_memory()
    try:
        threads = getattr(args, "threads", None)
        if threads is not None:
            if threads < 1:
                raise TunerError(f"--threads must be >= 1, got {threads}")
            import torch

            torch.set_num_threads(threads)
        return COMMANDS[args.command](args)
    except TunerError as err:
        print(f"tuner: error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        raise
    except KeyboardInterrupt:
        print("tuner: interrupted; finished trials are kept in the storage", file=sys.stderr)
        return 130
    except Exception as err:  # a lost or corrupt database, a full disk: one line, no traceback
        failure = _environment_failure(err, args)
        if failure is None:
            raise
        print(f"tuner: error: {failure}", file=sys.stderr)
        return 2
