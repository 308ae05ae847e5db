"""The listener's door: accepting a connection, the handshake, and the descriptor reserve.

A connection from another user is closed before anything is read from it or said about it
(``_socket.foreign_peer``). Any other new connection is greeted with a random challenge; its
hello proves the key (an HMAC answer), names the worker's pid and says how its frames will
travel: on the connection, or through a shared-memory ring whose descriptor rides with the
hello (``_ring``). A peer that
does not complete the handshake in time is closed. Out of descriptors, the listener spends
a descriptor it holds in reserve to accept the waiting worker and tell it why it is refused,
rather than leave it hanging; a worker whose ring it cannot take is told to use its
connection instead.

Peers that fail the handshake are reported once and then counted (``_socket.Refusals``),
and at most ``MAX_HANDSHAKES`` connections are held in their handshake at a time: the rest
wait in the kernel's backlog, where they cost this process no descriptor. So peers that
connect and say nothing cannot spend the descriptors the pool's workers need.
"""

from __future__ import annotations

import array
import contextlib
import errno
import hmac
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable

from . import _framing, _ring, _socket
from ._guard import _ACCEPT, ListenerCore, _close_fds, _Connection, _Stream

# How long a new connection may take to prove it holds the key. A real worker answers at
# once; the deadline is generous for a loaded machine, and bounds what a peer that dribbles
# its hello can hold.
HANDSHAKE_SECONDS = 10.0
# How many connections may be in their handshake at once (see the module docstring). A real
# worker's takes a round trip, so a pool of any size starts through this many at a time.
MAX_HANDSHAKES = 64
_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
# Room for one descriptor in the ancillary data of a hello. No CMSG_SPACE on Windows, where
# the portable transport carries no descriptor.
_FDS_SPACE = socket.CMSG_SPACE(array.array("i").itemsize) if hasattr(socket, "CMSG_SPACE") else 0
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


