"""Scenario tests: one or more per rule of docs/semantics.md, written as command lists."""

from __future__ import annotations

import pytest

import node.machine as m
from node.machine import _limits as L

from .harness import T0, Harness

# --- queues -------------------------------------------------------------------------


def test_create_queue_defaults_and_dead_letter_queue() -> None:
    h = Harness()
    assert h.create("orders") == {"queue": "orders", "created": True}
    opts = m.query_queue_options(h.state, "orders")
    assert opts == {
        "visibility_timeout_ms": 30_000,
        "max_deliveries": 10,
        "dead_letter_queue": "orders.dlq",
        "retention_ms": 4 * L.DAY_MS,
        "max_message_bytes": 1024 * 1024,
        "max_length": None,
        "overflow": "reject_publish",
        "dedup_window_ms": 300_000,
        "delay_ms": 0,
        "fifo": False,
        "max_length_bytes": None,
    }
    dlq = m.query_queue_options(h.state, "orders.dlq")
    assert dlq is not None
    assert dlq["dead_letter_queue"] is None and dlq["retention_ms"] == 14 * L.DAY_MS
    assert h.ok(m.make_list_queues()) == {"queues": ["orders", "orders.dlq"]}


def test_create_queue_is_idempotent_with_same_options_only() -> None:
    h = Harness()
    h.create("q", visibility_timeout_ms=5_000)
    assert h.create("q", visibility_timeout_ms=5_000) == {"queue": "q", "created": False}
    h.err(m.make_create_queue("q"), m.QUEUE_EXISTS)


def test_create_queue_without_dead_letter_queue_and_fifo_dlq() -> None:
    h = Harness()
    h.create("plain", dead_letter_queue=None)
    assert m.query_list_queues(h.state) == {"queues": ["plain"]}
    h.create("f", fifo=True, dead_letter_queue="errors")
    opts = m.query_queue_options(h.state, "errors")
    assert opts is not None and opts["fifo"] is True
    assert m.query_queue_options(h.state, "nope") is None


@pytest.mark.parametrize("name", ["", "a" * 81, "a b", "ü", "a/b", 5, None, "x" * 77 + "é"])
def test_create_queue_rejects_bad_names(name: object) -> None:
    h = Harness()
    h.err(m.make_create_queue(name, dead_letter_queue=None), m.BAD_REQUEST)  # type: ignore[arg-type]


def test_name_of_80_chars_needs_an_explicit_dead_letter_queue() -> None:
    h = Harness()
    h.create("a" * 80, dead_letter_queue=None)
    h.err(m.make_create_queue("b" * 80), m.BAD_REQUEST)  # b*80 + ".dlq" is too long


@pytest.mark.parametrize(
    "option",
    [
        {"visibility_timeout_ms": -1},
        {"visibility_timeout_ms": 12 * L.HOUR_MS + 1},
        {"visibility_timeout_ms": 1.5},
        {"max_deliveries": -1},
        {"max_deliveries": True},
        {"retention_ms": 59_999},
        {"retention_ms": 14 * L.DAY_MS + 1},
        {"max_message_bytes": 0},
        {"max_length": 0},
        {"overflow": "drop_tail"},
        {"dedup_window_ms": -5},
        {"delay_ms": 15 * L.MINUTE_MS + 1},
        {"fifo": 1},
        {"dead_letter_queue": "bad name"},
        {"dead_letter_queue": "q"},
    ],
)
def test_create_queue_rejects_bad_options(option: dict[str, object]) -> None:
    h = Harness()
    h.err(m.make_create_queue("q", **option), m.BAD_REQUEST)  # type: ignore[arg-type]
    assert m.query_list_queues(h.state) == {"queues": []}


