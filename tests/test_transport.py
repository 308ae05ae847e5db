"""The wire format and record policy, without processes."""

from __future__ import annotations

import logging
import pickle
import sys

from logexec import _transport

from .helpers import Unpicklable, UnpicklableError


def _record(msg: object = "hello %s", args: object = ("world",), **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("transport.test")
    return logger.makeRecord(
        "transport.test", logging.WARNING, "/a/b.py", 12, msg, args, None, "fn", extra or None
    )  # type: ignore[arg-type]


def _round_trip(record: logging.LogRecord, task_id: int | None = 7) -> tuple[int | None, logging.LogRecord]:
    frame = _transport.encode_record(record, task_id)
    size, kind = _transport.HEADER.unpack_from(frame, 0)
    assert kind == _transport.KIND_RECORD
    assert size == len(frame) - _transport.HEADER_SIZE
    return _transport.decode_record(memoryview(frame)[_transport.HEADER_SIZE :])


def test_round_trip_keeps_every_standard_field() -> None:
    """A record comes back with the same standard fields, message merged, args None."""
    record = _record()
    task_id, rebuilt = _round_trip(record)
    assert task_id == 7
    assert type(rebuilt) is logging.LogRecord
    assert rebuilt.msg == "hello world" and rebuilt.args is None and rebuilt.exc_info is None
    for field in (
        "name",
        "levelno",
        "levelname",
        "pathname",
        "filename",
        "module",
        "lineno",
        "funcName",
        "created",
        "msecs",
        "thread",
        "threadName",
        "processName",
        "process",
    ):
        assert getattr(rebuilt, field) == getattr(record, field), field
    assert getattr(rebuilt, "taskName", None) == getattr(record, "taskName", None)


def test_extras_survive_and_unpicklable_ones_become_repr() -> None:
    """extra attributes travel; one that will not pickle arrives as its repr()."""
    _, rebuilt = _round_trip(_record(good={"a": [1, 2]}, bad=Unpicklable()))
    assert rebuilt.good == {"a": [1, 2]}  # type: ignore[attr-defined]
    assert rebuilt.bad == "<Unpicklable thing>"  # type: ignore[attr-defined]


def test_unpicklable_argument_is_merged_by_repr_of_str() -> None:
    """Arguments are merged in the worker, so an unpicklable argument never travels."""
    _, rebuilt = _round_trip(_record("value %r", (Unpicklable(),)))
    assert rebuilt.getMessage() == "value <Unpicklable thing>"


def test_message_that_fails_to_merge_becomes_an_explanation() -> None:
    """A msg/args mismatch is delivered as a record that shows the problem."""
    _, rebuilt = _round_trip(_record("%d", ("x",)))
    message = rebuilt.getMessage()
    assert message.startswith("logexec: could not merge the message of this record: TypeError")
    assert "msg='%d'" in message and "args=('x',)" in message


def test_exception_is_rendered_by_the_standard_formatter() -> None:
    """exc_info becomes exc_text rendered exactly as logging.Formatter renders it."""
    try:
        raise UnpicklableError("no pickle")
    except UnpicklableError:
        record = logging.getLogger("t").makeRecord("t", logging.ERROR, "p", 1, "failed", None, sys.exc_info())
    expected = logging.Formatter().formatException(record.exc_info)  # type: ignore[arg-type]
    _, rebuilt = _round_trip(record)
    assert rebuilt.exc_text == expected and rebuilt.exc_info is None
    assert logging.Formatter().format(rebuilt) == "failed\n" + expected


def test_stack_info_is_kept_apart_from_the_message() -> None:
    """stack_info stays its own field."""
    record = _record()
    record.stack_info = "Stack (most recent call last):\n  here"
    _, rebuilt = _round_trip(record)
    assert rebuilt.stack_info == record.stack_info
    assert rebuilt.msg == "hello world"


def test_relative_created_is_measured_from_the_parents_start() -> None:
    """relativeCreated is recomputed in the receiving process."""
    record = _record()
    record.relativeCreated = -1.0
    _, rebuilt = _round_trip(record)
    assert (
        abs(
            rebuilt.relativeCreated
            - record.__dict__["created"] * 0
            - (rebuilt.created - _transport._PARENT_START) * 1000
        )
        < 1e-6
    )
    assert rebuilt.relativeCreated >= 0


def test_barrier_round_trip() -> None:
    """A barrier frame carries its task id."""
    frame = _transport.encode_barrier(123456789)
    size, kind = _transport.HEADER.unpack_from(frame, 0)
    assert kind == _transport.KIND_BARRIER
    assert _transport.decode_barrier(frame[_transport.HEADER_SIZE :]) == 123456789
    assert size == len(frame) - _transport.HEADER_SIZE


def test_handshake_digest_depends_on_key_and_challenge() -> None:
    """The proof is an HMAC of the challenge under the key."""
    a = _transport.answer_challenge(b"k" * 32, b"c" * 32)
    assert len(a) == _transport.DIGEST_SIZE
    assert a != _transport.answer_challenge(b"j" * 32, b"c" * 32)
    assert a != _transport.answer_challenge(b"k" * 32, b"d" * 32)


def test_payload_is_a_plain_pickled_tuple() -> None:
    """Payloads unpickle to tuples of plain values (no LogRecord class needed to read them)."""
    frame = _transport.encode_record(_record(), None)
    values = pickle.loads(frame[_transport.HEADER_SIZE :])
    assert isinstance(values, tuple)
    assert not any(isinstance(value, logging.LogRecord) for value in values)


def test_task_name_exists_only_where_logging_has_it() -> None:
    """A rebuilt record has taskName exactly when a local record would (3.12+)."""
    local = _record()
    _, rebuilt = _round_trip(local)
    assert ("taskName" in vars(rebuilt)) == ("taskName" in vars(local))
    if sys.version_info < (3, 12):
        # Before 3.12 taskName is not a standard field, so it travels as an ordinary extra.
        _, rebuilt = _round_trip(_record(taskName="mine"))
        assert rebuilt.taskName == "mine"  # type: ignore[attr-defined]
