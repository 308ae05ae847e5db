"""A signal handler's exception inside a log call (issue 25, item 1): the frame goes out whole.

A repeating timer whose handler raises (as a ``signal.alarm`` timeout does) lands in log calls
that wait on a slow parent: in the ring's wait for room, a socket's blocked send, the portable
connection's. Every record whose call returned is handled once and whole, no record is handled
twice or cut, and the channel stays usable: later tasks' records arrive and nothing goes to the
worker's stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from logexec._channel import _transports

from . import signal_tasks as tasks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RESULT_TIMEOUT = 60
_MESSAGE = re.compile(r"(\S+) (\d+)(?: (.*))?", re.DOTALL)
# The signal may also land while the record's message is merged (in the worker's encoder):
# the record then carries this note and its arguments instead, by the record policy.
_UNMERGED = re.compile(
    r"logexec: could not merge the message of this record: (?:Alarm|KeyboardInterrupt)"
    r".*args=\('timed', (\d+),"
)


class SlowHandler(logging.Handler):
    """Keeps each message, taking ``delay`` seconds per record: the slow parent."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(self.delay)
        self.messages.append(record.getMessage())


def _available(transport: str) -> bool:
    return {
        _transports.RING: _transports.ring_available,
        _transports.SOCKET: _transports.socket_available,
        _transports.PORTABLE: _transports.portable_available,
    }[transport]()


# (records, characters each, the parent's seconds per record, the timer's interval): small
# records overflow the ring and wait there for room; large ones block a send halfway.
SHAPES = {
    "small": (1500, 150, 0.0005, 0.002),
    "large": (40, 150_000, 0.01, 0.003),
}


@pytest.mark.parametrize("source", ["timer", "interrupt"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("transport", list(_transports.ORDER))
def test_a_handler_that_raises_never_splits_a_frame(
    make_executor: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    transport: str,
    shape: str,
    source: str,
) -> None:
    if not _available(transport):
        pytest.skip(f"no {transport} transport on this platform")
    monkeypatch.setenv(_transports.ENV_TRANSPORT, transport)
    count, size, delay, interval = SHAPES[shape]
    handler = SlowHandler(delay)
    logger = logging.getLogger(tasks.LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    with make_executor(max_workers=1) as executor:
        pid = executor.submit(tasks.worker_pid).result(timeout=RESULT_TIMEOUT)
        future = executor.submit(tasks.log_under_signals, "timed", count, size, interval, source)
        if source == "interrupt":
            # Ctrl-C, over and over, while the task logs (it catches KeyboardInterrupt).
            while not future.done():
                time.sleep(interval)
                if handler.messages:  # the task's handler is in place once it logs
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGINT)
        try:
            returned = future.result(timeout=RESULT_TIMEOUT)
        except KeyboardInterrupt as error:  # the task's, not ours: re-raised, it would stop the session
            pytest.fail(f"the task let a KeyboardInterrupt escape: {error!r}")
        later = executor.submit(tasks.log_numbered, "later", 10).result(timeout=RESULT_TIMEOUT)
    assert later == 10
    err = capfd.readouterr().err
    assert "logexec" not in err, err[-3000:]
    handled: list[int] = []
    for message in handler.messages:
        unmerged = _UNMERGED.match(message)
        if unmerged:
            handled.append(int(unmerged.group(1)))
            continue
        match = _MESSAGE.fullmatch(message)
        assert match, message[:200]
        tag, number, body = match.group(1), int(match.group(2)), match.group(3)
        if tag == "timed":
            assert body == tasks.payload(number, size), f"record {number} arrived cut or mixed"
            handled.append(number)
    assert len(handled) == len(set(handled)), "a record was handled twice"
    missing = sorted(set(returned) - set(handled))
    assert not missing, f"{len(missing)} of {len(returned)} returned records not handled: {missing[:10]}"
    assert [m for m in handler.messages if m.startswith("later ")] == [f"later {n}" for n in range(10)]
