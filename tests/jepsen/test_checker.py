"""The checker on hand-written histories: each bad one is flagged, the good one passes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jepsen_like.checker import QueueSpec, check, check_consistency, total_queue
from jepsen_like.history import Delivery, History, Op, read_jsonl

Q = "q"
F = "f"
SPECS = [
    QueueSpec(Q, visibility_timeout_ms=1000, max_deliveries=3, dlq="q.dlq"),
    QueueSpec("q.dlq"),
    QueueSpec(F, fifo=True, visibility_timeout_ms=1000, max_deliveries=3, dlq="f.dlq"),
    QueueSpec("f.dlq", fifo=True),
]
STATUS = [
    {"node_id": i, "commit_index": 50, "applied_index": 50, "digest": "abc", "role": "x"}
    for i in (1, 2, 3)
]


class Builder:
    """Writes histories by hand with an explicit wall clock (ms)."""

    def __init__(self) -> None:
        self.h = History(origin_ns=0)
        self.t_ms = 1_000_000.0
        self.ids = 100

    def _at(self, op: Op, dt_ms: float) -> Op:
        self.t_ms += dt_ms
        op.wall_ms = self.t_ms
        op.time_ns = int(self.t_ms * 1e6)
        return self.h.append(op)

    def enqueue(self, p: int, value: int, result: str = "ok", queue: str = Q,
                group: str | None = None, message_id: int | None = None, dt_ms: float = 1) -> int:
        inv = self._at(Op("invoke", "enqueue", p, queue=queue, value=value,
                          dedup_id=f"v{value}", group=group), dt_ms)
        mid = message_id
        if mid is None:
            self.ids += 1
            mid = self.ids
        fields: dict[str, Any] = {"queue": queue, "value": value, "dedup_id": inv.dedup_id,
                                  "group": group}
        if result == "ok":
            fields.update(message_id=mid, duplicate=False)
        else:
            fields.update(error="TIMEOUT" if result == "info" else "CLUSTER_UNAVAILABLE")
        self._at(Op(result, "enqueue", p, **fields), 1)
        return mid

    def receive(self, p: int, msgs: list[tuple[int, int, int]], queue: str = Q,
                group: str | None = None, vt_ms: int = 1000, dt_ms: float = 1,
                death: dict[str, Any] | None = None, result: str = "ok") -> list[str]:
        """msgs: (value, message_id, delivery_count)."""
        self._at(Op("invoke", "receive", p, queue=queue, max_messages=10,
                    visibility_timeout_ms=vt_ms), dt_ms)
        ds = [Delivery(v, mid, f"{mid}:{n}", n, group, death) for v, mid, n in msgs]
        if result == "ok":
            self._at(Op("ok", "receive", p, queue=queue, messages=ds), 1)
        else:
            self._at(Op(result, "receive", p, queue=queue, error="TIMEOUT"), 1)
        return [d.receipt for d in ds]

    def ack(self, p: int, value: int, receipt: str, result: str = "ok", queue: str = Q,
            dt_ms: float = 1) -> None:
        self._at(Op("invoke", "ack", p, queue=queue, value=value, receipt=receipt), dt_ms)
        self._at(Op(result, "ack", p, queue=queue, value=value, receipt=receipt,
                    error=None if result == "ok" else "INVALID_RECEIPT"), 1)

    def nack(self, p: int, value: int, receipt: str, queue: str = Q) -> None:
        self._at(Op("invoke", "nack", p, queue=queue, value=value, receipt=receipt), 1)
        self._at(Op("ok", "nack", p, queue=queue, value=value, receipt=receipt), 1)

    def crash(self, p: int, receipts: list[str], queue: str = Q) -> None:
        self._at(Op("info", "crash", p, queue=queue, receipts=receipts), 1)

    def stats(self, p: int, queue: str = Q, result: str = "ok", **totals: int) -> None:
        """A reader's `queue_stats` of `queue`, invoked and completed at once."""
        self.stats_invoke(p, queue)
        self.stats_done(p, queue, result, **totals)

    def stats_invoke(self, p: int, queue: str = Q) -> None:
        self._at(Op("invoke", "stats", p, queue=queue), 1)

    def stats_done(self, p: int, queue: str = Q, result: str = "ok", **totals: int) -> None:
        if result == "ok":
            self._at(Op("ok", "stats", p, queue=queue, totals=totals), 1)
        else:
            self._at(Op(result, "stats", p, queue=queue, error="UNAVAILABLE"), 1)

    def enqueue_invoke(self, p: int, value: int, queue: str = Q) -> None:
        self._at(Op("invoke", "enqueue", p, queue=queue, value=value, dedup_id=f"v{value}"), 1)

    def enqueue_ok(self, p: int, value: int, queue: str = Q) -> int:
        self.ids += 1
        self._at(Op("ok", "enqueue", p, queue=queue, value=value, dedup_id=f"v{value}",
                    message_id=self.ids, duplicate=False), 1)
        return self.ids

    def wait(self, dt_ms: float) -> None:
        self.t_ms += dt_ms

    def check(self) -> dict[str, Any]:
        return check(self.h.ops, SPECS, final_statuses=STATUS)


