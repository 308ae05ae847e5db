"""Records/s and latency from Dask tasks to the driver's handler: LoggingDaskExecutor vs forward_logging.

One loopback ``LocalCluster(processes=True)``; every round runs each configuration once,
in alternating order, over the same records to the same driver handler (formatted and
written to os.devnull), and counts what arrived. Printed: the median records/s of each
configuration, and the median of the per-round ratio logexec / forward_logging, so that
noise common to a round cancels out.

Configurations:

* ``driver``: the same records logged in the driver itself (the single-writer ceiling);
* ``logexec``: ``LoggingDaskExecutor``, timed until every future has returned (which,
  by its guarantee, means every record was handled);
* ``forward_logging``: ``client.forward_logging()`` and ``client.submit(..., pure=False)``,
  timed until the last record has been handled (records trail the results there), with a
  timeout after which the missing ones count as lost.

Latency: in each round and for each pace in ``--latency-gaps``, two tasks per configuration
log ``--latency-records`` records each, one every ``gap`` seconds, and the driver's handler
notes ``time.time() - record.created`` (one machine, one clock). Printed: the median over
rounds of each round's median and 99th percentile.

Run: ``python benchmarks/bench_dask.py [--records 20000] [--tasks 8] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import threading
import time
from typing import Any

LOGGER_NAME = "bench.dask"
LATENCY_LOGGER_NAME = "bench.dask.latency"
# How long forward_logging gets, after its tasks returned, to deliver the rest.
FORWARD_GRACE_SECONDS = 60.0


def emit(count: int, tag: str) -> int:
    """The task: log ``count`` INFO records with arguments to merge."""
    logger = logging.getLogger(LOGGER_NAME)
    for index in range(count):
        logger.info("record %d of %s: %s", index, tag, "payload")
    return count


def emit_forwarded(count: int, tag: str) -> int:
    # forward_logging does not mirror levels: without this, INFO never leaves the worker.
    logging.getLogger(LOGGER_NAME).setLevel(logging.INFO)
    return emit(count, tag)


def emit_paced(count: int, gap: float, set_level: bool) -> int:
    """The latency task: log ``count`` records, one every ``gap`` seconds."""
    logger = logging.getLogger(LATENCY_LOGGER_NAME)
    if set_level:  # forward_logging: see emit_forwarded
        logging.getLogger(LOGGER_NAME).setLevel(logging.INFO)
    for index in range(count):
        logger.info("paced record %d", index)
        time.sleep(gap)
    return count


class LatencyHandler(logging.Handler):
    """Notes how long after its log call each record reached the driver's handler."""

    def __init__(self) -> None:
        super().__init__()
        self.delays: list[float] = []
        self.target = 0
        self.reached = threading.Event()

    def expect(self, target: int) -> None:
        self.delays = []
        self.target = target
        self.reached.clear()

    def emit(self, record: logging.LogRecord) -> None:
        self.delays.append(time.time() - record.created)
        if len(self.delays) >= self.target:
            self.reached.set()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class CountingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Formats and writes to os.devnull, and counts, so that losses show."""

    def __init__(self) -> None:
        super().__init__(open(os.devnull, "w"))  # noqa: SIM115 - closed in close()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"))
        self.count = 0
        self.target = 0
        self.reached = threading.Event()

    def expect(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.reached.clear()

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        self.count += 1
        if self.count >= self.target:
            self.reached.set()

    def close(self) -> None:
        self.stream.close()
        super().close()


def run_driver(handler: CountingHandler, records: int, tasks: int) -> tuple[float, int]:
    handler.expect(records)
    logger = logging.getLogger(LOGGER_NAME)
    per_task = records // tasks
    start = time.perf_counter()
    for task in range(tasks):
        for index in range(per_task):
            logger.info("record %d of %s: %s", index, f"t{task}", "payload")
    return time.perf_counter() - start, handler.count


def run_logexec(client: Any, handler: CountingHandler, records: int, tasks: int) -> tuple[float, int]:
    from logexec.dask import LoggingDaskExecutor

    handler.expect(records)
    per_task = records // tasks
    with LoggingDaskExecutor(client) as executor:
        start = time.perf_counter()
        futures = [executor.submit(emit, per_task, f"t{task}") for task in range(tasks)]
        for future in futures:
            future.result(timeout=300)
        elapsed = time.perf_counter() - start
    return elapsed, handler.count


def run_forward(client: Any, handler: CountingHandler, records: int, tasks: int) -> tuple[float, int]:
    handler.expect(records)
    per_task = records // tasks
    client.forward_logging()
    try:
        start = time.perf_counter()
        futures = [client.submit(emit_forwarded, per_task, f"t{task}", pure=False) for task in range(tasks)]
        client.gather(futures)
        handler.reached.wait(timeout=FORWARD_GRACE_SECONDS)
        elapsed = time.perf_counter() - start
    finally:
        client.unforward_logging()
    return elapsed, handler.count


def latency_logexec(client: Any, handler: LatencyHandler, count: int, gap: float) -> list[float]:
    from logexec.dask import LoggingDaskExecutor

    handler.expect(2 * count)
    with LoggingDaskExecutor(client) as executor:
        futures = [executor.submit(emit_paced, count, gap, False) for _ in range(2)]
        for future in futures:
            future.result(timeout=300)
    return list(handler.delays)


def latency_forward(client: Any, handler: LatencyHandler, count: int, gap: float) -> list[float]:
    handler.expect(2 * count)
    client.forward_logging()
    try:
        futures = [client.submit(emit_paced, count, gap, True, pure=False) for _ in range(2)]
        client.gather(futures)
        handler.reached.wait(timeout=FORWARD_GRACE_SECONDS)
    finally:
        client.unforward_logging()
    return list(handler.delays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000, help="records per configuration per round")
    parser.add_argument("--tasks", type=int, default=8, help="tasks the records are spread over")
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds (after one warm-up)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument(
        "--latency-gaps",
        default="0.1,0.005",
        help="comma-separated seconds between two records of a latency task (0 or empty: no latency)",
    )
    parser.add_argument("--latency-records", type=int, default=40, help="records per latency task")
    arguments = parser.parse_args(argv)
    gaps = [float(gap) for gap in arguments.latency_gaps.split(",") if gap.strip() and float(gap) > 0]
    if arguments.records % arguments.tasks:
        parser.error(
            f"--records must be a multiple of --tasks, got {arguments.records} and {arguments.tasks}"
        )

    from distributed import Client, LocalCluster

    handler = CountingHandler()
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = False
    latency_handler = LatencyHandler()
    latency_logger = logging.getLogger(LATENCY_LOGGER_NAME)
    latency_logger.addHandler(latency_handler)
    latency_logger.propagate = False
    # (config, gap) -> per-round (median, p99) in seconds
    latencies: dict[tuple[str, float], list[tuple[float, float]]] = {}

    rates: dict[str, list[float]] = {"driver": [], "logexec": [], "forward_logging": []}
    lost: dict[str, int] = dict.fromkeys(rates, 0)
    ratios: list[float] = []
    with (
        LocalCluster(
            n_workers=arguments.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
    ):
        runners = {
            "driver": lambda: run_driver(handler, arguments.records, arguments.tasks),
            "logexec": lambda: run_logexec(client, handler, arguments.records, arguments.tasks),
            "forward_logging": lambda: run_forward(client, handler, arguments.records, arguments.tasks),
        }
        for round_number in range(arguments.repeats + 1):
            order = list(runners) if round_number % 2 else list(reversed(runners))
            round_rates = {}
            for name in order:
                elapsed, arrived = runners[name]()
                round_rates[name] = arrived / elapsed
                if round_number:  # round 0 is the warm-up
                    rates[name].append(round_rates[name])
                    lost[name] += arguments.records - arrived
            if round_number:
                ratios.append(round_rates["logexec"] / round_rates["forward_logging"])
            latency_runners = {
                "logexec": latency_logexec,
                "forward_logging": latency_forward,
            }
            for gap in gaps:
                names = list(latency_runners) if round_number % 2 else list(reversed(latency_runners))
                for name in names:
                    delays = latency_runners[name](client, latency_handler, arguments.latency_records, gap)
                    if round_number and delays:
                        latencies.setdefault((name, gap), []).append(
                            (statistics.median(delays), percentile(delays, 0.99))
                        )

    total = arguments.records * arguments.repeats
    print(
        f"{arguments.records} records in {arguments.tasks} tasks per round, {arguments.repeats} rounds, "
        f"{arguments.workers} workers, Python {sys.version.split()[0]}"
    )
    print(f"{'configuration':<18}{'median records/s':>18}{'lost':>14}")
    for name, values in rates.items():
        print(f"{name:<18}{statistics.median(values):>18,.0f}{lost[name]:>9} of {total}")
    print(f"logexec / forward_logging, median of per-round ratios: {statistics.median(ratios):.2f}x")
    if latencies:
        print(
            f"latency, log call to driver handler ({arguments.latency_records} records in each of 2 "
            "tasks per round; median over rounds)"
        )
        print(f"{'configuration':<18}{'gap':>8}{'median ms':>12}{'p99 ms':>10}")
        for (name, gap), values in sorted(latencies.items(), key=lambda item: (-item[0][1], item[0][0])):
            median = statistics.median(value[0] for value in values)
            p99 = statistics.median(value[1] for value in values)
            print(f"{name:<18}{gap:>7.3f}s{median * 1000:>12.1f}{p99 * 1000:>10.1f}")
    handler.close()
    return 0 if lost["logexec"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
