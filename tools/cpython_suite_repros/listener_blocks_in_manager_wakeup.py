"""The listener thread blocks forever in the pool's manager wake-up, and ``shutdown()`` hangs.

Shows: CPython's ``test_deadlock.ProcessPool*ExecutorDeadlockTest
.test_gh105829_should_not_deadlock_if_wakeup_pipe_full`` (seen with fork on 3.13; it depends
on timing). That test replaces the pool's ``_ThreadWakeup`` with one whose ``wakeup()``
blocks while an earlier wake-up has not been cleared by the manager thread: a full wake-up
pipe (gh-105829). The stdlib only wakes the manager from ``submit`` and ``shutdown``, while
the manager thread is alive to drain the pipe.

logexec also wakes it, from the listener thread, whenever a worker's connection ends
(``_compat.wake_executor_manager``, the workaround for a killed on-demand worker). At
shutdown the workers exit while the manager thread is joining them and no longer drains the
pipe, so the listener's second wake-up blocks, inside the pool's ``_shutdown_lock``, for good;
``shutdown()`` then waits for the listener forever. With the real pipe (64 KiB) it takes many
undrained wake-ups to fill it, so this is rare outside the test, but the listener, which
must outlive every failure, is left calling a blocking write that nobody will drain.

Expected (plain ``ProcessPoolExecutor``, and logexec once fixed): ``shutdown()`` returns.
Actual (logexec at the time of writing): ``shutdown()`` has not returned after 20 s; the
listener's stack ends in ``wakeup`` called from ``_compat.wake_executor_manager``.

How often, here: this script, fork, 3.11.7: 4 runs in 4 (and 5 in 6 for spawn and fork in
an earlier version). 3.12.1 and 3.13.0: 0 in 8, because there the manager thread holds the
pool's shutdown lock while it joins the workers, so the listener's wake-up usually comes
after the manager has let go of the channel; the same stack was caught in the CPython test
on 3.13.0 (fork) in 1 of 4 runs of the suite. 3.9 and 3.10: not applicable; without the
gh-105829 fix this one-slot wake-up deadlocks the stdlib pool itself, and CPython has the
test only from 3.12.

Run::

    cd <worktree>/tools/cpython_suite_repros
    PYTHONPATH=../.. python listener_blocks_in_manager_wakeup.py [METHOD] [stdlib]

METHOD is fork (the default), spawn or forkserver.
Exit status 0 when shutdown returns, 1 when the bug shows.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import queue
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, process
from typing import Any

from logexec import LoggingProcessPoolExecutor

SHUTDOWN_TIMEOUT = 20
RESULT_TIMEOUT = 30


class FullPipeWakeup(process._ThreadWakeup):  # type: ignore[name-defined,misc]
    """A wake-up channel with room for one wake-up, as in CPython's test for gh-105829."""

    def __init__(self) -> None:
        super().__init__()
        self._room: queue.Queue[None] = queue.Queue(maxsize=1)

    def wakeup(self) -> None:
        self._room.put(None, block=True)
        super().wakeup()

    def clear(self) -> None:
        super().clear()
        try:
            while True:
                self._room.get_nowait()
        except queue.Empty:
            pass


def main() -> int:
    method = sys.argv[1] if len(sys.argv) > 1 else "fork"
    executor_type: Any = ProcessPoolExecutor if "stdlib" in sys.argv[2:] else LoggingProcessPoolExecutor
    process._ThreadWakeup = FullPipeWakeup  # type: ignore[attr-defined]
    executor = executor_type(max_workers=2, mp_context=multiprocessing.get_context(method))
    # Shut down while results are still coming in: a manager thread that wakes for a result
    # does not clear the wake-up that shutdown() sent, and from 3.12 the listener's wake-up
    # comes only after the manager has finished (it holds the lock while joining).
    futures = [executor.submit(int, number) for number in range(200)]
    workers = list(executor._processes.values())
    done = threading.Event()

    def shut_down() -> None:
        executor.shutdown(wait=True)
        done.set()

    threading.Thread(target=shut_down, daemon=True).start()
    if done.wait(timeout=SHUTDOWN_TIMEOUT):
        if [future.result(timeout=RESULT_TIMEOUT) for future in futures] != list(range(200)):
            raise SystemExit("wrong results")
        print(f"{executor_type.__name__} {method}: ok: shutdown() returned")
        return 0
    print(f"{executor_type.__name__} {method}: BUG: shutdown() had not returned after {SHUTDOWN_TIMEOUT} s")
    faulthandler.dump_traceback(all_threads=True)
    for worker in workers:
        worker.kill()
    sys.stdout.flush()
    os._exit(1)  # threads blocked for good would keep a normal exit waiting


if __name__ == "__main__":
    sys.exit(main())
