"""The listener is never the casualty: no failure of what it calls, no bytes a worker sends,
and no descriptor limit or environment the stdlib tolerates ends it or loses a record."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from logexec import LoggingProcessPoolExecutor, _dispatch, _records
from logexec._channel import _accept, _framing, _guard, _listener, _portable, _ring, _transports

from . import lifecycle_tasks as tasks
from .conftest import TRANSPORT, ListHandler, socket_protocol_only

pytestmark = pytest.mark.integration

RESULT_TIMEOUT = 60
WORKERS = 2
TASKS = 6
RECORDS = 40


class Injected(RuntimeError):
    """The failure a test injects."""


class FailOnce:
    """Wraps a callable so that its ``nth`` call by the listener thread raises ``Injected``, once.

    Only the listener's calls count: workers forked from this process inherit the patch,
    and other threads here make the same calls for other reasons.
    """

    def __init__(self, target: Callable[..., Any], nth: int) -> None:
        self.target = target
        self.nth = nth
        self.calls = 0
        self.pid = os.getpid()
        self.fired = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if os.getpid() != self.pid or threading.current_thread().name != "logexec-listener":
            return self.target(*args, **kwargs)
        self.calls += 1
        if self.calls == self.nth:
            self.fired.set()
            raise Injected(f"injected into call {self.nth}")
        return self.target(*args, **kwargs)


# Every external call the listener makes, each made to fail once, in turn. Ring cases apply
# where the ring is in use; socket ones where frames come on the connection.
INJECTIONS: dict[str, Callable[[], tuple[Any, str, Any, FailOnce]]] = {}


def _injection(name: str, owner: Any, attribute: str, nth: int, *, bound: bool = True) -> None:
    def make() -> tuple[Any, str, Any, FailOnce]:
        original = getattr(owner, attribute)
        wrapper = FailOnce(original, nth)
        if bound:

            def method(self: Any, *args: Any, **kwargs: Any) -> Any:
                return wrapper(self, *args, **kwargs)

            return owner, attribute, method, wrapper
        return owner, attribute, wrapper, wrapper

    INJECTIONS[name] = make


_injection("unpickle-and-rebuild", _records, "decode_record", 5, bound=False)
_injection("dispatch", _dispatch.Dispatcher, "dispatch", 5)
_injection("own-report", _guard, "handle_safely", 1, bound=False)
_injection("accept", socket.socket, "accept", 1)
_injection("select", selectors.DefaultSelector, "select", 3)
_injection("recv-into", socket.socket, "recv_into", 3)
_injection("recv-hello", socket.socket, "recvmsg_into", 1)
_injection("send-answer", socket.socket, "sendall", 3)
_injection("send-greeting", socket.socket, "sendall", 1)  # the first is always a greeting
_injection("handshake-digest", _framing, "answer_challenge", 1, bound=False)
_injection("ring-read", _ring.RingReader, "read_into", 5)
_injection("ring-map", _ring, "RingReader", 1, bound=False)
_injection("worker-exit-callback", _listener.Listener, "_notify_worker_exit", 1)
# The portable transport's counterparts of select, recv_into, recvmsg_into and sendall.
_injection("portable-select", _portable.Selector, "select", 3)
_injection("portable-recv-into", _portable.StreamConnection, "recv_into", 3)
_injection("portable-recv-hello", _portable.StreamConnection, "recvmsg_into", 1)
_injection("portable-send-answer", _portable.StreamConnection, "sendall", 3)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", ["fork"])
@pytest.mark.parametrize("injection", sorted(INJECTIONS))
def test_a_failure_in_any_call_costs_at_most_what_it_touched(
    injection: str,
    mp_context: Any,
    collect: Callable[..., ListHandler],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Whatever call of the listener's fails, the thread goes on, the pool finishes, every
    record is delivered or accounted for (a stand-in record, or its worker's stderr), and
    the failure is reported."""
    handler = collect()
    owner, attribute, replacement, wrapper = INJECTIONS[injection]()
    monkeypatch.setattr(owner, attribute, replacement)
    executor = LoggingProcessPoolExecutor(WORKERS, mp_context=mp_context)
    try:
        futures = [executor.submit(tasks.log_numbered, task, RECORDS) for task in range(TASKS)]
        assert [future.result(timeout=RESULT_TIMEOUT) for future in futures] == [RECORDS] * TASKS
        if injection == "own-report":
            _intrude(executor)  # make the listener report something: a peer without the key
        # The listener still serves: a second round after the failure.
        again = executor.submit(tasks.log_numbered, 100, RECORDS).result(timeout=RESULT_TIMEOUT)
        assert again == RECORDS
    finally:
        executor.shutdown(wait=True)
    assert executor._logexec_listener.wait_stopped(timeout=RESULT_TIMEOUT)
    if not wrapper.fired.is_set():
        pytest.skip(f"{injection}: the call is not made with this transport")
    err = capfd.readouterr().err
    delivered = {
        (record.task, record.counter)  # type: ignore[attr-defined]
        for record in handler.records
        if record.name == "tests.lifecycle"
    }
    on_stderr = {line for line in err.splitlines() if "tests.lifecycle:task" in line}
    # A record lost to the failure is named in a report: a stand-in, or "could not be handled".
    stand_ins = [
        record
        for record in handler.records
        if "stands in for it" in record.getMessage() or "could not be handled" in record.getMessage()
    ]
    expected = {(task, counter) for task in [*range(TASKS), 100] for counter in range(RECORDS)}
    missing = expected - delivered
    # A record replaced by a stand-in, or written to its worker's stderr, is accounted for.
    for task, counter in list(missing):
        if f"INFO:tests.lifecycle:task {task} record {counter}" in on_stderr:
            missing.discard((task, counter))
    assert len(missing) <= len(stand_ins), (sorted(missing)[:10], len(stand_ins))
    reported = [record for record in handler.records if record.name == "logexec"]
    assert reported or "Injected" in err, err[-2000:]


