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
