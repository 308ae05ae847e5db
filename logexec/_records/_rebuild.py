"""The parent side of a record: bytes become a ``LogRecord``, with ``Unrebuilt`` placeholders.

Nothing here raises but ``ProtocolError``, whatever the bytes (see ``logexec._records``).
"""

from __future__ import annotations

import functools
import io
import logging
import pickle
from collections.abc import Callable
from typing import Any, ClassVar

from ._fields import (
    _FAILURES,
    _HAS_TASK_NAME,
    _LOG_RECORD,
    RECORD_FIELDS,
    VALUES_SIZE,
    _as_level,
    _as_name,
    _as_time,
    _describe,
    _safe_repr,
    _safe_str,
)

# The parent's logging start, derived from a record's public fields so that rebuilt
# records carry a relativeCreated measured in the parent, as a local call would.
_PROBE = logging.LogRecord("", logging.INFO, "", 0, "", None, None)
_PARENT_START = _PROBE.created - _PROBE.relativeCreated / 1000.0
del _PROBE


class ProtocolError(Exception):
    """A payload is not a record that ``encode_record`` could have written.

    Raised by ``decode_values``, ``build_record`` and ``decode_record``, and by nothing else
    there: the listener closes the one connection that sent it and reports it.
    """


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
