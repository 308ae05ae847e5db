"""Forkserver preloading (``set_forkserver_preload``): handlers the server picked up stay out.

Under forkserver, 3.14's default on Linux, a preloaded module that configures logging at
import hands its handler to every worker forked from the server, just as fork hands over the
parent's. 3.15 added ``on_error=`` to make a failed preload an error instead of a silent
no-op; where it exists it is used, so that the preload is known to have happened.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECORDS = 20

SCRIPT = textwrap.dedent(
    """
    import concurrent.futures, logging, multiprocessing, sys
    from logexec import LoggingProcessPoolExecutor
    from tests import helpers

    if __name__ == "__main__":
        which, parent_log, records = sys.argv[1], sys.argv[2], int(sys.argv[3])
        logging.basicConfig(filename=parent_log, level=logging.INFO, format="parent %(message)s")
        context = multiprocessing.get_context("forkserver")
        options = {"on_error": "fail"} if sys.version_info >= (3, 15) else {}
        context.set_forkserver_preload(["tests.preload_logging"], **options)
        pool = LoggingProcessPoolExecutor if which == "logexec" else concurrent.futures.ProcessPoolExecutor
        with pool(2, mp_context=context) as executor:
            print(executor.submit(helpers.log_n, records).result(timeout=60))
    """
)


def run(which: str, tmp_path: Path) -> tuple[list[str], list[str]]:
    """Run the script with ``which`` pool; the lines of the parent's log and of the preload's."""
    parent_log, preload_log = tmp_path / f"{which}-parent.log", tmp_path / f"{which}-preload.log"
    env = dict(os.environ, PRELOAD_LOG=str(preload_log), PYTHONPATH=str(ROOT))
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, which, str(parent_log), str(RECORDS)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=ROOT,
        env=env,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == [str(RECORDS)], completed.stdout

    def lines(path: Path) -> list[str]:
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    return lines(parent_log), lines(preload_log)


@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.platform == "win32", reason="forkserver is POSIX-only")
def test_forkserver_preloaded_handlers_do_not_get_worker_records(tmp_path: Path) -> None:
    """A handler a preloaded module attached in the forkserver gets no worker record; the parent gets all."""
    parent, preload = run("logexec", tmp_path)
    assert parent == [f"parent worker 0 record {i}" for i in range(RECORDS)]
    assert preload == []
    # The hazard is real: the stdlib's pool writes every worker record through the handler
    # the server picked up, and none reaches the parent's configuration.
    stdlib_parent, stdlib_preload = run("stdlib", tmp_path)
    assert stdlib_parent == []
    assert stdlib_preload == [f"preload worker 0 record {i}" for i in range(RECORDS)]
