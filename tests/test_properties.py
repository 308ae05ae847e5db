"""Property tests of the record transport: no record is lost or broken by its content.

The invariants, stated once:

* **Round trip.** For any record, ``decode_record(encode_record(record))`` gives exactly one
  record whose message is what ``record.getMessage()`` gave in the worker (or the documented
  placeholder, when that raises), whose standard fields equal the originals, and whose
  every extra equals the original value, or is its ``repr()`` (when it will not pickle), or
  holds an ``Unrebuilt`` placeholder naming its class where (and only where) an object
  cannot be rebuilt in the parent.
* **Parent safety.** ``decode_record`` raises nothing but ``ProtocolError``, for any bytes.
* **End to end.** Through a real ``LoggingProcessPoolExecutor``, every such record arrives
  exactly once, whole, and the task that logged it returns normally.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import pickletools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from logexec import LoggingProcessPoolExecutor, _records
from logexec._channel import _framing
from logexec._records import ProtocolError, Unrebuilt, _fields

from . import property_tasks as tasks
from .conftest import ListHandler

# Classes that pickle in the worker but cannot be rebuilt in the parent, by spec kind.
UNREBUILDABLE = {
    "two_arg": "TwoArgError",
    "keyword_only": "KeywordOnlyError",
    "refusing_setstate": "RefusingSetstate",
    "refusing_dict": "RefusingDict",
    "ghost": "Ghost",
}
RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "spec_index"}

texts = st.text(st.characters(), max_size=12)  # any code point, lone surrogates included
keys = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(lambda key: key not in RESERVED)
plain_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    texts,
    st.binary(max_size=8),
    st.datetimes(),
    st.dates(),
    st.decimals(allow_nan=False),
    st.complex_numbers(allow_nan=False),
).map(lambda value: ("plain", value))
odd_values = st.one_of(
    texts.map(lambda text: ("unpicklable", text)),
    st.tuples(st.just("two_arg"), texts, texts),
    st.tuples(st.just("keyword_only"), st.integers()),
    st.tuples(st.just("bad_str"), texts),
    st.tuples(st.just("refusing_setstate"), st.integers()),
    st.tuples(st.just("refusing_dict"), st.dictionaries(keys, st.integers(), min_size=1, max_size=2)),
    st.tuples(st.just("ghost"), st.integers()),
)
values = st.recursive(
    plain_values | odd_values,
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda items: ("list", items)),
        st.lists(children, max_size=3).map(lambda items: ("tuple", items)),
        st.dictionaries(keys, children, max_size=3).map(lambda items: ("dict", items)),
    ),
    max_leaves=6,
)
formats = st.lists(
    st.sampled_from(["%s", "%r", "%d", "%(a)s", "%%", "%x", "%5.2f", "%"]) | texts, max_size=4
).map("".join)
record_specs = st.fixed_dictionaries(
    {
        "name": st.from_regex(r"prop(\.[a-z]{1,5}){0,2}", fullmatch=True),
        "level": st.sampled_from([10, 20, 30, 40, 50]) | st.integers(0, 60),
        "pathname": texts,
        "lineno": st.integers(0, 10**6),
        "func": texts,
        "msg": formats.map(lambda text: ("plain", text)) | values,
        "args": st.none()
        | st.lists(values, max_size=3).map(lambda items: ("tuple", items))
        | st.dictionaries(st.sampled_from(["a", "b"]) | keys, values, min_size=1, max_size=3).map(
            lambda items: ("mapping", items)
        ),
        "extra": st.dictionaries(keys, values, max_size=4),
        "exc": st.none() | st.tuples(st.sampled_from(["value", "two_arg", "keyword_only", "bad_str"]), texts),
        "stack_info": st.none() | texts,
    }
)


def _spec(**changes: Any) -> dict[str, Any]:
    """A plain spec, for explicit examples."""
    spec: dict[str, Any] = {
        "name": "prop",
        "level": 20,
        "pathname": "/a/b.py",
        "lineno": 1,
        "func": "f",
        "msg": ("plain", "hello %s"),
        "args": ("tuple", [("plain", "world")]),
        "extra": {},
        "exc": None,
        "stack_info": None,
    }
    spec.update(changes)
    return spec


def _matches(spec: Any, rebuilt: Any) -> bool:
    kind = spec[0]
    if kind == "plain":
        return type(rebuilt) is type(spec[1]) and bool(rebuilt == spec[1])
    if kind in UNREBUILDABLE:
        return isinstance(rebuilt, Unrebuilt) and vars(rebuilt)["what"].endswith("." + UNREBUILDABLE[kind])
    if kind == "bad_str":
        return type(rebuilt) is tasks.BadStrError and rebuilt.args == (spec[1],)
    if kind in ("list", "tuple"):
        expected_type = list if kind == "list" else tuple
        return (
            type(rebuilt) is expected_type
            and len(rebuilt) == len(spec[1])
            and all(_matches(item, value) for item, value in zip(spec[1], rebuilt, strict=True))
        )
    if kind == "dict":
        return (
            type(rebuilt) is dict
            and rebuilt.keys() == spec[1].keys()
            and all(_matches(item, rebuilt[key]) for key, item in spec[1].items())
        )
    raise AssertionError(f"unexpected spec {spec!r}")


def _check_extras(spec: dict[str, Any], rebuilt: logging.LogRecord) -> None:
    for key, item in spec["extra"].items():
        value = vars(rebuilt)[key]
        if tasks.has_kind(item, frozenset({"unpicklable"})):
            # Will not pickle in the worker: its repr travels. Built again here for the
            # expected text; ghosts are forgotten again before anything is decoded.
            expected = _fields._safe_repr(tasks.build(item))
            tasks.forget_ghosts()
            assert value == expected, key
        else:
            assert _matches(item, value), (key, item, value)


def _check_fields(local: logging.LogRecord, rebuilt: logging.LogRecord, message: str) -> None:
    assert type(rebuilt) is logging.LogRecord
    assert rebuilt.msg == message and rebuilt.args is None and rebuilt.exc_info is None
    for field in ("name", "levelno", "levelname", "pathname", "filename", "module", "lineno", "funcName"):
        assert getattr(rebuilt, field) == getattr(local, field), field
    assert rebuilt.stack_info == local.stack_info
    assert getattr(rebuilt, "taskName", None) == getattr(local, "taskName", None)


def _round_trip(record: logging.LogRecord) -> tuple[int | None, logging.LogRecord]:
    frame = _framing.encode_record(record, 3)
    size, kind = _framing.HEADER.unpack_from(frame, 0)
    assert kind == _framing.KIND_RECORD and size == len(frame) - _framing.HEADER_SIZE  # one frame
    tasks.forget_ghosts()  # what only the worker had, the parent cannot import
    return _records.decode_record(memoryview(frame)[_framing.HEADER_SIZE :])


@settings(max_examples=100, deadline=None)
@given(record_specs)
@example(_spec(extra={"error": ("two_arg", "a", "b")}))
@example(_spec(extra={"ghost": ("list", [("ghost", 1), ("plain", 2)])}))
@example(_spec(extra={"refusing": ("refusing_dict", {"a": 1}), "fine": ("plain", 1)}))
# Found: SETITEMS with a mark swaps the unpickler's stack list; the guard kept the old one.
@example(_spec(extra={"_": ("refusing_dict", {"_": 0, "a": 0})}))
@example(_spec(msg=("bad_str", "x"), args=None))
@example(_spec(msg=("plain", "%(a)s \udc80"), args=("mapping", {"a": ("unpicklable", "u")})))
@example(_spec(exc=("bad_str", "boom"), stack_info="Stack:\n  here"))
def test_any_record_round_trips_whole(spec: dict[str, Any]) -> None:
    """A generated record comes back once, with its message, its fields, and each extra (or its stand-in)."""
    record = tasks.make_record(spec)
    message = _records.render_message(record)
    exc_text = _records.render_exception(record)
    task_id, rebuilt = _round_trip(record)
    assert task_id == 3
    _check_fields(record, rebuilt, message)
    assert rebuilt.created == record.created and rebuilt.msecs == record.msecs
    assert rebuilt.process == record.process and rebuilt.thread == record.thread
    assert rebuilt.exc_text == exc_text
    if spec["exc"] is not None:
        assert exc_text is not None and exc_text.startswith("Traceback (most recent call last):")
    _check_extras(spec, rebuilt)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
@example(b"")
@example(pickle.dumps(None))
@example(pickle.dumps(tuple(range(_records.VALUES_SIZE))))
@example(pickle.dumps((None,) * _records.VALUES_SIZE))
def test_decode_record_raises_only_protocol_error_for_any_bytes(payload: bytes) -> None:
    """decode_record returns a LogRecord or raises ProtocolError, whatever the bytes."""
    try:
        _, record = _records.decode_record(payload)
    except ProtocolError:
        return
    assert type(record) is logging.LogRecord
    assert type(record.name) is str and type(record.levelno) is int


_VALID_PAYLOADS = [
    _framing.encode_record(tasks.make_record(spec), 5)[_framing.HEADER_SIZE :]
    for spec in (
        _spec(),
        _spec(extra={"when": ("plain", 1.5), "what": ("dict", {"k": ("two_arg", "a", "b")})}),
        _spec(exc=("value", "boom"), stack_info="stack"),
    )
]


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    """A valid payload with bytes flipped, cut, inserted or deleted."""
    payload = bytearray(draw(st.sampled_from(_VALID_PAYLOADS)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, max(len(payload) - 1, 0)))
        operation = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if operation == "flip" and payload:
            payload[position] ^= draw(st.integers(1, 255))
        elif operation == "cut":
            del payload[position:]
        elif operation == "insert":
            payload[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif payload:
            del payload[position]
    return bytes(payload)


def _grows_the_memo_beyond_the_payload(payload: bytes) -> bool:
    """Whether a damaged payload puts into the unpickler's memo at an index it cannot need.

    CPython's C unpickler grows its memo to twice such an index at once and zeroes it: a
    148-byte payload whose flipped byte made a LONG_BINPUT of 1.3e9 took 40 s and 20 GB of
    address space before failing (as a ProtocolError: the claim below still held, after the
    test's timeout). logexec's own payloads never hold a PUT (protocol 5 memoizes with
    MEMOIZE), so only damage makes one; the README's limits say what it costs.
    """
    with contextlib.suppress(Exception):
        for opcode, argument, _ in pickletools.genops(payload):
            if opcode.name in ("BINPUT", "LONG_BINPUT", "PUT") and int(argument) > len(payload):
                return True
    return False


@settings(max_examples=300, deadline=None)
@given(mutated_payloads())
def test_decode_record_raises_only_protocol_error_for_damaged_records(payload: bytes) -> None:
    """A damaged record payload decodes to a LogRecord or raises ProtocolError, nothing else."""
    assume(not _grows_the_memo_beyond_the_payload(payload))
    try:
        _, record = _records.decode_record(payload)
    except ProtocolError:
        return
    assert type(record) is logging.LogRecord
    assert type(record.name) is str and type(record.levelno) is int
    tasks.forget_ghosts()


# With real processes ---------------------------------------------------------------------


@pytest.fixture(scope="module", params=["fork", "spawn"])
def shared_executor(request: pytest.FixtureRequest) -> Iterator[LoggingProcessPoolExecutor]:
    """One executor per start method for every example (starting workers is the slow part)."""
    context = multiprocessing.get_context(request.param)
    executor = LoggingProcessPoolExecutor(max_workers=2, mp_context=context)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


@pytest.mark.integration
@settings(
    max_examples=20,
    deadline=None,
    # clean_logging (autouse, per test) restores the root logger after the whole test;
    # each example clears the handler it adds itself.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(record_specs, min_size=1, max_size=3))
def test_records_cross_a_real_pool_once_and_whole(
    shared_executor: LoggingProcessPoolExecutor, specs: list[dict[str, Any]]
) -> None:
    """Generated records logged in a worker reach the parent's handlers once and whole; the task returns."""
    handler = ListHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    # The parent's levels decide at dispatch, as for a call made here: let every level
    # through. (Level 0 never passes: logging treats it as disabled, logging.disable(0).)
    level = root.level
    root.setLevel(1)
    try:
        seen = shared_executor.submit(tasks.log_specs, specs).result(timeout=30)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    arrived = sorted(handler.records, key=lambda record: vars(record)["spec_index"])
    passed = [index for index, spec in enumerate(specs) if spec["level"] >= 1]
    assert [vars(record)["spec_index"] for record in arrived] == passed
    for spec, worker_view, rebuilt in zip(
        [specs[index] for index in passed], [seen[index] for index in passed], arrived, strict=True
    ):
        local = tasks.make_record(spec)  # the same spec built here: the fields it fixes
        tasks.forget_ghosts()
        _check_fields(local, rebuilt, worker_view["message"])
        assert rebuilt.created == worker_view["created"] and rebuilt.process == worker_view["process"]
        if spec["exc"] is not None:
            assert rebuilt.exc_text is not None and rebuilt.exc_text.startswith("Traceback")
        _check_extras(spec, rebuilt)
