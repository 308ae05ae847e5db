"""The README's comparison table, measured: what each alternative does, checked with real pools.

Every check runs in a fresh interpreter of its own (this script with ``--check``), in a new
session, with a hard timeout: a check that hangs is reported as "hung" and its whole
process group killed, instead of hanging the script. Inside a check every wait is bounded
too (a task's result, a pool's shutdown, a listener's stop), so an alternative whose stop
hangs is reported as such with everything else it did.

The alternatives, each with real ``ProcessPoolExecutor``s (one worker) and real processes:

    recipe   the stdlib recipe: multiprocessing.Queue(-1) into a QueueListener whose handler
             does logging.getLogger(record.name).handle(record); workers get a QueueHandler on
             root from the pool initializer (and nothing else: no level)
    mplog    multiprocessing_logging.install_mp_handler() on the parent's root (fork only)
    loguru   loguru with enqueue=True; the parent's sink is a function; the logger is passed to
             the workers through the pool initializer, as loguru documents for spawn
    clh      concurrent_log_handler.ConcurrentRotatingFileHandler on root in each worker (from
             the pool initializer), every worker writing one file; the file is the "parent's"
    logexec  logexec.LoggingProcessPoolExecutor

The checks (the rows of the README's table):

    a  start methods: does a worker's WARNING reach the parent's handler (or the file), under
       spawn, fork and forkserver?
    b  SIGKILL: a worker logs 2,000 records, then kills itself with SIGKILL; how many arrive,
       and does the pool's shutdown or the library's stop hang?
    c  unpicklable extra: log.info("x", extra={"lock": threading.Lock()}) in a worker: does the
       record arrive, is it dropped, does the task fail?
    d  parent's levels under spawn: the parent's root at INFO, a worker logs INFO with no
       configuration of its own beyond what the library installs: does it arrive?
    e  a handler on a named logger in the parent (as dictConfig or caplog puts one): does it
       get the worker's record, and does a fork-inherited copy of it run in the worker?
    f  result means logged: when future.result() returns for a task that logged 200 records,
       how many has the parent's handler (or the file) already got?

b, c and f run under fork (the Linux default before 3.14, and the only method
multiprocessing-logging supports), d under spawn, a under all three, e under fork and spawn.
b runs three times (how much a killed worker loses is a race). f runs with a fast parent
handler, then with one that takes 1 ms per record, so that "already handled" cannot be won by
a race (concurrent-log-handler's handler runs in the worker: there, it is the slow one).

    python3 benchmarks/compare_alternatives.py                  # everything, ~2-3 minutes
    python3 benchmarks/compare_alternatives.py --checks b --alternatives recipe logexec --no-save
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import logging.handlers
import multiprocessing
import os
import platform
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import _common

# One harness for both comparisons: the CLI's (python -m logexec demo --compare) alternatives
# and isolation, which this script runs too, in rounds, beside its own contenders and checks.
from logexec._selfcheck import _compare, _harness

ALTERNATIVES: dict[str, str] = {
    "recipe": "stdlib recipe (`mp.Queue` + `QueueListener`)",
    "mplog": "multiprocessing-logging",
    "loguru": "loguru `enqueue=True`",
    "clh": "concurrent-log-handler",
    "logexec": "**logexec**",
}
# (check, variant) in the order they run; a variant is the start method, then any options
# ("slow handler"; "run N" repeats a racy check). A row of the table may span several variants.
PLAN: tuple[tuple[str, str], ...] = (
    ("a", "spawn"),
    ("a", "fork"),
    ("a", "forkserver"),
    ("b", "fork, run 1"),
    ("b", "fork, run 2"),
    ("b", "fork, run 3"),
    ("c", "fork"),
    ("d", "spawn"),
    ("e", "fork"),
    ("e", "spawn"),
    ("f", "fork"),
    ("f", "fork, slow handler"),
)
CHECKS: dict[str, str] = {
    "a": "a. start methods: a worker's WARNING reaches the parent",
    "b": "b. worker `SIGKILL`ed after logging 2,000 records: records arrived; stop",
    "c": 'c. unpicklable `extra` (`extra={"lock": threading.Lock()}`)',
    "d": "d. parent's levels under spawn (parent root INFO, worker logs INFO)",
    "e": "e. a parent handler on a named logger gets worker records",
    "f": "f. handled when `result()` returns (3 tasks x 200 records)",
}

# The worker's logger, and the named logger whose parent handler check e watches.
WORKER_LOGGER = "app.work"
NAMED_LOGGER = "app"
KILL_RECORDS = 2000
RESULT_RECORDS = 200
RESULT_TASKS = 3
# The slow handler of check f: how long the parent's handler takes per record. 200 records then
# take 0.2 s to handle, so that "handled by the time result() returns" is not won by a race.
SLOW_HANDLER_SECONDS = 0.001
# Generous bounds: the machine is shared with benchmarks. A healthy task or stop takes well
# under a second; these only decide when to call something hung.
TASK_SECONDS = 30.0
STOP_SECONDS = 10.0
# The hard limit on one check's interpreter: the bounds above, all of them, and a margin.
CHECK_SECONDS = 90.0


# The worker side: module-level, so that spawn and forkserver workers can import them -------

_loguru_logger: Any = None


def recipe_initializer(queue: Any) -> None:
    """The recipe's worker set-up: one QueueHandler on root (the inherited handlers go)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(queue))