def test_delete_queue_and_recreate_never_reuses_ids() -> None:
    h = Harness()
    h.create("q", dead_letter_queue=None)
    first = h.put()
    h.get()
    assert h.ok(m.make_delete_queue("q")) == {"queue": "q", "deleted": 1}
    h.err(m.make_delete_queue("q"), m.QUEUE_NOT_FOUND)
    h.err(m.make_enqueue("q", b"x"), m.QUEUE_NOT_FOUND)
    h.create("q", dead_letter_queue=None)
    second = h.put()
    assert second > first
    h.err(m.make_ack("q", f"{first}:1"), m.INVALID_RECEIPT)
    assert h.ids() == [second]


def test_purge_queue() -> None:
    h = Harness()
    h.create(dead_letter_queue=None)
    for _ in range(3):
        h.put()
    got = h.get()
    h.put(delay_ms=1000)
    assert h.ok(m.make_purge_queue("q")) == {"queue": "q", "purged": 4}
    h.err(m.make_ack("q", got[0]["receipt"]), m.INVALID_RECEIPT)
    st = h.stats()
    assert (st["ready"], st["in_flight"], st["delayed"], st["purged"]) == (0, 0, 0, 4)
    h.err(m.make_purge_queue("nope"), m.QUEUE_NOT_FOUND)
    h.advance(10 * L.DAY_MS)
    h.ok(m.make_tick(h.now_ms))
    assert h.put() > 0


def test_queue_stats_counts_and_totals() -> None:
    h = Harness()
    h.create(max_deliveries=1, visibility_timeout_ms=1000)
    a, _b, c = h.put(), h.put(), h.put()
    h.put(delay_ms=5000)
    h.advance(100)
    got = h.get(n=2)
    st = h.ok(m.make_queue_stats("q"))
    assert st == {
        "queue": "q",
        "bytes": 4,
        "ready": 1,
        "in_flight": 2,
        "delayed": 1,
        "messages": 4,
        "oldest_age_ms": 100,
        "enqueued": 4,
        "delivered": 2,
        "redelivered": 0,
        "acked": 0,
        "dead_lettered": 0,
        "expired": 0,
        "purged": 0,
        "redriven": 0,
    }
    h.ok(m.make_ack("q", got[0]["receipt"]))
    h.advance(1000)  # b's lease ends; delivering it again exceeds max_deliveries=1
    assert h.ids() == [c]  # b was delivered once already: dead-lettered instead
    st = h.stats()
    assert (st["dead_lettered"], st["in_flight"], st["acked"], st["delivered"]) == (1, 1, 1, 3)
    assert h.stats("q.dlq")["ready"] == 1
    del a


def test_queue_stats_of_missing_queue() -> None:
    h = Harness()
    h.err(m.make_queue_stats("nope"), m.QUEUE_NOT_FOUND)
    assert m.query_depth(h.state, "nope") is None
    assert m.query_ready(h.state, "nope") is None


# --- enqueue ------------------------------------------------------------------------


def test_message_ids_are_global_and_increasing() -> None:
    h = Harness()
    h.create("a", dead_letter_queue=None)
    h.create("b", dead_letter_queue=None)
    assert [h.put("a"), h.put("b"), h.put("a")] == [1, 2, 3]


def test_dedup_within_window_returns_first_id() -> None:
    h = Harness()
    h.create(dedup_window_ms=60_000)
    first = h.put(dedup_id="d")
    assert h.ok(m.make_enqueue("q", b"other", dedup_id="d")) == {
        "message_id": first,
        "duplicate": True,
    }
    # Even once the first is acked, the window holds (JetStream semantics).
    h.ok(m.make_ack("q", h.get()[0]["receipt"]))
    h.advance(59_999)
    assert h.ok(m.make_enqueue("q", b"x", dedup_id="d"))["duplicate"] is True
    h.advance(1)
    again = h.ok(m.make_enqueue("q", b"x", dedup_id="d"))
    assert again["duplicate"] is False and again["message_id"] > first
    assert h.stats()["enqueued"] == 2


def test_dedup_window_zero_disables_dedup() -> None:
    h = Harness()
    h.create(dedup_window_ms=0)
    assert h.put(dedup_id="d") != h.put(dedup_id="d")


