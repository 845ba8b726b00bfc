"""Scenario tests: FIFO queues, redrive, pub/sub, effects, reads and garbage."""

from __future__ import annotations

from typing import Any

import pytest

import node.machine as m
from node.machine import _limits as L

from .harness import Harness

# --- FIFO -------------------------------------------------------------------------


def test_fifo_group_order_and_one_in_flight_per_group() -> None:
    h = Harness()
    h.create(fifo=True, visibility_timeout_ms=1000)
    a1 = h.put(group="a")
    a2 = h.put(group="a")
    b1 = h.put(group="b")
    n1 = h.put()  # default group
    got = h.get(n=10)
    assert [g["message_id"] for g in got] == [a1, b1, n1]  # one per group
    assert h.ids() == []  # every group blocked by its in-flight head
    h.ok(m.make_ack("q", got[0]["receipt"]))
    assert m.WakeWaiters("q") in h.effects  # a2 became deliverable
    assert h.ids() == [a2]


def test_fifo_redelivers_head_before_later_messages() -> None:
    h = Harness()
    h.create(fifo=True, visibility_timeout_ms=1000)
    a1 = h.put(group="a")
    a2 = h.put(group="a")
    assert h.ids() == [a1]
    h.advance(1000)
    assert h.ids(n=10) == [a1]
    got = h.get(n=1)
    assert got == []
    h.advance(1000)
    receipt = h.get()[0]["receipt"]
    h.ok(m.make_nack("q", receipt, delay_ms=100))
    assert h.ids() == []  # the delayed head still blocks its group
    h.advance(100)
    receipt = h.get()[0]["receipt"]
    assert receipt.startswith(f"{a1}:")
    h.ok(m.make_ack("q", receipt))
    assert h.ids() == [a2]


def test_fifo_delivery_limit_moves_on_to_next_in_group() -> None:
    h = Harness()
    h.create(fifo=True, visibility_timeout_ms=10, max_deliveries=1)
    a1 = h.put(group="a")
    a2 = h.put(group="a")
    assert h.ids() == [a1]
    h.advance(10)
    assert h.ids() == [a2]
    assert h.stats()["dead_lettered"] == 1
    dead = h.get("q.dlq")[0]
    assert dead["group"] == "a"


def test_fifo_expiry_of_head_and_middle() -> None:
    h = Harness()
    h.create(fifo=True, dead_letter_queue=None)
    a1 = h.put(group="a", ttl_ms=100)
    h.put(group="a", ttl_ms=50)
    a3 = h.put(group="a")
    h.advance(50)
    h.ok(m.make_tick(h.now_ms))  # a2 expires behind the head
    assert h.ids() == [a1]
    h.advance(50)  # a1 expires while in flight
    assert h.ids() == [a3]
    assert h.stats()["expired"] == 2


def test_fifo_delayed_enqueue_blocks_group() -> None:
    h = Harness()
    h.create(fifo=True)
    a1 = h.put(group="a", delay_ms=100)
    a2 = h.put(group="a")
    b1 = h.put(group="b")
    assert h.ids(n=10) == [b1]
    h.advance(100)
    assert h.ids(n=10) == [a1]
    del a2


def test_fifo_drop_head_and_purge() -> None:
    h = Harness()
    h.create(fifo=True, max_length=2, overflow="drop_head")
    a1 = h.put(group="a")
    h.put(group="a")
    a3 = h.put(group="a")
    assert h.stats()["dead_lettered"] == 1
    assert h.ids() != [a1]
    h.ok(m.make_purge_queue("q"))
    b = h.put(group="a")
    assert h.ids() == [b]
    del a3


# --- redrive ----------------------------------------------------------------------


def _dead_letters(h: Harness, queue: str, n: int) -> None:
    for _ in range(n):
        h.put(queue)
    for got in h.get(queue, n=n):
        h.ok(m.make_nack(queue, got["receipt"], reject=True))


def test_redrive_to_source_queue() -> None:
    h = Harness()
    h.create("q")
    _dead_letters(h, "q", 3)
    assert h.ok(m.make_redrive("q.dlq")) == {"moved": 3, "remaining": 0}
    got = h.get("q", n=10)
    assert len(got) == 3 and all(g["delivery_count"] == 1 for g in got)
    assert h.stats("q.dlq")["redriven"] == 3
    assert h.stats("q")["enqueued"] == 6


