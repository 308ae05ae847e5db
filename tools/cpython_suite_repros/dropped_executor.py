"""A dropped executor breaks its own pool under spawn and forkserver.

Shows: CPython's ``test_shutdown.ProcessPool{Spawn,Forkserver}ProcessPoolShutdownTest
.test_del_shutdown``, reduced. ``map`` is called, the executor is dropped (``del``, no
``shutdown()``), then the results are read. The stdlib finishes the work of a dropped
executor, so this must work.

Expected (plain ``ProcessPoolExecutor``, and logexec once fixed): ``[5, 4, 3, 2, 1, 0, 1, 2, 3, 4]``.
Actual (logexec at the time of writing): ``BrokenProcessPool``. The executor's
``weakref.finalize`` runs at ``del`` and stops the listener at once; the listener removes
its socket, so the workers spawned after that fail their initializer
(``FileNotFoundError`` in ``Channel.connect``, printed on stderr) and the pool breaks.
Under fork the workers were forked (and connected) by ``submit``, so it passes there.

Run::

    PYTHONPATH=<worktree> python tools/cpython_suite_repros/dropped_executor.py [METHOD] [stdlib]

METHOD is spawn (the default), forkserver or fork.
Exit status 0 when the results arrive, 1 when the bug shows.
"""

from __future__ import annotations

import gc
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

from logexec import LoggingProcessPoolExecutor

RESULT_TIMEOUT = 60


def main() -> int:
    method = sys.argv[1] if len(sys.argv) > 1 else "spawn"
    executor_type = ProcessPoolExecutor if "stdlib" in sys.argv[2:] else LoggingProcessPoolExecutor
    executor = executor_type(max_workers=5, mp_context=multiprocessing.get_context(method))
    results = executor.map(abs, range(-5, 5), timeout=RESULT_TIMEOUT)
    del executor
    gc.collect()
    try:
        values = list(results)
    except Exception as error:
        print(f"{executor_type.__name__} {method}: BUG: {type(error).__name__}: {error}")
        return 1
    print(f"{executor_type.__name__} {method}: ok: {values}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
