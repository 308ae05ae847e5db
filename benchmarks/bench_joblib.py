"""joblib: logexec's backend against loky, with and without the #1017 Manager-queue workaround.

Configurations, all on joblib's loky pool with the same number of workers:

    loky           plain loky; the tasks log at INFO, which the workers drop at the source
                   (root is at WARNING in a fresh loky worker): the floor, no logging
    loky-local     plain loky, each worker writing its own records to the same file through
                   its own FileHandler (no parent involved, no guarantees: what "logging on"
                   costs the workers themselves)
    manager-queue  the workaround from joblib issue #1017: a multiprocessing.Manager().Queue()
                   passed to every task, a QueueHandler installed once per worker, and a
                   QueueListener in the parent
    logexec        logexec.joblib's backend

Every record goes to the same FileHandler in the parent. Two workloads:

    tasks   one Parallel call of --tasks short tasks, each logging --records records:
            tasks per second, counted until Parallel returned *and* every record was
            written (the workaround's records may still be in flight when it returns)
    calls   --calls successive small Parallel calls (--call-tasks tasks, one record each),
            as scikit-learn makes them: wall time of the loop

Each configuration is warmed up (its pool started) before it is timed; switching between
logexec and the other two makes loky start a new pool, which is never timed. Rounds are
interleaved, so load on the machine falls on every configuration alike, and the median of
--repeats rounds is printed, with the ratios the goals are stated in.

    python3 benchmarks/bench_joblib.py
    python3 benchmarks/bench_joblib.py --quick
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from typing import Any

import joblib
from joblib import Parallel, delayed, parallel_config

from logexec.joblib import register_logexec

CONFIGS = ("loky", "loky-local", "manager-queue", "logexec")
LOGGER_NAME = "bench.joblib"
FORMAT = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
PAD = "x" * 40

# The workaround's pool gets other executor arguments than plain loky's, so that loky keeps
# a pool of its own for it: workers hooked to the queue must not serve the floor's tasks.
QUEUE_POOL_OPTIONS = {"idle_worker_timeout": 299}
# The same for the workers that write their own file.
LOCAL_POOL_OPTIONS = {"idle_worker_timeout": 298}


def task(source: int, records: int) -> int:
    logger = logging.getLogger(LOGGER_NAME)
    for sequence in range(records):
        logger.info("src=%d seq=%d %s", source, sequence, PAD)
    return source


def task_with_queue(source: int, records: int, queue: Any) -> int:
    """joblib #1017's workaround: the first task in each worker hooks root to the queue."""
    root = logging.getLogger()
    # Not a module global: loky pickles this script's functions by value, globals and all.
    if not root.handlers or not isinstance(root.handlers[0], logging.handlers.QueueHandler):
        root.handlers[:] = [logging.handlers.QueueHandler(queue)]
        root.setLevel(logging.INFO)
    return task(source, records)


def task_with_file(source: int, records: int, path: str) -> int:
    """Each worker writes its own records: the first task in each worker adds a FileHandler."""
    root = logging.getLogger()
    if not root.handlers or not isinstance(root.handlers[0], logging.FileHandler):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter(FORMAT))
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
    return task(source, records)


