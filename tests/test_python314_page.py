"""docs/python-3.14.md: its two programs do what the page says, run as a user would run them.

The page's first program loses its workers' records under forkserver (the default on Linux
from 3.14); its second, the same with one line changed, keeps them. Before 3.14 the default is
fork, so there forkserver is made the default the way 3.14 has it, by a ``sitecustomize``
that sets the start method in the program's process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "python-3.14.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)
RUN_TIMEOUT = 120


def programs() -> tuple[str, str]:
    """The page's two programs: the stdlib's, then logexec's."""
    blocks = PYTHON_BLOCK.findall(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) == 2, f"expected the page's two programs, found {len(blocks)} python blocks"
    return blocks[0], blocks[1]


def run(program: str, folder: Path) -> list[str]:
    """Run ``program`` as a script in ``folder``, under forkserver; return its app.log's lines."""
    folder.mkdir()
    (folder / "program.py").write_text(program, encoding="utf-8")
    paths = [str(ROOT)]
    if sys.version_info < (3, 14):
        site = folder / "site"
        site.mkdir()
        # Only the program's own process sets it: the forkserver and the workers start from
        # multiprocessing's own entry points, with the method already chosen.
        (site / "sitecustomize.py").write_text(
            "import multiprocessing, sys\n"
            "if sys.argv and sys.argv[0].endswith('program.py'):\n"
            "    multiprocessing.set_start_method('forkserver')\n",
            encoding="utf-8",
        )
        paths.insert(0, str(site))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    completed = subprocess.run(
        [sys.executable, "program.py"],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return (folder / "app.log").read_text(encoding="utf-8").splitlines()


def test_the_pages_programs_differ_in_one_line() -> None:
    """The fix on the page is one line: the import of the executor."""
    stdlib, logexec = programs()
    changed = [
        (old, new) for old, new in zip(stdlib.splitlines(), logexec.splitlines(), strict=True) if old != new
    ]
    assert changed == [
        (
            "from concurrent.futures import ProcessPoolExecutor",
            "from logexec import LoggingProcessPoolExecutor as ProcessPoolExecutor",
        )
    ]


@pytest.mark.timeout(RUN_TIMEOUT * 2 + 30)
def test_forkserver_loses_worker_records_under_the_stdlib_and_logexec_keeps_them(tmp_path: Path) -> None:
    """Under forkserver the stdlib program's log lacks every worker record; logexec's has them all."""
    stdlib, logexec = programs()
    lost = run(stdlib, tmp_path / "stdlib")
    assert lost == ["MainProcess INFO results: [0, 2, 4, 6]"], lost
    kept = run(logexec, tmp_path / "logexec")
    assert kept[-1] == "MainProcess INFO results: [0, 2, 4, 6]", kept
    workers = [line.split(" ", 1) for line in kept[:-1]]
    assert sorted(message for _, message in workers) == [f"INFO processing item {item}" for item in range(4)]
    assert all(name != "MainProcess" for name, _ in workers), kept
