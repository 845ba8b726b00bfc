"""Primitive moves of messages between places, keeping every index consistent.

Every function here runs in O(log n) or amortized O(1) in the number of messages.
Places of a message: READY, INFLIGHT, DELAYED (in a queue), or gone (acked,
dead-lettered, expired, purged, redriven: no longer in the queue's `messages`).
"""

from __future__ import annotations

from collections import deque
from heapq import heapify, heappop, heappush

from . import _limits as L
from ._state import (
    COMPACT_SLACK,
    DELAYED,
    INFLIGHT,
    READY,
    T_DELAY,
    T_EXPIRE,
    T_LEASE,
    X_RETAIN,
    X_TTL,
    MachineState,
    Message,
    Queue,
    TimerEntry,
)


def push_timer(s: MachineState, entry: TimerEntry) -> None:
    """Add a timer entry, compacting the heap when stale entries dominate."""
    timers = s.timers
    heappush(timers, entry)
    if len(timers) > s.timers_limit:
        timers[:] = [e for e in timers if timer_valid(s, e)]
        heapify(timers)
        s.timers_limit = 2 * len(timers) + COMPACT_SLACK


def timer_valid(s: MachineState, entry: TimerEntry) -> bool:
    """Tell whether a timer entry still describes the state (else it is stale)."""
    due, kind, uid, mid, extra = entry
    q = s.queues_by_uid.get(uid)
    if q is None:
        return False
    if kind == T_EXPIRE and extra == X_RETAIN:
        return q.retain_mid == mid and q.retain_at_ms == due
    m = q.messages.get(mid)
    if m is None:
        return False
    if kind == T_LEASE:
        return m.status == INFLIGHT and m.due_ms == due and m.delivery_count == extra
    if kind == T_DELAY:
        return m.status == DELAYED and m.due_ms == due
    return True


def clean_timer_top(s: MachineState) -> None:
    """Pop stale entries off the timer heap so that its top is a real due time."""
    timers = s.timers
    while timers and not timer_valid(s, timers[0]):
        heappop(timers)


def _push_ready(s: MachineState, q: Queue, mid: int) -> None:
    """Make `mid` deliverable: push it on the ready heap and note a `WakeWaiters`."""
    ready = q.ready
    heappush(ready, mid)
    if len(ready) > q.ready_limit:
        msgs = q.messages
        live = [i for i in ready if (m := msgs.get(i)) is not None and m.status == READY]
        heapify(live)
        q.ready = live
        q.ready_limit = 2 * len(live) + COMPACT_SLACK
    s.woken[q.name] = q.wake


def group_key(m: Message) -> str:
    """The FIFO group of a message (the default group "" when it has none)."""
    g = m.group
    return L.DEFAULT_GROUP if g is None else g


def set_ready(s: MachineState, q: Queue, mid: int, m: Message) -> None:
    """Make a message READY (the caller has taken it out of its previous counter)."""
    m.status = READY
    m.due_ms = None
    q.n_ready += 1
    if not q.fifo:
        _push_ready(s, q, mid)
    elif q.groups[group_key(m)][0] == mid:
        _push_ready(s, q, mid)


def arm_retention(s: MachineState, q: Queue) -> None:
    """Arm the queue's one retention timer for its oldest message, or disarm it."""
    if q.arrivals:
        head = q.arrivals[0]
        at = q.messages[head].arrived_ms + q.options.retention_ms
        q.retain_mid = head
        q.retain_at_ms = at
        push_timer(s, (at, T_EXPIRE, q.uid, head, X_RETAIN))
    else:
        q.retain_mid = None
        q.retain_at_ms = None


