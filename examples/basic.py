"""Basic use: replace ProcessPoolExecutor with LoggingProcessPoolExecutor.

Workers log as usual; every record is handled by the parent's logging configuration (here
basicConfig's one stream handler), whole and exactly once. When ``result()`` returns, the
task's records have already been handled.

Run: python3 examples/basic.py
"""

from __future__ import annotations

import logging
import os

from logexec import LoggingProcessPoolExecutor

log = logging.getLogger("example.basic")


def square(number: int) -> int:
    """A task: module-level, so that spawn and forkserver workers can import it."""
    log.info("squaring %d in process %d", number, os.getpid())
    if number == 3:
        log.warning("3 is my least favourite number")
    return number * number


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(processName)-16s %(levelname)-7s %(name)s: %(message)s"
    )
    log.info("parent %d starting the pool", os.getpid())
    with LoggingProcessPoolExecutor(max_workers=2) as executor:
        results = list(executor.map(square, range(5), timeout=30))
        # The record that a task logged is handled before its result is available.
        future = executor.submit(square, 10)
        log.info("square(10) = %d", future.result(timeout=30))
    print(f"results: {results}")


if __name__ == "__main__":
    main()
