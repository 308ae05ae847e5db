"""Only the executor's own workers can reach its listener."""

from __future__ import annotations

import logging
import os
import socket
import stat
from typing import Any, Callable

import pytest

from . import helpers
from .conftest import ListHandler

pytestmark = pytest.mark.integration


def test_socket_lives_in_a_private_directory(make_executor: Callable[..., Any]) -> None:
    """The listener's socket is in a directory only this user can enter."""
    with make_executor(1) as executor:
        address = executor._logexec_listener.address
        mode = stat.S_IMODE(os.stat(os.path.dirname(address)).st_mode)
        assert mode == 0o700
        executor.submit(helpers.identity, 1).result(timeout=30)
    assert not os.path.exists(os.path.dirname(address))


@pytest.mark.parametrize("start_method", ["spawn"])
def test_foreign_connection_without_the_key_is_refused(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A connection that cannot answer the challenge is refused; the executor keeps working."""
    handler = collect()
    with make_executor(1) as executor:
        address = executor._logexec_listener.address
        intruder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        intruder.settimeout(10)
        intruder.connect(address)
        challenge = intruder.recv(64)
        assert len(challenge) == 32
        # A wrong proof, then a frame the listener must never unpickle.
        intruder.sendall(b"\0" * 40 + b"\0" * 9 + b"cos\nsystem\n(S'echo pwned'\ntR.")
        assert intruder.recv(16) == b""  # the listener hung up
        intruder.close()
        assert executor.submit(helpers.log_n, 3).result(timeout=30) == 3
    refused = [record for record in handler.records if record.name == "logexec"]
    assert any("failed authentication" in record.getMessage() for record in refused)
    assert len([record for record in handler.records if record.name == "tests.worker"]) == 3
    assert logging.getLogger().handlers  # parent logging intact
