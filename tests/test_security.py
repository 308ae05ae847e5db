"""Only the executor's own workers can reach its listener."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

import pytest

from logexec._channel import _framing

from . import helpers
from .conftest import ListHandler, socket_protocol_only

pytestmark = pytest.mark.integration


def test_socket_lives_in_a_private_directory(make_executor: Callable[..., Any]) -> None:
    """The listener's socket is in a directory only this user can enter."""
    with make_executor(1) as executor:
        address = executor._logexec_listener.address
        mode = stat.S_IMODE(os.stat(os.path.dirname(address)).st_mode)
        assert mode == 0o700
        executor.submit(helpers.identity, 1).result(timeout=30)
    assert not os.path.exists(os.path.dirname(address))


@socket_protocol_only
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
        greeting = _receive(intruder, 1 + _framing.CHALLENGE_SIZE)
        assert greeting[:1] == _framing.GREETING
        # A wrong proof, then a frame the listener must never unpickle.
        intruder.sendall(b"\0" * 40 + b"\0" * 9 + b"cos\nsystem\n(S'echo pwned'\ntR.")
        assert intruder.recv(16) == b""  # the listener hung up
        intruder.close()
        assert executor.submit(helpers.log_n, 3).result(timeout=30) == 3
    refused = [record for record in handler.records if record.name == "logexec"]
    assert any("failed authentication" in record.getMessage() for record in refused)
    assert len([record for record in handler.records if record.name == "tests.worker"]) == 3
    assert logging.getLogger().handlers  # parent logging intact


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the listener hung up early"
        data += chunk
    return data


def _read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def _ring_fds_held(name: str) -> list[str]:
    """What this process's descriptors point at, for memfds called ``name``."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if f"memfd:{name}" in target:
                held.append(target)
    return held


@socket_protocol_only
@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs memfd")
@pytest.mark.parametrize("start_method", ["spawn"])
@pytest.mark.parametrize("authenticated", [False, True], ids=["wrong-key", "bad-ring"])
def test_descriptor_sent_with_a_refused_hello_is_closed(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler], authenticated: bool
) -> None:
    """A descriptor that rides with a refused hello (a wrong proof, or a proper one whose
    "ring" is not a sealed ring of the right size) is closed, not kept or mapped."""
    handler = collect()
    with make_executor(1) as executor:
        executor.submit(helpers.identity, 1).result(timeout=30)  # the pool is up
        name = f"intruder-ring-{authenticated}"
        fake_ring = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fake_ring, 4096)  # neither the right size nor sealed
        intruder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        intruder.settimeout(10)
        intruder.connect(executor._logexec_listener.address)
        challenge = _receive(intruder, 1 + _framing.CHALLENGE_SIZE)[1:]
        key = executor._logexec_config.key if authenticated else b"\0" * 32
        proof = _framing.answer_challenge(key, challenge)
        hello = proof + _framing.HELLO_TAIL.pack(os.getpid(), _framing.VIA_RING)
        socket.send_fds(intruder, [hello], [fake_ring])
        os.close(fake_ring)
        # The listener hangs up; an authenticated peer is told why first.
        farewell = _read_to_eof(intruder)
        assert farewell == b"" if not authenticated else farewell.startswith(_framing.GOODBYE)
        intruder.close()
        assert _ring_fds_held(name) == []
        assert executor.submit(helpers.log_n, 2).result(timeout=30) == 2
    messages = [record.getMessage() for record in handler.records if record.name == "logexec"]
    if authenticated:
        assert any("shared-memory ring is unusable" in message for message in messages), messages
    else:
        assert any("failed authentication" in message for message in messages), messages
    assert len([record for record in handler.records if record.name == "tests.worker"]) == 2
