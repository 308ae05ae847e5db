"""Type tests: a type checker catches what it catches with the stdlib's ProcessPoolExecutor.

``tests/typing/pass_calls.py`` must type-check without a single error;
``tests/typing/fail_calls.py`` must produce exactly the errors its ``# E: <code>`` markers
name, on exactly those lines (a wrong argument to ``submit``, a non-handler in
``handlers=``, ...). Checked with mypy and, where its Node.js package can be installed,
pyright. Each checker that is absent makes its tests skip, with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.typing

ROOT = Path(__file__).resolve().parent.parent
TYPING = Path(__file__).resolve().parent / "typing"
PASS_CALLS = TYPING / "pass_calls.py"
FAIL_CALLS = TYPING / "fail_calls.py"
# A marker names one or more mypy error codes: "# E: arg-type" or "# E: call-arg, misc".
MARKER = re.compile(r"#\s*E:\s*([a-z-]+(?:\s*,\s*[a-z-]+)*)")
MYPY_ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")
# Generous: a cold mypy run checks logexec and typeshed's stdlib first.
CHECKER_TIMEOUT_SECONDS = 240


def expected_errors() -> set[tuple[int, str]]:
    """(line, mypy error code) for every ``# E:`` marker in fail_calls.py."""
    expected = set()
    for number, line in enumerate(FAIL_CALLS.read_text(encoding="utf-8").splitlines(), start=1):
        found = MARKER.search(line)
        if found:
            expected.update((number, code.strip()) for code in found.group(1).split(","))
    return expected


def run_mypy(path: Path, cache: Path) -> tuple[int, str]:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install '.[typing]' from the checkout)")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--show-error-codes",
            "--no-error-summary",
            "--hide-error-context",
            "--no-pretty",
            "--no-color-output",
            "--cache-dir",
            str(cache),
            str(path),
        ],
        cwd=ROOT,  # where this logexec's source is, installed or not
        capture_output=True,
        text=True,
        timeout=CHECKER_TIMEOUT_SECONDS,
        check=False,
    )
    return completed.returncode, completed.stdout + completed.stderr


def run_pyright(path: Path) -> list[dict[str, object]]:
    """Pyright's error diagnostics for ``path``; skips if pyright cannot run here."""
    pyright = shutil.which("pyright")
    if pyright is None:
        pytest.skip("pyright is not installed (pip install '.[typing]' from the checkout)")
    try:
        # The PyPI package fetches pyright's Node.js package on its first run.
        probe = subprocess.run(
            [pyright, "--version"],
            capture_output=True,
            text=True,
            timeout=CHECKER_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("pyright did not start (its Node.js package could not be fetched in time)")
    if probe.returncode != 0:
        pytest.skip(f"pyright does not run here: {(probe.stderr or probe.stdout).strip()[-300:]}")
    completed = subprocess.run(
        [pyright, "--outputjson", "--pythonpath", sys.executable, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHECKER_TIMEOUT_SECONDS,
        check=False,
    )
    try:
        report = json.loads(completed.stdout)
    except ValueError:
        pytest.fail(f"pyright printed no JSON report: {completed.stdout[-500:]}{completed.stderr[-500:]}")
    diagnostics: list[dict[str, object]] = report["generalDiagnostics"]
    return [diagnostic for diagnostic in diagnostics if diagnostic["severity"] == "error"]


@pytest.mark.timeout(CHECKER_TIMEOUT_SECONDS + 30)
def test_correct_calls_pass_mypy_strict(tmp_path: Path) -> None:
    """Correct uses of the public API (submit, map, handlers=, ...) raise no mypy --strict error."""
    status, output = run_mypy(PASS_CALLS, tmp_path / "mypy-cache")
    assert status == 0, output


@pytest.mark.timeout(CHECKER_TIMEOUT_SECONDS + 30)
def test_mypy_reports_exactly_the_marked_mistakes(tmp_path: Path) -> None:
    """mypy reports each marked mistake (wrong submit argument, non-handler, ...) and nothing else."""
    expected = expected_errors()
    assert len(expected) >= 10, "the markers were not found"
    _, output = run_mypy(FAIL_CALLS, tmp_path / "mypy-cache")
    reported = set()
    for line in output.splitlines():
        found = MYPY_ERROR.match(line)
        if found:
            reported.add((int(found.group("line")), found.group("code")))
    assert reported, output
    assert sorted(reported) == sorted(expected), output


@pytest.mark.timeout(CHECKER_TIMEOUT_SECONDS * 2 + 30)
def test_correct_calls_pass_pyright_strict() -> None:
    """Correct uses of the public API raise no pyright error in strict mode."""
    errors = run_pyright(PASS_CALLS)
    assert errors == [], errors


@pytest.mark.timeout(CHECKER_TIMEOUT_SECONDS * 2 + 30)
def test_pyright_reports_errors_on_exactly_the_marked_lines() -> None:
    """pyright finds an error on every marked line of fail_calls.py, and on no other line."""
    errors = run_pyright(FAIL_CALLS)
    lines = set()
    for error in errors:
        start = error["range"]["start"]  # type: ignore[index]
        lines.add(start["line"] + 1)  # pyright counts lines from 0
    assert sorted(lines) == sorted({line for line, _ in expected_errors()}), errors
