"""Log calls for tests/test_integrations.py. Module-level, because spawn workers import them.

Each ``emit_*`` function makes the same calls wherever it runs: the tests call it once in
the parent and once in a worker and compare what the parent's handlers rendered.
"""

from __future__ import annotations

import logging
from typing import Any


def fail() -> None:
    raise ValueError("the answer is not 42")


def emit_app_calls() -> str:
    """Calls through a DEBUG logger, a WARNING logger and one that inherits root's level."""
    debugging = logging.getLogger("app.debugging")
    quiet = logging.getLogger("app.quiet")
    other = logging.getLogger("app.other")
    debugging.debug("debug detail %d of %s", 1, "job")
    debugging.info("progress %.1f%%", 50.0)
    quiet.info("quiet info, filtered at the source")
    quiet.warning("quiet warning %r", {"k": [1, 2]})
    other.debug("other debug, below root's INFO")
    other.info("other info")
    try:
        fail()
    except ValueError:
        other.exception("failed while %s", "working")
    other.error("with extra", extra={"user": "alice", "attempt": 3})
    return "done"


def emit_plain_calls(name: str = "tests.integration") -> str:
    """A handful of ordinary calls: args, extra, an exception, several levels."""
    logger = logging.getLogger(name)
    logger.info("hello %s, you are %d", "world", 42)
    logger.warning("disk at %d%%", 93, extra={"user": "alice", "attempt": 2})
    try:
        fail()
    except ValueError:
        logger.error("could not finish %s", "step 3", exc_info=True)
    logger.critical("bye")
    return "done"


def emit_rich_calls() -> str:
    """Calls that use RichHandler's own ``extra`` keys (markup, highlighter) too."""
    logger = logging.getLogger("tests.rich")
    logger.info("plain %s message", "rich")
    logger.warning("[bold]markup[/bold] rendered", extra={"markup": True})
    logger.error("a list %s and a number %d", [1, 2, 3], 7)
    try:
        fail()
    except ValueError:
        logger.exception("an exception")
    return "done"


def emit_json_calls() -> str:
    """Calls whose ``extra`` fields python-json-logger puts into the object."""
    logger = logging.getLogger("tests.json")
    logger.info("user logged in", extra={"user": "alice", "roles": ["admin", "dev"], "meta": {"n": 1}})
    logger.warning("quota %d%% used", 80, extra={"quota": 0.8, "flag": True, "nothing": None})
    try:
        fail()
    except ValueError:
        logger.exception("crashed", extra={"job": "nightly"})
    return "done"


def emit_structlog_foreign_calls() -> str:
    """Plain stdlib calls, which structlog's ProcessorFormatter treats as foreign records."""
    logger = logging.getLogger("tests.structlog")
    logger.info("order %s placed", "A-1", extra={"amount": 12.5})
    logger.warning("stock low")
    try:
        fail()
    except ValueError:
        logger.exception("payment failed")
    return "done"


def configure_structlog_for_stdlib() -> None:
    """structlog in front of stdlib logging, the way its docs suggest for foreign handlers.

    ``render_to_log_kwargs`` turns the event dict into a plain message plus ``extra``, so
    the record carries only strings and plain values, which a process boundary keeps.
    """
    import structlog

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.render_to_log_kwargs,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def emit_structlog_native_calls() -> str:
    """structlog's own API, through the stdlib (configured in this process on demand)."""
    import structlog

    configure_structlog_for_stdlib()
    logger = structlog.stdlib.get_logger("tests.structlog.native")
    logger.info("user signed up", user="bob", plan="pro")
    logger.bind(session="s-9").warning("retrying %s", "upload", attempt=2)
    return "done"


def levels_seen() -> dict[str, Any]:
    """Which levels are enabled in this process for the dictConfig test's loggers."""
    return {
        name: logging.getLogger(name).getEffectiveLevel()
        for name in ("app.debugging", "app.quiet", "app.other")
    }
