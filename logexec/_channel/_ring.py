"""A ring of shared memory per worker: how a record leaves the worker without a system call.

A worker creates the ring (an anonymous, sealed ``memfd``), maps it, and hands the file
descriptor to the parent with its hello on the authenticated connection. From then on a
log call copies its frame into the ring and publishes the new end; the parent's listener
copies the bytes out. The pages belong to the kernel, not to the worker: once a call has
published its frame, a ``SIGKILL`` a moment later cannot take the frame away, because the
parent's mapping keeps the pages alive. That is the same promise a socket write gives,
for a memory copy instead of a system call (and the cache and TLB churn that follows one),
which is most of what a log call costs beyond making the record.

The connection stays, for what shared memory cannot do: authenticate, wake a listener that
sleeps, answer barriers, and report a worker's death (EOF).

Ordering. The writer copies the frame, then stores the new end (one aligned 8-byte store);
the reader loads the end, then copies. That is correct where an aligned 8-byte access is
atomic and stores are not reordered with stores nor loads with loads, which x86-64
guarantees and Python cannot otherwise ask for; so the ring is used only on x86-64 Linux,
and everywhere else frames go through the connection itself (``enabled()``). The one race
x86-64 allows, between the writer's store of the end and its load of the listener's "awake
until", can at worst cost a missed wake-up; the listener never sleeps longer than
``SAFETY_WAKE_SECONDS`` while it holds a ring, so that costs latency, never a record.
Barriers and a worker's exit always wake the listener through the connection.

Waking. The listener publishes in each ring until when it will look again without being
woken ("awake until", a ``CLOCK_MONOTONIC`` time, system-wide; 0 when it sleeps). A writer
past that time wakes it with a byte on the connection. So a listener that dies stops
renewing, the first write after its last promise runs out tries to wake it, and the worker
learns that its parent is gone, as it would from a failed socket write, instead of filling
a ring nobody reads.

Layout: three 8-byte counters, each on its own cache line (the writer's end, the reader's
start, "awake until"), then ``CAPACITY`` bytes of data. The first two only grow; a
position in the data is a counter modulo ``CAPACITY``.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import stat
import sys
import time
from collections.abc import Callable
from typing import Any

from . import _transports

try:
    import fcntl
except ImportError:  # Windows: no ring there (see _transports), but this module still imports
    fcntl = None  # type: ignore[assignment]

# Bytes of frames a ring holds; a power of two. About 800 typical records: enough that a
# worker rarely waits for a busy listener, small enough that the drain after a flood stays
# short (a full ring is what a slow parent handler still has to write after the last call).
CAPACITY = 1 << 17
_MASK = CAPACITY - 1
CONTROL_SIZE = 192
SIZE = CONTROL_SIZE + CAPACITY
# Indices of the counters in the control area, read as unsigned 64-bit integers.
_END = 0
_START = 8
_AWAKE_UNTIL = 16

# The longest the listener sleeps while it holds a ring (see "Ordering" above).
SAFETY_WAKE_SECONDS = 1.0
# How a writer waits for room in a full ring: short sleeps that grow to this.
_FULL_WAIT_FIRST = 0.00005
_FULL_WAIT_MAX = 0.002

_monotonic_ns = time.monotonic_ns

# The older switch: "0" turns the ring off (see _transports for LOGEXEC_TRANSPORT).
ENV_SWITCH = _transports.ENV_SHARED_MEMORY


def enabled() -> bool:
    """Whether a pool started now uses rings (see "Ordering" above, and ``_transports``)."""
    return _transports.choose() == _transports.RING


def _counters(mapping: mmap.mmap | memoryview) -> memoryview:
    # A native "Q" view: each item is read and written as one aligned 8-byte access.
    return memoryview(mapping)[:CONTROL_SIZE].cast("Q")


class RingWriter:
    """The worker's end. Not thread-safe: the channel's lock serialises writers.

    ``wake`` wakes the listener (a byte on the connection); ``check`` raises if the parent
    is gone. Either may raise ``OSError``, which ``write`` and ``write_waiting`` pass on.
    """

    def __init__(self, wake: Callable[[], None], check: Callable[[], None]) -> None:
        self._wake = wake
        self._check = check
        flags = os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 0)
        fd = os.memfd_create("logexec-ring", flags)
        try:
            os.ftruncate(fd, SIZE)
            _seal(fd)
            self._mapping = mmap.mmap(fd, SIZE)
        except BaseException:
            os.close(fd)
            raise
        self.fd: int | None = fd
        self._counters = _counters(self._mapping)
        self._data = memoryview(self._mapping)[CONTROL_SIZE:]
        # Bytes copied in so far (only grows). Moved past a piece only once the piece is
        # copied, in one store, so that a signal handler's exception landing anywhere in a
        # write leaves it true: the channel reads it to tell how much of an interrupted
        # frame went in, and to finish the frame from there.
        self.end = 0
        # Free bytes as of the last look at the reader's start: re-read only when short.
        # Never more than the truth at any point a signal handler may interrupt (lowered
        # before a write, raised only from the reader's start): a stale count that is too
        # high would overwrite bytes the listener has not read.
        self._free = CAPACITY

    def close_fd(self) -> None:
        """Close our descriptor once the parent has its own (the mapping stays)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def write(self, frame: bytes) -> bool:
        """Copy ``frame`` in, publish it, and wake the listener if it needs it.

        False, with nothing written, when the frame does not fit now: see ``write_waiting``.
        """
        size = len(frame)
        if size > self._free:
            self._free = self._room()
            if size > self._free:
                return False
        self._free -= size
        self._publish(frame)
        if self._counters[_AWAKE_UNTIL] < _monotonic_ns():
            self._wake()
        return True

    def _room(self) -> int:
        return CAPACITY - (self.end - self._counters[_START])

    def _publish(self, data: bytes | memoryview) -> None:
        """Copy ``data`` (which fits) in after the end, then move the end past it."""
        size = len(data)
        position = self.end & _MASK
        stop = position + size
        if stop <= CAPACITY:
            self._data[position:stop] = data
        else:
            first = CAPACITY - position
            self._data[position:] = data[:first]
            self._data[: size - first] = data[first:]
        self.end += size
        # Also publishes a piece whose own publication an exception cut short.
        self._counters[_END] = self.end

    def settle(self) -> None:
        """Publish everything copied in, and re-read the free space: after an interruption."""
        self._counters[_END] = self.end
        self._free = self._room()

    def listener_asleep(self) -> bool:
        """Whether the listener (if it is alive) needs a wake-up to see what we wrote."""
        return bool(self._counters[_AWAKE_UNTIL] < _monotonic_ns())

    def write_waiting(self, frame: bytes | memoryview, *, always_wake: bool = False, start: int = 0) -> None:
        """Write ``frame`` piece by piece as the listener makes room, then wake it if needed.

        For a full ring, a frame larger than the ring, and barriers (``always_wake``: a
        barrier waits for the listener, so it must not wait for a missed wake-up).
        Publishing part of a frame is safe: the listener reassembles frames, and a worker
        killed halfway leaves a cut-off frame, which the listener reports, of a log call
        that had not returned. Between naps ``check`` raises if the parent is gone; a signal
        handler may raise too, in a nap or anywhere: ``end`` then says how far the frame
        got, and a call with ``start`` at that offset finishes it.
        """
        view = memoryview(frame)
        written = start
        self._free = 0  # until the end: an interruption must not leave it too high
        delay = _FULL_WAIT_FIRST
        woken = False
        while written < len(view):
            free = self._room()
            if not free:
                if not woken:
                    # Once per wait, unconditionally: a missed wake-up (see "Ordering")
                    # must not leave us polling a ring that nobody reads.
                    self._wake()
                    woken = True
                self._check()
                time.sleep(delay)
                delay = min(delay * 2, _FULL_WAIT_MAX)
                continue
            delay = _FULL_WAIT_FIRST
            chunk = min(free, len(view) - written)
            self._publish(view[written : written + chunk])
            written += chunk
            if written < len(view) and self.listener_asleep():
                self._wake()  # so that it makes room again
        self._free = self._room()
        if always_wake or self.listener_asleep():
            self._wake()

    def detach(self) -> None:
        """Forget the ring without touching it (in a forked child; the parent keeps it)."""
        self._counters.release()
        self._data.release()
        self._mapping.close()  # unmaps this process's view only
        self.close_fd()


