"""Tasks for tests/test_joblib.py. Module-level, so that loky's workers import them by name."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

log = logging.getLogger("tests.joblib")


def log_and_return(value: int, n: int = 1) -> int:
    """Log n records tagged with value, return value."""
    for counter in range(n):
        log.info("value %d record %d", value, counter, extra={"value": value, "counter": counter})
    return value


def pid_after_logging(value: int) -> int:
    log.info("value %d", value)
    return os.getpid()


def enabled_levels() -> list[str]:
    """Log at DEBUG, INFO and WARNING through two loggers; return the levels enabled here."""
    enabled = []
    for name in ("tests.joblib", "tests.noisy"):
        logger = logging.getLogger(name)
        for level in (logging.DEBUG, logging.INFO, logging.WARNING):
            logger.log(level, "%s at %s", name, logging.getLevelName(level))
            if logger.isEnabledFor(level):
                enabled.append(f"{name}:{logging.getLevelName(level)}")
    return enabled


def log_then_raise(value: int) -> int:
    log.info("before raising %d", value)
    if value == 3:
        raise KeyError(f"task {value} failed on purpose")
    return value


def log_then_die(n: int) -> None:
    """Log n records, then kill this worker with SIGKILL (no clean-up at all)."""
    for counter in range(n):
        log.info("before the kill %d", counter)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)


def sleep_then_log(seconds: float) -> float:
    time.sleep(seconds)
    log.info("slept %s", seconds)
    return seconds


def describe_array(array: Any) -> tuple[str, float]:
    """The array's type name and sum, after logging both."""
    kind = type(array).__name__
    total = float(array.sum())
    log.info("got a %s summing to %s", kind, total)
    return kind, total


def thread_caps() -> dict[str, Any]:
    """The thread-limiting environment and, where threadpoolctl exists, the BLAS limits."""
    caps: dict[str, Any] = {
        name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    }
    try:
        import numpy  # noqa: F401  # loads the BLAS threadpoolctl inspects
        from threadpoolctl import threadpool_info
    except ImportError:
        caps["pools"] = None
    else:
        caps["pools"] = sorted({pool["num_threads"] for pool in threadpool_info()})
    log.info("thread caps %s", caps)
    return caps


def nested_parallel(n: int) -> list[int]:
    """Run a nested Parallel inside the task; return the pids that ran its items."""
    from joblib import Parallel, delayed

    log.info("outer task starts %d inner items", n)
    return list(Parallel(n_jobs=2)(delayed(pid_after_logging)(value) for value in range(n)))


def log_in_initializer(tag: str) -> None:
    logging.getLogger("tests.joblib.init").info("initializer ran with %s", tag)
