"""Tasks for whose context a record is logged in: threads of a worker that are not the task.

Module-level, because spawn workers must import them.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading

log = logging.getLogger("tests.worker")
WAIT_SECONDS = 30

# A heartbeat thread in each worker, started by the initializer (outside any task): it
# logs one beat each time a task asks, so that its record lands in the middle of the task's.
_beat_wanted = threading.Event()
_beat_done = threading.Event()


def start_heartbeat() -> None:
    threading.Thread(target=_heartbeat, name="heartbeat", daemon=True).start()


def _heartbeat() -> None:
    logger = logging.getLogger("tests.heartbeat")
    while True:
        _beat_wanted.wait()
        _beat_wanted.clear()
        logger.info("beat")
        _beat_done.set()


def log_around_a_heartbeat(tag: str) -> str:
    """Log, have the heartbeat thread log while this task runs, then log again."""
    log.info("handling %s", tag)
    _beat_done.clear()
    _beat_wanted.set()
    if not _beat_done.wait(timeout=WAIT_SECONDS):
        raise TimeoutError("the heartbeat thread did not beat")
    log.info("handled %s", tag)
    return tag


# A thread a task leaves running, released (and joined) by a later task on the same worker.
_release_leftover = threading.Event()
_leftovers: list[threading.Thread] = []


def leave_a_thread_behind(tag: str) -> str:
    """Start a thread that logs only once a later task releases it, and return at once."""
    log.info("handling %s", tag)

    def later() -> None:
        _release_leftover.wait(timeout=WAIT_SECONDS)
        logging.getLogger("tests.leftover").info("left over by %s", tag)

    thread = threading.Thread(target=later, name="leftover", daemon=True)
    thread.start()
    _leftovers.append(thread)
    return tag


def release_the_leftover_thread(tag: str) -> str:
    """Let the thread an earlier task left behind log, while this task runs."""
    log.info("handling %s", tag)
    _release_leftover.set()
    for thread in _leftovers:
        thread.join(timeout=WAIT_SECONDS)
        if thread.is_alive():
            raise TimeoutError("the leftover thread did not finish")
    log.info("handled %s", tag)
    return tag


def log_from_threads_in_the_tasks_context(tag: str) -> str:
    """Log from threads that run in the task's context, as in-process they would in the caller's."""
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(log.info, "copied context %s", tag))
    thread.start()
    thread.join(timeout=WAIT_SECONDS)

    async def in_a_thread() -> None:
        await asyncio.to_thread(log.info, "to_thread %s", tag)

    asyncio.run(in_a_thread())
    return tag


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_ID")


def heartbeat_requests_in_a_nested_fork_pool() -> list[str]:
    """Run a fork pool in this worker, and return the request ids its heartbeat's records met.

    The inner worker is forked by this task's thread, so it starts in this task's context.
    """
    import multiprocessing

    from logexec import LoggingProcessPoolExecutor

    seen: list[str] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(REQUEST_ID.get("-"))

    logging.getLogger("tests.heartbeat").addHandler(Seen())
    context = multiprocessing.get_context("fork")
    with LoggingProcessPoolExecutor(1, mp_context=context, initializer=start_heartbeat) as inner:
        token = REQUEST_ID.set("inner")
        try:
            future = inner.submit(log_around_a_heartbeat, "inner")
        finally:
            REQUEST_ID.reset(token)
        future.result(timeout=WAIT_SECONDS)
    return seen