class RingError(Exception):
    """A worker handed over something that is not a ring of ours, or broke its rules."""


class RingReader:
    """The listener's end of one worker's ring."""

    def __init__(self, fd: int) -> None:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != SIZE:
            raise RingError(
                f"expected a shared-memory file of {SIZE} bytes; got mode {info.st_mode:o}, "
                f"size {info.st_size}"
            )
        # A writer that could shrink the file would make our reads fault (SIGBUS).
        if fcntl is not None and hasattr(fcntl, "F_GET_SEALS"):
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            if not seals & fcntl.F_SEAL_SHRINK:
                raise RingError("the shared-memory file is not sealed against shrinking")
        self._mapping = _SharedMapping(fd)
        self._counters = _counters(self._mapping.view)
        self._data = self._mapping.view[CONTROL_SIZE:]
        self._start = 0

    def read_into(self, target: memoryview) -> int:
        """Move up to ``len(target)`` published bytes into ``target``; return how many."""
        available = self._counters[_END] - self._start
        if available <= 0:
            if available < 0:
                raise RingError("the writer's end moved backwards")
            return 0
        if available > CAPACITY:
            raise RingError(f"the writer claims {available} unread bytes in a ring of {CAPACITY}")
        size = min(available, len(target))
        position = self._start & _MASK
        stop = position + size
        if stop <= CAPACITY:
            target[:size] = self._data[position:stop]
        else:
            first = CAPACITY - position
            target[:first] = self._data[position:]
            target[first:size] = self._data[: size - first]
        self._start += size
        # Published at once so the writer can go on while we handle what we took.
        self._counters[_START] = self._start
        return size

    def has_data(self) -> bool:
        return bool(self._counters[_END] != self._start)

    def set_awake_until(self, deadline_ns: int) -> None:
        """Promise to look again by ``deadline_ns`` (monotonic) unwoken; 0: wake me."""
        self._counters[_AWAKE_UNTIL] = deadline_ns

    def close(self) -> None:
        self._counters.release()
        self._data.release()
        self._mapping.close()


