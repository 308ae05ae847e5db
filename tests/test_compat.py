"""The private stdlib state logexec relies on, pinned on every Python we support."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import socket
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

from logexec import _compat


def test_existing_loggers_lists_root_first_and_skips_placeholders() -> None:
    """existing_loggers() returns root first and only real Logger objects."""
    logging.getLogger("compat.parent.child")  # creates a PlaceHolder for compat.parent
    loggers = _compat.existing_loggers()
    assert loggers[0] is logging.root
    names = [logger.name for logger in loggers]
    assert "compat.parent.child" in names
    assert "compat.parent" not in names
    assert all(isinstance(logger, logging.Logger) for logger in loggers)


def test_disabled_level_reads_logging_disable() -> None:
    """disabled_level() returns what logging.disable() set."""
    logging.disable(logging.WARNING)
    assert _compat.disabled_level() == logging.WARNING
    logging.disable(logging.NOTSET)
    assert _compat.disabled_level() == logging.NOTSET


def test_explicit_levels_lists_only_set_levels() -> None:
    """explicit_levels() has root's level and only loggers whose level was set."""
    logging.getLogger("compat.set").setLevel(logging.ERROR)
    logging.getLogger("compat.unset")
    levels = _compat.explicit_levels()
    assert levels[""] == logging.root.level
    assert levels["compat.set"] == logging.ERROR
    assert "compat.unset" not in levels


def test_handler_changes_take_the_lock_addhandler_takes_and_leave_walks_alone() -> None:
    """add_handler_first/remove_handler hold the lock logging's addHandler holds (so neither
    loses the other's change), and replace the list (so a walk in progress keeps its own)."""
    logger = logging.getLogger("compat.handlers")
    first, ours = logging.NullHandler(), logging.NullHandler()
    logger.addHandler(first)
    walked = logger.handlers
    _compat.add_handler_first(logger, ours)
    assert logger.handlers == [ours, first] and walked == [first]
    walked = logger.handlers
    _compat.remove_handler(logger, ours)
    assert logger.handlers == [first] and walked == [ours, first]
    lock = _compat._logging_lock()
    added = threading.Event()
    with lock:
        # addHandler from another thread waits for the lock we hold.
        adder = threading.Thread(target=lambda: (logger.addHandler(logging.NullHandler()), added.set()))
        adder.start()
        assert not added.wait(timeout=0.2)
    adder.join(timeout=10)
    assert added.is_set() and len(logger.handlers) == 2


@pytest.mark.timeout(30)
def test_wake_executor_manager_reaches_the_stdlib_manager_thread() -> None:
    """The attributes used to wake a ProcessPoolExecutor's manager exist and work."""
    executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    # Nothing to wake before the first submit: must be a quiet no-op.
    _compat.wake_executor_manager(executor)
    assert executor.submit(abs, -3).result(timeout=20) == 3
    assert hasattr(executor, "_shutdown_lock")
    wakeup = getattr(executor, "_executor_manager_thread_wakeup", None)
    assert wakeup is not None and callable(wakeup.wakeup)
    for _ in range(3):
        _compat.wake_executor_manager(executor)
    assert executor.submit(abs, -4).result(timeout=20) == 4
    executor.shutdown(wait=True)
    # After shutdown the wake-up channel is gone: still a quiet no-op.
    _compat.wake_executor_manager(executor)
    assert not [thread for thread in threading.enumerate() if "ExecutorManager" in type(thread).__name__]


@pytest.mark.timeout(30)
def test_manager_thread_is_the_pools_and_ends_after_its_workers() -> None:
    """The pool's manager thread exists once submit started it, and ends after shutdown."""
    from concurrent.futures import ProcessPoolExecutor

    executor = ProcessPoolExecutor(1)
    assert _compat.manager_thread(executor) is None
    assert executor.submit(abs, -1).result(timeout=20) == 1
    thread = _compat.manager_thread(executor)
    assert thread is not None and thread.is_alive()
    executor.shutdown(wait=True)
    thread.join(timeout=20)
    assert not thread.is_alive()


