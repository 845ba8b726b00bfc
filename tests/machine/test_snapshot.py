"""Snapshots: deterministic bytes, faithful restore, and replay equivalence."""

from __future__ import annotations

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
    state = m.new_state()
    now = T0
    for i, (dt, cmd) in enumerate(SCRIPT[:16]):
        now += dt
        state, _, _ = m.apply(m.Meta(i + 1, 1, now), cmd, state)
    item = cbor2.loads(m.snapshot(state))
    assert isinstance(item, list)
    return item


def _corrupt(path: tuple[int, ...], value: Any) -> bytes:
    item = _good()
    target = item
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return cbor2.dumps(item)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\x00",
        cbor2.dumps("snapshot"),
        cbor2.dumps([2]),
        cbor2.dumps([1, 0]),
        _corrupt((1,), -1),
        _corrupt((6, 0), [1, 2]),
        _corrupt((6, 0, 0), 10**6),  # uid beyond the counter
        _corrupt((6, 0, 1), "bad name"),
        _corrupt((6, 0, 2), [1]),
        _corrupt((6, 0, 2, 0), -1),
        _corrupt((6, 0, 3), [1, 2]),
        _corrupt((6, 0, 3, 0), "x"),
        _corrupt((6, 0, 4), "x"),
        _corrupt((6, 0, 4), None),
        _corrupt((6, 0, 6), "messages"),
        _corrupt((6, 0, 6, 0), [1, 2, 3]),
        _corrupt((6, 0, 6, 0, 0), 10**9),
        _corrupt((6, 0, 6, 0, 1), "body"),
        _corrupt((6, 0, 6, 0, 2), {"a": 1}),
        _corrupt((6, 0, 6, 0, 3), -5),
        _corrupt((6, 0, 6, 0, 6), 7),
        _corrupt((6, 0, 6, 1, 7), 5),  # a due time on a ready message
        _corrupt((6, 0, 6, 0, 8), "x"),
        _corrupt((6, 0, 6, 0, 9), 5),
        _corrupt((6, 0, 7), [[1, 2, 3]]),
        _corrupt((6, 0, 7), [["d", "x", 3]]),
        _corrupt((7,), [["t", ["nope"]]]),
        _corrupt((7,), [["bad topic", []]]),
        _corrupt((7,), 5),
    ],
    ids=lambda data: str(hash(data) % 10_000),
)
def test_restore_rejects_corrupt_snapshots(data: bytes) -> None:
    with pytest.raises(m.SnapshotError):
        m.restore(data)


def test_snapshot_error_is_a_value_error() -> None:
    assert issubclass(m.SnapshotError, ValueError)