class _SharedMapping:
    """The parent's view of a worker's ring, holding no file descriptor.

    ``mmap.mmap`` keeps a duplicate of the descriptor it maps for as long as the mapping
    lives, which made each worker cost the parent two descriptors (its connection and its
    ring's duplicate), twice what the stdlib pool costs. A mapping does not need its
    descriptor once made, so map without keeping one: ``trackfd=False`` where ``mmap``
    offers it (3.13+), and libc's ``mmap`` through ctypes before that. Only used on x86-64
    Linux (see ``enabled``), where libc is always there.
    """

    def __init__(self, fd: int) -> None:
        self._address = 0
        self._mmap: mmap.mmap | None = None
        if _TRACKFD:
            self._mmap = mmap.mmap(fd, SIZE, trackfd=False)  # type: ignore[call-arg, unused-ignore]
            self.view = memoryview(self._mmap)
            return
        libc_mmap, _ = _libc()
        address = libc_mmap(None, SIZE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        # MAP_FAILED is (void *) -1.
        if address is None or address == ctypes.c_void_p(-1).value:
            error = ctypes.get_errno()
            raise OSError(error, f"mmap of the ring failed: {os.strerror(error)}")
        self._address = address
        self.view = memoryview((ctypes.c_ubyte * SIZE).from_address(address)).cast("B")

    def close(self) -> None:
        """Unmap. Every view taken from ``view`` must have been released first."""
        self.view.release()
        if self._mmap is not None:
            self._mmap.close()
        elif self._address:
            # Do not unmap while a view is alive: that would leave a dangling pointer. The
            # reader releases its views before it calls this.
            _libc()[1](self._address, SIZE)
            self._address = 0


_TRACKFD = sys.version_info >= (3, 13)


@functools.cache
def _libc() -> tuple[Any, Any]:
    """libc's ``mmap`` and ``munmap``, bound on first use (the ring is Linux-only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc_mmap = libc.mmap
    libc_mmap.restype = ctypes.c_void_p
    libc_mmap.argtypes = (
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    )
    libc_munmap = libc.munmap
    libc_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    return libc_mmap, libc_munmap


def _seal(fd: int) -> None:
    if fcntl is not None and hasattr(fcntl, "F_ADD_SEALS"):
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