def test_dedup_is_per_queue() -> None:
    h = Harness()
    h.create("a")
    h.create("b")
    assert h.put("a", dedup_id="d") != h.put("b", dedup_id="d")


def test_message_too_large_counts_headers() -> None:
    h = Harness()
    h.create(max_message_bytes=10)
    h.put(body=b"x" * 10)
    h.err(m.make_enqueue("q", b"x" * 11), m.MESSAGE_TOO_LARGE)
    h.err(m.make_enqueue("q", b"x" * 8, {"ab": "c"}), m.MESSAGE_TOO_LARGE)
    h.err(m.make_enqueue("q", b"x" * 8, {"é": "c"}), m.MESSAGE_TOO_LARGE)  # é is 2 bytes
    h.put(body=b"x" * 7, headers={"ab": "c"})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"body": "text"},
        {"headers": {"a": 1}},
        {"headers": {1: "a"}},
        {"headers": {"": "a"}},
        {"headers": [("a", "b")]},
        {"headers": {str(i): "" for i in range(65)}},
        {"headers": {"k" * 257: "v"}},
        {"dedup_id": ""},
        {"dedup_id": "d" * 129},
        {"dedup_id": 5},
        {"group": ""},
        {"delay_ms": -1},
        {"delay_ms": 15 * L.MINUTE_MS + 1},
        {"ttl_ms": 0},
        {"ttl_ms": 14 * L.DAY_MS + 1},
        {"ttl_ms": "5"},
    ],
)
def test_enqueue_rejects_bad_fields(kwargs: dict[str, object]) -> None:
    h = Harness()
    h.create()
    fields: dict[str, object] = {"body": b"x", "headers": {}}
    fields.update(kwargs)
    h.err(m.Enqueue("q", **fields), m.BAD_REQUEST)  # type: ignore[arg-type]
    h.err(m.make_enqueue("bad name!", b"x"), m.BAD_REQUEST)
    h.err(m.make_enqueue(["q"], b"x"), m.BAD_REQUEST)  # type: ignore[arg-type]


def test_enqueue_batch_all_or_nothing() -> None:
    h = Harness()
    h.create(max_message_bytes=5, dead_letter_queue=None)
    good = m.make_message(b"ok")
    h.err(m.make_enqueue_batch("q", [good, m.make_message(b"toolong")]), m.MESSAGE_TOO_LARGE)
    assert m.query_depth(h.state, "q") == 0
    reply = h.ok(m.make_enqueue_batch("q", [good, m.make_message(b"b", dedup_id="x")]))
    assert reply == {
        "results": [
            {"message_id": 1, "duplicate": False},
            {"message_id": 2, "duplicate": False},
        ]
    }
    h.err(m.make_enqueue_batch("q", [good] * 101), m.BATCH_TOO_LARGE)
    h.err(m.make_enqueue_batch("q", []), m.BAD_REQUEST)
    h.err(m.EnqueueBatch("q", [good]), m.BAD_REQUEST)  # type: ignore[arg-type]
    h.err(m.EnqueueBatch("q", (good, "x")), m.BAD_REQUEST)  # type: ignore[arg-type]
    h.err(m.make_enqueue_batch("q", [m.make_message(b"x", ttl_ms=0)]), m.BAD_REQUEST)
    h.err(m.make_enqueue_batch("nope", [good]), m.QUEUE_NOT_FOUND)
    h.err(m.make_enqueue_batch("bad name", [good]), m.BAD_REQUEST)


def test_enqueue_batch_capacity_counts_duplicates_once() -> None:
    h = Harness()
    h.create(max_length=3, dead_letter_queue=None)
    h.put(dedup_id="a")
    batch = [
        m.make_message(b"1", dedup_id="a"),  # duplicate of the stored one
        m.make_message(b"2", dedup_id="b"),
        m.make_message(b"3", dedup_id="b"),  # duplicate within the batch
        m.make_message(b"4"),
    ]
    reply = h.ok(m.make_enqueue_batch("q", batch))
    assert [r["duplicate"] for r in reply["results"]] == [True, False, True, False]
    assert reply["results"][1]["message_id"] == reply["results"][2]["message_id"]
    h.err(m.make_enqueue_batch("q", [m.make_message(b"5")]), m.QUEUE_FULL)
    assert m.query_depth(h.state, "q") == 3


