"""multiprocessing.Pool with logging: replace ``multiprocessing.Pool`` with ``logexec.Pool``.

Workers log as usual; every record is handled by the parent's logging configuration (here
basicConfig's one stream handler), whole and exactly once. When ``map`` returns, when
``get()`` returns and when a callback runs, the records of the tasks behind that result
have already been handled.

Run: python3 examples/pool_example.py
"""

from __future__ import annotations

import logging
import os

import logexec

log = logging.getLogger("example.pool")


def square(number: int) -> int:
    """A task: module-level, so that spawn and forkserver workers can import it."""
    log.info("squaring %d in process %d", number, os.getpid())
    return number * number


def add(a: int, b: int) -> int:
    log.info("adding %d and %d", a, b)
    return a + b


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(processName)-18s %(levelname)-7s %(name)s: %(message)s"
    )
    log.info("parent %d starting the pool", os.getpid())
    # maxtasksperchild: workers are replaced as they go; none of their records is lost.
    with logexec.Pool(processes=2, maxtasksperchild=4) as pool:
        squares = pool.map(square, range(6))
        sums = pool.starmap(add, [(1, 2), (3, 4)])
        lazy = list(pool.imap_unordered(square, range(3)))
        result = pool.apply_async(square, (10,), callback=lambda value: log.info("callback got %d", value))
        log.info("square(10) = %d", result.get(timeout=30))
        pool.close()
        pool.join()
    print(f"squares: {squares}, sums: {sums}, unordered: {sorted(lazy)}")


if __name__ == "__main__":
    main()
