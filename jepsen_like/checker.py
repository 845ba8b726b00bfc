"""Checks a queue history: Jepsen's total-queue, then our own stricter rules.

Total-queue (after Jepsen's `checker/total-queue`, jepsen/src/jepsen/checker.clj): every value
an enqueue attempted, had acknowledged, and every value a receive returned, as multisets:

* `attempts`: values of every enqueue invocation;
* `acknowledged`: values whose enqueue completed `ok`;
* `ok`: received values that were attempted;
* `lost`: acknowledged, never received;
* `unexpected`: received, never attempted;
* `duplicated`: received more than once (value -> times);
* `recovered`: received although the enqueue was not acknowledged (`info` or `fail`).

Valid only when `lost` and `unexpected` are empty.

Our own rules (each a section of the result with its own `valid`):

* `duplicates`: every repeated delivery of one message is explained by the history: the
  previous delivery was nacked, or its lease (the receive's visibility timeout, counted from
  the receive's invocation) had ended when the next delivery completed; never after an `ok`
  ack; delivery counts rise, and rise by more than one only when a receive of that queue had
  an unknown outcome. A dead letter is explained only when its source delivery was not acked.
* `dedup`: one deduplication id is enqueued as one message: all `ok` replies of the id carry
  one message id, and every delivery of the value traces back to that one message.
* `fifo`: in a FIFO queue, messages of one group are delivered in message-id order (no
  earlier message is delivered after a later one was, one receive returns at most one message
  of a group), and enqueues of one group that were sequential in real time got increasing
  message ids.
* `acks`: no ack succeeded with a stale receipt (the message had been delivered again before
  the ack was sent), nor after the lease had certainly ended.
* `delivery_limit`: no message is delivered more than the queue's `max_deliveries` times.
* `failed_enqueues`: an enqueue recorded as `fail` never shows up (else `fail` was a lie).
* `crashes`: every delivery a consumer abandoned by crashing is delivered again (or
  dead-lettered).
* `consistency`: at the end every node reports the same commit index, applied index and
  state digest.
* `reads`: reads of a queue's counters (`stats`, `queue_stats`) are linearizable. An ok read
  R of queue q shows the queue's lifetime totals; for R invoked at t:
  - `enqueued` is at least the number of distinct values whose enqueue to q completed ok
    before t (each was stored in q at least once, and `enqueued` never decreases);
  - `acked` is at least the number of distinct messages of q whose ack completed ok before t
    (an ok ack of one receipt removed that message: counted exactly once);
  - no total is smaller than in a read of q that completed before t (monotonic).
  Operations that overlap R may or may not be counted; `fail` and `info` reads say nothing.
* `faults`: the nemesis injected at least one fault (when faults were required), and each
  fault's effect was verified.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jepsen_like.history import Delivery, Op, pair_ops

__all__ = [
    "LEASE_TOLERANCE_MS",
    "QueueSpec",
    "check",
    "check_consistency",
    "total_queue",
]

LEASE_TOLERANCE_MS = 5.0
"""Slack in lease arithmetic: millisecond rounding of the leader's stamps."""


@dataclass(frozen=True)
class QueueSpec:
    """What the checker needs to know about one queue of the workload.

    Attributes:
        name: the queue.
        fifo: FIFO message groups.
        max_deliveries: the delivery limit (0 = unlimited).
        visibility_timeout_ms: the queue's default lease.
        dlq: its dead-letter queue, or None.
    """

    name: str
    fifo: bool = False
    max_deliveries: int = 0
    visibility_timeout_ms: int = 30_000
    dlq: str | None = None


@dataclass
class _Delivery:
    """A delivery with the operation that produced it."""

    queue: str
    d: Delivery
    inv: Op
    ok: Op

    def brief(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "message_id": self.d.message_id,
            "receipt": self.d.receipt,
            "delivery_count": self.d.delivery_count,
            "process": self.inv.process,
            "invoke_index": self.inv.index,
            "ok_index": self.ok.index,
            "invoke_wall_ms": round(self.inv.wall_ms, 3),
            "ok_wall_ms": round(self.ok.wall_ms, 3),
        }


