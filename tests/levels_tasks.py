"""Task functions for the level tests. Module-level: spawn imports them."""

from __future__ import annotations

import logging


def levels_of(names: list[str]) -> dict[str, tuple[int, int]]:
    """Each logger's own level and effective level here, and logging.disable's level."""
    seen = {
        name: (logging.getLogger(name or None).level, logging.getLogger(name).getEffectiveLevel())
        for name in names
    }
    seen["<disable>"] = (logging.root.manager.disable, 0)
    return seen


def set_level(name: str, level: int) -> None:
    """Set a level in this worker only, as a library it imports might."""
    logging.getLogger(name).setLevel(level)


def levels_in_a_nested_pool(name: str) -> tuple[int, int]:
    """In a worker: make a fork pool of its own, set ``name``'s level, and read it there.

    The inner workers are forked from this worker, whose level bookkeeping (the version it
    applied last, among others) belongs to the outer pool, not to the inner one.
    """
    import multiprocessing

    from logexec import LoggingProcessPoolExecutor

    with LoggingProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as inner:
        inner.submit(levels_of, [name]).result(timeout=60)  # the inner worker is forked now
        logging.getLogger(name).setLevel(logging.DEBUG)
        return inner.submit(levels_of, [name]).result(timeout=60)[name]


def log_info(message: str) -> None:
    """Log ``message`` at INFO on tests.levels.init (a user initializer, or a task)."""
    logging.getLogger("tests.levels.init").info(message)
