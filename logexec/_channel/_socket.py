"""The socket transport's address, and who may knock: an ``AF_UNIX`` path in a private directory.

The socket transport (``_transports.SOCKET``, and the ring's, which rides beside it) is an
``AF_UNIX`` stream connection per worker: the listener binds it (``_listener``), accepts and
checks each worker's hello with any ring descriptor (``_accept``), and the worker connects
(``_worker``). What is the socket's own is where it lives and who may reach it, here; the
portable transport's ``AF_UNIX`` address is made here too.

Other users are kept out twice. The socket lives in a directory of ours, mode 0700, so no
other user can reach it; where ``TMPDIR`` is too long for an ``AF_UNIX`` path, a short
directory elsewhere (``/tmp``, ...) is made instead, never a name in Linux's abstract
namespace, which has no permissions and is listed in ``/proc/net/unix`` for anyone to dial.
Only where no directory fits at all is an abstract name the last resort; there, and
everywhere the platform tells (``SO_PEERCRED``), a connection from another user is closed
before anything is read from it or logged about it (``foreign_peer``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import socket
import stat
import struct
import sys
import tempfile
import threading
from collections.abc import Callable

# AF_UNIX paths are limited to 108 bytes on Linux and 104 on macOS, terminator included.
_UNIX_PATH_LIMIT = 100
_ABSTRACT_NAMESPACE = sys.platform.startswith("linux")
# Where a private directory is tried when the temporary directory's path is too long.
_SHORT_DIRECTORIES = ("/tmp", "/var/tmp", "/dev/shm")
# struct ucred: pid, uid, gid.
_UCRED = struct.Struct("3i")


def _candidates() -> list[str]:
    """The directories to make a private directory in, the user's choice first."""
    found = [tempfile.gettempdir()]
    for directory in _SHORT_DIRECTORIES:
        if directory not in found and os.path.isdir(directory):
            found.append(directory)
    return found


def _private_directory(parent: str) -> str | None:
    """A new directory of ours in ``parent``, mode 0700; None if none can be made there."""
    try:
        directory = tempfile.mkdtemp(prefix="logexec-", dir=parent)
        status = os.lstat(directory)
    except OSError:
        return None
    # mkdtemp made it, so it is ours and 0700; checked all the same, since everything the
    # socket's privacy rests on is this directory.
    if (
        status.st_uid != os.geteuid()
        or stat.S_IMODE(status.st_mode) & 0o077
        or not stat.S_ISDIR(status.st_mode)
    ):
        return None  # pragma: no cover - mkdtemp's contract
    return directory


def _new_address() -> tuple[str | None, str]:
    """A private directory and the socket's path in it, or (None, an abstract name).

    The user's temporary directory first; where that path is too long for ``AF_UNIX`` (a
    long ``TMPDIR``), a private directory in the first short one that fits. An abstract
    name (Linux) only when none does: other users can dial it, and ``foreign_peer`` is all
    that keeps them from being heard.
    """
    for parent in _candidates():
        directory = _private_directory(parent)
        if directory is None:
            continue
        address = os.path.join(directory, "listener")
        if len(os.fsencode(address)) < _UNIX_PATH_LIMIT:
            return directory, address
        with contextlib.suppress(OSError):
            os.rmdir(directory)
    if _ABSTRACT_NAMESPACE:
        return None, f"\0logexec-{os.getpid()}-{secrets.token_hex(16)}"
    raise OSError(
        errno.ENAMETOOLONG,
        f"logexec found no directory short enough for its AF_UNIX socket (tried "
        f"{', '.join(map(repr, _candidates()))}); set TMPDIR to a shorter path",
    )


def peer_uid(sock: socket.socket) -> int | None:
    """The effective uid of the process that connected ``sock``; None where the platform
    does not tell (no ``SO_PEERCRED``: there the private directory is the guard)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size)
    except OSError:
        return -1  # not told: not trusted
    uid: int = _UCRED.unpack(data)[1]
    return uid


def foreign_peer(sock: socket.socket, own_uid: int) -> bool:
    """Whether ``sock``'s peer is another user (not us, not root): close it unheard.

    Root is let in: it can reach the directory too, and could read our memory anyway.
    """
    unix = getattr(socket, "AF_UNIX", None)
    if own_uid < 0 or unix is None or sock.family != unix:
        return False  # loopback TCP (no AF_UNIX): no uid to ask; the key is the guard
    uid = peer_uid(sock)
    return uid is not None and uid not in (own_uid, 0)


class Refusals:
    """Connections refused at the door: the first of each kind reported, the rest counted.

    One report per peer would let anyone who can connect fill the parent's log; the count
    comes in one report when the listener stops (``summarize``). Peers of another user are
    only counted (``foreign``), never reported: no other user can make the listener log.
    Thread-safe (the portable transport refuses on its handshake threads).
    """

    def __init__(self, report: Callable[..., None]) -> None:
        self._report = report
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.foreign = 0

    def count_foreign(self) -> None:
        with self._lock:
            self.foreign += 1

    def refused(self, why: str) -> None:
        """A connection was closed for ``why`` (how it failed, e.g. "failed authentication")."""
        with self._lock:
            count = self._counts[why] = self._counts.get(why, 0) + 1
        if count == 1:
            self._report(
                logging.WARNING,
                "logexec: closed a connection to the log listener that %s (only the executor's own "
                "workers hold the key); any more such are counted and reported when it stops",
                why,
            )

    def count(self, why: str) -> int:
        """How many were refused for a reason that starts with ``why``."""
        with self._lock:
            return sum(count for reason, count in self._counts.items() if reason.startswith(why))

    def summarize(self) -> None:
        """Report the counts of every kind refused more than once."""
        with self._lock:
            counts = sorted(self._counts.items())
        for why, count in counts:
            if count > 1:
                self._report(
                    logging.WARNING,
                    "logexec: closed %d connections in all to the log listener that %s",
                    count,
                    why,
                )
