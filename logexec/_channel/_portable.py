"""The portable transport: the same frames over ``multiprocessing.connection`` only.

For platforms without ``AF_UNIX`` descriptor passing (Windows), and on demand elsewhere
(``LOGEXEC_TRANSPORT=portable``). The parent's ``multiprocessing.connection.Listener`` listens
on a named pipe (Windows), an ``AF_UNIX`` path in a private 0700 directory (POSIX), or
loopback TCP where neither exists; a worker connects with ``Client(address, authkey=key)``.
Everything after that is the socket transport unchanged: the listener thread in ``_listener``
speaks its own challenge and hello, reads frames, answers barriers and says goodbye through
``StreamConnection``, which makes a message connection look like the stream socket it
expects. So decoding, dispatch, barriers and the failure handling are one code path.

The guarantees carry over. ``send_bytes`` returns once its bytes are written into the pipe or
socket (the kernel's buffer, or the reader), so a record whose call returned survives its
worker being killed, and a full buffer blocks the sender (backpressure). A dead worker is an
``EOFError`` on its own connection, which ``StreamConnection`` turns into a stream's EOF.

The handshake never runs on the listener thread. ``Listener.accept()`` with an ``authkey``
runs the stdlib's challenge synchronously, so a peer that connects and says nothing would
hold whoever called it. Here one "logexec-accept" thread accepts without a key (that returns
as soon as a peer connects) and hands each connection to a "logexec-handshake" thread of its
own, which runs the stdlib's challenge in both directions (``deliver_challenge`` then
``answer_challenge``, what ``accept`` itself runs) and only then queues the connection for the
listener thread and wakes it. A peer that stalls holds its own handshake thread and nothing
else: not the listener, not the accept thread, not another worker's handshake. After
``HANDSHAKE_SECONDS`` its connection is shut down where the platform lets another thread do
that (POSIX sockets), which ends the stalled read.

At most ``MAX_HANDSHAKES`` handshakes run at once (the accept thread waits for room, and the
rest wait in the kernel's backlog at no cost of ours), so silent peers cannot spend the
descriptors or threads the pool needs; a connection from another user is closed before its
handshake (``_socket.foreign_peer``); failed handshakes are reported once, then counted
(``_socket.Refusals``).

Do not "simplify" this to ``Listener(authkey=key).accept()`` on the listener thread, nor on
one accept thread: either lets one silent peer hold every worker's start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import selectors
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from multiprocessing import AuthenticationError
from multiprocessing import connection as mp_connection
from typing import Any

from .. import _compat
from . import _socket

# How long a new connection may take over the stdlib's handshake (see the module docstring).
HANDSHAKE_SECONDS = 10.0
# How many connections may be in the stdlib's handshake at once (see the module docstring).
MAX_HANDSHAKES = 64
# The listening socket's backlog: workers start together, and the stdlib's default is 1.
BACKLOG = 128
# The largest message a send makes (see StreamConnection.sendall); a typical record is far
# smaller and goes in one.
MESSAGE_LIMIT = 1 << 16
# How long close() waits for the accept thread to see it is closing.
CLOSE_SECONDS = 5.0

Address = str | tuple[str, int]
Report = Callable[..., None]


class StreamConnection:
    """A ``multiprocessing.connection.Connection`` seen as a stream socket.

    Each ``send``/``sendall`` is one message; reads return message bytes in order, keeping
    what did not fit for the next read. Only the calls ``_listener`` and ``_worker`` make.
    """

    def __init__(self, connection: mp_connection.Connection) -> None:
        self._connection = connection
        self._pending = memoryview(b"")
        self._blocking = True

    @property
    def has_pending(self) -> bool:
        """Bytes already received and not read: the selector reports these as ready."""
        return bool(self._pending)

    def fileno(self) -> int:
        return self._connection.fileno()

    def setblocking(self, flag: bool) -> None:
        self._blocking = flag

    def _next(self, blocking: bool) -> memoryview:
        """What is pending, else the next message; empty at EOF. BlockingIOError if none yet."""
        if self._pending:
            return self._pending
        while True:
            if not blocking and not self._connection.poll(0):
                raise BlockingIOError("no message waiting")
            try:
                message = self._connection.recv_bytes()
            except EOFError:
                return memoryview(b"")
            if message:  # an empty message would read as EOF: nobody sends one; skip it
                return memoryview(message)

    def poll(self) -> bool:
        """Whether a read would return at once."""
        return bool(self._pending) or self._connection.poll(0)

    def wait_readable(self, timeout: float) -> bool:
        """Whether a read would return (data or EOF) within ``timeout`` seconds."""
        return bool(self._pending) or self._connection.poll(timeout)

    def recv_into(self, buffer: memoryview, nbytes: int = 0, flags: int = 0) -> int:
        data = self._next(self._blocking)
        size = min(len(data), len(buffer))
        buffer[:size] = data[:size]
        self._pending = data[size:]
        return size

    def recvmsg_into(
        self, buffers: list[memoryview], ancbufsize: int = 0, flags: int = 0
    ) -> tuple[int, list[tuple[int, int, bytes]], int, Any]:
        # No descriptors travel here: the portable transport has no ring.
        return self.recv_into(buffers[0]), [], 0, None

    def recv(self, size: int, flags: int = 0) -> bytes:
        data = self._next(self._blocking)
        self._pending = data[size:]
        return bytes(data[:size])

    def recv_now(self, size: int) -> bytes:
        """What has arrived, up to ``size`` bytes, without waiting (BlockingIOError if none)."""
        data = self._next(False)
        self._pending = data[size:]
        return bytes(data[:size])

    def sendall(self, data: bytes | memoryview) -> None:
        # In messages of at most MESSAGE_LIMIT bytes. A worker killed while sending a huge
        # record then leaves its first pieces with the listener, which reports the cut-off
        # record as it does on a socket, instead of the stdlib discarding the unfinished
        # message unseen; and the listener holds at most one piece in memory at a time.
        for start in range(0, len(data), MESSAGE_LIMIT):
            self._connection.send_bytes(data, start, min(MESSAGE_LIMIT, len(data) - start))

    def wire(self, data: bytes | memoryview) -> bytes | None:
        """The bytes ``sendall(data)`` puts on the descriptor, for a writer that keeps count
        of what went (``_worker.Channel._write``); None on Windows, whose pipes carry whole
        messages with no descriptor to write to."""
        if sys.platform == "win32":
            return None
        view = memoryview(data)
        return b"".join(
            _compat.connection_message(view[start : start + MESSAGE_LIMIT])
            for start in range(0, len(view), MESSAGE_LIMIT)
        )

    def send(self, data: bytes | memoryview) -> int:
        self.sendall(data)
        return len(data)

    def close(self) -> None:
        self._connection.close()


class Selector(selectors.BaseSelector):
    """``selectors``' interface over ``multiprocessing.connection.wait``, which waits on pipe
    handles and sockets on Windows as well as on descriptors elsewhere."""

    def __init__(self) -> None:
        self._keys: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if fileobj in self._keys:
            raise KeyError(f"{fileobj!r} is already registered")
        key = selectors.SelectorKey(fileobj, fileobj.fileno(), events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # Bytes already taken from a connection but not yet read are invisible to wait().
        if any(getattr(fileobj, "has_pending", False) for fileobj in self._keys):
            timeout = 0
        if timeout is not None and timeout < 0:
            timeout = 0
        ready = set(mp_connection.wait(list(self._keys), timeout))
        return [
            (key, selectors.EVENT_READ)
            for fileobj, key in list(self._keys.items())
            if fileobj in ready or getattr(fileobj, "has_pending", False)
        ]

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return dict(self._keys)

    def close(self) -> None:
        self._keys.clear()


def wake_pair() -> tuple[StreamConnection, StreamConnection]:
    """A one-way pipe to wake a thread that waits in ``Selector.select``: (reader, writer)."""
    reader, writer = mp_connection.Pipe(duplex=False)
    return StreamConnection(reader), StreamConnection(writer)


def new_address(unix_address: Callable[[], tuple[str | None, str]]) -> tuple[str | None, Address]:
    """(a private directory to remove at the end or None, the address to listen on).

    A named pipe with a random name on Windows; where ``AF_UNIX`` exists, the path (or
    Linux abstract name) ``unix_address`` makes, as the socket transport uses; otherwise
    loopback TCP on a port the system picks. Not ``Listener``'s own default: that would put
    the socket in the stdlib's shared temporary directory with no fallback for a path too
    long for ``AF_UNIX`` (macOS's long ``TMPDIR`` and its 104-byte limit).
    """
    if sys.platform == "win32":
        return None, rf"\\.\pipe\logexec-{os.getpid()}-{secrets.token_hex(16)}"
    if hasattr(socket, "AF_UNIX"):
        return unix_address()
    return None, ("127.0.0.1", 0)


class Server:
    """The listening end: accepts on one thread, authenticates on one thread per peer, and
    hands authenticated connections to the listener thread through ``accept()``.

    Registered in the listener's selector like a listening socket: it is readable (its
    notification pipe) when ``accept()`` has a connection to give.
    """

    def __init__(
        self,
        address: Address,
        key: bytes,
        report: Report,
        refusals: _socket.Refusals | None = None,
        uid: int = -1,
    ) -> None:
        self._key = key
        self._report = report
        self._refusals = refusals if refusals is not None else _socket.Refusals(report)
        # Whose connections are heard at all (see _socket.foreign_peer); -1: not checked.
        self._uid = uid
        self._pid = os.getpid()
        self._listener = mp_connection.Listener(address, backlog=BACKLOG)
        # The real address where the system picked it (a TCP port); otherwise ours as given
        # (the stdlib reports a Linux abstract name as bytes).
        self.address: Address = address if isinstance(address, str) else self._listener.address
        self._ready: list[StreamConnection] = []
        self._handshaking: set[mp_connection.Connection] = set()
        self._lock = threading.Lock()
        # Signalled when a handshake ends or the server closes: the accept thread waits on
        # it for room (MAX_HANDSHAKES).
        self._room = threading.Condition(self._lock)
        self._closing = False
        self._notify_reader, self._notify_writer = wake_pair()
        self._thread: threading.Thread | None = None

    def fileno(self) -> int:
        return self._notify_reader.fileno()

    @property
    def handshaking(self) -> bool:
        """Whether a peer is in the stdlib's handshake, or past it and not yet taken by
        ``accept()`` (its notification may still be on the way): the final drain waits."""
        return bool(self._handshaking or self._ready)

    def start(self) -> None:
        """Start the accept thread; idempotent. Under fork, only after the workers forked."""
        with self._lock:
            if self._thread is not None or self._closing:
                return
            thread = threading.Thread(target=self._accept_loop, name="logexec-accept", daemon=True)
            thread.start()
            self._thread = thread

    def settle(self, timeout: float) -> None:
        """Wait (up to ``timeout``) until every connection made so far has been accepted.

        For the final drain: a process forked by a task may have connected a moment ago, and
        its connection may still wait in the backlog, which only the accept thread sees.
        Connections are accepted in order, so once a connection of our own made now has
        passed the handshake, every earlier one is at least in its handshake (``handshaking``).
        A helper thread makes it, so that the caller waits no longer than ``timeout``.
        """
        knocked = threading.Event()

        def knock() -> None:
            try:
                mp_connection.Client(self.address, authkey=self._key).close()
            except BaseException:
                pass  # closing meanwhile; the drain goes on without this look
            finally:
                knocked.set()

        try:
            threading.Thread(target=knock, name="logexec-settle", daemon=True).start()
        except RuntimeError:
            return  # no thread to be had: drain what is known
        knocked.wait(timeout)

    def accept(self) -> tuple[StreamConnection, None]:
        """An authenticated connection; ``BlockingIOError`` when none is waiting."""
        # Drain the notifications first, then look: a connection queued after the look
        # notifies again, so none is left waiting unseen.
        with contextlib.suppress(OSError, EOFError):
            while self._notify_reader.poll():
                self._notify_reader.recv(64)
        with self._lock:
            if not self._ready:
                raise BlockingIOError("no authenticated connection waiting")
            stream = self._ready.pop(0)
            more = bool(self._ready)
        if more:
            # Readable while any connection waits, as a listening socket is while its backlog
            # holds one. The drain above took the others' notifications, and the listener may
            # stop after this one (held at _accept.MAX_HANDSHAKES) and look again only when
            # the selector says so: without this, they would wait unseen for ever, and their
            # workers with them. Only the listener thread drains, so the look is no race.
            with contextlib.suppress(OSError):
                if not self._notify_reader.poll():
                    self._notify_writer.send(b"\0")
        return stream, None

    def _accept_loop(self) -> None:
        while not self._closing:
            with self._room:
                while len(self._handshaking) >= MAX_HANDSHAKES and not self._closing:
                    self._room.wait()
            try:
                connection = self._listener.accept()
            except BaseException as error:
                if self._closing:
                    return
                self._report(
                    logging.ERROR, "logexec: the log listener could not accept a connection: %s", error
                )
                # Out of descriptors, say: the peer waits in the backlog; do not spin.
                threading.Event().wait(0.1)
                continue
            if self._uid >= 0 and _foreign(connection, self._uid):
                # Another user's: closed unheard, only counted (see _socket.Refusals).
                connection.close()
                self._refusals.count_foreign()
                continue
            with self._lock:
                if self._closing:
                    connection.close()
                    return
                self._handshaking.add(connection)
            try:
                threading.Thread(
                    target=self._handshake, args=(connection,), name="logexec-handshake", daemon=True
                ).start()
            except BaseException as error:
                with self._lock:
                    self._handshaking.discard(connection)
                connection.close()
                self._report(logging.ERROR, "logexec: could not start a handshake thread: %s", error)

    def _handshake(self, connection: mp_connection.Connection) -> None:
        expired = threading.Event()

        def expire() -> None:
            expired.set()  # before the shutdown wakes the handshake: it must know why
            _shut_down(connection)

        deadline = threading.Timer(HANDSHAKE_SECONDS, expire)
        deadline.daemon = True
        deadline.start()
        try:
            # What Listener.accept() runs with an authkey, in the same order.
            mp_connection.deliver_challenge(connection, self._key)
            mp_connection.answer_challenge(connection, self._key)
        except AuthenticationError:
            self._refusals.refused("failed authentication")
            self._give_up(connection)
            return
        except BaseException:
            # The peer hung up, or stalled past the deadline: nothing of ours was at stake.
            if expired.is_set():
                self._refusals.refused(f"did not complete the handshake within {HANDSHAKE_SECONDS:.0f} s")
            self._give_up(connection)
            return
        finally:
            deadline.cancel()
        with self._lock:
            self._handshaking.discard(connection)
            self._room.notify_all()
            if self._closing:
                connection.close()
                return
            self._ready.append(StreamConnection(connection))
        with contextlib.suppress(OSError):
            self._notify_writer.send(b"\0")

    def _give_up(self, connection: mp_connection.Connection) -> None:
        with self._lock:
            self._handshaking.discard(connection)
            self._room.notify_all()
        with contextlib.suppress(OSError):
            connection.close()

    def close(self) -> None:
        """Stop accepting; close everything not yet handed over. Idempotent."""
        if os.getpid() != self._pid:
            self._abandon()  # a forked child: close our copies, touch nothing of the parent's
            return
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._room.notify_all()
            thread, self._thread = self._thread, None
            handshaking, self._handshaking = list(self._handshaking), set()
            ready, self._ready = self._ready, []
        if thread is not None and thread.is_alive():
            # accept() does not return when the listener is closed under it (POSIX): a
            # connection of our own ends the wait.
            with contextlib.suppress(BaseException):
                mp_connection.Client(self.address).close()
            thread.join(CLOSE_SECONDS)
        for connection in handshaking:
            _shut_down(connection)
        for stream in ready:
            with contextlib.suppress(OSError):
                stream.close()
        with contextlib.suppress(OSError):
            self._listener.close()
        for end in (self._notify_reader, self._notify_writer):
            with contextlib.suppress(OSError):
                end.close()

    def _abandon(self) -> None:
        # Closing the stdlib listener in a child unlinks nothing: its finalizer checks the pid.
        with contextlib.suppress(BaseException):
            self._listener.close()
        for stream in (self._notify_reader, self._notify_writer, *self._ready):
            with contextlib.suppress(BaseException):
                stream.close()


def _foreign(connection: mp_connection.Connection, uid: int) -> bool:
    """Whether an accepted connection's peer is another user (see ``_socket.foreign_peer``)."""
    try:
        sock = socket.socket(fileno=os.dup(connection.fileno()))
    except (OSError, ValueError):
        return True  # not told: not trusted
    try:
        return _socket.foreign_peer(sock, uid)
    finally:
        sock.close()


def _shut_down(connection: mp_connection.Connection) -> None:
    """End a read another thread is blocked in, where the platform allows (POSIX sockets).

    ``shutdown`` rather than ``close``: closing a descriptor another thread reads from does
    not wake it, and its number could be reused under it.
    """
    if sys.platform == "win32":
        # A pipe message arrives whole, so a peer cannot stall halfway through one; a peer
        # that sends nothing holds its own handshake thread until it hangs up.
        return
    with contextlib.suppress(OSError, ValueError):
        sock = socket.socket(fileno=os.dup(connection.fileno()))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


def connect(address: Address, key: bytes) -> StreamConnection:
    """The worker's end: connect and pass the stdlib's handshake (``AuthenticationError``)."""
    return StreamConnection(mp_connection.Client(address, authkey=key))
