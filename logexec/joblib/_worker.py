"""The worker side of ``logexec.joblib``: each joblib batch runs inside logexec's task wrapper.

loky starts a worker with logexec's initializer (``logexec._channel.initialize``), which connects it
to the parent's listener and puts the one ``QueueHandler`` on root. Every batch joblib sends
then runs through ``run_batch``, which

* first brings the worker's logger levels up to date with the parent's, as they were when
  the ``Parallel`` call began: loky keeps its workers for many calls, so the levels the
  initializer applied at the worker's start go stale when the parent changes its own (a
  test that calls ``caplog.set_level``, an application that turns on DEBUG). Each batch
  carries only the loggers that differ from the channel's base levels (``LevelsUpdate``),
  however many loggers are configured; and
* then runs the batch in ``logexec._channel.run_task``, which returns only once the parent has
  handled every record the batch logged ("a result means its records are handled").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._channel import LevelsUpdate
from .._channel import run_task as _run_task


def run_batch(levels: LevelsUpdate | None, task_id: int, batch: Callable[[], Any]) -> Any:
    """Run one joblib batch; return only after the parent has handled its records."""
    return run_task(task_id, levels, batch)


# Adapter to the core: the single call into logexec's task wrapper (see logexec._channel.run_task),
# which applies the levels update if this worker last applied another version. No context
# variables are propagated (the joblib backend has no such option), hence the empty
# addresses and None for their captured values.
def run_task(task_id: int, levels: LevelsUpdate | None, batch: Callable[[], Any]) -> Any:
    return _run_task(task_id, (), None, levels, batch)
