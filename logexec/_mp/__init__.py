"""multiprocessing's own front-ends: ``logexec.Pool`` (``_pool``), ``logexec.get_context`` (``_context``)."""

from ._context import get_context
from ._pool import Pool

__all__ = ["Pool", "get_context"]