def loguru_initializer(logger: Any) -> None:
    """Keep the parent's loguru logger (loguru's documented way to share it under spawn)."""
    global _loguru_logger
    _loguru_logger = logger


class SlowFilter(logging.Filter):
    """Makes a handler slow (check f): it sleeps for every record it lets through."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def filter(self, record: logging.LogRecord) -> bool:
        time.sleep(self.seconds)
        return True


def clh_initializer(path: str, delay: float) -> None:
    """concurrent-log-handler's set-up: every worker appends to one file, under its lock."""
    from concurrent_log_handler import ConcurrentRotatingFileHandler

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = ConcurrentRotatingFileHandler(path, "a")
    handler.setFormatter(logging.Formatter("%(message)s"))
    if delay:
        # Its handler runs in the worker, so that is where it is slow.
        handler.addFilter(SlowFilter(delay))
    root.addHandler(handler)


def warm_up() -> int:
    """A no-op task, so that the worker exists before the task that matters."""
    return os.getpid()


def log_task(tag: str, count: int, level: str, kill: bool) -> int:
    """Log ``count`` records tagged ``tag``; then, if ``kill``, SIGKILL this worker."""
    logger = logging.getLogger(WORKER_LOGGER)
    levelno = logging.getLevelName(level)
    for sequence in range(count):
        logger.log(levelno, "tag=%s seq=%d", tag, sequence)
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    return count


def unpicklable_task(tag: str) -> str:
    logging.getLogger(WORKER_LOGGER).info("tag=%s x", tag, extra={"lock": threading.Lock()})
    return "returned"


def loguru_log_task(tag: str, count: int, level: str, kill: bool, passed: bool = True) -> int:
    """``log_task`` through loguru: the logger from the initializer, or (``passed=False``) the
    worker's own ``from loguru import logger``."""
    if passed:
        logger = _loguru_logger
    else:
        from loguru import logger
    for sequence in range(count):
        logger.log(level, "tag={} seq={}", tag, sequence)
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    return count


def loguru_unpicklable_task(tag: str) -> str:
    # loguru's keyword arguments are its `extra`.
    _loguru_logger.info("tag={} x", tag, lock=threading.Lock())  # noqa: PLE1205 (loguru's {} style)
    return "returned"


# The parent side: one set-up per alternative ---------------------------------------------


