"""Shared pieces of the benchmark scripts: records, formatters, verification, reporting.

Not a benchmark itself (pytest never looks here; the scripts import it as a sibling module).
Every record a benchmark logs carries its source id and a sequence number, so that the
output file can be checked line by line: missing, duplicated and corrupt records.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The logger every worker logs to; the parent's handler sits on root.
LOGGER_NAME = "bench.work"
# Forty bytes of payload make a line of about a hundred bytes, a typical log line.
PAD = "x" * 40
MESSAGE = "src=%d seq=%d %s"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
RESULTS_DIRECTORY = Path(__file__).resolve().parent / "results"

_MESSAGE_PATTERN = re.compile(r"src=(\d+) seq=(\d+) " + PAD)
_PLAIN_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d{3} INFO "
    + re.escape(LOGGER_NAME)
    + r" \d+ (src=\d+ seq=\d+ x{40})"
)


class JsonFormatter(logging.Formatter):
    """A tiny JSON-lines formatter, the kind an application writes itself."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": self.formatTime(record),
                "level": record.levelname,
                "logger": record.name,
                "pid": record.process,
                "message": record.getMessage(),
            }
        )


def make_formatter(kind: str) -> logging.Formatter:
    """``plain`` text or ``json`` lines."""
    if kind == "json":
        return JsonFormatter()
    if kind == "plain":
        return logging.Formatter(PLAIN_FORMAT)
    raise ValueError(f"formatter must be 'plain' or 'json', got {kind!r}")


def log_records(logger: logging.Logger, source: int, count: int) -> None:
    """The benchmark's log loop: ``count`` records tagged with ``source``."""
    info = logger.info
    for sequence in range(count):
        info(MESSAGE, source, sequence, PAD)


def split(total: int, parts: int) -> list[int]:
    """``total`` records split into ``parts`` near-equal counts."""
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


@dataclass
class Correctness:
    lines: int
    missing: int
    duplicated: int
    corrupt: int

    def as_dict(self) -> dict[str, int]:
        return {
            "lines": self.lines,
            "missing": self.missing,
            "duplicated": self.duplicated,
            "corrupt": self.corrupt,
        }


def verify(path: str | os.PathLike[str], expected: Sequence[int], formatter: str) -> Correctness:
    """Parse the output file; ``expected[source]`` is how many records that source logged.

    A line is corrupt when it does not parse whole (a torn or interleaved write, or a JSON
    line that does not load); a valid line for a (source, seq) seen before is a duplicate.
    """
    seen: Counter[tuple[int, int]] = Counter()
    lines = corrupt = 0
    with open(path, encoding="utf-8", errors="replace") as stream:
        for line in stream:
            lines += 1
            message = _message_of(line.rstrip("\n"), formatter)
            match = _MESSAGE_PATTERN.fullmatch(message) if message is not None else None
            if match is None:
                corrupt += 1
                continue
            key = (int(match.group(1)), int(match.group(2)))
            if key[0] >= len(expected) or key[1] >= expected[key[0]]:
                corrupt += 1
                continue
            seen[key] += 1
    duplicated = sum(count - 1 for count in seen.values())
    missing = sum(expected) - len(seen)
    return Correctness(lines, missing, duplicated, corrupt)


def _message_of(line: str, formatter: str) -> str | None:
    if formatter == "json":
        try:
            document = json.loads(line)
        except ValueError:
            return None
        message = document.get("message") if isinstance(document, dict) else None
        return message if isinstance(message, str) else None
    match = _PLAIN_LINE.fullmatch(line)
    return match.group(1) if match else None


# Measurements -----------------------------------------------------------------------------


def peak_rss_kib(pid: int | str = "self") -> int:
    """``VmHWM`` (peak resident set) of a process, in KiB, from ``/proc/<pid>/status``."""
    return _status_field(pid, "VmHWM")


def current_rss_kib(pid: int | str = "self") -> int:
    return _status_field(pid, "VmRSS")


