"""logexec.get_context(): Process and Pool log through the parent; the rest is the real context's."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import logexec

from . import pool_tasks
from .conftest import ListHandler

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TIMEOUT = 30
ROOT = Path(__file__).resolve().parent.parent


class WriterFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"PARENT{os.getpid()} {record.getMessage()}"


class SlowHandler(ListHandler):
    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(0.005)
        super().emit(record)


@pytest.fixture
def context(start_method: str) -> logexec._mp._context.LoggingContext:
    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {start_method} start method on this platform")
    return logexec.get_context(start_method)


def test_members_are_the_real_contexts(
    context: logexec._mp._context.LoggingContext, start_method: str
) -> None:
    assert context.get_start_method() == start_method
    assert issubclass(context.Process, type(multiprocessing.get_context(start_method).Process()))
    queue = context.Queue()
    queue.put(1)
    assert queue.get(timeout=TIMEOUT) == 1
    assert not context.Event().is_set()
    assert logexec.get_context(start_method) is context
    assert logexec.get_context().get_start_method() in multiprocessing.get_all_start_methods()
    with pytest.raises(ValueError, match=r"method must be None or one of .*got 'threads'"):
        logexec.get_context("threads")


def test_join_returns_after_the_records_are_handled(context: logexec._mp._context.LoggingContext) -> None:
    handler = SlowHandler()
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    process = context.Process(target=pool_tasks.process_target, args=(100, "joined"))
    process.start()
    process.join(timeout=TIMEOUT)
    assert process.exitcode == 0
    assert handler.messages() == [f"joined record {n}" for n in range(100)]


def test_daemon_and_sigkilled_processes_lose_nothing(
    context: logexec._mp._context.LoggingContext, collect: Callable[..., ListHandler], tmp_path: Path
) -> None:
    handler = collect()
    marker = tmp_path / "marker"
    process = context.Process(target=pool_tasks.log_forever, args=(str(marker),), daemon=True)
    process.start()
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid or 0, signal.SIGKILL)
    process.join(timeout=TIMEOUT)
    assert process.exitcode == -signal.SIGKILL
    numbers = [int(m.split()[-1]) for m in handler.messages()]
    assert len(numbers) >= 10
    assert numbers == list(range(len(numbers)))


def test_pool_is_a_logexec_pool(
    context: logexec._mp._context.LoggingContext, collect: Callable[..., ListHandler]
) -> None:
    handler = collect()
    with context.Pool(2) as pool:
        assert isinstance(pool, logexec.Pool)
        assert pool.map(pool_tasks.log_and_return, range(4)) == list(range(4))
    pool.join()
    assert len(handler.records) == 4


def test_a_library_that_takes_a_context(
    context: logexec._mp._context.LoggingContext, collect: Callable[..., ListHandler]
) -> None:
    """The DataLoader pattern: queues and an event from the context, daemon workers on an
    index queue, stopped by a sentinel, joined."""
    handler = collect()
    index_queues = [context.Queue() for _ in range(2)]
    data_queue = context.Queue()
    done = context.Event()
    workers = []
    for worker_id, index_queue in enumerate(index_queues):
        worker = context.Process(
            target=pool_tasks.dataloader_worker, args=(index_queue, data_queue, done, worker_id)
        )
        worker.daemon = True
        worker.start()
        workers.append(worker)
    for index in range(10):
        index_queues[index % 2].put(index)
    samples = sorted(data_queue.get(timeout=TIMEOUT) for _ in range(10))
    assert samples == [(i, i * i) for i in range(10)]
    done.set()
    for index_queue in index_queues:
        index_queue.put(None)
    for worker in workers:
        worker.join(timeout=TIMEOUT)
        assert worker.exitcode == 0
    messages = handler.messages()
    assert sorted(m for m in messages if "loads" in m) == sorted(
        f"worker {i % 2} loads sample {i}" for i in range(10)
    )
    assert sum("done" in m for m in messages) == 2


def test_fork_process_writes_nothing_to_the_parents_files(tmp_path: Path) -> None:
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork here")
    path = tmp_path / "log.txt"
    file_handler = logging.FileHandler(path)
    # Names the process that formats: a fork child writing through its inherited copy shows.
    file_handler.setFormatter(WriterFormatter())
    root = logging.getLogger()
    root.addHandler(file_handler)
    root.setLevel(logging.INFO)
    try:
        process = logexec.get_context("fork").Process(target=pool_tasks.process_target, args=(5, "forked"))
        process.start()
        process.join(timeout=TIMEOUT)
    finally:
        root.removeHandler(file_handler)
        file_handler.close()
    assert path.read_text(encoding="utf-8").splitlines() == [
        f"PARENT{os.getpid()} forked record {n}" for n in range(5)
    ]


SCRIPT = """
import logging, sys
import logexec
from tests import pool_tasks

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="HANDLED %(message)s", stream=sys.stdout)
    ctx = logexec.get_context(sys.argv[1])
    # Still logging when the main module ends: joined, terminated and drained by the exit hooks.
    ctx.Process(target=pool_tasks.slow_records, args=(200, "unjoined", 0.02)).start()
    ctx.Process(
        target=pool_tasks.slow_records, args=(100000, "daemon", 0.005, sys.argv[2] + "/daemon"), daemon=True
    ).start()
    pool = logexec.Pool(1, context=ctx)
    pool.apply_async(pool_tasks.slow_records, (100000, "pooled", 0.005, sys.argv[2] + "/pooled"))
    import time; time.sleep(2.5)
"""


def _numbers(lines: list[str], tag: str) -> list[int]:
    return [int(line.split()[-1]) for line in lines if line.startswith(f"HANDLED {tag} record")]


def test_processes_and_pools_never_joined_lose_nothing_by_interpreter_exit(
    start_method: str, tmp_path: Path
) -> None:
    """Records logged up to the end (a daemon's, a pool's killed at exit) arrive, none missing,
    none on the workers' stderr; the unjoined process runs to its end."""
    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {start_method} start method on this platform")
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), start_method, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "logexec: worker" not in completed.stderr, completed.stderr
    lines = completed.stdout.splitlines()
    assert _numbers(lines, "unjoined") == list(range(200)), completed.stderr
    for tag in ("daemon", "pooled"):
        numbers = _numbers(lines, tag)
        returned = (tmp_path / tag).read_text(encoding="utf-8").split()
        # Every record whose log call returned, and none twice (one more may have been
        # handled whose call had not yet returned when the process was terminated).
        assert len(returned) >= 5, (tag, completed.stderr)
        assert numbers[: len(returned)] == list(range(len(returned))), (tag, completed.stderr)
        assert numbers == list(range(len(numbers))), (tag, completed.stderr)
