"""The shared-memory ring, both ends in this process, plus the one thing only a live pool
shows: a worker whose parent is gone notices it even though writes need no system call."""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from logexec import LoggingProcessPoolExecutor
from logexec._channel import _ring

from . import helpers
from .conftest import ListHandler

needs_ring = pytest.mark.skipif(not _ring.enabled(), reason="the ring needs memfd and x86-64")


def _pair(
    wake: Callable[[], None] = lambda: None, check: Callable[[], None] = lambda: None
) -> tuple[_ring.RingWriter, _ring.RingReader]:
    writer = _ring.RingWriter(wake, check)
    assert writer.fd is not None
    fd = os.dup(writer.fd)  # what the parent receives with the hello
    try:
        reader = _ring.RingReader(fd)
    finally:
        os.close(fd)
    writer.close_fd()
    return writer, reader


def _read_all(reader: _ring.RingReader, size: int = 4096) -> bytes:
    target = memoryview(bytearray(size))
    out = bytearray()
    while True:
        count = reader.read_into(target)
        if not count:
            return bytes(out)
        out += target[:count]


def _never(*_: object) -> None:
    raise AssertionError("not expected here")


@needs_ring
def test_frames_come_out_in_order_across_the_wrap() -> None:
    """Frames of mixed sizes, written past the end many times over, read back byte-exact."""
    writer, reader = _pair()
    rng = random.Random(5)
    sent = bytearray()
    received = bytearray()
    for number in range(20_000):
        frame = bytes([number % 251]) * rng.randrange(1, 700)
        if not writer.write(frame):
            received += _read_all(reader, rng.choice([100, 4096, _ring.CAPACITY]))
            assert writer.write(frame)
        sent += frame
    received += _read_all(reader)
    assert len(sent) > 10 * _ring.CAPACITY
    assert received == sent


@needs_ring
def test_full_ring_and_a_frame_larger_than_the_ring_wait_for_room() -> None:
    """write() reports FULL without writing; write_waiting() streams as the reader drains."""
    wakes: list[int] = []
    writer, reader = _pair(wake=lambda: wakes.append(1))
    reader.set_awake_until(time.monotonic_ns() + 600 * 10**9)  # awake: no wake-ups but ours
    filler = b"f" * (_ring.CAPACITY - 10)
    assert writer.write(filler)
    assert not writer.write(b"x" * 11)
    huge = os.urandom(3 * _ring.CAPACITY + 123)
    done = threading.Event()
    assert not wakes

    def write_huge() -> None:
        writer.write_waiting(huge)
        done.set()

    thread = threading.Thread(target=write_huge)
    thread.start()
    received = bytearray()
    deadline = time.monotonic() + 30
    while not (done.is_set() and not reader.has_data()):
        assert time.monotonic() < deadline, "the writer never finished"
        received += _read_all(reader, 1000)
        time.sleep(0.001)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert received == filler + huge
    assert wakes, "a writer that waits for room must wake the listener at least once"


@needs_ring
def test_waiting_writer_gives_up_when_the_parent_is_gone() -> None:
    """check() raising is how a full ring with nobody reading ends: no endless wait."""

    def gone() -> None:
        raise ConnectionError("the parent's log listener closed the connection")

    writer, _reader = _pair(check=gone)
    assert writer.write(b"f" * _ring.CAPACITY)
    with pytest.raises(ConnectionError):
        writer.write_waiting(b"more")


@needs_ring
def test_listener_promise_decides_the_wake_up() -> None:
    """Past the listener's "awake until", or asleep (0), a write wakes it; else not."""
    wakes: list[bytes] = []
    writer, reader = _pair(wake=lambda: wakes.append(b"w"))
    reader.set_awake_until(0)
    assert writer.write(b"a") and len(wakes) == 1
    reader.set_awake_until(time.monotonic_ns() + 10**9)
    assert writer.write(b"b") and len(wakes) == 1
    assert not writer.listener_asleep()
    writer.write_waiting(b"barrier", always_wake=True)
    assert len(wakes) == 2
    reader.set_awake_until(time.monotonic_ns() - 1)  # a listener that died stops renewing
    assert writer.write(b"c") and len(wakes) == 3
    assert writer.listener_asleep()


@needs_ring
def test_reader_refuses_what_is_not_a_sealed_ring_of_ours() -> None:
    """Wrong size, or a file the writer could still shrink (reads would fault)."""
    with tempfile.TemporaryFile() as wrong_size:
        os.ftruncate(wrong_size.fileno(), 100)
        with pytest.raises(_ring.RingError, match=f"expected a shared-memory file of {_ring.SIZE} bytes"):
            _ring.RingReader(wrong_size.fileno())
    unsealed = os.memfd_create("unsealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(unsealed, _ring.SIZE)
        with pytest.raises(_ring.RingError, match="not sealed against shrinking"):
            _ring.RingReader(unsealed)
    finally:
        os.close(unsealed)


@needs_ring
def test_reader_rejects_a_writer_that_breaks_the_counters() -> None:
    """An end beyond a ring's worth of bytes, or moving backwards, is a protocol error."""
    writer, reader = _pair()
    target = memoryview(bytearray(64))
    writer._counters[0] = _ring.CAPACITY + 1  # the end, as a broken writer might set it
    with pytest.raises(_ring.RingError, match="unread bytes in a ring of"):
        reader.read_into(target)
    writer._counters[0] = 10
    assert reader.read_into(target) == 10
    writer._counters[0] = 5
    with pytest.raises(_ring.RingError, match="moved backwards"):
        reader.read_into(target)


@needs_ring
def test_switch_turns_the_ring_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """LOGEXEC_SHARED_MEMORY=0 sends frames through the connection instead."""
    monkeypatch.delenv("LOGEXEC_TRANSPORT", raising=False)  # the newer switch would win
    monkeypatch.setenv(_ring.ENV_SWITCH, "0")
    assert not _ring.enabled()
    monkeypatch.setenv(_ring.ENV_SWITCH, "1")
    assert _ring.enabled()


@pytest.mark.parametrize("start_method", ["fork", "spawn"], indirect=True)
def test_worker_notices_a_stopped_listener_and_uses_stderr(
    make_executor: Callable[..., LoggingProcessPoolExecutor],
    collect: Callable[..., ListHandler],
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """With a ring a write needs no system call, yet once the parent stops listening the
    worker's next records still reach its stderr, not a ring that nobody reads."""
    handler = collect()
    executor = make_executor(1)
    flag = tmp_path / "go"
    future = executor.submit(helpers.log_wait_for_file_then_log, str(flag), 3)
    deadline = time.monotonic() + 30
    while "before the parent left" not in handler.messages():
        assert time.monotonic() < deadline, "the first record never arrived"
        time.sleep(0.01)
    # What a parent that died would look like from the worker: the listener stops reading
    # and the connection closes (stop() gives up on the live worker after its grace).
    executor._logexec_listener.stop()
    flag.touch()
    assert future.result(timeout=60) == 3
    err = capfd.readouterr().err
    assert err.count("cannot reach the parent process") == 1
    assert [line for line in err.splitlines() if "after the parent left" in line] == [
        f"INFO:tests.worker:after the parent left {number}" for number in range(3)
    ]