def admit(
    s: MachineState,
    q: Queue,
    body_key: int | None,
    size_bytes: int,
    headers: dict[str, str] | None,
    first_ms: int | None,
    delay_ms: int,
    ttl_ms: int | None,
    group: str | None,
    now: int,
) -> int:
    """Store a new message in `q` (capacity already checked) and return its new id.

    The body is not stored here: a new body is recorded by `admit_body`; a moved message
    passes the body key it keeps.

    Args:
        s: State.
        q: Target queue.
        body_key: Body key of a moved message, or None for a new body (its key is the new id).
        size_bytes: Body size in bytes.
        headers: Headers or None.
        first_ms: First-enqueued time to keep, or None for `now`.
        delay_ms: Delay before it becomes visible (0 for none).
        ttl_ms: Time to live or None.
        group: Message group or None.
        now: Current time in ms.

    Returns:
        The message id, taken from the global counter.
    """
    mid = s.next_message_id
    s.next_message_id = mid + 1
    bkey = mid if body_key is None else body_key
    retention = q.options.retention_ms
    expire = now + ttl_ms if ttl_ms is not None and ttl_ms < retention else None
    if delay_ms > 0:
        due = now + delay_ms
        m = Message(
            bkey,
            size_bytes,
            headers,
            now,
            now if first_ms is None else first_ms,
            0,
            DELAYED,
            due,
            expire,
            group,
        )
        q.n_delayed += 1
    else:
        m = Message(
            bkey,
            size_bytes,
            headers,
            now,
            now if first_ms is None else first_ms,
            0,
            READY,
            None,
            expire,
            group,
        )
        q.n_ready += 1
    q.messages[mid] = m
    q.n_bytes += size_bytes
    q.arrivals.append(mid)
    if q.fifo:
        key = L.DEFAULT_GROUP if group is None else group
        g = q.groups.get(key)
        if g is None:
            g = q.groups[key] = deque()
        g.append(mid)
        if len(g) == 1 and delay_ms <= 0:
            _push_ready(s, q, mid)
    elif delay_ms <= 0:
        _push_ready(s, q, mid)
    if delay_ms > 0:
        push_timer(s, (now + delay_ms, T_DELAY, q.uid, mid, 0))
    if expire is not None:
        push_timer(s, (expire, T_EXPIRE, q.uid, mid, X_TTL))
    if q.retain_mid is None:
        q.retain_mid = mid
        q.retain_at_ms = now + retention
        push_timer(s, (now + retention, T_EXPIRE, q.uid, mid, X_RETAIN))
    q.enqueued += 1
    s.total_messages += 1
    return mid


_SIZES: dict[int, int] = {}
"""One int object per body size seen (an int above 256 costs 32 bytes per message otherwise):
a cache of values, not state; every replica decides the same with or without it."""
_SIZES_MAX = 4096

_NOW: list[int] = [0]
"""The last arrival time stamped on a message, as one int object: the messages enqueued in
one millisecond share it (28 bytes per message otherwise). A cache, like `_SIZES`."""


def admit_body(
    s: MachineState,
    q: Queue,
    body: bytes,
    headers: dict[str, str] | None,
    delay_ms: int,
    ttl_ms: int | None,
    group: str | None,
    now: int,
) -> int:
    """`admit` a message with a new body, and record the body for the body store."""
    size = len(body)
    shared = _SIZES.get(size)
    if shared is None:
        shared = size
        if len(_SIZES) < _SIZES_MAX:
            _SIZES[size] = size
    if now == _NOW[0]:
        now = _NOW[0]
    else:
        _NOW[0] = now
    mid = admit(s, q, None, shared, headers, None, delay_ms, ttl_ms, group, now)
    s.body_puts.append((mid, body))
    return mid


def remove(s: MachineState, q: Queue, mid: int, m: Message, keep_body: bool = False) -> None:
    """Take a message out of its queue for good (acked, dead-lettered, expired, moved).

    Its body is dropped from the body store unless `keep_body` (the caller moves it).
    """
    msgs = q.messages
    del msgs[mid]
    q.n_bytes -= m.size_bytes
    if not keep_body:
        s.body_drops.append(m.body_key)
    status = m.status
    if status == READY:
        q.n_ready -= 1
    elif status == INFLIGHT:
        q.n_inflight -= 1
    else:
        q.n_delayed -= 1
    s.total_messages -= 1
    arrivals = q.arrivals
    if arrivals[0] == mid:
        arrivals.popleft()
        while arrivals and arrivals[0] not in msgs:
            arrivals.popleft()
    elif len(arrivals) > 2 * len(msgs) + COMPACT_SLACK:
        q.arrivals = deque(msgs)
    if q.fifo:
        key = group_key(m)
        g = q.groups[key]
        if g[0] == mid:
            g.popleft()
            while g and g[0] not in msgs:
                g.popleft()
            if not g:
                del q.groups[key]
            elif msgs[g[0]].status == READY:
                _push_ready(s, q, g[0])


def deliver(s: MachineState, q: Queue, mid: int, m: Message, lease_end_ms: int) -> None:
    """Move a READY message (already popped from `ready`) in flight until `lease_end_ms`."""
    count = m.delivery_count + 1
    m.delivery_count = count
    m.status = INFLIGHT
    m.due_ms = lease_end_ms
    q.n_ready -= 1
    q.n_inflight += 1
    q.delivered += 1
    if count > 1:
        q.redelivered += 1
    push_timer(s, (lease_end_ms, T_LEASE, q.uid, mid, count))


