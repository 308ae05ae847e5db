"""The self-check's workload, shared by ``demo`` and ``--compare``: what workers log, how it is read back.

Every worker logs records numbered by its own counter, which the parent writes as one JSON
object per line (``JsonLineFormatter``); reading the file back (``verify_files``) finds what
was lost, duplicated or corrupt.
"""

from __future__ import annotations

import json
import logging
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

# The logger the workload logs to. A child of "logexec" so that the demo never touches the
# caller's root logger; propagate is switched off while the demo runs.
DEMO_LOGGER = "logexec.demo"
# Upper bound on the whole run: generous (the demo runs at ~100k records/s on 2 cores), so
# that only a real hang trips it, and the demo then reports instead of waiting forever.
BASE_TIMEOUT_SECONDS = 60.0
TIMEOUT_SECONDS_PER_RECORD = 1 / 2000


def run_timeout(records: int) -> float:
    """Seconds after which a run of ``records`` records is declared hung."""
    return BASE_TIMEOUT_SECONDS + records * TIMEOUT_SECONDS_PER_RECORD


def split_records(records: int, workers: int) -> list[int]:
    """How many records each worker logs: ``records`` in total, as even as possible."""
    share, remainder = divmod(records, workers)
    return [share + (1 if worker < remainder else 0) for worker in range(workers)]


def format_line(worker: int, counter: int, pid: int, message: str, padding: str = "") -> str:
    """One JSON object per line; the demo and the naive alternatives write the same lines."""
    fields: dict[str, Any] = {"worker": worker, "counter": counter, "pid": pid, "message": message}
    if padding:
        fields["padding"] = padding
    return json.dumps(fields)


class JsonLineFormatter(logging.Formatter):
    """Renders a demo record as one JSON object (the worker id and counter ride in ``extra``)."""

    def format(self, record: logging.LogRecord) -> str:
        return format_line(
            getattr(record, "worker", -1),
            getattr(record, "counter", -1),
            record.process or 0,
            record.getMessage(),
            getattr(record, "padding", ""),
        )


class Verdict:
    """What reading a file back found, against the records that were promised."""

    def __init__(self, lines: int, corrupt: int, duplicated: int, lost: int, delivered: int) -> None:
        self.lines = lines
        self.corrupt = corrupt
        self.duplicated = duplicated
        self.lost = lost
        self.delivered = delivered

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.duplicated or self.lost)


def verify_files(paths: Iterable[str], promised: Sequence[int]) -> Verdict:
    """Read JSON lines back; ``promised[w]`` records of worker ``w`` must each appear once.

    A line is corrupt if it is not one JSON object with an int ``worker`` and ``counter``
    in range. Counters at or beyond ``promised[w]`` (logged but never promised, say by a
    worker killed mid-call) are accepted once and count as neither lost nor duplicated.
    """
    seen = [array("L", bytes(array("L").itemsize * count)) for count in promised]
    beyond: set[tuple[int, int]] = set()
    lines = corrupt = duplicated = 0
    for path in paths:
        with open(path, "rb") as stream:
            for raw in stream:
                lines += 1
                key = _parse_key(raw, len(promised))
                if key is None:
                    corrupt += 1
                    continue
                worker, counter = key
                if counter < promised[worker]:
                    if seen[worker][counter]:
                        duplicated += 1
                    seen[worker][counter] += 1
                elif key in beyond:
                    duplicated += 1
                else:
                    beyond.add(key)
    delivered = sum(1 for counts in seen for count in counts if count)
    return Verdict(lines, corrupt, duplicated, sum(promised) - delivered, delivered)


def _parse_key(raw: bytes, workers: int) -> tuple[int, int] | None:
    try:
        fields = json.loads(raw)
    except ValueError:  # includes UnicodeDecodeError and JSONDecodeError
        return None
    if not isinstance(fields, dict):
        return None
    worker, counter = fields.get("worker"), fields.get("counter")
    if type(worker) is not int or type(counter) is not int:
        return None
    if not (0 <= worker < workers and counter >= 0):
        return None
    return worker, counter
