"""MkDocs hook: publish files that live outside ``docs/`` at their repository path.

The benchmark chart stays where the benchmarks write it (``benchmarks/results/``); the
site serves that same file, so a page links it as ``benchmarks/results/throughput.png``
relative to the site root and it never goes stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

# The repository root: this file is docs/hooks/shared_files.py.
ROOT = Path(__file__).resolve().parent.parent.parent
SHARED = ("benchmarks/results/throughput.png",)


def on_files(files: Files, config: Any) -> Files:
    for path in SHARED:
        files.append(
            File(
                path,
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
