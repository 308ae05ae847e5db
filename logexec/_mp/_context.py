"""``logexec.get_context()``: a multiprocessing context whose ``Process`` and ``Pool`` log through the parent.

Libraries that start workers for their user take a context (PyTorch's
``DataLoader(..., multiprocessing_context=...)`` makes its queues, events and worker
processes from it), so a context that carries logexec reaches their workers too::

   parent process                                    a Process of this context
   ───────────────────────────────────────────────   ──────────────────────────────────────
   ctx = logexec.get_context("spawn")                 run(): logexec's ``initialize`` (connect,
   p = ctx.Process(target=f); p.start():                reset logging, the parent's levels),
     one LogChannel per start method, opened at         then the target; every record is
     the first start (listener started before the       sent before its log call returns
     start, or just after it under fork)
   listener thread ◀──────────── records ──────────
   p.join(): the process ended, then its connection
     read to its end (on_worker_exit told its pid)

Every other member (``Queue``, ``Event``, ``Lock``, ``Manager``, ``get_start_method``, ...)
is the real context's. ``Pool`` is a ``logexec.Pool`` on the real context.

The channel lives until interpreter exit. There, this module's exit hook (registered after
the listener's, so it runs first) does what multiprocessing's own would do a moment later,
terminate the daemon processes still running and join the others, so that the listener's
hook then drains everything they logged.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .._channel import LogChannel, WorkerConfig, WorkerExit, initialize
from .._dispatch import Dispatcher
from ._pool import Pool as _Pool


class _Ends:
    """Which processes' connections have ended, as the listener tells (``on_worker_exit``)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._ended: set[int] = set()

    def __call__(self, exits: Sequence[WorkerExit]) -> bool:
        with self._condition:
            self._ended.update(end.pid for end in exits)
            self._condition.notify_all()
        return True

    def starting(self, pid: int) -> None:
        # A pid in the set belonged to an earlier process: forget it before the new one.
        with self._condition:
            self._ended.discard(pid)

    def wait(self, pid: int, timeout: float | None) -> bool:
        with self._condition:
            found = self._condition.wait_for(lambda: pid in self._ended, timeout)
            if found:
                self._ended.discard(pid)
            return found


class _Logging:
    """One start method's channel in this process, and the processes started on it."""

    def __init__(self) -> None:
        self.ends = _Ends()
        self.channel = LogChannel(Dispatcher(None), self.ends)
        self.config = self.channel.open()
        self.lock = threading.Lock()
        self.processes: list[multiprocessing.process.BaseProcess] = []

    def track(self, process: multiprocessing.process.BaseProcess) -> None:
        with self.lock:
            self.processes = [p for p in self.processes if p.exitcode is None]
            self.processes.append(process)


_lock = threading.Lock()
_by_method: dict[str, _Logging] = {}


def _logging_for(method: str) -> _Logging:
    with _lock:
        found = _by_method.get(method)
        if found is None:
            found = _by_method[method] = _Logging()
        return found


class _LoggingProcess:
    """Mixed into the real context's ``Process`` class: set-up first in the child, join waits."""

    _logexec_method = ""
    _logexec_config: WorkerConfig | None = None
    # Shared memory the child sets once connected: only then can it have sent a record.
    _logexec_connected: Any = None

    def start(self) -> None:
        logging_ = _logging_for(self._logexec_method)
        self._logexec_config = logging_.config
        self._logexec_connected = multiprocessing.get_context(self._logexec_method).RawValue("b", 0)
        forks = self._logexec_method == "fork"
        if not forks:
            logging_.channel.start()
        super().start()  # type: ignore[misc]
        pid: int = self.pid  # type: ignore[attr-defined]
        logging_.ends.starting(pid)
        logging_.track(self)  # type: ignore[arg-type]
        if forks:
            # The first fork happened before any thread of ours ran (later ones cannot).
            logging_.channel.start()

    def run(self) -> None:
        config = self._logexec_config
        if config is not None:
            initialize(config, None, ())
            self._logexec_connected.value = 1
        super().run()  # type: ignore[misc]

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        super().join(timeout)  # type: ignore[misc]
        connected = self._logexec_connected
        if self.exitcode is None or connected is None or not connected.value:  # type: ignore[attr-defined]
            return  # still running, or it never connected, so it sent nothing
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        _logging_for(self._logexec_method).ends.wait(self.pid, remaining)  # type: ignore[attr-defined]


