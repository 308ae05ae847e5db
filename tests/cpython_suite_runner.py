"""Run CPython's own ``test_concurrent_futures`` tests, with the stdlib pool or with logexec's.

Driven by ``tests/test_cpython_suite.py``; not a test module itself. Run as a script, in a
subprocess, on a scratch copy of the tests::

    python tests/cpython_suite_runner.py --executor logexec --results out.jsonl \\
        --timeout 60 MODULE_OR_TEST_ID ...
    python tests/cpython_suite_runner.py --list MODULE ...   # the process-pool test ids

With ``--executor logexec`` the substitution happens here, before any test module is
imported: ``concurrent.futures.ProcessPoolExecutor`` and
``concurrent.futures.process.ProcessPoolExecutor`` become ``LoggingProcessPoolExecutor``.
That covers every way the tests name the class: ``futures.ProcessPoolExecutor`` in the
mixins (read when ``util`` is imported) and in test bodies, ``self.executor_type``, and
``self.executor_type == futures.ProcessPoolExecutor``. The tests that start a fresh
interpreter (``assert_python_ok('-c', script)``, in isolated mode, where ``PYTHONPATH`` is
ignored) get the same substitution from a prelude put in front of their script.

Each test's outcome goes to ``--results`` as one JSON line as soon as it is known, after a
"start" line, with the pids of the pool's processes still alive after the test
(``leftover``: ``multiprocessing.active_children()``, after a grace period); a test that
outlives ``--timeout`` makes faulthandler dump every thread's stack (to stderr) and exit, so
the driver knows which test hung and runs the rest again.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import multiprocessing
import os
import sys
import time
import traceback
import unittest
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TextIO

# What unittest hands to addError/addFailure.
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
OptExcInfo = ExcInfo | tuple[None, None, None]
# How long the processes still alive after a test get to exit before they count as left behind
# (one deadline for all of them; a test that shuts its pool down has joined them already).
LEFTOVER_GRACE_SECONDS = 5.0

# A prelude for ``assert_python_ok('-c', script)``: isolated mode ignores PYTHONPATH, so the
# paths are put back by hand, and the class is substituted as in this process. The scripts
# import the class by ``executor_type.__name__`` from concurrent.futures, hence the third name.
PRELUDE = """\
import sys as _logexec_sys
_logexec_sys.path[0:0] = {paths!r}
import concurrent.futures as _logexec_futures, concurrent.futures.process as _logexec_process
from logexec import LoggingProcessPoolExecutor as _logexec_class
_logexec_futures.ProcessPoolExecutor = _logexec_process.ProcessPoolExecutor = _logexec_class
_logexec_futures.LoggingProcessPoolExecutor = _logexec_class
"""


def substitute_logexec(paths: list[str]) -> None:
    """Make every name the tests use for the process pool mean ``LoggingProcessPoolExecutor``."""
    import concurrent.futures
    import concurrent.futures.process

    from test.support import script_helper

    from logexec import LoggingProcessPoolExecutor

    concurrent.futures.ProcessPoolExecutor = LoggingProcessPoolExecutor  # type: ignore[misc]
    concurrent.futures.process.ProcessPoolExecutor = LoggingProcessPoolExecutor  # type: ignore[misc]
    concurrent.futures.LoggingProcessPoolExecutor = LoggingProcessPoolExecutor  # type: ignore[attr-defined]

    prelude = PRELUDE.format(paths=paths)
    original = script_helper.assert_python_ok

    def assert_python_ok(*args: Any, **env_vars: Any) -> Any:
        if len(args) >= 2 and args[0] == "-c":
            args = ("-c", prelude + args[1], *args[2:])
        return original(*args, **env_vars)

    # The test modules import the name from script_helper, so this must precede their import.
    script_helper.assert_python_ok = assert_python_ok


def leftover_processes() -> list[int]:
    """Pids of this process's multiprocessing children still alive after a grace period."""
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    children = multiprocessing.active_children()
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
    pids = [child.pid for child in children if child.is_alive() and child.pid is not None]
    for child in children:
        if child.is_alive():
            # Not this test's to keep: the next test must start clean, and the runner's exit
            # must not wait for it.
            child.kill()
            child.join(LEFTOVER_GRACE_SECONDS)
    return pids


def iterate_tests(suite: unittest.TestSuite | unittest.TestCase) -> Iterator[unittest.TestCase]:
    if isinstance(suite, unittest.TestCase):
        yield suite
        return
    for test in suite:
        yield from iterate_tests(test)


