"""logexec: logging from a process pool without corrupt, lost or misrouted records.

Replace ``concurrent.futures.ProcessPoolExecutor`` with ``LoggingProcessPoolExecutor``:
every record a worker logs is handled once, whole, by the parent's logging configuration.

The channel. Each worker gets its own ``AF_UNIX`` stream connection to a listener thread
in the parent (a socket in a private 0700 directory; the worker proves it holds the
executor's random key with an HMAC answer to the listener's challenge), and every log
call puts its record on that channel before it returns: on x86-64 Linux into a
shared-memory ring the worker handed over with its hello (no system call), elsewhere onto
the connection itself (where there is no ``AF_UNIX``, as on Windows, a
``multiprocessing.connection`` connection carries the same frames: see ``_channel._transports``).
We chose this over the
stdlib recipe's shared ``multiprocessing.Queue`` because, measured here, that queue loses
the records of a worker killed by ``SIGKILL`` (its feeder thread had not written them
yet) and then hangs ``QueueListener.stop()`` (the dead worker holds the queue's write
lock). With one synchronous channel per worker, a record whose call returned is in memory
the kernel keeps for the parent and survives the crash, a dead worker is only an EOF on its
own connection, a frame
cut off mid-write damages nothing else, and a slow parent holds the writers back instead
of letting memory grow. See ``_channel`` for the data flow.
"""

import platform
import sys
from typing import TYPE_CHECKING

from ._dispatch import capture_records
from ._executor import LoggingProcessPoolExecutor
from ._mp import Pool, get_context

__all__ = ["LoggingProcessPoolExecutor", "Pool", "__version__", "capture_records", "get_context"]

__version__ = "0.1.0"

# CPython 3.14's subinterpreters (concurrent.futures.InterpreterPoolExecutor): see _interp.
# Imported on first use, not here: every process-pool worker imports this package, and
# concurrent.interpreters would add about 5 ms to each one's start for nothing.
if sys.version_info >= (3, 14):
    __all__ += ["LoggingInterpreterPoolExecutor"]

if TYPE_CHECKING:
    if sys.version_info >= (3, 14):
        from ._interp import LoggingInterpreterPoolExecutor
else:
    # Hidden from type checkers: a module __getattr__ would make every misspelt name of this
    # package an `object` to them instead of an error.

    def __getattr__(name: str) -> object:
        # PEP 562: only reached for a name the module lacks. ``from logexec import
        # LoggingInterpreterPoolExecutor`` passes our ImportError on as it is, with its message.
        if name != "LoggingInterpreterPoolExecutor":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        if sys.version_info < (3, 14):
            missing = f"this is {platform.python_implementation()} {platform.python_version()}"
        else:
            try:
                from ._interp import LoggingInterpreterPoolExecutor
            except ImportError as error:  # a 3.14 built without _interpreters
                missing = f"concurrent.interpreters cannot be imported here ({error})"
            else:
                globals()[name] = LoggingInterpreterPoolExecutor
                return LoggingInterpreterPoolExecutor
        raise ImportError(
            "LoggingInterpreterPoolExecutor needs CPython 3.14 or newer "
            f"(concurrent.futures.InterpreterPoolExecutor); {missing}",
            name="logexec",
        )
