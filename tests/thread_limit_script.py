"""Run a pool while thread creation fails (gh-109047), as CPython's test_python_finalization_error.

Not a test module: ``tests/test_thread_limit.py`` runs it in a subprocess::

    python tests/thread_limit_script.py stdlib|logexec METHOD count:N|role:NAME

``count:N`` lets N threads start and fails every later one; ``role:NAME`` fails only the
thread of that role (listener, lifecycle, manager, feeder). Prints one JSON line: the role
of the first thread refused, the errors (where, type), the pids of every process started,
and the logexec threads still alive after ``shutdown()``.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.process
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def mul(x: int, y: int) -> int:
    return x * y


def role_of(thread: threading.Thread) -> str:
    if thread.name == "logexec-listener":
        return "listener"
    if thread.name == "logexec-lifecycle":
        return "lifecycle"
    if type(thread).__name__ == "_ExecutorManagerThread":
        return "manager"
    if thread.name == "QueueFeederThread":
        return "feeder"
    return thread.name


def main() -> None:
    kind, method, rule = sys.argv[1], sys.argv[2], sys.argv[3]
    if kind == "logexec":
        from logexec import LoggingProcessPoolExecutor

        executor_type: Any = LoggingProcessPoolExecutor
    else:
        executor_type = ProcessPoolExecutor
    mode, _, value = rule.partition(":")
    # 3.13+ starts threads through _start_joinable_thread, earlier ones through
    # _start_new_thread; CPython's own test patches the same names.
    name = "_start_joinable_thread" if hasattr(threading, "_start_joinable_thread") else "_start_new_thread"
    original = getattr(threading, name)
    started: list[str] = []
    refused: list[str] = []

    def limited(function: Any, *args: Any, **kwargs: Any) -> Any:
        role = role_of(function.__self__)
        if (mode == "count" and len(started) >= int(value)) or (mode == "role" and role == value):
            refused.append(role)
            raise RuntimeError("can't create new thread at interpreter shutdown")
        started.append(role)
        return original(function, *args, **kwargs)

    pids: list[int] = []
    original_start = multiprocessing.process.BaseProcess.start

    def start(self: multiprocessing.process.BaseProcess) -> None:
        original_start(self)
        if self.pid is not None:
            pids.append(self.pid)

    multiprocessing.process.BaseProcess.start = start  # type: ignore[method-assign]
    context = multiprocessing.get_context(method)
    errors: list[list[str]] = []
    setattr(threading, name, limited)
    try:
        executor = executor_type(max_workers=2, mp_context=context)
        try:
            with executor:
                try:
                    list(executor.map(mul, [2] * 10, [3] * 10))
                except Exception as error:
                    errors.append(["map", type(error).__name__, str(error)])
        except Exception as error:
            errors.append(["exit", type(error).__name__, str(error)])
        try:
            executor.shutdown()
        except Exception as error:
            errors.append(["shutdown", type(error).__name__, str(error)])
    finally:
        setattr(threading, name, original)
    alive = [thread.name for thread in threading.enumerate() if thread.name.startswith("logexec-")]
    print(json.dumps({"refused": refused, "errors": errors, "pids": pids, "threads": alive}), flush=True)


if __name__ == "__main__":
    main()