def is_process_pool_test(test: unittest.TestCase) -> bool:
    """The process-pool classes: ``ProcessPool{Fork,Forkserver,Spawn}...`` and the resources test."""
    name = type(test).__name__
    return name.startswith("ProcessPool") or name == "FailingInitializerResourcesTest"


def load(names: list[str]) -> list[unittest.TestCase]:
    loader = unittest.TestLoader()
    tests: list[unittest.TestCase] = []
    for name in names:
        tests.extend(iterate_tests(loader.loadTestsFromName(name)))
    # A module that failed to import becomes a _FailedTest: keep it, so the failure shows.
    return tests


class RecordingResult(unittest.TestResult):
    """Writes each test's start and outcome to a JSON-lines file as it happens."""

    def __init__(self, stream: TextIO, timeout: float) -> None:
        super().__init__()
        self._stream = stream
        self._timeout = timeout
        self._outcome: dict[str, tuple[str, str]] = {}
        self._started = 0.0

    def _write(self, entry: dict[str, Any]) -> None:
        self._stream.write(json.dumps(entry) + "\n")
        self._stream.flush()

    def _set(self, test: Any, outcome: str, detail: str = "") -> None:
        test_id = test.id()
        # A failed subtest or a failing cleanup must not be overwritten by a later success.
        if test_id in self._outcome and self._outcome[test_id][0] in {"fail", "error"}:
            return
        self._outcome[test_id] = (outcome, detail)

    def _format(self, err: ExcInfo) -> str:
        return "".join(traceback.format_exception(*err))

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        self._write({"event": "start", "id": test.id()})
        self._started = time.monotonic()
        faulthandler.dump_traceback_later(self._timeout, exit=True)

    def stopTest(self, test: unittest.TestCase) -> None:
        faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)
        outcome, detail = self._outcome.pop(test.id(), ("pass", ""))
        seconds = round(time.monotonic() - self._started, 2)
        self._write(
            {
                "event": "end",
                "id": test.id(),
                "outcome": outcome,
                "detail": detail,
                "seconds": seconds,
                "leftover": leftover_processes(),
            }
        )

    def addError(self, test: unittest.TestCase, err: OptExcInfo) -> None:
        super().addError(test, err)
        if err[0] is None:
            return
        if isinstance(test, unittest.TestCase):
            self._set(test, "error", self._format(err))  # type: ignore[arg-type]
        else:
            # setUpModule, setUpClass or a module cleanup (an _ErrorHolder, not a test).
            self._write({"event": "fixture", "id": str(test), "detail": self._format(err)})  # type: ignore[arg-type]

    def addFailure(self, test: unittest.TestCase, err: OptExcInfo) -> None:
        super().addFailure(test, err)
        self._set(test, "fail", self._format(err))  # type: ignore[arg-type]

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._set(test, "skip", reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: OptExcInfo) -> None:
        super().addExpectedFailure(test, err)
        self._set(test, "xfail")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._set(test, "fail", "unexpected success")

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase, err: OptExcInfo | None) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None and err[0] is not None:
            failed = issubclass(err[0], test.failureException)
            self._set(test, "fail" if failed else "error", f"{subtest}\n{self._format(err)}")  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--executor", choices=["stdlib", "logexec"], default="stdlib")
    parser.add_argument("--results", help="JSON-lines file for the outcomes")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per test")
    parser.add_argument("--list", action="store_true", help="print the process-pool test ids and exit")
    parser.add_argument("names", nargs="+", help="modules or test ids")
    arguments = parser.parse_args()

    if arguments.executor == "logexec":
        substitute_logexec([path for path in os.environ.get("PYTHONPATH", "").split(os.pathsep) if path])
    tests = load(arguments.names)
    if arguments.list:
        for test in tests:
            if is_process_pool_test(test):
                print(test.id())
        return 0
    faulthandler.enable()
    with open(arguments.results, "a", encoding="utf-8") as stream:
        if arguments.executor == "logexec":
            # Proof for the driver that the tests really got logexec's class, and whose.
            import logexec

            wrong = [
                test.id()
                for test in tests
                if getattr(test, "executor_type", logexec.LoggingProcessPoolExecutor)
                is not logexec.LoggingProcessPoolExecutor
            ]
            stream.write(json.dumps({"event": "config", "logexec": logexec.__file__, "wrong": wrong}) + "\n")
        result = RecordingResult(stream, arguments.timeout)
        unittest.TestSuite(tests).run(result)
        stream.write(json.dumps({"event": "done"}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
