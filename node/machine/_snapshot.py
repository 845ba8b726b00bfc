"""Snapshot, restore and digest of the machine state.

The snapshot holds the logical state only: queues sorted by name, messages in id
order, live deduplication ids, topics; the heaps and deques are rebuilt on restore
(stale heap entries are not state). Encoding is canonical CBOR, so equal states give
equal bytes and `digest` can compare replicas.

Format (version 1), a CBOR array:
`[1, clock_ms, next_message_id, next_queue_uid, last_index, last_term, queues, topics]`
with each queue `[uid, name, options, totals, retain_mid, retain_at_ms, messages, dedup]`,
each message `[id, body, headers, arrived_ms, first_ms, delivery_count, status, due_ms,
expire_ms, group]`, each dedup entry `[dedup_id, message_id, expires_ms]`, and each
topic `[name, [queue, ...]]`.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterator
from heapq import heapify
from typing import Any, Final

import cbor2

from . import _limits as L
from ._errors import SnapshotError
from ._options import options_from_list, options_problem
from ._state import (
    COMPACT_SLACK,
    DELAYED,
    INFLIGHT,
    READY,
    T_DELAY,
    T_EXPIRE,
    T_LEASE,
    TOTAL_NAMES,
    X_RETAIN,
    X_TTL,
    MachineState,
    Message,
    Queue,
    TimerEntry,
)

FORMAT_VERSION: Final = 1


def _message_item(m: Message, mid: int) -> list[Any]:
    return [
        mid,
        m.body,
        m.headers,
        m.arrived_ms,
        m.first_ms,
        m.delivery_count,
        m.status,
        m.due_ms,
        m.expire_ms,
        m.group,
    ]


def _array_header(n: int) -> bytes:
    """The canonical CBOR head of an array of `n` items (RFC 8949, 3.1, major type 4)."""
    if n < 24:
        return bytes([0x80 + n])
    if n < 1 << 8:
        return bytes([0x98, n])
    if n < 1 << 16:
        return b"\x99" + n.to_bytes(2, "big")
    if n < 1 << 32:
        return b"\x9a" + n.to_bytes(4, "big")
    return b"\x9b" + n.to_bytes(8, "big")


def _dumps(obj: object) -> bytes:
    return cbor2.dumps(obj, canonical=True)


SNAPSHOT_SLICE: Final = 2048
"""Messages encoded per cbor2 call by `snapshot_chunks`."""


def _queue_chunks(q: Queue, clock_ms: int) -> Iterator[bytes]:
    yield _array_header(8)
    for v in (q.uid, q.name, q.options.to_list(), q.totals(), q.retain_mid, q.retain_at_ms):
        yield _dumps(v)
    yield _array_header(len(q.messages))
    batch: list[list[Any]] = []
    for mid, m in q.messages.items():
        batch.append(_message_item(m, mid))
        if len(batch) == SNAPSHOT_SLICE:
            yield _dumps(batch)[len(_array_header(len(batch))) :]
            batch = []
    if batch:
        yield _dumps(batch)[len(_array_header(len(batch))) :]
    yield _dumps([[did, q.dedup[did], exp] for exp, did in q.dedup_order if exp > clock_ms])


def snapshot_chunks(state: MachineState) -> Iterator[bytes]:
    """The bytes of `snapshot(state)`, in pieces of at most a few thousand messages each.

    Concatenated they equal `snapshot(state)` (canonical CBOR is the concatenation of the
    array head and its items' encodings). Between pieces the encoder returns to Python, so a
    worker thread encoding a large state lets other threads run. The state must not change
    until the iterator is exhausted.
    """
    s = state
    yield _array_header(8)
    for v in (FORMAT_VERSION, s.clock_ms, s.next_message_id, s.next_queue_uid, s.last_index,
              s.last_term):
        yield _dumps(v)
    yield _array_header(len(s.queues))
    for name in sorted(s.queues):
        yield from _queue_chunks(s.queues[name], s.clock_ms)
    yield _dumps([[name, list(s.topics[name])] for name in sorted(s.topics)])


def snapshot(state: MachineState) -> bytes:
    """Encode the state as canonical CBOR bytes.

    Args:
        state: The state (not changed).

    Returns:
        Bytes that `restore` turns back into an equal state; equal states give equal bytes.
    """
    return b"".join(snapshot_chunks(state))


def digest(state: MachineState) -> str:
    """Hex SHA-256 of `snapshot(state)`: equal for replicas in the same state."""
    return hashlib.sha256(snapshot(state)).hexdigest()


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise SnapshotError(f"corrupt snapshot: {what}")


def _is_int(v: object) -> bool:
    return type(v) is int and v >= 0


def _opt_int(v: object) -> bool:
    return v is None or _is_int(v)


def _list(v: object, n: int | None = None) -> list[Any]:
    _need(type(v) is list and (n is None or len(v) == n), "expected an array")
    assert isinstance(v, list)
    return v


def _restore_queue(s: MachineState, item: object, timers: list[TimerEntry]) -> None:
    uid, name, opts_raw, totals, retain_mid, retain_at, messages, dedup = _list(item, 8)
    _need(_is_int(uid) and uid < s.next_queue_uid and uid not in s.queues_by_uid, "queue uid")
    _need(L.is_valid_name(name) and name not in s.queues, "queue name")
    options = options_from_list(opts_raw)
    _need(options is not None and options_problem(options) is None, "queue options")
    assert options is not None
    q = Queue(uid, name, options)
    totals = _list(totals, len(TOTAL_NAMES))
    _need(all(_is_int(t) for t in totals), "queue totals")
    for key, value in zip(TOTAL_NAMES, totals, strict=True):
        setattr(q, key, value)
    last = 0
    for raw in _list(messages):
        mid, body, headers, arrived, first, count, status, due, expire, group = _list(raw, 10)
        _need(_is_int(mid) and last < mid < s.next_message_id, "message id order")
        last = mid
        _need(type(body) is bytes, "body")
        _need(
            headers is None
            or (
                type(headers) is dict
                and all(type(k) is str and type(v) is str for k, v in headers.items())
            ),
            "headers",
        )
        _need(_is_int(arrived) and _is_int(first) and _is_int(count), "message times")
        _need(status in (READY, INFLIGHT, DELAYED) and type(status) is int, "status")
        _need((due is None) == (status == READY) and _opt_int(due), "due time")
        _need(_opt_int(expire), "expiry")
        _need(group is None or type(group) is str, "group")
        m = Message(body, headers or None, arrived, first, count, status, due, expire, group)
        q.messages[mid] = m
        if status == READY:
            q.n_ready += 1
        elif status == INFLIGHT:
            q.n_inflight += 1
            timers.append((due, T_LEASE, uid, mid, count))
        else:
            q.n_delayed += 1
            timers.append((due, T_DELAY, uid, mid, 0))
        if expire is not None:
            timers.append((expire, T_EXPIRE, uid, mid, X_TTL))
        if q.fifo:
            key = L.DEFAULT_GROUP if group is None else group
            g = q.groups.get(key)
            if g is None:
                g = q.groups[key] = deque()
                if status == READY:
                    q.ready.append(mid)
            g.append(mid)
        elif status == READY:
            q.ready.append(mid)
    q.arrivals = deque(q.messages)
    q.ready_limit = 2 * len(q.ready) + COMPACT_SLACK
    _need(_opt_int(retain_mid) and _opt_int(retain_at), "retention timer")
    _need((retain_mid is None) == (retain_at is None), "retention timer")
    _need(retain_mid is not None or not q.messages, "retention timer")
    q.retain_mid = retain_mid
    q.retain_at_ms = retain_at
    if retain_mid is not None:
        timers.append((retain_at, T_EXPIRE, uid, retain_mid, X_RETAIN))
    for raw in _list(dedup):
        did, mid, expires = _list(raw, 3)
        _need(type(did) is str and did not in q.dedup, "dedup id")
        _need(_is_int(mid) and mid < s.next_message_id and _is_int(expires), "dedup entry")
        q.dedup[did] = mid
        q.dedup_order.append((expires, did))
    s.queues[name] = q
    s.queues_by_uid[uid] = q
    s.total_messages += len(q.messages)


def restore(data: bytes) -> MachineState:
    """Rebuild a state from `snapshot` bytes.

    Args:
        data: Bytes made by `snapshot`.

    Returns:
        A new state equal to the one snapshotted (same `digest`).

    Raises:
        SnapshotError: The bytes are not a valid snapshot of a known version.
    """
    try:
        item = cbor2.loads(data)
    except Exception as exc:
        raise SnapshotError(f"corrupt snapshot: {type(exc).__name__}: {exc}") from exc
    try:
        return _restore(item)
    except SnapshotError:
        raise
    except Exception as exc:
        raise SnapshotError(f"corrupt snapshot: {type(exc).__name__}: {exc}") from exc


def _restore(item: object) -> MachineState:
    fields = _list(item)
    _need(len(fields) >= 1 and fields[0] == FORMAT_VERSION, "unknown format version")
    _, clock, next_mid, next_uid, last_index, last_term, queues, topics = _list(item, 8)
    _need(all(_is_int(v) for v in (clock, next_mid, next_uid, last_index, last_term)), "header")
    s = MachineState()
    s.clock_ms = clock
    s.next_message_id = next_mid
    s.next_queue_uid = next_uid
    s.last_index = last_index
    s.last_term = last_term
    timers: list[TimerEntry] = []
    for raw in _list(queues):
        _restore_queue(s, raw, timers)
    for raw in _list(topics):
        name, subscribers = _list(raw, 2)
        _need(L.is_valid_name(name) and name not in s.topics, "topic name")
        subs = _list(subscribers)
        _need(all(type(q) is str and q in s.queues for q in subs), "subscription")
        s.topics[name] = dict.fromkeys(subs)
    heapify(timers)
    s.timers = timers
    s.timers_limit = 2 * len(timers) + COMPACT_SLACK
    return s
