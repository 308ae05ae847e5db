"""Every complete script in the README and the docs (a python block with a __main__ guard) runs as pasted."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A fenced python block; only those with a __main__ guard are complete scripts, the others excerpts.
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
# Extras a script may import: without them installed the script cannot run here (.ci/run has them all).
EXTRAS = ("distributed", "dask", "joblib", "sklearn", "loguru", "rich", "structlog", "pythonjsonlogger")


def _scripts() -> list[tuple[str, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for number, block in enumerate(FENCE.findall(text), start=1):
            if 'if __name__ == "__main__":' in block:
                found.append((f"{path.relative_to(ROOT)}#{number}", block))
    return found


def _missing_extra(script: str) -> str | None:
    for name in EXTRAS:
        imported = re.search(rf"^\s*(?:import|from)\s+{name}\b", script, re.MULTILINE)
        if imported and importlib.util.find_spec(name) is None:
            return name
    return None


SCRIPTS = _scripts()


@pytest.mark.timeout(5)
def test_there_are_scripts_to_run() -> None:
    """The extraction finds the README's example and the docs' scripts (a broken regex finds none)."""
    assert len(SCRIPTS) >= 5


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("where", "script"), SCRIPTS, ids=[where for where, _ in SCRIPTS])
def test_script_runs_as_pasted(where: str, script: str, tmp_path: Path) -> None:
    """A complete script from the README or the docs exits 0 in a fresh interpreter, in an empty directory."""
    missing = _missing_extra(script)
    if missing is not None:
        pytest.skip(f"{where} imports {missing}, an extra that is not installed here")
    if "LoggingInterpreterPoolExecutor" in script and sys.version_info < (3, 14):
        pytest.skip(f"{where} uses subinterpreters: CPython 3.14 or newer")
    (tmp_path / "snippet.py").write_text(script, encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "snippet.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"
