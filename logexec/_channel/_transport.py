"""The wire format between a worker and the parent: frames, records and the handshake.

Everything here is pure (no sockets, no threads), so the record policy can be tested
without processes.

A frame is a fixed header (payload length, kind) followed by the payload. Records travel
as a flat tuple of the standard ``LogRecord`` fields in a fixed order plus a dict of the
user's ``extra`` attributes, not as a pickled ``LogRecord``: a tuple is smaller, quicker to
pickle and to load, and the parent rebuilds the record without running
``LogRecord.__init__`` (which reads the clock, the pid and the thread again).

No record is lost because of its content, and neither side fails because of it:

* **Worker side** (``record_values``, ``encode_record``): never raises, whatever the record
  holds. The exact ``LogRecord`` class takes a fast path; anything odd (a deleted field, a
  subclass whose property raises, a name that is not a str) takes a careful path that reads
  each field on its own and puts a default or a marker where a field cannot be read. A
  value that will not pickle travels as its ``repr()``.
* **Parent side** (``decode_values``, ``build_record``, ``decode_record``): raises nothing but
  ``ProtocolError``, whatever the bytes. A payload that pickled in the worker but will not
  unpickle here (a class the parent cannot import, a constructor that refuses its own
  arguments) is unpickled again with only the failing objects replaced by ``Unrebuilt``
  placeholders. ``ProtocolError`` means the bytes are not a record this module could have
  written: the listener closes that one connection.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import logging
import math
import operator
import os
import pickle
import struct
import time
from typing import Any, Callable, ClassVar

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

# The standard formatter renders exc_info exactly as the parent's default formatter would.
_FORMATTER = logging.Formatter()

# The parent's logging start, derived from a record's public fields so that rebuilt
# records carry a relativeCreated measured in the parent, as a local call would.
_PROBE = logging.LogRecord("", logging.INFO, "", 0, "", None, None)
_PARENT_START = _PROBE.created - _PROBE.relativeCreated / 1000.0
del _PROBE

# What a failure in someone else's code (a __str__, a __reduce__, a constructor run by
# unpickling) may raise. KeyboardInterrupt is left out on purpose: it is the user's.
_FAILURES: tuple[type[BaseException], ...] = (Exception, SystemExit, GeneratorExit)


class ProtocolError(Exception):
    """A payload is not a record that ``encode_record`` could have written.

    Raised by ``decode_values``, ``build_record`` and ``decode_record``, and by nothing else
    there: the listener closes the one connection that sent it and reports it.
    """


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


# ---------------------------------------------------------------------------------------
# Worker side: a record becomes a tuple of plain values, then bytes. Nothing here raises.
# ---------------------------------------------------------------------------------------

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


def encode_record(record: logging.LogRecord, task_id: int | None) -> bytes:
    """Frame one record for the wire. Never raises."""
    values = record_values(record, task_id)
    try:
        payload = _dumps(values, PICKLE_PROTOCOL)
    except _FAILURES:
        payload = _encode_with_reprs(values)
    return _pack_header(len(payload), KIND_RECORD) + payload


_dumps = pickle.dumps
_pack_header = HEADER.pack


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


# ---------------------------------------------------------------------------------------
# Parent side: bytes become a record. Nothing here raises but ProtocolError.
# ---------------------------------------------------------------------------------------


class _UnrebuiltType(type):
    """The metaclass of the placeholders, so that a placeholder *class* says what it is too."""

    def __repr__(cls) -> str:
        what = cls.__dict__.get("what")
        if what is None:
            return super().__repr__()
        return f"<logexec: could not rebuild {what} in the parent: {cls.__dict__.get('why')}>"


class Unrebuilt(metaclass=_UnrebuiltType):
    """Stands in, in the parent, for a value of a record that could not be rebuilt there.

    It keeps what the worker sent for it: ``what`` (the class or function that failed, as
    ``module.qualname``), ``why`` (the error, as ``Type: message``), the constructor's
    ``args`` and ``kwargs``, the unpickled ``state``, and ``items`` added to it as a
    container. Its ``repr()`` and ``str()`` are::

        <logexec: could not rebuild tests.helpers.TwoArgError in the parent: TypeError: ...; args=('a',)>

    It accepts any constructor arguments, ``__setstate__`` and container items, so that
    unpickling goes on around it. It pickles as that text, so a parent handler that ships
    records on (a ``QueueHandler``, a ``SocketHandler``) is not the next to fail.
    """

    # Class-level defaults; the classes made for names the parent cannot import set them.
    what: ClassVar[str] = "a value"
    why: ClassVar[str] = "no reason recorded"

    def __new__(cls, *args: Any, **kwargs: Any) -> Unrebuilt:
        self = object.__new__(cls)
        vars(self).update(what=cls.what, why=cls.why, args=args, kwargs=kwargs, state=None, items=[])
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ kept everything

    def __setstate__(self, state: Any) -> None:
        vars(self)["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        vars(self)["items"].append((key, value))

    def append(self, item: Any) -> None:
        vars(self)["items"].append(item)

    def extend(self, items: Any) -> None:
        vars(self)["items"].extend(items)

    def add(self, item: Any) -> None:
        vars(self)["items"].append(item)

    def __repr__(self) -> str:
        state = vars(self)
        text = f"<logexec: could not rebuild {state['what']} in the parent: {state['why']}"
        text += f"; args={_safe_repr(state['args'])}"
        if state["kwargs"]:
            text += f" kwargs={_safe_repr(state['kwargs'])}"
        if state["state"] is not None:
            text += f" state={_safe_repr(state['state'])}"
        if state["items"]:
            text += f" items={_safe_repr(state['items'])}"
        return text + ">"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        return (str, (_safe_repr(self),))


@functools.lru_cache(maxsize=256)
def _unrebuilt_class(what: str, why: str) -> type[Unrebuilt]:
    # One class per missing global and reason, cached: a stream of records that all name
    # the same missing class must not make a class per record.
    made: Any = _UnrebuiltType("Unrebuilt", (Unrebuilt,), {"what": what, "why": why, "__module__": __name__})
    return made  # type: ignore[no-any-return]  # a subclass of Unrebuilt, made at run time


def _unrebuilt(failed: object, error: BaseException, args: Any = (), kwargs: Any = None) -> Unrebuilt:
    placeholder = Unrebuilt.__new__(Unrebuilt, *_as_tuple(args), **(kwargs if type(kwargs) is dict else {}))
    vars(placeholder).update(what=_name_of(failed), why=_describe(error))
    return placeholder


def _as_tuple(args: object) -> tuple[Any, ...]:
    return args if type(args) is tuple else (args,)


def _name_of(failed: object) -> str:
    if isinstance(failed, _UnrebuiltType):
        return str(vars(failed).get("what", "a value"))
    try:
        if not isinstance(failed, type) and not callable(failed):
            failed = type(failed)
        return f"{getattr(failed, '__module__', '?')}.{getattr(failed, '__qualname__', '?')}"
    except _FAILURES:
        return _safe_repr(failed)


# Do not "simplify" this to a pickle.Unpickler with only find_class overridden: the C
# unpickler has no other hook, and find_class cannot tell a class that imports but refuses
# its own arguments (an exception with two required arguments pickles as (cls, (one,)))
# from one that rebuilds. The pure-Python unpickler runs one method per opcode, so the
# opcodes that run other people's code can each be guarded, and only the object that
# failed is replaced. It is ~20x slower than the C one, and runs only after it failed.
# pickle._Unpickler and its dispatch table are private (the pure-Python fallback that every
# CPython keeps beside the C one); tests/test_transport.py checks the opcodes this wraps.
_PythonUnpickler: Any = pickle._Unpickler


def _guard_construction(opcode: bytes, operands: int) -> Callable[[Any], None]:
    # REDUCE (func, args), NEWOBJ (cls, args), NEWOBJ_EX (cls, args, kwargs): the stdlib
    # method pops the operands and pushes the result; on failure, push a placeholder.
    load = _PythonUnpickler.dispatch[opcode[0]]

    def guarded(self: Any) -> None:
        stack = self.stack
        depth = len(stack)
        if depth < operands:
            load(self)  # a malformed pickle: let the stdlib say so
            return
        parts = stack[depth - operands :]
        try:
            load(self)
        except _FAILURES as error:
            del stack[depth - operands :]
            stack.append(_unrebuilt(parts[0], error, parts[1], parts[2] if operands == 3 else None))

    return guarded


def _guard_mutation(opcode: bytes) -> Callable[[Any], None]:
    # BUILD (__setstate__), APPEND(S), SETITEM(S), ADDITEMS: the stdlib method pops its
    # operands, then changes the object left on top of the stack; if that object refuses,
    # it is replaced by a placeholder that says why.
    load = _PythonUnpickler.dispatch[opcode[0]]
    is_build = opcode == pickle.BUILD

    def guarded(self: Any) -> None:
        state = self.stack[-1] if is_build and self.stack else None
        try:
            load(self)
        except _FAILURES as error:
            # Read the stack again, do not keep it from before: the opcodes that take
            # a mark (APPENDS, SETITEMS, ADDITEMS) replace self.stack with another list.
            stack = self.stack
            if not stack:
                raise  # a malformed pickle, not a refusing object
            target = stack[-1]
            placeholder = _unrebuilt(target, error)
            vars(placeholder)["state"] = state
            stack[-1] = placeholder

    return guarded


class _CarefulUnpickler(_PythonUnpickler):  # type: ignore[misc]  # private base, typed Any
    """Rebuilds what it can; each object that cannot be rebuilt becomes an ``Unrebuilt``."""

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(_PythonUnpickler.dispatch)
    dispatch[pickle.REDUCE[0]] = _guard_construction(pickle.REDUCE, 2)
    dispatch[pickle.NEWOBJ[0]] = _guard_construction(pickle.NEWOBJ, 2)
    dispatch[pickle.NEWOBJ_EX[0]] = _guard_construction(pickle.NEWOBJ_EX, 3)
    for _opcode in (pickle.BUILD, pickle.APPEND, pickle.APPENDS, pickle.SETITEM, pickle.SETITEMS):
        dispatch[_opcode[0]] = _guard_mutation(_opcode)
    dispatch[pickle.ADDITEMS[0]] = _guard_mutation(pickle.ADDITEMS)
    del _opcode

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except _FAILURES as error:  # not importable here: a module only the worker had
            return _unrebuilt_class(f"{module}.{name}", _describe(error))


class _InertUnpickler(pickle.Unpickler):
    """The last resort: every class or function named in the payload becomes a placeholder.

    No code from the payload runs, so only a payload that is not a well-formed pickle can
    fail here; the standard fields, which are plain values, come through whole.
    """

    def __init__(self, file: io.BytesIO, reason: str) -> None:
        super().__init__(file)
        self._reason = reason

    def find_class(self, module: str, name: str) -> Any:
        return _unrebuilt_class(f"{module}.{name}", self._reason)


def decode_values(payload: Any) -> tuple[Any, ...]:
    """Unpickle record values; an object that cannot be rebuilt here becomes an ``Unrebuilt``.

    Raises only ``ProtocolError`` (the bytes are not a pickle at all).
    """
    try:
        values: tuple[Any, ...] = _loads(payload)
    except _FAILURES as error:
        values = _decode_carefully(payload, error)
    return values


_loads = pickle.loads


def _decode_carefully(payload: Any, first_error: BaseException) -> Any:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        # Not bytes(payload): bytes(5) is five zero bytes, not an error.
        raise ProtocolError(f"a record payload must be bytes, got {type(payload).__qualname__}")
    data = bytes(payload)
    try:
        return _CarefulUnpickler(io.BytesIO(data)).load()
    except _FAILURES as error:
        careful_error = error
    reason = f"not rebuilt, because the record did not unpickle ({_describe(careful_error)})"
    try:
        return _InertUnpickler(io.BytesIO(data), reason).load()
    except _FAILURES as error:
        raise ProtocolError(
            f"a record payload of {len(data)} bytes is not a pickle that logexec could have written: "
            f"{_describe(first_error)}; unpickling it without its classes failed too: {_describe(error)}"
        ) from error


def build_record(values: tuple[Any, ...]) -> tuple[int | None, logging.LogRecord]:
    """Rebuild a ``LogRecord`` from wire values; return it with its task id.

    Raises only ``ProtocolError``, when ``values`` cannot be made a record (see
    ``_build_carefully``).
    """
    try:
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
        # Measured from the parent's logging start, as a local call's would be.
        relative_created = (created - _PARENT_START) * 1000.0
    except _FAILURES:
        return _build_carefully(values)
    # What the listener and the parent's logging rely on: a name to route by and to use
    # as a key, a level to compare, a task id to find the context by. The worker's fast
    # path does not check these (it runs on every log call, in every worker); the checks
    # are here, where they are needed anyway, and the repair is off the fast path.
    if (
        type(name) is not str
        or type(levelno) is not int
        or (type(task_id) is not int and task_id is not None)
    ):
        return _build_carefully(values)
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
        "relativeCreated": relative_created,
        "thread": thread,
        "threadName": thread_name,
        "processName": process_name,
        "process": process,
    }
    if _HAS_TASK_NAME:
        state["taskName"] = task_name
    if extras is not None:
        try:
            state.update(extras)
        except _FAILURES:
            return _build_carefully(values)
        # An extra must not replace the fields checked above (record_values never sends a
        # standard attribute as an extra, so only a payload it did not write can). Do not
        # change this to a check of the keys or of the sizes: measured, this is the cheapest.
        if state["name"] is not name or state["levelno"] is not levelno:
            return _build_carefully(values)
    # Do not change this to logging.makeLogRecord: it runs LogRecord.__init__ first, which
    # costs more than everything else here and whose values we overwrite anyway.
    record: logging.LogRecord = _new_record(_LOG_RECORD)
    record.__dict__ = state
    return task_id, record


# The fields that the listener relies on, which an extra must not replace.
_ROUTING_FIELDS = frozenset({"name", "levelno"})


def _build_carefully(values: object) -> tuple[int | None, logging.LogRecord]:
    # Off the fast path. What record_values could have sent, with odd types in the fields
    # (a filter in the worker may put anything there), is repaired as the worker's careful
    # path would have; anything else is not a record, and is a ProtocolError.
    if type(values) is not tuple or len(values) != VALUES_SIZE:
        raise ProtocolError(
            f"a record payload must unpickle to a tuple of {VALUES_SIZE} values, got {_shape(values)}"
        )
    fields = list(values)
    task_id, extras = fields[-2], fields[-1]
    if type(task_id) is not int and task_id is not None:
        raise ProtocolError(f"a record payload's task id must be an int or None, got {_shape(task_id)}")
    if extras is not None:
        if type(extras) is not dict:
            raise ProtocolError(f"a record payload's extras must be a dict or None, got {_shape(extras)}")
        clashes = sorted(_safe_str(key) for key in extras if key in _ROUTING_FIELDS)
        if clashes:
            raise ProtocolError(f"a record payload's extras must not set {' or '.join(clashes)}")
    index = RECORD_FIELDS.index
    fields[index("name")] = _as_name(fields[index("name")])
    fields[index("levelno")] = _as_level(fields[index("levelno")], fields[index("levelname")])
    fields[index("created")] = _as_time(fields[index("created")])
    # Now of the types the fast path checks, so this does not come back here.
    return build_record(tuple(fields))


_new_record = logging.LogRecord.__new__


def decode_record(payload: Any) -> tuple[int | None, logging.LogRecord]:
    """Unpickle a record payload; return its task id and the rebuilt record.

    Raises only ``ProtocolError``, for any bytes whatsoever. Objects that pickled in the
    worker but cannot be rebuilt here arrive as ``Unrebuilt`` placeholders.
    """
    # decode_values inlined: one call less per record on the listener's hot path.
    try:
        values = _loads(payload)
    except _FAILURES as error:
        values = _decode_carefully(payload, error)
    return build_record(values)


def _shape(value: object) -> str:
    if type(value) is tuple:
        return f"a tuple of {len(value)}"
    return type(value).__qualname__
