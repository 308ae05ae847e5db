"""The seam between the channel and a front (logexec._channel), used as a new front would."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from logexec._channel import LogChannel, WorkerExit
from logexec._dispatch import Dispatcher

from . import channel_tasks as tasks
from .conftest import ListHandler

pytestmark = pytest.mark.integration

TIMEOUT = 60
RECORDS = 50


@pytest.mark.timeout(120)
def test_a_front_learns_of_a_dead_worker_with_its_pid_after_its_records(
    mp_context: Any, collect: Callable[..., ListHandler]
) -> None:
    """A worker killed after logging: on_worker_exit hears its pid, after all its records."""
    handler = collect(tasks.LOGGER)
    exits: list[WorkerExit] = []
    handled_when_told: list[int] = []
    heard = threading.Event()

    def on_worker_exit(told: Sequence[WorkerExit]) -> bool:
        exits.extend(told)
        handled_when_told.append(len(handler.records))
        heard.set()
        return True

    channel = LogChannel(Dispatcher(), on_worker_exit)
    config = channel.open()
    process = mp_context.Process(target=tasks.log_then_die, args=(config, RECORDS))
    process.start()
    channel.start()  # after the fork: no thread may run while a fork worker is made
    try:
        process.join(timeout=TIMEOUT)
        assert heard.wait(timeout=TIMEOUT)
    finally:
        channel.stop()
    assert channel.wait_stopped(timeout=TIMEOUT)
    assert [(told.pid, told.cut_off) for told in exits] == [(process.pid, 0)]
    assert handled_when_told == [RECORDS]
    assert handler.messages() == [f"record {number}" for number in range(RECORDS)]


@pytest.mark.timeout(30)
def test_a_channel_stopped_unopened_and_unstarted_ends_at_once() -> None:
    """A channel that never served a worker stops at once, and cannot be opened again."""
    channel = LogChannel(Dispatcher())
    channel.stop()
    assert channel.wait_stopped(timeout=TIMEOUT)
    with pytest.raises(RuntimeError, match="already stopped"):
        channel.open()