@pytest.mark.parametrize("start_method", ["fork"])
def test_a_record_that_will_not_rebuild_does_not_stop_the_stream(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """An extra that pickles in the worker but not in the parent costs at most that record;
    the records before and after it arrive."""
    handler = collect()
    with make_executor(1) as executor:
        assert executor.submit(tasks.log_unrebuildable_extra).result(timeout=RESULT_TIMEOUT) == 3
        assert executor.submit(tasks.log_numbered, 1, 5).result(timeout=RESULT_TIMEOUT) == 5
    messages = [record.getMessage() for record in handler.records if record.name == "tests.lifecycle"]
    assert (messages[0] == "before" and messages[-6] == "after") or "after" in messages
    assert [message for message in messages if message.startswith("task 1")] == [
        f"task 1 record {n}" for n in range(5)
    ]


def test_a_raising_logger_filter_is_reported_and_the_next_record_handled(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler], capfd: pytest.CaptureFixture[str]
) -> None:
    """A filter on a parent logger that raises is reported as logging reports errors; the
    listener goes on with the next record."""
    handler = collect()

    class Raises(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.getMessage() == "task 0 record 3":
                raise ValueError("a filter that raises")
            return True

    logging.getLogger("tests.lifecycle").addFilter(Raises())
    with make_executor(1) as executor:
        assert executor.submit(tasks.log_numbered, 0, 6).result(timeout=RESULT_TIMEOUT) == 6
    assert [record.counter for record in handler.records if record.name == "tests.lifecycle"] == [  # type: ignore[attr-defined]
        0,
        1,
        2,
        4,
        5,
    ]
    assert "a filter that raises" in capfd.readouterr().err


@pytest.mark.parametrize("start_method", ["spawn"])
def test_a_handler_that_raises_while_logexec_reports_does_not_hide_the_report(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """logexec's own warning reaches every handler even when one of them raises."""

    class Raises(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise RuntimeError("this handler always fails")

        def handleError(self, record: logging.LogRecord) -> None:
            raise RuntimeError("and so does its handleError")

    logging.getLogger("logexec").addHandler(Raises())
    handler = collect()
    with make_executor(1) as executor:
        executor.submit(tasks.log_numbered, 0, 1).result(timeout=RESULT_TIMEOUT)
        _intrude(executor)
        assert executor.submit(tasks.log_numbered, 1, 3).result(timeout=RESULT_TIMEOUT) == 3
    assert any("failed authentication" in message for message in handler.messages())
    assert [message for message in handler.messages() if message.startswith("task 1")] == [
        f"task 1 record {n}" for n in range(3)
    ]


def _intrude(executor: LoggingProcessPoolExecutor) -> None:
    """Connect without the key, offer a hello of zeros, and wait until the listener hangs up."""
    address = executor._logexec_listener.address
    if TRANSPORT == _transports.PORTABLE:
        with pytest.raises(multiprocessing.AuthenticationError):
            _portable.connect(address, b"not the key")
        return
    intruder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    intruder.settimeout(RESULT_TIMEOUT)
    intruder.connect(address)
    intruder.sendall(b"\0" * _framing.HELLO_SIZE)
    while intruder.recv(4096):
        pass
    intruder.close()


def _authenticated_peer(executor: LoggingProcessPoolExecutor) -> socket.socket | _portable.StreamConnection:
    """Connect and authenticate as a worker would, with frames on the connection."""
    address = executor._logexec_listener.address
    peer: socket.socket | _portable.StreamConnection
    if TRANSPORT == _transports.PORTABLE:
        peer = _portable.connect(address, executor._logexec_config.key)
    else:
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer.settimeout(RESULT_TIMEOUT)
        peer.connect(address)
    greeting = b""
    while len(greeting) < 1 + _framing.CHALLENGE_SIZE:
        greeting += peer.recv(64)
    proof = _framing.answer_challenge(executor._logexec_config.key, greeting[1:])
    peer.sendall(proof + _framing.HELLO_TAIL.pack(os.getpid(), _framing.VIA_CONNECTION))
    assert peer.recv(1) == _framing.USE_CONNECTION
    return peer


def test_a_frame_that_is_not_a_record_is_replaced_and_the_stream_goes_on(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A well-framed payload that is no pickle costs that one record: a stand-in says so,
    and the peer's next record and the workers' records are handled."""
    handler = collect()
    with make_executor(1) as executor:
        executor.submit(tasks.log_numbered, 0, 1).result(timeout=RESULT_TIMEOUT)
        peer = _authenticated_peer(executor)
        junk = b"this is not a pickle"
        good = pickle.dumps(("unused",))  # a pickle, but not a record's shape
        record = logging.makeLogRecord({"name": "tests.peer", "msg": "after the junk", "levelno": 40})
        frames = (
            _framing.HEADER.pack(len(junk), _framing.KIND_RECORD)
            + junk
            + _framing.HEADER.pack(len(good), _framing.KIND_RECORD)
            + good
            + _framing.encode_record(record, None)
            + _framing.encode_barrier(1)
        )
        peer.sendall(frames)
        assert peer.recv(1) == _framing.barrier_ack(1)
        peer.close()
        assert executor.submit(tasks.log_numbered, 1, 3).result(timeout=RESULT_TIMEOUT) == 3
    messages = handler.messages()
    assert len([message for message in messages if "stands in for it" in message]) == 2, messages
    assert "after the junk" in messages
    assert [message for message in messages if message.startswith("task 1")] == [
        f"task 1 record {n}" for n in range(3)
    ]


def test_a_frame_of_unknown_kind_closes_only_that_connection_and_says_why(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A frame kind nobody sends breaks the protocol: that connection is closed and told why,
    reported once with its pid, and the pool goes on."""
    handler = collect()
    with make_executor(1) as executor:
        executor.submit(tasks.log_numbered, 0, 1).result(timeout=RESULT_TIMEOUT)
        peer = _authenticated_peer(executor)
        peer.sendall(_framing.HEADER.pack(0, 99))
        farewell = b""
        while chunk := peer.recv(4096):
            farewell += chunk
        assert farewell.startswith(_framing.GOODBYE) and b"unknown kind 99" in farewell
        assert executor.submit(tasks.log_numbered, 1, 3).result(timeout=RESULT_TIMEOUT) == 3
    closed = [message for message in handler.messages() if "closed the connection" in message]
    assert len(closed) == 1 and str(os.getpid()) in closed[0]


@socket_protocol_only
@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", ["spawn"])
def test_a_peer_that_dribbles_its_hello_holds_nothing(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that sends its hello one byte at a time is cut off at the handshake deadline,
    and does not hold shutdown."""
    monkeypatch.setattr(_accept, "HANDSHAKE_SECONDS", 1.0)
    handler = collect()
    executor = make_executor(1)
    executor.submit(tasks.log_numbered, 0, 1).result(timeout=RESULT_TIMEOUT)
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.connect(executor._logexec_listener.address)
    stop = threading.Event()

    def dribble() -> None:
        while not stop.wait(0.3):
            try:
                peer.send(b"\0")
            except OSError:
                return

    dribbler = threading.Thread(target=dribble)
    dribbler.start()
    try:
        time.sleep(1.8)
        assert any("did not complete the handshake" in message for message in handler.messages())
        started = time.monotonic()
        executor.shutdown(wait=True)
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        dribbler.join(timeout=10)
        peer.close()


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_a_long_tmpdir_works(start_method: str, tmp_path: Path) -> None:
    """A TMPDIR too long for an AF_UNIX path works, as it does for the stdlib pool."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    script = textwrap.dedent(
        f"""
        import logging, multiprocessing, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from logexec import LoggingProcessPoolExecutor
        from tests import lifecycle_tasks
        if __name__ == "__main__":
            records = lifecycle_tasks.keep_records()
            context = multiprocessing.get_context({start_method!r})
            with LoggingProcessPoolExecutor(2, mp_context=context) as executor:
                address = executor._logexec_listener.address
                assert executor.submit(lifecycle_tasks.log_numbered, 0, 5).result(timeout=60) == 5
            messages = [record.getMessage() for record in records]
            assert messages == [f"task 0 record {{n}}" for n in range(5)], messages
            print(address)
        """
    )
    environment = {**os.environ, "TMPDIR": str(deep)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )
    assert done.returncode == 0, done.stderr
    # Never an abstract name (any user can dial one): a private directory where the path fits.
    assert done.stdout.startswith("/") and not done.stdout.startswith(str(deep)), done.stdout


@pytest.mark.parametrize("start_method", ["spawn"])
def test_a_listener_thread_that_cannot_start_fails_clearly(
    mp_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the listener thread cannot start, submit says so; shutdown neither raises nor blocks."""
    original = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name == "logexec-listener":
            raise RuntimeError("can't start new thread")
        original(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    executor = LoggingProcessPoolExecutor(1, mp_context=mp_context)
    with pytest.raises(RuntimeError, match="could not start its log listener thread"):
        executor.submit(tasks.log_numbered, 0, 1)
    started = time.monotonic()
    executor.shutdown(wait=True)
    assert time.monotonic() - started < 30


_COUNT_SCRIPT = """
import multiprocessing, os, sys
sys.path.insert(0, {root!r})
from concurrent.futures import ProcessPoolExecutor
from logexec import LoggingProcessPoolExecutor
from tests import lifecycle_tasks

def fds():
    return len(os.listdir("/proc/self/fd"))

if __name__ == "__main__":
    context = multiprocessing.get_context({method!r})
    counts = []
    for pool in (ProcessPoolExecutor, LoggingProcessPoolExecutor):
        before = fds()
        with pool({workers}, mp_context=context) as executor:
            # Enough slow tasks that every worker starts (spawn starts them on demand).
            list(executor.map(lifecycle_tasks.log_numbered, range({workers} * 2), [1] * {workers} * 2,
                              [0.2] * {workers} * 2))
            counts.append(fds() - before)
    print(*counts)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_at_most_one_descriptor_per_worker(start_method: str, tmp_path: Path) -> None:
    """Each worker costs the parent at most one descriptor more than the stdlib pool's."""
    workers = 6
    root = str(Path(__file__).resolve().parent.parent)
    script = _COUNT_SCRIPT.format(root=root, method=start_method, workers=workers)
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    stdlib, ours = map(int, done.stdout.split())
    # Per worker one connection; plus a constant five: the listening socket, the wake-up
    # pair, the reserve descriptor and the selector.
    assert ours - stdlib <= workers + 5, (ours, stdlib)


_LIMIT_SCRIPT = """
import faulthandler, logging, multiprocessing, os, resource, sys
sys.path.insert(0, {root!r})
from concurrent.futures import ProcessPoolExecutor
from logexec import LoggingProcessPoolExecutor
from tests import lifecycle_tasks

if __name__ == "__main__":
    faulthandler.dump_traceback_later(50, exit=True)
    records = lifecycle_tasks.keep_records()
    context = multiprocessing.get_context({method!r})
    pool = LoggingProcessPoolExecutor if {ours!r} else ProcessPoolExecutor
    limit = len(os.listdir("/proc/self/fd")) + {headroom}
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    outcome = "ok"
    try:
        with pool({workers}, mp_context=context) as executor:
            log = lifecycle_tasks.log_numbered
            futures = [executor.submit(log, task, 20) for task in range({workers} * 3)]
            for future in futures:
                future.result(timeout=30)
    except Exception as error:
        outcome = type(error).__name__ + ":" + str(error).replace(" ", "_")
    print("RESULT", outcome, len([r for r in records if r.name == "tests.lifecycle"]), flush=True)
    for record in records:
        if record.name == "logexec":
            print(record.getMessage(), flush=True)
"""


def _run_limited(root: str, method: str, workers: int, headroom: int, ours: bool) -> tuple[str, int, str]:
    """Run the pool under a descriptor limit in its own session; (outcome, records, output).

    The outcome is "hang" only if the workload itself never finished. (Where the stdlib
    could not finish starting its pool, its half-started fork workers can hold the
    interpreter's exit for ever, logexec or not: that is killed, after the result.)
    """
    script = _LIMIT_SCRIPT.format(root=root, method=method, workers=workers, headroom=headroom, ours=ours)
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    results = [line.split()[1:3] for line in output.splitlines() if line.startswith("RESULT ")]
    if not results:
        return "hang", 0, output
    return results[0][0], int(results[0][1]), output


@pytest.mark.stress  # a few minutes: it searches for the stdlib's tightest working limit
@pytest.mark.timeout(900)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts descriptors through /proc")
@pytest.mark.parametrize("start_method", ["fork"])  # spawn takes minutes more; same listener
def test_descriptor_limits_never_lose_a_record_silently(start_method: str) -> None:
    """Given one descriptor per worker more than the stdlib pool needs (plus logexec's five),
    every record arrives wherever the stdlib pool works; at tighter limits the pool fails
    with a clear error about descriptors: never a silent loss, never a hung workload."""
    root = str(Path(__file__).resolve().parent.parent)
    workers = 8
    allowance = workers + 5
    tightest = None
    for headroom in (28, 24, 20):
        stdlib, _, _ = _run_limited(root, start_method, workers, headroom, ours=False)
        if stdlib == "ok":
            tightest = headroom
    assert tightest is not None, "the stdlib pool worked at none of the limits tried"
    outcome, count, output = _run_limited(root, start_method, workers, tightest + allowance, ours=True)
    assert (outcome, count) == ("ok", workers * 3 * 20), output[-3000:]
    for headroom in (tightest + allowance // 2, tightest - 4):
        outcome, count, output = _run_limited(root, start_method, workers, headroom, ours=True)
        assert outcome != "hang", (headroom, output[-3000:])
        if outcome == "ok":
            assert count == workers * 3 * 20, (headroom, output[-3000:])
        else:
            assert "descriptors" in output or "Too_many_open_files" in output, (headroom, output[-3000:])