def good() -> Builder:
    """A history with every allowed kind of event: retries, info enqueues, crash, nack,
    lease expiry, a FIFO group in order, a dead letter."""
    b = Builder()
    m1 = b.enqueue(0, 1)
    m2 = b.enqueue(0, 2, result="info")  # unknown outcome: it happened anyway
    m3 = b.enqueue(0, 3, result="info", message_id=999)  # unknown: never happened
    del m3
    b.enqueue(1, 4, result="fail")  # certainly not: never delivered
    r = b.receive(5, [(1, m1, 1)])
    b.crash(5, r)  # consumer vanishes: lease runs out
    b.wait(1000)
    r = b.receive(6, [(1, m1, 2), (2, m2, 1)])
    b.nack(6, 2, r[1])
    b.ack(6, 1, r[0])
    r = b.receive(6, [(2, m2, 2)])
    b.ack(6, 2, r[0])
    # FIFO group g: a then b, in order, with a redelivery of a (lease ended) first.
    fa = b.enqueue(2, 10, queue=F, group="g")
    fb = b.enqueue(2, 11, queue=F, group="g")
    r = b.receive(7, [(10, fa, 1)], queue=F, group="g")
    b.wait(1100)
    r = b.receive(7, [(10, fa, 2)], queue=F, group="g")
    b.ack(7, 10, r[0], queue=F)
    r = b.receive(7, [(11, fb, 1)], queue=F, group="g")
    b.ack(7, 11, r[0], queue=F)
    # A poison message: nacked to the limit, then found in the dead-letter queue.
    mp = b.enqueue(3, 20)
    for n in (1, 2, 3):
        r = b.receive(8, [(20, mp, n)])
        b.nack(8, 20, r[0])
    death = {"reason": "delivery_limit", "queue": Q, "message_id": mp, "delivery_count": 3}
    r = b.receive(9, [(20, 500, 1)], queue="q.dlq", death=death)
    b.ack(9, 20, r[0], queue="q.dlq")
    # A reader: q's totals as they are now (values 1, 2 and 20 stored; 1 and 2 acked).
    b.stats(10, enqueued=3, delivered=7, redelivered=4, acked=2, dead_lettered=1)
    b.stats(10, queue="q.dlq", enqueued=1, acked=1)
    b.stats(10, result="fail")
    return b


def test_good_history_passes() -> None:
    res = good().check()
    assert res["valid"], res["failed_checks"]
    tq = res["total_queue"]
    assert tq["lost"] == [] and tq["unexpected"] == []
    assert tq["attempt_count"] == 7
    assert tq["acknowledged_count"] == 4
    assert tq["recovered"] == [2]
    assert tq["duplicated"] == {"1": 2, "2": 2, "10": 2, "20": 4}
    assert res["duplicates"]["explained"] == {"lease_ended": 2, "nack": 3, "dead_letter": 1}
    assert res["crashes"]["redelivered_plus_one"] == 1
    assert res["delivery_limit"]["dead_letters_by_reason"] == {"delivery_limit": 1}


