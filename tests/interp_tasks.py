"""Tasks for tests/test_interpreters.py: module-level, since each interpreter imports them."""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
from typing import Any

log = logging.getLogger("tests.interp")

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_ID")


class Unpicklable:
    """An object that refuses to pickle, with a recognisable repr."""

    def __reduce__(self) -> Any:
        raise TypeError("Unpicklable refuses to pickle")

    def __repr__(self) -> str:
        return "<Unpicklable marker>"


def log_some(count: int, tag: str = "task") -> int:
    for index in range(count):
        log.warning("%s record %d", tag, index)
    return count


def log_then_raise() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("it failed here")
    raise ValueError("the task's own error")


def log_info_and_warning() -> bool:
    log.info("an info record")
    log.warning("a warning record")
    return log.isEnabledFor(logging.INFO)


def log_unpicklable_extra() -> None:
    log.warning("with an odd extra", extra={"odd": Unpicklable(), "plain": 7})


def log_from_thread(in_context: bool = False) -> str:
    target: Any = log.warning
    if in_context:  # the task's context, as copy_context().run gives it
        target = functools.partial(contextvars.copy_context().run, log.warning)
    thread = threading.Thread(target=target, args=("from a thread of the task",), name="task-thread")
    thread.start()
    thread.join(timeout=30)
    return "joined"


def log_from_late_thread() -> str:
    def late() -> None:
        time.sleep(0.3)
        log.warning("after the task returned")

    threading.Thread(target=late, name="late-thread").start()
    return "started"


def log_in_initializer(text: str) -> None:
    log.warning("initializer says %s", text)


def read_request_id() -> str:
    return REQUEST_ID.get("unset")


def levels_of(names: list[str]) -> list[int]:
    """The levels this interpreter's loggers have (set, not effective)."""
    return [logging.getLogger(name).level for name in names]


def disabled_level() -> int:
    """The level this interpreter's logging.disable is at."""
    return logging.root.manager.disable


def set_level(name: str, level: int) -> None:
    """Set a level in this interpreter only, as a library it imports might."""
    logging.getLogger(name).setLevel(level)


def sleep_then_log() -> str:
    """Runs while the late thread of log_from_late_thread logs (it sleeps 0.3 s first)."""
    time.sleep(0.6)
    log.warning("slept")
    return "slept"
