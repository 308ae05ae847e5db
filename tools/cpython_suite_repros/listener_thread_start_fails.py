"""When the listener's thread cannot be started, the executor is left half-started.

Shows: the logexec bug behind CPython's ``test_process_pool.ProcessPool*ProcessPoolExecutorTest
.test_python_finalization_error`` (gh-109047), which is excluded from the comparison because
it counts the stdlib's threads. That test makes thread creation fail, as it does during
interpreter finalization (``RuntimeError: can't create new thread at interpreter
shutdown``) or when a process hits its thread limit.

Here the listener's thread fails to start once, on ``__enter__``; the caller sees the
``RuntimeError`` and tries again, as one would after a transient limit.

Expected: the failure leaves the executor usable (the next ``__enter__``/``submit`` starts
the listener) or cleanly unusable (a clear error), and ``shutdown()`` never raises.
Before the fix (now the script prints ``ok``; tests/test_thread_limit.py covers it):
``Listener.start`` stores the ``Thread`` before
``Thread.start()`` succeeds, so (1) the retry never starts a listener: the workers connect
to a socket nobody accepts and the task never finishes (``result()`` times out);
(2) ``shutdown()`` hangs joining those workers, which wait for the listener's challenge;
(3) once they are killed, ``shutdown()`` raises ``RuntimeError: cannot join thread before
it is started`` from ``Listener.stop``, and so does logexec's exit hook. Under fork the
listener starts after ``submit``, so ``submit`` raises ``RuntimeError`` after the task was
already queued, and ``shutdown()`` hangs and raises the same way.

Run::

    PYTHONPATH=<worktree> python tools/cpython_suite_repros/listener_thread_start_fails.py [METHOD]

METHOD is spawn (the default), forkserver or fork.
Exit status 0 when the executor recovers, 1 when the bug shows.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import Any

from logexec import LoggingProcessPoolExecutor

RESULT_TIMEOUT = 10


def main() -> int:
    method = sys.argv[1] if len(sys.argv) > 1 else "spawn"
    original_start = threading.Thread.start
    failures = {"left": 1}

    def start(self: threading.Thread) -> None:
        if self.name == "logexec-listener" and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("can't create new thread at interpreter shutdown")
        original_start(self)

    threading.Thread.start = start  # type: ignore[method-assign]
    executor = LoggingProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method))
    problems: list[str] = []
    try:
        executor.__enter__()
    except RuntimeError as error:
        print(f"first __enter__: RuntimeError: {error} (expected: the injected failure)")
    future: Any = None
    try:
        executor.__enter__()
        future = executor.submit(pow, 2, 8)
    except RuntimeError as error:
        print(f"retry: RuntimeError: {error}")
    if future is not None:
        try:
            print(f"retry: result {future.result(timeout=RESULT_TIMEOUT)}")
        except FuturesTimeoutError:
            problems.append(f"the retried task did not finish in {RESULT_TIMEOUT} s (no listener)")
    # In a thread: with workers stuck waiting for a listener, shutdown(wait=True) never returns.
    shutdown_errors: list[BaseException] = []

    def shut_down() -> None:
        try:
            executor.shutdown(wait=True, cancel_futures=True)
        except BaseException as error:
            shutdown_errors.append(error)

    processes = list((getattr(executor, "_processes", None) or {}).values())
    shutting_down = threading.Thread(target=shut_down, daemon=True)
    shutting_down.start()
    shutting_down.join(timeout=RESULT_TIMEOUT)
    if shutting_down.is_alive():
        problems.append(f"shutdown() had not returned after {RESULT_TIMEOUT} s")
        for process in processes:
            process.kill()
        shutting_down.join(timeout=RESULT_TIMEOUT)
    problems.extend(f"shutdown() raised {type(error).__name__}: {error}" for error in shutdown_errors)
    for problem in problems:
        print(f"{method}: BUG: {problem}")
    if not problems:
        print(f"{method}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
