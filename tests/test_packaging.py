"""What PyPI shows: the README's links work off GitHub, and the metadata says what CI runs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A Markdown link or image target: [text](target) or ![alt](target).
MARKDOWN_TARGET = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HTML_TARGET = re.compile(r"""(?:href|src)=["']([^"']+)["']""")


@pytest.mark.timeout(5)
def test_readme_links_and_images_are_absolute() -> None:
    """Every README link and image is an absolute https URL: PyPI renders the README off the repository."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = MARKDOWN_TARGET.findall(text) + HTML_TARGET.findall(text)
    assert len(targets) >= 10
    relative = [target for target in targets if not target.startswith("https://")]
    assert relative == []


@pytest.mark.timeout(5)
def test_metadata_license_urls_and_python_versions() -> None:
    """pyproject.toml: SPDX license and file, the four project URLs, one classifier per CPython 3.10+."""
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is in the standard library from 3.11")
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert not any(classifier.startswith("License ::") for classifier in project["classifiers"])
    assert {"Homepage", "Documentation", "Changelog", "Issues"} <= set(project["urls"])
    versions = [
        classifier.rsplit(" ", 1)[1]
        for classifier in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", classifier)
    ]
    minimum = project["requires-python"].removeprefix(">=")
    assert versions[0] == minimum
    assert versions == [f"3.{minor}" for minor in range(10, 10 + len(versions))]


@pytest.mark.timeout(5)
def test_os_classifiers_claim_only_platforms_the_suite_has_run_on() -> None:
    """An OS classifier only for a platform the README's platform table says the suite ran on."""
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is in the standard library from 3.11")
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    claimed = {
        classifier for classifier in project["classifiers"] if classifier.startswith("Operating System ::")
    }
    assert "Operating System :: POSIX :: Linux" in claimed
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    for platform, classifier in (
        ("macOS", "Operating System :: MacOS"),
        ("Windows", "Operating System :: Microsoft"),
    ):
        row = next(line for line in readme if line.startswith(f"| {platform} |"))
        if "not yet run" in row:
            assert not [name for name in claimed if name.startswith(classifier)], row
    assert "Operating System :: OS Independent" not in claimed
