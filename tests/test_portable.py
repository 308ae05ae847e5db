"""The portable transport: its stream view of a message connection, its handshake off the
listener thread, its addresses, and whole workloads in interpreters stripped as Windows and
macOS are."""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing import connection as mp_connection
from pathlib import Path

import pytest

from logexec import LoggingProcessPoolExecutor
from logexec._channel import _guard, _portable, _socket, _transports

from . import lifecycle_tasks as tasks
from .conftest import ListHandler

ROOT = Path(__file__).resolve().parent.parent
RESULT_TIMEOUT = 60


@pytest.fixture
def portable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pools made in the test use the portable transport (spawn workers inherit the switch)."""
    monkeypatch.setenv(_transports.ENV_TRANSPORT, _transports.PORTABLE)


# --- units: the stream view and the selector ---------------------------------------------


def test_a_message_larger_than_the_read_is_kept_for_the_next_reads() -> None:
    """recv_into returns message bytes in order across reads of any size, and 0 only at EOF."""
    reader, writer = _portable.wake_pair()
    writer.sendall(b"0123456789")
    writer.sendall(b"ab")
    buffer = memoryview(bytearray(4))
    received = b""
    for _ in range(3):
        count = reader.recv_into(buffer)
        received += bytes(buffer[:count])
    assert received == b"0123456789"
    assert reader.recv(64) == b"ab"
    writer.close()
    assert reader.recv_into(buffer) == 0
    reader.close()


def test_a_non_blocking_read_with_nothing_waiting_raises_blocking_io_error() -> None:
    """As a non-blocking socket does: BlockingIOError, never a wait, never a false EOF."""
    reader, writer = _portable.wake_pair()
    reader.setblocking(False)
    with pytest.raises(BlockingIOError):
        reader.recv_into(memoryview(bytearray(8)))
    with pytest.raises(BlockingIOError):
        reader.recv_now(8)
    writer.send(b"x")
    assert reader.recv_now(8) == b"x"
    reader.close()
    writer.close()


def test_the_selector_reports_bytes_already_received_as_ready() -> None:
    """Bytes taken from the pipe but not yet read are invisible to wait(); select still sees them."""
    reader, writer = _portable.wake_pair()
    selector = _portable.Selector()
    selector.register(reader, selectors.EVENT_READ, "reader")
    assert selector.select(0) == []
    writer.sendall(b"abcdef")
    assert [key.data for key, _ in selector.select(RESULT_TIMEOUT)] == ["reader"]
    reader.recv(2)  # the pipe is empty now; four bytes wait in the view
    assert [key.data for key, _ in selector.select(RESULT_TIMEOUT)] == ["reader"]
    assert reader.recv(64) == b"cdef"
    assert selector.select(0) == []
    selector.unregister(reader)
    selector.close()
    reader.close()
    writer.close()


# --- the server's readiness ----------------------------------------------------------------


def test_the_server_stays_readable_while_an_authenticated_connection_waits() -> None:
    """Two connections past the stdlib's handshake: once accept() has handed over the first,
    the server still reads as ready for the second, as a listening socket does while its
    backlog holds one. The listener may stop after one (room for no more handshakes) and
    looks again only when the selector says so: a second left unseen hung its worker, and the
    pool's shutdown with it."""
    directory, address = _portable.new_address(_socket._new_address)
    key = os.urandom(32)
    server = _portable.Server(address, key, _guard.report)
    clients: list[mp_connection.Connection] = []
    try:
        server.start()
        clients = [mp_connection.Client(server.address, authkey=key) for _ in range(2)]
        deadline = time.monotonic() + RESULT_TIMEOUT
        while len(server._ready) < 2:  # both queued, as behind a listener busy elsewhere
            assert time.monotonic() < deadline, "the handshakes did not end"
            time.sleep(0.01)
        assert mp_connection.wait([server], RESULT_TIMEOUT) == [server]
        first, _ = server.accept()
        # Long enough for a notification still on its way; the second is queued already.
        assert mp_connection.wait([server], 5) == [server], "the second connection went unseen"
        second, _ = server.accept()
        with pytest.raises(BlockingIOError):
            server.accept()
        for number, client in enumerate(clients):
            client.send_bytes(b"%d" % number)
        assert {first.recv(8), second.recv(8)} == {b"0", b"1"}
    finally:
        for client in clients:
            client.close()
        server.close()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


