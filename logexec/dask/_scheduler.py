"""Runs on the Dask scheduler (``Client.run_on_scheduler``) when an executor shuts down.

The scheduler keeps the last events of every topic (``distributed.admin.low-level-log-length``,
1000 by default) for ``Client.get_events``, and offers no public way to drop a topic. An
executor's topic is its own, so at shutdown we unsubscribe the executor's client and drop
what the scheduler kept of the topic: the records it carried, and the topic itself.

The unsubscription happens here, not with ``Client.unsubscribe_topic``: that message travels
on the client's stream, which this call may overtake, and a late unsubscribe would make the
broker (a ``defaultdict``) create the topic again, empty, for good.

This is the one place that touches the scheduler's private ``_broker``; if a future
``distributed`` moves it, this returns False and the executor falls back on
``Client.unsubscribe_topic``, leaving the events where they are (bounded as above).
"""

from __future__ import annotations

from typing import Any


def forget_topic(topic: str, client_id: str, dask_scheduler: Any = None) -> bool:
    """Unsubscribe ``client_id`` from ``topic`` and drop what the scheduler kept of it.

    False if this scheduler's broker is not where we expect it (nothing was done).
    """
    broker = getattr(dask_scheduler, "_broker", None)
    topics = getattr(broker, "_topics", None)
    if broker is None or not isinstance(topics, dict):
        return False
    kept = topics.get(topic)
    if kept is None:
        return True
    broker.unsubscribe(topic, client_id)
    broker.truncate(topic)
    if not kept.subscribers:  # no one else knows the name, but if they do, keep it for them
        del topics[topic]
    return True
