"""logexec: logging from a process pool without corrupt, lost or misrouted records.

Replace ``concurrent.futures.ProcessPoolExecutor`` with ``LoggingProcessPoolExecutor``:
every record a worker logs is handled once, whole, by the parent's logging configuration.
"""

from ._executor import LoggingProcessPoolExecutor

__all__ = ["LoggingProcessPoolExecutor", "__version__"]

__version__ = "0.1.0"