class Collector(logging.Handler):
    """The parent's handler: keeps what it is given in the parent.

    A copy inherited by a forked worker runs in that worker, not in the parent: it appends the
    message to ``side_path`` instead, so that the parent can count such calls.
    """

    def __init__(self, side_path: str, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.owner = os.getpid()
        self.side_path = side_path
        self.messages: list[str] = []
        self.lock_types: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() != self.owner:
            with open(self.side_path, "a", encoding="utf-8") as stream:
                stream.write(record.getMessage() + "\n")
            return
        if self.delay:
            time.sleep(self.delay)
        self.lock_types.append(type(getattr(record, "lock", None)).__name__)
        self.messages.append(record.getMessage())

    def count(self, tag: str) -> int:
        return count_tagged(self.messages, tag)

    def in_workers(self, tag: str) -> int:
        return count_tagged(read_lines(self.side_path), tag)


def count_tagged(messages: Sequence[str], tag: str) -> int:
    prefix = f"tag={tag} "
    return sum(1 for message in list(messages) if message.startswith(prefix))


def read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            return stream.read().splitlines()
    except FileNotFoundError:
        return []


def reset_root() -> logging.Logger:
    """The parent's root: at INFO, no handlers."""
    return _common.reset_root_logger(logging.INFO)


class Setup:
    """One alternative in the parent: start a pool, count what arrived, stop (bounded)."""

    # staticmethod: the tasks travel to the workers by name, never bound to the set-up.
    log_task = staticmethod(log_task)
    unpicklable_task = staticmethod(unpicklable_task)

    def __init__(self, context: Any, directory: str, delay: float) -> None:
        self.context = context
        self.method: str = context.get_start_method()
        self.directory = directory
        # The parent's handler takes this long per record (check f's slow variant).
        self.delay = delay
        self.collector = Collector(os.path.join(directory, "root-in-workers.txt"), delay)
        # How long each step of stop() took.
        self.stop_times: list[str] = []
        # Set when the library refused this start method and the check went on another way.
        self.refusal = ""
        self.executor: concurrent.futures.ProcessPoolExecutor | None = None

    def start(self) -> concurrent.futures.ProcessPoolExecutor:
        raise NotImplementedError

    def count(self, tag: str) -> int:
        """How many of ``tag``'s records the parent's handler (or the file) has by now."""
        return self.collector.count(tag)

    def stop(self) -> list[str]:
        """Shut the pool down, then the library; return what hung."""
        hung: list[str] = []
        if self.executor is not None:
            self.bounded(self.executor.shutdown, "pool shutdown()", hung)
        self.stop_library(hung)
        return hung

    def stop_library(self, hung: list[str]) -> None:
        pass

    def bounded(self, action: Callable[[], object], label: str, hung: list[str]) -> None:
        began = time.monotonic()
        bounded(action, label, hung)
        self.stop_times.append(f"{label} {time.monotonic() - began:.1f} s")


class RecipeSetup(Setup):
    def start(self) -> concurrent.futures.ProcessPoolExecutor:
        reset_root().addHandler(self.collector)
        self.queue, self.listener = _common.start_recipe_listener(self.context)
        self.executor = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=self.context, initializer=recipe_initializer, initargs=(self.queue,)
        )
        return self.executor

    def stop_library(self, hung: list[str]) -> None:
        self.bounded(self.listener.stop, "QueueListener.stop()", hung)


class MplogSetup(Setup):
    def start(self) -> concurrent.futures.ProcessPoolExecutor:
        import multiprocessing_logging  # type: ignore[import-untyped]

        reset_root().addHandler(self.collector)
        # install_mp_handler() checks the global start method, so set it as an application would.
        multiprocessing.set_start_method(self.method, force=True)
        try:
            multiprocessing_logging.install_mp_handler()
        except AssertionError as error:
            self.refusal = f"install_mp_handler() raised AssertionError({str(error)!r})"
            # Go on the only other way: the global method left at fork, the pool's mp_context.
            multiprocessing.set_start_method("fork", force=True)
            multiprocessing_logging.install_mp_handler()
        self.executor = concurrent.futures.ProcessPoolExecutor(1, mp_context=self.context)
        return self.executor

    def stop_library(self, hung: list[str]) -> None:
        for wrapper in list(logging.getLogger().handlers):
            # close() waits up to 5 s for its receiving thread, then gives up silently.
            self.bounded(wrapper.close, "handler close()", hung)
            receiver = getattr(wrapper, "_receive_thread", None)
            if receiver is not None and receiver.is_alive():
                hung.append("its receiving thread still running after close()")


class LoguruSetup(Setup):
    log_task = staticmethod(loguru_log_task)
    unpicklable_task = staticmethod(loguru_unpicklable_task)

    def start(self) -> concurrent.futures.ProcessPoolExecutor:
        from loguru import logger

        reset_root()
        self.logger = logger
        self.messages: list[str] = []
        logger.remove()
        logger.add(self.sink, enqueue=True, context=self.context, level="INFO", format="{message}")
        self.executor = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=self.context, initializer=loguru_initializer, initargs=(logger,)
        )
        return self.executor

    def sink(self, message: Any) -> None:
        if self.delay:
            time.sleep(self.delay)
        self.messages.append(str(message).rstrip("\n"))

    def count(self, tag: str) -> int:
        return count_tagged(self.messages, tag)

    def stop_library(self, hung: list[str]) -> None:
        self.bounded(self.logger.remove, "logger.remove()", hung)


