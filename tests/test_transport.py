"""The wire format and record policy, without processes."""

from __future__ import annotations

import logging
import pickle
import sys

import pytest

from logexec import _records
from logexec._channel import _framing
from logexec._records import _rebuild

from .helpers import Unpicklable, UnpicklableError


def _record(msg: object = "hello %s", args: object = ("world",), **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("transport.test")
    return logger.makeRecord(
        "transport.test",
        logging.WARNING,
        "/a/b.py",
        12,
        msg,
        args,  # type: ignore[arg-type]  # odd args on purpose
        None,
        "fn",
        extra or None,
    )


def _round_trip(record: logging.LogRecord, task_id: int | None = 7) -> tuple[int | None, logging.LogRecord]:
    frame = _framing.encode_record(record, task_id)
    size, kind = _framing.HEADER.unpack_from(frame, 0)
    assert kind == _framing.KIND_RECORD
    assert size == len(frame) - _framing.HEADER_SIZE
    return _records.decode_record(memoryview(frame)[_framing.HEADER_SIZE :])


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
        record = logging.getLogger("t").makeRecord("t", logging.ERROR, "p", 1, "failed", (), sys.exc_info())
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
            - (rebuilt.created - _rebuild._PARENT_START) * 1000
        )
        < 1e-6
    )
    assert rebuilt.relativeCreated >= 0


def test_barrier_round_trip() -> None:
    """A barrier frame carries its task id."""
    frame = _framing.encode_barrier(123456789)
    size, kind = _framing.HEADER.unpack_from(frame, 0)
    assert kind == _framing.KIND_BARRIER
    assert _framing.decode_barrier(frame[_framing.HEADER_SIZE :]) == 123456789
    assert size == len(frame) - _framing.HEADER_SIZE


def test_handshake_digest_depends_on_key_and_challenge() -> None:
    """The proof is an HMAC of the challenge under the key."""
    a = _framing.answer_challenge(b"k" * 32, b"c" * 32)
    assert len(a) == _framing.DIGEST_SIZE
    assert a != _framing.answer_challenge(b"j" * 32, b"c" * 32)
    assert a != _framing.answer_challenge(b"k" * 32, b"d" * 32)


def test_payload_is_a_plain_pickled_tuple() -> None:
    """Payloads unpickle to tuples of plain values (no LogRecord class needed to read them)."""
    frame = _framing.encode_record(_record(), None)
    values = pickle.loads(frame[_framing.HEADER_SIZE :])
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


# A record's content never fails the worker -------------------------------------------------

_PLAIN_FIELDS = sorted(vars(logging.LogRecord("n", logging.INFO, "/p.py", 1, "m", None, None)))


@pytest.mark.parametrize("field", _PLAIN_FIELDS)
def test_a_deleted_standard_field_still_sends_the_record(field: str) -> None:
    """A filter that deletes any standard attribute does not stop the record; the field gets a default."""
    record = _record()
    delattr(record, field)
    task_id, rebuilt = _round_trip(record)
    assert task_id == 7
    assert type(rebuilt.name) is str and type(rebuilt.levelno) is int and type(rebuilt.created) is float
    if field not in ("msg", "args"):
        assert rebuilt.getMessage() == "hello world"
    defaults = {
        "name": "<logexec: could not read record.name: AttributeError>",
        "lineno": 0,
        "funcName": "(unknown function)",
        "pathname": "(unknown file)",
        "module": "Unknown module",
        "levelname": "WARNING",  # from levelno
        "levelno": logging.WARNING,  # from levelname
        "exc_text": None,
        "stack_info": None,
    }
    if field in defaults:
        assert getattr(rebuilt, field) == defaults[field]