class Accepting(ListenerCore):
    """Accepts connections and checks their hellos: the listener's first part."""

    # The read loop's (_read.Reading): what to do with a connection that ended.
    _hang_up: Callable[[selectors.BaseSelector, _Connection], None]

    def _expire_handshakes(self, selector: selectors.BaseSelector) -> float:
        """Close connections past the handshake deadline; return the time to the next one."""
        now = time.monotonic()
        soonest = HANDSHAKE_SECONDS
        for connection in list(self._connections):
            if connection.pid:
                continue
            remaining = connection.accepted + HANDSHAKE_SECONDS - now
            if remaining <= 0:
                self._refusals.refused(f"did not complete the handshake within {HANDSHAKE_SECONDS:.0f} s")
                self._forget(selector, connection)
            else:
                soonest = min(soonest, remaining)
        return soonest

    def _handshakes(self) -> int:
        return sum(1 for connection in self._connections if not connection.pid)

    def _hold_accepting(self, selector: selectors.BaseSelector) -> None:
        """Leave new connections in the backlog until a handshake under way ends."""
        self._accept_held = True
        self._watch_server(selector)

    def _update_hold(self, selector: selectors.BaseSelector) -> None:
        """Accept again once there is room for another handshake (each pass of the loop)."""
        if self._accept_held and self._handshakes() < MAX_HANDSHAKES:
            self._accept_held = False
            self._watch_server(selector)

    def _watch_server(self, selector: selectors.BaseSelector) -> None:
        """Watch the listening socket unless accepting is paused or held."""
        server = self._server
        if server is None:
            return
        watched = server in selector.get_map()
        wanted = not self._accept_paused_until and not self._accept_held
        if wanted and not watched:
            selector.register(server, selectors.EVENT_READ, _ACCEPT)
        elif watched and not wanted:
            selector.unregister(server)

    def _guarded_accept(self, selector: selectors.BaseSelector) -> None:
        try:
            self._accept(selector)
        except BaseException as error:
            self._report_error("logexec: the log listener could not accept a connection", error)

    def _accept(self, selector: selectors.BaseSelector) -> None:
        if self._server is None or self._accept_paused_until or self._accept_held:
            return
        while True:
            if self._handshakes() >= MAX_HANDSHAKES:
                self._hold_accepting(selector)
                return
            try:
                sock, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno not in _NO_DESCRIPTORS:
                    raise
                self._refuse_for_descriptors(selector, error)
                return
            if isinstance(sock, socket.socket) and _socket.foreign_peer(sock, self._uid):
                # Another user's (only an abstract name is reachable by one): nothing read,
                # nothing said, nothing logged; only counted.
                sock.close()
                self._refusals.count_foreign()
                continue
            sock.setblocking(True)
            challenge = os.urandom(_framing.CHALLENGE_SIZE)
            if not self._greet(sock, challenge):
                # Closed, not dropped: an open socket (a report's traceback may hold it) would
                # leave the worker waiting for its greeting for ever, and the pool's shutdown
                # with it. Hung up on, the worker connects again (_worker.CONNECT_ATTEMPTS).
                sock.close()
                continue
            connection = _Connection(sock, challenge)
            self._connections.append(connection)
            selector.register(sock, selectors.EVENT_READ, connection)

    def _greet(self, sock: _Stream, challenge: bytes) -> bool:
        """Send the greeting and challenge; False if the connection must be closed instead.

        An unexpected error is reported and the send tried once more, as a barrier's answer
        is: a worker whose greeting is lost would wait for it for ever.
        """
        for attempt in range(2):
            try:
                sock.sendall(_framing.GREETING + challenge)
            except OSError:
                return False  # the peer is gone
            except BaseException as error:  # see "Failure handling" above
                self._report_error(
                    "logexec: a new connection could not be greeted"
                    + ("; closed it" if attempt else "; trying again"),
                    error,
                )
            else:
                return True
        return False

    def _refuse_for_descriptors(self, selector: selectors.BaseSelector, error: OSError) -> None:
        """Out of descriptors: tell the waiting worker why, rather than leave it hanging."""
        if not self._told_descriptors:
            self._told_descriptors = True
            self._report(
                logging.ERROR,
                "logexec: this process has run out of file descriptors (%s), so a worker could "
                "not connect to the log listener and fails to start; each worker needs one "
                "descriptor here: raise the limit (ulimit -n) or use fewer workers",
                error.strerror,
            )
        if self._reserve_fd is not None and self._server is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None
            try:
                sock, _ = self._server.accept()
            except OSError:
                pass
            else:
                with contextlib.suppress(OSError):
                    reason = f"the parent process has run out of file descriptors ({error.strerror})"
                    sock.send(_framing.REFUSED + reason.encode())
                sock.close()
            self._reserve_fd = _open_reserve()
            return
        # No reserve to spend: stop looking at the backlog for a moment rather than spin.
        self._accept_paused_until = time.monotonic() + 0.1
        self._watch_server(selector)

    def _resume_accepting(self, selector: selectors.BaseSelector) -> None:
        self._accept_paused_until = 0.0
        if self._reserve_fd is None:
            self._reserve_fd = _open_reserve()
        self._watch_server(selector)

    def _receive_hello(self, connection: _Connection, target: memoryview) -> int:
        # recvmsg, not recv: a descriptor rides with the hello, and recv would drop it. Close
        # on exec, so that a worker spawned meanwhile does not inherit another one's ring.
        received, ancillary, _, _ = connection.socket.recvmsg_into([target], _FDS_SPACE, _CLOEXEC)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                connection.fds.extend(fds)
        return received

    def _authenticate(self, selector: selectors.BaseSelector, connection: _Connection, end: int) -> int:
        """Check the worker's proof; return where its frames start (0: not yet, or refused).

        Nothing is committed (pid, ring) until the answer is sent, so that an unexpected
        failure on the way leaves a hello that can be checked again.
        """
        if end < _framing.HELLO_SIZE:
            return 0
        view = connection.view
        proof = bytes(view[: _framing.DIGEST_SIZE])
        expected = _framing.answer_challenge(self._key, connection.challenge)
        if not hmac.compare_digest(proof, expected):
            self._refuse(selector, connection)
            return 0
        pid, via = _framing.HELLO_TAIL.unpack_from(view, _framing.DIGEST_SIZE)
        fds, connection.fds = connection.fds, []
        ring: _ring.RingReader | None = None
        if via == _framing.VIA_RING:
            problem, ring = self._map_ring(pid, fds)
        else:
            _close_fds(fds)
            problem = "" if via == _framing.VIA_CONNECTION and not fds else f"unknown transport {via}"
        if problem:
            connection.pid = pid or -1
            self._fail(selector, connection, f"its hello was refused: {problem}")
            return 0
        try:
            connection.socket.sendall(_framing.USE_CONNECTION if ring is None else _framing.USE_RING)
        except BaseException as error:
            if ring is not None:
                ring.close()
            if isinstance(error, OSError):
                self._hang_up(selector, connection)  # it died before it heard the answer
                return 0
            raise
        connection.pid = pid or -1  # never 0 once authenticated
        if ring is not None:
            connection.ring = ring
            ring.set_awake_until(self._promised)
            self._rings.append(connection)
        return _framing.HELLO_SIZE

    def _map_ring(self, pid: int, fds: list[int]) -> tuple[str, _ring.RingReader | None]:
        """Map the ring that came with a hello: (what is wrong with it, the ring or None).

        No descriptor at all is what a parent out of descriptors sees (the kernel drops it),
        and a mapping can fail for want of memory: the worker then uses its connection.
        """
        try:
            if not fds:
                self._tell_short_of_descriptors(pid, "its ring's descriptor could not be received")
                return "", None
            if len(fds) != 1:
                return f"a ring hello came with {len(fds)} descriptors", None
            try:
                return "", _ring.RingReader(fds[0])
            except _ring.RingError as error:
                return f"its shared-memory ring is unusable: {error}", None
            except (OSError, ValueError) as error:
                self._tell_short_of_descriptors(pid, f"its ring could not be mapped ({error})")
                return "", None
        finally:
            # Closed before any answer or hang-up: the peer may look at once. The mapping
            # holds no descriptor (see _ring._SharedMapping).
            _close_fds(fds)

    def _tell_short_of_descriptors(self, pid: int, what: str) -> None:
        self._report(
            logging.WARNING,
            "logexec: worker %d: %s; it sends its records through its connection instead "
            "(slower, nothing lost)",
            pid,
            what,
        )

    def _refuse(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        self._refusals.refused("failed authentication")
        self._forget(selector, connection)


def _open_reserve() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
