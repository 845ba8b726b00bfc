"""Snapshots: deterministic bytes, faithful restore, and replay equivalence."""

from __future__ import annotations

import copy
import io
from typing import Any

import cbor2
import pytest

import node.machine as m

from .harness import T0

# A command script covering leases, delays, TTL, FIFO groups, dedup, DLQs and topics.
# Each item is (advance_ms, command).
SCRIPT: list[tuple[int, Any]] = [
    (0, m.make_create_queue("q", visibility_timeout_ms=1000, max_deliveries=2)),
    (0, m.make_create_queue("f", fifo=True, visibility_timeout_ms=500, retention_ms=60_000)),
    (0, m.make_create_queue("small", max_length=2, overflow="drop_head", dedup_window_ms=1000)),
    (0, m.make_create_topic("t")),
    (0, m.make_subscribe("t", "q")),
    (0, m.make_subscribe("t", "small")),
    (1, m.make_enqueue("q", b"a", {"k": "v"}, dedup_id="d1")),
    (1, m.make_enqueue("q", b"b", ttl_ms=5000)),
    (0, m.make_enqueue("q", b"c", delay_ms=300)),
    (0, m.make_enqueue("f", b"f1", group="g")),
    (0, m.make_enqueue("f", b"f2", group="g")),
    (0, m.make_enqueue("f", b"h1", group="h")),
    (0, m.make_publish("t", b"p", dedup_id="x")),
    (0, m.make_enqueue_batch("small", [m.make_message(b"s1", dedup_id="y")] * 2)),
    (5, m.make_receive("q", "c", 2)),
    (0, m.make_receive("f", "c", 5)),
    (300, m.make_tick(0)),
    (0, m.make_ack("q", "1:1")),
    (700, m.make_receive("q", "c", 3, 100)),
    (0, m.make_nack("q", "2:2", delay_ms=50)),
    (10, m.make_change_visibility("q", "3:1", 0)),
    (490, m.make_tick(0)),
    (0, m.make_receive("f", "c", 5)),
    (0, m.make_receive("q", "c", 5)),
    (1000, m.make_receive("q", "c", 5)),
    (5000, m.make_tick(0)),
    (0, m.make_redrive("q.dlq")),
    (0, m.make_receive("q", "c", 5)),
    (60_000, m.make_tick(0)),
    (0, m.make_enqueue("small", b"s2", dedup_id="y")),
    (0, m.make_delete_queue("f")),
    (0, m.make_create_queue("f")),
    (0, m.make_enqueue("f", b"new")),
    (0, m.make_queue_stats("q")),
    (0, m.make_list_topics()),
]


def _replay(script: list[tuple[int, Any]], restore_at: int | None) -> tuple[list[Any], list[str]]:
    state = m.new_state()
    now = T0
    replies: list[Any] = []
    digests: list[str] = []
    for i, (dt, cmd) in enumerate(script):
        if i == restore_at:
            data = m.snapshot(state)
            state = m.restore(data)
            assert m.snapshot(state) == data
        now += dt
        if isinstance(cmd, m.Tick):
            cmd = m.make_tick(now)
        state, reply, _ = m.apply(m.Meta(i + 1, 1, now), cmd, state)
        assert not m.check_invariants(state)
        replies.append(reply)
        digests.append(m.digest(state))
    return replies, digests


def test_script_exercises_the_machine() -> None:
    replies, _ = _replay(SCRIPT, None)
    errors = [r for r in replies if isinstance(r, m.ErrorReply)]
    assert not errors, errors


@pytest.mark.parametrize("restore_at", range(len(SCRIPT)))
def test_restore_at_any_step_gives_same_replies_and_digests(restore_at: int) -> None:
    assert _replay(SCRIPT, restore_at) == _replay(SCRIPT, None)


def test_snapshot_is_deterministic_and_ignores_header_order() -> None:
    def build(headers: dict[str, str]) -> m.MachineState:
        s = m.new_state()
        for i, cmd in enumerate([m.make_create_queue("q"), m.make_enqueue("q", b"x", headers)]):
            s, _, _ = m.apply(m.Meta(i + 1, 1, T0), cmd, s)
        return s

    a = build({"a": "1", "b": "2"})
    b = build({"b": "2", "a": "1"})
    assert m.snapshot(a) == m.snapshot(b)
    assert m.digest(a) == m.digest(b)
    assert len(m.digest(a)) == 64


