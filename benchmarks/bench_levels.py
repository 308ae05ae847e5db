"""Tasks per second with many configured loggers, before and after one level change.

A level set in the parent after the pool started must reach the workers with later tasks.
This measures what that costs each task when 2,000 loggers have levels of their own (a
large dictConfig, or a test suite's caplog.set_level): the rate after one ``setLevel``
against the rate while nothing changed. Configurations, interleaved in every round:

    plain      a plain ProcessPoolExecutor (the stdlib floor)
    unchanged  logexec, levels as they were when the pool was made
    changed    logexec, after one setLevel on one of the configured loggers
    alt-*      the same two with logexec from --alt-logexec (an A/B run)

Each trial configures the loggers, makes the pool and warms it up (every worker started,
the change applied in every worker), then times short tasks that log nothing, from the
first submit until every result is back.

    python3 benchmarks/bench_levels.py
    python3 benchmarks/bench_levels.py --loggers 200 --alt-logexec /tmp/before
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import multiprocessing
import time
from collections import defaultdict
from typing import Any

import _common

CONFIGS = ("plain", "unchanged", "changed")
ALT_CONFIGS = ("alt-unchanged", "alt-changed")
TASKS = 4000


def noop() -> None:
    return None


def trial(spec: dict[str, Any]) -> dict[str, Any]:
    config: str = spec["config"]
    workers: int = spec["workers"]
    context = multiprocessing.get_context(spec["start_method"])
    for index in range(spec["loggers"]):
        logging.getLogger(f"bench.levels.{index}").setLevel(logging.WARNING if index % 2 else logging.ERROR)
    executor: concurrent.futures.ProcessPoolExecutor
    if config == "plain":
        executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
    else:
        from logexec import LoggingProcessPoolExecutor

        executor = LoggingProcessPoolExecutor(workers, mp_context=context)
    with executor:
        for warm_up in [executor.submit(noop) for _ in range(workers * 4)]:
            warm_up.result()
        if config.endswith("-changed") or config == "changed":
            logging.getLogger("bench.levels.0").setLevel(logging.DEBUG)  # as caplog.set_level does
            for warm_up in [executor.submit(noop) for _ in range(workers * 4)]:
                warm_up.result()
        start = time.perf_counter()
        futures = [executor.submit(noop) for _ in range(spec["tasks"])]
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - start
    return {**spec, "seconds": elapsed, "tasks_per_s": spec["tasks"] / elapsed}


def main() -> None:
    parser = _common.make_parser(__doc__, "smoke run: 2 rounds, a tenth of the tasks")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loggers", type=int, default=2000, help="configured loggers (default 2000)")
    parser.add_argument("--tasks", type=int, default=TASKS, help=f"tasks timed per trial (default {TASKS})")
    _common.add_run_arguments(parser)
    args = parser.parse_args()
    if _common.answer_trial(args, trial):
        return
    scale = 10 if args.quick else 1
    if args.quick:
        args.repeats = 2
    _common.print_header(args)
    configs = (*CONFIGS, *ALT_CONFIGS) if args.alt_logexec else CONFIGS

    def plan() -> list[dict[str, Any]]:
        return [
            {
                "config": config,
                "tasks": args.tasks // scale,
                "workers": args.workers,
                "loggers": args.loggers,
                "start_method": args.start_method,
                **({"pythonpath": args.alt_logexec} if config.startswith("alt-") else {}),
            }
            for config in configs
        ]

    for spec in plan():  # warm-up round, a tenth of the size, discarded
        _common.run_trial(__file__, {**spec, "tasks": max(spec["tasks"] // 10, 8)})
    results = _common.run_rounds(__file__, args, plan, describe)
    _common.finish("bench_levels", args, report(args, results), results)


def describe(spec: dict[str, Any], result: dict[str, Any]) -> str:
    return f"{spec['config']:13} {result['tasks_per_s']:>9,.0f} tasks/s"


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> str:
    by_round = {(r["round"], r["config"]): r for r in results}
    rates: dict[str, list[float]] = defaultdict(list)
    to_plain: dict[str, list[float]] = defaultdict(list)
    to_unchanged: dict[str, list[float]] = defaultdict(list)
    for (round_number, config), result in by_round.items():
        rate = result["tasks_per_s"]
        rates[config].append(rate)
        plain = by_round.get((round_number, "plain"))
        if plain:
            to_plain[config].append(rate / plain["tasks_per_s"])
        # The ratio the goal is about: after one change against unchanged, same code, same round.
        unchanged = by_round.get((round_number, config.replace("changed", "unchanged")))
        if config.endswith("changed") and not config.endswith("unchanged") and unchanged:
            to_unchanged[config].append(rate / unchanged["tasks_per_s"])
    rows = [
        [
            config,
            f"{_common.median(rates[config]):,.0f}",
            _common.spread(rates[config]),
            f"{_common.median(to_plain[config]):.2f}",
            f"{_common.median(to_unchanged[config]):.2f}" if to_unchanged[config] else "-",
            _common.spread(to_unchanged[config]) if to_unchanged[config] else "-",
        ]
        for config in (*CONFIGS, *ALT_CONFIGS)
        if rates.get(config)
    ]
    return "\n".join(
        [
            "## Tasks per second after one level change (bench_levels.py)",
            "",
            _common.environment_line() + f"; logexec at {_common.revision_note(args)}; "
            f"{args.loggers} configured loggers, W={args.workers}, start method {args.start_method}; "
            f"{args.repeats} interleaved rounds; medians of per-round ratios. Tasks log nothing.",
            "",
            _common.markdown_table(
                ["config", "tasks/s", "range", "x plain", "changed x unchanged", "its range"], rows
            ),
        ]
    )


if __name__ == "__main__":
    main()
