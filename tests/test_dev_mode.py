"""python -X dev: a worker's set-up leaves no unclosed inherited file behind, under every start method."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import logging
import multiprocessing
import sys

from logexec import LoggingProcessPoolExecutor


def work(n):
    logging.getLogger("app").info("n=%d", n)
    return n


if __name__ == "__main__":
    logging.basicConfig(filename="app.log", level=logging.INFO, format="%(message)s")
    context = multiprocessing.get_context(sys.argv[1])
    with LoggingProcessPoolExecutor(max_workers=2, mp_context=context) as executor:
        print(sum(executor.map(work, range(20))))
"""


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_no_resource_warning_under_dev_mode(start_method: str, mp_context: object, tmp_path: Path) -> None:
    """-X dev -W error::ResourceWarning: no warning, and the parent's app.log has each record once."""
    (tmp_path / "script.py").write_text(SCRIPT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "script.py", start_method]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=80, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "ResourceWarning" not in result.stderr
    assert result.stdout.strip() == "190"
    lines = (tmp_path / "app.log").read_text(encoding="utf-8").splitlines()
    assert sorted(lines) == sorted(f"n={n}" for n in range(20))
