"""Choosing a transport: the probes find what a platform lacks, and the switch forces one."""

from __future__ import annotations

import os
import socket

import pytest

from logexec._channel import _ring, _transports


@pytest.fixture
def no_switch(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Neither switch set, whatever this run's environment says."""
    monkeypatch.delenv(_transports.ENV_TRANSPORT, raising=False)
    monkeypatch.delenv(_transports.ENV_SHARED_MEMORY, raising=False)
    return monkeypatch


@pytest.mark.parametrize("name", _transports.ORDER)
def test_the_switch_forces_each_transport_where_it_exists(no_switch: pytest.MonkeyPatch, name: str) -> None:
    """LOGEXEC_TRANSPORT=name picks name where the platform has it, else the best one below."""
    no_switch.setenv(_transports.ENV_TRANSPORT, name)
    below = _transports.ORDER[_transports.ORDER.index(name) :]
    expected = next(candidate for candidate in below if _transports._AVAILABLE[candidate]())
    assert _transports.choose() == expected


def test_the_older_switch_means_socket(no_switch: pytest.MonkeyPatch) -> None:
    """LOGEXEC_SHARED_MEMORY=0 still turns the ring off, as a synonym of LOGEXEC_TRANSPORT=socket."""
    no_switch.setenv(_transports.ENV_SHARED_MEMORY, "0")
    expected = _transports.SOCKET if _transports.socket_available() else _transports.PORTABLE
    assert _transports.choose() == expected
    assert not _ring.enabled()


def test_a_value_that_names_no_transport_is_refused(no_switch: pytest.MonkeyPatch) -> None:
    """A typo in LOGEXEC_TRANSPORT is an error that names the variable, the choices and the value."""
    no_switch.setenv(_transports.ENV_TRANSPORT, "pipes")
    with pytest.raises(
        ValueError, match=r"LOGEXEC_TRANSPORT must be one of ring, socket, portable .*'pipes'"
    ):
        _transports.choose()


def test_without_memfd_the_best_is_the_socket(no_switch: pytest.MonkeyPatch) -> None:
    """No memfd_create (macOS), or no fcntl: no ring; the AF_UNIX connection is chosen."""
    if not _transports.socket_available():
        pytest.skip("no AF_UNIX here")
    no_switch.delattr(os, "memfd_create", raising=False)
    assert _transports.choose() == _transports.SOCKET
    assert not _ring.enabled()


def test_without_fcntl_there_is_no_ring(no_switch: pytest.MonkeyPatch) -> None:
    """A blocked ``import fcntl`` (Windows has none) rules out the ring, which seals with it."""
    no_switch.setitem(__import__("sys").modules, "fcntl", None)
    assert not _transports.has_fcntl()
    assert _transports.choose() != _transports.RING


@pytest.mark.parametrize("name", ["AF_UNIX", "CMSG_SPACE", "MSG_DONTWAIT"])
def test_without_an_af_unix_essential_the_portable_transport_is_chosen(
    no_switch: pytest.MonkeyPatch, name: str
) -> None:
    """No AF_UNIX, or no way to read a hello or a goodbye on it (Windows): the portable transport."""
    no_switch.delattr(socket, name, raising=False)
    assert _transports.choose() == _transports.PORTABLE


@pytest.mark.parametrize(
    ("spelling", "ring_off"),
    [("no", True), ("OFF", True), ("False", True), ("0", True), ("yes", False), ("On", False), ("1", False)],
)
def test_the_older_switch_accepts_the_usual_spellings(
    no_switch: pytest.MonkeyPatch, spelling: str, ring_off: bool
) -> None:
    """LOGEXEC_SHARED_MEMORY takes 1/0, true/false, yes/no, on/off in any case (no was ignored)."""
    no_switch.setenv(_transports.ENV_SHARED_MEMORY, spelling)
    assert (_transports.requested() == _transports.SOCKET) is ring_off


def test_the_older_switch_refuses_other_values(no_switch: pytest.MonkeyPatch) -> None:
    """A value of LOGEXEC_SHARED_MEMORY that is no boolean is an error naming the variable, rule, value."""
    no_switch.setenv(_transports.ENV_SHARED_MEMORY, "nein")
    with pytest.raises(ValueError, match=r"LOGEXEC_SHARED_MEMORY must be one of 1/0, .*'nein'"):
        _transports.choose()
