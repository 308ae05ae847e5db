"""Per-record costs: the parent's listener CPU, and a worker's log call.

Listener CPU per record. W workers log N records; the CPU time of the thread that
receives and dispatches them is read from ``/proc/self/task/<tid>/schedstat``
(nanoseconds) once every record is handled, and divided by N. Two parent handlers:
``file`` (a FileHandler with the plain formatter, the throughput benchmark's) and ``null``
(a handler that only counts: what is left is the transport and dispatch). Rows:

    single    the single writer's own CPU per record (record creation + the same handler),
              for scale: listener minus single is roughly what the channel adds
    recipe    the QueueListener thread of the stdlib recipe
    logexec   the "logexec-listener" thread

The parent process's total CPU per record (all threads, user + system) is shown too, minus
the same figure for a plain pool whose workers log nothing (the idle baseline).

Worker log call. Inside a worker (same start method for all), a loop of K
``logger.info`` calls is timed, wall clock and thread CPU, per call:

    null      a plain ProcessPoolExecutor worker with a NullHandler on root (the in-process
              baseline: record creation and the logger machinery, no I/O)
    recipe    the stdlib recipe's QueueHandler (put() returns before the bytes are sent)
    logexec   logexec's handler (the frame is in the kernel when the call returns); the
              parent handler is a counting null handler so the listener keeps up

    python3 benchmarks/bench_overhead.py
    python3 benchmarks/bench_overhead.py --quick
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from typing import Any

import _common

LISTENER_CONFIGS = ("single", "floor", "recipe", "logexec")
CALL_CONFIGS = ("null", "recipe", "logexec")
HANDLERS = ("file", "null")


def timed_loop_task(count: int) -> dict[str, float]:
    logger = logging.getLogger(_common.LOGGER_NAME)
    _common.log_records(logger, 999, 1000)  # warm-up: connections, caches
    wall, cpu = time.perf_counter(), time.thread_time()
    _common.log_records(logger, 0, count)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    return {"wall_us": wall / count * 1e6, "cpu_us": cpu / count * 1e6}


class CountingNullHandler(logging.Handler):
    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.count = 0
        self.done = threading.Event()

    def handle(self, record: logging.LogRecord) -> bool:
        self.count += 1
        if self.count >= self.expected:
            self.done.set()
        return True

    def emit(self, record: logging.LogRecord) -> None:
        pass


def _process_cpu() -> float:
    return time.process_time()  # every thread, user + system, nanosecond clock


def listener_trial(spec: dict[str, Any]) -> dict[str, Any]:
    config: str = spec["config"]
    workers: int = spec["workers"]
    records: int = spec["records"]
    counts = _common.split(records, workers)
    context = multiprocessing.get_context(spec["start_method"])
    directory = tempfile.mkdtemp(prefix="logexec-bench-")
    root = _common.reset_root_logger()
    handler: _common.CountingFileHandler | CountingNullHandler
    if spec["handler"] == "file":
        handler = _common.CountingFileHandler(os.path.join(directory, "out.log"), records)
        handler.setFormatter(_common.make_formatter("plain"))
    else:
        handler = CountingNullHandler(records)
    root.addHandler(handler)
    thread_cpu = float("nan")
    process_start = _process_cpu()
    if config == "single":
        start = time.thread_time()
        logger = logging.getLogger(_common.LOGGER_NAME)
        for source, count in enumerate(counts):
            _common.log_records(logger, source, count)
        thread_cpu = time.thread_time() - start
    elif config == "floor":
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as executor:
            for future in [executor.submit(_common.disabled_task, s, c) for s, c in enumerate(counts)]:
                future.result()
    elif config == "recipe":
        queue, listener = _common.start_recipe_listener(context)
        listener_thread = listener._thread  # the stdlib's own thread; no public accessor
        assert listener_thread is not None and listener_thread.native_id is not None
        native_id = listener_thread.native_id
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_common.recipe_initializer, initargs=(queue,)
        ) as executor:
            for future in [executor.submit(_common.logging_task, s, c) for s, c in enumerate(counts)]:
                future.result()
            handler.done.wait(timeout=300)
            thread_cpu = _common.thread_cpu_seconds(native_id)
        listener.stop()
    elif config in ("logexec", "alt"):
        from logexec import LoggingProcessPoolExecutor

        with LoggingProcessPoolExecutor(workers, mp_context=context) as executor:
            futures = [executor.submit(_common.logging_task, s, c) for s, c in enumerate(counts)]
            for future in futures:
                future.result()  # and so every record is handled
            (thread,) = [t for t in threading.enumerate() if t.name == "logexec-listener"]
            assert thread.native_id is not None
            thread_cpu = _common.thread_cpu_seconds(thread.native_id)
    else:
        raise ValueError(f"unknown config {config!r}")
    process_cpu = _process_cpu() - process_start
    handler.close()
    if handler.count != records and config != "floor":
        raise RuntimeError(f"{config}: {handler.count} of {records} records handled")
    shutil.rmtree(directory, ignore_errors=True)
    return {
        **spec,
        "thread_us": thread_cpu / records * 1e6,
        "process_us": process_cpu / records * 1e6,
    }


def call_trial(spec: dict[str, Any]) -> dict[str, Any]:
    config: str = spec["config"]
    calls: int = spec["calls"]
    context = multiprocessing.get_context(spec["start_method"])
    root = _common.reset_root_logger()
    handler = CountingNullHandler(calls + 1000)
    root.addHandler(handler)
    executor, listener = _common.open_pool(config, 1, context)
    with executor:
        result: dict[str, float] = executor.submit(timed_loop_task, calls).result()
    if listener is not None:
        listener.stop()
    return {**spec, **result}


def trial(spec: dict[str, Any]) -> dict[str, Any]:
    return call_trial(spec) if spec["kind"] == "call" else listener_trial(spec)


def main() -> None:
    parser = _common.make_parser(__doc__, "smoke run: 2 rounds, a tenth of the records")
    parser.add_argument("--workers", type=int, default=2, help="workers for the listener measurement")
    parser.add_argument("--records", type=int, default=100_000, help="records for the listener measurement")
    parser.add_argument("--calls", type=int, default=50_000, help="log calls timed inside the worker")
    _common.add_run_arguments(parser)
    args = parser.parse_args()
    if _common.answer_trial(args, trial):
        return
    if args.quick:
        args.repeats, args.records, args.calls = 2, args.records // 10, args.calls // 10

    _common.print_header(args)

    alt = ("alt",) if args.alt_logexec else ()

    def plan(records: int, calls: int) -> list[dict[str, Any]]:
        base = {"start_method": args.start_method}
        specs = [
            {
                **base,
                "kind": "listener",
                "config": c,
                "handler": h,
                "workers": args.workers,
                "records": records,
            }
            for c in (*LISTENER_CONFIGS, *alt)
            for h in HANDLERS
            if not (c == "floor" and h == "file")
        ]
        specs += [{**base, "kind": "call", "config": c, "calls": calls} for c in (*CALL_CONFIGS, *alt)]
        for spec in specs:
            if spec["config"] == "alt":
                spec["pythonpath"] = args.alt_logexec
        return specs

    for spec in plan(2_000, 2_000):  # warm-up, discarded
        _common.run_trial(__file__, spec)
    results = _common.run_rounds(__file__, args, lambda: plan(args.records, args.calls), describe)
    _common.finish("bench_overhead", args, report(args, results), results)


def describe(spec: dict[str, Any], result: dict[str, Any]) -> str:
    if spec["kind"] == "call":
        detail = f"call {result['wall_us']:.2f} us wall, {result['cpu_us']:.2f} us CPU"
    else:
        detail = (
            f"handler {spec['handler']:4} thread {result['thread_us']:.2f} us/rec, "
            f"process {result['process_us']:.2f} us/rec"
        )
    return f"{spec['kind']:8} {spec['config']:8} {detail}"


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> str:
    listener = [r for r in results if r["kind"] == "listener"]
    floor = {r["round"]: r["process_us"] for r in listener if r["config"] == "floor"}
    rows = []
    for handler in HANDLERS:
        for config in (*LISTENER_CONFIGS, "alt"):
            if config == "floor":
                continue
            runs = [r for r in listener if r["config"] == config and r["handler"] == handler]
            if not runs:
                continue
            thread = [r["thread_us"] for r in runs]
            process = [r["process_us"] - floor.get(r["round"], 0.0) for r in runs]
            rows.append(
                [
                    handler,
                    config,
                    f"{_common.median(thread):.2f}",
                    _common.spread(thread),
                    f"{_common.median(process):.2f}" if config != "single" else "-",
                ]
            )
    calls = [r for r in results if r["kind"] == "call"]
    by_round = {(r["round"], r["config"]): r for r in calls}
    ratio: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (round_number, config), result in by_round.items():
        null = by_round.get((round_number, "null"))
        for field in ("wall_us", "cpu_us"):
            ratio[config][field].append(result[field])
            if null:
                ratio[config][field + "_x"].append(result[field] / null[field])
    call_rows = [
        [
            config,
            f"{_common.median(ratio[config]['wall_us']):.2f}",
            f"{_common.median(ratio[config]['wall_us_x']):.2f}",
            f"{_common.median(ratio[config]['cpu_us']):.2f}",
            f"{_common.median(ratio[config]['cpu_us_x']):.2f}",
        ]
        for config in (*CALL_CONFIGS, "alt")
        if config in ratio
    ]
    return "\n".join(
        [
            "## Per-record costs (bench_overhead.py)",
            "",
            _common.environment_line() + f"; logexec at {_common.revision_note(args)}; "
            f"start method {args.start_method}; {args.repeats} interleaved rounds; medians.",
            "",
            f"### Parent CPU per record (W={args.workers}, N={args.records:,})",
            "",
            "`thread` is the listener thread's CPU (for `single`, the writer's own, which includes "
            "creating the record); `process - floor` is the whole parent's CPU per record minus that "
            "of a plain pool whose workers log nothing, in the same round.",
            "",
            _common.markdown_table(
                ["parent handler", "config", "thread µs/record", "range", "process - floor µs/record"], rows
            ),
            "",
            f"### Worker log call ({args.calls:,} calls in one worker, W=1)",
            "",
            "`x null` is the ratio to the NullHandler worker in the same round.",
            "",
            _common.markdown_table(
                ["config", "wall µs/call", "x null", "CPU µs/call", "x null (CPU)"], call_rows
            ),
        ]
    )


if __name__ == "__main__":
    main()