def test_a_deleted_message_becomes_the_documented_placeholder() -> None:
    """Without msg, the message says that it could not be merged, and why."""
    record = _record()
    del record.msg
    _, rebuilt = _round_trip(record)
    assert rebuilt.getMessage().startswith(_records.MESSAGE_FAILURE_PREFIX + "AttributeError")
    assert "msg=<missing: AttributeError" in rebuilt.getMessage()


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("name", 5, "5"),
        ("name", None, "None"),
        ("levelno", "loud", logging.WARNING),  # from levelname
        ("levelno", True, 1),
        ("created", 12, 12),  # a number already: the parent's fast path leaves it (it computes)
        ("created", "soon", None),  # now, as a fresh record would have
    ],
)
def test_odd_field_types_are_repaired_not_fatal(field: str, value: object, expected: object) -> None:
    """A standard field of an odd type is repaired (name to str, levelno to int, created to a number)."""
    for record in (_record(), _SubRecord("transport.test", logging.WARNING, "/a/b.py", 12, "m", None, None)):
        setattr(record, field, value)
        _, rebuilt = _round_trip(record)
        repaired = getattr(rebuilt, field)
        if expected is None:
            assert type(repaired) is float
        else:
            assert repaired == expected and type(repaired) in (type(expected), float)


class _SubRecord(logging.LogRecord):
    """A LogRecord subclass: takes the careful path in the worker."""


class _RaisingRecord(logging.LogRecord):
    """A subclass whose levelname and lineno are properties that raise."""

    @property
    def levelname(self) -> str:
        raise RuntimeError("no levelname today")

    @levelname.setter
    def levelname(self, value: str) -> None:
        pass

    @property
    def lineno(self) -> int:
        raise RuntimeError("no lineno today")

    @lineno.setter
    def lineno(self, value: int) -> None:
        pass


def test_a_subclass_whose_property_raises_still_sends_the_record() -> None:
    """A field served by a raising property takes the plain record's value; the rest travel."""
    record = _RaisingRecord("sub", logging.ERROR, "/a/b.py", 3, "x %s", ("y",), None)
    _, rebuilt = _round_trip(record)
    assert rebuilt.getMessage() == "x y"
    assert rebuilt.levelname == "ERROR" and rebuilt.lineno == 0 and rebuilt.name == "sub"


class _BadStr:
    def __str__(self) -> str:
        raise ValueError("no str")

    def __repr__(self) -> str:
        raise ValueError("no repr")


def test_a_msg_whose_str_raises_becomes_the_placeholder() -> None:
    """A msg whose __str__ (and __repr__) raise: the record arrives with an explanation."""
    _, rebuilt = _round_trip(_record(_BadStr(), None))
    message = rebuilt.getMessage()
    assert message.startswith(_records.MESSAGE_FAILURE_PREFIX + "ValueError")
    assert "msg=<unrepresentable _BadStr: ValueError>" in message


class _BadStrError(Exception):
    def __str__(self) -> str:
        raise ValueError("no str")

    def __repr__(self) -> str:
        raise ValueError("no repr")


@pytest.mark.parametrize("exc_info", [True, (1, 2, 3), "text", (None, None, None)])
def test_an_odd_exc_info_becomes_text(exc_info: object) -> None:
    """exc_info that is not an exception triple is described in exc_text, not fatal."""
    record = _record()
    record.exc_info = exc_info  # type: ignore[assignment]
    _, rebuilt = _round_trip(record)
    assert isinstance(rebuilt.exc_text, str) and rebuilt.exc_info is None


def test_an_exception_whose_str_raises_is_rendered() -> None:
    """An exception whose __str__ and __repr__ raise still gives a traceback."""
    try:
        raise _BadStrError()
    except _BadStrError:
        record = logging.getLogger("t").makeRecord("t", logging.ERROR, "p", 1, "failed", (), sys.exc_info())
    _, rebuilt = _round_trip(record)
    assert rebuilt.exc_text is not None and "_BadStrError" in rebuilt.exc_text


def test_lone_surrogates_travel() -> None:
    """Text with lone surrogates, in the message and in extras, arrives unchanged."""
    _, rebuilt = _round_trip(_record("a \udc80 %s", ("\ud800",), note="\udfff"))
    assert rebuilt.getMessage() == "a \udc80 \ud800" and rebuilt.note == "\udfff"  # type: ignore[attr-defined]


