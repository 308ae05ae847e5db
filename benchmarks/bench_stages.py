"""Where the time goes per record: logexec's hot path, stage by stage, in one process.

Not end to end: each stage is timed alone on real frames made by logexec's own transport
(``logexec._records`` and ``logexec._channel``, private: this script follows them, and may need updating
when it changes). No other process runs, so these are the costs without contention; the
end-to-end numbers are in the other scripts. Stages, in order:

    worker   log call to NullHandler | record_values (prepare) | pickle.dumps | frame
             | sendall (one frame to a socketpair) | full log call through logexec's handler
    parent   wake-up (select + recv_into of one frame, the worst case: one record per wake-up)
             | recv_into (frames sent one by one, as workers do) | parse (header, slice) | unpickle
             | rebuild (build_record) | dispatch (Dispatcher -> logger tree -> a no-op handler)
             | format (plain / json) | write (FileHandler.handle minus format)

    python3 benchmarks/bench_stages.py
"""

from __future__ import annotations

import argparse
import contextvars
import logging
import os
import pickle
import selectors
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import _common

from logexec import _dispatch, _records
from logexec._channel import _framing, _setup, _worker


def per_item(function: Callable[[], int], repeats: int) -> float:
    """Median over ``repeats`` of (seconds of one call of ``function``) / items it did, in µs."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        items = function()
        samples.append((time.perf_counter() - start) / items * 1e6)
    return statistics.median(samples)


def over(function: Callable[[Any], object], items: Sequence[Any]) -> Callable[[], int]:
    """A loop applying ``function`` to every item; returns how many it did."""

    def run() -> int:
        for item in items:
            function(item)
        return len(items)

    return run


def make_records(count: int) -> list[logging.LogRecord]:
    logger = logging.getLogger(_common.LOGGER_NAME)
    return [
        logger.makeRecord(
            logger.name, logging.INFO, __file__, 10, _common.MESSAGE, (1, index, _common.PAD), None
        )
        for index in range(count)
    ]


class _Null(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        pass


def measure(count: int, repeats: int) -> list[tuple[str, str, float]]:
    rows: list[tuple[str, str, float]] = []
    records = make_records(count)
    root = _common.reset_root_logger()
    null = _Null()
    root.addHandler(null)
    logger = logging.getLogger(_common.LOGGER_NAME)

    # Worker side -------------------------------------------------------------------------
    def log_null() -> int:
        _common.log_records(logger, 0, count)
        return count

    rows.append(
        ("worker", "log call to a no-op handler (record creation + logger)", per_item(log_null, repeats))
    )
    values = [_records.record_values(record, 7) for record in records]
    rows.append(
        (
            "worker",
            "record_values (merge message, collect fields)",
            per_item(over(lambda r: _records.record_values(r, 7), records), repeats),
        )
    )
    payloads = [_records.encode_values(v) for v in values]
    rows.append(
        (
            "worker",
            "pickle.dumps of the values",
            per_item(over(lambda v: pickle.dumps(v, _records.PICKLE_PROTOCOL), values), repeats),
        )
    )
    header = _framing.HEADER
    rows.append(
        (
            "worker",
            "frame (header pack + concatenation)",
            per_item(over(lambda p: header.pack(len(p), 0) + p, payloads), repeats),
        )
    )
    frames = [_framing.encode_record(record, 7) for record in records]
    writer, reader = socket.socketpair()
    # The reader is another process, as the parent is for a real worker: a reader thread
    # here would compete for the GIL and inflate every send.
    drainer = os.fork()
    if drainer == 0:
        writer.close()
        while reader.recv(1 << 18):
            pass
        os._exit(0)
    reader.close()

    def send_all() -> int:
        sendall = writer.sendall
        for frame in frames:
            sendall(frame)
        return count

    rows.append(("worker", "sendall of one frame (another process reads)", per_item(send_all, repeats)))

    # The whole call through logexec's handler, with the channel on the same socketpair.
    channel = _worker.Channel(_worker.WorkerConfig(b"k" * 32))
    channel._socket = writer  # no listener here: a socketpair stands in for the connection
    channel.task_id = 7
    _setup._TASK.set(7)  # as run_task does: the records are the running task's
    root.removeHandler(null)
    root.addHandler(_setup.WorkerHandler(channel))
    rows.append(("worker", "log call through logexec's handler (total)", per_item(log_null, repeats)))
    _common.reset_root_logger()
    writer.close()
    os.waitpid(drainer, 0)

    # Parent side -------------------------------------------------------------------------
    writer, reader = socket.socketpair()
    selector = selectors.DefaultSelector()
    selector.register(reader, selectors.EVENT_READ)
    frame = frames[0]

    scratch = memoryview(bytearray(1 << 18))

    def wake_ups() -> int:
        for _ in range(count):
            writer.send(frame)
            selector.select()
            reader.recv_into(scratch)  # as the listener reads since 2059578
        return count

    send_only = per_item(over(lambda _: writer.send(frame), range(20)), 1)
    reader.recv(1 << 20)
    rows.append(
        (
            "parent",
            "wake-up: select + recv_into for one frame (minus the send)",
            per_item(wake_ups, repeats) - send_only,
        )
    )
    # recv(n) allocates n bytes before it reads. Above glibc's mmap threshold (128 KiB until
    # the process frees a larger block) that is an mmap, page faults and a munmap per call.
    for label, read in (
        ("recv(256 KiB) of one frame (minus the send)", lambda: reader.recv(1 << 18)),
        ("recv(64 KiB) of one frame (minus the send)", lambda: reader.recv(1 << 16)),
        ("recv_into a reused 256 KiB buffer, one frame (minus the send)", lambda: reader.recv_into(scratch)),
    ):

        def small_reads(read: Callable[[], object] = read) -> int:
            for _ in range(count):
                writer.send(frame)
                read()
            return count

        rows.append(("parent", label, per_item(small_reads, repeats) - send_only))
    blob = b"".join(frames)
    # The kernel keeps one buffer (skb) per send. A worker sends each frame by itself, so a
    # large read walks and frees one skb per record: that cost is per record, not per read.
    # 100 frames at a time (about 25 KiB) fit in a socketpair's buffer without blocking.
    per_read = 100

    def batched(one_send: bool) -> float:
        samples = []
        for _ in range(repeats):
            spent = 0.0
            for _ in range(max(1, count // per_read)):
                if one_send:
                    writer.sendall(blob[: per_read * len(frame)])
                else:
                    for _ in range(per_read):
                        writer.sendall(frame)
                start = time.perf_counter()
                received = 0
                while received < per_read * len(frame):
                    received += reader.recv_into(scratch)
                spent += time.perf_counter() - start
            samples.append(spent / (max(1, count // per_read) * per_read) * 1e6)
        return statistics.median(samples)

    rows.append(("parent", "recv_into of 100 frames sent one by one, per record", batched(False)))
    rows.append(("parent", "recv_into of 100 frames sent in one send, per record", batched(True)))
    selector.close()
    writer.close()
    reader.close()

    view = memoryview(blob)
    unpack = header.unpack_from
    header_size = _framing.HEADER_SIZE

    def parse() -> int:
        position, end, done = 0, len(blob), 0
        while end - position >= header_size:
            size, _kind = unpack(view, position)
            start = position + header_size
            stop = start + size
            view[start:stop]
            position = stop
            done += 1
        return done

    rows.append(("parent", "parse: header unpack + payload slice", per_item(parse, repeats)))
    slices = [memoryview(f)[header_size:] for f in frames]
    rows.append(
        (
            "parent",
            "unpickle (pickle.loads)",
            per_item(over(pickle.loads, slices), repeats),
        )
    )
    decoded = [_records.decode_values(s) for s in slices]
    rows.append(
        (
            "parent",
            "rebuild the LogRecord (build_record)",
            per_item(over(_records.build_record, decoded), repeats),
        )
    )
    rebuilt = [_records.build_record(v)[1] for v in decoded]

    root = _common.reset_root_logger()
    root.addHandler(null)
    dispatcher = _dispatch.Dispatcher(None)
    dispatcher.register(7, contextvars.copy_context())

    def dispatch() -> int:
        for record in rebuilt:
            dispatcher.dispatch(7, record)
        return count

    rows.append(
        ("parent", "dispatch: context.run + logger tree + a no-op handler", per_item(dispatch, repeats))
    )
    for kind in ("plain", "json"):
        formatter = _common.make_formatter(kind)
        rows.append(
            (
                "parent",
                f"format ({kind} formatter)",
                per_item(over(formatter.format, rebuilt), repeats),
            )
        )
        directory = tempfile.mkdtemp(prefix="logexec-bench-")
        handler = logging.FileHandler(os.path.join(directory, "out.log"), encoding="utf-8")
        handler.setFormatter(formatter)

        def handle(h: logging.Handler = handler) -> int:
            for record in rebuilt:
                h.handle(record)
            return count

        total = per_item(handle, repeats)
        rows.append(("parent", f"FileHandler.handle ({kind}: lock, format, write, flush)", total))
        handler.close()
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)
    _common.reset_root_logger()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2,000 records, 3 repeats")
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    args = parser.parse_args()
    if args.quick:
        args.records, args.repeats = 2_000, 3
    print(_common.environment_line())
    rows = measure(args.records, args.repeats)
    frame_size = len(_framing.encode_record(make_records(1)[0], 7))
    text = "\n".join(
        [
            "## Per-record stages, in one process (bench_stages.py)",
            "",
            _common.environment_line() + f"; logexec at {_common.revision_note(args)}; "
            f"{args.records:,} records, median of {args.repeats}; one frame is {frame_size} bytes.",
            "",
            _common.markdown_table(["side", "stage", "µs/record"], [[s, n, f"{v:.2f}"] for s, n, v in rows]),
        ]
    )
    print(text)
    if not args.no_save:
        _common.write_section("bench_stages", text, sys.argv)


if __name__ == "__main__":
    main()
