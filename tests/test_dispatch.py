"""``_dispatch``: the ``handlers=`` check, shared by the process pool and the Dask adapter."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from logexec import LoggingProcessPoolExecutor
from logexec._dispatch import check_handlers, handle_safely


@pytest.mark.timeout(5)
def test_none_means_the_parents_configuration() -> None:
    """handlers=None is kept as None: dispatch by logger name."""
    assert check_handlers(None) is None


@pytest.mark.timeout(5)
def test_handlers_become_a_tuple_in_order() -> None:
    """Any iterable of handlers (a list, a generator) becomes a tuple, in order."""
    first, second = logging.NullHandler(), logging.StreamHandler()
    assert check_handlers([first, second]) == (first, second)
    assert check_handlers(handler for handler in (second, first)) == (second, first)


@pytest.mark.timeout(5)
@pytest.mark.parametrize("empty", [[], (), iter([])], ids=["list", "tuple", "iterator"])
def test_no_handler_at_all_is_refused(empty: Any) -> None:
    """An empty handlers= is a ValueError naming the parameter, the rule and the value.

    It would otherwise drop every worker record without a word.
    """
    with pytest.raises(ValueError) as raised:
        check_handlers(empty)
    message = str(raised.value)
    assert message.startswith(f"handlers must be None or contain at least one logging.Handler, got {empty!r}")
    assert "[logging.NullHandler()]" in message


@pytest.mark.timeout(5)
def test_the_executor_refuses_empty_handlers_before_starting_anything() -> None:
    """LoggingProcessPoolExecutor(handlers=[]) fails in __init__, like the other argument checks."""
    with pytest.raises(
        ValueError, match=r"handlers must be None or contain at least one logging\.Handler, got \[\]"
    ):
        LoggingProcessPoolExecutor(handlers=[])


@pytest.mark.timeout(5)
def test_a_null_handler_is_the_way_to_drop_records_on_purpose() -> None:
    """[logging.NullHandler()] is accepted: dropping records must be said explicitly."""
    handler = logging.NullHandler()
    assert check_handlers([handler]) == (handler,)


class _DroppingLogger(logging.Logger):
    """A Logger whose own filter() drops everything, with no filter in its list."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


class _Collecting(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.timeout(5)
def test_a_logger_class_with_its_own_filter_method_still_decides() -> None:
    """Dispatch skips Logger.filter only when it has nothing to check: an overriding class is asked."""
    logger = _DroppingLogger("logexec.test.dropping")
    logger.parent = logging.getLogger()
    handler = _Collecting()
    logger.addHandler(handler)
    record = logging.LogRecord(logger.name, logging.WARNING, __file__, 1, "dropped", None, None)
    handle_safely(logger, record)
    assert handler.records == []
    plain = logging.Logger("logexec.test.plain")
    plain.addHandler(handler)
    handle_safely(plain, record)
    plain.addFilter(lambda _: False)
    handle_safely(plain, record)
    assert handler.records == [record]
