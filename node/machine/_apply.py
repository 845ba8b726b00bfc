"""`apply`: one branch per command, after rabbit_fifo's `apply/3` on Ra.

Every apply runs in the same order on every replica:

1. check `meta` and the command (`BAD_REQUEST` / `UNKNOWN_OPERATION`, state unchanged);
2. advance the clock to `max(state.clock_ms, meta.now_ms)` (and a tick's `now_ms`);
3. fire every timer due by then (leases end, delays end, messages expire);
4. run the command;
5. fire timers the command made due at once (a lease of 0 ms);
6. collect effects: `WakeWaiters` for queues with newly deliverable messages,
   `StoreBodies` for bodies stored and dropped, `ArmTimer` when the earliest due time
   changed, `ReleaseCursor` when no message is held.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop
from typing import Any, Final

from . import _commands as C
from . import _errors as E
from . import _limits as L
from ._effects import ArmTimer, Effect, ReleaseCursor, StoreBodies
from ._options import dead_letter_options
from ._queries import query_list_queues, query_list_topics, query_queue_stats
from ._state import DELAYED, INFLIGHT, READY, T_DELAY, T_LEASE, MachineState, Queue
from ._store import (
    admit,
    admit_body,
    clean_dedup,
    clean_timer_top,
    dead_letter,
    deliver,
    make_room,
    push_timer,
    remove,
    run_due,
    set_ready,
)
from ._validate import meta_problem, validate

Reply = Any
"""A success reply (CBOR-encodable plain data) or an `ErrorReply`."""


def _not_found(name: object) -> E.ErrorReply:
    return E.ErrorReply(E.QUEUE_NOT_FOUND, f"no queue {name!r}")


def _new_queue(s: MachineState, name: str, options: Any) -> Queue:
    q = Queue(s.next_queue_uid, name, options)
    s.next_queue_uid += 1
    s.queues[name] = q
    s.queues_by_uid[q.uid] = q
    return q


def _create_queue(s: MachineState, c: C.CreateQueue, now: int) -> Reply:
    existing = s.queues.get(c.name)
    if existing is not None:
        if existing.options == c.options:
            return {"queue": c.name, "created": False}
        return E.ErrorReply(E.QUEUE_EXISTS, f"queue {c.name!r} exists with other options")
    _new_queue(s, c.name, c.options)
    dlq = c.options.dead_letter_queue
    if dlq is not None and dlq not in s.queues:
        _new_queue(s, dlq, dead_letter_options(c.options))
    return {"queue": c.name, "created": True}


def _delete_queue(s: MachineState, c: C.DeleteQueue, now: int) -> Reply:
    q = s.queues.pop(c.name, None)
    if q is None:
        return _not_found(c.name)
    del s.queues_by_uid[q.uid]
    s.total_messages -= len(q.messages)
    s.body_drops.extend(m.body_key for m in q.messages.values())
    for subscribers in s.topics.values():
        subscribers.pop(c.name, None)
    return {"queue": c.name, "deleted": len(q.messages)}


def _purge_queue(s: MachineState, c: C.PurgeQueue, now: int) -> Reply:
    q = s.queues.get(c.name)
    if q is None:
        return _not_found(c.name)
    n = len(q.messages)
    q.purged += n
    q.n_bytes = 0
    s.total_messages -= n
    s.body_drops.extend(m.body_key for m in q.messages.values())
    q.messages = {}
    q.ready = []
    q.arrivals.clear()
    q.groups = {}
    q.n_ready = q.n_inflight = q.n_delayed = 0
    return {"queue": c.name, "purged": n}


def _list_queues(s: MachineState, c: C.ListQueues, now: int) -> Reply:
    return query_list_queues(s)


def _queue_stats(s: MachineState, c: C.QueueStats, now: int) -> Reply:
    return query_queue_stats(s, c.name, now)


def _message_bytes(m: Any) -> int:
    size = len(m.body)
    for k, v in m.headers.items():
        size += len(k) if k.isascii() else len(k.encode())
        size += len(v) if v.isascii() else len(v.encode())
    return size


def _too_large(q: Queue, size: int) -> E.ErrorReply:
    return E.ErrorReply(
        E.MESSAGE_TOO_LARGE,
        f"message of {size} bytes exceeds max_message_bytes {q.options.max_message_bytes}",
    )


def _full(q: Queue, size_bytes: int = 0, count: int = 1) -> E.ErrorReply:
    """QUEUE_FULL, naming the limit that refused `count` messages of `size_bytes` in all."""
    o = q.options
    limit_bytes = o.max_length_bytes
    if limit_bytes is not None and q.n_bytes + size_bytes > limit_bytes:
        return E.ErrorReply(
            E.QUEUE_FULL,
            f"queue {q.name!r} holds {q.n_bytes} of max_length_bytes {limit_bytes}: "
            f"{size_bytes} more do not fit",
        )
    return E.ErrorReply(
        E.QUEUE_FULL, f"queue {q.name!r} holds {len(q.messages)} of max_length {o.max_length}"
    )


def _store_one(s: MachineState, q: Queue, m: Any, now: int) -> tuple[int, bool] | E.ErrorReply:
    """Enqueue one message (size already checked): dedup, capacity, then admit."""
    did = m.dedup_id
    window = q.options.dedup_window_ms
    if did is not None and window:
        if q.dedup_order:
            clean_dedup(q, now)
        prior = q.dedup.get(did)
        if prior is not None:
            return prior, True
    size = len(m.body)
    if not make_room(s, q, now, forward=True, size_bytes=size):
        return _full(q, size)
    delay = m.delay_ms
    mid = admit_body(
        s,
        q,
        m.body,
        dict(m.headers) if m.headers else None,
        q.options.delay_ms if delay is None else delay,
        m.ttl_ms,
        m.group,
        now,
    )
    if did is not None and window:
        q.dedup[did] = mid
        q.dedup_order.append((now + window, did))
    return mid, False


def _enqueue(s: MachineState, c: C.Enqueue, now: int) -> Reply:
    q = s.queues.get(c.queue)
    if q is None:
        return _not_found(c.queue)
    size = _message_bytes(c)
    if size > q.options.max_message_bytes:
        return _too_large(q, size)
    result = _store_one(s, q, c, now)
    if isinstance(result, E.ErrorReply):
        return result
    mid, duplicate = result
    return {"message_id": mid, "duplicate": duplicate}


def _enqueue_batch(s: MachineState, c: C.EnqueueBatch, now: int) -> Reply:
    q = s.queues.get(c.queue)
    if q is None:
        return _not_found(c.queue)
    for entry in c.entries:
        size = _message_bytes(entry)
        if size > q.options.max_message_bytes:
            return _too_large(q, size)
    limit = q.options.max_length
    limit_bytes = q.options.max_length_bytes
    if limit_bytes is not None:
        for entry in c.entries:
            if len(entry.body) > limit_bytes:  # never fits, whatever is dropped
                return _full(q, len(entry.body))
    if (limit is not None or limit_bytes is not None) and (
        q.options.overflow == L.OVERFLOW_REJECT_PUBLISH
    ):
        window = q.options.dedup_window_ms
        clean_dedup(q, now)
        seen: set[str] = set()
        fresh = 0
        fresh_bytes = 0
        for entry in c.entries:
            did = entry.dedup_id
            if did is not None and window:
                if did in q.dedup or did in seen:
                    continue
                seen.add(did)
            fresh += 1
            fresh_bytes += len(entry.body)
        if (limit is not None and len(q.messages) + fresh > limit) or (
            limit_bytes is not None and q.n_bytes + fresh_bytes > limit_bytes
        ):
            return _full(q, fresh_bytes, fresh)
    results = []
    for entry in c.entries:
        result = _store_one(s, q, entry, now)
        assert type(result) is tuple
        results.append({"message_id": result[0], "duplicate": result[1]})
    return {"results": results}


def _receipt(mid: int, attempt: int) -> str:
    return f"{mid}:{attempt}"


def _parse_receipt(receipt: str) -> tuple[int, int] | None:
    """Parse `"<message id>:<delivery attempt>"`; only the canonical form is accepted."""
    if len(receipt) > 45:
        return None
    a, sep, b = receipt.partition(":")
    if not (sep and a.isascii() and a.isdigit() and b.isascii() and b.isdigit()):
        return None
    mid, attempt = int(a), int(b)
    if _receipt(mid, attempt) != receipt:
        return None
    return mid, attempt


def _receive(s: MachineState, c: C.Receive, now: int) -> Reply:
    q = s.queues.get(c.queue)
    if q is None:
        return _not_found(c.queue)
    vt = c.visibility_timeout_ms
    lease_end = now + (q.options.visibility_timeout_ms if vt is None else vt)
    max_deliveries = q.options.max_deliveries
    out: list[dict[str, Any]] = []
    want = c.max_messages
    msgs = q.messages
    while len(out) < want and q.ready:
        mid = heappop(q.ready)
        m = msgs.get(mid)
        if m is None or m.status != READY:
            continue
        if max_deliveries and m.delivery_count >= max_deliveries:
            dead_letter(s, q, mid, m, L.REASON_DELIVERY_LIMIT, now, True)
            continue
        deliver(s, q, mid, m, lease_end)
        count = m.delivery_count
        out.append(
            {
                "message_id": mid,
                "body_key": m.body_key,
                "headers": dict(m.headers) if m.headers else {},
                "delivery_count": count,
                "first_enqueued_ms": m.first_ms,
                "enqueued_ms": m.arrived_ms,
                "group": m.group,
                "receipt": _receipt(mid, count),
            }
        )
    return {"messages": out}


def _held(q: Queue, receipt: str) -> tuple[int, Any] | None:
    parsed = _parse_receipt(receipt)
    if parsed is None:
        return None
    mid, attempt = parsed
    m = q.messages.get(mid)
    if m is None or m.status != INFLIGHT or m.delivery_count != attempt:
        return None
    return mid, m


def _invalid(receipt: str) -> E.ErrorReply:
    return E.ErrorReply(
        E.INVALID_RECEIPT, f"receipt {receipt!r} is not the current delivery of a message"
    )


def _ack(s: MachineState, c: C.Ack, now: int) -> Reply:
    q = s.queues.get(c.queue)
    if q is None:
        return _not_found(c.queue)
    acked = 0
    invalid: list[str] = []
    for receipt in c.receipts:
        held = _held(q, receipt)
        if held is None:
            invalid.append(receipt)
            continue
        remove(s, q, held[0], held[1])
        q.acked += 1
        acked += 1
    if not acked:
        return _invalid(invalid[0])
    return {"acked": acked, "invalid": invalid}


def _nack(s: MachineState, c: C.Nack, now: int) -> Reply:
    q = s.queues.get(c.queue)
    if q is None:
        return _not_found(c.queue)
    held = _held(q, c.receipt)
    if held is None:
        return _invalid(c.receipt)
    mid, m = held
    if c.reject:
        dead_letter(s, q, mid, m, L.REASON_REJECTED, now, True)
        return {"message_id": mid, "state": "dead_lettered"}
    q.n_inflight -= 1
    if c.delay_ms > 0:
        m.status = DELAYED
        m.due_ms = now + c.delay_ms
        q.n_delayed += 1
        push_timer(s, (m.due_ms, T_DELAY, q.uid, mid, 0))
        return {"message_id": mid, "state": "delayed"}
    set_ready(s, q, mid, m)
    return {"message_id": mid, "state": "ready"}


def _change_visibility(s: MachineState, c: C.ChangeVisibility, now: int) -> Reply:
    q = s.queues.get(c.queue)
    if q is None:
        return _not_found(c.queue)
    held = _held(q, c.receipt)
    if held is None:
        return _invalid(c.receipt)
    mid, m = held
    m.due_ms = now + c.timeout_ms
    push_timer(s, (m.due_ms, T_LEASE, q.uid, mid, m.delivery_count))
    return {"message_id": mid, "visible_at_ms": m.due_ms}


def _redrive(s: MachineState, c: C.Redrive, now: int) -> Reply:
    d = s.queues.get(c.dlq)
    if d is None:
        return _not_found(c.dlq)
    fixed: Queue | None = None
    if c.target is not None:
        fixed = s.queues.get(c.target)
        if fixed is None:
            return _not_found(c.target)
        if fixed is d:
            return E.ErrorReply(E.BAD_REQUEST, "target must differ from dlq")
    # Plan first (the arrivals deque must not change while it is iterated), then move.
    plan: list[tuple[int, Queue]] = []
    planned: dict[str, int] = {}
    planned_bytes: dict[str, int] = {}
    msgs = d.messages
    for mid in d.arrivals:
        if len(plan) >= c.max_messages:
            break
        m = msgs.get(mid)
        if m is None or m.status != READY:
            continue
        t = fixed
        if t is None:
            source = m.headers.get(L.H_QUEUE) if m.headers else None
            t = s.queues.get(source) if source is not None else None
            if t is None or t is d:
                continue
        limit = t.options.max_length
        limit_bytes = t.options.max_length_bytes
        if limit_bytes is not None and m.size_bytes > limit_bytes:
            continue  # never fits
        if t.options.overflow == L.OVERFLOW_REJECT_PUBLISH:
            if limit is not None and len(t.messages) + planned.get(t.name, 0) >= limit:
                continue
            more = planned_bytes.get(t.name, 0) + m.size_bytes
            if limit_bytes is not None and t.n_bytes + more > limit_bytes:
                continue
        planned[t.name] = planned.get(t.name, 0) + 1
        planned_bytes[t.name] = planned_bytes.get(t.name, 0) + m.size_bytes
        plan.append((mid, t))
    for mid, t in plan:
        m = msgs[mid]
        remove(s, d, mid, m, keep_body=True)
        d.redriven += 1
        make_room(s, t, now, forward=False, size_bytes=m.size_bytes)
        admit(s, t, m.body_key, m.size_bytes, m.headers, m.first_ms, 0, None, m.group, now)
    return {"moved": len(plan), "remaining": len(msgs)}


def _create_topic(s: MachineState, c: C.CreateTopic, now: int) -> Reply:
    if c.name in s.topics:
        return {"topic": c.name, "created": False}
    s.topics[c.name] = {}
    return {"topic": c.name, "created": True}


def _topic_not_found(name: str) -> E.ErrorReply:
    return E.ErrorReply(E.TOPIC_NOT_FOUND, f"no topic {name!r}")


def _delete_topic(s: MachineState, c: C.DeleteTopic, now: int) -> Reply:
    if s.topics.pop(c.name, None) is None:
        return _topic_not_found(c.name)
    return {"topic": c.name, "deleted": True}


def _subscribe(s: MachineState, c: C.Subscribe, now: int) -> Reply:
    subscribers = s.topics.get(c.topic)
    if subscribers is None:
        return _topic_not_found(c.topic)
    if c.queue not in s.queues:
        return _not_found(c.queue)
    new = c.queue not in subscribers
    subscribers[c.queue] = None
    return {"topic": c.topic, "queue": c.queue, "subscribed": new}


def _unsubscribe(s: MachineState, c: C.Unsubscribe, now: int) -> Reply:
    subscribers = s.topics.get(c.topic)
    if subscribers is None:
        return _topic_not_found(c.topic)
    found = subscribers.pop(c.queue, 0) is None
    return {"topic": c.topic, "queue": c.queue, "unsubscribed": found}


def _publish(s: MachineState, c: C.Publish, now: int) -> Reply:
    subscribers = s.topics.get(c.topic)
    if subscribers is None:
        return _topic_not_found(c.topic)
    size = _message_bytes(c)
    results: list[dict[str, Any]] = []
    for name in subscribers:
        q = s.queues[name]
        outcome: tuple[int, bool] | E.ErrorReply
        if size > q.options.max_message_bytes:
            outcome = _too_large(q, size)
        else:
            outcome = _store_one(s, q, c, now)
        if type(outcome) is E.ErrorReply:
            results.append(
                {"queue": name, "message_id": None, "duplicate": False, "error": outcome.code}
            )
        else:
            assert type(outcome) is tuple
            results.append(
                {"queue": name, "message_id": outcome[0], "duplicate": outcome[1], "error": None}
            )
    return {"topic": c.topic, "results": results}


def _list_topics(s: MachineState, c: C.ListTopics, now: int) -> Reply:
    return query_list_topics(s)


def _tick(s: MachineState, c: C.Tick, now: int) -> Reply:
    return {"now_ms": now}


_HANDLERS: Final[dict[type, Callable[[MachineState, Any, int], Reply]]] = {
    C.CreateQueue: _create_queue,
    C.DeleteQueue: _delete_queue,
    C.PurgeQueue: _purge_queue,
    C.ListQueues: _list_queues,
    C.QueueStats: _queue_stats,
    C.Enqueue: _enqueue,
    C.EnqueueBatch: _enqueue_batch,
    C.Receive: _receive,
    C.Ack: _ack,
    C.Nack: _nack,
    C.ChangeVisibility: _change_visibility,
    C.Redrive: _redrive,
    C.CreateTopic: _create_topic,
    C.DeleteTopic: _delete_topic,
    C.Subscribe: _subscribe,
    C.Unsubscribe: _unsubscribe,
    C.Publish: _publish,
    C.ListTopics: _list_topics,
    C.Tick: _tick,
}


def apply(
    meta: C.Meta, command: object, state: MachineState
) -> tuple[MachineState, Reply, list[Effect]]:
    """Apply one committed log entry to the state.

    Pure in the sense of rabbit_fifo: the result depends only on `meta`, `command`
    and `state`; no clock, randomness or I/O. The state is mutated in place and
    returned (it is large; copying it per entry would be too slow).

    Args:
        meta: Index, term and leader time (`now_ms`) of the entry.
        command: The command; any value is accepted.
        state: The state, mutated in place.

    Returns:
        `(state, reply, effects)`: the reply is plain CBOR-encodable data or an
        `ErrorReply` (a receive's messages carry `body_key` where the body goes: see
        `fill_bodies`); effects are `WakeWaiters`, `ArmTimer` and `ReleaseCursor` values,
        each idempotent, and at most one `StoreBodies` (what every replica writes to its
        body store). Never raises.
    """
    try:
        return _apply(meta, command, state)
    except Exception as exc:  # pragma: no cover - a bug; never expected
        state.woken.clear()
        state.body_puts.clear()
        state.body_drops.clear()
        return state, E.ErrorReply(E.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"), []


def _apply(meta: C.Meta, cmd: object, s: MachineState) -> tuple[MachineState, Reply, list[Effect]]:
    problem = meta_problem(meta)
    if problem is not None:
        return s, problem, []
    problem = validate(cmd)
    if problem is not None:
        s.last_index = meta.index
        s.last_term = meta.term
        return s, problem, []
    now = meta.now_ms
    if now < s.clock_ms:
        now = s.clock_ms
    if type(cmd) is C.Tick and cmd.now_ms > now:
        now = cmd.now_ms
    s.clock_ms = now
    s.last_index = meta.index
    s.last_term = meta.term
    timers = s.timers
    before = timers[0][0] if timers else None
    if timers and timers[0][0] <= now:
        run_due(s, now)
    reply = _HANDLERS[type(cmd)](s, cmd, now)
    if timers and timers[0][0] <= now:
        run_due(s, now)
    clean_timer_top(s)
    effects: list[Effect] = []
    woken = s.woken
    if woken:
        effects.extend(woken.values())
        woken.clear()
    if s.body_puts or s.body_drops:
        effects.append(StoreBodies(tuple(s.body_puts), tuple(s.body_drops)))
        s.body_puts.clear()
        s.body_drops.clear()
    if timers:
        after = timers[0][0]
        if after != before:
            effects.append(ArmTimer(after))
    if not s.total_messages:
        effects.append(ReleaseCursor(meta.index))
    return s, reply, effects


def state_enter(role: str, state: MachineState) -> list[Effect]:
    """Effects a replica must realise on entering `role` (after ra_machine's state_enter).

    A new leader re-arms the timer for the earliest due time, wakes the long-poll
    waiters of every queue with ready messages, and may release the log when no
    message is held. Other roles realise nothing.

    Args:
        role: "leader", "follower", "candidate", ...
        state: Current state (not changed).

    Returns:
        The effects, in a deterministic order (queues by name).
    """
    if role != "leader":
        return []
    effects: list[Effect] = []
    if state.timers:
        effects.append(ArmTimer(state.timers[0][0]))
    for name in sorted(state.queues):
        q = state.queues[name]
        if q.n_ready:
            effects.append(q.wake)
    if not state.total_messages:
        effects.append(ReleaseCursor(state.last_index))
    return effects