# --- the handshake never stalls the listener -----------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(90)
@pytest.mark.parametrize("start_method", ["spawn"])
def test_a_peer_that_stalls_in_the_handshake_stalls_nothing_else(
    portable: None,
    make_executor: Callable[..., LoggingProcessPoolExecutor],
    collect: Callable[..., ListHandler],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer that connects and never answers the challenge, and one that stops halfway through
    a message, hold neither the listener nor a worker that starts after them; both are cut
    off at the handshake deadline, and shutdown is quick."""
    monkeypatch.setattr(_portable, "HANDSHAKE_SECONDS", 1.5)
    handler = collect()
    executor = make_executor(1).__enter__()  # bound and listening; no worker yet
    address = executor._logexec_listener.address
    silent = mp_connection.Client(address)  # no key: the stdlib's handshake is not attempted
    halfway: socket.socket | None = None
    if isinstance(address, str) and hasattr(socket, "AF_UNIX"):
        halfway = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        halfway.connect(address)
        halfway.sendall(b"\0\0")  # two bytes of a four-byte message header, then nothing
    try:
        # The worker starts now, behind the stalled peers, and its records arrive.
        assert executor.submit(tasks.log_numbered, 0, 5).result(timeout=RESULT_TIMEOUT) == 5
        deadline = time.monotonic() + RESULT_TIMEOUT
        stalled = 2 if halfway is not None else 1
        refusals = executor._logexec_listener._listener._refusals
        while refusals.count("did not complete the handshake") < stalled:
            assert time.monotonic() < deadline, handler.messages()
            time.sleep(0.05)
        started = time.monotonic()
        executor.shutdown(wait=True)
        assert time.monotonic() - started < 10
    finally:
        silent.close()
        if halfway is not None:
            halfway.close()
    assert [message for message in handler.messages() if message.startswith("task 0")] == [
        f"task 0 record {n}" for n in range(5)
    ]
    # The first reported at once, the other counted in one report at the end.
    assert sum("did not complete the handshake" in message for message in handler.messages()) == stalled


@pytest.mark.integration
@pytest.mark.parametrize("start_method", ["spawn"])
def test_a_peer_without_the_key_is_refused_and_the_pool_goes_on(
    portable: None,
    make_executor: Callable[..., LoggingProcessPoolExecutor],
    collect: Callable[..., ListHandler],
) -> None:
    """The stdlib's authkey challenge refuses a peer without the key; it is reported; the pool
    keeps working and the parent's logging is intact."""
    handler = collect()
    with make_executor(1) as executor:
        assert executor._logexec_listener.transport == _transports.PORTABLE
        with pytest.raises(AuthenticationError):
            _portable.connect(executor._logexec_listener.address, b"not the key")
        assert executor.submit(tasks.log_numbered, 1, 3).result(timeout=RESULT_TIMEOUT) == 3
    assert any("failed authentication" in message for message in handler.messages())
    assert [message for message in handler.messages() if message.startswith("task 1")] == [
        f"task 1 record {n}" for n in range(3)
    ]
    assert logging.getLogger().handlers


# --- addresses -----------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="AF_UNIX paths")
@pytest.mark.parametrize("abstract", [True, False], ids=["linux", "macos-like"])
def test_the_address_fits_af_unix_with_a_long_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abstract: bool
) -> None:
    """With a TMPDIR too long for AF_UNIX (macOS's are long, its limit 104 bytes), the portable
    address is a private directory in /tmp that fits, with or without Linux's abstract
    names (which any user could dial): never the stdlib's default address, which would not."""
    if abstract and not sys.platform.startswith("linux"):
        pytest.skip("abstract names are Linux's")
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr("tempfile.tempdir", str(deep))
    monkeypatch.setattr(_socket, "_ABSTRACT_NAMESPACE", abstract)
    directory, address = _portable.new_address(_socket._new_address)
    try:
        assert isinstance(address, str)
        assert directory is not None and directory.startswith("/tmp/")
        assert len(os.fsencode(address)) < 104
        assert os.stat(directory).st_mode & 0o777 == 0o700
        server = _portable.Server(address, b"k" * 32, _guard.report)
        server.close()
    finally:
        if directory is not None:
            os.rmdir(directory)


