"""``python -m logexec demo --compare``: the same workload through the naive alternatives.

Each alternative runs in a child process of its own (``python -m logexec._selfcheck._compare``) in a
new session (``_harness``), so that one that hangs can be killed with all its workers without
touching the demo: the child bounds its own waits and reports "hung"; the demo kills the
whole session if even that report does not come. ``benchmarks/compare_alternatives.py`` runs
these same alternatives, in rounds, beside its own contenders.

The alternatives, each with ``workers`` processes logging records of about 6 KB:

* ``logexec`` and ``logexec, worker killed``: ``LoggingProcessPoolExecutor``, the second
  with worker 0 killed by SIGKILL halfway through its share.
* ``FileHandler per worker, one file``: every worker appends to the same file. Each record
  is one ``write()`` to an ``O_APPEND`` file, which a local Linux filesystem does not
  interleave (NFS, SMB and Windows may), so on Linux this row usually shows no damage.
* ``FileHandler per worker, one pipe``: the same on a FIFO that the parent copies to the
  file, which is what stdout or stderr is under a container runtime or a log shipper.
* ``RotatingFileHandler per worker``: every worker rotates the same file; the backup count
  is large enough that a single writer would never delete a record.
* ``Queue + QueueListener, worker killed``: the logging cookbook's recipe, one
  ``multiprocessing.Queue``, with worker 0 killed by SIGKILL halfway through its share.

A record counts as promised once its log call returned: each worker publishes that count
in shared memory, and "lost" is promised records missing from the output.
"""

from __future__ import annotations

import glob
import json
import logging
import logging.handlers
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ALL_COMPLETED, wait
from typing import Any, TextIO

from .._executor import LoggingProcessPoolExecutor
from ._harness import run_isolated
from ._workload import DEMO_LOGGER, JsonLineFormatter, run_timeout, split_records, verify_files

# Records per alternative unless given: enough for contention and several rotations, small
# enough that the ~6 KB lines stay around 100 MB of disk per alternative.
DEFAULT_RECORDS = 20_000
# Padding per record. Above Linux's PIPE_BUF (4096), the size up to which a pipe write is
# atomic, so that the pipe alternative shows what unsynchronised writers do.
PADDING_CHARS = 6000
# Once every worker has logged its share (or died), how long exiting and draining may take
# before the alternative is reported as hung. Healthy runs need a fraction of this.
GRACE_SECONDS = 3.0
# How long workers wait for each other at the start, so that they all log at once.
BARRIER_SECONDS = 30.0
# Rotation: how many times, roughly, the file is rotated over the run; and the backup count,
# far above that, so that a single writer would keep every record.
ROTATIONS = 20
BACKUP_COUNT = 1000

# (name, human-readable label) in the order they are run and printed.
ALTERNATIVES: tuple[tuple[str, str], ...] = (
    ("logexec", "logexec"),
    ("logexec-killed", "logexec, worker SIGKILLed"),
    ("file", "FileHandler per worker, one file"),
    ("pipe", "FileHandler per worker, one pipe"),
    ("rotating", "RotatingFileHandler per worker"),
    ("queue-killed", "Queue + QueueListener, worker SIGKILLed"),
)
# The rows that are ours: only these decide the demo's exit status.
OURS = frozenset({"logexec", "logexec-killed"})


# The worker side -------------------------------------------------------------------------

# Set in each worker (by the Process arguments or the pool's initializer).
_promised: Any = None
_barrier: Any = None


def _install_shared(promised: Any, barrier: Any) -> None:
    """Pool initializer: keep the shared counters and the start barrier in this worker."""
    global _promised, _barrier
    _promised, _barrier = promised, barrier


def log_counted(worker: int, count: int, kill_at: int) -> int:
    """Log ``count`` padded records, publishing how many log calls returned.

    At ``kill_at`` (if not negative) the worker kills itself with SIGKILL, mid-run.
    """
    logger = logging.getLogger(DEMO_LOGGER)
    padding = "x" * PADDING_CHARS
    try:
        _barrier.wait(timeout=BARRIER_SECONDS)
    except threading.BrokenBarrierError:
        pass  # start anyway: a slow start costs contention, not correctness
    for counter in range(count):
        if counter == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        logger.info(
            "record %d of worker %d",
            counter,
            worker,
            extra={"worker": worker, "counter": counter, "padding": padding},
        )
        _promised[worker] = counter + 1
    return count


