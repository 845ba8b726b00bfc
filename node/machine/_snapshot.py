"""Snapshot, restore and digest of the machine state (format 2: a stream of CBOR items).

The snapshot holds the logical state only: queues sorted by name, messages in id order, live
deduplication ids, topics; the heaps and deques are rebuilt on restore (stale heap entries are
not state). It holds no message body: bodies live in the node's body store, and a node's
snapshot appends them after the machine's items (node/snapshots.py). Encoding is canonical
CBOR, so equal states give equal bytes and `digest` can compare replicas.

The snapshot is a sequence of top-level CBOR items, so that it can be written and read a
piece at a time (a large state never exists as one byte string or one decoded list):

1. header `[2, clock_ms, next_message_id, next_queue_uid, last_index, last_term, n_queues,
   n_topics]`;
2. per queue, sorted by name: `[uid, name, options, totals, retain_mid, retain_at_ms,
   n_messages, n_dedup]`, then the messages in id order in arrays of at most
   `SNAPSHOT_SLICE`, then the live dedup entries the same way;
3. the topics, in arrays of at most `SNAPSHOT_SLICE`, sorted by name.

A message is `[id, body_key, size_bytes, headers, arrived_ms, first_ms, delivery_count,
status, due_ms, expire_ms, group]`, a dedup entry `[dedup_id, message_id, expires_ms]`, a
topic `[name, [queue, ...]]`. Counts come first, so a reader knows where the machine's items
end (and a node's body items begin) without a terminator.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterator
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

FORMAT_VERSION: Final = 2
SNAPSHOT_FORMAT_VERSION: Final = FORMAT_VERSION

SNAPSHOT_SLICE: Final = 2048
"""Messages (or dedup entries, or topics) per item."""


def _message_item(m: Message, mid: int) -> list[Any]:
    return [
        mid,
        m.body_key,
        m.size_bytes,
        m.headers,
        m.arrived_ms,
        m.first_ms,
        m.delivery_count,
        m.status,
        m.due_ms,
        m.expire_ms,
        m.group,
    ]


def _dumps(obj: object) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def _slices(items: Iterator[Any]) -> Iterator[bytes]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == SNAPSHOT_SLICE:
            yield _dumps(batch)
            batch = []
    if batch:
        yield _dumps(batch)


def _queue_items(q: Queue, clock_ms: int) -> Iterator[bytes]:
    dedup = [(did, q.dedup[did], exp) for exp, did in q.dedup_order if exp > clock_ms]
    yield _dumps(
        [q.uid, q.name, q.options.to_list(), q.totals(), q.retain_mid, q.retain_at_ms,
         len(q.messages), len(dedup)]
    )
    yield from _slices(_message_item(m, mid) for mid, m in q.messages.items())
    yield from _slices(list(d) for d in dedup)


def snapshot_items(state: MachineState) -> Iterator[bytes]:
    """The snapshot as a sequence of canonical CBOR items (each a complete encoding).

    Between items the encoder returns to Python, so a worker thread encoding a large state lets
    other threads run. The state must not change until the iterator is exhausted.
    """
    s = state
    yield _dumps(
        [FORMAT_VERSION, s.clock_ms, s.next_message_id, s.next_queue_uid, s.last_index,
         s.last_term, len(s.queues), len(s.topics)]
    )
    for name in sorted(s.queues):
        yield from _queue_items(s.queues[name], s.clock_ms)
    yield from _slices([name, list(s.topics[name])] for name in sorted(s.topics))


def body_keys(state: MachineState) -> list[int]:
    """Every body key the state refers to, ascending (what a node's snapshot stores bodies of).

    Raises:
        SnapshotError: two messages refer to one body (never made by `apply`).
    """
    keys = sorted(m.body_key for q in state.queues.values() for m in q.messages.values())
    for a, b in zip(keys, keys[1:], strict=False):
        if a == b:
            raise SnapshotError(f"body key {a} is referred to twice")
    return keys


def snapshot(state: MachineState) -> bytes:
    """Encode the state as canonical CBOR bytes (the items of `snapshot_items`, joined).

    Args:
        state: The state (not changed).

    Returns:
        Bytes that `restore` turns back into an equal state; equal states give equal bytes.
    """
    return b"".join(snapshot_items(state))


def digest(state: MachineState) -> str:
    """Hex SHA-256 of `snapshot(state)`: equal for replicas in the same state (bodies are not
    in the machine's state: a node's digest adds them, node/snapshots.py)."""
    h = hashlib.sha256()
    for item in snapshot_items(state):
        h.update(item)
    return h.hexdigest()


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


def _slice_items(next_item: Callable[[], object], count: int) -> Iterator[Any]:
    """Yield `count` entries read from as many slice items as they take."""
    left = count
    while left > 0:
        batch = _list(next_item())
        _need(0 < len(batch) <= min(left, SNAPSHOT_SLICE), "slice length")
        left -= len(batch)
        yield from batch


def _restore_queue(
    s: MachineState, next_item: Callable[[], object], timers: list[TimerEntry]
) -> None:
    uid, name, opts_raw, totals, retain_mid, retain_at, n_messages, n_dedup = _list(
        next_item(), 8
    )
    _need(_is_int(uid) and uid < s.next_queue_uid and uid not in s.queues_by_uid, "queue uid")
    _need(L.is_valid_name(name) and name not in s.queues, "queue name")
    _need(_is_int(n_messages) and _is_int(n_dedup), "queue counts")
    options = options_from_list(opts_raw)
    _need(options is not None and options_problem(options) is None, "queue options")
    assert options is not None
    q = Queue(uid, name, options)
    totals = _list(totals, len(TOTAL_NAMES))
    _need(all(_is_int(t) for t in totals), "queue totals")
    for key, value in zip(TOTAL_NAMES, totals, strict=True):
        setattr(q, key, value)
    last = 0
    next_mid = s.next_message_id
    for raw in _slice_items(next_item, n_messages):
        mid, key, size, headers, arrived, first, count, status, due, expire, group = _list(
            raw, 11
        )
        _need(_is_int(mid) and last < mid < next_mid, "message id order")
        last = mid
        _need(_is_int(key) and 0 < key <= mid and _is_int(size), "body key")
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
        m = Message(key, size, headers or None, arrived, first, count, status, due, expire, group)
        q.messages[mid] = m
        q.n_bytes += size
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
            gkey = L.DEFAULT_GROUP if group is None else group
            g = q.groups.get(gkey)
            if g is None:
                g = q.groups[gkey] = deque()
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
    for raw in _slice_items(next_item, n_dedup):
        did, mid, expires = _list(raw, 3)
        _need(type(did) is str and did not in q.dedup, "dedup id")
        _need(_is_int(mid) and mid < next_mid and _is_int(expires), "dedup entry")
        q.dedup[did] = mid
        q.dedup_order.append((expires, did))
    s.queues[name] = q
    s.queues_by_uid[uid] = q
    s.total_messages += len(q.messages)


def restore(data: bytes) -> MachineState:
    """Rebuild a state from `snapshot` bytes (all of them: trailing bytes are refused).

    Args:
        data: Bytes made by `snapshot`.

    Returns:
        A new state equal to the one snapshotted (same `digest`).

    Raises:
        SnapshotError: The bytes are not a valid snapshot of a known version.
    """
    decoder = cbor2.CBORDecoder(_Reader(data))  # type: ignore[arg-type]  # a file's read
    state = restore_items(decoder.decode)
    try:
        decoder.decode()
    except cbor2.CBORDecodeEOF:
        return state
    except cbor2.CBORDecodeError:
        pass
    raise SnapshotError("corrupt snapshot: bytes after the last item")


class _Reader:
    """The `read` of a file over bytes in memory (for cbor2's decoder)."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        at = self._at
        end = len(self._view) if n < 0 else min(len(self._view), at + n)
        self._at = end
        return bytes(self._view[at:end])


def restore_items(next_item: Callable[[], object]) -> MachineState:
    """Rebuild a state from the items of `snapshot_items`, read one at a time.

    Args:
        next_item: returns the next decoded item (e.g. `cbor2.CBORDecoder(fp).decode`); it is
            called exactly as many times as the snapshot has items, so the caller's stream
            may go on after them.

    Returns:
        A new state equal to the one snapshotted.

    Raises:
        SnapshotError: an item is missing, malformed or of an unknown format version (also
            when `next_item` raises).
    """
    try:
        return _restore(next_item)
    except SnapshotError:
        raise
    except Exception as exc:
        raise SnapshotError(f"corrupt snapshot: {type(exc).__name__}: {exc}") from exc


def _restore(next_item: Callable[[], object]) -> MachineState:
    fields = _list(next_item())
    _need(len(fields) >= 1 and fields[0] == FORMAT_VERSION, "unknown format version")
    _, clock, next_mid, next_uid, last_index, last_term, n_queues, n_topics = _list(fields, 8)
    _need(
        all(_is_int(v) for v in (clock, next_mid, next_uid, last_index, last_term, n_queues,
                                 n_topics)),
        "header",
    )
    s = MachineState()
    s.clock_ms = clock
    s.next_message_id = next_mid
    s.next_queue_uid = next_uid
    s.last_index = last_index
    s.last_term = last_term
    timers: list[TimerEntry] = []
    for _ in range(n_queues):
        _restore_queue(s, next_item, timers)
    for raw in _slice_items(next_item, n_topics):
        name, subscribers = _list(raw, 2)
        _need(L.is_valid_name(name) and name not in s.topics, "topic name")
        subs = _list(subscribers)
        _need(all(type(q) is str and q in s.queues for q in subs), "subscription")
        s.topics[name] = dict.fromkeys(subs)
    heapify(timers)
    s.timers = timers
    s.timers_limit = 2 * len(timers) + COMPACT_SLACK
    return s
