"""``python -m logexec demo``: a self-check that every worker record arrives once, whole.

The workload: ``workers`` tasks run at once, and task ``w`` logs ``counter = 0, 1, ...``
through ``LoggingProcessPoolExecutor``. In the parent, one ``FileHandler`` with a JSON
formatter writes one object per line carrying ``worker`` and ``counter``. Afterwards the
file is read back: every line must parse, and every ``(worker, counter)`` must appear
exactly once. The verdict is what the exit status reports.

Progress is counted in the parent, by a filter on the demo's logger, never by reading the
file while it grows.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from typing import TextIO

from .._executor import LoggingProcessPoolExecutor
from ._workload import DEMO_LOGGER, JsonLineFormatter, Verdict, run_timeout, split_records, verify_files

# How often the progress line is redrawn: live on a terminal, sparse in a log file.
TERMINAL_PROGRESS_SECONDS = 0.1
PLAIN_PROGRESS_SECONDS = 2.0
# Bound on shutdown() once the tasks are done: it only joins processes and threads then.
SHUTDOWN_TIMEOUT_SECONDS = 30.0

# Set when a bounded wait gave up on a thread that is still blocked: the command line then
# exits without the interpreter's exit-time joins, which would block on it too.
hung_threads_left = False


class CountingFilter(logging.Filter):
    """Counts the records the parent handles; the progress line reads ``count``."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        # Only the listener thread writes; the progress thread only reads an int.
        self.count += 1
        return True


def log_records(worker: int, count: int) -> int:
    """The demo task: log ``count`` records numbered by a per-worker counter."""
    logger = logging.getLogger(DEMO_LOGGER)
    for counter in range(count):
        logger.info("record %d of worker %d", counter, worker, extra={"worker": worker, "counter": counter})
    return count


