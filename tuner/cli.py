"""Command line: ``python -m tuner COMMAND`` (or the ``tuner`` script).

Every command has ``--help``. Errors in the user's input or environment (out-of-range numbers,
unwritable paths, a full disk, a corrupt or lost storage) exit with status 2 and one line on
stderr; an interrupted run exits 130 (Ctrl-C) or 143 (SIGTERM) with its finished trials kept in
the storage, its running trials failed and its claims released.

This module parses the arguments and dispatches to the command's function in
:mod:`tuner.commands`, turning what a command raises into its exit status and one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from tuner import commands
from tuner.data.spec import SCALERS
from tuner.errors import Terminated, TunerError

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
        default=None,
        help="plan name in studies/ or path to a TOML plan (default: seed for the UCI format "
        "and synthetic data, tabular for a table; status and report without --data: the plan "
        "whose studies the storage holds)",
    )
    _storage_arg(g)
    g.add_argument(
        "--data",
        default=None,
        help="'uci' (download and verify the UCI YearPredictionMSD file), 'synthetic' "
        "(MSD-shaped generated data), a table file with a header (CSV/TSV/Parquet, plain or "
        ".gz/.zip; needs --target), a .txt/.csv/.zip in the UCI format, or a TOML data "
        "description (default: uci)",
    )
    g.add_argument(
        "--rows",
        type=_int_in(1),
        default=None,
        help="use a stratified subsample of N rows (--data synthetic: generate N rows, the "
        "data synthesize --rows N writes)",
    )
    g.add_argument(
        "--split",
        default=None,
        help="stratified 70/15/15 (the published recipe, default), canonical (UCI's "
        "YearPredictionMSD split), column:NAME (a column of train/val/test values) or "
        "group:NAME (no value of the column in two parts)",
    )
    t = parser.add_argument_group(
        "tables (shorthands for the keys of a TOML data description; see docs/reference/data.md 'Tables')"
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
        choices=SCALERS,
        default=None,
        help="numeric scaling fitted on the train rows: standard (default), quantile (normal "
        "output) or robust (median and inter-quartile range, then a smooth clip to about +-3)",
    )
    t.add_argument(
        "--missing-indicators",
        action="store_true",
        default=None,
        help="add a 0/1 column for each numeric column with missing values in the train rows",
    )
    t.add_argument(
        "--max-columns",
        type=_int_in(1),
        default=None,
        metavar="N",
        help="refuse a table with more columns than this, after reading its header alone "
        "(default: 10000)",
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
        "exactly the same thing (default: reuse it; see 'Trial reuse' in docs/concepts.md)",
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
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="bound the whole plan: each stage gets a share of the time (its runs start no new "
        "epoch after it) and the final job the rest (it always trains at least one epoch)",
    )

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
        "features (or 91 with the year first); - reads stdin (a FIFO or <(...) is read once too)",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write the predictions here (default, or -: stdout); a symlink is written through, "
        "a device or FIFO written directly, and the --input file refused",
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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "prepare": commands.prepare,
    "run-stage": commands.run_stage,
    "run-all": commands.run_all,
    "final": commands.final,
    "status": commands.status,
    "report": commands.report,
    "dashboard": commands.dashboard,
    "predict": commands.predict,
    "synthesize": commands.synthesize,
}
"""Each command's function (:mod:`tuner.commands`): parsed arguments -> exit status."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    args.stop = threading.Event()  # set by SIGTERM (see commands.sigterm_stops)
    try:
        with commands.sigterm_stops(args.stop):
            return _run(args)
    except Terminated:
        print(f"tuner: {_interrupted(args, 'terminated by SIGTERM')}", file=sys.stderr)
        return EXIT_TERMINATED


TRAINING_COMMANDS = ("run-stage", "run-all", "final")
"""Commands that run trials: what an interruption keeps is the trials' business."""


def _interrupted(args: argparse.Namespace, how: str) -> str:
    """What an interruption of ``args.command`` leaves behind, in one line."""
    if args.command in TRAINING_COMMANDS:
        return (
            f"{how}; finished trials are kept in the storage, running ones were failed and are "
            "trained again by the next run"
        )
    return f"{args.command} {how}; no file was left half-written (files are written whole)"


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
        print(f"tuner: {_interrupted(args, 'interrupted')}", file=sys.stderr)
        return 130
    except Exception as err:  # a lost or corrupt database, a full disk: one line, no traceback
        failure = commands.failure_message(err, args)
        if failure is None:
            raise
        print(f"tuner: error: {failure}", file=sys.stderr)
        return 2
