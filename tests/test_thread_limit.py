"""A thread that cannot start (gh-109047: a thread limit, interpreter finalization).

Whichever thread is refused (logexec's listener or lifecycle thread, the stdlib's manager
thread or its queue's feeder thread), the pool fails as the stdlib's does, every worker it
started is stopped, the listener too, and the process exits. Each case runs
``tests/thread_limit_script.py`` in a subprocess with a hard timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "thread_limit_script.py"
# The script takes under 3 s here; a hang is what this catches.
SCRIPT_TIMEOUT = 60.0
# The stdlib's run only tells which error it gives; where it hangs (fork with no manager
# thread, the interpreter's exit waits for the workers), its report is out by then.
STDLIB_TIMEOUT = 10.0
# What the stdlib's pool gives when the thread of each role cannot start (3.12+; on 3.10
# and 3.11 a refused feeder thread kills the manager and the stdlib's pool hangs), and what
# logexec's gives for its own threads: the RuntimeError of a submit that could not start
# the pool's thread, like the stdlib's when its manager thread cannot start.
EXPECTED = {
    None: None,
    "manager": "RuntimeError",
    "feeder": "BrokenProcessPool",
    "listener": "RuntimeError",
    "lifecycle": "RuntimeError",
}


def run_script(
    kind: str, method: str, rule: str, timeout: float = SCRIPT_TIMEOUT
) -> tuple[dict[str, Any] | None, bool]:
    """The script's report and whether it exited by itself within the timeout."""
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), kind, method, rule],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, _ = process.communicate(timeout=timeout)
        exited = True
    except subprocess.TimeoutExpired:
        exited = False
        os.killpg(process.pid, signal.SIGKILL)
        stdout, _ = process.communicate(timeout=30)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else None), exited


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(") ", 1)[1][0] != "Z"


def still_alive(pids: list[int], grace: float = 5.0) -> list[int]:
    deadline = time.monotonic() + grace
    left = [pid for pid in pids if alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)  # not ours to keep: the next test starts clean
    return left


def first_error(report: dict[str, Any]) -> str | None:
    errors = report["errors"]
    return str(errors[0][1]) if errors else None


def check_logexec(method: str, rule: str) -> dict[str, Any]:
    report, exited = run_script("logexec", method, rule)
    assert exited, f"{rule}, {method}: the script did not exit within {SCRIPT_TIMEOUT:g} s"
    assert report is not None, f"{rule}, {method}: the script printed no report"
    left = still_alive(report["pids"])
    assert not left, f"{rule}, {method}: workers left alive: {left} ({report})"
    assert not report["threads"], f"{rule}, {method}: logexec threads still alive: {report}"
    # Two threads may be refused (the feeder starts on the manager thread, concurrently
    # with ours): the error is the one of either.
    expected = {EXPECTED[role] for role in report["refused"]} or {None}
    assert first_error(report) in expected, f"{rule}, {method}: {report}"
    return report


@pytest.mark.timeout(4 * SCRIPT_TIMEOUT)
@pytest.mark.parametrize("allowed", [0, 1, 2, 3])
def test_the_nth_thread_cannot_start(mp_context: Any, allowed: int) -> None:
    """With only N threads allowed, the pool fails as the stdlib's, no worker is left, it exits."""
    method = mp_context.get_start_method()
    report = check_logexec(method, f"count:{allowed}")
    # The stdlib in the same configuration: its refused thread gives what EXPECTED says.
    # (It may hang: on 3.10 and 3.11 a refused feeder thread leaves map() waiting.)
    stdlib, _ = run_script("stdlib", method, f"count:{allowed}", timeout=STDLIB_TIMEOUT)
    if stdlib is not None:
        still_alive(stdlib["pids"], grace=0.0)
        expected = {EXPECTED[role] for role in stdlib["refused"]} or {None}
        assert first_error(stdlib) in expected, f"stdlib: {stdlib}"
    assert report["refused"], f"count:{allowed} refused no thread: {report}"


@pytest.mark.timeout(4 * SCRIPT_TIMEOUT)
@pytest.mark.parametrize("role", ["listener", "lifecycle", "manager", "feeder"])
def test_the_thread_of_each_role_cannot_start(mp_context: Any, role: str) -> None:
    """Whichever thread is refused, the pool fails as the stdlib's, no worker is left, it exits."""
    method = mp_context.get_start_method()
    report = check_logexec(method, f"role:{role}")
    assert report["refused"] == [role], report
    if role in ("manager", "feeder") and sys.version_info >= (3, 12):
        stdlib, _ = run_script("stdlib", method, f"role:{role}", timeout=STDLIB_TIMEOUT)
        assert stdlib is not None
        still_alive(stdlib["pids"], grace=0.0)
        assert first_error(stdlib) == first_error(report), (stdlib, report)


@pytest.mark.timeout(60)
def test_a_listener_that_could_not_start_is_named_by_every_submit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error of the refused listener, not "called on the listener thread" (the caller's).

    When the listener thread cannot start, the listener is finished on the caller's thread;
    that thread must not then count as the listener's, or every later ``submit`` from it
    blames a parent handler that does not exist.
    """
    import multiprocessing
    import threading

    from logexec import LoggingProcessPoolExecutor

    original_start = threading.Thread.start

    def refuse_the_listener(self: threading.Thread) -> None:
        if self.name == "logexec-listener":
            raise RuntimeError("can't start new thread")
        original_start(self)

    monkeypatch.setattr(threading.Thread, "start", refuse_the_listener)
    executor = LoggingProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        executor.__enter__()
        for _ in range(2):
            with pytest.raises(RuntimeError, match="could not start its log listener thread"):
                executor.submit(pow, 2, 8)
    finally:
        executor.shutdown(wait=True)
