"""``handlers=[...]``: send the workers' records to exactly these handlers.

By default a worker's record goes to ``logging.getLogger(record.name).handle(record)`` in
the parent, as if the call had been made there. With ``handlers=`` it goes to exactly the
given handlers instead (each respecting its own level), the way a ``QueueListener`` does,
and never to root's handlers. The parent's own records are untouched.

Run: python3 examples/own_handlers.py
"""

from __future__ import annotations

import logging
import sys

from logexec import LoggingProcessPoolExecutor


class ListHandler(logging.Handler):
    """Keeps the records it handles."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def crunch(job: int) -> int:
    logger = logging.getLogger("example.crunch")
    logger.info("job %d started", job)
    if job % 2:
        logger.warning("job %d is odd", job)
    return job


def main() -> None:
    # The application's usual configuration: the workers' records will not go here.
    logging.basicConfig(level=logging.INFO, format="root handler: %(message)s")

    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("worker %(process)d %(levelname)s %(message)s"))
    warnings_only = ListHandler(level=logging.WARNING)

    with LoggingProcessPoolExecutor(max_workers=2, handlers=[console, warnings_only]) as executor:
        done = [future.result(timeout=30) for future in [executor.submit(crunch, job) for job in range(4)]]

    logging.getLogger("example").info("the parent's own records still go to root: %d jobs done", len(done))
    print(f"warnings kept by the WARNING-level handler: {[r.getMessage() for r in warnings_only.records]}")


if __name__ == "__main__":
    main()
