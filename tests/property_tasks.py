"""Odd values and a task that logs generated records. Module-level: spawn workers import it.

A generated record is described by a *spec* made of plain, picklable values, so that it can
be sent to a worker as a task argument; ``build`` turns a spec into the actual (odd) object
on either side. Specs of values:

* ``("plain", value)``: a builtin value, sent as is;
* ``("unpicklable", text)``: refuses to pickle (arrives as its repr);
* ``("two_arg", a, b)``, ``("keyword_only", code)``, ``("refusing_setstate", x)``,
  ``("refusing_dict", items)``, ``("ghost", x)``: pickle in the worker, cannot be rebuilt in
  the parent (arrive as a placeholder naming their class);
* ``("bad_str", text)``: an exception whose ``__str__`` and ``__repr__`` raise (rebuilds);
* ``("list", [specs])``, ``("tuple", [specs])``, ``("dict", {key: spec})``: containers.
"""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Callable
from typing import Any

# The module that only the worker has: a class defined there pickles in the worker, and
# the parent cannot import it.
GHOST_MODULE = "logexec_property_ghosts"


class Unpicklable:
    """Refuses to pickle; its repr says which one it is."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __reduce__(self) -> Any:
        raise TypeError("Unpicklable refuses to pickle")

    def __repr__(self) -> str:
        return f"<Unpicklable {self.text!r}>"


class TwoArgError(Exception):
    """Pickles as (cls, (a,)), which cannot be called again: __init__ wants two arguments."""

    UNREBUILDABLE = True

    def __init__(self, a: str, b: str) -> None:
        super().__init__(a)
        self.b = b


class KeywordOnlyError(Exception):
    """Pickles as (cls, ()), which cannot be called again: ``code`` is keyword-only."""

    UNREBUILDABLE = True

    def __init__(self, *, code: int) -> None:
        super().__init__()
        self.code = code

    def __repr__(self) -> str:
        return f"KeywordOnlyError(code={self.code!r})"


class BadStrError(Exception):
    """Rebuilds fine, but its __str__ and __repr__ raise."""

    def __str__(self) -> str:
        raise ValueError("BadStrError.__str__ refuses")

    def __repr__(self) -> str:
        raise ValueError("BadStrError.__repr__ refuses")


class RefusingSetstate:
    """Pickles; its __setstate__ refuses, so it cannot be rebuilt."""

    UNREBUILDABLE = True

    def __init__(self, x: int) -> None:
        self.x = x

    def __setstate__(self, state: Any) -> None:
        raise RuntimeError("RefusingSetstate will not take its state back")

    def __repr__(self) -> str:
        return f"RefusingSetstate({self.x!r})"


class RefusingDict(dict):  # type: ignore[type-arg]
    """A dict that is built whole (dict.__init__) but refuses items one by one, as unpickling adds them."""

    UNREBUILDABLE = True

    def __setitem__(self, key: Any, value: Any) -> None:
        raise KeyError(f"RefusingDict refuses {key!r}")


def _ghost_class() -> type:
    module = sys.modules.get(GHOST_MODULE)
    if module is None:
        module = types.ModuleType(GHOST_MODULE)
        sys.modules[GHOST_MODULE] = module

        class Ghost:
            UNREBUILDABLE = True

            def __init__(self, x: int) -> None:
                self.x = x

            def __repr__(self) -> str:
                return f"Ghost({self.x!r})"

        # Found by pickle as logexec_property_ghosts.Ghost, as if defined there.
        Ghost.__module__ = GHOST_MODULE
        Ghost.__qualname__ = "Ghost"
        module.Ghost = Ghost  # type: ignore[attr-defined]
    ghost: type = module.Ghost
    return ghost


def make_ghost(x: int) -> Any:
    """A Ghost, registering its module in this process."""
    return _ghost_class()(x)


def forget_ghosts() -> None:
    """Make the ghost module unimportable again (the parent's view of it)."""
    sys.modules.pop(GHOST_MODULE, None)


def build(spec: Any) -> Any:
    """Turn a spec into its value (in whichever process this runs)."""
    return _BUILDERS[spec[0]](*spec[1:])


_BUILDERS: dict[str, Callable[..., Any]] = {
    "plain": lambda value: value,
    "unpicklable": Unpicklable,
    "two_arg": TwoArgError,
    "keyword_only": lambda code: KeywordOnlyError(code=code),
    "bad_str": BadStrError,
    "refusing_setstate": RefusingSetstate,
    "refusing_dict": RefusingDict,
    "ghost": make_ghost,
    "list": lambda items: [build(item) for item in items],
    "tuple": lambda items: tuple(build(item) for item in items),
    "dict": lambda items: {key: build(item) for key, item in items.items()},
}


def has_kind(spec: Any, kinds: frozenset[str]) -> bool:
    """Whether ``spec`` or anything inside it is of one of ``kinds``."""
    if spec[0] in kinds:
        return True
    if spec[0] in ("list", "tuple"):
        return any(has_kind(item, kinds) for item in spec[1])
    if spec[0] == "dict":
        return any(has_kind(item, kinds) for item in spec[1].values())
    return False


def build_args(args_spec: Any) -> Any:
    """A record's args: None, a tuple of values, or one mapping."""
    if args_spec is None:
        return None
    kind, items = args_spec
    if kind == "tuple":
        return tuple(build(item) for item in items)
    return ({key: build(item) for key, item in items.items()},)


def raise_and_catch(kind: str, text: str) -> Any:
    """Raise an exception of ``kind`` and return its exc_info."""
    try:
        if kind == "two_arg":
            raise TwoArgError(text, "second")
        if kind == "keyword_only":
            raise KeywordOnlyError(code=len(text))
        if kind == "bad_str":
            raise BadStrError(text)
        raise ValueError(text)
    except Exception:
        return sys.exc_info()


def make_record(spec: dict[str, Any]) -> logging.LogRecord:
    """Build the record a spec describes (the same on both sides, except time and ids)."""
    msg = build(spec["msg"])
    exc_info = raise_and_catch(*spec["exc"]) if spec["exc"] is not None else None
    extra = {key: build(item) for key, item in spec["extra"].items()}
    return logging.getLogger(spec["name"]).makeRecord(
        spec["name"],
        spec["level"],
        spec["pathname"],
        spec["lineno"],
        msg,
        build_args(spec["args"]),
        exc_info,
        spec["func"],
        extra or None,
        spec["stack_info"],
    )


def log_specs(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hand one generated record per spec to logging; return what each looked like here."""
    seen: list[dict[str, Any]] = []
    for index, spec in enumerate(specs):
        record = make_record(spec)
        record.spec_index = index  # to match records up in the parent
        seen.append(
            {
                "message": _render(record),
                "created": record.created,
                "process": record.process,
                "thread": record.thread,
            }
        )
        # Logger.handle, not logger.log: every field is the spec's, and the worker's root
        # handler is reached without a level check (the spec's level may be any number).
        logging.getLogger(spec["name"]).handle(record)
    return seen


def _render(record: logging.LogRecord) -> str:
    from logexec import _records

    return _records.render_message(record)
