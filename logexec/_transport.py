"""The wire format between a worker and the parent: frames, records and the handshake.

Everything here is pure (no sockets, no threads), so the record policy can be tested
without processes.

A frame is a fixed header (payload length, kind) followed by the payload. Records travel
as a flat tuple of the standard ``LogRecord`` fields in a fixed order plus a dict of the
user's ``extra`` attributes, not as a pickled ``LogRecord``: a tuple is smaller, quicker to
pickle and to load, and the parent rebuilds the record without running
``LogRecord.__init__`` (which reads the clock, the pid and the thread again).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import pickle
import struct
from typing import Any

# Length then kind. Eight bytes of length so that no record is ever too large to frame.
HEADER = struct.Struct("!QB")
HEADER_SIZE = HEADER.size
KIND_RECORD = 0
KIND_BARRIER = 1
# The parent's answer to a barrier: every earlier frame on the connection was handled.
BARRIER_ACK = b"\x06"

CHALLENGE_SIZE = 32
DIGEST_SIZE = hashlib.sha256().digest_size
TASK_ID = struct.Struct("!Q")
# A worker's hello: the HMAC answer, then its pid and how its frames will travel.
HELLO_TAIL = struct.Struct("!QB")
HELLO_SIZE = DIGEST_SIZE + HELLO_TAIL.size
# Frames follow the hello on the connection itself.
VIA_CONNECTION = 0
# Frames go through a shared-memory ring (see _ring) whose descriptor rides with the hello;
# what follows the hello on the connection is only wake-ups.
VIA_RING = 1

# The listener's side of the handshake. On accept it sends GREETING then the challenge, or
# REFUSED then a reason (UTF-8, up to EOF) when it cannot serve the worker (out of
# descriptors). After the hello it answers USE_RING (the ring was mapped) or USE_CONNECTION
# (frames go on the connection: no ring was offered, or the parent could not take it).
GREETING = b"\x01"
REFUSED = b"\x15"
USE_RING = b"\x02"
USE_CONNECTION = b"\x03"
# Sent instead of a barrier's answer, then a reason up to EOF, when the listener closes a
# connection that broke the protocol: the worker can say what happened.
GOODBYE = b"\x15"
# The most of a refusal's or goodbye's reason that a worker reads.
REASON_LIMIT = 4096

PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL

# The order of the fields on the wire. ``args`` and ``exc_info`` are always None there:
# the message is merged and the exception rendered in the worker.
RECORD_FIELDS: tuple[str, ...] = (
    "name",
    "msg",
    "args",
    "levelname",
    "levelno",
    "pathname",
    "filename",
    "module",
    "exc_info",
    "exc_text",
    "stack_info",
    "lineno",
    "funcName",
    "created",
    "msecs",
    "relativeCreated",
    "thread",
    "threadName",
    "processName",
    "process",
    "taskName",
)
# After the fields, record_values() appends the task id and the extras dict.

# Attributes that are not the user's `extra`: a fresh record's own, plus what formatters
# add to it ("message", "asctime").
_PLAIN_RECORD = vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
_STANDARD_ATTRIBUTES = frozenset(_PLAIN_RECORD) | {"message", "asctime"}
_PLAIN_RECORD_SIZE = len(_PLAIN_RECORD)
# taskName is a standard field from 3.12 on. Before that a local record has no such
# attribute, so a rebuilt one must not have it either (formatters that render every
# non-standard attribute would show it), unless the user passed it as an extra.
_HAS_TASK_NAME = "taskName" in _PLAIN_RECORD
del _PLAIN_RECORD

_LOG_RECORD = logging.LogRecord

# The standard formatter renders exc_info exactly as the parent's default formatter would.
_FORMATTER = logging.Formatter()

# The parent's logging start, derived from a record's public fields so that rebuilt
# records carry a relativeCreated measured in the parent, as a local call would.
_PROBE = logging.LogRecord("", logging.INFO, "", 0, "", None, None)
_PARENT_START = _PROBE.created - _PROBE.relativeCreated / 1000.0
del _PROBE


def answer_challenge(key: bytes, challenge: bytes) -> bytes:
    """Return the digest that proves knowledge of ``key`` for this ``challenge``."""
    return hmac.new(key, challenge, hashlib.sha256).digest()


def encode_barrier(task_id: int) -> bytes:
    """Frame a barrier: "answer me once everything before this is handled"."""
    payload = TASK_ID.pack(task_id)
    return HEADER.pack(len(payload), KIND_BARRIER) + payload


def decode_barrier(payload: Any) -> int:
    task_id: int = TASK_ID.unpack(payload)[0]
    return task_id


def render_message(record: logging.LogRecord) -> str:
    """Merge ``msg % args``; a failure becomes the message instead of losing the record."""
    try:
        return record.getMessage()
    except Exception as error:  # any user __str__ or format mismatch
        return (
            f"logexec: could not merge the message of this record: {type(error).__name__}: "
            f"{_safe_repr(error)}; msg={_safe_repr(record.msg)} args={_safe_repr(record.args)}"
        )


def render_exception(record: logging.LogRecord) -> str | None:
    """Return ``exc_text``, rendering ``exc_info`` with the standard formatter if needed."""
    if record.exc_text:
        return record.exc_text
    if not record.exc_info:
        return None
    try:
        return _FORMATTER.formatException(record.exc_info)
    except Exception as error:  # an exception whose __str__ raises, for example
        return f"logexec: could not render the exception {_safe_repr(record.exc_info[1])}: {error!r}"


def record_values(record: logging.LogRecord, task_id: int | None) -> tuple[Any, ...]:
    """The record as a flat tuple in wire order: fields, then the task id, then extras."""
    state = record.__dict__
    extras: dict[str, Any] | None = None
    if len(state) > _PLAIN_RECORD_SIZE:
        extras = {k: v for k, v in state.items() if k not in _STANDARD_ATTRIBUTES} or None
    if type(record) is _LOG_RECORD:
        # Reading the instance dict directly is a quarter faster than attribute access
        # (this runs on every log call in every worker). Only for the exact class: a
        # subclass may serve a field from a property.
        try:
            exc_text = state["exc_text"]
            if not exc_text and state["exc_info"]:
                exc_text = render_exception(record)
            return (
                state["name"],
                render_message(record),
                None,
                state["levelname"],
                state["levelno"],
                state["pathname"],
                state["filename"],
                state["module"],
                None,
                exc_text,
                state["stack_info"],
                state["lineno"],
                state["funcName"],
                state["created"],
                state["msecs"],
                state["relativeCreated"],
                state["thread"],
                state["threadName"],
                state["processName"],
                state["process"],
                state.get("taskName") if _HAS_TASK_NAME else None,
                task_id,
                extras,
            )
        except KeyError:
            pass  # a field was deleted from the record: fall back to attributes
    return (
        record.name,
        render_message(record),
        None,
        record.levelname,
        record.levelno,
        record.pathname,
        record.filename,
        record.module,
        None,
        render_exception(record),
        record.stack_info,
        record.lineno,
        record.funcName,
        record.created,
        record.msecs,
        record.relativeCreated,
        record.thread,
        record.threadName,
        record.processName,
        record.process,
        getattr(record, "taskName", None) if _HAS_TASK_NAME else None,
        task_id,
        extras,
    )


def encode_values(values: tuple[Any, ...]) -> bytes:
    """Pickle record values; whatever will not pickle is sent as its ``repr()``."""
    try:
        return pickle.dumps(values, PICKLE_PROTOCOL)
    except Exception:
        return _encode_with_reprs(values)


def _encode_with_reprs(values: tuple[Any, ...]) -> bytes:
    # Rare path: find the culprits one by one rather than drop the record.
    return pickle.dumps(
        (*tuple(_picklable(v) for v in values[:-1]), _picklable_extras(values[-1])), PICKLE_PROTOCOL
    )


def encode_record(record: logging.LogRecord, task_id: int | None) -> bytes:
    """Frame one record for the wire."""
    values = record_values(record, task_id)
    try:
        payload = _dumps(values, PICKLE_PROTOCOL)
    except Exception:
        payload = _encode_with_reprs(values)
    return _pack_header(len(payload), KIND_RECORD) + payload


_dumps = pickle.dumps
_pack_header = HEADER.pack


def decode_values(payload: Any) -> tuple[Any, ...]:
    values: tuple[Any, ...] = pickle.loads(payload)
    return values


def build_record(values: tuple[Any, ...]) -> tuple[int | None, logging.LogRecord]:
    """Rebuild a ``LogRecord`` from wire values; return it with its task id."""
    (
        name,
        msg,
        args,
        levelname,
        levelno,
        pathname,
        filename,
        module,
        exc_info,
        exc_text,
        stack_info,
        lineno,
        func_name,
        created,
        msecs,
        _relative_created,
        thread,
        thread_name,
        process_name,
        process,
        task_name,
        task_id,
        extras,
    ) = values
    # Do not change this back to dict(zip(RECORD_FIELDS, values)): a dict display with
    # constant keys is built in one step at its final size, and costs about a third less
    # (measured 0.8 against 1.1 us per record). Keep the keys in RECORD_FIELDS order.
    state = {
        "name": name,
        "msg": msg,
        "args": args,
        "levelname": levelname,
        "levelno": levelno,
        "pathname": pathname,
        "filename": filename,
        "module": module,
        "exc_info": exc_info,
        "exc_text": exc_text,
        "stack_info": stack_info,
        "lineno": lineno,
        "funcName": func_name,
        "created": created,
        "msecs": msecs,
        # Measured from the parent's logging start, as a local call's would be.
        "relativeCreated": (created - _PARENT_START) * 1000.0,
        "thread": thread,
        "threadName": thread_name,
        "processName": process_name,
        "process": process,
    }
    if _HAS_TASK_NAME:
        state["taskName"] = task_name
    if extras:
        state.update(extras)
    # Do not change this to logging.makeLogRecord: it runs LogRecord.__init__ first, which
    # costs more than everything else here and whose values we overwrite anyway.
    record: logging.LogRecord = _new_record(logging.LogRecord)
    record.__dict__ = state
    return task_id, record


_new_record = logging.LogRecord.__new__


def decode_record(payload: Any) -> tuple[int | None, logging.LogRecord]:
    """Unpickle a record payload; return its task id and the rebuilt record."""
    return build_record(decode_values(payload))


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as error:
        return f"<unrepresentable {type(value).__qualname__}: {type(error).__name__}>"


def _picklable(value: object) -> object:
    try:
        pickle.dumps(value, PICKLE_PROTOCOL)
    except Exception:
        return _safe_repr(value)
    return value


def _picklable_extras(extras: dict[str, Any] | None) -> dict[str, Any] | None:
    if extras is None:
        return None
    return {str(key): _picklable(value) for key, value in extras.items()}
