"""A request id in a ``ContextVar``: read by a parent-side filter, and by the task itself.

* A filter in the parent stamps ``record.request_id`` from ``REQUEST_ID``. It runs in the
  listener thread, yet sees the value that was set where ``submit`` was called: each
  task's records are dispatched inside the submitter's ``contextvars`` context.
* ``propagate_contextvars=[REQUEST_ID]`` also copies the value into the worker while the
  task runs, so the task's own code can read it (here, to put it in its result).

Run: python3 examples/request_id.py
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading

from logexec import LoggingProcessPoolExecutor

# Module-level, so that workers can import it to receive its value.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_ID", default="-")


class RequestIdFilter(logging.Filter):
    """Parent-side: stamp each record with the request id of the context it is handled in."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def resize_image(name: str) -> str:
    logger = logging.getLogger("example.images")
    logger.info("resizing %s", name)
    logger.info("stored %s", name)
    # The task reads the value too, thanks to propagate_contextvars.
    return f"{name} resized for {REQUEST_ID.get()}"


def main() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("[%(request_id)s] %(processName)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    results: dict[str, str] = {}
    with LoggingProcessPoolExecutor(max_workers=2, propagate_contextvars=[REQUEST_ID]) as executor:
        # Under fork the first submit forks the workers: do it before starting threads.
        executor.submit(int).result(timeout=30)

        def serve(request_id: str, image: str) -> None:
            # Each thread is one "request" with its own context, as in a web server.
            REQUEST_ID.set(request_id)
            logging.getLogger("example.web").info("request received")
            results[request_id] = executor.submit(resize_image, image).result(timeout=30)

        threads = [
            threading.Thread(target=serve, args=(f"req-{number}", f"photo{number}.jpg"))
            for number in (1, 2, 3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    for request_id in sorted(results):
        print(f"{request_id}: {results[request_id]}")


if __name__ == "__main__":
    main()
