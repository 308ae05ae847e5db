"""Task functions and crash helpers. Module-level, because spawn workers must import them."""

from __future__ import annotations

import contextvars
import ctypes
import faulthandler
import logging
import logging.handlers
import os
import select
import signal
import sys
import threading
import time
from typing import Any

log = logging.getLogger("tests.worker")

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_ID")
UNSET_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("UNSET_VAR")


class Unpicklable:
    """An object that refuses to pickle, with a recognisable repr."""

    def __reduce__(self) -> Any:
        raise TypeError("Unpicklable refuses to pickle")

    def __repr__(self) -> str:
        return "<Unpicklable thing>"


class UnpicklableError(Exception):
    """An exception that cannot cross a process boundary."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def identity(value: Any) -> Any:
    return value


def log_n(n: int, worker: int = 0, name: str = "tests.worker", level: int = logging.INFO) -> int:
    """Log n numbered records and return n."""
    logger = logging.getLogger(name)
    for counter in range(n):
        logger.log(
            level, "worker %d record %d", worker, counter, extra={"worker": worker, "counter": counter}
        )
    return n


def log_json_lines(worker: int, n: int, padding: int = 0) -> int:
    """Log n records whose message is a JSON object with worker and counter."""
    pad = "x" * padding
    for counter in range(n):
        log.info('{"worker": %d, "counter": %d, "pad": "%s"}', worker, counter, pad)
    return n


def log_levels() -> list[str]:
    """Log once at each level through two loggers; return which levels were enabled here."""
    enabled = []
    for name in ("tests.worker", "tests.noisy"):
        logger = logging.getLogger(name)
        for level in (logging.DEBUG, logging.INFO, logging.WARNING):
            logger.log(level, "%s at %s", name, logging.getLevelName(level))
            if logger.isEnabledFor(level):
                enabled.append(f"{name}:{logging.getLevelName(level)}")
    return enabled


def worker_logging_state() -> dict[str, Any]:
    """Describe this worker's logging set-up (the seed's handler check and more)."""
    root = logging.getLogger()
    named = [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and logger.name != "concurrent.futures"
    ]
    return {
        "root_handlers": [type(handler).__name__ for handler in root.handlers],
        "one_queue_handler": len(root.handlers) == 1
        and isinstance(root.handlers[0], logging.handlers.QueueHandler),
        "named_with_handlers": sorted(logger.name for logger in named if logger.handlers),
        "named_not_propagating": sorted(logger.name for logger in named if not logger.propagate),
        "named_with_filters": sorted(logger.name for logger in named if logger.filters),
        "root_level": root.level,
        "pid": os.getpid(),
    }


def log_exception(message: str) -> None:
    try:
        raise ValueError("the cause")
    except ValueError:
        log.exception(message)


def log_with_stack(message: str) -> None:
    log.info(message, stack_info=True)


def log_bad_things() -> str:
    """Log records with unpicklable args, extras and exceptions, and a broken format."""
    log.info("arg %s", Unpicklable())
    log.info("extra", extra={"thing": Unpicklable(), "fine": 7})
    try:
        raise UnpicklableError("cannot pickle me")
    except UnpicklableError:
        log.exception("exception")
    log.info("%d", "x")
    return "task finished"


def log_then_raise(n: int) -> None:
    log_n(n)
    raise KeyError("task failed on purpose")


def log_then_exit(n: int, worker: int = 0) -> None:
    """Log n records, then die at once without any clean-up."""
    log_n(n, worker)
    os._exit(3)


def log_then_segfault(n: int) -> None:
    log_n(n)
    # A fork worker inherits pytest's faulthandler, which writes straight to the terminal's
    # stderr (a descriptor pytest's capture does not redirect): a passing run would show a
    # "Fatal Python error: Segmentation fault" and a 45-line stack. The crash is the point of
    # the test, not news; the test still sees the worker die by SIGSEGV.
    faulthandler.disable()
    ctypes.string_at(0)


def log_then_wait(n: int, worker: int, started: Any) -> int:
    """Log n records, signal, then wait to be killed from outside."""
    log_n(n, worker)
    started.set()
    time.sleep(60)
    return n


def flood_until_killed(worker: int) -> None:
    """Log numbered records forever; the test kills this worker from outside."""
    logger = logging.getLogger("tests.flood")
    counter = 0
    while True:
        logger.info("flood", extra={"worker": worker, "counter": counter})
        counter += 1


def log_huge_then_killed(size: int) -> None:
    """Start sending one record of `size` bytes and get killed while it is being written.

    The test's parent holds its listener until this process is gone, so the big frame can
    never be written whole. The kill comes once the main thread is seen inside the
    channel's write, not after a fixed time: on a loaded machine a timer can fire before
    the record is even encoded (nothing cut off, nothing to report).
    """
    logger = logging.getLogger("tests.huge")
    logger.info("small before")
    threading.Thread(target=_kill_when_writing, args=(threading.get_ident(),), daemon=True).start()
    logger.info("%s", "y" * size)
    time.sleep(30)


def _kill_when_writing(thread_id: int) -> None:
    """SIGKILL this process once ``thread_id`` is inside the worker channel's ``_write``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(thread_id)
        while frame is not None and not (
            frame.f_code.co_name == "_write" and frame.f_code.co_filename.endswith("_worker.py")
        ):
            frame = frame.f_back
        if frame is not None:
            break
        time.sleep(0.005)
    # From the call into the frame's first bytes, which then stay in the parent's hands, is
    # microseconds of work; the write itself never ends while the parent holds its listener.
    time.sleep(0.1)
    os.kill(os.getpid(), signal.SIGKILL)