class ClhSetup(Setup):
    def start(self) -> concurrent.futures.ProcessPoolExecutor:
        reset_root()
        self.path = os.path.join(self.directory, "shared.log")
        self.executor = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=self.context, initializer=clh_initializer, initargs=(self.path, self.delay)
        )
        return self.executor

    def count(self, tag: str) -> int:
        return count_tagged(read_lines(self.path), tag)


class LogexecSetup(Setup):
    def start(self) -> concurrent.futures.ProcessPoolExecutor:
        from logexec import LoggingProcessPoolExecutor

        reset_root().addHandler(self.collector)
        self.executor = LoggingProcessPoolExecutor(1, mp_context=self.context)
        return self.executor


SETUPS: dict[str, type[Setup]] = {
    "recipe": RecipeSetup,
    "mplog": MplogSetup,
    "loguru": LoguruSetup,
    "clh": ClhSetup,
    "logexec": LogexecSetup,
}


def bounded(action: Callable[[], object], label: str, hung: list[str]) -> None:
    """Run ``action`` in a daemon thread; if it is still running after STOP_SECONDS, say so."""
    _harness.bounded(action, label, hung, STOP_SECONDS)


def await_task(future: concurrent.futures.Future[Any]) -> str:
    """What became of a task: "returned", "raised <Exception>", or no result in time."""
    try:
        future.result(timeout=TASK_SECONDS)
    except concurrent.futures.TimeoutError:
        return f"no result in {TASK_SECONDS:g} s"
    except Exception as error:
        return f"raised {type(error).__name__}"
    return "returned"


def with_hangs(cell: str, hung: Sequence[str]) -> str:
    return f"{cell}; {', '.join(hung)}" if hung else cell


def with_refusal(setup: Setup, cell: str, detail: str) -> tuple[str, str]:
    """Where the library refused the start method and the check went on with ``mp_context``."""
    if not setup.refusal:
        return cell, detail
    return (
        f"error, then {cell} via `mp_context`",
        f"{setup.refusal}; with the global method left at fork and mp_context={setup.method}: {detail}",
    )


# The checks: each returns {"cell": short, "detail": what was observed} -------------------


def check_start_method(setup: Setup) -> dict[str, str]:
    executor = setup.start()
    task = await_task(executor.submit(setup.log_task, "a", 1, "WARNING", False))
    hung = setup.stop()
    arrived = setup.count("a")
    cell = "yes" if arrived else "no"
    detail = f"task {task}; {arrived} of 1 record arrived"
    cell, detail = with_refusal(setup, cell, detail)
    return {"cell": with_hangs(cell, hung), "detail": with_hangs(detail, hung)}


def check_sigkill(setup: Setup) -> dict[str, str]:
    executor = setup.start()
    warm = await_task(executor.submit(warm_up))
    task = await_task(executor.submit(setup.log_task, "b", KILL_RECORDS, "INFO", True))
    before_stop = setup.count("b")
    hung = setup.stop()
    arrived = setup.count("b")
    cell = f"{arrived:,} of {KILL_RECORDS:,}" + ("" if hung else ", no hang")
    detail = (
        f"warm-up task {warm}; the killed task {task}; {before_stop:,} records had arrived when "
        f"result() came back, {arrived:,} after the bounded stop ({', '.join(setup.stop_times)})"
    )
    return {
        "cell": with_hangs(cell, hung),
        "detail": with_hangs(detail, hung),
        "arrived": str(arrived),
        "hung": ", ".join(hung),
    }


def check_unpicklable(setup: Setup) -> dict[str, str]:
    executor = setup.start()
    await_task(executor.submit(warm_up))
    task = await_task(executor.submit(setup.unpicklable_task, "c"))
    hung = setup.stop()
    arrived = setup.count("c")
    if task != "returned":
        cell = f"task failed ({task})"
    elif arrived:
        cell = "arrives"
        if setup.collector.lock_types:
            cell += f" (`lock` as {setup.collector.lock_types[-1]})"
    else:
        cell = "dropped"
    detail = f"task {task}; {arrived} of 1 record arrived"
    if setup.collector.lock_types:
        detail += f"; record.lock is a {setup.collector.lock_types[-1]} in the parent"
    return {"cell": with_hangs(cell, hung), "detail": with_hangs(detail, hung)}


