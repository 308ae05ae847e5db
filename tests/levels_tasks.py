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