def test_without_af_unix_the_address_is_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where neither named pipes nor AF_UNIX exist, the listener takes a loopback port."""
    if sys.platform == "win32":
        pytest.skip("Windows uses named pipes")
    monkeypatch.delattr(socket, "AF_UNIX", raising=False)
    assert _portable.new_address(_socket._new_address) == (None, ("127.0.0.1", 0))


# --- whole workloads in interpreters stripped as other platforms are -----------------------

# Names that Windows lacks and this module's tests take away, with the modules that hold them.
WINDOWS_LACKS = {
    "socket": [
        "AF_UNIX",
        "send_fds",
        "recv_fds",
        "CMSG_SPACE",
        "CMSG_LEN",
        "SCM_RIGHTS",
        "MSG_DONTWAIT",
        "MSG_PEEK",
        "MSG_CMSG_CLOEXEC",
    ],
    "os": ["memfd_create", "fork", "forkpty", "register_at_fork"],
}
# macOS has AF_UNIX and fork, but no memfd and no MSG_CMSG_CLOEXEC; its default is spawn.
MACOS_LACKS = {"socket": ["MSG_CMSG_CLOEXEC"], "os": ["memfd_create"]}

_SITECUSTOMIZE = """
# Strips this interpreter of names a platform lacks, before anything else imports; spawn
# workers start with the same PYTHONPATH, so they are stripped too.
import os, socket, sys
LACKS = {lacks!r}
if {block_fcntl!r}:
    sys.modules["fcntl"] = None  # "import fcntl" raises ImportError, as on Windows
for module_name, names in LACKS.items():
    module = sys.modules[module_name]
    for name in names:
        if hasattr(module, name):
            delattr(module, name)
"""

_WORKLOAD = """
import logging, multiprocessing, os, socket, sys
sys.path.insert(0, {root!r})
for module_name, names in {lacks!r}.items():
    assert not any(hasattr(sys.modules[module_name], name) for name in names), "not stripped"
from logexec import LoggingProcessPoolExecutor
from logexec._channel import _socket
from tests import lifecycle_tasks

def stripped_in_worker():
    return not hasattr(os, "memfd_create") and "MSG_CMSG_CLOEXEC" not in dir(socket)

if __name__ == "__main__":
    _socket._ABSTRACT_NAMESPACE = {abstract!r}  # macOS has no abstract names
    kept = lifecycle_tasks.keep_records()
    context = multiprocessing.get_context("spawn")
    with LoggingProcessPoolExecutor(2, mp_context=context) as executor:
        futures = [executor.submit(lifecycle_tasks.log_numbered, task, 200) for task in range(6)]
        assert [future.result(timeout=60) for future in futures] == [200] * 6
        assert executor.submit(stripped_in_worker).result(timeout=60)
        transport = executor._logexec_listener.transport
        address = executor._logexec_listener.address
    records = [record.getMessage() for record in kept]
    expected = [f"task {{task}} record {{n}}" for task in range(6) for n in range(200)]
    received = [message for message in records if message.startswith("task ")]
    assert sorted(received) == sorted(expected), (len(received), len(expected))
    assert not [message for message in records if message.startswith("logexec")], records
    print(transport, repr(address))
