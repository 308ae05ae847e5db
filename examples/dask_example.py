"""Dask tasks that log through the driver: LoggingDaskExecutor on a local two-worker cluster.

Run: ``python examples/dask_example.py`` (needs ``pip install 'logexec[dask]'``).

Every line printed with a worker's pid comes from a task on a worker process; it is printed
here, by this process's logging configuration, before the task's result is returned.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading

from distributed import Client, LocalCluster

from logexec.dask import LoggingDaskExecutor


def square(number: int) -> int:
    logger = logging.getLogger("example.square")
    logger.debug("squaring %d", number)  # DEBUG: sent only because the driver asks for it
    # A datetime stays a datetime; a lock (which cannot be pickled) arrives as its repr.
    logger.info("squared %d", number, extra={"at": datetime.datetime.now(), "lock": threading.Lock()})
    return number * number


def divide(number: int) -> float:
    logging.getLogger("example.divide").warning("about to divide 1 by %d", number)
    return 1 / number


def main() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s pid=%(process)d %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("example.square").setLevel(logging.DEBUG)
    print(f"driver pid={os.getpid()}")
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
        ) as cluster,
        Client(cluster) as client,
        LoggingDaskExecutor(client) as executor,
    ):
        # Identical calls both run (pure=False), and both log.
        print("squares:", list(executor.map(square, [1, 2, 3, 2])))
        future = executor.submit(divide, 0)
        try:
            future.result(timeout=30)
        except ZeroDivisionError as error:
            # The task's warning was printed above, before this exception arrived.
            print(f"divide(0) raised {error!r}, after its record was handled")


if __name__ == "__main__":
    main()