@dataclass
class _Index:
    """The history, indexed for the checks."""

    pairs: list[tuple[Op, Op | None]]
    deliveries: list[_Delivery] = field(default_factory=list)
    # (queue, receipt) -> [(invoke, completion)]
    acks: dict[tuple[str, str], list[tuple[Op, Op | None]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    nacks: dict[tuple[str, str], list[tuple[Op, Op | None]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    # queue -> invocations of receives whose outcome is unknown
    unknown_receives: dict[str, list[Op]] = field(default_factory=lambda: defaultdict(list))
    crashed: list[tuple[str, str, Op]] = field(default_factory=list)


def _index(ops: Iterable[Op]) -> _Index:
    idx = _Index(pair_ops(ops))
    for inv, done in idx.pairs:
        if inv.f == "crash":
            for r in inv.receipts or []:
                idx.crashed.append((inv.queue or "", r, inv))
            continue
        q = inv.queue or ""
        if inv.f == "receive":
            if done is not None and done.type == "ok":
                for d in done.messages or []:
                    idx.deliveries.append(_Delivery(q, d, inv, done))
            elif done is None or done.type == "info":
                idx.unknown_receives[q].append(inv)
        elif inv.f == "ack" and inv.receipt is not None:
            idx.acks[(q, inv.receipt)].append((inv, done))
        elif inv.f == "nack" and inv.receipt is not None:
            idx.nacks[(q, inv.receipt)].append((inv, done))
    return idx


def _sorted_values(values: Iterable[Any]) -> list[Any]:
    return sorted(values, key=lambda v: (not isinstance(v, int), str(v) if not
                                         isinstance(v, int) else v))


def total_queue(ops: Sequence[Op]) -> dict[str, Any]:
    """Jepsen's total-queue over `ops` (see the module docstring).

    Returns:
        A map with `valid`, counts (`attempt_count`, ...) and the values (`lost`, ...).
    """
    attempts: Counter[Any] = Counter()
    acknowledged: Counter[Any] = Counter()
    received: Counter[Any] = Counter()
    for inv, done in pair_ops(ops):
        if inv.f == "enqueue":
            attempts[inv.value] += 1
            if done is not None and done.type == "ok":
                acknowledged[inv.value] += 1
        elif inv.f == "receive" and done is not None and done.type == "ok":
            for d in done.messages or []:
                v: Any = d.value
                if v is None:
                    v = f"foreign:{inv.queue}:{d.message_id}"
                received[v] += 1
    attempted = set(attempts)
    acked = set(acknowledged)
    got = set(received)
    ok = got & attempted
    lost = acked - got
    unexpected = got - attempted
    duplicated = {v: n for v, n in received.items() if n > 1}
    recovered = got & (attempted - acked)
    return {
        "valid": not lost and not unexpected,
        "attempt_count": sum(attempts.values()),
        "acknowledged_count": sum(acknowledged.values()),
        "received_count": sum(received.values()),
        "ok_count": len(ok),
        "lost_count": len(lost),
        "unexpected_count": len(unexpected),
        "duplicated_count": len(duplicated),
        "recovered_count": len(recovered),
        "lost": _sorted_values(lost),
        "unexpected": _sorted_values(unexpected),
        "duplicated": {str(v): n for v, n in sorted(duplicated.items(), key=lambda kv: str(kv[0]))},
        "recovered": _sorted_values(recovered),
    }


def _first_ok(pairs: list[tuple[Op, Op | None]], kinds: tuple[str, ...]) -> list[tuple[Op, Op]]:
    return [(i, d) for i, d in pairs if d is not None and d.type in kinds]


def _check_duplicates(idx: _Index, specs: dict[str, QueueSpec]) -> dict[str, Any]:
    chains: dict[tuple[str, int], list[_Delivery]] = defaultdict(list)
    for dv in idx.deliveries:
        chains[(dv.queue, dv.d.message_id)].append(dv)
    unexplained: list[dict[str, Any]] = []
    explained = Counter[str]()
    for (queue, _mid), chain in chains.items():
        chain.sort(key=lambda x: (x.d.delivery_count, x.ok.index))
        first = chain[0]
        if first.d.delivery_count > 1 and not _unknown_receive_before(
            idx, queue, first.ok.index
        ):
            unexplained.append({
                "why": "first observed delivery count above 1 without an unknown receive",
                "value": first.d.value, **first.brief(),
            })
        for prev, nxt in zip(chain, chain[1:], strict=False):
            why = _explain_redelivery(idx, prev, nxt)
            if why.startswith("unexplained"):
                unexplained.append({
                    "why": why,
                    "value": nxt.d.value,
                    "previous": prev.brief(),
                    "next": nxt.brief(),
                })
            else:
                explained[why] += 1
            if nxt.d.delivery_count - prev.d.delivery_count > 1 and not _unknown_receive_between(
                idx, queue, prev.inv.index, nxt.ok.index
            ):
                unexplained.append({
                    "why": "delivery count rose by more than one without an unknown receive",
                    "value": nxt.d.value, "previous": prev.brief(), "next": nxt.brief(),
                })
    # Dead letters (first delivery of each copy): their source must not have been acked.
    for chain in chains.values():
        dv = chain[0]
        death = dv.d.death
        if not death or not isinstance(death.get("message_id"), int):
            continue
        src_q, src_id = str(death.get("queue")), int(death["message_id"])
        acked_sources = [
            src for src in chains.get((src_q, src_id), [])
            if _ok_ack(idx, src_q, src.d.receipt) is not None
        ]
        if acked_sources:
            unexplained.append({
                "why": "dead letter of a message that had been acked",
                "value": dv.d.value, "previous": acked_sources[0].brief(), "next": dv.brief(),
            })
        else:
            explained["dead_letter"] += 1
    return {
        "valid": not unexplained,
        "explained": dict(explained),
        "unexplained_count": len(unexplained),
        "unexplained": unexplained,
    }


def _ok_ack(idx: _Index, queue: str, receipt: str) -> Op | None:
    for _inv, done in idx.acks.get((queue, receipt), []):
        if done is not None and done.type == "ok":
            return done
    return None


def _unknown_receive_before(idx: _Index, queue: str, before_index: int) -> bool:
    return any(inv.index < before_index for inv in idx.unknown_receives.get(queue, []))


def _unknown_receive_between(idx: _Index, queue: str, after_index: int, before_index: int) -> bool:
    # An unknown receive may take effect long after its invocation, so any one invoked before
    # the later delivery completed counts.
    return _unknown_receive_before(idx, queue, before_index)


def _explain_redelivery(idx: _Index, prev: _Delivery, nxt: _Delivery) -> str:
    if nxt.d.delivery_count <= prev.d.delivery_count:
        return "unexplained: delivery count did not rise"
    acked = _ok_ack(idx, prev.queue, prev.d.receipt)
    if acked is not None:
        return "unexplained: delivered again after an ok ack of the previous delivery"
    for inv, done in idx.nacks.get((prev.queue, prev.d.receipt), []):
        if inv.index < nxt.ok.index and (done is None or done.type in ("ok", "info")):
            return "nack"
    vt = prev.inv.visibility_timeout_ms
    if vt is None:
        return "unexplained: receive without a known visibility timeout"
    if nxt.ok.wall_ms + LEASE_TOLERANCE_MS >= prev.inv.wall_ms + vt:
        return "lease_ended"
    return "unexplained: delivered again before the previous lease could have ended"


def _origin(dv: _Delivery) -> tuple[str, int]:
    death = dv.d.death
    if death and isinstance(death.get("message_id"), int):
        return (str(death.get("queue")), int(death["message_id"]))
    return (dv.queue, dv.d.message_id)


def _check_dedup(idx: _Index) -> dict[str, Any]:
    violations: list[dict[str, Any]] = []
    replies: dict[tuple[str, str], set[int]] = defaultdict(set)
    value_dedup: dict[Any, tuple[str, str]] = {}
    for inv, done in idx.pairs:
        if inv.f != "enqueue" or inv.dedup_id is None:
            continue
        key = (inv.queue or "", inv.dedup_id)
        value_dedup[inv.value] = key
        if done is not None and done.type == "ok" and done.message_id is not None:
            replies[key].add(done.message_id)
    for (queue, dedup_id), mids in sorted(replies.items()):
        if len(mids) > 1:
            violations.append({"why": "ok replies of one dedup id carry different message ids",
                               "queue": queue, "dedup_id": dedup_id, "message_ids": sorted(mids)})
    origins: dict[Any, set[tuple[str, int]]] = defaultdict(set)
    for dv in idx.deliveries:
        if dv.d.value is not None:
            origins[dv.d.value].add(_origin(dv))
    for value, oset in sorted(origins.items(), key=lambda kv: str(kv[0])):
        if len(oset) > 1:
            violations.append({
                "why": "one deduplication id delivered as several messages",
                "value": value,
                "dedup_id": value_dedup.get(value, (None, None))[1],
                "messages": sorted([list(o) for o in oset]),
            })
        vkey = value_dedup.get(value)
        for q, mid in oset:
            if vkey is not None and replies.get(vkey) and mid not in replies[vkey] and q == vkey[0]:
                violations.append({
                    "why": "delivered message id differs from the enqueue's reply",
                    "value": value, "queue": q, "delivered_message_id": mid,
                    "replied_message_ids": sorted(replies[vkey]),
                })
    return {"valid": not violations, "dedup_ids": len(value_dedup), "violations": violations}


def _check_fifo(idx: _Index, specs: dict[str, QueueSpec]) -> dict[str, Any]:
    fifo_queues = {q for q, s in specs.items() if s.fifo and not _is_dlq(q, specs)}
    inversions: list[dict[str, Any]] = []
    enqueue_order: list[dict[str, Any]] = []
    # (queue, group) -> message id -> deliveries
    groups: dict[tuple[str, str], dict[int, list[_Delivery]]] = defaultdict(
        lambda: defaultdict(list)
    )
    same_receive: dict[tuple[int, str], list[_Delivery]] = defaultdict(list)
    for dv in idx.deliveries:
        if dv.queue in fifo_queues:
            groups[(dv.queue, dv.d.group or "")][dv.d.message_id].append(dv)
            same_receive[(dv.ok.index, dv.d.group or "")].append(dv)
    for (_, group), dvs in same_receive.items():
        if len(dvs) > 1:
            inversions.append({
                "queue": dvs[0].queue, "group": group,
                "values": [x.d.value for x in dvs], "receive_index": dvs[0].ok.index,
                "why": "one receive returned several messages of one group",
            })
    for (queue, group), by_id in groups.items():
        ids = sorted(by_id)
        # For each message, the earliest-completed delivery of any later message of its group.
        later_first_ok: dict[int, _Delivery | None] = {}
        best: _Delivery | None = None
        for mid in reversed(ids):
            later_first_ok[mid] = best
            first = min(by_id[mid], key=lambda x: x.ok.index)
            if best is None or first.ok.index < best.ok.index:
                best = first
        for mid in ids:
            later = later_first_ok[mid]
            if later is None:
                continue
            for dv in by_id[mid]:
                if dv.inv.index > later.ok.index:
                    inversions.append({
                        "queue": queue, "group": group,
                        "earlier": {"value": dv.d.value, **dv.brief()},
                        "later": {"value": later.d.value, **later.brief()},
                        "why": "an earlier message of the group was delivered after a later "
                               "one had been delivered",
                    })
    # Sequential enqueues of one group get increasing ids.
    oks: dict[tuple[str, str], list[tuple[Op, Op]]] = defaultdict(list)
    for inv, done in idx.pairs:
        if (inv.f == "enqueue" and inv.queue in fifo_queues and done is not None
                and done.type == "ok" and done.message_id is not None and not done.duplicate):
            oks[(inv.queue, inv.group or "")].append((inv, done))
    for (queue, group), lst in oks.items():
        lst.sort(key=lambda p: p[1].index)
        max_done: tuple[Op, Op] | None = None
        by_invoke = sorted(lst, key=lambda p: p[0].index)
        done_sorted = sorted(lst, key=lambda p: p[1].index)
        j = 0
        for inv, done in by_invoke:
            while j < len(done_sorted) and done_sorted[j][1].index < inv.index:
                cand = done_sorted[j]
                if max_done is None or (cand[1].message_id or 0) > (max_done[1].message_id or 0):
                    max_done = cand
                j += 1
            if max_done is not None and (done.message_id or 0) < (max_done[1].message_id or 0):
                enqueue_order.append({
                    "queue": queue, "group": group,
                    "earlier": {"value": max_done[0].value, "message_id": max_done[1].message_id},
                    "later": {"value": inv.value, "message_id": done.message_id},
                    "why": "an enqueue that began after another completed got a smaller id",
                })
    return {
        "valid": not inversions and not enqueue_order,
        "queues": sorted(fifo_queues),
        "groups": len(groups),
        "inversions": inversions,
        "enqueue_order": enqueue_order,
    }


def _is_dlq(queue: str, specs: dict[str, QueueSpec]) -> bool:
    return any(s.dlq == queue for s in specs.values())


def _check_acks(idx: _Index) -> dict[str, Any]:
    by_msg: dict[tuple[str, int], list[_Delivery]] = defaultdict(list)
    by_receipt: dict[tuple[str, str], _Delivery] = {}
    for dv in idx.deliveries:
        by_msg[(dv.queue, dv.d.message_id)].append(dv)
        by_receipt[(dv.queue, dv.d.receipt)] = dv
    stale: list[dict[str, Any]] = []
    late: list[dict[str, Any]] = []
    stale_rejected = 0
    ok_acks = 0
    for (queue, receipt), lst in idx.acks.items():
        acked_dv = by_receipt.get((queue, receipt))
        if acked_dv is None:
            continue
        dv = acked_dv
        for inv, done in lst:
            redelivered = [
                x for x in by_msg[(queue, dv.d.message_id)]
                if x.d.delivery_count > dv.d.delivery_count and x.ok.index < inv.index
            ]
            if done is not None and done.type == "ok":
                ok_acks += 1
                if redelivered:
                    stale.append({"value": dv.d.value, "ack_index": inv.index,
                                  "delivery": dv.brief(), "redelivery": redelivered[0].brief()})
                vt = dv.inv.visibility_timeout_ms
                if vt is not None and inv.wall_ms > dv.ok.wall_ms + vt + LEASE_TOLERANCE_MS:
                    late.append({"value": dv.d.value, "ack_index": inv.index,
                                 "ack_invoke_wall_ms": round(inv.wall_ms, 3),
                                 "delivery": dv.brief(), "visibility_timeout_ms": vt})
            elif redelivered and done is not None and done.type == "fail":
                stale_rejected += 1
    return {
        "valid": not stale and not late,
        "ok_acks": ok_acks,
        "stale_acks_rejected": stale_rejected,
        "stale_acks_accepted": stale,
        "late_acks_accepted": late,
    }


def _check_delivery_limit(idx: _Index, specs: dict[str, QueueSpec]) -> dict[str, Any]:
    over: list[dict[str, Any]] = []
    dead: Counter[str] = Counter()
    for dv in idx.deliveries:
        spec = specs.get(dv.queue)
        if spec is not None and spec.max_deliveries and dv.d.delivery_count > spec.max_deliveries:
            over.append({"value": dv.d.value, "max_deliveries": spec.max_deliveries,
                         **dv.brief()})
        if dv.d.death:
            dead[str(dv.d.death.get("reason"))] += 1
    return {"valid": not over, "dead_letters_by_reason": dict(dead), "over_limit": over}


def _check_failed_enqueues(idx: _Index) -> dict[str, Any]:
    failed = {inv.value for inv, done in idx.pairs
              if inv.f == "enqueue" and done is not None and done.type == "fail"}
    seen = {dv.d.value for dv in idx.deliveries} & failed
    return {"valid": not seen, "failed_count": len(failed),
            "delivered_anyway": _sorted_values(seen)}


def _check_crashes(idx: _Index) -> dict[str, Any]:
    by_msg: dict[tuple[str, int], list[_Delivery]] = defaultdict(list)
    dead_of: dict[tuple[str, int], list[_Delivery]] = defaultdict(list)
    by_receipt: dict[tuple[str, str], _Delivery] = {}
    for dv in idx.deliveries:
        by_msg[(dv.queue, dv.d.message_id)].append(dv)
        by_receipt[(dv.queue, dv.d.receipt)] = dv
        if dv.d.death and isinstance(dv.d.death.get("message_id"), int):
            dead_of[(str(dv.d.death.get("queue")), dv.d.death["message_id"])].append(dv)
    plus_one = 0
    more = 0
    dead_lettered = 0
    missing: list[dict[str, Any]] = []
    for queue, receipt, crash in idx.crashed:
        crashed_dv = by_receipt.get((queue, receipt))
        if crashed_dv is None:
            continue
        dv = crashed_dv
        nxt = [x for x in by_msg[(queue, dv.d.message_id)]
               if x.d.delivery_count > dv.d.delivery_count]
        if nxt:
            step = min(x.d.delivery_count for x in nxt) - dv.d.delivery_count
            if step == 1:
                plus_one += 1
            else:
                more += 1
        elif dead_of.get((queue, dv.d.message_id)):
            dead_lettered += 1
        else:
            missing.append({"value": dv.d.value, "crash_index": crash.index, **dv.brief()})
    return {
        "valid": not missing,
        "abandoned": len(idx.crashed),
        "redelivered_plus_one": plus_one,
        "redelivered_after_unknown_receives": more,
        "dead_lettered": dead_lettered,
        "not_redelivered": missing,
    }


def _acked_message(inv: Op, done: Op) -> Any:
    """Which message an ok ack removed: its message id, else its receipt's "<id>:<attempt>"."""
    for op in (inv, done):
        if op.message_id is not None:
            return op.message_id
    receipt = inv.receipt or ""
    head = receipt.split(":", 1)[0]
    return int(head) if head.isdigit() else receipt


def _read_brief(inv: Op, done: Op) -> dict[str, Any]:
    return {
        "process": inv.process,
        "invoke_index": inv.index,
        "ok_index": done.index,
        "invoke_wall_ms": round(inv.wall_ms, 3),
        "ok_wall_ms": round(done.wall_ms, 3),
        "totals": dict(done.totals or {}),
    }


def _check_reads(pairs: list[tuple[Op, Op | None]]) -> dict[str, Any]:
    """The `reads` rule (see the module docstring): one pass over the history in order."""
    # Events in history order: (index, kind, invocation, completion). At a read's invocation
    # the bounds it must meet are taken; at its ok completion they are compared, and the read
    # becomes a bound for the reads that begin later.
    events: list[tuple[int, str, Op, Op]] = []
    outcomes: Counter[str] = Counter()
    for inv, done in pairs:
        if done is None or inv.f not in ("enqueue", "ack", "stats"):
            continue
        if inv.f == "stats":
            outcomes[done.type] += 1
            if done.type == "ok" and done.totals is not None:
                events.append((inv.index, "read-invoke", inv, done))
                events.append((done.index, "read-ok", inv, done))
        elif done.type == "ok":
            events.append((done.index, inv.f, inv, done))
    events.sort(key=lambda e: e[0])
    enqueued: dict[str, dict[Any, Op]] = defaultdict(dict)  # queue -> value -> its ok
    acked: dict[str, dict[Any, Op]] = defaultdict(dict)  # queue -> message -> its ok
    order: dict[str, list[tuple[Any, Op]]] = defaultdict(list)  # queue -> acknowledged values
    # queue -> total name -> (largest value an ok read showed, that read's ops)
    seen: dict[str, dict[str, tuple[int, Op, Op]]] = defaultdict(dict)
    bounds: dict[int, tuple[int, int, dict[str, tuple[int, Op, Op]]]] = {}
    stale: list[dict[str, Any]] = []
    non_monotonic: list[dict[str, Any]] = []
    checked = 0
    ahead = 0
    for _index, kind, inv, done in events:
        q = inv.queue or ""
        if kind == "enqueue":
            key = inv.value if inv.value is not None else inv.dedup_id
            if key not in enqueued[q]:
                enqueued[q][key] = done
                order[q].append((key, done))
        elif kind == "ack":
            acked[q].setdefault(_acked_message(inv, done), done)
        elif kind == "read-invoke":
            bounds[inv.index] = (len(enqueued[q]), len(acked[q]), dict(seen[q]))
        else:
            need_enq, need_ack, before = bounds.pop(inv.index)
            totals = done.totals or {}
            checked += 1
            got_enq = totals.get("enqueued")
            if got_enq is not None and got_enq > need_enq:
                ahead += 1
            for name, need in (("enqueued", need_enq), ("acked", need_ack)):
                got = totals.get(name)
                if got is None or got >= need:
                    continue
                item: dict[str, Any] = {
                    "why": f"stale read: {name} {got}, but {need} distinct "
                           + ("values had been enqueued" if name == "enqueued"
                              else "messages had been acked")
                           + " ok before the read began",
                    "queue": q, "total": name, "read_value": got, "required": need,
                    "missing": need - got, "read": _read_brief(inv, done),
                }
                if name == "enqueued":
                    # The enqueue whose ok made the count exceed what the read shows.
                    value, ok = order[q][got]
                    item["witness"] = {"value": value, "ok_index": ok.index,
                                       "ok_wall_ms": round(ok.wall_ms, 3)}
                stale.append(item)
            for name, (best, p_inv, p_done) in sorted(before.items()):
                got = totals.get(name)
                if got is not None and got < best:
                    non_monotonic.append({
                        "why": f"non-monotonic read: {name} {got}, but a read of the queue that "
                               f"completed before this one began showed {best}",
                        "queue": q, "total": name, "read_value": got, "earlier_value": best,
                        "read": _read_brief(inv, done), "earlier": _read_brief(p_inv, p_done),
                    })
        if kind == "read-ok":
            for name, v in (done.totals or {}).items():
                cur = seen[q].get(name)
                if cur is None or v > cur[0]:
                    seen[q][name] = (v, inv, done)
    return {
        "valid": not stale and not non_monotonic,
        "reads": dict(outcomes),
        "ok_reads": checked,
        "queues": sorted({inv.queue or "" for _i, k, inv, _d in events if k == "read-ok"}),
        # Reads whose `enqueued` was above the bound: they counted enqueues that overlapped
        # them (or had an unknown outcome). A figure, not an error.
        "ahead_of_bound": ahead,
        "stale_count": len(stale),
        "non_monotonic_count": len(non_monotonic),
        "stale": stale,
        "non_monotonic": non_monotonic,
    }


def check_consistency(statuses: Sequence[dict[str, Any]] | None) -> dict[str, Any]:
    """Final state of every node: same commit index, applied index and state digest.

    Args:
        statuses: each node's `node_status` (or `{"node_id", "error"}`); None when not taken.
    """
    if statuses is None:
        return {"valid": False, "why": "final node statuses were not taken"}
    errors = [s for s in statuses if "error" in s]
    keys = ("commit_index", "applied_index", "digest")
    seen = {k: sorted({str(s.get(k)) for s in statuses if "error" not in s}) for k in keys}
    same = all(len(v) == 1 for v in seen.values())
    return {
        "valid": not errors and same and bool(statuses),
        "nodes": [
            {"node_id": s.get("node_id"), **{k: s.get(k) for k in (*keys, "role", "term")},
             **({"error": s["error"]} if "error" in s else {})}
            for s in statuses
        ],
        "why": "" if (not errors and same) else (
            "some node did not answer" if errors else "nodes disagree: " + ", ".join(
                k for k, v in seen.items() if len(v) != 1)),
    }


def _check_faults(faults: Sequence[dict[str, Any]] | None, required: bool) -> dict[str, Any]:
    faults = list(faults or [])
    unverified = [f for f in faults if not f.get("verified", False)]
    injected = [f for f in faults if f.get("verified", False)]
    why = ""
    if required and not injected:
        why = "the nemesis injected nothing"
    elif unverified:
        why = f"{len(unverified)} fault(s) could not be verified"
    return {
        "valid": not why,
        "required": required,
        "count": len(faults),
        "by_kind": dict(Counter(str(f.get("kind")) for f in faults)),
        "unverified": unverified,
        "why": why,
    }


def check(
    ops: Sequence[Op],
    specs: Sequence[QueueSpec] = (),
    *,
    final_statuses: Sequence[dict[str, Any]] | None = None,
    faults: Sequence[dict[str, Any]] | None = None,
    require_faults: bool = False,
    check_final_consistency: bool = True,
) -> dict[str, Any]:
    """Check a history. Returns every section and the overall `valid`.

    Args:
        ops: the history, in order.
        specs: the queues of the workload (for FIFO order and delivery limits).
        final_statuses: each node's `node_status` at the end (for `consistency`).
        faults: the nemesis's fault records (dicts with `kind` and `verified`).
        require_faults: invalid when no fault was injected.
        check_final_consistency: include the `consistency` section in the verdict.
    """
    spec_map = {s.name: s for s in specs}
    idx = _index(ops)
    result: dict[str, Any] = {
        "total_queue": total_queue(ops),
        "duplicates": _check_duplicates(idx, spec_map),
        "dedup": _check_dedup(idx),
        "fifo": _check_fifo(idx, spec_map),
        "acks": _check_acks(idx),
        "delivery_limit": _check_delivery_limit(idx, spec_map),
        "failed_enqueues": _check_failed_enqueues(idx),
        "crashes": _check_crashes(idx),
        "reads": _check_reads(idx.pairs),
    }
    if check_final_consistency:
        result["consistency"] = check_consistency(final_statuses)
    if faults is not None or require_faults:
        result["faults"] = _check_faults(faults, require_faults)
    failed = [k for k, v in result.items() if not v["valid"]]
    result["valid"] = not failed
    result["failed_checks"] = failed
    return result
