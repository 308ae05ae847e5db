"""The wire format between a worker and the parent: frames and the handshake.

Everything here is pure (no sockets, no threads), so the protocol can be tested without
processes. A frame is a fixed header (payload length, kind) followed by the payload: a
record (encoded by ``logexec._records``) or a barrier (a task id).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
from typing import Any

from .._records import encode_values, record_values

# Length then kind. Eight bytes of length so that no record is ever too large to frame.
HEADER = struct.Struct("!QB")
HEADER_SIZE = HEADER.size
KIND_RECORD = 0
KIND_BARRIER = 1
# The parent's answer to a barrier: every earlier frame on the connection was handled. It
# carries the barrier's number on its connection (see barrier_ack), so that a worker whose
# wait was interrupted (a signal handler raised) never takes that late answer for the
# answer to its next barrier.
ACK_BIT = 0x80

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


def answer_challenge(key: bytes, challenge: bytes) -> bytes:
    """Return the digest that proves knowledge of ``key`` for this ``challenge``."""
    return hmac.new(key, challenge, hashlib.sha256).digest()


def encode_barrier(task_id: int) -> bytes:
    """Frame a barrier: "answer me once everything before this is handled"."""
    payload = TASK_ID.pack(task_id)
    return HEADER.pack(len(payload), KIND_BARRIER) + payload


def barrier_ack(number: int) -> bytes:
    """The answer to the ``number``-th barrier on a connection (counted from 1).

    One byte, so that it is never half read; never GOODBYE, whose high bit is clear. Seven
    bits of the number are enough: the answers still unread when a worker waits are those
    of its barriers whose waits were interrupted since its last complete wait.
    """
    return bytes((ACK_BIT | (number & 0x7F),))


def decode_barrier(payload: Any) -> int:
    task_id: int = TASK_ID.unpack(payload)[0]
    return task_id


def encode_record(record: logging.LogRecord, task_id: int | None) -> bytes:
    """Frame one record for the wire. Never raises."""
    # The record policy (what a field that will not read or pickle becomes) is _records'.
    payload = encode_values(record_values(record, task_id))
    return _pack_header(len(payload), KIND_RECORD) + payload


_pack_header = HEADER.pack