def _status_field(pid: int | str, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as stream:
        for line in stream:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(f"{field} not found in /proc/{pid}/status")


def thread_cpu_seconds(native_id: int) -> float:
    """CPU time a thread of this process has used, in seconds (nanosecond schedstat)."""
    with open(f"/proc/self/task/{native_id}/schedstat", encoding="ascii") as stream:
        return int(stream.read().split()[0]) / 1e9


def reset_root_logger(level: int = logging.INFO) -> logging.Logger:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    logging.disable(logging.NOTSET)
    return root


# Running trials ---------------------------------------------------------------------------


def run_trial(script: str, spec: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """Run one trial in a fresh interpreter, so that no library's global state carries over.

    The child prints one JSON line, its result, as the last line of its stdout.
    """
    command = [sys.executable, script, "--trial", json.dumps(spec)]
    environment = dict(os.environ)
    if spec.get("pythonpath"):
        # An A/B run: this trial imports logexec from another checkout (see --alt-logexec).
        environment["PYTHONPATH"] = os.pathsep.join(
            part for part in (spec["pythonpath"], environment.get("PYTHONPATH", "")) if part
        )
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, env=environment
    )
    if completed.returncode != 0 or not completed.stdout.strip():
        raise RuntimeError(
            f"trial {spec} failed with exit code {completed.returncode}:\n{completed.stderr[-4000:]}"
        )
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def median(values: Iterable[float]) -> float:
    listed = [value for value in values if not math.isnan(value)]
    return statistics.median(listed) if listed else float("nan")


def spread(values: Iterable[float]) -> str:
    """``min-max`` of the values, for the reader to judge the noise."""
    listed = [value for value in values if not math.isnan(value)]
    if not listed:
        return "-"
    return f"{_short(min(listed))}-{_short(max(listed))}"


def _short(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(lines)


def environment_line() -> str:
    load = os.getloadavg()
    return (
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    )


def add_alt_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--alt-logexec",
        metavar="PATH",
        help="A/B mode: add an 'alt' configuration, logexec imported from PATH (a directory holding "
        "a logexec/ package, such as a prototype checkout); results go to results/<script>_alt.*",
    )


def revision_note(args: argparse.Namespace) -> str:
    """The logexec revision, plus the prototype's path in an A/B run."""
    note = logexec_revision()
    if getattr(args, "alt_logexec", None):
        note += f"; `alt` = logexec imported from {args.alt_logexec}"
    return note


def logexec_revision() -> str:
    """The last commit that touched logexec/, so results can be matched to the code."""
    root = Path(__file__).resolve().parent.parent
    try:
        completed = subprocess.run(
            ["git", "log", "-1", "--format=%h %s", "--", "logexec"],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "logexec"],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    revision = completed.stdout.strip() or "unknown"
    return revision + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")


def write_section(name: str, text: str, argv: Sequence[str]) -> None:
    """Save one script's results as ``results/<name>.md`` and record its command line."""
    RESULTS_DIRECTORY.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIRECTORY / f"{name}.md").write_text(text + "\n", encoding="utf-8")
    command = "python3 " + " ".join(shlex.quote(argument) for argument in argv)
    commands = RESULTS_DIRECTORY / "commands.txt"
    existing = commands.read_text(encoding="utf-8").splitlines() if commands.exists() else []
    script = name.removesuffix("_alt")
    alt = "--alt-logexec" in argv
    kept = [
        line
        for line in existing
        if not (line.startswith(f"python3 benchmarks/{script}.py") and ("--alt-logexec" in line) == alt)
    ]
    commands.write_text("\n".join([*kept, command]) + "\n", encoding="utf-8")
    assemble_results()


def save_json(name: str, results: object) -> None:
    """Keep the raw per-trial results next to the tables, for later analysis."""
    RESULTS_DIRECTORY.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIRECTORY / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


# The order of the sections in results.md.
SECTIONS = ("bench_throughput", "bench_tasks", "bench_memory", "bench_overhead", "bench_stages")


def assemble_results() -> None:
    """Rebuild ``results/results.md`` from every script's latest section."""
    parts = ["# logexec benchmark results", "", "Commands: see `commands.txt`. Chart: `throughput.png`."]
    for name in SECTIONS:
        section = RESULTS_DIRECTORY / f"{name}.md"
        if section.exists():
            parts += ["", section.read_text(encoding="utf-8").rstrip()]
    alternatives = sorted(RESULTS_DIRECTORY.glob("*_alt.md"))
    if alternatives:
        parts += ["", "# A/B runs against a prototype (`--alt-logexec`): `alt` is the prototype"]
        for section in alternatives:
            parts += ["", section.read_text(encoding="utf-8").rstrip()]
    (RESULTS_DIRECTORY / "results.md").write_text("\n".join(parts) + "\n", encoding="utf-8")