def test_max_length_reject_publish() -> None:
    h = Harness()
    h.create(max_length=2)
    h.put()
    h.put()
    h.err(m.make_enqueue("q", b"x"), m.QUEUE_FULL)
    h.get()  # in-flight messages count too
    h.err(m.make_enqueue("q", b"x"), m.QUEUE_FULL)


def test_max_length_drop_head_dead_letters_oldest() -> None:
    h = Harness()
    h.create(max_length=2, overflow="drop_head")
    a = h.put(body=b"a")
    b = h.put(body=b"b")
    c = h.put(body=b"c")
    assert h.ids() == [b, c]
    dead = h.get("q.dlq")
    assert dead[0]["body"] == b"a"
    assert dead[0]["headers"][L.H_REASON] == "max_length"
    assert dead[0]["headers"][L.H_MESSAGE_ID] == str(a)
    assert h.stats()["dead_lettered"] == 1


def test_enqueue_with_delay_and_queue_delay() -> None:
    h = Harness()
    h.create(delay_ms=1000)
    a = h.put()
    b = h.put(delay_ms=0)
    assert h.ids() == [b]
    h.advance(999)
    assert h.ids() == []
    h.advance(1)
    assert h.ids() == [a]


# --- receive, ack, nack, change_visibility -----------------------------------------


def test_receive_returns_fields_and_orders_by_id() -> None:
    h = Harness()
    h.create()
    a = h.put(body=b"a", headers={"k": "v"}, group="g")
    h.put(body=b"b")
    h.advance(5)
    got = h.get(n=1)
    assert got == [
        {
            "message_id": a,
            "body": b"a",
            "headers": {"k": "v"},
            "delivery_count": 1,
            "first_enqueued_ms": T0,
            "enqueued_ms": T0,
            "group": "g",
            "receipt": f"{a}:1",
        }
    ]
    assert len(h.get(n=10)) == 1
    assert h.get(n=10) == []


@pytest.mark.parametrize(
    "cmd",
    [
        m.make_receive("q", "", 1),
        m.make_receive("q", "c" * 129, 1),
        m.make_receive("q", "c", 0),
        m.make_receive("q", "c", 101),
        m.make_receive("q", "c", True),  # type: ignore[arg-type]
        m.make_receive("q", "c", 1, -1),
        m.make_receive("q", "c", 1, 12 * L.HOUR_MS + 1),
    ],
)
def test_receive_rejects_bad_fields(cmd: m.Command) -> None:
    h = Harness()
    h.create()
    h.err(cmd, m.BAD_REQUEST)


def test_lease_hides_message_until_it_ends() -> None:
    h = Harness()
    h.create(visibility_timeout_ms=1000)
    a = h.put()
    assert h.ids() == [a]
    h.advance(999)
    assert h.ids() == []
    h.advance(1)
    got = h.get()
    assert [g["message_id"] for g in got] == [a] and got[0]["delivery_count"] == 2
    assert got[0]["receipt"] == f"{a}:2"
    assert h.stats()["redelivered"] == 1


def test_redelivered_message_keeps_its_place() -> None:
    h = Harness()
    h.create()
    a = h.put()
    b = h.put()
    assert h.ids(n=1, vt=100) == [a]
    h.advance(100)
    assert h.ids(n=2) == [a, b]


def test_receive_visibility_timeout_zero_is_visible_again_at_once() -> None:
    h = Harness()
    h.create()
    a = h.put()
    got = h.get(vt=0)
    assert got[0]["message_id"] == a
    assert h.stats()["ready"] == 1
    h.err(m.make_ack("q", got[0]["receipt"]), m.INVALID_RECEIPT)


