"""What PyPI shows: the README claims no home that is not ours, and the metadata says what CI runs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A Markdown link or image target: [text](target) or ![alt](target).
MARKDOWN_TARGET = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HTML_TARGET = re.compile(r"""(?:href|src)=["']([^"']+)["']""")


# Homes that are not ours: the GitHub account logexec and the Read the Docs name belong to others.
FOREIGN_HOMES = ("github.com/logexec", "logexec.readthedocs.io")


@pytest.mark.timeout(5)
def test_readme_links_claim_no_foreign_home_and_relative_links_exist() -> None:
    """No README link to a home that is not ours; every relative link points at a file in the repository."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = MARKDOWN_TARGET.findall(text) + HTML_TARGET.findall(text)
    foreign = [target for target in targets if any(home in target for home in FOREIGN_HOMES)]
    assert foreign == []
    relative = [target.split("#", 1)[0] for target in targets if "://" not in target]
    missing = [target for target in relative if target and not (ROOT / target).exists()]
    assert missing == []


@pytest.mark.timeout(5)
def test_no_foreign_home_anywhere() -> None:
    """No URL to a home that is not ours in metadata, mkdocs.yml, docs, benchmarks, examples, logexec."""
    # Those present: the unpacked sdist (where the suite also runs) has no docs configuration.
    files = [ROOT / name for name in ("pyproject.toml", "mkdocs.yml", ".readthedocs.yaml")]
    files = [path for path in files if path.is_file()]
    for folder in ("docs", "benchmarks", "examples", "logexec"):
        files += [path for path in (ROOT / folder).rglob("*") if path.suffix in {".md", ".py", ".yml"}]
    offending = [
        str(path.relative_to(ROOT))
        for path in files
        if any(home in path.read_text(encoding="utf-8") for home in FOREIGN_HOMES)
    ]
    assert offending == []


@pytest.mark.timeout(5)
def test_metadata_license_urls_and_python_versions() -> None:
    """pyproject.toml: SPDX license and file, no project URLs (no home yet), a classifier per 3.10+."""
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is in the standard library from 3.11")
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert not any(classifier.startswith("License ::") for classifier in project["classifiers"])
    assert "urls" not in project
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
