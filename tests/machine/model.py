"""A small, obviously-correct reference model of the queue machine.

Everything is a list scan: the earliest due event is found by looking at every
message, the next message to deliver by looking at every ready one. It is slow and
simple on purpose; the stateful test compares the machine's every reply with it.
Field checks (BAD_REQUEST) are delegated to the machine's own `validate`, which the
scenario and wire tests cover; this model is about queue semantics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import node.machine as m
from node.machine import _limits as L
from node.machine._validate import validate

READY, INFLIGHT, DELAYED = "ready", "in_flight", "delayed"
_RECEIPT = re.compile(r"(0|[1-9][0-9]*):(0|[1-9][0-9]*)")


@dataclass
class MMsg:
    body: bytes
    headers: dict[str, str]
    arrived: int
    first: int
    expire: int  # min(retention, ttl) expiry
    group: str | None
    count: int = 0
    status: str = READY
    due: int | None = None


@dataclass
class MQueue:
    uid: int
    name: str
    opts: m.QueueOptions
    msgs: dict[int, MMsg] = field(default_factory=dict)
    dedup: dict[str, tuple[int, int]] = field(default_factory=dict)
    totals: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            [
                "enqueued",
                "delivered",
                "redelivered",
                "acked",
                "dead_lettered",
                "expired",
                "purged",
                "redriven",
            ],
            0,
        )
    )

    def gkey(self, msg: MMsg) -> str:
        return "" if msg.group is None else msg.group

    def head_of(self, group: str) -> int | None:
        ids = [i for i, x in self.msgs.items() if self.gkey(x) == group]
        return min(ids) if ids else None

    def deliverable(self) -> list[int]:
        if not self.opts.fifo:
            return [i for i, x in self.msgs.items() if x.status == READY]
        heads = {self.head_of(self.gkey(x)) for x in self.msgs.values()}
        return [i for i in heads if i is not None and self.msgs[i].status == READY]


def _err(code: str) -> m.ErrorReply:
    return m.ErrorReply(code, "")


class Model:
    def __init__(self) -> None:
        self.clock = 0
        self.next_id = 1
        self.next_uid = 1
        self.queues: dict[str, MQueue] = {}
        self.topics: dict[str, list[str]] = {}
        self.now = 0

    # --- time -----------------------------------------------------------------------

    def _by_uid(self, uid: int) -> MQueue:
        return next(q for q in self.queues.values() if q.uid == uid)

    def fire(self) -> None:
        """Process due events one at a time, always the earliest (due, kind, queue, id)."""
        now = self.now
        while True:
            events = []
            for q in self.queues.values():
                for i, x in q.msgs.items():
                    if x.status == INFLIGHT and x.due is not None and x.due <= now:
                        events.append((x.due, 0, q.uid, i))
                    if x.status == DELAYED and x.due is not None and x.due <= now:
                        events.append((x.due, 1, q.uid, i))
                    if x.expire <= now:
                        events.append((x.expire, 2, q.uid, i))
            if not events:
                return
            _, kind, uid, i = min(events)
            q = self._by_uid(uid)
            if kind == 2:
                self.dead_letter(q, i, L.REASON_EXPIRED, forward=True)
            else:
                x = q.msgs[i]
                x.status, x.due = READY, None

    # --- primitives --------------------------------------------------------------------

    def admit(
        self,
        q: MQueue,
        body: bytes,
        headers: dict[str, str],
        first: int | None,
        delay: int,
        ttl: int | None,
        group: str | None,
    ) -> int:
        i = self.next_id
        self.next_id += 1
        expire = self.now + q.opts.retention_ms
        if ttl is not None:
            expire = min(expire, self.now + ttl)
        x = MMsg(body, dict(headers), self.now, self.now if first is None else first, expire, group)
        if delay > 0:
            x.status, x.due = DELAYED, self.now + delay
        q.msgs[i] = x
        q.totals["enqueued"] += 1
        return i

    def dead_letter(self, q: MQueue, i: int, reason: str, forward: bool) -> None:
        x = q.msgs.pop(i)
        q.totals["expired" if reason == L.REASON_EXPIRED else "dead_lettered"] += 1
        if not forward or q.opts.dead_letter_queue is None:
            return
        d = self.queues.get(q.opts.dead_letter_queue)
        if d is None or d is q:
            return
        headers = dict(x.headers)
        headers.update(
            {
                L.H_REASON: reason,
                L.H_QUEUE: q.name,
                L.H_COUNT: str(x.count),
                L.H_TIME: str(self.now),
                L.H_MESSAGE_ID: str(i),
            }
        )
        if not self.make_room(d, forward=False, size=len(x.body)):
            return
        self.admit(d, x.body, headers, x.first, 0, None, x.group)

    @staticmethod
    def held_bytes(q: MQueue) -> int:
        return sum(len(x.body) for x in q.msgs.values())

    def fits(self, q: MQueue, size: int) -> bool:
        o = q.opts
        if o.max_length is not None and len(q.msgs) >= o.max_length:
            return False
        return o.max_length_bytes is None or self.held_bytes(q) + size <= o.max_length_bytes

    def make_room(self, q: MQueue, forward: bool, size: int = 0) -> bool:
        """Room for a message of `size` body bytes; drop_head drops the oldest until it fits."""
        if q.opts.max_length_bytes is not None and size > q.opts.max_length_bytes:
            return False
        while not self.fits(q, size):
            if q.opts.overflow == L.OVERFLOW_REJECT_PUBLISH:
                return False
            self.dead_letter(q, min(q.msgs), L.REASON_MAX_LENGTH, forward)
        return True

    def held(self, q: MQueue, receipt: str) -> int | None:
        if len(receipt) > 45 or not _RECEIPT.fullmatch(receipt):
            return None
        i, attempt = (int(p) for p in receipt.split(":"))
        x = q.msgs.get(i)
        if x is None or x.status != INFLIGHT or x.count != attempt:
            return None
        return i

    @staticmethod
    def size(spec: Any) -> int:
        return len(spec.body) + sum(
            len(k.encode()) + len(v.encode()) for k, v in spec.headers.items()
        )

    def store(self, q: MQueue, spec: Any) -> tuple[int, bool] | m.ErrorReply:
        did = spec.dedup_id
        window = q.opts.dedup_window_ms
        if did is not None and window:
            q.dedup = {k: v for k, v in q.dedup.items() if v[1] > self.now}
            if did in q.dedup:
                return q.dedup[did][0], True
        if not self.make_room(q, forward=True, size=len(spec.body)):
            return _err(m.QUEUE_FULL)
        delay = q.opts.delay_ms if spec.delay_ms is None else spec.delay_ms
        i = self.admit(q, spec.body, spec.headers, None, delay, spec.ttl_ms, spec.group)
        if did is not None and window:
            q.dedup[did] = (i, self.now + window)
        return i, False

    # --- commands --------------------------------------------------------------------

    def apply(self, cmd: Any, now_ms: int) -> Any:
        problem = validate(cmd)
        if problem is not None:
            return _err(problem.code)
        self.now = max(self.clock, now_ms)
        if isinstance(cmd, m.Tick):
            self.now = max(self.now, cmd.now_ms)
        self.clock = self.now
        self.fire()
        reply = getattr(self, "do_" + type(cmd).__name__)(cmd)
        self.fire()
        return reply

    def _queue(self, name: str) -> MQueue | m.ErrorReply:
        q = self.queues.get(name)
        return _err(m.QUEUE_NOT_FOUND) if q is None else q

    def _new(self, name: str, opts: m.QueueOptions) -> None:
        self.queues[name] = MQueue(self.next_uid, name, opts)
        self.next_uid += 1

    def do_CreateQueue(self, c: m.CreateQueue) -> Any:
        if c.name in self.queues:
            if self.queues[c.name].opts == c.options:
                return {"queue": c.name, "created": False}
            return _err(m.QUEUE_EXISTS)
        self._new(c.name, c.options)
        dlq = c.options.dead_letter_queue
        if dlq is not None and dlq not in self.queues:
            self._new(
                dlq,
                m.QueueOptions(
                    dead_letter_queue=None,
                    retention_ms=14 * L.DAY_MS,
                    fifo=c.options.fifo,
                    max_message_bytes=max(c.options.max_message_bytes, L.MIB),
                ),
            )
        return {"queue": c.name, "created": True}

    def do_DeleteQueue(self, c: m.DeleteQueue) -> Any:
        q = self._queue(c.name)
        if isinstance(q, m.ErrorReply):
            return q
        del self.queues[c.name]
        for subs in self.topics.values():
            if c.name in subs:
                subs.remove(c.name)
        return {"queue": c.name, "deleted": len(q.msgs)}

    def do_PurgeQueue(self, c: m.PurgeQueue) -> Any:
        q = self._queue(c.name)
        if isinstance(q, m.ErrorReply):
            return q
        n = len(q.msgs)
        q.msgs.clear()
        q.totals["purged"] += n
        return {"queue": c.name, "purged": n}

    def do_ListQueues(self, c: m.ListQueues) -> Any:
        return {"queues": sorted(self.queues)}

    def do_QueueStats(self, c: m.QueueStats) -> Any:
        q = self._queue(c.name)
        if isinstance(q, m.ErrorReply):
            return q
        statuses = [x.status for x in q.msgs.values()]
        oldest = min((x.arrived for x in q.msgs.values()), default=None)
        return {
            "queue": q.name,
            "ready": statuses.count(READY),
            "in_flight": statuses.count(INFLIGHT),
            "delayed": statuses.count(DELAYED),
            "messages": len(q.msgs),
            "bytes": self.held_bytes(q),
            "oldest_age_ms": None if oldest is None else self.now - oldest,
            **q.totals,
        }

    def do_Enqueue(self, c: m.Enqueue) -> Any:
        q = self._queue(c.queue)
        if isinstance(q, m.ErrorReply):
            return q
        if self.size(c) > q.opts.max_message_bytes:
            return _err(m.MESSAGE_TOO_LARGE)
        r = self.store(q, c)
        if isinstance(r, m.ErrorReply):
            return r
        return {"message_id": r[0], "duplicate": r[1]}

    def do_EnqueueBatch(self, c: m.EnqueueBatch) -> Any:
        q = self._queue(c.queue)
        if isinstance(q, m.ErrorReply):
            return q
        if any(self.size(e) > q.opts.max_message_bytes for e in c.entries):
            return _err(m.MESSAGE_TOO_LARGE)
        limit_bytes = q.opts.max_length_bytes
        if limit_bytes is not None and any(len(e.body) > limit_bytes for e in c.entries):
            return _err(m.QUEUE_FULL)
        if q.opts.overflow == L.OVERFLOW_REJECT_PUBLISH:
            live = {k for k, v in q.dedup.items() if v[1] > self.now}
            fresh = []
            for e in c.entries:
                if e.dedup_id is not None and q.opts.dedup_window_ms:
                    if e.dedup_id in live:
                        continue
                    live.add(e.dedup_id)
                fresh.append(len(e.body))
            if q.opts.max_length is not None and len(q.msgs) + len(fresh) > q.opts.max_length:
                return _err(m.QUEUE_FULL)
            if limit_bytes is not None and self.held_bytes(q) + sum(fresh) > limit_bytes:
                return _err(m.QUEUE_FULL)
        out = []
        for e in c.entries:
            r = self.store(q, e)
            assert not isinstance(r, m.ErrorReply)
            out.append({"message_id": r[0], "duplicate": r[1]})
        return {"results": out}

    def do_Receive(self, c: m.Receive) -> Any:
        q = self._queue(c.queue)
        if isinstance(q, m.ErrorReply):
            return q
        vt = (
            q.opts.visibility_timeout_ms
            if c.visibility_timeout_ms is None
            else c.visibility_timeout_ms
        )
        out: list[dict[str, Any]] = []
        while len(out) < c.max_messages:
            cands = q.deliverable()
            if not cands:
                break
            i = min(cands)
            x = q.msgs[i]
            if q.opts.max_deliveries and x.count >= q.opts.max_deliveries:
                self.dead_letter(q, i, L.REASON_DELIVERY_LIMIT, forward=True)
                continue
            x.count += 1
            x.status, x.due = INFLIGHT, self.now + vt
            q.totals["delivered"] += 1
            if x.count > 1:
                q.totals["redelivered"] += 1
            out.append(
                {
                    "message_id": i,
                    "body": x.body,
                    "headers": dict(x.headers),
                    "delivery_count": x.count,
                    "first_enqueued_ms": x.first,
                    "enqueued_ms": x.arrived,
                    "group": x.group,
                    "receipt": f"{i}:{x.count}",
                }
            )
        return {"messages": out}

    def do_Ack(self, c: m.Ack) -> Any:
        q = self._queue(c.queue)
        if isinstance(q, m.ErrorReply):
            return q
        acked, invalid = 0, []
        for r in c.receipts:
            i = self.held(q, r)
            if i is None:
                invalid.append(r)
                continue
            del q.msgs[i]
            q.totals["acked"] += 1
            acked += 1
        if not acked:
            return _err(m.INVALID_RECEIPT)
        return {"acked": acked, "invalid": invalid}

    def do_Nack(self, c: m.Nack) -> Any:
        q = self._queue(c.queue)
        if isinstance(q, m.ErrorReply):
            return q
        i = self.held(q, c.receipt)
        if i is None:
            return _err(m.INVALID_RECEIPT)
        if c.reject:
            self.dead_letter(q, i, L.REASON_REJECTED, forward=True)
            return {"message_id": i, "state": "dead_lettered"}
        x = q.msgs[i]
        if c.delay_ms > 0:
            x.status, x.due = DELAYED, self.now + c.delay_ms
            return {"message_id": i, "state": "delayed"}
        x.status, x.due = READY, None
        return {"message_id": i, "state": "ready"}

    def do_ChangeVisibility(self, c: m.ChangeVisibility) -> Any:
        q = self._queue(c.queue)
        if isinstance(q, m.ErrorReply):
            return q
        i = self.held(q, c.receipt)
        if i is None:
            return _err(m.INVALID_RECEIPT)
        q.msgs[i].due = self.now + c.timeout_ms
        return {"message_id": i, "visible_at_ms": self.now + c.timeout_ms}

    def do_Redrive(self, c: m.Redrive) -> Any:
        d = self._queue(c.dlq)
        if isinstance(d, m.ErrorReply):
            return d
        fixed = None
        if c.target is not None:
            fixed = self._queue(c.target)
            if isinstance(fixed, m.ErrorReply):
                return fixed
            if fixed is d:
                return _err(m.BAD_REQUEST)
        plan: list[tuple[int, MQueue]] = []
        planned: dict[str, int] = {}
        planned_bytes: dict[str, int] = {}
        for i, x in d.msgs.items():
            if len(plan) >= c.max_messages:
                break
            if x.status != READY:
                continue
            t = fixed
            if t is None:
                src = x.headers.get(L.H_QUEUE)
                t = self.queues.get(src) if src is not None else None
                if t is None or t is d:
                    continue
            size = len(x.body)
            limit_bytes = t.opts.max_length_bytes
            if limit_bytes is not None and size > limit_bytes:
                continue
            if t.opts.overflow == L.OVERFLOW_REJECT_PUBLISH:
                if t.opts.max_length is not None and (
                    len(t.msgs) + planned.get(t.name, 0) >= t.opts.max_length
                ):
                    continue
                more = planned_bytes.get(t.name, 0) + size
                if limit_bytes is not None and self.held_bytes(t) + more > limit_bytes:
                    continue
            planned[t.name] = planned.get(t.name, 0) + 1
            planned_bytes[t.name] = planned_bytes.get(t.name, 0) + size
            plan.append((i, t))
        for i, t in plan:
            x = d.msgs.pop(i)
            d.totals["redriven"] += 1
            self.make_room(t, forward=False, size=len(x.body))
            self.admit(t, x.body, x.headers, x.first, 0, None, x.group)
        return {"moved": len(plan), "remaining": len(d.msgs)}

    def do_CreateTopic(self, c: m.CreateTopic) -> Any:
        created = c.name not in self.topics
        self.topics.setdefault(c.name, [])
        return {"topic": c.name, "created": created}

    def do_DeleteTopic(self, c: m.DeleteTopic) -> Any:
        if self.topics.pop(c.name, None) is None:
            return _err(m.TOPIC_NOT_FOUND)
        return {"topic": c.name, "deleted": True}

    def do_Subscribe(self, c: m.Subscribe) -> Any:
        if c.topic not in self.topics:
            return _err(m.TOPIC_NOT_FOUND)
        if c.queue not in self.queues:
            return _err(m.QUEUE_NOT_FOUND)
        new = c.queue not in self.topics[c.topic]
        if new:
            self.topics[c.topic].append(c.queue)
        return {"topic": c.topic, "queue": c.queue, "subscribed": new}

    def do_Unsubscribe(self, c: m.Unsubscribe) -> Any:
        if c.topic not in self.topics:
            return _err(m.TOPIC_NOT_FOUND)
        found = c.queue in self.topics[c.topic]
        if found:
            self.topics[c.topic].remove(c.queue)
        return {"topic": c.topic, "queue": c.queue, "unsubscribed": found}

    def do_Publish(self, c: m.Publish) -> Any:
        if c.topic not in self.topics:
            return _err(m.TOPIC_NOT_FOUND)
        results = []
        for name in self.topics[c.topic]:
            q = self.queues[name]
            r: Any
            if self.size(c) > q.opts.max_message_bytes:
                r = _err(m.MESSAGE_TOO_LARGE)
            else:
                r = self.store(q, c)
            if isinstance(r, m.ErrorReply):
                results.append(
                    {"queue": name, "message_id": None, "duplicate": False, "error": r.code}
                )
            else:
                results.append(
                    {"queue": name, "message_id": r[0], "duplicate": r[1], "error": None}
                )
        return {"topic": c.topic, "results": results}

    def do_ListTopics(self, c: m.ListTopics) -> Any:
        return {
            "topics": [{"name": t, "queues": list(self.topics[t])} for t in sorted(self.topics)]
        }

    def do_Tick(self, c: m.Tick) -> Any:
        return {"now_ms": self.now}
