"""Tasks per second for short tasks that log nothing, one record, or 100 records.

This is where the cost of logexec's "result means logged" barrier shows: a task that
logged waits, before its result goes back, for the parent to answer that every record is
handled. Configurations, interleaved in every round:

    plain    a plain ProcessPoolExecutor; the workers' records go to a NullHandler
             (nothing reaches the parent: the floor)
    recipe   the stdlib recipe: multiprocessing.Queue + QueueListener dispatching by name
    logexec  logexec.LoggingProcessPoolExecutor

The pool is warmed up first (every worker started). The clock then runs from the first
submit until every result is back *and* every record is handled by the parent's
FileHandler (the recipe's records may still be in flight when its results are back).

    python3 benchmarks/bench_tasks.py
    python3 benchmarks/bench_tasks.py --quick
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import logging.handlers
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from typing import Any

import _common

CONFIGS = ("plain", "recipe", "logexec")
# Records per task, and how many tasks to time for each (about the same wall time each).
KINDS = {0: 4000, 1: 4000, 100: 400}


def task(source: int, count: int) -> int:
    if count:
        _common.log_records(logging.getLogger(_common.LOGGER_NAME), source, count)
    return source


def noop() -> None:
    return None


def plain_initializer() -> None:
    # Under fork the worker inherits the parent's FileHandler; drop records instead.
    _common.reset_root_logger().addHandler(logging.NullHandler())


def recipe_initializer(queue: Any) -> None:
    _common.reset_root_logger().addHandler(logging.handlers.QueueHandler(queue))


class DispatchByName(logging.Handler):
    def handle(self, record: logging.LogRecord) -> bool:
        logging.getLogger(record.name).handle(record)
        return True


class CountingFileHandler(logging.FileHandler):
    """A FileHandler that signals once it has written ``expected`` records."""

    def __init__(self, path: str, expected: int) -> None:
        super().__init__(path, encoding="utf-8")
        self.expected = expected
        self.count = 0
        self.done = threading.Event()
        if expected == 0:
            self.done.set()

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        self.count += 1
        if self.count >= self.expected:
            self.done.set()


def trial(spec: dict[str, Any]) -> dict[str, Any]:
    config: str = spec["config"]
    per_task: int = spec["per_task"]
    tasks: int = spec["tasks"]
    workers: int = spec["workers"]
    context = multiprocessing.get_context(spec["start_method"])
    directory = tempfile.mkdtemp(prefix="logexec-bench-")
    path = os.path.join(directory, "out.log")
    root = _common.reset_root_logger()
    expected = 0 if config == "plain" else tasks * per_task
    handler = CountingFileHandler(path, expected)
    handler.setFormatter(_common.make_formatter("plain"))
    root.addHandler(handler)

    listener = None
    executor: concurrent.futures.ProcessPoolExecutor
    if config == "plain":
        executor = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=plain_initializer
        )
    elif config == "recipe":
        queue = context.Queue(-1)
        listener = logging.handlers.QueueListener(queue, DispatchByName(), respect_handler_level=True)
        listener.start()
        executor = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=recipe_initializer, initargs=(queue,)
        )
    elif config in ("logexec", "alt"):
        from logexec import LoggingProcessPoolExecutor

        executor = LoggingProcessPoolExecutor(workers, mp_context=context)
    else:
        raise ValueError(f"unknown config {config!r}")

    with executor:
        # Warm up: start every worker and run a few tasks through it.
        for warm_up in [executor.submit(noop) for _ in range(workers * 4)]:
            warm_up.result()
        start = time.perf_counter()
        futures = [executor.submit(task, index, per_task) for index in range(tasks)]
        for future in futures:
            future.result()
        results_back = time.perf_counter() - start
        if not handler.done.wait(timeout=120):
            raise RuntimeError(f"only {handler.count} of {expected} records arrived")
        elapsed = time.perf_counter() - start
    if listener is not None:
        listener.stop()
    handler.close()
    result: dict[str, Any] = {
        **spec,
        "seconds": elapsed,
        "results_seconds": results_back,
        "tasks_per_s": tasks / elapsed,
    }
    if expected:
        result.update(_common.verify(path, [per_task] * tasks, "plain").as_dict())
    shutil.rmtree(directory, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, a tenth of the tasks")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--start-method", default=multiprocessing.get_start_method(), choices=["fork", "spawn", "forkserver"]
    )
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    _common.add_alt_argument(parser)
    parser.add_argument("--trial", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        print(json.dumps(trial(json.loads(args.trial))))
        return
    scale = 10 if args.quick else 1
    if args.quick:
        args.repeats = 2

    print(_common.environment_line())
    print(f"logexec at {_common.logexec_revision()}; start method {args.start_method}")

    configs = (*CONFIGS, "alt") if args.alt_logexec else CONFIGS

    def plan() -> list[dict[str, Any]]:
        return [
            {
                "config": config,
                "per_task": per_task,
                "tasks": tasks // scale,
                "workers": args.workers,
                "start_method": args.start_method,
                **({"pythonpath": args.alt_logexec} if config == "alt" else {}),
            }
            for per_task, tasks in KINDS.items()
            for config in configs
        ]

    for spec in plan():  # warm-up round, a tenth of the size, discarded
        _common.run_trial(__file__, {**spec, "tasks": max(spec["tasks"] // 10, 8)})
    shuffler = random.Random(args.seed)
    results: list[dict[str, Any]] = []
    for round_number in range(args.repeats):
        specs = plan()
        shuffler.shuffle(specs)
        for spec in specs:
            result = _common.run_trial(__file__, spec)
            result["round"] = round_number
            results.append(result)
            print(
                f"round {round_number} {spec['config']:8} {spec['per_task']:>3} rec/task "
                f"{result['tasks_per_s']:>9,.0f} tasks/s "
                f"(results back after {result['results_seconds']:.3f} s, "
                f"all handled after {result['seconds']:.3f} s)",
                flush=True,
            )
    text = report(args, results)
    print()
    print(text)
    if not args.no_save:
        name = "bench_tasks_alt" if args.alt_logexec else "bench_tasks"
        _common.write_section(name, text, sys.argv)
        _common.save_json(name, results)


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> str:
    by_round = {(r["round"], r["per_task"], r["config"]): r for r in results}
    ratios: dict[tuple[int, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (round_number, per_task, config), result in by_round.items():
        key = (per_task, config)
        ratios[key]["rate"].append(result["tasks_per_s"])
        for baseline in ("plain", "recipe", "logexec"):
            other = by_round.get((round_number, per_task, baseline))
            if other:
                ratios[key][baseline].append(result["tasks_per_s"] / other["tasks_per_s"])
    rows = []
    for per_task in KINDS:
        for config in (*CONFIGS, "alt"):
            entry = ratios.get((per_task, config))
            if not entry:
                continue
            checked = [
                r for r in results if r["per_task"] == per_task and r["config"] == config and "lines" in r
            ]
            errors = sum(r["missing"] + r["duplicated"] + r["corrupt"] for r in checked)
            rows.append(
                [
                    per_task,
                    config,
                    f"{_common.median(entry['rate']):,.0f}",
                    _common.spread(entry["rate"]),
                    f"{_common.median(entry['plain']):.2f}",
                    f"{_common.median(entry['recipe']):.2f}",
                    f"{_common.median(entry['logexec']):.2f}",
                    errors if checked else "-",
                ]
            )
    return "\n".join(
        [
            "## Tasks per second (bench_tasks.py)",
            "",
            _common.environment_line() + f"; logexec at {_common.revision_note(args)}; "
            f"W={args.workers}, start method {args.start_method}; {args.repeats} interleaved rounds; "
            "medians of per-round ratios. Timed until every result is back and every record handled.",
            "",
            _common.markdown_table(
                [
                    "records/task",
                    "config",
                    "tasks/s",
                    "range",
                    "x plain",
                    "x recipe",
                    "x logexec",
                    "missing+dup+corrupt",
                ],
                rows,
            ),
        ]
    )


if __name__ == "__main__":
    main()
