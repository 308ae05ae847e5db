"""Which transport carries the records here: probes for what this platform has, and the switch.

Three transports, best first; each worker uses the one its parent chose:

* ``ring``: frames in a shared-memory ring per worker beside an ``AF_UNIX`` connection
  (``_ring``). Needs ``os.memfd_create``, ``fcntl`` (to seal the ring), descriptor passing
  (``socket.send_fds``, ``SCM_RIGHTS``) and x86-64's memory ordering: x86-64 Linux.
* ``socket``: frames on the ``AF_UNIX`` connection itself (``_listener``, ``_worker``). Needs
  ``socket.AF_UNIX`` with ``recvmsg_into`` and ``MSG_DONTWAIT``: every POSIX system.
* ``portable``: frames on a ``multiprocessing.connection`` connection (``_portable``): named
  pipes on Windows, ``AF_UNIX`` where it exists, loopback TCP otherwise, always behind the
  stdlib's ``authkey`` handshake. Needs nothing beyond what CPython has everywhere.

Every probe looks for a name at the moment of asking, never at import: a module that needs a
POSIX-only name may be imported on any platform, and a test can take the name away.

``LOGEXEC_TRANSPORT=ring|socket|portable`` forces one (for CI, which runs the channel's tests
through each, and for anyone who wants a slower but simpler path); a transport this platform
lacks falls back to the best one below it that it has. ``LOGEXEC_SHARED_MEMORY=0``, the
older switch, still means ``socket``.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from collections.abc import Callable

RING = "ring"
SOCKET = "socket"
PORTABLE = "portable"
# Best first: a forced transport the platform lacks falls back along this order.
ORDER = (RING, SOCKET, PORTABLE)

ENV_TRANSPORT = "LOGEXEC_TRANSPORT"
# The older switch: "0" turns the ring off, which is the socket transport.
ENV_SHARED_MEMORY = "LOGEXEC_SHARED_MEMORY"

# 64-bit only: on 32-bit x86 an 8-byte counter may be written as two halves (see _ring).
_X86_64 = frozenset({"x86_64", "amd64"})


def has_fcntl() -> bool:
    try:
        import fcntl  # noqa: F401
    except ImportError:
        return False
    return True


def socket_available() -> bool:
    """Whether the ``AF_UNIX`` connection of the socket transport can be used here."""
    return (
        hasattr(socket, "AF_UNIX")
        and hasattr(socket.socket, "recvmsg_into")
        and hasattr(socket, "CMSG_SPACE")
        and hasattr(socket, "MSG_DONTWAIT")
    )


def ring_available() -> bool:
    """Whether the shared-memory ring can be used here (see ``_ring``'s "Ordering")."""
    return (
        sys.platform.startswith("linux")
        and hasattr(os, "memfd_create")
        and platform.machine().lower() in _X86_64
        and socket_available()
        and hasattr(socket, "send_fds")
        and hasattr(socket, "SCM_RIGHTS")
        and hasattr(socket, "MSG_PEEK")
        and has_fcntl()
    )


def portable_available() -> bool:
    return True


_AVAILABLE: dict[str, Callable[[], bool]] = {
    RING: ring_available,
    SOCKET: socket_available,
    PORTABLE: portable_available,
}


def requested() -> str:
    """The transport the environment asks for, or "" for the best available.

    Raises ``ValueError`` for a value of ``LOGEXEC_TRANSPORT`` that names no transport, or
    of ``LOGEXEC_SHARED_MEMORY`` that is not a boolean spelling.
    """
    value = os.environ.get(ENV_TRANSPORT, "").strip().lower()
    if value:
        if value not in ORDER:
            raise ValueError(f"{ENV_TRANSPORT} must be one of {', '.join(ORDER)} (or unset), got {value!r}")
        return value
    if not env_flag(ENV_SHARED_MEMORY, default=True):
        return SOCKET
    return ""


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def env_flag(name: str, *, default: bool) -> bool:
    """A boolean environment variable: unset or empty gives ``default``.

    Raises ``ValueError`` for a value that is none of 1/0, true/false, yes/no, on/off
    (any case): a misspelt switch silently ignored would look like a switch that works.
    """
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"{name} must be one of 1/0, true/false, yes/no, on/off (any case), got {os.environ[name]!r}"
    )


def choose() -> str:
    """The transport a pool started now uses: the requested one, or the best below it."""
    wanted = requested()
    start = ORDER.index(wanted) if wanted else 0
    for name in ORDER[start:]:
        if _AVAILABLE[name]():
            return name
    return PORTABLE  # pragma: no cover - the portable transport is always available