def test_one_lost_value_is_flagged() -> None:
    b = good()
    b.enqueue(0, 42)  # acknowledged, never received
    res = b.check()
    assert not res["valid"]
    assert res["total_queue"]["lost"] == [42]
    assert res["failed_checks"] == ["total_queue"]


def test_one_phantom_value_is_flagged() -> None:
    b = good()
    b.receive(6, [(77, 4242, 1)])  # never attempted
    res = b.check()
    assert not res["valid"]
    assert res["total_queue"]["unexpected"] == [77]
    assert "total_queue" in res["failed_checks"]


def test_unexplained_duplicate_is_flagged() -> None:
    b = good()
    m = b.enqueue(0, 50)
    r = b.receive(6, [(50, m, 1)])
    b.ack(6, 50, r[0])
    b.receive(6, [(50, m, 2)], dt_ms=5)  # delivered again after an ok ack
    res = b.check()
    assert not res["valid"]
    assert res["total_queue"]["valid"]  # total-queue alone does not see it
    assert res["failed_checks"] == ["duplicates"]
    (u,) = res["duplicates"]["unexplained"]
    assert u["value"] == 50 and "after an ok ack" in u["why"]


def test_duplicate_before_lease_end_is_flagged() -> None:
    b = good()
    m = b.enqueue(0, 51)
    b.receive(6, [(51, m, 1)], vt_ms=1000)
    b.receive(7, [(51, m, 2)], dt_ms=100)  # 100 ms later, lease was 1000 ms
    res = b.check()
    assert res["failed_checks"] == ["duplicates"]
    assert "before the previous lease" in res["duplicates"]["unexplained"][0]["why"]


def test_fifo_inversion_is_flagged() -> None:
    b = good()
    a = b.enqueue(2, 60, queue=F, group="h")
    c = b.enqueue(2, 61, queue=F, group="h")
    r = b.receive(7, [(61, c, 1)], queue=F, group="h")  # the later message first
    b.ack(7, 61, r[0], queue=F)
    r = b.receive(7, [(60, a, 1)], queue=F, group="h")
    b.ack(7, 60, r[0], queue=F)
    res = b.check()
    assert res["failed_checks"] == ["fifo"]
    (inv,) = res["fifo"]["inversions"]
    assert inv["earlier"]["value"] == 60 and inv["later"]["value"] == 61


def test_two_messages_of_a_group_in_one_receive_are_flagged() -> None:
    b = good()
    a = b.enqueue(2, 64, queue=F, group="m")
    c = b.enqueue(2, 65, queue=F, group="m")
    r = b.receive(7, [(64, a, 1), (65, c, 1)], queue=F, group="m")
    b.ack(7, 64, r[0], queue=F)
    b.ack(7, 65, r[1], queue=F)
    res = b.check()
    assert res["failed_checks"] == ["fifo"]
    assert "several messages of one group" in res["fifo"]["inversions"][0]["why"]


def test_fifo_enqueue_order_is_checked() -> None:
    b = good()
    b.enqueue(2, 62, queue=F, group="k", message_id=900)
    b.enqueue(2, 63, queue=F, group="k", message_id=899)  # began after 62 completed
    res = b.check()
    assert not res["fifo"]["valid"]
    assert res["fifo"]["enqueue_order"][0]["later"]["value"] == 63


def test_dedup_violation_is_flagged() -> None:
    b = good()
    m = b.enqueue(0, 70)
    r = b.receive(6, [(70, m, 1), (70, m + 1000, 1)])  # one dedup id, two messages
    b.ack(6, 70, r[0])
    b.ack(6, 70, r[1])
    res = b.check()
    assert "dedup" in res["failed_checks"]


def test_stale_and_late_acks_accepted_are_flagged() -> None:
    b = good()
    m = b.enqueue(0, 80)
    r1 = b.receive(6, [(80, m, 1)], vt_ms=100)
    b.wait(200)
    r2 = b.receive(7, [(80, m, 2)])
    b.ack(6, 80, r1[0])  # stale receipt accepted: a bug
    b.ack(7, 80, r2[0])
    res = b.check()
    assert "acks" in res["failed_checks"]
    assert len(res["acks"]["stale_acks_accepted"]) == 1
    assert len(res["acks"]["late_acks_accepted"]) == 1


