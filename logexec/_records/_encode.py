"""The worker side of a record: it becomes a tuple of plain values, then bytes.

Nothing here raises, whatever the record holds (see ``logexec._records``).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from typing import Any

from ._fields import (
    _ABSENT,
    _FAILURES,
    _HAS_TASK_NAME,
    _LOG_RECORD,
    _PLAIN_RECORD_SIZE,
    _STANDARD_ATTRIBUTES,
    PICKLE_PROTOCOL,
    _Absent,
    _as_level,
    _as_name,
    _as_time,
    _describe,
    _safe_repr,
    _safe_str,
)

# The standard formatter renders exc_info exactly as the parent's default formatter would.
_FORMATTER = logging.Formatter()


# The placeholder message of a record whose message will not merge.
MESSAGE_FAILURE_PREFIX = "logexec: could not merge the message of this record: "


def render_message(record: logging.LogRecord) -> str:
    """Merge ``msg % args``; a failure becomes the message instead of losing the record."""
    try:
        return record.getMessage()
    except _FAILURES as error:  # any user __str__, a format mismatch, a deleted msg
        return (
            f"{MESSAGE_FAILURE_PREFIX}{type(error).__name__}: {_safe_repr(error)}; "
            f"msg={_safe_repr(_read(record, 'msg', _ABSENT))} "
            f"args={_safe_repr(_read(record, 'args', _ABSENT))}"
        )


def render_exception(record: logging.LogRecord) -> str | None:
    """Return ``exc_text``, rendering ``exc_info`` with the standard formatter if needed."""
    try:
        # A deleted field counts as a plain record's None.
        exc_text = getattr(record, "exc_text", None)
        if exc_text:
            return exc_text if type(exc_text) is str else _safe_str(exc_text)
        exc_info = getattr(record, "exc_info", None)
        if not exc_info:
            return None
    except _FAILURES as error:  # deleted fields, a subclass's property, a __bool__ that raises
        return f"logexec: could not read the exception of this record: {_describe(error)}"
    try:
        return _FORMATTER.formatException(exc_info)
    except _FAILURES as error:  # an exc_info that is not a (type, value, traceback) triple
        return f"logexec: could not render the exception {_safe_repr(exc_info)}: {_describe(error)}"


def record_values(record: logging.LogRecord, task_id: int | None) -> tuple[Any, ...]:
    """The record as a flat tuple in wire order: fields, then the task id, then extras.

    Never raises, whatever the record holds.
    """
    if type(record) is _LOG_RECORD:
        # Reading the instance dict directly is a quarter faster than attribute access
        # (this runs on every log call in every worker). Only for the exact class: a
        # subclass may serve a field from a property.
        try:
            state = record.__dict__
            extras: dict[str, Any] | None = None
            if len(state) > _PLAIN_RECORD_SIZE:
                extras = {k: v for k, v in state.items() if k not in _STANDARD_ATTRIBUTES} or None
            exc_text = state["exc_text"]
            if not exc_text and state["exc_info"]:
                exc_text = render_exception(record)
            # A filter may have put odd types in the fields; they are not checked here
            # but in build_record, which must check them anyway (see there).
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
        except _FAILURES:
            pass  # a deleted field, or a __bool__ that raises: the careful path reads each
    else:
        # A subclass (a record factory's, say: then every record is one) may serve fields
        # from properties, so read attributes; only if that fails, field by field.
        try:
            return _attribute_values(record, task_id)
        except _FAILURES:
            pass
    return _careful_values(record, task_id)


def _attribute_values(record: logging.LogRecord, task_id: int | None) -> tuple[Any, ...]:
    state = record.__dict__
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
        {k: v for k, v in state.items() if k not in _STANDARD_ATTRIBUTES} or None,
    )


def _careful_values(record: logging.LogRecord, task_id: int | None) -> tuple[Any, ...]:
    # The slow path, for subclasses and damaged records: every read is guarded on its own,
    # so one bad field costs only that field. A field that cannot be read takes the value
    # a plain LogRecord would have (see LogRecord.__init__ and Logger.findCaller), or a
    # marker naming the field and the error where a record has no such default.
    name = _as_name(_read(record, "name", _ABSENT))
    levelname = _read(record, "levelname", _ABSENT)
    levelno = _as_level(_read(record, "levelno", _ABSENT), levelname)
    if isinstance(levelname, _Absent):
        levelname = logging.getLevelName(levelno)
    pathname = _read(record, "pathname", "(unknown file)")
    filename = _read(record, "filename", _ABSENT)
    if isinstance(filename, _Absent):
        try:
            filename = os.path.basename(pathname)
        except _FAILURES:
            filename = pathname
    created = _as_time(_read(record, "created", _ABSENT))
    msecs = _read(record, "msecs", _ABSENT)
    if isinstance(msecs, _Absent):
        msecs = (created - int(created)) * 1000 if math.isfinite(created) else 0.0
    message = render_message(record)
    if type(message) is not str:  # a subclass's getMessage may return anything
        message = _safe_str(message)
    return (
        name,
        message,
        None,
        levelname,
        levelno,
        pathname,
        filename,
        _read(record, "module", "Unknown module"),
        None,
        render_exception(record),
        _read(record, "stack_info", None),
        _read(record, "lineno", 0),
        _read(record, "funcName", "(unknown function)"),
        created,
        msecs,
        _read(record, "relativeCreated", 0.0),
        _read(record, "thread", None),
        _read(record, "threadName", None),
        _read(record, "processName", None),
        _read(record, "process", None),
        _read(record, "taskName", None) if _HAS_TASK_NAME else None,
        task_id,
        _careful_extras(record),
    )


def _careful_extras(record: logging.LogRecord) -> dict[str, Any] | None:
    try:
        items = list(vars(record).items())
    except _FAILURES:
        return None  # no instance dict at all (a __dict__ property that raises)
    # Keys travel as they are, as on the fast paths; one that will not pickle becomes text
    # (see _picklable_extras).
    return {key: value for key, value in items if key not in _STANDARD_ATTRIBUTES} or None


def _read(record: object, field: str, default: Any) -> Any:
    try:
        return getattr(record, field)
    except _FAILURES as error:
        return _Absent(error) if isinstance(default, _Absent) else default


def encode_values(values: tuple[Any, ...]) -> bytes:
    """Pickle record values; whatever will not pickle is sent as its ``repr()``."""
    try:
        return _dumps(values, PICKLE_PROTOCOL)
    except _FAILURES:
        return _encode_with_reprs(values)


def _encode_with_reprs(values: tuple[Any, ...]) -> bytes:
    # Rare path: find the culprits one by one rather than drop the record.
    try:
        extras = values[-1]
        return _dumps(
            (*(_picklable(value) for value in values[:-1]), _picklable_extras(extras)), PICKLE_PROTOCOL
        )
    except _FAILURES:
        # A value that pickles alone but not beside the others (a __reduce__ with a side
        # effect, say): send text for everything that is not a plain value.
        texts = (*(_as_text(value) for value in values[:-1]), _text_extras(values[-1]))
        return _dumps(texts, PICKLE_PROTOCOL)


_dumps = pickle.dumps


def _picklable(value: object) -> object:
    try:
        _dumps(value, PICKLE_PROTOCOL)
    except _FAILURES:
        return _safe_repr(value)
    return value


def _picklable_extras(extras: dict[Any, Any] | None) -> dict[Any, Any] | None:
    if extras is None:
        return None
    # A str key always pickles; any other is checked like a value.
    return {
        (key if type(key) is str else _picklable(key)): _picklable(value) for key, value in extras.items()
    }


_PLAIN_TYPES = (str, int, float, type(None))


def _as_text(value: object) -> object:
    return value if type(value) in _PLAIN_TYPES else _safe_repr(value)


def _text_extras(extras: object) -> dict[str, str] | None:
    if not isinstance(extras, dict):
        return None
    return {_safe_str(key): _safe_repr(value) for key, value in extras.items()}
