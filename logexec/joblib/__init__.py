"""A joblib backend whose workers log through the parent: ``register_logexec()``.

Use::

    import joblib
    from logexec.joblib import register_logexec

    register_logexec()
    with joblib.parallel_config(backend="logexec", n_jobs=4):
        joblib.Parallel()(joblib.delayed(f)(x) for x in xs)   # scikit-learn's n_jobs= too

The backend is joblib's own ``loky`` backend with logexec attached, so everything loky does
stays as it is: cloudpickle for lambdas and local functions, memory-mapping of large NumPy
arguments, thread caps (``inner_max_num_threads``), auto-batching, ``timeout``, generators,
abort on error, nested calls, and one reusable pool of workers across ``Parallel`` calls.
What logexec adds::

   parent process                                     loky worker (started once, reused)
   ────────────────────────────────────────────────   ──────────────────────────────────────
   Parallel.__call__ → backend.start_call():            initializer: logexec's (connect to the
     levels (as changes) and contextvars.Context          listener; root gets the one
   backend.submit(batch):                                 QueueHandler; mirror levels), then
     task id → (dispatcher, context)                      the user's
     loky submit(run_batch(levels, task id, batch)) ──▶ run_batch: update levels if changed;
   listener thread (one per process) ◀── records ────    run the batch; barrier if it logged
     dispatch by logger name, or handlers=   ── ack ──▶  (result sent after the answer)
   future done → Parallel gets the result ◀── result ──

See ``_channel`` for the listener's lifetime, ``_worker`` for the worker side, and
``_compat`` for the joblib details this relies on (all in ``logexec/joblib/``).
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from .._channel import LevelsUpdate
from .._dispatch import Dispatcher, check_handlers
from . import _channel as _joblib_channel
from . import _compat as _joblib_compat
from . import _worker as _joblib_worker

__all__ = ["LogexecBackend", "register_logexec"]


class LogexecBackend(_joblib_compat.LokyBackendBase):  # type: ignore[misc]  # joblib is untyped
    """joblib's ``loky`` backend, with every worker's records handled by this process's logging.

    Every argument but ``handlers`` is ``LokyBackend``'s. ``initializer`` and ``initargs``
    are the user's: they run in each new worker after logexec's set-up, so that they can
    log.

    Args:
        nesting_level: As for ``LokyBackend``.
        inner_max_num_threads: As for ``LokyBackend``.
        handlers: ``None`` (dispatch each record as
            ``logging.getLogger(record.name).handle(record)``, the default) or a non-empty
            sequence of ``logging.Handler`` that get every record instead.
        **backend_kwargs: ``LokyBackend``'s other options (``idle_worker_timeout``,
            ``initializer``, ``initargs``, ...).

    Raises:
        TypeError: ``initializer`` not callable, ``initargs`` not a tuple, or ``handlers``
            not handlers; the message names the parameter and the value.
        ValueError: An empty ``handlers`` (that would drop every record).
    """

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        handlers: Iterable[logging.Handler] | None = None,
        **backend_kwargs: Any,
    ) -> None:
        self._logexec_user_initializer, self._logexec_user_initargs = _check_initializer(
            backend_kwargs.pop("initializer", None), backend_kwargs.pop("initargs", ())
        )
        super().__init__(
            nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **backend_kwargs
        )
        self._logexec_dispatcher = Dispatcher(check_handlers(handlers))
        self._logexec_channel: _joblib_channel.Channel | None = None
        # What the current Parallel call ships with each batch and dispatches in.
        self._logexec_levels: LevelsUpdate | None = None
        self._logexec_context: contextvars.Context | None = None

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: Any = None,
        require: Any = None,
        **kwargs: Any,
    ) -> int:
        if n_jobs is None or n_jobs == 1:
            # loky runs these in this process (it raises FallbackToBackend): no channel needed.
            n_sequential: int = super().configure(n_jobs, parallel, prefer, require, **kwargs)
            return n_sequential
        initializer, initargs = self._logexec_user_initializer, self._logexec_user_initargs
        if "initializer" in kwargs or "initargs" in kwargs:
            initializer, initargs = _check_initializer(
                kwargs.pop("initializer", initializer), kwargs.pop("initargs", initargs)
            )
        with _joblib_channel.configuring() as channel:
            kwargs = _joblib_compat.with_initializer(
                kwargs,
                _joblib_channel.worker_initializer(),
                # The same config object every time, so loky sees equal initargs and keeps
                # its workers (see _joblib_channel).
                (channel.config, initializer, initargs),
            )
            n_jobs_used: int = super().configure(n_jobs, parallel, prefer, require, **kwargs)
            executor = _joblib_compat.executor_of(self)
            if executor is not None:
                _joblib_channel.serve(channel, executor)
        self._logexec_channel = channel
        return n_jobs_used

    def start_call(self) -> None:
        # On the thread that called Parallel (batches after the first are submitted from
        # loky's result thread, whose context is not the caller's).
        super().start_call()
        channel = self._logexec_channel
        # None without a channel: loky runs an n_jobs=1 call in this process.
        self._logexec_levels = channel.levels_update() if channel is not None else None
        context = contextvars.copy_context()
        # An empty context is what the listener thread has anyway: skip the bookkeeping.
        self._logexec_context = context if len(context) else None

    def submit(self, func: Callable[[], Any], callback: Callable[..., Any] | None = None) -> Any:
        task_id, wrapped = self._logexec_wrap(func)
        try:
            future = super().submit(wrapped, callback)
        except BaseException:
            self._logexec_forget(task_id)
            raise
        return self._logexec_track(task_id, future)

    def apply_async(self, func: Callable[[], Any], callback: Callable[..., Any] | None = None) -> Any:
        # joblib < 1.5 calls apply_async instead of submit.
        task_id, wrapped = self._logexec_wrap(func)
        try:
            future = super().apply_async(wrapped, callback)
        except BaseException:
            self._logexec_forget(task_id)
            raise
        return self._logexec_track(task_id, future)

    def _logexec_wrap(self, func: Callable[[], Any]) -> tuple[int, Callable[[], Any]]:
        channel = self._logexec_channel
        if channel is None:
            raise RuntimeError("LogexecBackend.submit was called before configure()")
        if self._logexec_levels is None:  # submitted without start_call (direct use)
            self._logexec_levels = channel.levels_update()
        task_id = channel.next_task_id()
        # Routed before it is submitted: a quick batch may log before submit() returns.
        channel.dispatcher.route(task_id, self._logexec_dispatcher, self._logexec_context)
        # The batch stays an argument of the call loky pickles, so joblib's memmapping
        # reducers and its per-call temporary folder still apply to it.
        return task_id, functools.partial(_joblib_worker.run_batch, self._logexec_levels, task_id, func)

    def _logexec_forget(self, task_id: int) -> None:
        assert self._logexec_channel is not None  # set before any task id is made
        self._logexec_channel.dispatcher.forget(task_id)

    def _logexec_track(self, task_id: int, future: Any) -> Any:
        assert self._logexec_channel is not None  # set before any task id is made
        if isinstance(future, Future):
            self._logexec_channel.forget_when_done(future, task_id)
            executor = _joblib_compat.executor_of(self)
            if executor is not None:
                # After the submit that made loky's manager thread (see _crash).
                self._logexec_channel.note_breaks(executor)
        else:  # not loky's future: nothing tells us when it is done, so keep no route
            self._logexec_forget(task_id)
        return future


def _check_initializer(
    initializer: object, initargs: object
) -> tuple[Callable[..., object] | None, tuple[Any, ...]]:
    if initializer is not None and not callable(initializer):
        raise TypeError(f"initializer must be a callable or None, got {initializer!r}")
    if isinstance(initargs, (str, bytes)) or not isinstance(initargs, Iterable):
        raise TypeError(f"initargs must be a tuple, got {initargs!r}")
    return initializer, tuple(initargs)


def register_logexec(
    name: str = "logexec",
    *,
    handlers: Iterable[logging.Handler] | None = None,
    make_default: bool = False,
    **backend_options: Any,
) -> None:
    """Register the logexec joblib backend under ``name``.

    Then ``joblib.parallel_config(backend=name)`` (or ``parallel_backend``) runs joblib's
    and scikit-learn's ``n_jobs`` work on it, every worker record handled by this process's
    logging.

    Args:
        name: The backend's name for ``parallel_config(backend=...)``.
        handlers: As for ``LogexecBackend``.
        make_default: Make it joblib's default backend
            (``joblib.register_parallel_backend``'s option of that name).
        **backend_options: Defaults for ``LogexecBackend`` (loky's options, such as
            ``idle_worker_timeout``, and ``initializer``/``initargs``);
            ``parallel_config`` keywords override them per call.

    Raises:
        TypeError: ``name`` is not a non-empty str, ``make_default`` not a bool, or
            ``handlers``/``initializer``/``initargs`` of the wrong type (checked here, not
            at the first ``Parallel`` call).
        ValueError: An empty ``handlers``.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if not isinstance(make_default, bool):
        raise TypeError(f"make_default must be a bool, got {make_default!r}")
    checked = check_handlers(handlers)  # fail here, not at the first Parallel call
    _check_initializer(backend_options.get("initializer"), backend_options.get("initargs", ()))
    import joblib  # type: ignore[import-untyped,import-not-found,unused-ignore]

    joblib.register_parallel_backend(
        name,
        functools.partial(LogexecBackend, handlers=checked, **backend_options),
        make_default=make_default,
    )
