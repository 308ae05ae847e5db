"""Peak memory and drain time while the workers flood a slow handler in the parent.

W workers each log R records as fast as they can; the parent's only handler writes each
record to a file and sleeps 1 ms every 10 records (about 10k records/s). Reported:

    worker RSS   each worker's VmRSS at the start of its task and VmHWM (peak) at its end,
                 read from /proc/self/status inside the worker (not ru_maxrss)
    parent RSS   the parent's VmRSS before the pool starts and its VmHWM at the end
    drain        from the last log call returning in any worker to the last record handled
    log loop     how long the workers' log loops took (backpressure shows here)

Configurations, interleaved: the stdlib recipe (multiprocessing.Queue(-1) + QueueListener:
put() returns at once and the worker's feeder buffer grows without bound) and logexec (a
full socket blocks the log call: memory stays bounded, the workers slow down instead).

    python3 benchmarks/bench_memory.py
    python3 benchmarks/bench_memory.py --quick
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

CONFIGS = ("recipe", "logexec")
# The slow handler: one 1 ms sleep every SLOW_EVERY records.
SLOW_EVERY = 10
SLOW_SLEEP = 0.001


def flood_task(source: int, count: int) -> dict[str, float]:
    start_rss = _common.current_rss_kib()
    logger = logging.getLogger(_common.LOGGER_NAME)
    started = time.monotonic()
    _common.log_records(logger, source, count)
    last_call = time.monotonic()
    return {
        "start_rss_kib": start_rss,
        "peak_rss_kib": _common.peak_rss_kib(),
        "loop_seconds": last_call - started,
        "last_call": last_call,
    }


def noop() -> int:
    return os.getpid()


def recipe_initializer(queue: Any) -> None:
    _common.reset_root_logger().addHandler(logging.handlers.QueueHandler(queue))


class DispatchByName(logging.Handler):
    def handle(self, record: logging.LogRecord) -> bool:
        logging.getLogger(record.name).handle(record)
        return True


class SlowFileHandler(logging.FileHandler):
    """Writes like a FileHandler, sleeps like a slow network; notes the last record's time."""

    def __init__(self, path: str, expected: int) -> None:
        super().__init__(path, encoding="utf-8")
        self.expected = expected
        self.count = 0
        self.last_handled = 0.0
        self.done = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        self.count += 1
        if self.count % SLOW_EVERY == 0:
            time.sleep(SLOW_SLEEP)
        if self.count >= self.expected:
            self.last_handled = time.monotonic()
            self.done.set()


