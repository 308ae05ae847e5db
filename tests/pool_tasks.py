"""Tasks for tests/test_pool.py and tests/test_mp_context.py: module-level, for spawn workers."""

from __future__ import annotations

import contextvars
import logging
import os
import signal
import threading
import time
from typing import Any

log = logging.getLogger("tests.pool")

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("pool_request_id")


def log_and_return(value: int, n: int = 1) -> int:
    """Log n records tagged with value; return value."""
    for counter in range(n):
        log.info("value %d record %d", value, counter, extra={"value": value, "counter": counter})
    return value


def add(a: int, b: int) -> int:
    log.info("adding %d and %d", a, b)
    return a + b


def log_then_raise(value: int) -> int:
    log.info("before raising %d", value)
    raise ValueError(f"failed on {value}")


def pid_after_logging(value: int) -> int:
    log.info("value %d in %d", value, os.getpid())
    return os.getpid()


def enabled_levels() -> list[str]:
    """Log at DEBUG, INFO and WARNING; return the levels enabled here."""
    enabled = []
    for level in (logging.DEBUG, logging.INFO, logging.WARNING):
        log.log(level, "at %s", logging.getLevelName(level))
        if log.isEnabledFor(level):
            enabled.append(logging.getLevelName(level))
    return enabled


def read_request_id(value: int) -> str:
    seen = request_id.get("unset")
    log.info("value %d sees %s", value, seen)
    return seen


def log_unpicklable_extra(value: int) -> int:
    log.info("with a lock in extra", extra={"lock": threading.Lock(), "value": value})
    return value


def log_then_kill_self(n: int) -> int:
    """Log n records, then die by SIGKILL (the pool replaces this worker; the task hangs)."""
    for counter in range(n):
        log.info("doomed record %d", counter)
    os.kill(os.getpid(), signal.SIGKILL)
    return n


def log_forever(marker: str) -> None:
    """Log numbered records until killed; the marker file says logging has begun."""
    counter = 0
    while True:
        log.info("endless record %d", counter)
        counter += 1
        if counter == 10:
            with open(marker, "w", encoding="utf-8") as file:
                file.write(str(os.getpid()))
        time.sleep(0.001)


def initializer_logs(tag: str) -> None:
    log.info("initializer %s in %d", tag, os.getpid())


def root_handler_count() -> int:
    return len(logging.getLogger().handlers)


def dataloader_worker(index_queue: Any, data_queue: Any, done_event: Any, worker_id: int) -> None:
    """The loop a DataLoader-like library runs in each worker: indices in, samples out."""
    log.info("worker %d starting", worker_id)
    while not done_event.is_set():
        index = index_queue.get(timeout=30)
        if index is None:  # the sentinel
            break
        log.info("worker %d loads sample %d", worker_id, index)
        data_queue.put((index, index * index))
    log.info("worker %d done", worker_id)


def process_target(n: int, tag: str) -> None:
    for counter in range(n):
        log.info("%s record %d", tag, counter)


def slow_records(n: int, tag: str, pause: float, progress: str = "") -> int:
    """Log n numbered records, pausing between them: still logging when the parent exits.

    With ``progress``, each record's number is appended to that file once its log call
    has returned: the records the parent must have.
    """
    fd = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_APPEND) if progress else -1
    for counter in range(n):
        log.info("%s record %d", tag, counter)
        if fd >= 0:
            os.write(fd, f"{counter}\n".encode())
        time.sleep(pause)
    return n


def log_then_exit(n: int, code: int) -> int:
    """Log n records, then end the worker with os._exit(code)."""
    for counter in range(n):
        log.warning("exiting record %d", counter)
    os._exit(code)


def log_then_die_on_item(item: int, doomed: int) -> int:
    """A map's item: log one record; the doomed item's worker dies by SIGKILL."""
    log.warning("item %d", item)
    if item == doomed:
        os.kill(os.getpid(), signal.SIGKILL)
    return item


def fail_to_initialize() -> None:
    raise ValueError("an initializer that fails")


def enabled_levels_after(pause: float) -> list[str]:
    """``enabled_levels``, after ``pause`` seconds (the parent changes a level meanwhile)."""
    time.sleep(pause)
    return enabled_levels()
