"""How an alternative is run for a comparison: in a fresh interpreter, in a session of its own.

One harness for both comparisons: ``python -m logexec demo --compare`` (``_compare``, whose
alternatives the benchmark runs too) and ``benchmarks/compare_alternatives.py``, which adds
contenders (multiprocessing-logging, loguru, concurrent-log-handler), checks and rounds.

An alternative that hangs must never hang the comparison. So each runs in a child
interpreter in a new session, with a hard timeout after which the whole session (the child,
its workers, a forkserver) is killed; the session is killed after a normal end too, which
reaps whatever the alternative left behind. Inside the child, ``bounded`` runs each call
that may hang (a pool's shutdown, a listener's stop) on a daemon thread, and gives up on it
after a bound, so that the child still reports what it saw.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence

# How long a killed session's leader may take to be reaped.
REAP_SECONDS = 3.0


class Isolated:
    """What became of one child: its exit status (None: not even reaped), its output, and
    whether it overran its timeout (and was killed for it)."""

    def __init__(self, returncode: int | None, stdout: str, stderr: str, timed_out: bool) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out


def run_isolated(command: Sequence[str], timeout: float, reap_seconds: float = REAP_SECONDS) -> Isolated:
    """Run ``command`` in a new session; kill the whole session when it ends or overruns.

    Its output goes to files, not pipes: a process it left behind outside the session could
    hold a pipe open, and reading it would then wait for ever.
    """
    directory = tempfile.mkdtemp(prefix="logexec-isolated-")
    try:
        out_path, err_path = os.path.join(directory, "stdout"), os.path.join(directory, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            child = subprocess.Popen(
                list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
            timed_out = False
            try:
                child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Also reaps whatever the alternative left behind: its workers, a forkserver.
                kill_session(child.pid)
                try:
                    child.wait(timeout=reap_seconds)
                except subprocess.TimeoutExpired:
                    pass
        return Isolated(child.returncode, _read_text(out_path), _read_text(err_path), timed_out)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def kill_session(pid: int) -> None:
    """SIGKILL every process of the session ``pid`` leads (gone already: nothing to do)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def bounded(action: Callable[[], object], label: str, hung: list[str], seconds: float) -> None:
    """Run ``action`` on a daemon thread; if it is still running after ``seconds``, say so in
    ``hung`` (and if it raised, say that)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except Exception as error:
            errors.append(error)

    thread = threading.Thread(target=run, name=f"bounded {label}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        hung.append(f"{label} hung (> {seconds:g} s)")
    elif errors:
        hung.append(f"{label} raised {type(errors[0]).__name__}")


def _read_text(path: str) -> str:
    with open(path, "rb") as stream:
        return stream.read().decode("utf-8", "replace")
