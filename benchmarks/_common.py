"""Shared pieces of the benchmark scripts: records, formatters, verification, the worker and
parent sides of the configurations, interleaved rounds, reporting.

Not a benchmark itself (pytest never looks here; the scripts import it as a sibling module).
Every record a benchmark logs carries its source id and a sequence number, so that the
output file can be checked line by line: missing, duplicated and corrupt records.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import logging.handlers
import math
import multiprocessing
import os
import platform
import random
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from multiprocessing.queues import Queue
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


# The worker and parent sides the scripts share ---------------------------------------------


def logging_task(source: int, count: int) -> int:
    """A pool task: log ``count`` records tagged with ``source``."""
    log_records(logging.getLogger(LOGGER_NAME), source, count)
    return count


def disabled_task(source: int, count: int) -> int:
    """The same log calls with logging disabled in the worker: the pool's own cost."""
    logging.disable(logging.CRITICAL)
    log_records(logging.getLogger(LOGGER_NAME), source, count)
    return count


def null_initializer() -> None:
    """A worker whose records go to a NullHandler (under fork it inherits the parent's handlers)."""
    reset_root_logger().addHandler(logging.NullHandler())


def recipe_initializer(queue: Queue[Any]) -> None:
    """The stdlib recipe's worker side: a QueueHandler on root replaces the inherited handlers."""
    reset_root_logger().addHandler(logging.handlers.QueueHandler(queue))


class DispatchByName(logging.Handler):
    """The recipe's parent side: hand each record to its own logger in the parent."""

    def handle(self, record: logging.LogRecord) -> bool:
        logging.getLogger(record.name).handle(record)
        return True


def start_recipe_listener(
    context: BaseContext,
) -> tuple[Queue[Any], logging.handlers.QueueListener]:
    """The recipe's queue and its started listener; workers take the queue through
    :func:`recipe_initializer`."""
    queue: Queue[Any] = context.Queue(-1)
    listener = logging.handlers.QueueListener(queue, DispatchByName(), respect_handler_level=True)
    listener.start()
    return queue, listener


def open_pool(
    config: str, workers: int, context: BaseContext
) -> tuple[concurrent.futures.ProcessPoolExecutor, logging.handlers.QueueListener | None]:
    """A pool for ``plain``/``null`` (the workers' records go to a NullHandler), ``recipe`` (with
    its started listener, for the caller to stop after the pool), or ``logexec``/``alt``."""
    if config in ("plain", "null"):
        # Under fork the worker inherits the parent's handlers; drop records instead.
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=null_initializer
        )
        return pool, None
    if config == "recipe":
        queue, listener = start_recipe_listener(context)
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=recipe_initializer, initargs=(queue,)
        )
        return pool, listener
    if is_logexec(config):
        from logexec import LoggingProcessPoolExecutor

        return LoggingProcessPoolExecutor(workers, mp_context=context), None
    raise ValueError(f"unknown config {config!r}")


class CountingFileHandler(logging.FileHandler):
    """A FileHandler that signals once it has written ``expected`` records."""

    def __init__(self, path: str, expected: int) -> None:
        super().__init__(path, encoding="utf-8")
        self.expected = expected
        self.count = 0
        self.done = threading.Event()
        if expected == 0:
            self.done.set()

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        self.count += 1
        if self.count >= self.expected:
            self.done.set()


# Running trials ---------------------------------------------------------------------------


