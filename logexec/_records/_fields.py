"""What both ends of a record's journey share: the fields on the wire, and their repairs."""

from __future__ import annotations

import logging
import operator
import pickle
import time

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
VALUES_SIZE = len(RECORD_FIELDS) + 2

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

# What a failure in someone else's code (a __str__, a __reduce__, a constructor run by
# unpickling) may raise. KeyboardInterrupt is left out on purpose: it is the user's.
_FAILURES: tuple[type[BaseException], ...] = (Exception, SystemExit, GeneratorExit)


def _as_name(name: object) -> str:
    if type(name) is str:
        return name
    if isinstance(name, _Absent):
        # Only the error's type: the parent makes a logger for each distinct name.
        reason = "" if name.error is None else f": {type(name.error).__name__}"
        return f"<logexec: could not read record.name{reason}>"
    text = _safe_str(name)
    if type(text) is not str:
        # A str subclass whose __str__ returns one: exactly str, or build_record (which
        # checks for exactly str) would come back here for ever.
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")
    return text


def _as_time(created: object) -> float:
    if type(created) is float:
        return created
    try:
        return float(created)  # type: ignore[arg-type]  # an int, a Decimal: still a time
    except _FAILURES:
        return time.time()  # what a plain LogRecord made now would hold


def _as_level(levelno: object, levelname: object) -> int:
    if type(levelno) is int:
        return levelno
    try:
        # int(): before 3.10, operator.index returns a bool or an IntEnum as it is, which
        # would come back here for ever (build_record checks for exactly int).
        return int(operator.index(levelno))  # type: ignore[arg-type]  # a bool, an IntEnum
    except _FAILURES:
        pass
    if type(levelname) is str:
        level = logging.getLevelName(levelname)  # the name's number, if it is a known level
        if type(level) is int:
            return level
    # No number to be found: WARNING, the level logging's own last resort uses for
    # records it must show, rather than NOTSET, which every handler with a level drops.
    return logging.WARNING


class _Absent:
    """The value of a field that could not be read; carries the reason for the marker."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def __repr__(self) -> str:
        return "<missing>" if self.error is None else f"<missing: {_describe(self.error)}>"


_ABSENT = _Absent(None)


def _safe_repr(value: object) -> str:
    try:
        text = repr(value)
    except _FAILURES as error:
        return f"<unrepresentable {type(value).__qualname__}: {type(error).__name__}>"
    # repr() may return a str subclass, which need not pickle: make it a plain str.
    return text if type(text) is str else str.__str__(text)


def _safe_str(value: object) -> str:
    try:
        text = str(value)
    except _FAILURES:
        return _safe_repr(value)
    return text if type(text) is str else str.__str__(text)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {_safe_str(error)}"