def test_stale_receipt_is_rejected() -> None:
    h = Harness()
    h.create(visibility_timeout_ms=1000)
    h.put()
    first = h.get()[0]["receipt"]
    h.advance(1000)
    second = h.get()[0]["receipt"]
    h.err(m.make_ack("q", first), m.INVALID_RECEIPT)
    h.err(m.make_nack("q", first), m.INVALID_RECEIPT)
    h.err(m.make_change_visibility("q", first, 5000), m.INVALID_RECEIPT)
    assert h.ok(m.make_ack("q", second)) == {"acked": 1, "invalid": []}
    h.err(m.make_ack("q", second), m.INVALID_RECEIPT)  # twice


def test_receipt_after_lease_end_is_rejected_even_if_not_redelivered() -> None:
    h = Harness()
    h.create(visibility_timeout_ms=1000)
    h.put()
    receipt = h.get()[0]["receipt"]
    h.advance(1000)
    h.err(m.make_ack("q", receipt), m.INVALID_RECEIPT)


@pytest.mark.parametrize(
    "receipt", ["", "1", "1:", ":1", "01:1", "1:01", "a:1", "1:1:1", "１:1", "1" * 50 + ":1"]
)
def test_malformed_receipts_are_invalid(receipt: str) -> None:
    h = Harness()
    h.create()
    h.put()
    h.get()
    h.err(m.make_ack("q", receipt), m.INVALID_RECEIPT)


def test_ack_batch_with_partial_failures() -> None:
    h = Harness()
    h.create()
    h.put()
    h.put()
    got = h.get(n=2)
    receipts = [got[0]["receipt"], "9:9", got[1]["receipt"], got[1]["receipt"]]
    assert h.ok(m.make_ack("q", receipts)) == {
        "acked": 2,
        "invalid": ["9:9", got[1]["receipt"]],
    }
    assert h.stats()["acked"] == 2
    h.err(m.make_ack("q", ["1:1"] * 101), m.BATCH_TOO_LARGE)
    h.err(m.make_ack("q", []), m.BAD_REQUEST)
    h.err(m.make_ack("q", [5]), m.BAD_REQUEST)  # type: ignore[list-item]
    h.err(m.Ack("q", ["1:1"]), m.BAD_REQUEST)  # type: ignore[arg-type]
    h.err(m.make_ack("nope", "1:1"), m.QUEUE_NOT_FOUND)


def test_receipt_of_another_queue_is_invalid() -> None:
    h = Harness()
    h.create("a")
    h.create("b")
    h.put("a")
    receipt = h.get("a")[0]["receipt"]
    h.err(m.make_ack("b", receipt), m.INVALID_RECEIPT)


def test_nack_makes_message_visible_again_or_later() -> None:
    h = Harness()
    h.create()
    a = h.put()
    b = h.put()
    got = h.get()
    assert h.ok(m.make_nack("q", got[0]["receipt"])) == {"message_id": a, "state": "ready"}
    assert h.ids(n=1) == [a]  # keeps its place before b
    got = h.ids(n=1)
    assert got == [b]
    h.advance(30_000)
    first = h.get()[0]
    assert first["message_id"] == a and first["delivery_count"] == 3
    reply = h.ok(m.make_nack("q", first["receipt"], delay_ms=500))
    assert reply == {"message_id": a, "state": "delayed"}
    assert h.stats()["delayed"] == 1
    assert h.ids() == [b]
    h.advance(500)
    assert h.ids() == [a]


def test_nack_reject_dead_letters_at_once() -> None:
    h = Harness()
    h.create()
    a = h.put(headers={"k": "v"})
    h.advance(7)
    receipt = h.get()[0]["receipt"]
    assert h.ok(m.make_nack("q", receipt, reject=True)) == {
        "message_id": a,
        "state": "dead_lettered",
    }
    dead = h.get("q.dlq")[0]
    assert dead["headers"] == {
        "k": "v",
        L.H_REASON: "rejected",
        L.H_QUEUE: "q",
        L.H_COUNT: "1",
        L.H_TIME: str(T0 + 7),
        L.H_MESSAGE_ID: str(a),
    }
    assert dead["first_enqueued_ms"] == T0 and dead["enqueued_ms"] == T0 + 7
    assert dead["delivery_count"] == 1