def run_trial(script: str, spec: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """Run one trial in a fresh interpreter, so that no library's global state carries over.

    The child prints one JSON line, its result, as the last line of its stdout.
    """
    command = [sys.executable, script, "--trial", json.dumps(spec)]
    environment = dict(os.environ)
    transport = forced_transport(spec["config"])
    if transport:
        # logexec forced onto one transport (see --transports); "logexec" is the best one here.
        environment["LOGEXEC_TRANSPORT"] = transport
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


def answer_trial(args: argparse.Namespace, trial: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
    """In a trial's interpreter (``--trial SPEC``): run it and print its result as the JSON line
    :func:`run_trial` reads. False in the orchestrator."""
    if not args.trial:
        return False
    print(json.dumps(trial(json.loads(args.trial))))
    return True


def run_rounds(
    script: str,
    args: argparse.Namespace,
    plan: Callable[[], list[dict[str, Any]]],
    describe: Callable[[dict[str, Any], dict[str, Any]], str],
) -> list[dict[str, Any]]:
    """``args.repeats`` rounds of every spec ``plan()`` returns, each round in a shuffled order.

    Every result is tagged with its round; ``describe(spec, result)`` is the rest of the
    progress line printed after ``round <n>``.
    """
    shuffler = random.Random(args.seed)
    results: list[dict[str, Any]] = []
    for round_number in range(args.repeats):
        specs = plan()
        shuffler.shuffle(specs)
        for spec in specs:
            result = run_trial(script, spec)
            result["round"] = round_number
            results.append(result)
            print(f"round {round_number} {describe(spec, result)}", flush=True)
    return results


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


def make_parser(description: str | None, quick_help: str) -> argparse.ArgumentParser:
    """The round-based scripts' parser, with ``--repeats`` and ``--quick``; the script adds its
    own options, then :func:`add_run_arguments`."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


# logexec through one transport: "logexec-socket", "logexec-portable" (see --transports).
TRANSPORT_PREFIX = "logexec-"
TRANSPORTS = ("ring", "socket", "portable")


def forced_transport(config: str) -> str:
    """The transport a ``logexec-<transport>`` configuration forces, or ""."""
    return config[len(TRANSPORT_PREFIX) :] if config.startswith(TRANSPORT_PREFIX) else ""


def is_logexec(config: str) -> bool:
    return config in ("logexec", "alt") or bool(forced_transport(config))


def transport_configs(args: argparse.Namespace) -> list[str]:
    """The ``logexec-<transport>`` configurations ``--transports`` asks for."""
    return [TRANSPORT_PREFIX + transport for transport in getattr(args, "transports", None) or []]


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--start-method``, ``--seed``, ``--no-save``, ``--alt-logexec``, ``--transports`` and the
    hidden ``--trial``."""
    parser.add_argument(
        "--transports",
        nargs="+",
        choices=TRANSPORTS,
        default=[],
        help="also run logexec forced onto each of these transports (LOGEXEC_TRANSPORT), as "
        "configurations logexec-<transport> in the same rounds; 'logexec' is the best one here",
    )
    parser.add_argument(
        "--start-method", default=multiprocessing.get_start_method(), choices=["fork", "spawn", "forkserver"]
    )
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    add_alt_argument(parser)
    parser.add_argument("--trial", help=argparse.SUPPRESS)


def print_header(args: argparse.Namespace) -> None:
    print(environment_line())
    print(f"logexec at {logexec_revision()}; start method {args.start_method}")


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
    script = name.removesuffix("_alt").removesuffix("_transports")

    def mode(text: str) -> tuple[bool, bool]:
        return "--alt-logexec" in text, "--transports" in text

    kept = [
        line
        for line in existing
        if not (line.startswith(f"python3 benchmarks/{script}.py") and mode(line) == mode(command))
    ]
    commands.write_text("\n".join([*kept, command]) + "\n", encoding="utf-8")
    assemble_results()


def save_json(name: str, results: object) -> None:
    """Keep the raw per-trial results next to the tables, for later analysis."""
    RESULTS_DIRECTORY.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIRECTORY / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def finish(name: str, args: argparse.Namespace, text: str, results: object) -> None:
    """Print the report; unless ``--no-save``, save it and the raw results as ``results/<name>.*``
    (``<name>_alt.*`` in an A/B run)."""
    print()
    print(text)
    if not args.no_save:
        if args.alt_logexec:
            name += "_alt"
        elif getattr(args, "transports", None):
            name += "_transports"
        write_section(name, text, sys.argv)
        save_json(name, results)


# The order of the sections in results.md.
SECTIONS = ("bench_throughput", "bench_tasks", "bench_memory", "bench_overhead", "bench_stages")


def assemble_results() -> None:
    """Rebuild ``results/results.md`` from every script's latest section."""
    parts = ["# logexec benchmark results", "", "Commands: see `commands.txt`. Chart: `throughput.png`."]
    for name in SECTIONS:
        section = RESULTS_DIRECTORY / f"{name}.md"
        if section.exists():
            parts += ["", section.read_text(encoding="utf-8").rstrip()]
    extras = (
        (
            "*_alt.md",
            "# A/B runs (`--alt-logexec`): `alt` is logexec imported from another directory "
            "(which one, and what it holds: `commands.txt`)",
        ),
        (
            "*_transports.md",
            "# Transports (`--transports`): `logexec` is the best transport here (the ring on x86-64 "
            "Linux), `logexec-<transport>` the same pool forced onto that one (LOGEXEC_TRANSPORT)",
        ),
    )
    for pattern, heading in extras:
        sections = sorted(RESULTS_DIRECTORY.glob(pattern))
        if sections:
            parts += ["", heading]
            for section in sections:
                parts += ["", section.read_text(encoding="utf-8").rstrip()]
    (RESULTS_DIRECTORY / "results.md").write_text("\n".join(parts) + "\n", encoding="utf-8")
