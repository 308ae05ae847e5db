"""The worker side, in this process: the channel and the handler on root."""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import socket
import threading

import pytest

from logexec import _records
from logexec._channel import _framing, _setup, _worker


def _channel_with_peer() -> tuple[_worker.Channel, socket.socket]:
    channel = _worker.Channel(_worker.WorkerConfig(b"k" * 32))
    ours, theirs = socket.socketpair()
    channel._socket = ours
    return channel, theirs


def test_handler_is_a_queue_handler_that_writes_frames() -> None:
    """The handler is a real QueueHandler; each record is one frame on the connection."""
    channel, peer = _channel_with_peer()
    handler = _setup.WorkerHandler(channel)
    assert isinstance(handler, logging.handlers.QueueHandler)
    channel.begin_task(41)
    token = _setup._TASK.set(41)  # as run_task does, in the task's thread
    try:
        handler.handle(
            logging.makeLogRecord({"name": "w", "msg": "hi %s", "args": ("there",), "levelno": 20})
        )
    finally:
        _setup._TASK.reset(token)
    data = peer.recv(65536)
    size, kind = _framing.HEADER.unpack_from(data, 0)
    assert kind == _framing.KIND_RECORD and len(data) == _framing.HEADER_SIZE + size
    task_id, record = _records.decode_record(data[_framing.HEADER_SIZE :])
    assert task_id == 41 and record.getMessage() == "hi there"
    assert channel.records_in_task == 1


def test_only_the_running_tasks_context_carries_its_id() -> None:
    """Another thread, or a context left from an earlier task, logs with no task id."""
    channel, peer = _channel_with_peer()
    handler = _setup.WorkerHandler(channel)

    def log(message: str) -> None:
        handler.handle(logging.makeLogRecord({"name": "w", "msg": message, "levelno": 20}))

    channel.begin_task(5)
    earlier = contextvars.copy_context()
    earlier.run(_setup._TASK.set, 4)  # a thread an earlier task started in its context
    task = contextvars.copy_context()
    task.run(_setup._TASK.set, 5)
    task.run(log, "the task's")
    other = threading.Thread(target=log, args=("another thread's",))
    other.start()
    other.join(timeout=10)
    earlier.run(log, "the earlier task's thread's")
    channel.begin_task(6)  # the next task: end_task would wait for a listener's answer
    task.run(log, "after the task")
    ids = []
    for _ in range(4):
        size, _kind = _framing.HEADER.unpack_from(peer.recv(_framing.HEADER_SIZE, socket.MSG_WAITALL), 0)
        task_id, record = _records.decode_record(peer.recv(size, socket.MSG_WAITALL))
        ids.append((record.getMessage(), task_id))
    assert ids == [
        ("the task's", 5),
        ("another thread's", None),
        ("the earlier task's thread's", None),
        ("after the task", None),
    ]


def test_unreachable_parent_sends_records_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """With the parent gone, records go to stderr after one notice; the caller sees nothing."""
    channel, peer = _channel_with_peer()
    peer.close()
    handler = _setup.WorkerHandler(channel)
    logger = logging.getLogger("tests.orphan")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    for number in range(3):
        logger.info("orphan record %d", number)
    err = capsys.readouterr().err
    assert err.count("cannot reach the parent process") == 1
    assert [line for line in err.splitlines() if "orphan record" in line] == [
        f"INFO:tests.orphan:orphan record {number}" for number in range(3)
    ]


def test_task_that_logged_nothing_sends_no_barrier() -> None:
    """end_task sends nothing when the task logged nothing."""
    channel, peer = _channel_with_peer()
    channel.begin_task(1)
    channel.end_task()
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(16)


def test_barrier_waits_for_the_answer() -> None:
    """After a task that logged, end_task sends a barrier and returns once answered."""
    channel, peer = _channel_with_peer()
    handler = _setup.WorkerHandler(channel)
    channel.begin_task(7)
    handler.handle(logging.makeLogRecord({"msg": "x"}))
    peer.sendall(_framing.barrier_ack(1))  # answered ahead: end_task must still send its barrier
    channel.end_task()
    data = peer.recv(65536)
    size, _ = _framing.HEADER.unpack_from(data, 0)
    barrier = data[_framing.HEADER_SIZE + size :]
    assert _framing.HEADER.unpack_from(barrier, 0)[1] == _framing.KIND_BARRIER
    assert _framing.decode_barrier(barrier[_framing.HEADER_SIZE :]) == 7


def test_a_log_call_nested_in_a_write_is_sent_after_it_in_order() -> None:
    """A log call made while this thread is inside a write (a signal handler that logs) is
    neither deadlocked nor interleaved: it is sent right after the interrupted frame."""
    channel, peer = _channel_with_peer()
    handler = _setup.WorkerHandler(channel)
    nested_sent = []
    original = channel._write

    def write_then_get_interrupted(frame: bytes) -> None:
        original(frame)
        if not nested_sent:
            # What a signal handler that logs does in the middle of this call.
            nested_sent.append(True)
            handler.handle(logging.makeLogRecord({"msg": "from the signal handler"}))

    channel._write = write_then_get_interrupted  # type: ignore[method-assign]
    channel.begin_task(3)
    handler.handle(logging.makeLogRecord({"msg": "interrupted"}))
    handler.handle(logging.makeLogRecord({"msg": "next"}))
    peer.settimeout(5)
    data = b""
    messages: list[str] = []
    while len(messages) < 3:
        data += peer.recv(65536)
        while len(data) >= _framing.HEADER_SIZE:
            size, _ = _framing.HEADER.unpack_from(data, 0)
            if len(data) < _framing.HEADER_SIZE + size:
                break
            _, record = _records.decode_record(data[_framing.HEADER_SIZE : _framing.HEADER_SIZE + size])
            messages.append(record.getMessage())
            data = data[_framing.HEADER_SIZE + size :]
    assert messages == ["interrupted", "from the signal handler", "next"]
    assert channel.records_in_task == 3


def test_a_forked_child_starts_with_no_task() -> None:
    """After a fork, the child's channel carries no task id and owes no barrier."""
    channel, _ = _channel_with_peer()
    channel.begin_task(9)
    channel.records_in_task = 4
    channel.after_fork_in_child()
    assert channel.task_id is None and channel.records_in_task == 0
