"""Structural self-check of a state, for tests and simulation harnesses.

`check_invariants(state)` returns a list of broken rules (empty when all hold). It
walks everything, so it costs O(n): call it from tests, not from `apply`.
"""

from __future__ import annotations

from collections import Counter

from . import _limits as L
from ._state import (
    DELAYED,
    INFLIGHT,
    READY,
    T_DELAY,
    T_EXPIRE,
    T_LEASE,
    X_RETAIN,
    X_TTL,
    MachineState,
    Queue,
    TimerEntry,
)
from ._store import timer_valid


def _check_queue(s: MachineState, q: Queue, valid_timers: set[TimerEntry]) -> list[str]:
    bad: list[str] = []
    name = q.name
    msgs = q.messages
    ids = list(msgs)
    if ids != sorted(ids):
        bad.append(f"{name}: messages not in id order")
    if ids and ids[-1] >= s.next_message_id:
        bad.append(f"{name}: message id beyond the counter")
    statuses = Counter(m.status for m in msgs.values())
    if (statuses[READY], statuses[INFLIGHT], statuses[DELAYED]) != (
        q.n_ready,
        q.n_inflight,
        q.n_delayed,
    ):
        bad.append(f"{name}: status counters disagree with messages")
    live_arrivals = [i for i in q.arrivals if i in msgs]
    if live_arrivals != ids:
        bad.append(f"{name}: arrivals do not list every message once, in order")
    if q.arrivals and q.arrivals[0] not in msgs:
        bad.append(f"{name}: arrivals head is stale")
    live_ready = [i for i in q.ready if i in msgs and msgs[i].status == READY]
    if len(live_ready) != len(set(live_ready)):
        bad.append(f"{name}: a message is twice in the ready heap")
    if q.fifo:
        heads: set[int] = set()
        for key, g in q.groups.items():
            if not g or g[0] not in msgs:
                bad.append(f"{name}: group {key!r} head is stale or empty")
                continue
            heads.add(g[0])
            members = [i for i in g if i in msgs]
            if members != sorted(members):
                bad.append(f"{name}: group {key!r} out of order")
        grouped = Counter(L.DEFAULT_GROUP if m.group is None else m.group for m in msgs.values())
        if {k: len([i for i in g if i in msgs]) for k, g in q.groups.items()} != dict(grouped):
            bad.append(f"{name}: groups do not hold every message once")
        expected = {h for h in heads if msgs[h].status == READY}
        if set(live_ready) != expected:
            bad.append(f"{name}: ready heap is not the set of ready group heads")
        for i, m in msgs.items():
            if m.status == INFLIGHT and i not in heads:
                bad.append(f"{name}: message {i} in flight behind an earlier one of its group")
    elif set(live_ready) != {i for i, m in msgs.items() if m.status == READY}:
        bad.append(f"{name}: ready heap is not the set of ready messages")
    for i, m in msgs.items():
        if m.status == INFLIGHT:
            entry = (m.due_ms, T_LEASE, q.uid, i, m.delivery_count)
            if entry not in valid_timers:
                bad.append(f"{name}: message {i} in flight without a lease timer")
            if m.due_ms is None or m.due_ms <= s.clock_ms:
                bad.append(f"{name}: message {i} in flight past its lease end")
        elif m.status == DELAYED:
            if (m.due_ms, T_DELAY, q.uid, i, 0) not in valid_timers:
                bad.append(f"{name}: delayed message {i} without a timer")
        elif m.due_ms is not None:
            bad.append(f"{name}: ready message {i} with a due time")
        if m.expire_ms is not None:
            if (m.expire_ms, T_EXPIRE, q.uid, i, X_TTL) not in valid_timers:
                bad.append(f"{name}: message {i} with a TTL but no timer")
            if m.expire_ms <= s.clock_ms:
                bad.append(f"{name}: message {i} outlived its TTL")
        if m.arrived_ms + q.options.retention_ms <= s.clock_ms:
            bad.append(f"{name}: message {i} outlived retention")
        if m.delivery_count < 0:
            bad.append(f"{name}: negative delivery count")
    if q.retain_mid is not None:
        entry = (q.retain_at_ms, T_EXPIRE, q.uid, q.retain_mid, X_RETAIN)
        if entry not in valid_timers:
            bad.append(f"{name}: retention timer not armed")
    elif msgs:
        bad.append(f"{name}: messages but no retention timer")
    if q.n_bytes != sum(m.size_bytes for m in msgs.values()):
        bad.append(f"{name}: n_bytes is not the sum of the body sizes")
    limit_bytes = q.options.max_length_bytes
    if limit_bytes is not None and q.n_bytes > limit_bytes:
        bad.append(f"{name}: holds more than max_length_bytes")
    gone = q.acked + q.dead_lettered + q.expired + q.purged + q.redriven
    if q.enqueued != len(msgs) + gone:
        bad.append(f"{name}: totals do not account for every message enqueued")
    if set(q.dedup) != {d for _, d in q.dedup_order} or len(q.dedup) != len(q.dedup_order):
        bad.append(f"{name}: dedup index and order disagree")
    return bad


def check_invariants(state: MachineState) -> list[str]:
    """Check the structural invariants of a state.

    Checked: every message is in exactly one place (READY, INFLIGHT or DELAYED in one
    queue, with counters, heaps and deques agreeing); no lease, delay, TTL or
    retention is overdue after an apply; every in-flight or delayed message has a live
    timer; a FIFO queue has at most one message in flight per group, its head;
    the timer heap's top is live; every message enqueued is held or counted as acked,
    dead-lettered, expired, purged or redriven.

    Args:
        state: The state (not changed).

    Returns:
        Descriptions of broken invariants; empty when all hold.
    """
    s = state
    bad: list[str] = []
    valid = {e for e in s.timers if timer_valid(s, e)}
    if s.timers and not timer_valid(s, s.timers[0]):
        bad.append("timer heap top is stale")
    if any(e[0] <= s.clock_ms for e in valid):
        bad.append("a timer due at or before the clock was not fired")
    total = 0
    for name, q in s.queues.items():
        if q.name != name or s.queues_by_uid.get(q.uid) is not q:
            bad.append(f"{name}: queue indexes disagree")
        total += len(q.messages)
        bad.extend(_check_queue(s, q, valid))
    if len(s.queues_by_uid) != len(s.queues):
        bad.append("queues_by_uid has extra queues")
    if total != s.total_messages:
        bad.append("total_messages disagrees with the queues")
    for topic, subscribers in s.topics.items():
        for qname in subscribers:
            if qname not in s.queues:
                bad.append(f"topic {topic}: subscribed queue {qname} does not exist")
    if s.woken:
        bad.append("scratch wake list not cleared")
    return bad
