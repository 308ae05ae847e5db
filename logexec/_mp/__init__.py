"""multiprocessing's own front-ends: ``logexec.Pool`` (``_pool``) and ``logexec.get_context``."""

from ._pool import Pool

__all__ = ["Pool"]
