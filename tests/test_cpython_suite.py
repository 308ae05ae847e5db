"""CPython's own ``test_concurrent_futures``, run once with the stdlib pool and once with logexec's.

The tests ship with some interpreters only (``test.test_concurrent_futures``: a package on
3.13, one file on 3.9 and 3.10, none on 3.11 and 3.12 here), so they are not vendored: a
scratch copy is made and run in subprocesses by ``tests/cpython_suite_runner.py``, which
substitutes ``LoggingProcessPoolExecutor`` for ``ProcessPoolExecutor`` before the tests are
imported (see its docstring for how every spelling of the class is covered). The rule:
every test that passes with the stdlib passes with logexec, except the few in
``ALLOWED_TO_FAIL``, each with the reason; those run too, and must neither hang nor leave a
process behind (the runner reports the pool's processes still alive after each test).

Selected: the process-pool classes (``ProcessPool{Fork,Forkserver,Spawn}*``, and
``FailingInitializerResourcesTest``) of the modules where the pool's behaviour is tested:
process_pool, shutdown, init, wait, as_completed, deadlock. Left out: the thread-pool
classes (no process pool in them), ``test_future`` (``Future`` objects only, no executor),
``test_thread_pool``, and the two tests in ``LEFT_OUT`` (18 s of sleeping per run for
timeouts that logexec does not touch).

Cost here (2 cores, shared): 165-221 tests per interpreter, both runs at once in two
processes each: about 80 s on 3.9, 100 s on 3.10, 110-130 s on 3.13, plus 30 s for each
hung test and a retry of each difference. Skipped on 3.11 and 3.12, which do not ship the
tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "cpython_suite_runner.py"

# Modules of the test package (3.13+) that test the process pool; on 3.9 and 3.10 the same
# tests are classes of one file.
MODULES = [
    "test_process_pool",
    "test_shutdown",
    "test_init",
    "test_wait",
    "test_as_completed",
    "test_deadlock",
]
# Seconds one CPython test may take before it counts as hung. The slowest pass in about 8 s
# here under load; their own deadlock guard (support.LONG_TIMEOUT) is 300 s, beyond our budget.
PER_TEST_TIMEOUT = 30.0
# Processes per run (stdlib, logexec), all running at once.
SHARDS = 2
# For both runs together, including restarts after a hang.
SUITE_DEADLINE = 480.0
# Lines of each traceback shown in the summary of differences.
TRACEBACK_HEAD = 4
TRACEBACK_TAIL = 8

# Tests not run at all, by test name: 6 s of sleeping each (18 s per run over the three start
# methods), for timeouts that Executor.map and futures.wait implement on Future objects,
# code that logexec neither overrides nor touches.
LEFT_OUT: dict[str, str] = {
    "test_map_timeout": "Executor.map's own timeout, 6 s of sleep per start method",
    "test_timeout": "futures.wait's own timeout, 6 s of sleep per start method",
}

# Tests that assert on what a correct subclass legitimately changes, by "Class.test_name"
# (the same on every interpreter; the module part of the id differs between 3.10 and 3.13).
# They run: a failure is allowed, a hang or a process left behind is not.
ALLOWED_TO_FAIL: dict[str, str] = {
    **{
        f"ProcessPool{method}ProcessPoolExecutorTest.test_python_finalization_error": (
            "counts the stdlib's threads: it lets exactly one thread start (meant for the "
            "stdlib's manager thread) and fails the next; logexec's listener is one more "
            "thread, so the failure lands on another thread than the test expects, and the "
            "pool fails with the RuntimeError the stdlib raises when its manager thread "
            "cannot start (tests/test_thread_limit.py covers every position)"
        )
        for method in ("Fork", "Forkserver", "Spawn")
    },
}
# Outcomes that fail the comparison even for a test in ALLOWED_TO_FAIL.
NEVER_ALLOWED = {"hang", "missing", "leftover"}

# Differences whose cause is known (not excused: they fail the test, and the summary says
# where the reproduction is). Keyed like ALLOWED_TO_FAIL.
KNOWN_CAUSES: dict[str, str] = {
    **{
        f"ProcessPool{method}ProcessPoolShutdownTest.test_del_shutdown": (
            "a dropped executor's finalizer stops the listener before the pool's workers have "
            "started (tools/cpython_suite_repros/dropped_executor.py)"
        )
        for method in ("Forkserver", "Spawn")
    },
    **{
        f"ProcessPool{method}ExecutorDeadlockTest.test_gh105829_should_not_deadlock_if_wakeup_pipe_full": (
            "the listener wakes the pool's manager thread when a worker exits, after the manager "
            "has stopped draining its wake-up pipe; with the test's full pipe it blocks for good "
            "and shutdown() waits for it (tools/cpython_suite_repros/listener_blocks_in_manager_wakeup.py)"
        )
        for method in ("Fork", "Forkserver", "Spawn")
    },
}


@dataclass
class Outcome:
    """One CPython test's outcome in one run."""

    outcome: str  # pass, fail, error, skip, xfail, hang, missing, leftover
    detail: str = ""
    seconds: float = 0.0


