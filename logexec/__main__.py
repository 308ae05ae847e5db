"""``python -m logexec``: the command line. ``demo`` is the self-check; see ``--help``."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from collections.abc import Sequence

from . import __version__


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1; the error names the rule and the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def writable_file(text: str) -> str:
    """An argparse type: a file that can be opened for writing (it is created if missing)."""
    try:
        # Fail now, as a usage error, rather than after the workers have run.
        open(text, "a").close()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {error.strerror or error}") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m logexec",
        description="logexec: a ProcessPoolExecutor whose workers log through the parent.",
    )
    parser.add_argument("--version", action="version", version=f"logexec {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="stress-test logexec on this machine and verify that no record is lost, duplicated or corrupt",
        description="Run a stress test: WORKERS processes log RECORDS records in total through "
        "LoggingProcessPoolExecutor; the parent writes them as JSON lines to one file, which "
        "is then read back and verified: every line must parse and every (worker, counter) "
        "must appear exactly once. Exit status 0 if it verified, 1 if not.",
    )
    demo.add_argument(
        "--workers",
        type=positive_int,
        default=4,
        help="number of worker processes, each logging its share of the records (default: 4)",
    )
    demo.add_argument(
        "--records",
        type=positive_int,
        default=200_000,
        help="number of records logged in total, across all workers (default: 200000)",
    )
    demo.add_argument(
        "--start-method",
        choices=multiprocessing.get_all_start_methods(),
        default=None,
        help="multiprocessing start method (default: this platform's, multiprocessing.get_start_method())",
    )
    demo.add_argument(
        "--out",
        type=writable_file,
        metavar="FILE",
        default=None,
        help="file the parent writes the JSON lines to, overwritten and kept (default: a new "
        "temporary file, deleted once it verifies, kept for inspection if it does not)",
    )
    demo.add_argument(
        "--compare",
        action="store_true",
        help="also run a workload through the naive alternatives (a FileHandler per worker on "
        "one file and on one pipe, a RotatingFileHandler per worker, the stdlib "
        "multiprocessing.Queue + QueueListener recipe with a worker killed) and through "
        "logexec, and print their figures side by side; every wait is bounded",
    )
    demo.add_argument(
        "--compare-records",
        type=positive_int,
        default=None,
        metavar="N",
        help="records per alternative in --compare; each line is padded to about 6 KB, above "
        "the pipe's atomic write size (default: the smaller of --records and 20000)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse errors exit 2 itself)."""
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.command is None:
        parser.print_help(sys.stderr)
        return 2
    from ._selfcheck._demo import run_demo

    return run_demo(
        records=options.records,
        workers=options.workers,
        start_method=options.start_method,
        out=options.out,
        compare=options.compare,
        compare_records=options.compare_records,
    )


def run_command() -> None:
    """``python -m logexec``: run, then exit even if the demo found a hang in logexec."""
    status = main()
    from ._selfcheck import _demo

    if _demo.hung_threads_left:
        # The interpreter's exit would join the hung executor's threads, and hang too.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run_command()