def test_stale_ack_rejected_is_fine() -> None:
    b = good()
    m = b.enqueue(0, 81)
    r1 = b.receive(6, [(81, m, 1)], vt_ms=100)
    b.wait(200)
    r2 = b.receive(7, [(81, m, 2)])
    b.ack(6, 81, r1[0], result="fail")
    b.ack(7, 81, r2[0])
    res = b.check()
    assert res["valid"], res["failed_checks"]
    assert res["acks"]["stale_acks_rejected"] == 1


def test_delivery_count_gap_needs_an_unknown_receive() -> None:
    b = good()
    m = b.enqueue(0, 90)
    b.receive(6, [(90, m, 1)])
    b.wait(1100)
    b.receive(6, [(90, m, 3)])  # count 2 was never seen, no receive had an unknown outcome
    res = b.check()
    assert res["failed_checks"] == ["duplicates"]
    b2 = good()
    m = b2.enqueue(0, 90)
    b2.receive(6, [(90, m, 1)])
    b2.wait(1100)
    b2.receive(5, [], result="info")
    b2.wait(1100)
    b2.receive(6, [(90, m, 3)])
    assert b2.check()["valid"]


def test_over_delivery_limit_and_lying_fail() -> None:
    b = good()
    m = b.enqueue(0, 95)
    for n in (1, 2, 3, 4):
        r = b.receive(6, [(95, m, n)])
        b.nack(6, 95, r[0])
    r = b.receive(6, [(95, m, 5)])
    b.ack(6, 95, r[0])
    b.enqueue(1, 96, result="fail")
    r = b.receive(6, [(96, 7777, 1)])
    b.ack(6, 96, r[0])
    res = b.check()
    assert set(res["failed_checks"]) == {"delivery_limit", "failed_enqueues"}


def test_crashed_delivery_never_redelivered_is_flagged() -> None:
    b = Builder()
    m = b.enqueue(0, 1, result="info")
    r = b.receive(5, [(1, m, 1)])
    b.crash(5, r)
    res = b.check()
    assert res["failed_checks"] == ["crashes"]


def test_consistency_and_faults() -> None:
    assert check_consistency(STATUS)["valid"]
    bad = [dict(STATUS[0]), dict(STATUS[1], digest="zzz")]
    out = check_consistency(bad)
    assert not out["valid"] and "digest" in out["why"]
    assert not check_consistency([{"node_id": 1, "error": "down"}])["valid"]
    b = good()
    res = check(b.h.ops, SPECS, final_statuses=STATUS, faults=[], require_faults=True)
    assert res["failed_checks"] == ["faults"]
    res = check(b.h.ops, SPECS, final_statuses=STATUS,
                faults=[{"kind": "kill", "verified": True}], require_faults=True)
    assert res["valid"]


def test_history_round_trips_through_json_lines(tmp_path: Path) -> None:
    b = good()
    path = tmp_path / "history.jsonl"
    b.h.write_jsonl(path)
    first = json.loads(path.read_text().splitlines()[0])
    assert first["type"] == "invoke" and first["f"] == "enqueue"
    ops = read_jsonl(path)
    assert [o.to_json() for o in ops] == [o.to_json() for o in b.h.ops]
    assert check(ops, SPECS, final_statuses=STATUS)["valid"]
    assert total_queue(ops) == total_queue(b.h.ops)


def test_reads_of_the_good_history_are_fresh() -> None:
    res = good().check()
    reads = res["reads"]
    assert reads["valid"] and reads["ok_reads"] == 2 and reads["reads"] == {"ok": 2, "fail": 1}
    assert reads["queues"] == [Q, "q.dlq"]
    # q's read counted value 2, whose enqueue had an unknown outcome: above the bound.
    assert reads["ahead_of_bound"] == 2