def cpython_tests() -> Path | None:
    """Where this interpreter's test_concurrent_futures is (a package or a file), if any."""
    try:
        if importlib.util.find_spec("test.support") is None:
            return None
        spec = importlib.util.find_spec("test.test_concurrent_futures")
    except ImportError:
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin) if spec.origin else None


def make_scratch(source: Path, scratch: Path) -> list[str]:
    """Copy the tests into ``scratch`` as top-level ``test_concurrent_futures``; return module names."""
    scratch.mkdir()
    if source.is_dir():
        shutil.copytree(
            source, scratch / "test_concurrent_futures", ignore=shutil.ignore_patterns("__pycache__")
        )
        return [f"test_concurrent_futures.{module}" for module in MODULES]
    shutil.copyfile(source, scratch / "test_concurrent_futures.py")
    return ["test_concurrent_futures"]


def runner_environment(scratch: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(scratch), str(ROOT)])
    environment["PYTHONDONTWRITEBYTECODE"] = "1"
    return environment


def list_tests(scratch: Path, modules: list[str], workdir: Path) -> list[str]:
    completed = subprocess.run(
        [sys.executable, str(RUNNER), "--list", *modules],
        env=runner_environment(scratch),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.split()


def kill_session(pid: int) -> None:
    """Kill whatever the runner left in its session (a hung test's workers, say)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_tests(
    executor: str, test_ids: list[str], scratch: Path, workdir: Path, deadline: float, name: str
) -> dict[str, Outcome]:
    """Run ``test_ids`` with ``executor``; a hung test is recorded, and the rest run again."""
    outcomes: dict[str, Outcome] = {}
    remaining = list(test_ids)
    attempt = 0
    while remaining:
        attempt += 1
        results = workdir / f"{name}-{attempt}.jsonl"
        log = workdir / f"{name}-{attempt}.stderr"
        with open(log, "w") as stderr:
            process = subprocess.Popen(
                [
                    sys.executable,
                    str(RUNNER),
                    "--executor",
                    executor,
                    "--results",
                    str(results),
                    "--timeout",
                    str(PER_TEST_TIMEOUT),
                    *remaining,
                ],
                env=runner_environment(scratch),
                cwd=workdir,
                stdout=stderr,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            out_of_time = False
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                out_of_time = True
            finally:
                kill_session(process.pid)
                process.wait(timeout=30)
        started: str | None = None
        done = False
        if results.exists():
            for line in results.read_text().splitlines():
                entry = json.loads(line)
                if entry["event"] == "start":
                    started = entry["id"]
                elif entry["event"] == "end":
                    outcome = Outcome(entry["outcome"], entry["detail"], entry["seconds"])
                    if entry.get("leftover"):
                        # Still alive after the test and a grace period: the interpreter's
                        # exit would wait for them (the CPython run sat there until killed).
                        outcome = Outcome(
                            "leftover",
                            f"processes left alive after the test: {entry['leftover']} "
                            f"(the test's own outcome: {entry['outcome']})\n{entry['detail']}",
                            entry["seconds"],
                        )
                    outcomes[entry["id"]] = outcome
                    started = None
                elif entry["event"] == "fixture":
                    outcomes[f"fixture: {entry['id']}"] = Outcome("error", entry["detail"])
                elif entry["event"] == "config":
                    # The substitution happened, with this worktree's logexec, for every test;
                    # if not, an entry that the stdlib run lacks fails the comparison.
                    if not Path(entry["logexec"]).resolve().is_relative_to(ROOT) or entry["wrong"]:
                        outcomes["config: the runner did not substitute this logexec"] = Outcome(
                            "error", f"logexec from {entry['logexec']}; still the stdlib's: {entry['wrong']}"
                        )
                elif entry["event"] == "done":
                    done = True
        if started is not None and not out_of_time:
            tail = log.read_text(errors="replace").splitlines()[-40:]
            outcomes[started] = Outcome(
                "hang", f"no outcome within {PER_TEST_TIMEOUT:g} s:\n" + "\n".join(tail)
            )
        remaining = [test_id for test_id in remaining if test_id not in outcomes]
        if done or time.monotonic() >= deadline or started is None:
            break
    for test_id in remaining:
        outcomes[test_id] = Outcome("missing", f"not run before the suite's deadline ({SUITE_DEADLINE:g} s)")
    return outcomes


def short_key(test_id: str) -> str:
    """``Class.test_name``, the part of a test id that is the same on every interpreter."""
    return ".".join(test_id.split(".")[-2:])


def excerpt(detail: str) -> str:
    """The traceback without unittest's own frames, cut to its first and last lines."""
    lines: list[str] = []
    skip_source = False
    for line in detail.strip().splitlines():
        if skip_source and line.startswith("    "):
            skip_source = False
            continue
        skip_source = line.startswith("  File ") and f"{os.sep}unittest{os.sep}" in line
        # 3.11+ marks the failing expression with a line of carets: noise in a summary.
        if not skip_source and line.strip(" ~^"):
            lines.append(line)
    if len(lines) > TRACEBACK_HEAD + TRACEBACK_TAIL:
        lines = [*lines[:TRACEBACK_HEAD], "    ...", *lines[-TRACEBACK_TAIL:]]
    return "\n".join(f"        {line}" for line in lines)


def summarize(differences: list[str], stdlib: dict[str, Outcome], logexec: dict[str, Outcome]) -> str:
    parts = [f"{len(differences)} CPython test(s) pass with the stdlib pool and not with logexec's:"]
    for test_id in differences:
        cause = KNOWN_CAUSES.get(short_key(test_id), "no known cause: triage it")
        parts.append(
            f"  {test_id}\n"
            f"    stdlib: {stdlib[test_id].outcome}; logexec: {logexec[test_id].outcome}\n"
            f"    cause: {cause}\n{excerpt(logexec[test_id].detail)}"
        )
    return "\n".join(parts)


@pytest.mark.timeout(SUITE_DEADLINE + 120)
def test_cpython_process_pool_tests_pass_with_logexec(tmp_path: Path) -> None:
    """Every CPython process-pool test that passes with the stdlib pool passes with logexec's."""
    if os.environ.get("LOGEXEC_CPYTHON_SUITE") == "0":
        # CI runs it on the newest CPython only (it takes minutes); anyone may run it anywhere.
        pytest.skip("LOGEXEC_CPYTHON_SUITE=0: the CPython suite comparison is run elsewhere")
    source = cpython_tests()
    if source is None:
        pytest.skip(f"CPython {sys.version.split()[0]} does not ship test.test_concurrent_futures here")
    modules = make_scratch(source, tmp_path / "scratch")
    workdir = tmp_path / "work"
    workdir.mkdir()
    test_ids = [
        test_id
        for test_id in list_tests(tmp_path / "scratch", modules, workdir)
        if test_id.rsplit(".", 1)[-1] not in LEFT_OUT
    ]
    assert test_ids, "no process-pool tests found in the CPython suite"

    # Both runs at once, each in SHARDS processes: the tests mostly wait (sleeps, process
    # start-up), and one after the other they would take several times the budget.
    deadline = time.monotonic() + SUITE_DEADLINE
    runs: dict[str, dict[str, Outcome]] = {"stdlib": {}, "logexec": {}}

    def run(executor: str, shard: int) -> None:
        outcomes = run_tests(
            executor, test_ids[shard::SHARDS], tmp_path / "scratch", workdir, deadline, f"{executor}-{shard}"
        )
        runs[executor].update(outcomes)

    threads = [
        threading.Thread(target=run, args=(executor, shard))
        for executor in ("stdlib", "logexec")
        for shard in range(SHARDS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=SUITE_DEADLINE + 60)
    stdlib, logexec = runs["stdlib"], runs["logexec"]

    differences = [
        test_id
        for test_id in test_ids
        if (
            stdlib[test_id].outcome == "pass"
            and logexec[test_id].outcome != "pass"
            and short_key(test_id) not in ALLOWED_TO_FAIL
        )
        or (short_key(test_id) in ALLOWED_TO_FAIL and logexec[test_id].outcome in NEVER_ALLOWED)
    ]
    # One more try, alone, for each difference: a test that fails once under load (two
    # cores, two runs at once) and passes alone is reported, not failed.
    flaky: list[str] = []
    if differences:
        retry_deadline = time.monotonic() + SUITE_DEADLINE / 2
        (workdir / "retry").mkdir()
        again = run_tests(
            "logexec", differences, tmp_path / "scratch", workdir / "retry", retry_deadline, "retry"
        )
        flaky = [test_id for test_id in differences if again[test_id].outcome == "pass"]
        differences = [test_id for test_id in differences if test_id not in flaky]
    if flaky:
        # Visible in a passing run's warnings summary: a timing-dependent bug shows up here.
        warnings.warn(
            "CPython tests that failed with logexec and then passed alone: "
            + "; ".join(
                f"{test_id} ({KNOWN_CAUSES.get(short_key(test_id), 'no known cause')})" for test_id in flaky
            ),
            stacklevel=1,
        )
    only_in_logexec = sorted(set(logexec) - set(stdlib))
    allowed = {
        test_id: logexec[test_id].outcome for test_id in test_ids if short_key(test_id) in ALLOWED_TO_FAIL
    }
    print(
        f"\nCPython {sys.version.split()[0]}: {len(test_ids)} process-pool tests; "
        f"stdlib {sum(o.outcome == 'pass' for o in stdlib.values())} passed, "
        f"logexec {sum(o.outcome == 'pass' for o in logexec.values())} passed; "
        f"allowed to fail (outcome with logexec): {allowed}; "
        f"passed only on retry {flaky}"
    )
    assert not differences and not only_in_logexec, summarize(differences, stdlib, logexec) + "".join(
        f"\n  {key} (logexec run only):\n{excerpt(logexec[key].detail)}" for key in only_in_logexec
    )
