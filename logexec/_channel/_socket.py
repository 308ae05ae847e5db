"""The socket transport's address: an ``AF_UNIX`` path in a private directory, or an abstract name.

The socket transport (``_transports.SOCKET``, and the ring's, which rides beside it) is an
``AF_UNIX`` stream connection per worker: the listener binds it (``_listener``), accepts and
checks each worker's hello with any ring descriptor (``_accept``), and the worker connects
(``_worker``). What is the socket's own is where it lives, here.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import sys
import tempfile

# AF_UNIX paths are limited to 108 bytes on Linux and 104 on macOS, terminator included.
_UNIX_PATH_LIMIT = 100
_ABSTRACT_NAMESPACE = sys.platform.startswith("linux")


def _new_address() -> tuple[str | None, str]:
    """A private directory and the socket's path in it, or (None, an abstract name).

    ``mkdtemp`` makes the directory 0700: only this user can reach the socket. Where that
    path is too long for ``AF_UNIX`` (a long ``TMPDIR``), Linux's abstract namespace needs no
    path at all; it has no permissions, but no peer gets past the handshake without the key.
    Elsewhere (macOS) a directory in ``/tmp`` is short enough.
    """
    directory = tempfile.mkdtemp(prefix="logexec-")
    address = os.path.join(directory, "listener")
    if len(os.fsencode(address)) < _UNIX_PATH_LIMIT:
        return directory, address
    shutil.rmtree(directory, ignore_errors=True)
    if _ABSTRACT_NAMESPACE:
        return None, f"\0logexec-{os.getpid()}-{secrets.token_hex(16)}"
    directory = tempfile.mkdtemp(prefix="logexec-", dir="/tmp")
    address = os.path.join(directory, "listener")
    if len(os.fsencode(address)) < _UNIX_PATH_LIMIT:
        return directory, address
    shutil.rmtree(directory, ignore_errors=True)
    raise OSError(
        errno.ENAMETOOLONG,
        f"logexec found no directory short enough for its AF_UNIX socket (tried the temporary "
        f"directory {tempfile.gettempdir()!r} and /tmp); set TMPDIR to a shorter path",
    )
