"""tools/install_cpython.sh: CPython 3.14 and 3.15 from Debian unstable, for CI on this machine.

The script itself is checked here without running it (it downloads); the interpreters it
installed, when present (``.ci/run`` installs them before the suite), are checked for the
modules that Debian's split packaging or a wrong loader or rpath would break.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "install_cpython.sh"
VERSIONS = ["3.14", "3.15"]
# Modules backed by libraries the script unpacks beside the interpreter (libssl, libsqlite3,
# libffi, liblzma, ...): each fails to import if the loader or the rpath is wrong.
MODULES = ["ssl", "sqlite3", "ctypes", "lzma", "bz2", "zlib", "readline", "test.support"]


def cache_root() -> Path:
    """Where the script caches its interpreters (the same rule as the script's)."""
    if os.environ.get("LOGEXEC_PYTHONS"):
        return Path(os.environ["LOGEXEC_PYTHONS"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "logexec-pythons"


@pytest.mark.timeout(10)
def test_the_script_parses() -> None:
    """bash -n accepts tools/install_cpython.sh, and it is executable."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash here")
    completed = subprocess.run([bash, "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    assert os.access(SCRIPT, os.X_OK)


@pytest.mark.timeout(10)
def test_every_apt_get_is_private() -> None:
    """The script's only apt-get runs with its own sources, lists and cache, and never installs."""
    text = SCRIPT.read_text(encoding="utf-8")
    calls = [line for line in text.splitlines() if re.match(r"\s*apt-get\b", line)]
    assert len(calls) == 1, calls  # in private_apt_get
    body = text[text.index("private_apt_get() {") :]
    body = body[: body.index("\n}\n")]
    for option in (
        "Dir::Etc::SourceList=",
        "Dir::Etc::SourceParts=/dev/null",
        "Dir::State::Lists=",
        "Dir::Cache=",
    ):
        assert option in body, option
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    uses = re.findall(r"private_apt_get \S+ (\w+)", code)
    assert uses and set(uses) <= {"update", "download"}, uses
    assert "dpkg -i" not in code and "apt-get install" not in code


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", VERSIONS)
def test_installed_interpreter_has_its_libraries(version: str) -> None:
    """An interpreter the script installed imports ssl, sqlite3, ctypes, lzma; a second run is a no-op."""
    home = cache_root() / version
    if not (home / "complete").exists():
        pytest.skip(f"CPython {version} is not installed here (bash tools/install_cpython.sh {version})")
    python = home / "venv" / "bin" / "python"
    completed = subprocess.run(
        [str(python), "-c", f"import sys, {', '.join(MODULES)}; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == version
    again = subprocess.run(
        ["bash", str(SCRIPT), version], capture_output=True, text=True, timeout=30, check=False
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == str(python)
    assert again.stderr == ""  # cached: nothing downloaded, nothing said