def test_redrive_to_target_with_limit_and_skips() -> None:
    h = Harness()
    h.create("q")
    h.create("other", dead_letter_queue=None)
    _dead_letters(h, "q", 3)
    in_flight = h.get("q.dlq")  # in flight: not moved
    assert h.ok(m.make_redrive("q.dlq", "other", max_messages=1)) == {
        "moved": 1,
        "remaining": 2,
    }
    assert h.ok(m.make_redrive("q.dlq", "other")) == {"moved": 1, "remaining": 1}
    h.put("q.dlq")  # no source header: skipped without a target
    assert h.ok(m.make_redrive("q.dlq")) == {"moved": 0, "remaining": 2}
    h.err(m.make_redrive("q.dlq", "q.dlq"), m.BAD_REQUEST)
    h.err(m.make_redrive("q.dlq", "nope"), m.QUEUE_NOT_FOUND)
    h.err(m.make_redrive("nope"), m.QUEUE_NOT_FOUND)
    h.err(m.make_redrive("q.dlq", "bad name"), m.BAD_REQUEST)
    h.err(m.make_redrive("q.dlq", max_messages=0), m.BAD_REQUEST)
    h.err(m.make_redrive(None), m.BAD_REQUEST)  # type: ignore[arg-type]
    del in_flight


def test_redrive_skips_deleted_source_and_respects_full_target() -> None:
    h = Harness()
    h.create("a", dead_letter_queue="dlq")
    h.create("b", dead_letter_queue="dlq", max_length=1)
    h.create("c", dead_letter_queue="dlq", max_length=1, overflow="drop_head")
    _dead_letters(h, "a", 1)
    for q in ("b", "b", "c", "c"):
        _dead_letters(h, q, 1)
    h.ok(m.make_delete_queue("a"))
    h.put("b")  # b is full: reject_publish
    h.put("c")  # c is full: drop_head
    reply = h.ok(m.make_redrive("dlq"))
    # a's dead letter has no source any more, b is full: they stay. c takes both,
    # each time discarding its oldest message (not dead-lettered again).
    assert reply == {"moved": 2, "remaining": 3}
    st = h.stats("c")
    assert (st["messages"], st["dead_lettered"]) == (1, 4)
    assert h.stats("dlq")["enqueued"] == 5


# --- pub/sub ------------------------------------------------------------------------


def test_publish_copies_into_every_subscribed_queue() -> None:
    h = Harness()
    h.create("a")
    h.create("b", max_length=1)
    h.create("c", max_message_bytes=1)
    assert h.ok(m.make_create_topic("t")) == {"topic": "t", "created": True}
    assert h.ok(m.make_create_topic("t")) == {"topic": "t", "created": False}
    for q in ("a", "b", "c"):
        assert h.ok(m.make_subscribe("t", q))["subscribed"] is True
    assert h.ok(m.make_subscribe("t", "a"))["subscribed"] is False
    h.put("b")
    reply = h.ok(m.make_publish("t", b"hi", {"k": "v"}, dedup_id="d"))
    assert reply == {
        "topic": "t",
        "results": [
            {"queue": "a", "message_id": 2, "duplicate": False, "error": None},
            {"queue": "b", "message_id": None, "duplicate": False, "error": m.QUEUE_FULL},
            {"queue": "c", "message_id": None, "duplicate": False, "error": m.MESSAGE_TOO_LARGE},
        ],
    }
    again = h.ok(m.make_publish("t", b"hi", dedup_id="d"))
    assert again["results"][0] == {"queue": "a", "message_id": 2, "duplicate": True, "error": None}
    assert h.ok(m.make_list_topics()) == {"topics": [{"name": "t", "queues": ["a", "b", "c"]}]}
    assert h.ok(m.make_unsubscribe("t", "b")) == {"topic": "t", "queue": "b", "unsubscribed": True}
    assert h.ok(m.make_unsubscribe("t", "b"))["unsubscribed"] is False
    h.ok(m.make_delete_queue("c"))
    assert m.query_list_topics(h.state) == {"topics": [{"name": "t", "queues": ["a"]}]}
    assert h.ok(m.make_delete_topic("t")) == {"topic": "t", "deleted": True}
    for cmd in (
        m.make_delete_topic("t"),
        m.make_subscribe("t", "a"),
        m.make_unsubscribe("t", "a"),
        m.make_publish("t", b"x"),
    ):
        h.err(cmd, m.TOPIC_NOT_FOUND)
    h.ok(m.make_create_topic("t"))
    h.err(m.make_subscribe("t", "nope"), m.QUEUE_NOT_FOUND)
    h.err(m.make_publish("bad topic", b"x"), m.BAD_REQUEST)
    h.err(m.make_publish("t", "x"), m.BAD_REQUEST)  # type: ignore[arg-type]
    h.err(m.make_subscribe("t", "bad q"), m.BAD_REQUEST)
    h.err(m.make_create_topic(""), m.BAD_REQUEST)


