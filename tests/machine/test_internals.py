"""Lazy-deletion compaction, deleted queues' timers, and the invariant checker itself."""

from __future__ import annotations

import pytest

import node.machine as m
from node.machine._state import COMPACT_SLACK, INFLIGHT, READY

from .harness import Harness


def _fast(h: Harness, cmd: object) -> object:
    """Apply without the O(n) invariant check (for bulk steps)."""
    h.index += 1
    h.state, reply, effects = m.apply(m.Meta(h.index, 1, h.now_ms), cmd, h.state)
    h.effects = h.bodies.realise(effects)
    return h.bodies.fill(reply)


def test_stale_lease_timers_are_compacted() -> None:
    h = Harness()
    h.create(dead_letter_queue=None)
    n = 3 * COMPACT_SLACK
    for _ in range(n):
        _fast(h, m.make_enqueue("q", b"x"))
    for _ in range(n):
        reply = _fast(h, m.make_receive("q", "c"))
        assert isinstance(reply, dict)
        _fast(h, m.make_ack("q", reply["messages"][0]["receipt"]))
    assert len(h.state.timers) <= 2 * COMPACT_SLACK + 2
    assert not m.check_invariants(h.state)


def test_stale_ready_entries_and_arrivals_are_compacted() -> None:
    h = Harness()
    h.create(dead_letter_queue=None, visibility_timeout_ms=10 * 60_000)
    head = h.put()  # stays at the head of arrivals, in flight
    h.get()
    n = 3 * COMPACT_SLACK
    for _ in range(n):
        _fast(h, m.make_enqueue("q", b"x", ttl_ms=100))
    h.advance(100)
    _fast(h, m.make_tick(h.now_ms))  # all expire while ready, far from the heap top? no: all stale
    for _ in range(n):
        _fast(h, m.make_enqueue("q", b"y"))
        reply = _fast(h, m.make_receive("q", "c"))
        assert isinstance(reply, dict)
        _fast(h, m.make_ack("q", reply["messages"][0]["receipt"]))
    q = h.state.queues["q"]
    assert len(q.ready) <= 2 * COMPACT_SLACK + 2
    assert len(q.arrivals) <= 2 * COMPACT_SLACK + 2
    assert q.arrivals[0] == head
    assert not m.check_invariants(h.state)


def test_ready_heap_compaction_keeps_order() -> None:
    h = Harness()
    h.create(dead_letter_queue=None)
    n = 3 * COMPACT_SLACK
    keep = [h.put()]
    for i in range(n):
        _fast(h, m.make_enqueue("q", b"x", ttl_ms=50 if i % 2 else 10**6))
    h.advance(50)
    _fast(h, m.make_tick(h.now_ms))
    for _ in range(n):
        _fast(h, m.make_enqueue("q", b"y"))
    ids = h.ids(n=100)
    assert ids == sorted(ids) and ids[0] == keep[0]
    assert not m.check_invariants(h.state)


def test_timers_of_a_deleted_queue_are_ignored() -> None:
    h = Harness()
    h.create("other", visibility_timeout_ms=10)
    h.put("other")
    h.get("other")  # a live timer at the top of the heap, stale ones behind it
    h.create(visibility_timeout_ms=100)
    h.put()
    h.put(delay_ms=50)
    h.get()
    h.ok(m.make_delete_queue("q"))
    h.advance(200)
    h.ok(m.make_tick(h.now_ms))
    assert h.stats("other")["ready"] == 1


def test_check_invariants_reports_broken_states() -> None:
    def build() -> Harness:
        h = Harness()
        h.create("q", visibility_timeout_ms=1000)
        h.create("f", fifo=True)
        for q in ("q", "q", "f", "f"):
            h.put(q, group="g", ttl_ms=5000)
        h.put("q", delay_ms=100)
        h.get("q")
        h.get("f")
        h.ok(m.make_create_topic("t"))
        h.ok(m.make_subscribe("t", "q"))
        return h

    def broken(breaker: object) -> list[str]:
        h = build()
        assert not m.check_invariants(h.state)
        breaker(h.state)  # type: ignore[operator]
        return m.check_invariants(h.state)

    s0 = build().state
    q_first = next(iter(s0.queues["q"].messages))
    f_first = next(iter(s0.queues["f"].messages))

    def q(s: m.MachineState) -> object:
        return s.queues["q"]

    def f(s: m.MachineState) -> object:
        return s.queues["f"]

    breakers = [
        lambda s: setattr(q(s), "n_ready", 99),
        lambda s: setattr(q(s), "acked", 99),
        lambda s: q(s).arrivals.appendleft(10**6),
        lambda s: q(s).arrivals.rotate(1),
        lambda s: q(s).ready.append(q(s).ready[0]),
        lambda s: q(s).ready.clear(),
        lambda s: setattr(q(s).messages[q_first], "due_ms", 1),
        lambda s: setattr(q(s).messages[q_first], "expire_ms", 1),
        lambda s: setattr(q(s).messages[q_first], "arrived_ms", 0),
        lambda s: setattr(q(s).messages[q_first], "delivery_count", -1),
        lambda s: setattr(q(s), "retain_mid", None),
        lambda s: setattr(q(s), "retain_at_ms", 1),
        lambda s: q(s).dedup.update({"x": 1}),
        lambda s: setattr(s, "total_messages", 0),
        lambda s: s.queues_by_uid.update({999: q(s)}),
        lambda s: setattr(s, "next_message_id", 1),
        lambda s: s.topics["t"].update({"gone": None}),
        lambda s: s.woken.update({"q": m.WakeWaiters("q")}),
        lambda s: s.timers.insert(0, (0, 0, 999, 1, 1)),
        lambda s: s.timers.clear(),
        lambda s: f(s).groups["g"].appendleft(10**6),
        lambda s: f(s).groups["g"].rotate(1),
        lambda s: f(s).groups.update({"h": f(s).groups["g"]}),
        lambda s: f(s).groups.clear(),
        lambda s: f(s).ready.append(f(s).groups["g"][1]),
        lambda s: [
            setattr(f(s).messages[i], "status", INFLIGHT) for i in f(s).messages if i != f_first
        ],
        lambda s: setattr(q(s).messages[q_first], "status", READY),
        lambda s: s.queues.update({"zz": q(s)}),
        lambda s: q(s).messages.update({10**6: q(s).messages[q_first]}),
    ]
    for i, breaker in enumerate(breakers):
        assert broken(breaker), f"breaker {i} went unnoticed"


def test_bad_queue_names_in_receive_and_ack() -> None:
    h = Harness()
    h.err(m.make_receive("bad name", "c"), m.BAD_REQUEST)
    h.err(m.make_ack("bad name", "1:1"), m.BAD_REQUEST)


def test_bodies_move_with_dead_letters_and_a_missing_body_is_reported() -> None:
    h = Harness()
    h.create(max_deliveries=1, visibility_timeout_ms=0)
    mid = h.put(body=b"payload")
    first = h.get()[0]
    assert first["body"] == b"payload" and "body_key" not in first
    h.advance(1)
    h.get()  # the second delivery attempt dead-letters it: the body moves, nothing is written
    assert h.state.queues["q.dlq"].messages[mid + 1].body_key == mid
    assert sorted(h.bodies.by_key) == [mid]
    reply = {"messages": [{"message_id": mid + 1, "body_key": mid}]}
    with pytest.raises(m.BodyMissing, match=f"no body under key {mid}"):
        m.fill_bodies(reply, lambda keys: [None for _ in keys])
    assert m.fill_bodies({"messages": 3}, lambda keys: []) == {"messages": 3}
