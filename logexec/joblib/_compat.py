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
"""

from __future__ import annotations

from typing import Any

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