def dead_letter(
    s: MachineState, q: Queue, mid: int, m: Message, reason: str, now: int, forward: bool
) -> None:
    """Remove a message for `reason` and, when `forward`, enqueue a copy in the DLQ.

    The copy gets a new id, delivery count 0, no delay and no TTL, and headers naming
    the reason, the queue, the delivery count, the time and the original id
    (RabbitMQ dead-letter headers; the TTL is dropped as RabbitMQ does). To keep the
    work of one command bounded, a message dropped to make room for a dead letter is
    discarded, not forwarded again, and a dead letter that meets a full
    `reject_publish` queue is discarded.

    Args:
        s: State.
        q: The queue holding the message.
        mid: Message id.
        m: The message.
        reason: `expired`, `delivery_limit`, `max_length` or `rejected`.
        now: Current time in ms.
        forward: Whether to copy it into the dead-letter queue (if one exists).
    """
    remove(s, q, mid, m, keep_body=True)
    if reason == L.REASON_EXPIRED:
        q.expired += 1
    else:
        q.dead_lettered += 1
    if not _forward_copy(s, q, mid, m, reason, now, forward):
        s.body_drops.append(m.body_key)


def _forward_copy(
    s: MachineState, q: Queue, mid: int, m: Message, reason: str, now: int, forward: bool
) -> bool:
    """Enqueue the dead-letter copy of `m` (its body moves with it); False when not forwarded."""
    if not forward:
        return False
    name = q.options.dead_letter_queue
    if name is None:
        return False
    d = s.queues.get(name)
    if d is None or d is q:
        return False
    headers = dict(m.headers) if m.headers else {}
    headers[L.H_REASON] = reason
    headers[L.H_QUEUE] = q.name
    headers[L.H_COUNT] = str(m.delivery_count)
    headers[L.H_TIME] = str(now)
    headers[L.H_MESSAGE_ID] = str(mid)
    if not make_room(s, d, now, forward=False, size_bytes=m.size_bytes):
        return False
    admit(s, d, m.body_key, m.size_bytes, headers, m.first_ms, 0, None, m.group, now)
    return True


def make_room(s: MachineState, q: Queue, now: int, forward: bool, size_bytes: int = 0) -> bool:
    """Make room for one more message of `size_bytes` under `max_length` and
    `max_length_bytes`.

    Args:
        s: State.
        q: Queue about to receive a message.
        now: Current time in ms.
        forward: Whether a message dropped by `drop_head` goes to the DLQ.
        size_bytes: Body size of the message to come.

    Returns:
        False when it does not fit: `q` is full and its overflow is `reject_publish`, or the
        message alone is larger than `max_length_bytes`; else True (after dropping the oldest
        messages while `q` is full and its overflow is `drop_head`).
    """
    limit = q.options.max_length
    limit_bytes = q.options.max_length_bytes
    if limit_bytes is not None and size_bytes > limit_bytes:
        return False
    while (limit is not None and len(q.messages) >= limit) or (
        limit_bytes is not None and q.n_bytes + size_bytes > limit_bytes
    ):
        if q.options.overflow == L.OVERFLOW_REJECT_PUBLISH:
            return False
        oldest = q.arrivals[0]
        dead_letter(s, q, oldest, q.messages[oldest], L.REASON_MAX_LENGTH, now, forward)
    return True


def run_due(s: MachineState, now: int) -> None:
    """Fire every timer due at or before `now`, in (due, kind, queue, message) order.

    Lease ends make messages visible again, delay ends release them, and expiries
    (TTL or retention) dead-letter them with reason `expired`.
    """
    timers = s.timers
    by_uid = s.queues_by_uid
    while timers and timers[0][0] <= now:
        due, kind, uid, mid, extra = heappop(timers)
        q = by_uid.get(uid)
        if q is None:
            continue
        if kind == T_EXPIRE and extra == X_RETAIN:
            if q.retain_mid != mid or q.retain_at_ms != due:
                continue
            m = q.messages.get(mid)
            if m is not None:
                dead_letter(s, q, mid, m, L.REASON_EXPIRED, now, True)
            arm_retention(s, q)
            continue
        m = q.messages.get(mid)
        if m is None:
            continue
        if kind == T_LEASE:
            if m.status == INFLIGHT and m.due_ms == due and m.delivery_count == extra:
                q.n_inflight -= 1
                set_ready(s, q, mid, m)
        elif kind == T_DELAY:
            if m.status == DELAYED and m.due_ms == due:
                q.n_delayed -= 1
                set_ready(s, q, mid, m)
        else:
            dead_letter(s, q, mid, m, L.REASON_EXPIRED, now, True)


def clean_dedup(q: Queue, now: int) -> None:
    """Forget deduplication ids whose window ended at or before `now`."""
    order = q.dedup_order
    while order and order[0][0] <= now:
        _, did = order.popleft()
        del q.dedup[did]
