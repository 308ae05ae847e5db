"""The one place where ``logexec.joblib`` touches joblib beyond its documented backend API.

joblib has no type hints and no public way to hand an initializer to the executor behind
its ``loky`` backend, nor to reach that executor. Three details are used, all unchanged from
joblib 1.3 to 1.6 and pinned by ``tests/test_joblib.py`` (run against the oldest and the
newest supported joblib):

* ``LokyBackend`` lives in ``joblib._parallel_backends`` (``joblib.parallel`` re-exports it).
* ``LokyBackend.configure(**kwargs)`` passes unknown keywords on to joblib's
  ``get_memmapping_executor``, which takes ``initializer`` and ``initargs`` and hands them to
  loky's ``get_reusable_executor`` (a documented loky parameter).
* The executor a configured ``LokyBackend`` uses is its ``_workers`` attribute.
* For a broken pool's notes (``note_when_broken``): loky's executor's
  ``_executor_manager_thread``, whose ``terminate_broken(bpe)`` gets the exception it sets on
  every pending future, and whose ``processes`` and ``pending_work_items`` are the
  stdlib's (each work item's ``fn``, a partial of ``run_batch``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .. import _compat

# joblib ships no type hints. Both codes are listed so that mypy is clean whether or not
# joblib is installed where it runs.
try:
    from joblib._parallel_backends import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
        LokyBackend,
    )
except ImportError as error:
    raise ImportError(
        "logexec.joblib needs joblib 1.3 or later, an optional extra of logexec; install it "
        "with: pip install 'joblib>=1.3' (from a checkout of logexec: pip install '.[joblib]')"
    ) from error

# Re-exported for logexec.joblib, typed as Any on purpose: it is untyped.
LokyBackendBase: Any = LokyBackend


def executor_of(backend: object) -> object | None:
    """The loky executor a configured ``LokyBackend`` submits to (None before ``configure``)."""
    executor: object | None = getattr(backend, "_workers", None)
    return executor


def with_initializer(kwargs: dict[str, Any], initializer: Any, initargs: tuple[Any, ...]) -> dict[str, Any]:
    """``configure`` keywords that make joblib start loky workers with ``initializer``."""
    return {**kwargs, "initializer": initializer, "initargs": initargs}


def note_when_broken(
    executor: object,
    annotate: Callable[[_compat.ExitCodes, list[Any]], Sequence[str]],
    add_notes: Callable[[BaseException, Sequence[str]], None],
    on_error: Callable[[BaseException], None],
) -> bool:
    """Have the ``TerminatedWorkerError`` of a breaking loky pool carry ``annotate``'s notes.

    loky's manager thread makes the exception first and hands it to ``terminate_broken``,
    which sets it on every pending future: the notes are added there, before any waiter can
    see it. ``annotate`` gets a reader of the dead workers' exit codes and the pending
    work items' functions. False when the executor has no manager thread yet, or it is
    hooked already.
    """
    thread = getattr(executor, "_executor_manager_thread", None)
    original = getattr(thread, "terminate_broken", None)
    if thread is None or not callable(original) or "terminate_broken" in vars(thread):
        return False
    processes: dict[int, Any] = getattr(thread, "processes", None) or {}
    pending: dict[int, Any] = getattr(thread, "pending_work_items", None) or {}

    def terminate_broken(bpe: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(bpe, BaseException):
            try:
                functions = [item.fn for item in list(pending.values())]
                notes = annotate(
                    lambda settle: _compat.exit_codes_of(list(processes.items()), settle), functions
                )
                add_notes(bpe, notes)
            except Exception as error:  # the notes are a courtesy: the pool breaks regardless
                on_error(error)
        return original(bpe, *args, **kwargs)

    thread.terminate_broken = terminate_broken
    return True