def check_levels(setup: Setup) -> dict[str, str]:
    executor = setup.start()
    task = await_task(executor.submit(setup.log_task, "d", 1, "INFO", False))
    own = own_task = ""
    if isinstance(setup, LoguruSetup):
        # The worker's own `from loguru import logger` instead of the one passed to it.
        own_task = await_task(executor.submit(loguru_log_task, "d2", 1, "INFO", False, False))
    hung = setup.stop()
    arrived = setup.count("d")
    cell = "yes" if arrived else "no"
    detail = f"task {task}; {arrived} of 1 INFO record arrived"
    if isinstance(setup, LoguruSetup):
        own_arrived = setup.count("d2")
        own = f"; with the worker's own `from loguru import logger`: {'yes' if own_arrived else 'no'}"
        detail += (
            f" through the logger passed by the initializer; through the worker's own "
            f"`from loguru import logger`: task {own_task}, {own_arrived} of 1 arrived"
        )
    cell, detail = with_refusal(setup, cell, detail)  # check d runs under spawn only
    return {"cell": with_hangs(cell + own, hung), "detail": with_hangs(detail, hung)}


def check_named_handler(setup: Setup) -> dict[str, str]:
    executor = setup.start()
    named = Collector(os.path.join(setup.directory, "named-in-workers.txt"))
    # Attached before the first submit, as dictConfig at start-up would: forked workers inherit it.
    logging.getLogger(NAMED_LOGGER).addHandler(named)
    task = await_task(executor.submit(setup.log_task, "e", 1, "WARNING", False))
    hung = setup.stop()
    arrived, in_workers = named.count("e"), named.in_workers("e")
    cell = "yes" if arrived else "no"
    detail = (
        f"task {task}; the parent's handler on {NAMED_LOGGER!r} got {arrived} of 1 record; "
        f"its inherited copy handled it {in_workers} time(s) inside the worker"
    )
    if isinstance(setup, LoguruSetup):
        cell += " (the record went to loguru's sink)"
        detail += f"; loguru's own sink got {setup.count('e')} of 1"
    elif isinstance(setup, ClhSetup):
        cell += " (the worker wrote the file itself)"
        detail += f"; the shared file got {setup.count('e')} of 1, written by the worker"
    if in_workers:
        cell += f"; its fork copy ran in the worker ({in_workers}x)"
    cell, detail = with_refusal(setup, cell, detail)
    return {"cell": with_hangs(cell, hung), "detail": with_hangs(detail, hung)}


def check_result_means_logged(setup: Setup) -> dict[str, str]:
    executor = setup.start()
    await_task(executor.submit(warm_up))
    at_result: list[int] = []
    tasks: list[str] = []
    for index in range(RESULT_TASKS):
        tag = f"f{index}"
        tasks.append(await_task(executor.submit(setup.log_task, tag, RESULT_RECORDS, "INFO", False)))
        at_result.append(setup.count(tag))  # at once: this is the claim under test
    hung = setup.stop()
    finally_ = [setup.count(f"f{index}") for index in range(RESULT_TASKS)]
    if all(count == RESULT_RECORDS for count in at_result):
        verdict = "all"
    elif not any(at_result):
        verdict = "none"
    else:
        verdict = "some"
    counts = ", ".join(str(count) for count in at_result)
    cell = f"{verdict} ({counts} of {RESULT_RECORDS})"
    detail = (
        f"tasks {', '.join(sorted(set(tasks)))}; at result(): {counts} of {RESULT_RECORDS}; "
        f"after stop: {', '.join(str(count) for count in finally_)}"
    )
    return {"cell": with_hangs(cell, hung), "detail": with_hangs(detail, hung)}


CHECK_FUNCTIONS: dict[str, Callable[[Setup], dict[str, str]]] = {
    "a": check_start_method,
    "b": check_sigkill,
    "c": check_unpicklable,
    "d": check_levels,
    "e": check_named_handler,
    "f": check_result_means_logged,
}