def run_naive_worker(
    kind: str, target: Any, worker: int, count: int, kill_at: int, promised: Any, barrier: Any
) -> None:
    """A worker of a naive alternative: its own handler, as a user would set it up."""
    _install_shared(promised, barrier)
    handler: logging.Handler
    if kind == "queue":
        handler = logging.handlers.QueueHandler(target)
    elif kind == "rotating":
        max_bytes = target[1]
        handler = logging.handlers.RotatingFileHandler(
            target[0], maxBytes=max_bytes, backupCount=BACKUP_COUNT, encoding="utf-8"
        )
    else:
        handler = logging.FileHandler(target, mode="a", encoding="utf-8")
    if kind != "queue":
        # The recipe's QueueHandler keeps its default formatter, as in the cookbook: the
        # parent's handler formats.
        handler.setFormatter(JsonLineFormatter())
    logger = logging.getLogger(DEMO_LOGGER)
    for inherited in list(logger.handlers):
        logger.removeHandler(inherited)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    log_counted(worker, count, kill_at)
    handler.close()


# The child process that runs one alternative ---------------------------------------------


class Outcome:
    """What one alternative did; serialised to JSON between the child and the demo."""

    def __init__(self, name: str, records: int) -> None:
        self.name = name
        self.records = records
        self.promised = 0
        self.delivered = 0
        self.lost = 0
        self.duplicated = 0
        self.corrupt = 0
        self.seconds = 0.0
        self.hung = ""
        self.note = ""

    def to_json(self) -> str:
        return json.dumps(vars(self))

    @classmethod
    def from_json(cls, text: str) -> Outcome:
        fields = json.loads(text)
        outcome = cls(fields["name"], fields["records"])
        vars(outcome).update(fields)
        return outcome


class Trial:
    """One alternative's run: the workload, the shared counters and what came of it."""

    def __init__(self, name: str, records: int, workers: int, start_method: str, directory: str) -> None:
        self.context: Any = multiprocessing.get_context(start_method)
        self.shares = split_records(records, workers)
        # Worker 0 of a "-killed" alternative kills itself halfway through its share.
        self.kill_at = [-1] * workers
        if name.endswith("-killed"):
            self.kill_at[0] = self.shares[0] // 2
        self.promised: Any = self.context.RawArray("q", workers)
        self.barrier: Any = self.context.Barrier(workers)
        self.path = os.path.join(directory, "out.jsonl")
        self.deadline = run_timeout(records)
        self.outcome = Outcome(name, records)

    def start_processes(self, kind: str, target: Any) -> list[Any]:
        """Start one naive worker process per share."""
        processes = [
            self.context.Process(
                target=run_naive_worker,
                args=(kind, target, worker, count, self.kill_at[worker], self.promised, self.barrier),
                name=f"naive-worker-{worker}",
                daemon=True,
            )
            for worker, count in enumerate(self.shares)
        ]
        for process in processes:
            process.start()
        return processes

    def wait_processes(self, processes: Sequence[Any]) -> None:
        """Wait, bounded, for the workers to log their shares and exit; kill the hung ones."""
        # Phase one: logging, bounded generously. No handle says "this worker has logged
        # its share", so the shared counters are sampled.
        end = time.monotonic() + self.deadline
        while time.monotonic() < end:
            if all(
                not process.is_alive() or self.promised[worker] >= self.shares[worker]
                for worker, process in enumerate(processes)
            ):
                break
            time.sleep(0.02)
        # Phase two: exiting; a healthy worker is gone well within the grace period.
        end = time.monotonic() + GRACE_SECONDS
        for process in processes:
            process.join(timeout=max(0.0, end - time.monotonic()))
        living = [process for process in processes if process.is_alive()]
        if living:
            self.hung(f"{len(living)} worker(s)")
            for process in living:
                process.kill()
            for process in living:
                process.join(timeout=GRACE_SECONDS)

    def hung(self, what: str) -> None:
        outcome = self.outcome
        outcome.hung = f"{outcome.hung}, {what}" if outcome.hung else what


def run_alternative(name: str, records: int, workers: int, start_method: str, directory: str) -> Outcome:
    """Run one alternative in this process; every wait is bounded."""
    trial = Trial(name, records, workers, start_method, directory)
    start = time.perf_counter()
    paths = _RUNNERS[name.replace("-killed", "")](trial)
    outcome = trial.outcome
    outcome.seconds = time.perf_counter() - start
    promised = list(trial.promised)
    verdict = verify_files(paths, promised)
    outcome.promised = sum(promised)
    outcome.delivered = verdict.delivered
    outcome.lost = verdict.lost
    outcome.duplicated = verdict.duplicated
    outcome.corrupt = verdict.corrupt
    return outcome