def test_snapshot_of_empty_state_round_trips() -> None:
    s = m.new_state()
    assert m.digest(m.restore(m.snapshot(s))) == m.digest(s)


def _good() -> list[Any]:
    """The items of a snapshot of the first 16 steps of SCRIPT."""
    state = m.new_state()
    now = T0
    for i, (dt, cmd) in enumerate(SCRIPT[:16]):
        now += dt
        state, _, _ = m.apply(m.Meta(i + 1, 1, now), cmd, state)
    decoder = cbor2.CBORDecoder(io.BytesIO(m.snapshot(state)))
    items = []
    while True:
        try:
            items.append(decoder.decode())
        except cbor2.CBORDecodeEOF:
            return items


GOOD = _good()
Q = next(i for i, item in enumerate(GOOD) if len(item) == 8 and item[1] == "q")
"""Index of queue q's header item; its messages follow, then its dedup entries."""
READY_MESSAGE = next(i for i, msg in enumerate(GOOD[Q + 1]) if msg[7] == 0)


def _corrupt(path: tuple[int, ...], value: Any) -> bytes:
    items = copy.deepcopy(GOOD)
    target = items
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return b"".join(cbor2.dumps(item) for item in items)


def _items(items: list[Any]) -> bytes:
    return b"".join(cbor2.dumps(item) for item in items)


def test_the_corrupt_cases_start_from_a_good_snapshot() -> None:
    assert m.restore(_items(GOOD)) is not None
    assert GOOD[Q][6] == len(GOOD[Q + 1]) >= 2 and GOOD[Q][7] == len(GOOD[Q + 2]) == 2


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\x00",
        cbor2.dumps("snapshot"),
        cbor2.dumps([2]),
        cbor2.dumps([1, 0]),
        _corrupt((0, 0), 1),  # format 1 (bodies inside) is not read
        _corrupt((0, 1), -1),
        _corrupt((0, 6), 99),  # more queues than there are
        _corrupt((Q,), [1, 2]),
        _corrupt((Q, 0), 10**6),  # uid beyond the counter
        _corrupt((Q, 1), "bad name"),
        _corrupt((Q, 2), [1]),
        _corrupt((Q, 2, 0), -1),
        _corrupt((Q, 3), [1, 2]),
        _corrupt((Q, 3, 0), "x"),
        _corrupt((Q, 4), "x"),
        _corrupt((Q, 4), None),
        _corrupt((Q, 6), 1),  # fewer messages than the slice holds
        _corrupt((Q, 6), "many"),
        _corrupt((Q + 1,), "messages"),
        _corrupt((Q + 1, 0), [1, 2, 3]),
        _corrupt((Q + 1, 0, 0), 10**9),
        _corrupt((Q + 1, 0, 1), "body"),
        _corrupt((Q + 1, 0, 1), 10**9),  # a body key past the message's id
        _corrupt((Q + 1, 0, 1), 0),
        _corrupt((Q + 1, 0, 2), -1),
        _corrupt((Q + 1, 0, 3), {"a": 1}),
        _corrupt((Q + 1, 0, 4), -5),
        _corrupt((Q + 1, 0, 7), 7),
        _corrupt((Q + 1, READY_MESSAGE, 8), 5),  # a due time on a ready message
        _corrupt((Q + 1, 0, 9), "x"),
        _corrupt((Q + 1, 0, 10), 5),
        _corrupt((Q + 2,), [[1, 2, 3]]),
        _corrupt((Q + 2,), [["d", "x", 3]]),
        _corrupt((-1,), [["t", ["nope"]]]),
        _corrupt((-1,), [["bad topic", []]]),
        _corrupt((-1,), 5),
        _items(GOOD[:-1]),  # cut short
        _items(GOOD + [[1]]),  # an item after the end
    ],
    ids=lambda data: str(hash(data) % 10_000),
)
def test_restore_rejects_corrupt_snapshots(data: bytes) -> None:
    with pytest.raises(m.SnapshotError):
        m.restore(data)


def test_snapshot_error_is_a_value_error() -> None:
    assert issubclass(m.SnapshotError, ValueError)