def check_main(check: str, alternative: str, variant: str) -> None:
    """The child: run one check, print its JSON as the last line, exit at once."""
    directory = tempfile.mkdtemp(prefix=f"logexec-compare-{check}-{alternative}-")
    method = variant.split(",", maxsplit=1)[0]
    delay = SLOW_HANDLER_SECONDS if "slow handler" in variant else 0.0
    try:
        setup = SETUPS[alternative](multiprocessing.get_context(method), directory, delay)
        result = CHECK_FUNCTIONS[check](setup)
    except Exception as error:
        result = {"cell": f"error: {type(error).__name__}", "detail": f"{type(error).__name__}: {error}"}
    shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(result))
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: a hung stop leaves threads and queue feeders that exit would wait for.
    os._exit(0)


# The orchestrator ------------------------------------------------------------------------

_ERROR_LINE = re.compile(r"^\w*(Error|Exception|Warning)\b.*$", re.MULTILINE)


def run_check(check: str, alternative: str, variant: str, timeout: float) -> dict[str, str]:
    """Run one check in its own session; kill the whole session if it overruns."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--check",
        check,
        "--alternative",
        alternative,
        "--variant",
        variant,
    ]
    # The CLI's harness: a new session, killed when the check ends or overruns, which also
    # reaps what the alternative left behind (workers, a forkserver, a resource tracker).
    done = _harness.run_isolated(command, timeout)
    if done.timed_out:
        return {"cell": "hung", "detail": f"no report in {timeout:g} s; the check's process group was killed"}
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, str] = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = done.stderr.strip().splitlines()[-1:]
        return {"cell": f"error (exit {done.returncode})", "detail": " ".join(tail)}
    errors = sorted({match.group(0) for match in _ERROR_LINE.finditer(done.stderr)})
    if errors:
        result["detail"] += "; on stderr: " + " | ".join(error[:160] for error in errors)
    return result


def versions() -> str:
    parts = []
    for name in ("multiprocessing-logging", "loguru", "concurrent-log-handler", "logexec"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def summarize_runs(runs: Sequence[dict[str, str]]) -> str:
    """One cell for the repeated runs of check b: the range of arrivals, and how often it hung."""
    if any("arrived" not in run for run in runs):
        return "<br>".join(run["cell"] for run in runs)
    arrived = [int(run["arrived"]) for run in runs]
    low, high = min(arrived), max(arrived)
    cell = f"{low:,} of {KILL_RECORDS:,}" if low == high else f"{low:,}-{high:,} of {KILL_RECORDS:,}"
    cell += f" ({len(runs)} runs)"
    hangs = [run["hung"] for run in runs if run["hung"]]
    if not hangs:
        return cell + ", no hang"
    return cell + f"; in {len(hangs)} of {len(runs)}: " + "; ".join(sorted(set(hangs)))


def report(
    results: dict[tuple[str, str, str], dict[str, str]],
    checks: Sequence[str],
    alternatives: Sequence[str],
    argv: Sequence[str],
    seconds: float,
) -> str:
    headers = ["check", *(ALTERNATIVES[name] for name in alternatives)]
    rows = []
    for check in checks:
        variants = [variant for planned, variant in PLAN if planned == check]
        row = [CHECKS[check]]
        for alternative in alternatives:
            runs = [results[(check, alternative, variant)] for variant in variants]
            if check == "b":
                row.append(summarize_runs(runs))
            elif len(variants) == 1:
                row.append(runs[0]["cell"])
            else:
                row.append(
                    "<br>".join(
                        f"{variant}: {run['cell']}" for variant, run in zip(variants, runs, strict=True)
                    )
                )
        rows.append(row)
    command = "python3 " + " ".join(shlex.quote(argument) for argument in argv)
    lines = [
        "## What the alternatives do (`compare_alternatives.py`)",
        "",
        f"Command: `{command}` ({seconds:.0f} s).  ",
        f"{_common.environment_line()}; {platform.python_implementation()}.  ",
        f"{versions()}; logexec at {_common.logexec_revision()}.",
        "",
        "Start methods: a runs under spawn, fork and forkserver; b, c and f under fork (the Linux "
        "default before 3.14, and the only one multiprocessing-logging supports); d under spawn; "
        "e under fork and spawn. b runs three times (what a killed worker loses is a race). f runs "
        "with a fast parent handler, then with a slow one "
        f"({SLOW_HANDLER_SECONDS * 1000:g} ms per record; concurrent-log-handler's handler runs in "
        "the worker, so there the worker's handler is the slow one). a and e log a WARNING, so "
        "that the worker's level (check d) plays no part. One worker per pool; every check in a "
        f"fresh interpreter with a hard timeout of {CHECK_SECONDS:g} s, every wait inside it "
        f"bounded ({TASK_SECONDS:g} s for a task, {STOP_SECONDS:g} s for each stop). "
        "multiprocessing-logging under spawn and "
        "forkserver: `install_mp_handler()` is tried with the global start method set to that "
        "method; when it refuses, the check goes on with the global method at fork and the pool's "
        "`mp_context` set to the method under test. concurrent-log-handler writes from the workers: "
        "its counts are lines in its file.",
        "",
        _common.markdown_table(headers, rows),
        "",
        "### What was observed",
        "",
    ]
    for check in checks:
        lines.append(f"**{CHECKS[check]}**")
        lines.append("")
        for alternative in alternatives:
            for planned, variant in PLAN:
                if planned == check:
                    detail = results[(check, alternative, variant)]["detail"]
                    lines.append(f"- {ALTERNATIVES[alternative]}, {variant}: {detail}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def run_workload_rounds(rounds: int, records: int, workers: int) -> str:
    """The CLI's comparison (the same alternatives, the same code), ``rounds`` times over."""
    method = multiprocessing.get_start_method()
    labels = dict(_compare.ALTERNATIVES)
    lines = [
        "## The CLI's comparison (`python -m logexec demo --compare`), "
        f"{rounds} round(s): {records:,} records of about {_compare.PADDING_CHARS // 1000} KB "
        f"from {workers} worker(s), start method {method}",
        "",
    ]
    for round_number in range(1, rounds + 1):
        outcomes = []
        for name, label in _compare.ALTERNATIVES:
            print(f"workload round {round_number}: {label} ...", flush=True)
            outcomes.append(_compare.run_child(name, records, workers, method))
        lines += [f"Round {round_number}:", "", "```", _compare.format_table(outcomes, labels), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checks", nargs="+", default=list(CHECKS), choices=list(CHECKS))
    parser.add_argument("--alternatives", nargs="+", default=list(ALTERNATIVES), choices=list(ALTERNATIVES))
    parser.add_argument(
        "--timeout",
        type=float,
        default=CHECK_SECONDS,
        help=f"hard limit per check (default {CHECK_SECONDS:g} s)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not write results/alternatives.md")
    parser.add_argument(
        "--workload-rounds",
        type=int,
        default=0,
        metavar="N",
        help="also run the CLI's comparison (python -m logexec demo --compare: logexec and the naive "
        "alternatives, lost/duplicated/corrupt records) N times, and print each round's table",
    )
    parser.add_argument("--workload-records", type=int, default=_compare.DEFAULT_RECORDS, metavar="N")
    parser.add_argument("--workload-workers", type=int, default=4, metavar="N")
    parser.add_argument("--check", help=argparse.SUPPRESS)
    parser.add_argument("--alternative", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check:
        check_main(args.check, args.alternative, args.variant)
        return

    print(_common.environment_line())
    print(versions())
    start = time.monotonic()
    results: dict[tuple[str, str, str], dict[str, str]] = {}
    for check, variant in PLAN:
        if check not in args.checks:
            continue
        for alternative in args.alternatives:
            began = time.monotonic()
            result = run_check(check, alternative, variant, args.timeout)
            results[(check, alternative, variant)] = result
            print(
                f"{check} {variant:18} {alternative:8} {time.monotonic() - began:5.1f} s  {result['cell']}",
                flush=True,
            )
    checks = [check for check in CHECKS if check in args.checks]
    text = report(results, checks, args.alternatives, sys.argv, time.monotonic() - start)
    if args.workload_rounds > 0:
        text += "\n" + run_workload_rounds(args.workload_rounds, args.workload_records, args.workload_workers)
    print()
    print(text)
    if not args.no_save:
        _common.RESULTS_DIRECTORY.mkdir(parents=True, exist_ok=True)
        (_common.RESULTS_DIRECTORY / "alternatives.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