def _process_class(method: str) -> type:
    base: type = multiprocessing.get_context(method).Process  # type: ignore[attr-defined]
    name = f"Logging{base.__name__}"
    cls = type(name, (_LoggingProcess, base), {"_logexec_method": method, "__module__": __name__})
    cls.__qualname__ = name
    # Importable by name, so that spawn and forkserver children can unpickle the process.
    globals()[name] = cls
    return cls


def _available_methods() -> list[str]:
    # get_all_start_methods() may name a method that get_context() then refuses: 3.14 lists
    # forkserver where file descriptors cannot be passed between processes (Windows's kind
    # of interpreter). Offered here are the ones that work.
    available = []
    for method in multiprocessing.get_all_start_methods():
        try:
            multiprocessing.get_context(method)
        except ValueError:
            continue
        available.append(method)
    return available


_PROCESS_CLASSES = {method: _process_class(method) for method in _available_methods()}


class LoggingContext:
    """A multiprocessing context whose ``Process`` and ``Pool`` log through the parent."""

    def __init__(self, method: str) -> None:
        self._logexec_real = multiprocessing.get_context(method)
        self._logexec_method = method
        self.Process = _PROCESS_CLASSES[method]

    def Pool(  # the stdlib's name
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        *,
        handlers: Iterable[logging.Handler] | None = None,
        propagate_contextvars: Iterable[contextvars.ContextVar[Any]] = (),
    ) -> _Pool:
        return _Pool(
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            self._logexec_real,
            handlers=handlers,
            propagate_contextvars=propagate_contextvars,
        )

    def get_context(self, method: str | None = None) -> Any:
        return self if method is None else get_context(method)

    def get_start_method(self, allow_none: bool = False) -> str:
        return self._logexec_method

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logexec_real, name)

    def __repr__(self) -> str:
        return f"<logexec.get_context({self._logexec_method!r})>"


_contexts: dict[str, LoggingContext] = {}


def get_context(method: str | None = None) -> LoggingContext:
    """A multiprocessing context whose ``Process`` and ``Pool`` log through this process.

    ``method`` is a start method (``"spawn"``, ``"fork"``, ``"forkserver"``), or None for
    the default: the one set with ``multiprocessing.set_start_method``, else the
    platform's. ``get_start_method()`` says which. Every other member is the real
    context's.
    """
    if method is None:
        method = (
            multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
        )
    if not isinstance(method, str) or method not in _PROCESS_CLASSES:
        raise ValueError(
            f"method must be None or one of {', '.join(_PROCESS_CLASSES)} (this platform's start "
            f"methods), got {method!r}"
        )
    with _lock:
        context = _contexts.get(method)
        if context is None:
            context = _contexts[method] = LoggingContext(method)
        return context


def _reset_after_fork_in_child() -> None:
    # A child forked from this process must not use the parent's channels (their threads
    # did not survive the fork) nor wait for the parent's processes.
    global _lock
    _lock = threading.Lock()
    _by_method.clear()


if hasattr(os, "register_at_fork"):  # no fork, hence no hook, on Windows
    os.register_at_fork(after_in_child=_reset_after_fork_in_child)


@atexit.register
def _end_processes() -> None:
    # What multiprocessing's exit hook does (after this one, and after the listener's would
    # have stopped): daemon processes are terminated, the others joined. Then every record
    # they logged reaches the listener's own exit hook, which drains it.
    for logging_ in list(_by_method.values()):
        with logging_.lock:
            processes = [p for p in logging_.processes if p.exitcode is None]
        for process in processes:
            if process.daemon:
                process.terminate()
        for process in processes:
            process.join()
        logging_.channel.stop()
