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
import logging
import multiprocessing
import os
import shutil
import tempfile
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
    handler = _common.CountingFileHandler(path, expected)
    handler.setFormatter(_common.make_formatter("plain"))
    root.addHandler(handler)

    executor, listener = _common.open_pool(config, workers, context)
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
    parser = _common.make_parser(__doc__, "smoke run: 2 rounds, a tenth of the tasks")
    parser.add_argument("--workers", type=int, default=2)
    _common.add_run_arguments(parser)
    args = parser.parse_args()
    if _common.answer_trial(args, trial):
        return
    scale = 10 if args.quick else 1
    if args.quick:
        args.repeats = 2

    _common.print_header(args)

    configs = (*CONFIGS, "alt") if args.alt_logexec else CONFIGS
    configs = (*configs, *_common.transport_configs(args))

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
    results = _common.run_rounds(__file__, args, plan, describe)
    _common.finish("bench_tasks", args, report(args, results), results)


def describe(spec: dict[str, Any], result: dict[str, Any]) -> str:
    return (
        f"{spec['config']:8} {spec['per_task']:>3} rec/task "
        f"{result['tasks_per_s']:>9,.0f} tasks/s "
        f"(results back after {result['results_seconds']:.3f} s, "
        f"all handled after {result['seconds']:.3f} s)"
    )


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
        for config in (*CONFIGS, "alt", *_common.transport_configs(args)):
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
