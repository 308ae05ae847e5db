"""Task functions for tests/test_dask.py: module-level, so Dask workers import them by name."""

from __future__ import annotations

import contextvars
import datetime
import logging
import os
import threading
import uuid
from typing import Any

# Propagated into tasks by tests that use propagate_contextvars.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")

LOGGER = logging.getLogger("tests.dask")


def log_messages(tag: str, count: int, level: int = logging.WARNING) -> str:
    """Log ``count`` numbered records tagged ``tag``; return the tag."""
    for index in range(count):
        LOGGER.log(level, "%s %d", tag, index)
    return tag


def log_to(name: str, level: int, message: str) -> None:
    logging.getLogger(name).log(level, message)


def log_then_raise(tag: str) -> None:
    LOGGER.warning("%s before", tag)
    raise ValueError(f"{tag} failed")


def log_rich_record() -> str:
    """Log one record with args, an exception, a stack and unsafe extras."""
    try:
        raise KeyError("boom")
    except KeyError:
        LOGGER.error(
            "merged %s and %d",
            "text",
            42,
            exc_info=True,
            stack_info=True,
            extra={
                "when": datetime.datetime(2024, 1, 2, 3, 4, 5),
                "lock": threading.Lock(),
                "plain": {"a": 1},
            },
        )
    return "done"


def log_request_id() -> str:
    value = REQUEST_ID.get("unset")
    LOGGER.warning("request %s", value)
    return value


def log_once_and_identify(tag: str) -> str:
    """Log one record; return something unique to this run."""
    run = uuid.uuid4().hex
    LOGGER.warning("%s run %s", tag, run)
    return run


def worker_logging_state() -> dict[str, Any]:
    """The worker's root handlers and explicit levels (for the clean-up test)."""
    manager = logging.root.manager
    levels = {
        name: logger.level
        for name, logger in list(manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET
    }
    levels[""] = logging.root.level
    return {
        "pid": os.getpid(),
        "root_handlers": [type(handler).__qualname__ for handler in logging.root.handlers],
        "levels": levels,
        "disable": manager.disable,
    }


def add(left: int, right: int) -> int:
    return left + right


class Unsendable:
    """A value that no serializer can send."""

    def __reduce__(self) -> Any:
        raise TypeError("Unsendable cannot be pickled")


def log_then_return_unsendable(tag: str) -> Unsendable:
    LOGGER.warning("%s before", tag)
    return Unsendable()


def log_badly_formatted() -> str:
    """A log call whose arguments do not match its format: the task must not notice."""
    LOGGER.warning("%d items", "not a number")
    return "survived"


def log_from_threads(tag: str) -> str:
    """Log from a thread started in the task's context and from one started without it."""
    import contextvars

    with_context = threading.Thread(
        target=contextvars.copy_context().run, args=(LOGGER.warning, f"{tag} inside")
    )
    without_context = threading.Thread(target=LOGGER.warning, args=(f"{tag} outside",))
    for thread in (with_context, without_context):
        thread.start()
        thread.join(timeout=10)
    return tag


def sleep_then_log(seconds: float, tag: str) -> str:
    import time

    time.sleep(seconds)
    LOGGER.warning("%s slept", tag)
    return tag


class Unreportable(Exception):
    """An exception that neither pickles nor has a usable repr."""

    def __reduce__(self) -> Any:
        raise TypeError("Unreportable cannot be pickled")

    def __repr__(self) -> str:
        raise ValueError("Unreportable has no repr")

    __str__ = __repr__


def log_then_raise_unreportable(tag: str) -> None:
    LOGGER.warning("%s before", tag)
    raise Unreportable()


def log_then_sleep(tag: str, seconds: float) -> str:
    """Log one record at once, then keep running: the record must not wait for the end."""
    import time

    LOGGER.warning("%s started", tag)  # after a quiet spell: sent at once
    LOGGER.warning("%s still starting", tag)  # right after: waits for the worker's flush timer
    time.sleep(seconds)
    return tag


def fail_until_attempt(counter_path: str, succeed_on: int, tag: str) -> str:
    """Count attempts in a file (attempts may run on different workers); raise until ``succeed_on``."""
    with open(counter_path, "a+") as counter:
        counter.seek(0)
        attempt = len(counter.read()) + 1
        counter.write("x")
    LOGGER.warning("%s attempt %d", tag, attempt)
    if attempt < succeed_on:
        raise RuntimeError(f"{tag} attempt {attempt} failed")
    return f"{tag} succeeded on attempt {attempt}"


def log_many_then_raise(tag: str, count: int) -> None:
    log_messages(tag, count)
    raise LookupError(f"{tag} failed after {count} records")


def raise_for_the_scheduler(tag: str) -> None:
    raise ZeroDivisionError(f"{tag} erred")


def log_at_times(count: int, gap: float) -> int:
    """Log ``count`` records ``gap`` seconds apart (for latency)."""
    import time

    for index in range(count):
        LOGGER.warning("tick %d", index)
        time.sleep(gap)
    return count


def worker_pid() -> int:
    return os.getpid()


def die_on_first_attempt(counter_path: str, tag: str) -> str:
    """Log, give the record time to leave, then kill this worker process on the first attempt."""
    import time

    with open(counter_path, "a+") as counter:
        counter.seek(0)
        attempt = len(counter.read()) + 1
        counter.write("x")
    LOGGER.warning("%s attempt %d", tag, attempt)
    if attempt == 1:
        time.sleep(1.0)  # the record goes at once (quiet spell); Dask's stream writes within ms
        os._exit(1)
    return tag
