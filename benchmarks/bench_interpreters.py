"""Issue 22: records/s from CPython 3.14's subinterpreters into one FileHandler.

Three ways to get N records from 2 interpreters (or one thread) into a log file:

- ``logexec``: ``LoggingInterpreterPoolExecutor(2)``; the main interpreter's one FileHandler.
- ``own-handlers``: the stdlib's ``InterpreterPoolExecutor(2)`` whose initializer gives each
  interpreter its own ``FileHandler`` on the same file (what a user would do today: no
  logexec, the application's format repeated in the initializer).
- ``in-process``: one thread of the main interpreter logs all N records to a FileHandler
  (the baseline: no interpreters at all).

Each round runs the three in turn (interleaved, a fresh file each), and the figures are
medians over the rounds; every file is checked to hold exactly N whole lines. Then the cost
per log call inside an interpreter: a task times its own N log calls (``logexec``'s handler
vs. its own FileHandler vs. a level that drops the record).

Run (CPython 3.14+): PYTHONPATH=. python3.14 benchmarks/bench_interpreters.py [--records N] [--rounds R]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

if sys.version_info < (3, 14):
    sys.exit(f"bench_interpreters.py needs CPython 3.14 or newer; this is {sys.version.split()[0]}")

from concurrent.futures import InterpreterPoolExecutor

from logexec import LoggingInterpreterPoolExecutor
from logexec._interp._executor import QUEUE_SIZE

LOGGER = "bench.interp"
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
PAD = "x" * 40


def log_records(count: int, source: int) -> float:
    """A task: log ``count`` records; return the seconds the log calls took."""
    log = logging.getLogger(LOGGER)
    start = time.perf_counter()
    for seq in range(count):
        log.info("src=%d seq=%d %s", source, seq, PAD)
    return time.perf_counter() - start


def own_file_handler(path: str) -> None:
    """The initializer a user writes today: this interpreter's own handler on the file."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)


def null_handler() -> None:
    """The record is made and handed to a handler that does nothing: the floor of a log call."""
    logging.getLogger().addHandler(logging.NullHandler())
    logging.getLogger().setLevel(logging.INFO)


def drop_below_warning() -> None:
    logging.getLogger().setLevel(logging.WARNING)


def _configure(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def _unconfigure(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()


def _check(path: Path, expected: int) -> None:
    lines = path.read_text().splitlines()
    whole = sum(1 for line in lines if line.endswith(PAD) and " seq=" in line)
    if len(lines) != expected or whole != expected:
        raise SystemExit(f"{path}: {len(lines)} lines, {whole} whole, expected {expected}")


def run_logexec(path: Path, per_task: int) -> float:
    handler = _configure(path)
    try:
        start = time.perf_counter()
        with LoggingInterpreterPoolExecutor(2) as executor:
            list(executor.map(log_records, [per_task] * 2, [0, 1]))
        return time.perf_counter() - start
    finally:
        _unconfigure(handler)


def run_own_handlers(path: Path, per_task: int) -> float:
    start = time.perf_counter()
    with InterpreterPoolExecutor(2, initializer=own_file_handler, initargs=(str(path),)) as executor:
        list(executor.map(log_records, [per_task] * 2, [0, 1]))
    return time.perf_counter() - start


def run_in_process(path: Path, per_task: int) -> float:
    handler = _configure(path)
    try:
        start = time.perf_counter()
        log_records(per_task * 2, 0)
        return time.perf_counter() - start
    finally:
        _unconfigure(handler)


def quiet_handler_cost(count: int, records: object, answers: object, stopped: object) -> float:
    """In an interpreter: logexec's handler with no reader running (encode and put, uncontended)."""
    from logexec._interp import _worker

    answer_queue = answers.get_nowait()  # type: ignore[attr-defined]
    link = _worker.Link(records, answers, stopped)  # type: ignore[arg-type]
    handler = _worker.InterpreterHandler(_worker._State(link, answer_queue))
    log = logging.getLogger(LOGGER + ".quiet")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    start = time.perf_counter()
    for seq in range(count):
        log.info("src=%d seq=%d %s", 0, seq, PAD)
    return time.perf_counter() - start


def _quiet_cost(count: int) -> float:
    from concurrent import interpreters

    records, answers, stopped = (interpreters.create_queue() for _ in range(3))
    answers.put_nowait(interpreters.create_queue())
    interpreter = interpreters.create()
    try:
        seconds: float = interpreter.call(quiet_handler_cost, count, records, answers, stopped)
    finally:
        interpreter.close()
    return seconds


def per_call_costs(per_task: int, folder: Path) -> dict[str, float]:
    """Microseconds per log call inside an interpreter (one task, timed by itself).

    Fewer calls than the queue holds, and a NullHandler in the main interpreter: the figure
    is the interpreter's own cost, not time spent held back by a slower main interpreter.
    """
    costs: dict[str, float] = {}
    with LoggingInterpreterPoolExecutor(1, handlers=[logging.NullHandler()]) as executor:
        executor.submit(log_records, 100, 0).result()  # the interpreter's start-up
        costs["logexec handler (record encoded onto the queue)"] = executor.submit(
            log_records, per_task, 0
        ).result()
    costs["logexec handler, no reader running (encode and put alone)"] = _quiet_cost(per_task)
    own = str(folder / "per-call-own.log")
    with InterpreterPoolExecutor(1, initializer=own_file_handler, initargs=(own,)) as executor:
        executor.submit(log_records, 100, 0).result()
        costs["its own FileHandler (format and write)"] = executor.submit(log_records, per_task, 0).result()
    with InterpreterPoolExecutor(1, initializer=null_handler) as executor:
        executor.submit(log_records, 100, 0).result()
        costs["a NullHandler (the record is made, nothing more)"] = executor.submit(
            log_records, per_task, 0
        ).result()
    with InterpreterPoolExecutor(1, initializer=drop_below_warning) as executor:
        executor.submit(log_records, 100, 0).result()
        costs["level drops the record (no handler work)"] = executor.submit(log_records, per_task, 0).result()
    return {name: seconds / per_task * 1e6 for name, seconds in costs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000, help="records per interpreter")
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    runs = {"logexec": run_logexec, "own-handlers": run_own_handlers, "in-process": run_in_process}
    times: dict[str, list[float]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as folder:
        for round_number in range(options.rounds):
            for name, run in runs.items():
                path = Path(folder) / f"{name}-{round_number}.log"
                times[name].append(run(path, options.records))
                _check(path, options.records * 2)
        calls = per_call_costs(min(options.records, QUEUE_SIZE // 2), Path(folder))
    total = options.records * 2
    baseline = total / statistics.median(times["in-process"])
    where = f"{platform.python_version()}, {os.cpu_count()} CPUs"
    print(f"# Issue 22: subinterpreters into one FileHandler ({where})")
    print()
    print(f"{total} records per run (2 x {options.records}; in-process: one thread),")
    print(f"{options.rounds} interleaved rounds, median; each run includes starting and closing its")
    print("interpreters; every file checked.")
    print()
    print("| configuration | records/s (median) | vs in-process |")
    print("|---|---:|---:|")
    for name in runs:
        rate = total / statistics.median(times[name])
        print(f"| {name} | {rate:,.0f} | {rate / baseline:.2f}x |")
    print()
    calls_made = min(options.records, QUEUE_SIZE // 2)
    print(f"Cost per log call inside an interpreter ({calls_made} calls, one task):")
    print()
    print("| handler in the interpreter | µs per call |")
    print("|---|---:|")
    for name, micros in calls.items():
        print(f"| {name} | {micros:.2f} |")


if __name__ == "__main__":
    main()