@pytest.mark.parametrize("damage", ["none", "subclass", "deleted field"])
def test_a_non_string_key_in_the_record_dict_travels(damage: str) -> None:
    """An attribute under a non-str key (record.__dict__[1] = ...) arrives under that key, on every path."""
    record: logging.LogRecord = _record()
    if damage == "subclass":
        record = _SubRecord("transport.test", logging.WARNING, "/a/b.py", 12, "m", None, None)
    if damage == "deleted field":
        del record.lineno
    record.__dict__[1] = "one"  # type: ignore[index]
    _, rebuilt = _round_trip(record)
    assert vars(rebuilt)[1] == "one"  # type: ignore[index]


class _PicklesOnlySometimes:
    """Pickles on every other attempt: alone yes, beside the others no."""

    calls = 0

    def __reduce__(self) -> tuple[object, ...]:
        type(self).calls += 1
        if type(self).calls % 2:
            raise TypeError("not this time")
        return (str, ("pickled",))

    def __repr__(self) -> str:
        return "<sometimes>"


def test_a_value_that_pickles_only_sometimes_still_sends_the_record() -> None:
    """When pickling fails even after the reprs, everything that is not plain travels as text."""
    _PicklesOnlySometimes.calls = 0
    _, rebuilt = _round_trip(_record(odd=_PicklesOnlySometimes()))
    assert rebuilt.getMessage() == "hello world" and rebuilt.odd == "<sometimes>"  # type: ignore[attr-defined]


# The parent: only the failing parts are replaced, and only ProtocolError is raised ------------


