"""``logexec.Pool`` measured: records/s against the stdlib recipe and one in-process writer;
tasks/s of tasks that log nothing against a plain ``multiprocessing.Pool``.

Configurations, each measured in every round, in turn (interleaved, so that the machine's
drift hits them all alike); the figure is the median over rounds:

    logexec   logexec.Pool(workers).map(task, ...), each task logging 100 records
    recipe    multiprocessing.Pool(workers) whose initializer puts a QueueHandler on root,
              into a multiprocessing.Queue(-1) read by a QueueListener in the parent that does
              logging.getLogger(record.name).handle(record): the stdlib's documented recipe
    single    one process logging all the records itself (no pool): the in-process writer
    noop-*    tasks that log nothing: logexec.Pool against multiprocessing.Pool (tasks/s)

The parent's handler is the same everywhere: a FileHandler with a formatter, writing to a
temporary file, counting what it wrote. A logging round ends when every record has been
written (for the recipe: when the listener has written the last one, not when map returns).
Pools are made and warmed before the clock starts: what is measured is the steady state.

    python3 benchmarks/bench_pool.py                       # 7 rounds, default start method
    python3 benchmarks/bench_pool.py --rounds 3 --method spawn --no-save
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import multiprocessing
import multiprocessing.pool
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import logexec

RECORDS_PER_TASK = 100
log = logging.getLogger("bench.pool")


def logging_task(source: int) -> int:
    for counter in range(RECORDS_PER_TASK):
        log.info("source %d record %d", source, counter)
    return source


def noop_task(source: int) -> int:
    return source


def recipe_initializer(queue: Any) -> None:
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(queue)]
    root.setLevel(logging.INFO)


class _Redispatch(logging.Handler):
    def handle(self, record: logging.LogRecord) -> bool:
        logging.getLogger(record.name).handle(record)
        return True


class CountingFileHandler(logging.FileHandler):
    """The parent's handler: formats, writes, counts; tells when ``expected`` are written."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        self.count = 0
        self.expected = 0
        self.reached = threading.Event()

    def expect(self, expected: int) -> None:
        self.count = 0
        self.expected = expected
        self.reached.clear()

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        self.count += 1
        if self.count >= self.expected:
            self.reached.set()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=200, help="logging tasks per round (100 records each)")
    parser.add_argument("--noop-tasks", type=int, default=200000)
    parser.add_argument("--method", default=None, help="start method (default: the platform's)")
    parser.add_argument(
        "--no-save", action="store_true", help="do not write benchmarks/results/bench_pool.md"
    )
    args = parser.parse_args()
    method = args.method or multiprocessing.get_start_method()
    context = multiprocessing.get_context(method)
    directory = tempfile.mkdtemp(prefix="bench_pool_")
    handler = CountingFileHandler(os.path.join(directory, "parent.log"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    total = args.tasks * RECORDS_PER_TASK

    queue: Any = context.Queue(-1)
    listener = logging.handlers.QueueListener(queue, _Redispatch())
    listener.start()
    recipe = multiprocessing.pool.Pool(args.workers, recipe_initializer, (queue,), context=context)
    ours = logexec.Pool(args.workers, context=context)
    plain = multiprocessing.pool.Pool(args.workers, context=context)

    def run_logging(pool: Any) -> float:
        handler.expect(total)
        start = time.perf_counter()
        pool.map(logging_task, range(args.tasks))
        if not handler.reached.wait(120):
            raise RuntimeError(f"only {handler.count} of {total} records arrived")
        return total / (time.perf_counter() - start)

    def run_single() -> float:
        handler.expect(total)
        start = time.perf_counter()
        for source in range(args.tasks):
            logging_task(source)
        return total / (time.perf_counter() - start)

    noop_items = list(range(args.noop_tasks))

    def run_noop(pool: Any) -> float:
        start = time.perf_counter()
        pool.map(noop_task, noop_items)
        return args.noop_tasks / (time.perf_counter() - start)

    configs = {
        "logexec": lambda: run_logging(ours),
        "recipe": lambda: run_logging(recipe),
        "single": run_single,
        "noop-logexec": lambda: run_noop(ours),
        "noop-plain": lambda: run_noop(plain),
    }
    for run in configs.values():  # warm-up: workers started, modules imported
        run()
    figures: dict[str, list[float]] = {name: [] for name in configs}
    for round_number in range(args.rounds):
        for name, run in configs.items():
            figures[name].append(run())
        print(
            f"round {round_number + 1}: " + ", ".join(f"{n} {v[-1]:,.0f}" for n, v in figures.items()),
            flush=True,
        )
    for pool in (ours, recipe, plain):
        pool.close()
        pool.join()
    listener.stop()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    # Each round's own ratio, then their median: the drift between rounds cancels out.
    ratios = {
        "recipe": statistics.median(
            a / b for a, b in zip(figures["logexec"], figures["recipe"], strict=True)
        ),
        "single": statistics.median(
            a / b for a, b in zip(figures["logexec"], figures["single"], strict=True)
        ),
        "noop": statistics.median(
            a / b for a, b in zip(figures["noop-logexec"], figures["noop-plain"], strict=True)
        ),
    }
    rows = [
        f"| logexec.Pool, 100 records/task | {medians['logexec']:,.0f} records/s | "
        f"{ratios['recipe']:.2f}x the recipe (goal >= 1.75x) |",
        f"| stdlib Pool + QueueHandler recipe | {medians['recipe']:,.0f} records/s | 1.00x |",
        f"| single in-process writer | {medians['single']:,.0f} records/s | "
        f"logexec.Pool is {ratios['single']:.2f}x it |",
        f"| logexec.Pool, tasks that log nothing | {medians['noop-logexec']:,.0f} tasks/s | "
        f"{ratios['noop']:.2f}x plain Pool (goal >= 0.95x) |",
        f"| multiprocessing.Pool, tasks that log nothing | {medians['noop-plain']:,.0f} tasks/s | 1.00x |",
    ]
    command = "python3 benchmarks/bench_pool.py " + " ".join(sys.argv[1:])
    text = "\n".join(
        [
            "# logexec.Pool (bench_pool.py)",
            "",
            f"`{command.strip()}`: {args.rounds} interleaved rounds, medians; {args.workers} workers, "
            f"start method {method}, {total:,} records per logging round, {args.noop_tasks:,} empty tasks.",
            f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
            f"{os.cpu_count()} CPUs, transport {ours._logexec_channel.transport}.",
            "",
            "| configuration | median | ratio (median of the rounds' own ratios) |",
            "|---|---|---|",
            *rows,
            "",
        ]
    )
    print(text)
    if not args.no_save:
        (Path(__file__).resolve().parent / "results" / "bench_pool.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