def wait_until_gone(pid: int, timeout: float) -> None:
    """Return once process ``pid`` has exited (or after ``timeout`` seconds)."""
    if not hasattr(os, "pidfd_open"):  # not Linux: until it is gone and reaped
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.01)
        return
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # gone already
    try:
        select.select([descriptor], [], [], timeout)
    finally:
        os.close(descriptor)


def initializer_logs_then_raises(n: int) -> None:
    log_n(n, name="tests.init")
    raise RuntimeError("initializer failed on purpose")


def initializer_logs(n: int) -> None:
    log_n(n, name="tests.init")


def read_var() -> str:
    return REQUEST_ID.get("<unset>")


def read_vars() -> tuple[str, str]:
    return REQUEST_ID.get("<unset>"), UNSET_VAR.get("<unset>")


def log_request(tag: str) -> str:
    log.info("handling %s", tag)
    return tag


def pid_and_log(n: int) -> int:
    log_n(n)
    return os.getpid()


def peak_rss_kib() -> int:
    """VmHWM of this process, in KiB (ru_maxrss would include the parent's across fork)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def flood_big(worker: int, n: int, size: int) -> tuple[int, int]:
    """Log n records of `size` bytes; return (records, peak RSS in KiB)."""
    payload = "z" * size
    logger = logging.getLogger("tests.flood")
    for counter in range(n):
        logger.info(payload, extra={"worker": worker, "counter": counter})
    return n, peak_rss_kib()


def log_from_thread(n: int) -> int:
    """Log from a second thread inside the task as well as from the task's thread."""
    thread = threading.Thread(target=log_n, args=(n, 1))
    thread.start()
    log_n(n, 0)
    thread.join(timeout=30)
    return 2 * n


def unpicklable_result() -> Any:
    log.info("about to return something unpicklable")
    return Unpicklable()


def raise_unpicklable(message: str) -> None:
    log.info("about to raise something unpicklable")
    raise UnpicklableError(message)


def sleep_then_log(seconds: float) -> None:
    time.sleep(seconds)
    log.info("after sleeping")


def fork_child_logs(n: int) -> int:
    """Fork a child that logs through the inherited set-up, as a task might."""
    pid = os.fork()
    if pid == 0:
        try:
            log_n(n, worker=99)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return n


def log_task_records(task: int, n: int) -> int:
    """Log n records numbered within task `task`; used by the soak test."""
    logger = logging.getLogger("tests.soak")
    for counter in range(n):
        logger.info("soak", extra={"task": task, "counter": counter})
    return n


def log_wait_for_file_then_log(path: str, n: int) -> int:
    """Log one record, wait (up to 60 s) until ``path`` exists, then log ``n`` more."""
    logger = logging.getLogger("tests.worker")
    logger.info("before the parent left")
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    for number in range(n):
        logger.info("after the parent left %d", number)
    return n
