"""Runs on the Dask scheduler (``Client.run_on_scheduler``) when an executor shuts down.

The scheduler keeps the last events of every topic (``distributed.admin.low-level-log-length``,
1000 by default) for ``Client.get_events``, and offers no public way to drop a topic. An
executor's topic is its own, so at shutdown we drop what the scheduler kept of it: the
records it carried, and the topic itself once no one subscribes. This is the one place that
touches the scheduler's private ``_broker``; if a future ``distributed`` moves it, the
executor leaves the events where they are (bounded as above) and says so once.
"""

from __future__ import annotations

from typing import Any


def forget_topic(topic: str, dask_scheduler: Any = None) -> bool:
    """Drop what the scheduler kept of ``topic``; False if this scheduler cannot be told."""
    broker = getattr(dask_scheduler, "_broker", None)
    topics = getattr(broker, "_topics", None)
    if broker is None or not isinstance(topics, dict):
        return False
    kept = topics.get(topic)
    if kept is None:
        return True
    broker.truncate(topic)
    if not getattr(kept, "subscribers", ()):
        # The unsubscribe travels on the client's stream and may not be here yet; if
        # someone still subscribes, the (now empty) topic stays for them.
        topics.pop(topic, None)
    return True