@pytest.mark.parametrize(
    "cmd",
    [
        m.make_nack("q", "1:1", delay_ms=-1),
        m.make_nack("q", "1:1", delay_ms=15 * L.MINUTE_MS + 1),
        m.make_nack("q", "1:1", reject=1),  # type: ignore[arg-type]
        m.make_nack("q", 11),  # type: ignore[arg-type]
        m.make_change_visibility("q", "1:1", -1),
        m.make_change_visibility("q", "1:1", 12 * L.HOUR_MS + 1),
        m.make_change_visibility("q", None, 1),  # type: ignore[arg-type]
    ],
)
def test_nack_and_change_visibility_reject_bad_fields(cmd: m.Command) -> None:
    h = Harness()
    h.create()
    h.err(cmd, m.BAD_REQUEST)


def test_change_visibility_extends_and_ends_lease() -> None:
    h = Harness()
    h.create(visibility_timeout_ms=1000)
    a = h.put()
    receipt = h.get()[0]["receipt"]
    h.advance(900)
    assert h.ok(m.make_change_visibility("q", receipt, 5000)) == {
        "message_id": a,
        "visible_at_ms": h.now_ms + 5000,
    }
    h.advance(4999)
    assert h.ids() == []
    h.ok(m.make_change_visibility("q", receipt, 0))
    assert h.stats()["ready"] == 1
    h.err(m.make_change_visibility("q", receipt, 10), m.INVALID_RECEIPT)
    h.err(m.make_change_visibility("nope", receipt, 10), m.QUEUE_NOT_FOUND)
    h.err(m.make_nack("nope", receipt), m.QUEUE_NOT_FOUND)
    h.err(m.make_receive("nope", "c"), m.QUEUE_NOT_FOUND)


# --- delivery limit, expiry, tick -------------------------------------------------


def test_delivery_limit_dead_letters_instead_of_delivering() -> None:
    h = Harness()
    h.create(max_deliveries=2, visibility_timeout_ms=100)
    a = h.put()
    b = h.put()
    assert h.ids(n=1) == [a]
    h.advance(100)
    assert h.ids(n=1) == [a]
    h.advance(100)
    assert h.ids(n=1) == [b]  # a would be delivered a third time: dead-lettered instead
    dead = h.get("q.dlq")[0]
    assert dead["headers"][L.H_REASON] == "delivery_limit"
    assert dead["headers"][L.H_COUNT] == "2"
    assert h.stats()["dead_lettered"] == 1


def test_max_deliveries_zero_is_unlimited() -> None:
    h = Harness()
    h.create(max_deliveries=0, visibility_timeout_ms=1)
    h.put()
    for i in range(30):
        got = h.get()
        assert got[0]["delivery_count"] == i + 1
        h.advance(1)


def test_dead_letter_without_dead_letter_queue_drops() -> None:
    h = Harness()
    h.create(max_deliveries=1, visibility_timeout_ms=100, dead_letter_queue=None)
    h.put()
    h.get()
    h.advance(100)
    assert h.get() == []
    assert h.stats()["dead_lettered"] == 1
    assert m.query_total_messages(h.state) == 0


def test_dead_letter_queue_deleted_later_drops() -> None:
    h = Harness()
    h.create(max_deliveries=1, visibility_timeout_ms=100)
    h.ok(m.make_delete_queue("q.dlq"))
    h.put()
    h.get()
    h.advance(100)
    assert h.get() == []
    assert m.query_total_messages(h.state) == 0