# --- effects ------------------------------------------------------------------------


def test_effects_wake_arm_release() -> None:
    h = Harness()
    h.create(visibility_timeout_ms=1000, retention_ms=60_000)
    assert h.effects == [m.ReleaseCursor(1)]
    h.put()
    assert h.effects == [m.WakeWaiters("q"), m.ArmTimer(h.now_ms + 60_000)]
    receipt = h.get()[0]["receipt"]
    assert h.effects == [m.ArmTimer(h.now_ms + 1000)]
    h.put(delay_ms=500)
    assert h.effects == [m.ArmTimer(h.now_ms + 500)]
    h.advance(500)
    h.ok(m.make_tick(h.now_ms))
    assert h.effects == [m.WakeWaiters("q"), m.ArmTimer(h.now_ms + 500)]
    h.ok(m.make_ack("q", receipt))
    assert h.effects == [m.ArmTimer(h.now_ms - 500 + 60_000)]
    h.ok(m.make_ack("q", h.get()[0]["receipt"]))
    # The queue's one retention timer stays armed for the first message's time.
    assert h.effects == [m.ArmTimer(h.now_ms - 500 + 60_000), m.ReleaseCursor(h.index)]


def test_state_enter_reissues_effects_for_a_new_leader() -> None:
    h = Harness()
    assert m.state_enter("leader", h.state) == [m.ReleaseCursor(0)]
    h.create("b")
    h.create("a", visibility_timeout_ms=1000)
    h.put("b")
    h.put("a")
    h.put("a")
    h.get("a")
    assert m.state_enter("leader", h.state) == [
        m.ArmTimer(h.now_ms + 1000),
        m.WakeWaiters("a"),
        m.WakeWaiters("b"),
    ]
    assert m.state_enter("follower", h.state) == []


# --- reads ----------------------------------------------------------------------------


def test_reads_through_apply_equal_queries() -> None:
    h = Harness()
    h.create("q")
    h.put()
    h.ok(m.make_create_topic("t"))
    h.advance(50)
    for cmd in (m.make_list_queues(), m.make_list_topics(), m.make_queue_stats("q")):
        assert m.is_read_only(cmd)
        reply = h.ok(cmd)
        if isinstance(cmd, m.QueueStats):
            assert reply == m.query_queue_stats(h.state, "q", h.now_ms)
            assert reply["oldest_age_ms"] == 50
        elif isinstance(cmd, m.ListQueues):
            assert reply == m.query_list_queues(h.state)
        else:
            assert reply == m.query_list_topics(h.state)
    assert not m.is_read_only(m.make_enqueue("q", b""))
    assert m.query_depth(h.state, "q") == 1 and m.query_ready(h.state, "q") == 1
    assert m.query_next_due_ms(h.state) is not None
    assert m.query_queue_stats(h.state, 5, 0) == m.ErrorReply(  # type: ignore[arg-type]
        m.QUEUE_NOT_FOUND, "no queue 5"
    )


def test_queue_of_routes_commands() -> None:
    assert m.queue_of(m.make_enqueue("q", b"")) == "q"
    assert m.queue_of(m.make_create_queue("q")) == "q"
    assert m.queue_of(m.make_redrive("q.dlq")) == "q.dlq"
    assert m.queue_of(m.make_publish("t", b"")) == "t"
    assert m.queue_of(m.make_subscribe("t", "q")) == "t"
    assert m.queue_of(m.make_list_queues()) is None
    assert m.queue_of(m.make_tick(5)) is None
    assert m.queue_of("garbage") is None
    assert m.queue_of(m.Enqueue(5, b"")) is None  # type: ignore[arg-type]


# --- garbage ----------------------------------------------------------------------------


