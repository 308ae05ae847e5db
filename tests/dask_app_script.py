"""A user's script that configures logging at module level, run by tests/test_dask.py.

Dask's nanny starts workers that import this module, so the configuration below runs in
every worker too. ``LOGEXEC_TEST_APP_LOG`` is the log file, ``LOGEXEC_TEST_APP_MODE`` is
``basic`` (``basicConfig``), ``dict`` (``dictConfig`` with a handler on a named logger) or
``dict-isolated`` (the same, the logger not propagating).
"""

from __future__ import annotations

import logging
import logging.config
import os

LOG_PATH = os.environ["LOGEXEC_TEST_APP_LOG"]
MODE = os.environ["LOGEXEC_TEST_APP_MODE"]
RECORDS = 40

if MODE == "basic":
    logging.basicConfig(filename=LOG_PATH, level=logging.INFO, format="%(name)s %(message)s")
else:
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(name)s %(message)s"}},
            "handlers": {
                "file": {"class": "logging.FileHandler", "filename": LOG_PATH, "formatter": "plain"}
            },
            "loggers": {"app": {"handlers": ["file"], "level": "INFO", "propagate": MODE == "dict"}},
        }
    )

LOGGER = logging.getLogger("app")


def task(index: int) -> int:
    """Log one record of the app, and one of Dask's own worker logger."""
    LOGGER.info("task record %d", index)
    logging.getLogger("distributed.worker").warning("dask worker record %d", index)
    return index


def main() -> None:
    import distributed

    from logexec.dask import LoggingDaskExecutor

    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
        LoggingDaskExecutor(client) as executor,
    ):
        futures = [executor.submit(task, index) for index in range(RECORDS)]
        if [future.result(timeout=60) for future in futures] != list(range(RECORDS)):
            raise SystemExit("wrong results")


if __name__ == "__main__":
    main()
