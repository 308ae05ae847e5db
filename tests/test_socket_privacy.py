"""No other user can reach the listener, and no peer can flood its log or spend its descriptors.

The address, the door (the peer's uid, the handshake's cap) and the refusals' reports are the
parent's alone: workers only connect to what the parent made. So these tests use one start
method (spawn, where workers connect only after the test's peers: the hardest case for the
cap) and vary the transport, whose doors differ (``_accept`` for ring and socket, the
stdlib's handshake in ``_portable``).
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Any

import pytest

from logexec._channel import _accept, _framing, _portable, _socket, _transports

from . import lifecycle_tasks
from .conftest import ListHandler

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parent.parent
TRANSPORTS = [_transports.RING, _transports.SOCKET, _transports.PORTABLE]
RESULT_TIMEOUT = 60
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's /proc and SO_PEERCRED")


@pytest.fixture
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Force the transport of the pools the test makes; skip where this platform lacks it."""
    name: str = request.param
    monkeypatch.setenv(_transports.ENV_TRANSPORT, name)
    monkeypatch.delenv(_transports.ENV_SHARED_MEMORY, raising=False)
    if _transports.choose() != name:
        pytest.skip(f"no {name} transport here")
    return name


def _abstract_names() -> list[str]:
    """The abstract names of this process's listeners in /proc/net/unix (anyone can read it)."""
    with open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
        return [line.split()[-1] for line in table if f"@logexec-{os.getpid()}-" in line]