class Progress:
    """A progress line on ``stream``: redrawn in place on a terminal, periodic otherwise."""

    def __init__(self, counter: CountingFilter, total: int, stream: TextIO) -> None:
        self._counter = counter
        self._total = total
        self._stream = stream
        self._live = _is_terminal(stream)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="logexec-demo-progress", daemon=True)
        self._start = time.perf_counter()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._draw(final=True)

    def _run(self) -> None:
        interval = TERMINAL_PROGRESS_SECONDS if self._live else PLAIN_PROGRESS_SECONDS
        # Event.wait, not sleep: the line stops the moment the run ends.
        while not self._stop.wait(interval):
            self._draw(final=False)

    def _draw(self, final: bool) -> None:
        count = self._counter.count
        elapsed = time.perf_counter() - self._start
        rate = count / elapsed if elapsed > 0 else 0.0
        line = (
            f"demo: {count:,}/{self._total:,} records handled "
            f"({100.0 * count / self._total:5.1f}%), {elapsed:.1f} s, {rate:,.0f} records/s"
        )
        try:
            if self._live:
                self._stream.write("\r\x1b[K" + line + ("\n" if final else ""))
            else:
                self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stderr must not fail the run


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class RunResult:
    """The figures of one demo run."""

    def __init__(
        self,
        records: int,
        workers: int,
        start_method: str,
        seconds: float,
        verdict: Verdict,
        path: str,
        problem: str = "",
    ) -> None:
        self.records = records
        self.workers = workers
        self.start_method = start_method
        self.seconds = seconds
        self.verdict = verdict
        self.path = path
        self.problem = problem
        # Set once a verified temporary output file has been deleted.
        self.deleted = False

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.problem

    @property
    def rate(self) -> float:
        return self.verdict.delivered / self.seconds if self.seconds > 0 else 0.0

    def summary_line(self) -> str:
        verdict = self.verdict
        return (
            f"records={self.records} workers={self.workers} lost={verdict.lost} "
            f"duplicated={verdict.duplicated} corrupt={verdict.corrupt} seconds={self.seconds:.2f}"
        )

    def table(self) -> str:
        rows = [
            ("records", f"{self.records:,}"),
            ("workers", str(self.workers)),
            ("start method", self.start_method),
            ("seconds", f"{self.seconds:.2f}"),
            ("records/s", f"{self.rate:,.0f}"),
            ("lost", str(self.verdict.lost)),
            ("duplicated", str(self.verdict.duplicated)),
            ("corrupt", str(self.verdict.corrupt)),
            ("file", f"{self.path} (deleted after verifying)" if self.deleted else self.path),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def default_output_path() -> str:
    """A new temporary file for the demo's output; ``run_demo`` deletes it once verified."""
    descriptor, path = tempfile.mkstemp(prefix="logexec-demo-", suffix=".jsonl")
    os.close(descriptor)
    return path


def run_workload(
    records: int,
    workers: int,
    start_method: str,
    path: str,
    progress_stream: TextIO | None = None,
) -> RunResult:
    """Run the workload through ``LoggingProcessPoolExecutor`` into ``path``, then verify it."""
    shares = split_records(records, workers)
    logger = logging.getLogger(DEMO_LOGGER)
    saved = (logger.level, logger.propagate, list(logger.handlers), list(logger.filters))
    file_handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    file_handler.setFormatter(JsonLineFormatter())
    counter = CountingFilter()
    for handler in saved[2]:
        logger.removeHandler(handler)
    logger.addHandler(file_handler)
    logger.addFilter(counter)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    progress = Progress(counter, records, progress_stream) if progress_stream else None
    start = time.perf_counter()
    try:
        problem = _run_tasks(shares, start_method, run_timeout(records), progress)
        seconds = time.perf_counter() - start
    finally:
        logger.removeHandler(file_handler)
        logger.removeFilter(counter)
        file_handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        for handler in saved[2]:
            logger.addHandler(handler)
    verdict = verify_files([path], shares)
    return RunResult(records, workers, start_method, seconds, verdict, path, problem)


def _run_tasks(shares: list[int], start_method: str, timeout: float, progress: Progress | None) -> str:
    """Run one task per worker and wait, bounded; return a problem description or ""."""
    context = multiprocessing.get_context(start_method)
    executor = LoggingProcessPoolExecutor(len(shares), mp_context=context)
    futures: list[Future[int]] = []
    problem = ""
    try:
        futures = [executor.submit(log_records, worker, count) for worker, count in enumerate(shares)]
        # Only now, with every worker started (under fork all are forked at the first
        # submit): a thread running while the process forks can deadlock the child.
        if progress is not None:
            progress.start()
        done, pending = wait(futures, timeout=timeout, return_when=FIRST_EXCEPTION)
        for future in done:
            error = future.exception(timeout=0)
            if error is not None:
                problem = f"a task failed: {type(error).__name__}: {error}"
                break
        else:
            if pending:
                problem = f"the tasks did not finish within {timeout:.0f} s"
    finally:
        problem = _shut_down(executor, cancel=bool(problem)) or problem
        if progress is not None:
            progress.stop()
    return problem


def _shut_down(executor: LoggingProcessPoolExecutor, cancel: bool) -> str:
    """Shut the executor down, bounded; return a problem description or ""."""
    global hung_threads_left
    # Every task has returned, so every record was handled already (the barrier); what is
    # left is joining the workers and the listener. A hang here is a bug the demo reports.
    stopper = threading.Thread(
        target=executor.shutdown, kwargs={"cancel_futures": cancel}, name="logexec-demo-shutdown", daemon=True
    )
    stopper.start()
    stopper.join(timeout=SHUTDOWN_TIMEOUT_SECONDS)
    if stopper.is_alive():
        hung_threads_left = True
        return f"shutdown() did not return within {SHUTDOWN_TIMEOUT_SECONDS:g} s (a hang in logexec)"
    return ""


def run_demo(
    records: int,
    workers: int,
    start_method: str | None,
    out: str | None,
    compare: bool,
    compare_records: int | None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """The ``demo`` subcommand; returns the exit status (0 only if the file verified)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    method = start_method or multiprocessing.get_start_method()
    # The output (16 MB at the default size) is kept only where it was asked for, or where
    # it is the evidence of a failed verification; a passing run leaves nothing behind.
    keep = out is not None
    path = out or default_output_path()
    where = path if keep else f"{path} (a temporary file, deleted if it verifies; --out FILE keeps it)"
    stdout.write(f"logexec demo: {records:,} records from {workers} worker(s), start method {method}\n")
    stdout.write(f"output: {where}\n")
    stdout.flush()
    try:
        result = run_workload(records, workers, method, path, progress_stream=stderr)
    except BaseException:
        if not keep:
            _remove(path)
        raise
    if result.ok and not keep:
        _remove(path)
        result.deleted = True
    stdout.write(result.table() + "\n")
    if result.problem:
        stdout.write(f"problem: {result.problem}\n")
    stdout.write(("verified: " if result.ok else "FAILED: ") + result.summary_line() + "\n")
    if not result.ok:
        stdout.write(f"the output is kept for inspection: {path}\n")
    stdout.flush()
    ok = result.ok
    if compare:
        from . import _compare  # the comparison is optional and heavier: import it on demand

        size = compare_records if compare_records is not None else min(records, _compare.DEFAULT_RECORDS)
        ok = _compare.run_comparison(size, workers, method, stdout, stderr) and ok
    return 0 if ok else 1


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # already gone, or never made: nothing is left behind either way