def test_level_watch_sees_set_level_and_disable_but_not_level_checks() -> None:
    """Any setLevel or logging.disable trips the watch; level checks and getLogger do not."""
    watch = _compat.LevelWatch()
    logger = logging.getLogger("tests.compat.watch")
    logger.isEnabledFor(logging.INFO)
    logging.getLogger("tests.compat.watch.child")
    assert not watch.changed()
    logger.setLevel(logging.DEBUG)
    assert watch.changed()
    watch.arm()
    assert not watch.changed()
    logging.disable(logging.NOTSET)
    assert watch.changed()


@pytest.mark.skipif(not hasattr(socket, "socketpair") or sys.platform == "win32", reason="POSIX connections")
@pytest.mark.parametrize("size", [0, 1, 150, 16384, 16385, 1 << 16])
def test_connection_message_is_what_send_bytes_writes(size: int) -> None:
    """connection_message(payload) is byte for byte what a POSIX Connection.send_bytes writes,
    and a Connection reads it back as that one message."""
    left, right = socket.socketpair()
    sender = multiprocessing.connection.Connection(left.detach())
    receiver = multiprocessing.connection.Connection(right.detach())
    try:
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        sender.send_bytes(payload)
        expected = _compat.connection_message(payload)
        raw = b""
        while len(raw) < len(expected):
            raw += os.read(receiver.fileno(), len(expected) - len(raw))
        assert raw == expected
        os.write(sender.fileno(), _compat.connection_message(memoryview(payload)))
        assert receiver.poll(10)
        assert receiver.recv_bytes() == payload
    finally:
        sender.close()
        receiver.close()


class _NotingPool(ProcessPoolExecutor):
    """The stdlib pool with the crash-notes hook where LoggingProcessPoolExecutor puts it."""

    def __init__(self) -> None:
        super().__init__(1, mp_context=multiprocessing.get_context("spawn"))
        self.seen: list[tuple[dict[int, int], list[Any]]] = []
        self.hooked_under_lock: list[bool] = []
        self.errors: list[BaseException] = []

    def _start_executor_manager_thread(self) -> None:
        super()._start_executor_manager_thread()
        # Taken by submit around this step: the manager cannot break the pool before the hook.
        self.hooked_under_lock.append(getattr(self, "_shutdown_lock").locked())  # noqa: B009
        _compat.note_when_broken(self, self._annotate, self._add, self.errors.append)

    def _annotate(self, exit_codes: Callable[[float], dict[int, int]], work: Any) -> list[str]:
        codes = exit_codes(0.0)
        self.seen.append((codes, work))
        return [f"exit codes {sorted(codes.values())}"]

    @staticmethod
    def _add(error: BaseException, notes: Any) -> None:
        error.args = (*error.args, *notes)


@pytest.mark.timeout(60)
def test_note_when_broken_reads_the_managers_work_items_processes_and_terminate_broken() -> None:
    """The manager thread's terminate_broken, pending_work_items (future, fn, args, kwargs) and
    processes, and the pool's _start_executor_manager_thread under _shutdown_lock: all that
    note_when_broken relies on, on this Python."""
    executor = _NotingPool()
    try:
        future = executor.submit(os._exit, 3)
        with pytest.raises(BrokenProcessPool) as raised:
            future.result(timeout=30)
    finally:
        executor.shutdown(wait=True)
    assert executor.hooked_under_lock == [True]
    assert not executor.errors
    [(codes, work)] = executor.seen
    assert list(codes.values()) == [3]
    assert work == [(os._exit, (3,), {})]
    assert raised.value.args[-1] == "exit codes [3]"
    # The futures' own set_exception is back: nothing of the hook is left on them.
    assert "set_exception" not in vars(future)
