"""CPython 3.14's subinterpreters: LoggingInterpreterPoolExecutor.

``concurrent.futures.InterpreterPoolExecutor`` runs each task in its own interpreter, in
this process, in parallel. Every interpreter has its own ``logging`` without your
configuration, so with the stdlib's executor the tasks' records miss your file and land on
stderr, unformatted. ``LoggingInterpreterPoolExecutor`` is the same executor whose
interpreters' records are handled by this (the main) interpreter's logging: your handlers,
formats and levels, and each task's records are handled when its ``result()`` returns.

Run (CPython 3.14 or newer): python3.14 examples/interpreters_example.py
"""

from __future__ import annotations

import logging
import sys

if sys.version_info < (3, 14):
    sys.exit(f"this example needs CPython 3.14 or newer; this is {sys.version.split()[0]}")

from logexec import LoggingInterpreterPoolExecutor

log = logging.getLogger("example.interpreters")


def checksum(number: int) -> int:
    """A task: module-level, so that each interpreter can import it from this script."""
    total = sum(i * i for i in range(number * 10_000))
    log.info("checksum(%d) = %d", number, total)
    if number == 3:
        log.warning("3 is my least favourite number")
    return total


def main() -> None:
    # The main interpreter's configuration: it formats every task's record, and its levels
    # decide in the interpreters too (a DEBUG record here is not even made there).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    with LoggingInterpreterPoolExecutor(max_workers=2) as executor:
        results = list(executor.map(checksum, range(1, 6)))
    log.info("results: %s", results)


if __name__ == "__main__":
    main()
