"""The parent's cost per record, with no ``capture_records`` block open: this checkout vs another.

The listener's own loop, in one process, on real frames: ``_handle_frames`` over a buffer of
N record frames (parse, decode, rebuild, keep the last records for a crash's notes,
dispatch through the logger tree to a no-op handler). Three cases:

    none      the task was not registered (an empty submitter context: the common case)
    context   the task was registered with a non-empty context, no capture open
    capture   a capture_records() block open at submit (this checkout only)

Each trial runs in a fresh interpreter; the checkouts alternate within every round, and
the medians of the rounds are compared. Private modules are used (this script follows them).

    python3 benchmarks/bench_record_cost.py --alt-logexec /tmp/base23 --rounds 9
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

TRIAL = r"""
import sys as _sys; _sys.path.insert(0, _sys.argv[3])
import contextvars, json, logging, socket, sys, time
from logexec import _dispatch
from logexec._channel import _framing
from logexec._channel._guard import _Connection
from logexec._channel._listener import Listener

case, count = sys.argv[1], int(sys.argv[2])

class Null(logging.Handler):
    def emit(self, record):
        pass

root = logging.getLogger()
root.handlers[:] = [Null()]
root.setLevel(logging.INFO)
logger = logging.getLogger("bench.cost")
record = logger.makeRecord("bench.cost", logging.INFO, "bench.py", 1, "value %d of %s", (42, "text"), None)
frame = _framing.encode_record(record, 7)
blob = frame * count
dispatcher = _dispatch.Dispatcher(None)
VAR = contextvars.ContextVar("bench_var")
VAR.set("x")
if case == "context":
    dispatcher.register(7, contextvars.copy_context())
elif case == "capture":
    with _dispatch.capture_records() as captured:
        dispatcher.register(7, contextvars.copy_context())
listener = Listener(dispatcher, b"k" * 32)
left, right = socket.socketpair()
connection = _Connection(left, b"")
connection.pid = 1
best = []
for _ in range(5):
    connection.resize(len(blob))
    connection.view[: len(blob)] = blob
    if case == "capture":
        captured.clear()
    start = time.perf_counter()
    listener._handle_frames(None, connection, len(blob), 0)
    best.append((time.perf_counter() - start) / count)
print(json.dumps(min(best)))
"""


def trial(pythonpath: str, case: str, count: int) -> float:
    env = dict(os.environ, PYTHONPATH=pythonpath)
    output = subprocess.run(
        [sys.executable, "-c", TRIAL, case, str(count), pythonpath],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(json.loads(output))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alt-logexec", required=True, help="the baseline checkout (e.g. main)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--records", type=int, default=50_000)
    args = parser.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    variants = {"this": here, "alt": args.alt_logexec}
    results: dict[tuple[str, str], list[float]] = {}
    for round_index in range(args.rounds):
        order = list(variants.items()) if round_index % 2 == 0 else list(reversed(variants.items()))
        for case in ("none", "context"):
            for name, path in order:
                results.setdefault((name, case), []).append(trial(path, case, args.records))
        results.setdefault(("this", "capture"), []).append(trial(here, "capture", args.records))
    print(
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.rounds} interleaved rounds, "
        f"{args.records:,} records a trial (best of 5 passes), medians of the rounds"
    )
    print("| case | this checkout (ns/record) | alt (ns/record) | this / alt (median of per-round ratios) |")
    print("|---|---|---|---|")
    for case in ("none", "context", "capture"):
        mine = results[("this", case)]
        line = f"| {case} | {statistics.median(mine) * 1e9:.0f} |"
        if ("alt", case) in results:
            theirs = results[("alt", case)]
            ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
            line += f" {statistics.median(theirs) * 1e9:.0f} | {statistics.median(ratios):.3f} |"
        else:
            line += " n/a | n/a |"
        print(line)


if __name__ == "__main__":
    main()