def _run_logexec(trial: Trial) -> list[str]:
    logger = logging.getLogger(DEMO_LOGGER)
    handler = logging.FileHandler(trial.path, mode="w", encoding="utf-8")
    handler.setFormatter(JsonLineFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    executor = LoggingProcessPoolExecutor(
        len(trial.shares),
        mp_context=trial.context,
        initializer=_install_shared,
        initargs=(trial.promised, trial.barrier),
    )
    futures = [
        executor.submit(log_counted, worker, count, trial.kill_at[worker])
        for worker, count in enumerate(trial.shares)
    ]
    _, pending = wait(futures, timeout=trial.deadline, return_when=ALL_COMPLETED)
    errors = [future.exception(timeout=0) for future in futures if future.done()]
    failures = sorted({type(error).__name__ for error in errors if error is not None})
    if failures:
        killed = any(at >= 0 for at in trial.kill_at)
        trial.outcome.note = "pool broken, as expected" if killed else "failed: " + ", ".join(failures)
    if pending:
        trial.hung("tasks")
    stopper = threading.Thread(target=executor.shutdown, kwargs={"cancel_futures": True}, daemon=True)
    stopper.start()
    stopper.join(timeout=GRACE_SECONDS + 10.0)
    if stopper.is_alive():
        trial.hung("shutdown")
    handler.close()
    return [trial.path]


def _run_file(trial: Trial) -> list[str]:
    open(trial.path, "w").close()
    trial.wait_processes(trial.start_processes("file", trial.path))
    # Say why this row may look fine: each record is one write() to an O_APPEND file,
    # which a local Linux filesystem does not interleave; NFS, SMB and Windows may.
    trial.outcome.note = "one O_APPEND write() per record"
    return [trial.path]


def _run_pipe(trial: Trial) -> list[str]:
    fifo = trial.path + ".fifo"
    os.mkfifo(fifo, 0o600)
    # Open the reading end first (non-blocking, or it waits for a writer), then hold a
    # writing end ourselves so that the reader sees no EOF before the workers connect.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    keeper = os.open(fifo, os.O_WRONLY)
    os.set_blocking(reader, True)
    pump = threading.Thread(target=_copy_until_eof, args=(reader, trial.path), daemon=True)
    pump.start()
    try:
        trial.wait_processes(trial.start_processes("pipe", fifo))
    finally:
        os.close(keeper)
    pump.join(timeout=GRACE_SECONDS)
    if pump.is_alive():
        trial.hung("pipe reader")
    return [trial.path]


def _copy_until_eof(reader: int, path: str) -> None:
    with open(path, "wb") as output:
        while True:
            chunk = os.read(reader, 1 << 16)
            if not chunk:
                break
            output.write(chunk)
    os.close(reader)


def _run_rotating(trial: Trial) -> list[str]:
    line_size = len(JsonLineFormatter().format(_sample_record())) + 1
    max_bytes = max(1, sum(trial.shares) * line_size // ROTATIONS)
    trial.wait_processes(trial.start_processes("rotating", (trial.path, max_bytes)))
    backups = glob.glob(glob.escape(trial.path) + ".*")
    trial.outcome.note = f"{len(backups)} backups of {max_bytes // 1000:,} KB"
    return [path for path in [trial.path, *backups] if os.path.isfile(path)]


def _sample_record() -> logging.LogRecord:
    record = logging.makeLogRecord({"msg": "record 0 of worker 0", "process": 99999})
    record.worker, record.counter, record.padding = 0, 0, "x" * PADDING_CHARS
    return record


def _run_queue(trial: Trial) -> list[str]:
    # The logging cookbook's recipe: one unbounded multiprocessing.Queue, a QueueHandler in
    # each worker, a QueueListener in the parent writing to the file.
    queue = trial.context.Queue(-1)
    handler = logging.FileHandler(trial.path, mode="w", encoding="utf-8")
    handler.setFormatter(JsonLineFormatter())
    listener = logging.handlers.QueueListener(queue, handler)
    listener.start()
    trial.wait_processes(trial.start_processes("queue", queue))
    # The parent's own put of the stop sentinel needs the queue's write lock, which the
    # killed worker may hold forever; never join our feeder thread at exit.
    queue.cancel_join_thread()
    stopper = threading.Thread(target=listener.stop, daemon=True)
    stopper.start()
    stopper.join(timeout=GRACE_SECONDS)
    if stopper.is_alive():
        trial.hung("listener.stop()")
    handler.close()
    return [trial.path]


_RUNNERS: dict[str, Callable[[Trial], list[str]]] = {
    "logexec": _run_logexec,
    "file": _run_file,
    "pipe": _run_pipe,
    "rotating": _run_rotating,
    "queue": _run_queue,
}


def child_main(argv: Sequence[str]) -> None:
    """Entry point of the child: run one alternative, write its outcome, exit at once."""
    global GRACE_SECONDS
    name, records, workers, start_method, directory, grace = argv
    GRACE_SECONDS = float(grace)
    outcome = run_alternative(name, int(records), int(workers), start_method, directory)
    with open(os.path.join(directory, "outcome.json"), "w", encoding="utf-8") as stream:
        stream.write(outcome.to_json())
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: a hung alternative leaves threads and queue feeders that the normal
    # interpreter exit would wait for, forever.
    os._exit(0)


# The demo side ---------------------------------------------------------------------------


def run_child(
    name: str, records: int, workers: int, start_method: str, timeout: float | None = None
) -> Outcome:
    """Run one alternative in its own session; kill the whole session if it overruns.

    ``timeout`` defaults to the run's bound plus the child's own bounded waits and a margin,
    so that it only trips when the child's own hang detection failed.
    """
    if timeout is None:
        timeout = run_timeout(records) + 4 * GRACE_SECONDS + 20.0
    directory = tempfile.mkdtemp(prefix=f"logexec-compare-{name}-")
    try:
        done = run_isolated(
            [
                sys.executable,
                "-m",
                "logexec._selfcheck._compare",
                name,
                str(records),
                str(workers),
                start_method,
                directory,
                str(GRACE_SECONDS),
            ],
            timeout,
            reap_seconds=GRACE_SECONDS,
        )
        try:
            with open(os.path.join(directory, "outcome.json"), encoding="utf-8") as stream:
                return Outcome.from_json(stream.read())
        except (OSError, ValueError):
            outcome = Outcome(name, records)
            if done.returncode is None or done.returncode == -signal.SIGKILL:
                outcome.hung = f"no report, killed after {timeout:g} s"
            else:
                tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
                outcome.note = f"failed (exit {done.returncode}): {' '.join(tail)}"
            return outcome
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def outcome_status(outcome: Outcome) -> str:
    problems = []
    if outcome.hung:
        problems.append(f"HUNG ({outcome.hung})")
    if outcome.lost:
        problems.append("LOST")
    if outcome.duplicated:
        problems.append("DUPLICATED")
    if outcome.corrupt:
        problems.append("CORRUPT")
    if outcome.note.startswith("failed"):
        problems.append("FAILED")
    return " ".join(problems) or "ok"


def format_table(outcomes: Sequence[Outcome], labels: dict[str, str]) -> str:
    header = ("alternative", "promised", "lost", "dup", "corrupt", "seconds", "records/s", "status")
    rows = [header]
    for outcome in outcomes:
        rate = outcome.delivered / outcome.seconds if outcome.seconds > 0 else 0.0
        status = outcome_status(outcome)
        if outcome.note:
            status += f"; {outcome.note}"
        rows.append(
            (
                labels[outcome.name],
                f"{outcome.promised:,}",
                f"{outcome.lost:,}",
                f"{outcome.duplicated:,}",
                f"{outcome.corrupt:,}",
                f"{outcome.seconds:.2f}",
                f"{rate:,.0f}",
                status,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:-1], widths[1:], strict=False)
        ]
        lines.append("  " + "  ".join([*cells, row[-1]]))
    return "\n".join(lines)


def run_comparison(records: int, workers: int, start_method: str, stdout: TextIO, stderr: TextIO) -> bool:
    """Run every alternative, print the table; True if logexec's own rows verified."""
    stdout.write(
        f"\ncomparison: {records:,} records of about {PADDING_CHARS // 1000} KB from {workers} "
        f"worker(s), start method {start_method}\n"
    )
    stdout.flush()
    outcomes = []
    for name, label in ALTERNATIVES:
        stderr.write(f"compare: running {label} ...\n")
        stderr.flush()
        outcomes.append(run_child(name, records, workers, start_method))
    stdout.write(format_table(outcomes, dict(ALTERNATIVES)) + "\n")
    stdout.write(
        "promised: log calls that returned; lost: promised records missing from the output; "
        "corrupt: lines that are not one JSON record\n"
    )
    stdout.flush()
    return all(outcome_status(outcome) == "ok" for outcome in outcomes if outcome.name in OURS)


if __name__ == "__main__":
    child_main(sys.argv[1:])