@linux_only
@pytest.mark.parametrize("transport", TRANSPORTS, indirect=True)
@pytest.mark.parametrize("start_method", ["spawn"])
def test_a_long_tmpdir_still_gets_a_private_directory(
    make_executor: Callable[..., Any], transport: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a TMPDIR too long for AF_UNIX, the socket is still a path in a 0700 directory of
    ours, never an abstract name that /proc/net/unix lists for any user to dial."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr("tempfile.tempdir", str(deep))
    with make_executor(1) as executor:
        address = executor._logexec_listener.address
        assert executor._logexec_listener.transport == transport
        assert isinstance(address, str) and not address.startswith("\0"), repr(address)
        assert _abstract_names() == []
        directory = os.path.dirname(address)
        status = os.stat(directory)
        assert stat.S_IMODE(status.st_mode) == 0o700 and status.st_uid == os.geteuid()
        assert len(os.fsencode(address)) < 104  # macOS's limit, the tighter one
        assert executor.submit(lifecycle_tasks.log_numbered, 0, 2).result(timeout=RESULT_TIMEOUT) == 2
    assert not os.path.exists(directory)


def _knock_with_a_wrong_key(address: Any, transport: str) -> None:
    if transport == _transports.PORTABLE:
        with pytest.raises(AuthenticationError):
            mp_connection.Client(address, authkey=b"not the key")
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
        peer.settimeout(30)
        peer.connect(address)
        greeting = b""
        while len(greeting) < 1 + _framing.CHALLENGE_SIZE:
            chunk = peer.recv(64)
            assert chunk, "hung up before the greeting"
            greeting += chunk
        peer.sendall(b"\0" * _framing.HELLO_SIZE)
        assert peer.recv(16) == b""  # refused


@pytest.mark.parametrize("transport", TRANSPORTS, indirect=True)
@pytest.mark.parametrize("start_method", ["spawn"])
def test_wrong_key_peers_are_counted_not_logged_one_by_one(
    make_executor: Callable[..., Any], transport: str, collect: Callable[..., ListHandler]
) -> None:
    """300 peers with a wrong key cost two reports in all (the first, and the count when the
    listener stops), not 300; the pool goes on working."""
    handler = collect()
    peers = 300
    with make_executor(1) as executor:
        assert executor.submit(lifecycle_tasks.log_numbered, 0, 1).result(timeout=RESULT_TIMEOUT) == 1
        for _ in range(peers):
            _knock_with_a_wrong_key(executor._logexec_listener.address, transport)
        assert executor.submit(lifecycle_tasks.log_numbered, 1, 3).result(timeout=RESULT_TIMEOUT) == 3
    ours = [message for message in handler.messages() if message.startswith("logexec")]
    refused = [message for message in ours if "failed authentication" in message]
    assert len(refused) == 2, ours[:5]
    assert f"closed {peers} connections" in refused[1]
    assert len([record for record in handler.records if record.name == "tests.lifecycle"]) == 4


_SILENT_SCRIPT = """
import multiprocessing, resource, sys
sys.path.insert(0, {root!r})
from logexec import LoggingProcessPoolExecutor
from logexec._channel import _accept, _portable
from tests import lifecycle_tasks

# Silent peers are cut off sooner, so that the test is quick; the cap is what is tested.
_accept.HANDSHAKE_SECONDS = _portable.HANDSHAKE_SECONDS = 1.0

if __name__ == "__main__":
    records = lifecycle_tasks.keep_records()
    resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    outcome = "ok"
    try:
        with LoggingProcessPoolExecutor(2, mp_context=multiprocessing.get_context({method!r})) as executor:
            print("ADDRESS", executor._logexec_listener.address, flush=True)
            sys.stdin.readline()  # the silent peers are in
            futures = [executor.submit(lifecycle_tasks.log_numbered, task, 5) for task in range(6)]
            for future in futures:
                future.result(timeout=90)
    except Exception as error:
        outcome = type(error).__name__ + ":" + str(error).replace(" ", "_")
    print("RESULT", outcome, len([r for r in records if r.name == "tests.lifecycle"]), flush=True)
    for record in records:
        if record.name == "logexec":
            print(record.getMessage(), flush=True)
"""


@linux_only  # where the descriptor limit and an address to dial are simple to come by
@pytest.mark.parametrize("transport", TRANSPORTS, indirect=True)
@pytest.mark.parametrize("start_method", ["spawn", "fork"])  # fork: the listener starts after the peers
def test_silent_peers_do_not_spend_the_descriptors_the_pool_needs(transport: str, start_method: str) -> None:
    """300 peers that connect and say nothing, under a 256-descriptor limit, before the
    workers start: the pool starts and every record arrives (they wait their turn in the
    kernel's backlog, not in our descriptors), with two reports in all about them."""
    if start_method == "fork" and transport == _transports.PORTABLE:
        # Its accept thread starts with the first submit under fork, so no more peers than
        # its backlog (128) can wait before the pool starts: the spawn case covers it.
        pytest.skip("under fork no portable peer is accepted before the first submit")
    peers, limit = 300, 256
    script = _SILENT_SCRIPT.format(root=str(ROOT), method=start_method, limit=limit)
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    silent: list[socket.socket] = []
    try:
        assert process.stdout is not None and process.stdin is not None
        line = process.stdout.readline()
        assert line.startswith("ADDRESS "), line + process.stdout.read()
        address = line[len("ADDRESS ") :].rstrip("\n")
        for _ in range(peers):
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            silent.append(peer)
            _connect_when_there_is_room(peer, address)
        process.stdin.write("go\n")
        process.stdin.flush()
        output, _ = process.communicate(timeout=150)
    finally:
        for peer in silent:
            peer.close()
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
    results = [line.split()[1:3] for line in output.splitlines() if line.startswith("RESULT ")]
    assert results == [["ok", "30"]], output[-3000:]
    silent_reports = [line for line in output.splitlines() if "did not complete the handshake" in line]
    assert 1 <= len(silent_reports) <= 2, output[-3000:]
    assert "run out of file descriptors" not in output


@pytest.mark.parametrize("transport", [_transports.PORTABLE], indirect=True)
def test_workers_queued_behind_a_slow_hello_still_get_in(
    make_executor: Callable[..., Any],
    mp_context: Any,
    transport: str,
    collect: Callable[..., ListHandler],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The narrow door with a listener slow over each hello: workers past the stdlib's
    handshake queue up behind the one in the listener's, and each is still taken in turn.
    (Only the first of a queue was: the rest waited unseen for their greeting, hung every run.)"""
    monkeypatch.setattr(_accept, "MAX_HANDSHAKES", 1)
    monkeypatch.setattr(_portable, "MAX_HANDSHAKES", 1)
    authenticate = _accept.Accepting._authenticate

    def slowly(self: _accept.Accepting, *args: Any) -> int:
        time.sleep(0.05)  # while the door is held: the next workers queue up meanwhile
        return authenticate(self, *args)

    monkeypatch.setattr(_accept.Accepting, "_authenticate", slowly)
    handler = collect()
    workers = 6
    with make_executor(workers) as executor:
        futures = [executor.submit(lifecycle_tasks.log_numbered, task, 3, 0.3) for task in range(workers * 2)]
        assert [future.result(timeout=RESULT_TIMEOUT) for future in futures] == [3] * workers * 2
        listener = executor._logexec_listener._listener
        deadline = time.monotonic() + 30
        while (joined := sum(1 for c in list(listener._connections) if c.pid)) < workers:
            if time.monotonic() > deadline:
                # Let the workers left waiting fail, so that the pool can shut down.
                listener._server.close()
                break
            time.sleep(0.05)
        assert joined == workers
    assert [message for message in handler.messages() if message.startswith("logexec")] == []


def _connect_when_there_is_room(peer: socket.socket, address: str) -> None:
    """Connect, waiting while the listener's backlog is full (the portable one is short)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            peer.connect(address)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _dial_as_nobody(address: str) -> str:
    """Connect to ``address`` from a child process of another user; what it heard."""
    reader, writer = os.pipe()
    with warnings.catch_warnings():
        # The listener's threads are running; the child only makes system calls and exits
        # (not sys.executable as another user: it may live in a directory only root enters).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        heard = b"?"
        try:
            os.close(reader)
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
                peer.settimeout(10)
                peer.connect(address)
                heard = b"eof" if peer.recv(64) == b"" else b"greeted"
        except BaseException as error:
            heard = type(error).__name__.encode()
        finally:
            os.write(writer, heard)
            os._exit(0)
    os.close(writer)
    try:
        with os.fdopen(reader, "rb") as pipe:
            return pipe.read().decode()
    finally:
        os.waitpid(pid, 0)


@linux_only
@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to become another user"
)
@pytest.mark.parametrize("transport", TRANSPORTS, indirect=True)
@pytest.mark.parametrize("start_method", ["spawn"])
def test_a_peer_of_another_user_is_closed_unheard(
    make_executor: Callable[..., Any],
    transport: str,
    collect: Callable[..., ListHandler],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the last resort is an abstract name (no directory fits), which any user can dial,
    a connection from another user is closed before it is greeted, and nothing is logged."""
    monkeypatch.setattr(_socket, "_UNIX_PATH_LIMIT", 1)  # no path fits: the abstract name
    handler = collect()
    with make_executor(1) as executor:
        address = executor._logexec_listener.address
        assert address.startswith("\0")
        assert executor.submit(lifecycle_tasks.log_numbered, 0, 1).result(timeout=RESULT_TIMEOUT) == 1
        assert _dial_as_nobody(address) == "eof"
        assert executor.submit(lifecycle_tasks.log_numbered, 1, 1).result(timeout=RESULT_TIMEOUT) == 1
        assert executor._logexec_listener._listener._refusals.foreign == 1
    assert [message for message in handler.messages() if message.startswith("logexec")] == []


def test_refusals_report_the_first_and_then_the_count() -> None:
    """The tally's own rule, without processes: first at once, the rest counted at the end."""
    reports: list[str] = []
    refusals = _socket.Refusals(lambda level, message, *args: reports.append(message % args))
    for _ in range(5):
        refusals.refused("failed authentication")
    refusals.refused("did not complete the handshake within 1 s")
    refusals.count_foreign()
    assert len(reports) == 2
    refusals.summarize()
    assert len(reports) == 3 and "closed 5 connections" in reports[2]
    assert refusals.foreign == 1 and refusals.count("failed authentication") == 5


@pytest.mark.parametrize("transport", TRANSPORTS, indirect=True)
def test_workers_start_through_a_narrow_door(
    make_executor: Callable[..., Any],
    mp_context: Any,
    transport: str,
    collect: Callable[..., ListHandler],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With room for one handshake at a time, every worker of a pool still gets in (the
    others wait in the backlog and are accepted as handshakes end), under each start method."""
    monkeypatch.setattr(_accept, "MAX_HANDSHAKES", 1)
    monkeypatch.setattr(_portable, "MAX_HANDSHAKES", 1)
    handler = collect()
    workers = 4
    with make_executor(workers) as executor:
        # Slow enough that every worker takes a task, so every one of them connects.
        futures = [executor.submit(lifecycle_tasks.log_numbered, task, 3, 0.3) for task in range(workers * 2)]
        assert [future.result(timeout=RESULT_TIMEOUT) for future in futures] == [3] * workers * 2
        pids = {record.process for record in handler.records if record.name == "tests.lifecycle"}
    assert len(pids) > 1
    assert [message for message in handler.messages() if message.startswith("logexec")] == []
