"""The one place where logexec reads logging state that has no public accessor.

``logging`` offers no public way to list existing loggers or to read the level given to
``logging.disable``. Both live on the logger manager, unchanged from 3.9 to 3.14; the
tests in ``tests/test_compat.py`` pin that on every Python we support.
"""

from __future__ import annotations

import logging


def existing_loggers() -> list[logging.Logger]:
    """Every logger created so far, root first, skipping placeholders."""
    manager = logging.root.manager
    # list() first: another thread may create a logger while we iterate.
    named = [logger for logger in list(manager.loggerDict.values()) if isinstance(logger, logging.Logger)]
    return [logging.root, *named]


def disabled_level() -> int:
    """The level most recently passed to ``logging.disable`` (0 when none is in force)."""
    level: int = logging.root.manager.disable
    return level


def explicit_levels() -> dict[str, int]:
    """The level of root and of every logger whose level was set explicitly."""
    levels = {"": logging.root.level}
    for logger in existing_loggers()[1:]:
        if logger.level != logging.NOTSET:
            levels[logger.name] = logger.level
    return levels


def wake_executor_manager(executor: object) -> bool:
    """Make a ``ProcessPoolExecutor``'s manager thread look at its workers again.

    CPython's manager thread waits on the sentinels of the workers it knew when it last
    woke. ``submit`` wakes it *before* spawning a new worker on demand (spawn and
    forkserver), so a worker started by the last submit is not watched: if it is killed,
    the pool never notices and ``result()`` hangs (measured here on 3.11 and 3.13: 6-7 hangs
    in 10 with a plain ``ProcessPoolExecutor``). The listener sees the dead worker's
    connection end, and calls this so that the manager collects the sentinels afresh.

    Returns False, having done nothing, when the executor's shutdown lock is busy; the
    caller tries again later. Do not change this to a blocking acquire: from 3.12 the
    manager thread holds that lock while it joins the workers, and a worker still in its
    initializer waits for the listener, so a listener blocked here deadlocks shutdown.
    """
    lock = getattr(executor, "_shutdown_lock", None)
    if lock is None:
        return True
    if not lock.acquire(blocking=False):
        return False
    # Under the lock, as the stdlib does it, so that shutdown cannot close the wake-up pipe
    # underneath us.
    try:
        wakeup = getattr(executor, "_executor_manager_thread_wakeup", None)
        if wakeup is not None:
            try:
                wakeup.wakeup()
            except (OSError, ValueError):
                pass  # closed by a shutdown that is already under way
    finally:
        lock.release()
    return True
