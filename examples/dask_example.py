"""Dask tasks that log through the driver: LoggingDaskExecutor on a local two-worker cluster.

Run: ``python examples/dask_example.py`` (needs ``pip install 'logexec[dask]'``).

Every line printed with a worker's pid comes from a task on a worker process; it is printed
here, by this process's logging configuration, while the task runs, and always before the
task's result is returned. ``attempt`` is ``record.dask_attempt``: which run of the task
logged it (Dask's ``retries`` run a failed task again).
"""

from __future__ import annotations

import datetime
import logging
import os
import tempfile
import threading
import time

from distributed import Client, LocalCluster

from logexec.dask import LoggingDaskExecutor


def square(number: int) -> int:
    logger = logging.getLogger("example.square")
    logger.debug("squaring %d", number)  # DEBUG: sent only because the driver asks for it
    # A datetime stays a datetime; a lock (which cannot be pickled) arrives as its repr.
    logger.info("squared %d", number, extra={"at": datetime.datetime.now(), "lock": threading.Lock()})
    return number * number


def long_job(steps: int) -> str:
    """Progress lines appear in the driver as they are logged, not when the job ends."""
    logger = logging.getLogger("example.long_job")
    for step in range(1, steps + 1):
        logger.info("step %d of %d", step, steps)
        time.sleep(0.5)
    return "long job done"


def flaky(counter_path: str) -> str:
    """Fails on its first two runs (counted in a file: runs may land on different workers)."""
    with open(counter_path, "a+") as counter:
        counter.seek(0)
        run = len(counter.read()) + 1
        counter.write("x")
    logging.getLogger("example.flaky").warning("run %d starting", run)
    if run < 3:
        raise ConnectionError(f"run {run}: the service did not answer")
    return f"flaky succeeded on run {run}"


def divide(number: int) -> float:
    logging.getLogger("example.divide").warning("about to divide 1 by %d", number)
    return 1 / number


def default_attempt(record: logging.LogRecord) -> bool:
    """Records logged in the driver itself have no dask_attempt; give them one for the format."""
    record.__dict__.setdefault("dask_attempt", "-")
    return True


def main() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s pid=%(process)d attempt=%(dask_attempt)s %(levelname)-7s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(default_attempt)
    logging.getLogger("example.square").setLevel(logging.DEBUG)
    print(f"driver pid={os.getpid()}")
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
        ) as cluster,
        Client(cluster) as client,
        # retries=2 goes to every client.submit, as with client.get_executor(retries=2).
        LoggingDaskExecutor(client, retries=2) as executor,
        tempfile.TemporaryDirectory() as scratch,
    ):
        # Identical calls both run (pure=False), and both log.
        print("squares:", list(executor.map(square, [1, 2, 3, 2])))
        started = time.monotonic()
        print(executor.submit(long_job, 4).result(timeout=60), f"after {time.monotonic() - started:.1f}s")
        # Two failed runs, then a success: the records of all three runs were printed.
        print(executor.submit(flaky, os.path.join(scratch, "runs")).result(timeout=60))
        future = executor.submit(divide, 0)
        try:
            future.result(timeout=60)
        except ZeroDivisionError as error:
            # Dask saw an erred task (and retried it twice); every run's warning was printed
            # above, before this exception arrived.
            print(f"divide(0) raised {error!r}, after the records of its 3 runs were handled")


if __name__ == "__main__":
    main()
