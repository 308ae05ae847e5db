"""Tasks for tests/test_crash_notes.py and tests/test_capture.py: module-level, for spawn."""

from __future__ import annotations

import logging
import os
import signal
import time

log = logging.getLogger("tests.crash")


def log_lines(tag: str, count: int) -> str:
    """Log ``count`` records tagged ``tag``, a little apart, so that tasks interleave."""
    for index in range(count):
        log.info("%s %d", tag, index)
        if index % 5 == 4:
            time.sleep(0.001)
    return tag


def log_then_die(how: str, payload: object, count: int = 3) -> None:
    """Log ``count`` records, then end this worker abruptly as ``how`` says."""
    for index in range(count):
        log.warning("step %d of %d before %s", index, count, how)
    if how == "SIGKILL":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "SIGSEGV":
        # The default action, as a real segfault: a core-dumping death by SIGSEGV.
        signal.signal(signal.SIGSEGV, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGSEGV)
    elif how == "exit3":
        os._exit(3)
    time.sleep(60)


def log_then_wait(path: str, tag: str) -> int:
    """Log, mark ``path`` (so that the test knows this worker runs it), then wait to be killed."""
    log.info("waiting %s", tag)
    with open(f"{path}.{os.getpid()}", "w", encoding="utf-8") as marker:
        marker.write(tag)
    time.sleep(60)
    return os.getpid()


def pid_after_logging(tag: str) -> int:
    log.info("idle soon %s", tag)
    return os.getpid()


def log_big_then_die(size: int) -> None:
    """Log ten huge records, then die: the notes must stay within their 4 KB."""
    for index in range(10):
        log.error("big %d %s", index, "y" * size)
    os.kill(os.getpid(), signal.SIGKILL)


def log_pause_then_die(payload: object) -> None:
    """Log, give Dask's batching time to send the records, then SIGKILL this worker."""
    for index in range(3):
        log.warning("dask step %d", index)
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)