class _Weird:
    def __eq__(self, other: object) -> bool:
        raise RuntimeError("boom")

    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    "cmd",
    [
        None,
        5,
        "enqueue",
        b"\x00",
        {"op": "enqueue"},
        object(),
        _Weird(),
        m.ListQueues,
        m.Meta(1, 1, 1),
    ],
)
def test_apply_answers_garbage_with_unknown_operation(cmd: Any) -> None:
    h = Harness()
    h.create()
    index = h.state.last_index
    before = m.digest(h.state)
    h.err(cmd, m.UNKNOWN_OPERATION)
    assert h.state.last_index == index + 1  # the entry counts as applied, nothing else moved
    h.state.last_index = index
    assert m.digest(h.state) == before


@pytest.mark.parametrize(
    "cmd",
    [
        m.CreateQueue("q", None),  # type: ignore[arg-type]
        m.CreateQueue(_Weird(), m.QueueOptions()),  # type: ignore[arg-type]
        m.DeleteQueue(["q"]),  # type: ignore[arg-type]
        m.Enqueue("q", b"x", None),  # type: ignore[arg-type]
        m.Enqueue({}, b"x"),  # type: ignore[arg-type]
        m.Receive("q", None),  # type: ignore[arg-type]
        m.Ack("q", None),  # type: ignore[arg-type]
        m.Nack("q", "1:1", None),  # type: ignore[arg-type]
        m.Subscribe(None, None),  # type: ignore[arg-type]
        m.Publish("t", b"x", {"a": None}),  # type: ignore[dict-item]
        m.Tick(2**70),
    ],
)
def test_apply_answers_ill_formed_commands_with_bad_request(cmd: Any) -> None:
    h = Harness()
    h.create()
    h.err(cmd, m.BAD_REQUEST)


@pytest.mark.parametrize(
    "meta",
    [None, m.Meta(-1, 0, 0), m.Meta(0, 0, 1.5), m.Meta(0, "1", 0), (1, 1, 1)],  # type: ignore[arg-type]
)
def test_apply_answers_bad_meta(meta: Any) -> None:
    state = m.new_state()
    state2, reply, effects = m.apply(meta, m.make_list_queues(), state)
    assert state2 is state and effects == []
    assert isinstance(reply, m.ErrorReply) and reply.code == m.BAD_REQUEST


def test_error_codes_are_stable() -> None:
    assert {
        "BAD_REQUEST",
        "UNKNOWN_OPERATION",
        "QUEUE_NOT_FOUND",
        "QUEUE_EXISTS",
        "TOPIC_NOT_FOUND",
        "TOPIC_EXISTS",
        "MESSAGE_TOO_LARGE",
        "QUEUE_FULL",
        "INVALID_RECEIPT",
        "BATCH_TOO_LARGE",
    } <= m.ERROR_CODES
    assert L.DEFAULT_GROUP == ""


# --- max_length_bytes -------------------------------------------------------------------


def test_max_length_bytes_rejects_or_drops_the_oldest() -> None:
    h = Harness()
    h.create(max_length_bytes=10, dead_letter_queue=None)  # reject_publish
    h.put(body=b"12345")
    h.put(body=b"1234")
    full = h.err(m.make_enqueue("q", b"xx"), m.QUEUE_FULL)
    assert "max_length_bytes 10" in full.message and "2 more do not fit" in full.message
    h.put(body=b"x")  # exactly 10
    assert h.stats()["bytes"] == 10
    h.err(m.make_enqueue_batch("q", [m.make_message(b"")] + [m.make_message(b"y")]),
          m.QUEUE_FULL)  # a batch fits whole or not at all
    assert h.stats()["messages"] == 3

    d = Harness()
    d.create(max_length_bytes=10, overflow="drop_head")
    first = d.put(body=b"aaaa")
    d.put(body=b"bbbb")
    d.put(body=b"cccccc")  # 14 > 10: the oldest goes, to the dead-letter queue
    assert d.stats()["bytes"] == 10 and d.stats()["dead_lettered"] == 1
    dead = d.get("q.dlq")
    assert dead[0]["body"] == b"aaaa" and dead[0]["headers"][L.H_MESSAGE_ID] == str(first)
    d.err(m.make_enqueue("q", b"z" * 11), m.QUEUE_FULL)  # larger than the limit on its own
    assert d.stats()["messages"] == 2
    d.put(body=b"z" * 10)  # fits once both others are dropped
    assert d.stats()["messages"] == 1 and d.stats()["bytes"] == 10
    h.err(m.make_create_queue("bad", max_length_bytes=0), m.BAD_REQUEST)
