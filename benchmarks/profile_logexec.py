"""cProfile of logexec's two hot paths: the parent's listener thread, and a worker's log call.

Phase 1: W workers log N records (unprofiled) into a FileHandler in the parent while the
"logexec-listener" thread runs under cProfile (this script wraps ``Listener._run`` in its
own process only; nothing in logexec is changed). Phase 2: one worker runs its log loop
under cProfile, with a no-op handler in the parent so that the listener keeps up.

cProfile inflates small functions; read the shares, and see bench_stages.py for
undistorted per-stage timings, or use py-spy (see README.md) for sampling.

    python3 benchmarks/profile_logexec.py [--records 100000] [--workers 2] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import multiprocessing
import os
import pstats
import shutil
import tempfile
from typing import Any

import _common

import logexec
from logexec._channel import _listener


def logging_task(source: int, count: int) -> int:
    _common.log_records(logging.getLogger(_common.LOGGER_NAME), source, count)
    return count


def profiled_task(count: int, top: int) -> str:
    profile = cProfile.Profile()
    logger = logging.getLogger(_common.LOGGER_NAME)
    profile.enable()
    _common.log_records(logger, 0, count)
    profile.disable()
    return _render(profile, top, f"worker: {count:,} log calls")


class _NoOp(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        pass


def _render(profile: cProfile.Profile, top: int, title: str) -> str:
    stream = io.StringIO()
    stats = pstats.Stats(profile, stream=stream)
    stats.sort_stats("tottime").print_stats(top)
    return f"=== {title} (sorted by own time) ===\n{stream.getvalue()}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--start-method", default=multiprocessing.get_start_method(), choices=["fork", "spawn", "forkserver"]
    )
    args = parser.parse_args()
    context = multiprocessing.get_context(args.start_method)
    print(_common.environment_line())
    print(f"logexec {logexec.__file__} at {_common.logexec_revision()}")

    profile = cProfile.Profile()
    original_run = _listener.Listener._run

    def profiled_run(self: Any) -> None:
        profile.enable()  # cProfile follows only the thread that enables it
        try:
            original_run(self)
        finally:
            profile.disable()

    _listener.Listener._run = profiled_run  # type: ignore[method-assign]
    directory = tempfile.mkdtemp(prefix="logexec-bench-")
    root = _common.reset_root_logger()
    handler = logging.FileHandler(os.path.join(directory, "out.log"), encoding="utf-8")
    handler.setFormatter(_common.make_formatter("plain"))
    root.addHandler(handler)
    counts = _common.split(args.records, args.workers)
    with logexec.LoggingProcessPoolExecutor(args.workers, mp_context=context) as executor:
        for future in [executor.submit(logging_task, s, c) for s, c in enumerate(counts)]:
            future.result()
    _listener.Listener._run = original_run  # type: ignore[method-assign]
    handler.close()
    shutil.rmtree(directory, ignore_errors=True)
    print(_render(profile, args.top, f"parent listener thread: {args.records:,} records, FileHandler"))

    root = _common.reset_root_logger()
    root.addHandler(_NoOp())
    with logexec.LoggingProcessPoolExecutor(1, mp_context=context) as executor:
        print(executor.submit(profiled_task, args.records // 2, args.top).result())


if __name__ == "__main__":
    main()