def test_full_dead_letter_queue_discards_or_drops_its_head() -> None:
    h = Harness()
    h.create("dl1", max_length=1, dead_letter_queue=None)
    h.create("dl2", max_length=1, overflow="drop_head", dead_letter_queue="dl1")
    h.create("a", dead_letter_queue="dl1")
    h.create("b", dead_letter_queue="dl2")
    for q in ("a", "a", "b", "b"):
        h.put(q)
    for q in ("a", "b"):
        for got in h.get(q, n=2):
            h.ok(m.make_nack(q, got["receipt"], reject=True))
    assert h.stats("dl1")["messages"] == 1  # the second dead letter met a full queue
    assert h.stats("dl2")["messages"] == 1  # drop_head made room: oldest discarded
    assert h.stats("dl2")["dead_lettered"] == 1
    assert h.stats("dl1")["enqueued"] == 1  # not forwarded further


def test_ttl_expires_to_dead_letter_queue_on_tick() -> None:
    h = Harness()
    h.create()
    a = h.put(ttl_ms=1000)
    h.put()
    h.advance(1000)
    h.ok(m.make_tick(h.now_ms))
    assert m.WakeWaiters("q.dlq") in h.effects
    dead = h.get("q.dlq")[0]
    assert dead["headers"][L.H_REASON] == "expired"
    assert dead["headers"][L.H_MESSAGE_ID] == str(a)
    assert h.stats()["expired"] == 1


def test_ttl_expires_in_flight_and_delayed_messages() -> None:
    h = Harness()
    h.create(dead_letter_queue=None)
    h.put(ttl_ms=100)
    receipt = h.get()[0]["receipt"]
    h.put(ttl_ms=100, delay_ms=1000)
    h.advance(100)
    h.err(m.make_ack("q", receipt), m.INVALID_RECEIPT)
    st = h.stats()
    assert (st["expired"], st["messages"]) == (2, 0)


def test_retention_expires_oldest_first() -> None:
    h = Harness()
    h.create(retention_ms=60_000)
    a = h.put()
    h.advance(10_000)
    b = h.put()
    h.advance(50_000)
    h.ok(m.make_tick(h.now_ms))
    assert h.ids() == [b]
    h.advance(10_000)
    h.ok(m.make_tick(h.now_ms))
    assert [d["headers"][L.H_MESSAGE_ID] for d in h.get("q.dlq", n=10)] == [str(a), str(b)]
    assert h.stats()["expired"] == 2


def test_retention_rearms_after_head_is_acked() -> None:
    h = Harness()
    h.create(retention_ms=60_000, dead_letter_queue=None)
    h.put()
    h.ok(m.make_ack("q", h.get()[0]["receipt"]))
    h.advance(30_000)
    b = h.put()
    h.advance(30_000)
    h.ok(m.make_tick(h.now_ms))  # the first message's timer fires and re-arms for b
    assert h.stats()["messages"] == 1
    h.advance(30_000)
    h.ok(m.make_tick(h.now_ms))
    assert h.stats()["expired"] == 1
    del b


def test_tick_reports_time_and_is_cheap_when_nothing_due() -> None:
    h = Harness()
    h.create()
    assert h.ok(m.make_tick(h.now_ms + 5)) == {"now_ms": h.now_ms + 5}
    assert h.effects == [m.ReleaseCursor(h.index)]
    h.err(m.make_tick(-1), m.BAD_REQUEST)
    h.err(m.make_tick("soon"), m.BAD_REQUEST)  # type: ignore[arg-type]


def test_clock_never_goes_back() -> None:
    h = Harness()
    h.create(visibility_timeout_ms=1000)
    h.put()
    h.get()
    h.advance(1000)
    h.run(m.make_tick(h.now_ms))
    # A new leader whose clock is behind: the lease stays ended.
    got = h.run(m.make_receive("q", "c"), now_ms=h.now_ms - 5000)
    assert got["messages"][0]["delivery_count"] == 2
    assert h.state.clock_ms == h.now_ms
    assert h.stats()["in_flight"] == 1