def trial(spec: dict[str, Any]) -> dict[str, Any]:
    config: str = spec["config"]
    workers: int = spec["workers"]
    per_worker: int = spec["per_worker"]
    context = multiprocessing.get_context(spec["start_method"])
    directory = tempfile.mkdtemp(prefix="logexec-bench-")
    path = os.path.join(directory, "out.log")
    root = _common.reset_root_logger()
    handler = SlowFileHandler(path, workers * per_worker)
    handler.setFormatter(_common.make_formatter("plain"))
    root.addHandler(handler)
    parent_start_rss = _common.current_rss_kib()

    listener = None
    executor: concurrent.futures.ProcessPoolExecutor
    if config == "recipe":
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
        # Start every worker first, so that each flood task runs in its own process.
        pids = {future.result() for future in [executor.submit(noop) for _ in range(workers * 4)]}
        futures = [executor.submit(flood_task, source, per_worker) for source in range(workers)]
        reports = [future.result() for future in futures]
        if not handler.done.wait(timeout=300):
            raise RuntimeError(f"only {handler.count} records arrived")
    if listener is not None:
        listener.stop()
    handler.close()
    correctness = _common.verify(path, [per_worker] * workers, "plain")
    shutil.rmtree(directory, ignore_errors=True)
    return {
        **spec,
        "worker_pids": len(pids),
        "worker_start_rss_mib": max(r["start_rss_kib"] for r in reports) / 1024,
        "worker_peak_rss_mib": max(r["peak_rss_kib"] for r in reports) / 1024,
        "worker_growth_mib": max(r["peak_rss_kib"] - r["start_rss_kib"] for r in reports) / 1024,
        "loop_seconds": max(r["loop_seconds"] for r in reports),
        "drain_seconds": handler.last_handled - max(r["last_call"] for r in reports),
        "parent_start_rss_mib": parent_start_rss / 1024,
        "parent_peak_rss_mib": _common.peak_rss_kib() / 1024,
        **correctness.as_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 5k records per worker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--per-worker", type=int, default=25_000, help="records each worker logs")
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
    if args.quick:
        args.repeats, args.per_worker = 2, 5_000

    print(_common.environment_line())
    print(f"logexec at {_common.logexec_revision()}; start method {args.start_method}")
    base = {"workers": args.workers, "per_worker": args.per_worker, "start_method": args.start_method}
    configs = (*CONFIGS, "alt") if args.alt_logexec else CONFIGS

    def spec_for(config: str) -> dict[str, Any]:
        return {**base, "config": config, **({"pythonpath": args.alt_logexec} if config == "alt" else {})}

    for config in configs:  # warm-up, discarded
        _common.run_trial(__file__, {**spec_for(config), "per_worker": 1_000})
    shuffler = random.Random(args.seed)
    results: list[dict[str, Any]] = []
    for round_number in range(args.repeats):
        specs = [spec_for(config) for config in configs]
        shuffler.shuffle(specs)
        for spec in specs:
            result = _common.run_trial(__file__, spec)
            result["round"] = round_number
            results.append(result)
            print(
                f"round {round_number} {spec['config']:8} "
                f"worker peak {result['worker_peak_rss_mib']:6.1f} MiB "
                f"(+{result['worker_growth_mib']:.1f}) parent peak {result['parent_peak_rss_mib']:6.1f} MiB "
                f"loop {result['loop_seconds']:.2f} s drain {result['drain_seconds']:.3f} s",
                flush=True,
            )
    text = report(args, results)
    print()
    print(text)
    if not args.no_save:
        name = "bench_memory_alt" if args.alt_logexec else "bench_memory"
        _common.write_section(name, text, sys.argv)
        _common.save_json(name, results)


FIELDS = (
    ("worker_start_rss_mib", "worker RSS at start (MiB)", "{:.1f}"),
    ("worker_peak_rss_mib", "worker peak RSS (MiB)", "{:.1f}"),
    ("worker_growth_mib", "worker growth (MiB)", "{:.1f}"),
    ("parent_start_rss_mib", "parent RSS at start (MiB)", "{:.1f}"),
    ("parent_peak_rss_mib", "parent peak RSS (MiB)", "{:.1f}"),
    ("loop_seconds", "log loop (s)", "{:.2f}"),
    ("drain_seconds", "drain (s)", "{:.3f}"),
)


def _cell(values: list[float], form: str) -> str:
    return f"{form.format(_common.median(values))} ({_common.spread(values)})"


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> str:
    columns: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        for field, _, _ in FIELDS:
            columns[result["config"]][field].append(result[field])
    rows = []
    for config in (*CONFIGS, "alt"):
        runs = [r for r in results if r["config"] == config]
        if not runs:
            continue
        errors = sum(r["missing"] + r["duplicated"] + r["corrupt"] for r in runs)
        rows.append([config] + [_cell(columns[config][field], form) for field, _, form in FIELDS] + [errors])
    return "\n".join(
        [
            "## Memory and drain under a flood (bench_memory.py)",
            "",
            _common.environment_line() + f"; logexec at {_common.revision_note(args)}; "
            f"W={args.workers}, {args.per_worker:,} records per worker, start method {args.start_method}; "
            f"slow handler: 1 ms sleep every {SLOW_EVERY} records; {args.repeats} interleaved rounds; "
            "medians (min-max). Worker figures are the largest of the workers in each run.",
            "",
            _common.markdown_table(
                ["config", *(title for _, title, _ in FIELDS), "missing+dup+corrupt"],
                rows,
            ),
        ]
    )


if __name__ == "__main__":
    main()
