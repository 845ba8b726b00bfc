"""Pure reads of the state: `query_*` never change it.

The leader may answer read-only commands with these, without a log entry; `apply`
of the same command gives the same answer (computed after the entry's time has
been applied).
"""

from __future__ import annotations

from typing import Any

from . import _errors as E
from ._state import TOTAL_NAMES, MachineState


def query_list_queues(state: MachineState) -> dict[str, Any]:
    """Names of all queues.

    Returns:
        `{"queues": [name, ...]}`, sorted by name.
    """
    return {"queues": sorted(state.queues)}


def query_list_topics(state: MachineState) -> dict[str, Any]:
    """All topics and their subscribed queues.

    Returns:
        `{"topics": [{"name": str, "queues": [name, ...]}, ...]}`, topics sorted by
        name, queues in subscription order.
    """
    return {
        "topics": [
            {"name": name, "queues": list(state.topics[name])} for name in sorted(state.topics)
        ]
    }


def query_queue_stats(state: MachineState, name: str, now_ms: int) -> dict[str, Any] | E.ErrorReply:
    """Counts and lifetime totals of one queue.

    Args:
        state: State.
        name: Queue name.
        now_ms: Time at which to compute the oldest message's age.

    Returns:
        A dict with `queue`, `ready`, `in_flight`, `delayed`, `messages`, `bytes` (body
        bytes held), `oldest_age_ms` (None when empty) and the totals `enqueued`, `delivered`,
        `redelivered`, `acked`, `dead_lettered`, `expired`, `purged`, `redriven`;
        or `ErrorReply(QUEUE_NOT_FOUND)`.
    """
    q = state.queues.get(name) if type(name) is str else None
    if q is None:
        return E.ErrorReply(E.QUEUE_NOT_FOUND, f"no queue {name!r}")
    oldest: int | None = None
    if q.arrivals:
        oldest = max(0, now_ms - q.messages[q.arrivals[0]].arrived_ms)
    reply: dict[str, Any] = {
        "queue": q.name,
        "ready": q.n_ready,
        "in_flight": q.n_inflight,
        "delayed": q.n_delayed,
        "messages": len(q.messages),
        "bytes": q.n_bytes,
        "oldest_age_ms": oldest,
    }
    reply.update(zip(TOTAL_NAMES, q.totals(), strict=True))
    return reply


def query_queue_options(state: MachineState, name: str) -> dict[str, Any] | None:
    """The options of a queue as a plain dict, or None when there is no such queue."""
    q = state.queues.get(name) if type(name) is str else None
    return None if q is None else q.options.to_dict()


def query_depth(state: MachineState, name: str) -> int | None:
    """Messages held by a queue (ready, in flight and delayed), or None if it does not exist."""
    q = state.queues.get(name) if type(name) is str else None
    return None if q is None else len(q.messages)


def query_ready(state: MachineState, name: str) -> int | None:
    """Messages of a queue that are neither in flight nor delayed, or None if no queue.

    In a FIFO queue some of them may wait behind an in-flight message of their group.
    """
    q = state.queues.get(name) if type(name) is str else None
    return None if q is None else q.n_ready


def query_next_due_ms(state: MachineState) -> int | None:
    """The earliest time a timer falls due (lease end, delay end, expiry), or None."""
    return state.timers[0][0] if state.timers else None


def query_total_messages(state: MachineState) -> int:
    """Messages held by all queues together."""
    return state.total_messages
