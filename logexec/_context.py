"""Context variables: the submitter's context in the parent, chosen values in the worker.

Two different things cross the process boundary here, and only one of them is pickled:

* The submitter's whole ``contextvars.Context`` never leaves the parent. ``submit`` keeps
  it under the task id, and the listener dispatches that task's records inside it, so
  parent-side filters and formatters read the submitter's request id or span.
* ``propagate_contextvars`` names variables whose *values* are copied into the worker for
  the duration of the task, so the task's own code can read them. A ``ContextVar`` itself
  cannot be pickled, so each one is sent as the module and attribute where it lives, and
  the worker imports it from there.
"""

from __future__ import annotations

import contextvars
import importlib
import pickle
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# (module name, attribute name) under which a ContextVar can be imported.
VarAddress = tuple[str, str]
# What travels with a task: where each variable lives, and its value at submit time.
CapturedValues = tuple[tuple[VarAddress, Any], ...]


def locate_contextvars(variables: Iterable[object]) -> dict[VarAddress, contextvars.ContextVar[Any]]:
    """Find the importable address of each variable, or raise a TypeError naming it."""
    if isinstance(variables, (str, bytes)) or not isinstance(variables, Iterable):
        raise TypeError(
            f"propagate_contextvars must be an iterable of contextvars.ContextVar, got {variables!r}"
        )
    wanted: list[contextvars.ContextVar[Any]] = []
    for variable in variables:
        if not isinstance(variable, contextvars.ContextVar):
            raise TypeError(
                f"propagate_contextvars entries must be contextvars.ContextVar objects, got {variable!r}"
            )
        wanted.append(variable)
    found: dict[VarAddress, contextvars.ContextVar[Any]] = {}
    remaining = {id(variable): variable for variable in wanted}
    for module_name, module in list(sys.modules.items()):
        if not remaining:
            break
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attribute, value in list(namespace.items()):
            if id(value) in remaining and remaining[id(value)] is value:
                found[(_importable_name(module_name), attribute)] = value
                del remaining[id(value)]
    for variable in remaining.values():
        raise TypeError(
            f"propagate_contextvars: the ContextVar {variable.name!r} must be a module-level "
            "attribute of an imported module, so that workers can import it; it was not found "
            "in any module"
        )
    return found


def capture_values(
    variables: Mapping[VarAddress, contextvars.ContextVar[Any]],
) -> CapturedValues | None:
    """The current values of ``variables`` (unset ones are left out), checked to pickle.

    None when no variables are propagated, so that such tasks run exactly as in the stdlib.
    """
    if not variables:
        return None
    captured = []
    for address, variable in variables.items():
        try:
            value = variable.get()
        except LookupError:
            continue
        try:
            pickle.dumps(value)
        except Exception as error:
            raise TypeError(
                f"propagate_contextvars: the value of ContextVar {variable.name!r} cannot be "
                f"sent to a worker because it does not pickle ({type(error).__name__}: {error}); "
                f"got {value!r}"
            ) from error
        captured.append((address, value))
    return tuple(captured)


def call_with_values(
    addresses: Iterable[VarAddress], captured: CapturedValues, fn: Callable[..., T], *args: Any, **kwargs: Any
) -> T:
    """Run ``fn`` where the propagated variables hold exactly the submitter's values.

    A variable that was unset at submit is unset here too, even if this worker's own
    context holds a value (inherited through fork, or left by an earlier task): ContextVars
    cannot be deleted, so the task runs in a new context that copies every other variable.
    """
    propagated = set()
    for module_name, attribute in addresses:
        propagated.add(getattr(importlib.import_module(module_name), attribute))
    context = contextvars.Context()
    for variable, value in contextvars.copy_context().items():
        if variable not in propagated:
            context.run(variable.set, value)
    for (module_name, attribute), value in captured:
        context.run(getattr(importlib.import_module(module_name), attribute).set, value)
    return context.run(fn, *args, **kwargs)


def _importable_name(module_name: str) -> str:
    # A spawn worker imports the parent's script as "__mp_main__" and aliases it as
    # "__main__", so "__main__" is the name that resolves on both sides.
    return "__main__" if module_name == "__mp_main__" else module_name