class _TwoArgError(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(a)
        self.b = b


def test_an_extra_that_will_not_rebuild_becomes_a_placeholder_beside_good_ones() -> None:
    """Only the extra that fails to unpickle is replaced; the others and every field arrive whole."""
    _, rebuilt = _round_trip(_record(bad=_TwoArgError("a", "b"), good={"x": [1, 2]}, when=1.5))
    placeholder = rebuilt.bad  # type: ignore[attr-defined]
    assert isinstance(placeholder, _records.Unrebuilt)
    assert rebuilt.good == {"x": [1, 2]} and rebuilt.when == 1.5  # type: ignore[attr-defined]
    assert rebuilt.getMessage() == "hello world"
    text = repr(placeholder)
    assert text.startswith(
        "<logexec: could not rebuild tests.test_transport._TwoArgError in the parent: TypeError: "
    )
    assert "missing 1 required positional argument: 'b'" in text
    assert text.endswith("; args=('a',) state={'b': 'b'}>")
    assert str(placeholder) == text
    # A handler that pickles records on (QueueHandler, SocketHandler) gets the text.
    assert pickle.loads(pickle.dumps(placeholder)) == text


def test_a_class_the_parent_cannot_import_becomes_a_placeholder(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value of a class from a module the parent lacks arrives as a placeholder naming it."""
    import types

    module = types.ModuleType("logexec_only_in_the_worker")

    class Thing:
        def __init__(self) -> None:
            self.x = 1

    Thing.__module__, Thing.__qualname__ = module.__name__, "Thing"
    module.Thing = Thing  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    frame = _framing.encode_record(_record(thing=Thing(), kind=Thing), 1)
    monkeypatch.delitem(sys.modules, module.__name__)
    _, rebuilt = _records.decode_record(frame[_framing.HEADER_SIZE :])
    assert repr(rebuilt.thing) == (  # type: ignore[attr-defined]
        "<logexec: could not rebuild logexec_only_in_the_worker.Thing in the parent: "
        "ModuleNotFoundError: No module named 'logexec_only_in_the_worker'; args=() state={'x': 1}>"
    )
    assert repr(rebuilt.kind) == (  # type: ignore[attr-defined]
        "<logexec: could not rebuild logexec_only_in_the_worker.Thing in the parent: "
        "ModuleNotFoundError: No module named 'logexec_only_in_the_worker'>"
    )


def test_the_last_resort_rebuilds_no_class_and_keeps_the_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """If even the careful unpickler fails, every class becomes a placeholder; the fields stay whole."""

    def refuse(self: object) -> None:
        raise RuntimeError("careful unpickling failed")

    frame = _framing.encode_record(_record(bad=_TwoArgError("a", "b"), good=[1]), 1)
    monkeypatch.setattr(_rebuild._CarefulUnpickler, "load", refuse)
    _, rebuilt = _records.decode_record(frame[_framing.HEADER_SIZE :])
    assert rebuilt.getMessage() == "hello world" and rebuilt.good == [1]  # type: ignore[attr-defined]
    assert repr(rebuilt.bad).startswith(  # type: ignore[attr-defined]
        "<logexec: could not rebuild tests.test_transport._TwoArgError in the parent: not rebuilt, "
        "because the record did not unpickle (RuntimeError: careful unpickling failed)"
    )


def test_the_careful_unpickler_finds_the_private_opcodes_it_guards() -> None:
    """pickle._Unpickler still has the dispatch table and opcodes the careful unpickler wraps."""
    base = pickle._Unpickler.dispatch
    for opcode in (
        pickle.REDUCE,
        pickle.NEWOBJ,
        pickle.NEWOBJ_EX,
        pickle.BUILD,
        pickle.SETITEMS,
        pickle.APPENDS,
    ):
        assert opcode[0] in base
        assert _rebuild._CarefulUnpickler.dispatch[opcode[0]] is not base[opcode[0]]


def _values(**changes: object) -> tuple[object, ...]:
    values = list(_records.record_values(_record(), 7))
    for field, value in changes.items():
        index = {"task_id": -2, "extras": -1}.get(field)
        values[_records.RECORD_FIELDS.index(field) if index is None else index] = value
    return tuple(values)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"not a pickle", "is not a pickle that logexec could have written"),
        (pickle.dumps([1, 2]), "must unpickle to a tuple of 23 values, got list"),
        (pickle.dumps((1, 2)), "must unpickle to a tuple of 23 values, got a tuple of 2"),
        (pickle.dumps(_values(task_id="7")), "task id must be an int or None, got str"),
        (pickle.dumps(_values(extras=5)), "extras must be a dict or None, got int"),
        (
            pickle.dumps(_values(extras={"name": 5, "levelno": 1})),
            "extras must not set levelno or name",
        ),
    ],
)
def test_what_is_not_a_record_is_a_protocol_error(payload: bytes, problem: str) -> None:
    """Bytes that record_values could not have written raise ProtocolError, saying what is wrong."""
    with pytest.raises(_records.ProtocolError, match=problem.replace("(", r"\(")):
        _records.decode_record(payload)


def test_odd_field_types_from_the_wire_are_repaired_in_the_parent() -> None:
    """A payload whose name/levelno/created have odd types is repaired, not refused."""
    _, rebuilt = _records.decode_record(pickle.dumps(_values(name=5, levelno="x", created=3)))
    assert rebuilt.name == "5" and rebuilt.levelno == logging.WARNING and rebuilt.created == 3.0


@pytest.mark.parametrize("payload", [None, 5, "text", [b"bytes"]])
def test_a_payload_that_is_not_bytes_is_a_protocol_error(payload: object) -> None:
    """decode_record given something other than bytes raises ProtocolError naming its type."""
    with pytest.raises(_records.ProtocolError, match=f"must be bytes, got {type(payload).__qualname__}"):
        _records.decode_record(payload)


class _Collector:
    """A stand-in for the worker's channel: keeps the frames it is given."""

    task_id = 9

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    fallback = None

    def put(self, frame: bytes, record: logging.LogRecord) -> None:
        self.frames.append(frame)


class _DeleteLineno(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        del record.lineno
        return True


def test_a_filter_that_deletes_a_field_does_not_look_like_a_lost_parent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through the worker's handler, a filter's `del record.lineno` still sends the record, silently."""
    from logexec._channel import _setup

    channel = _Collector()
    handler = _setup.WorkerHandler(channel)  # type: ignore[arg-type]  # a channel in all but type
    handler.addFilter(_DeleteLineno())
    logger = logging.getLogger("transport.filtered")
    logger.propagate = False
    logger.addHandler(handler)
    token = _setup._TASK.set(9)  # as run_task sets it: the record is task 9's
    try:
        logger.warning("still %s", "here")
    finally:
        _setup._TASK.reset(token)
    assert capsys.readouterr().err == ""
    (frame,) = channel.frames
    task_id, rebuilt = _records.decode_record(frame[_framing.HEADER_SIZE :])
    assert task_id == 9 and rebuilt.getMessage() == "still here" and rebuilt.lineno == 0