class CountingFileHandler(logging.FileHandler):
    """Writes records to a file and sets an event once it has written ``expected`` of them."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.setFormatter(logging.Formatter(FORMAT))
        self.count = 0
        self.expected = 0
        self.done = threading.Event()

    def expect(self, expected: int) -> None:
        self.count = 0
        self.expected = expected
        self.done.clear()
        if expected == 0:
            self.done.set()

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        self.count += 1
        if self.count >= self.expected:
            self.done.set()


class Runner:
    """Runs the workloads for one configuration."""

    def __init__(self, config: str, workers: int, handler: CountingFileHandler, queue: Any) -> None:
        self.config = config
        self.workers = workers
        self.handler = handler
        self.queue = queue

    def parallel_call(self, tasks: int, records: int) -> None:
        if self.config == "logexec":
            with parallel_config(backend="logexec", n_jobs=self.workers):
                Parallel()(delayed(task)(source, records) for source in range(tasks))
        elif self.config == "loky-local":
            with parallel_config(backend="loky", n_jobs=self.workers, **LOCAL_POOL_OPTIONS):
                Parallel()(
                    delayed(task_with_file)(source, records, self.handler.baseFilename)
                    for source in range(tasks)
                )
        elif self.config == "manager-queue":
            with parallel_config(backend="loky", n_jobs=self.workers, **QUEUE_POOL_OPTIONS):
                Parallel()(delayed(task_with_queue)(source, records, self.queue) for source in range(tasks))
        else:
            with parallel_config(backend="loky", n_jobs=self.workers):
                Parallel()(delayed(task)(source, records) for source in range(tasks))

    def expected(self, records: int) -> int:
        # The floor writes nothing; the workers' own FileHandlers are done when Parallel returns.
        return 0 if self.config in ("loky", "loky-local") else records

    def time_tasks(self, tasks: int, records: int) -> float:
        """Tasks per second, until every record is written."""
        self.handler.expect(self.expected(tasks * records))
        started = time.perf_counter()
        self.parallel_call(tasks, records)
        if not self.handler.done.wait(timeout=120):
            raise RuntimeError(
                f"{self.config}: {self.handler.count} of {self.handler.expected} records arrived"
            )
        return tasks / (time.perf_counter() - started)

    def time_calls(self, calls: int, tasks: int) -> float:
        """Seconds for ``calls`` successive Parallel calls, until every record is written."""
        self.handler.expect(self.expected(calls * tasks))
        started = time.perf_counter()
        for _ in range(calls):
            self.parallel_call(tasks, 1)
        if not self.handler.done.wait(timeout=120):
            raise RuntimeError(
                f"{self.config}: {self.handler.count} of {self.handler.expected} records arrived"
            )
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2, help="n_jobs (default: 2)")
    parser.add_argument("--tasks", type=int, default=4000, help="tasks in the tasks workload (default: 4000)")
    parser.add_argument("--records", type=int, default=1, help="records per task there (default: 1)")
    parser.add_argument("--calls", type=int, default=100, help="Parallel calls in the calls workload")
    parser.add_argument("--call-tasks", type=int, default=4, help="tasks per call there (default: 4)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the median is reported (default: 5)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, 2 rounds")
    arguments = parser.parse_args()
    for name in ("workers", "tasks", "calls", "call_tasks", "repeats"):
        value = getattr(arguments, name)
        if value <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be greater than 0, got {value}")
    if arguments.records < 0:
        raise SystemExit(f"--records must be 0 or more, got {arguments.records}")
    if arguments.quick:
        arguments.tasks, arguments.calls, arguments.repeats = 400, 20, 2

    register_logexec()
    directory = tempfile.mkdtemp(prefix="logexec-bench-joblib-")
    root = logging.getLogger()
    root.handlers[:] = []
    root.setLevel(logging.INFO)
    handler = CountingFileHandler(os.path.join(directory, "out.log"))
    root.addHandler(handler)
    manager = multiprocessing.Manager()
    queue = manager.Queue()
    # The workaround's parent side: records from the queue go to the same handler.
    queue_listener = logging.handlers.QueueListener(queue, handler, respect_handler_level=True)
    queue_listener.start()
    runners = {config: Runner(config, arguments.workers, handler, queue) for config in CONFIGS}

    print(
        f"# joblib {joblib.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"n_jobs={arguments.workers}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"# {' '.join(sys.argv)}")
    tasks_per_second: dict[str, list[float]] = defaultdict(list)
    call_seconds: dict[str, list[float]] = defaultdict(list)
    try:
        for round_number in range(arguments.repeats):
            for config in CONFIGS:
                runner = runners[config]
                # Warm-up: start (or reuse) the pool this configuration needs, untimed.
                handler.expect(runner.expected(2 * arguments.workers))
                runner.parallel_call(2 * arguments.workers, 1)
                handler.done.wait(timeout=120)
                tasks_per_second[config].append(runner.time_tasks(arguments.tasks, arguments.records))
                call_seconds[config].append(runner.time_calls(arguments.calls, arguments.call_tasks))
            print(f"# round {round_number + 1} of {arguments.repeats} done", file=sys.stderr, flush=True)
    finally:
        queue_listener.stop()
        manager.shutdown()
        root.removeHandler(handler)
        handler.close()
        shutil.rmtree(directory, ignore_errors=True)

    loky_rate = statistics.median(tasks_per_second["loky"])
    queue_rate = statistics.median(tasks_per_second["manager-queue"])
    loky_calls = statistics.median(call_seconds["loky"])
    print(
        f"\n{arguments.tasks} tasks, {arguments.records} record(s) each "
        f"(median of {arguments.repeats}; min-max in brackets)"
    )
    print(f"{'config':<15}{'tasks/s':>10}{'range':>20}{'vs loky':>10}{'vs queue':>10}")
    for config in CONFIGS:
        rates = tasks_per_second[config]
        rate = statistics.median(rates)
        print(
            f"{config:<15}{rate:>10.0f}{f'[{min(rates):.0f}-{max(rates):.0f}]':>20}"
            f"{rate / loky_rate:>9.2f}x{rate / queue_rate:>9.2f}x"
        )
    print(f"\n{arguments.calls} successive Parallel calls of {arguments.call_tasks} tasks (one record each)")
    print(f"{'config':<15}{'seconds':>10}{'range':>20}{'vs loky':>10}")
    for config in CONFIGS:
        times = call_seconds[config]
        seconds = statistics.median(times)
        print(
            f"{config:<15}{seconds:>10.3f}{f'[{min(times):.3f}-{max(times):.3f}]':>20}"
            f"{seconds / loky_calls:>9.2f}x"
        )
    # Per-round ratios: load shared by the configurations of one round cancels out.
    rounds = range(arguments.repeats)
    versus_loky = statistics.median(
        tasks_per_second["logexec"][i] / tasks_per_second["loky"][i] for i in rounds
    )
    versus_queue = statistics.median(
        tasks_per_second["logexec"][i] / tasks_per_second["manager-queue"][i] for i in rounds
    )
    calls_ratio = statistics.median(call_seconds["logexec"][i] / call_seconds["loky"][i] for i in rounds)
    print("\nmedian of the per-round ratios:")
    print(f"  logexec / loky tasks/s           {versus_loky:.2f}x   (goal >= 0.80x)")
    print(f"  logexec / manager-queue tasks/s  {versus_queue:.2f}x   (goal >= 3x)")
    versus_local = statistics.median(
        tasks_per_second["logexec"][i] / tasks_per_second["loky-local"][i] for i in rounds
    )
    print(f"  logexec / loky-local tasks/s     {versus_local:.2f}x   (workers writing their own file)")
    print(f"  logexec / loky calls-loop time   {calls_ratio:.2f}x   (goal <= 1.20x)")


if __name__ == "__main__":
    main()
