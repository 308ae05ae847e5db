"""Does a pool with ``max_tasks_per_child`` hang? Count hangs over many trials.

Each trial runs in its own subprocess (its own session, so that a hung trial's workers
are killed with it): it builds a pool, submits ``--tasks`` calls of ``os.getpid`` (all at
once, or one at a time with ``--sequential``), and waits for every result. A trial that
has not finished within ``--timeout`` seconds counts as a hang.

The suspected stdlib bug (CPython gh-115634): the pool counts idle workers with a
semaphore that every finished task releases, and a worker that exits after its last task
is replaced only if that semaphore cannot be acquired. Tasks queued ahead of the finished
ones leave releases behind, so an exiting worker is not replaced, and once every worker
has exited the queued tasks wait forever.

Measured here (8 trials each, spawn, 15 s per trial; the same on 3.11.7, 3.12.1 and 3.13.0):
a plain ``ProcessPoolExecutor`` hangs in every trial when ``max_tasks_per_child >= 2`` and
more than ``workers * max_tasks_per_child`` tasks are submitted before the first worker
retires (1 worker, 4 tasks, 2 per child; 2, 5, 2; 2, 8, 2; 4, 9, 2; 4, 32, 2; also under
forkserver), and never otherwise: 1, 2, 2; 2, 4, 2; 4, 8, 2; 2, 8, 4; 2, 6, 3 and 2 workers,
20 tasks, 1 per child all finish, and so does 2, 8, 2 with ``--sequential``. fork refuses
``max_tasks_per_child`` (``ValueError``); 3.9 and 3.10 do not have it (``TypeError``).
logexec behaves the same (2, 5, 2 hangs 4 of 4; 2, 4, 2 finishes 4 of 4, on 3.11).

Examples::

    python tools/repro_max_tasks_per_child.py --workers 1 --tasks 4 --max-tasks-per-child 2
    python tools/repro_max_tasks_per_child.py --workers 2 --tasks 8 --max-tasks-per-child 2 \\
        --runs 8 --executor logexec
    $(pyenv root)/versions/3.13.0/bin/python3 tools/repro_max_tasks_per_child.py ...

``--executor logexec`` needs ``logexec`` importable (``PYTHONPATH`` at the worktree).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

# Exit code of a trial whose pool could not even be built (the option does not exist here).
UNSUPPORTED = 3


def run_trial(arguments: argparse.Namespace) -> int:
    """Build the pool, run the tasks, print the distinct worker pids; exit 0 when all done."""
    import concurrent.futures
    import multiprocessing

    executor_type: Any = concurrent.futures.ProcessPoolExecutor
    if arguments.executor == "logexec":
        from logexec import LoggingProcessPoolExecutor

        executor_type = LoggingProcessPoolExecutor
    context = multiprocessing.get_context(arguments.start_method)
    try:
        executor = executor_type(
            arguments.workers, mp_context=context, max_tasks_per_child=arguments.max_tasks_per_child
        )
    except (TypeError, ValueError) as error:
        print(f"unsupported: {type(error).__name__}: {error}", flush=True)
        return UNSUPPORTED
    with executor:
        pids = set()
        if arguments.sequential:
            for _ in range(arguments.tasks):
                pids.add(executor.submit(os.getpid).result(timeout=arguments.timeout))
        else:
            futures = [executor.submit(os.getpid) for _ in range(arguments.tasks)]
            for future in futures:
                pids.add(future.result(timeout=arguments.timeout))
    print(f"ok: {len(pids)} distinct worker pids", flush=True)
    return 0


def run_one(arguments: argparse.Namespace) -> tuple[str, str]:
    """Run one trial in a subprocess; return its outcome (ok, hang, unsupported, error) and output."""
    command = [
        arguments.python,
        os.path.abspath(__file__),
        "--trial",
        "--workers",
        str(arguments.workers),
        "--tasks",
        str(arguments.tasks),
        "--max-tasks-per-child",
        str(arguments.max_tasks_per_child),
        "--start-method",
        arguments.start_method,
        "--executor",
        arguments.executor,
        # The trial's own result() timeout is longer than ours: a hang is ours to see.
        "--timeout",
        str(arguments.timeout * 4),
    ]
    if arguments.sequential:
        command.append("--sequential")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=arguments.timeout)
    except subprocess.TimeoutExpired:
        # The whole session: the trial and the workers it started.
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=30)
        return "hang", output
    if process.returncode == 0:
        return "ok", output
    if process.returncode == UNSUPPORTED:
        return "unsupported", output
    return "error", output


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2, help="max_workers (default 2)")
    parser.add_argument("--tasks", type=int, default=8, help="tasks per trial (default 8)")
    parser.add_argument("--max-tasks-per-child", type=int, default=2, help="(default 2)")
    parser.add_argument(
        "--start-method", default="spawn", choices=["spawn", "forkserver", "fork"], help="(default spawn)"
    )
    parser.add_argument("--runs", type=int, default=10, help="trials (default 10)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds before a trial is a hang")
    parser.add_argument(
        "--executor",
        default="stdlib",
        choices=["stdlib", "logexec"],
        help="the pool to test (default stdlib)",
    )
    parser.add_argument(
        "--sequential", action="store_true", help="wait for each result before the next submit"
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter for the trials")
    parser.add_argument("--verbose", action="store_true", help="print each trial's output")
    parser.add_argument("--trial", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.trial:
        return run_trial(arguments)

    version = subprocess.run(
        [arguments.python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    counts: Counter[str] = Counter()
    started = time.monotonic()
    for run in range(arguments.runs):
        outcome, output = run_one(arguments)
        counts[outcome] += 1
        if arguments.verbose or outcome in {"error", "unsupported"}:
            print(f"  run {run}: {outcome}: {output.strip()[-500:]}")
        if outcome == "unsupported":
            break
    summary = " ".join(f"{outcome}={counts[outcome]}" for outcome in ("ok", "hang", "error", "unsupported"))
    mode = "sequential" if arguments.sequential else "queued"
    print(
        f"CPython {version} {arguments.executor} {arguments.start_method} workers={arguments.workers} "
        f"tasks={arguments.tasks} max_tasks_per_child={arguments.max_tasks_per_child} {mode} "
        f"timeout={arguments.timeout:g}s: {summary} ({time.monotonic() - started:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