def test_a_stale_read_is_flagged() -> None:
    """A read that began after two enqueues and an ack were ok shows one enqueue, no ack
    (what a leader cut off from a new one answers from its old state)."""
    b = Builder()
    m1 = b.enqueue(0, 1)
    m2 = b.enqueue(0, 2)
    b.stats(10, enqueued=2, acked=0)  # fresh
    r = b.receive(5, [(1, m1, 1), (2, m2, 1)])
    b.ack(5, 2, r[1])
    b.stats(11, enqueued=1, acked=0, delivered=1)  # stale on both counts
    res = b.check()
    assert res["failed_checks"] == ["reads"]
    reads = res["reads"]
    assert reads["stale_count"] == 2 and reads["non_monotonic_count"] == 1
    enq, ack = reads["stale"]
    assert enq["total"] == "enqueued" and enq["read_value"] == 1 and enq["required"] == 2
    assert enq["witness"]["value"] == 2 and enq["read"]["process"] == 11
    assert enq["witness"]["ok_index"] < enq["read"]["invoke_index"]
    assert ack["total"] == "acked" and ack["read_value"] == 0 and ack["required"] == 1
    (mono,) = reads["non_monotonic"]
    assert mono["total"] == "enqueued" and mono["earlier_value"] == 2
    assert mono["earlier"]["process"] == 10


def test_a_fresh_read_passes() -> None:
    b = Builder()
    for v in (1, 2, 3):
        b.enqueue(0, v)
    b.enqueue(0, 3)  # the same value again (a retry answered as a duplicate): one message
    b.enqueue(0, 4, result="fail")
    b.stats(10, enqueued=3, acked=0)
    res = check(b.h.ops, SPECS, check_final_consistency=False)
    assert res["reads"]["valid"] and res["reads"]["ahead_of_bound"] == 0


def test_overlapping_operations_cause_no_false_alarm() -> None:
    """An enqueue or an ack that overlaps a read may or may not be counted; so may one whose
    outcome is unknown; two reads that overlap may see each other in either order."""
    b = Builder()
    b.enqueue(0, 1)
    b.stats_invoke(10)
    b.enqueue_invoke(1, 2)
    b.enqueue_ok(1, 2)  # completed while the read was outstanding: not required
    b.stats_done(10, enqueued=1)
    b.enqueue_invoke(1, 3)
    b.stats(11, enqueued=2)  # 3 is in flight
    b.stats(11, enqueued=3)  # it took effect already
    b.enqueue_ok(1, 3)
    b.enqueue(2, 4, result="info")
    b.stats(11, enqueued=3)  # 4 unknown: not counted here
    # Two reads overlapping each other: the later-completing one shows less. Fine.
    b.stats_invoke(12)
    b.stats(13, enqueued=4)
    b.stats_done(12, enqueued=3)
    # An ack in flight during a read.
    r = b.receive(5, [(1, 101, 1)])
    b.stats_invoke(12)
    b._at(Op("invoke", "ack", 5, queue=Q, value=1, receipt=r[0]), 1)
    b.stats_done(12, acked=1, enqueued=4)
    b._at(Op("ok", "ack", 5, queue=Q, value=1, receipt=r[0]), 1)
    b.stats(13, acked=1, enqueued=4)
    res = check(b.h.ops, SPECS, check_final_consistency=False)
    assert res["reads"]["valid"], res["reads"]
    assert res["reads"]["ok_reads"] == 8


def test_a_read_behind_an_earlier_read_is_flagged() -> None:
    """Monotonic: a read that saw an enqueue still in flight, then a later read that does not
    (each alone within the bound of acknowledged enqueues)."""
    b = Builder()
    b.enqueue(0, 1)
    b.enqueue_invoke(1, 2)
    b.stats(10, enqueued=2, acked=0)
    b.stats(11, enqueued=1, acked=0)
    b.enqueue_ok(1, 2)
    res = check(b.h.ops, SPECS, check_final_consistency=False)
    reads = res["reads"]
    assert not reads["valid"] and reads["stale_count"] == 0
    (v,) = reads["non_monotonic"]
    assert v["read_value"] == 1 and v["earlier_value"] == 2 and v["read"]["process"] == 11
    assert "reads" in res["failed_checks"]
