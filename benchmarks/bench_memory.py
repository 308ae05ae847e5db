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

    executor, listener = _common.open_pool(config, workers, context)
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
    parser = _common.make_parser(__doc__, "smoke run: 2 rounds, 5k records per worker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--per-worker", type=int, default=25_000, help="records each worker logs")
    _common.add_run_arguments(parser)
    args = parser.parse_args()
    if _common.answer_trial(args, trial):
        return
    if args.quick:
        args.repeats, args.per_worker = 2, 5_000

    _common.print_header(args)
    base = {"workers": args.workers, "per_worker": args.per_worker, "start_method": args.start_method}
    configs = (*CONFIGS, "alt") if args.alt_logexec else CONFIGS

    def spec_for(config: str) -> dict[str, Any]:
        return {**base, "config": config, **({"pythonpath": args.alt_logexec} if config == "alt" else {})}

    for config in configs:  # warm-up, discarded
        _common.run_trial(__file__, {**spec_for(config), "per_worker": 1_000})
    results = _common.run_rounds(__file__, args, lambda: [spec_for(config) for config in configs], describe)
    _common.finish("bench_memory", args, report(args, results), results)


def describe(spec: dict[str, Any], result: dict[str, Any]) -> str:
    return (
        f"{spec['config']:8} "
        f"worker peak {result['worker_peak_rss_mib']:6.1f} MiB "
        f"(+{result['worker_growth_mib']:.1f}) parent peak {result['parent_peak_rss_mib']:6.1f} MiB "
        f"loop {result['loop_seconds']:.2f} s drain {result['drain_seconds']:.3f} s"
    )


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