"""


@pytest.mark.integration
@pytest.mark.timeout(180)
def _run_stripped(
    tmp_path: Path,
    lacks: dict[str, list[str]],
    block_fcntl: bool,
    arguments: list[str],
    environment: dict[str, str],
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with ``arguments``, stripped of ``lacks`` (and of ``fcntl`` if
    ``block_fcntl``) before anything imports: through ``sitecustomize`` on its ``PYTHONPATH``,
    which spawn workers inherit."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(lacks=lacks, block_fcntl=block_fcntl))
    environment = {**environment, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run(
        [sys.executable, *arguments],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


@pytest.mark.parametrize(
    ("platform", "forced", "expected"),
    [
        ("windows-like", "", _transports.PORTABLE),
        ("macos-like", "", _transports.SOCKET),
        ("macos-like", _transports.PORTABLE, _transports.PORTABLE),
    ],
)
def test_a_stripped_interpreter_delivers_every_record(
    tmp_path: Path, platform: str, forced: str, expected: str
) -> None:
    """In an interpreter (parent and spawn workers) without the names a platform lacks,
    logexec imports, chooses the best transport that platform has, and every record of a
    real workload arrives under spawn."""
    if sys.platform == "win32":
        pytest.skip("strips a POSIX interpreter")
    lacks = WINDOWS_LACKS if platform == "windows-like" else MACOS_LACKS
    # macOS-like: a temporary directory too long for AF_UNIX, as macOS's are.
    deep = tmp_path / ("t" * 70) / ("u" * 40)
    deep.mkdir(parents=True)
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in (_transports.ENV_TRANSPORT, _transports.ENV_SHARED_MEMORY)
    }
    environment["TMPDIR"] = str(deep)
    if forced:
        environment[_transports.ENV_TRANSPORT] = forced
    # A file, not -c: spawn workers import the main module for stripped_in_worker.
    script = tmp_path / "workload.py"
    script.write_text(_WORKLOAD.format(root=str(ROOT), lacks=lacks, abstract=platform != "macos-like"))
    done = _run_stripped(tmp_path, lacks, platform == "windows-like", [str(script)], environment, timeout=150)
    assert done.returncode == 0, done.stderr[-4000:]
    transport, address = done.stdout.split(maxsplit=1)
    assert transport == expected
    if platform == "windows-like":
        assert address.startswith("('127.0.0.1',")  # no AF_UNIX, no named pipes: loopback
    else:
        assert address.startswith("'/tmp/logexec-")  # the long TMPDIR was avoided


_IMPORT_EVERYTHING = """
import importlib, os, pkgutil, socket, sys, traceback
sys.path.insert(0, {root!r})
assert not hasattr(socket, "AF_UNIX") and not hasattr(os, "fork"), "not stripped"
assert sys.modules.get("fcntl", 0) is None, "fcntl not blocked"
import logexec
package = os.path.dirname(os.path.abspath(logexec.__file__))


def walk(path, prefix):
    # Not pkgutil.walk_packages: it imports each subpackage to look inside, so one that
    # fails (an integration whose dependency the stripping breaks) hides its modules.
    for info in pkgutil.iter_modules(path, prefix):
        yield info.name
        if info.ispkg:
            yield from walk([os.path.join(path[0], info.name.rsplit(".", 1)[1])], info.name + ".")


names = sorted(walk(logexec.__path__, "logexec."))
failed, elsewhere = [], []
for name in names:
    try:
        importlib.import_module(name)
    except Exception as error:
        innermost = traceback.extract_tb(error.__traceback__)[-1].filename
        # An optional integration whose own dependency is not installed says so in an
        # ImportError of its own, raised from the one that names the package.
        cause = error
        while cause is not None and not (
            isinstance(cause, ImportError)
            and (cause.name or "").split(".")[0] in {{"dask", "distributed", "joblib"}}
        ):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            continue
        if name.startswith("logexec._interp") and sys.version_info < (3, 14):
            continue  # CPython 3.14's subinterpreters: says so in its own ImportError
        if os.path.abspath(innermost).startswith(package):
            failed.append(f"{{name}}: {{error!r}}")
        else:
            # Raised inside a third-party package that still believes it is on Linux
            # (psutil's Linux module wants AF_UNIX): an artefact of the stripping.
            elsewhere.append(f"{{name}}: {{innermost}}")
assert not failed, failed
print(len(names), len(elsewhere))
"""


@pytest.mark.timeout(120)
def test_every_module_imports_in_a_windows_like_interpreter(tmp_path: Path) -> None:
    """Nothing on any import path needs a name Windows lacks: every module of the package,
    the optional integrations included, imports in an interpreter stripped of them."""
    if sys.platform == "win32":
        pytest.skip("strips a POSIX interpreter")
    done = _run_stripped(
        tmp_path,
        WINDOWS_LACKS,
        True,
        ["-c", _IMPORT_EVERYTHING.format(root=str(ROOT))],
        dict(os.environ),
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    walked, _ = map(int, done.stdout.split())
    assert walked >= 20  # every module was walked, not an empty package
