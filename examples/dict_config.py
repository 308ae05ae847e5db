"""An application configured with ``logging.config.dictConfig``, unchanged.

The configuration has a console handler, a file handler and per-logger levels: ``app.db``
at DEBUG and ``app.http`` at WARNING. Workers follow it exactly: their records go through
the parent's logger tree, and the levels are mirrored into each worker (under spawn too),
so a worker's ``app.http`` INFO call is dropped at the source, as it would be here.

Run: python3 examples/dict_config.py
"""

from __future__ import annotations

import logging
import logging.config
import os
import tempfile

from logexec import LoggingProcessPoolExecutor


def config(log_file: str) -> dict[str, object]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "short": {"format": "%(levelname)-7s %(name)s: %(message)s"},
            "full": {"format": "%(asctime)s %(process)d %(levelname)s %(name)s %(funcName)s: %(message)s"},
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "short", "level": "INFO"},
            "file": {
                "class": "logging.FileHandler",
                "filename": log_file,
                "formatter": "full",
                "level": "DEBUG",
            },
        },
        "loggers": {
            "app.db": {"level": "DEBUG"},
            "app.http": {"level": "WARNING"},
        },
        "root": {"level": "INFO", "handlers": ["console", "file"]},
    }


def handle_request(number: int) -> str:
    logging.getLogger("app.db").debug("query %d: SELECT 1", number)
    logging.getLogger("app.http").info("request %d (below app.http's WARNING: dropped)", number)
    if number == 2:
        logging.getLogger("app.http").warning("request %d was slow", number)
    logging.getLogger("app").info("request %d done", number)
    return f"response {number}"


def main() -> None:
    directory = tempfile.mkdtemp(prefix="logexec-example-")
    log_file = os.path.join(directory, "app.log")
    logging.config.dictConfig(config(log_file))
    with LoggingProcessPoolExecutor(max_workers=2) as executor:
        responses = list(executor.map(handle_request, range(3), timeout=30))
    logging.shutdown()  # flush and close the file handler
    print(f"\nresponses: {responses}")
    print(f"--- {log_file} (DEBUG and up, from the workers) ---")
    with open(log_file, encoding="utf-8") as stream:
        print(stream.read(), end="")
    os.remove(log_file)
    os.rmdir(directory)


if __name__ == "__main__":
    main()
