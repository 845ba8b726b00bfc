"""A fake raftq cluster for client tests: trio TCP servers speaking docs/protocol.md.

`FakeCluster` runs N `FakeNode`s on 127.0.0.1 (ephemeral ports) over one shared in-memory queue
state (`FakeState`, a small model of docs/semantics.md, enough for the client). One node is the
leader; the others answer `NOT_LEADER` with the leader's address. Faults are scripted per op:
`cluster.faults["enqueue"] = ["drop_after"]` makes the leader apply the next enqueue and then
close the connection without answering. Everything received is recorded for assertions.

Fault actions (consumed in order by the leader, one per request of that op):
    drop_before: close the connection without executing.
    drop_after: execute, then close the connection without answering.
    outcome_unknown: answer OUTCOME_UNKNOWN without executing.
    outcome_unknown_applied: execute, then answer OUTCOME_UNKNOWN.
    timeout: answer TIMEOUT without executing.
    unavailable: answer UNAVAILABLE.
    busy: answer BUSY.
    not_leader_null: answer NOT_LEADER with leader null.
    hang: never answer.
    delay:<seconds>: wait, then execute and answer.
"""

from __future__ import annotations

import functools
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import trio

from node.codec import FrameDecoder, WireError, encode_frame


class _Drop(Exception):
    pass


@dataclass
class FakeMessage:
    message_id: int
    body: bytes
    headers: dict[str, str]
    group: str | None
    first_enqueued_ms: int
    delivery_count: int = 0
    attempt: int = 0
    lease_end: float | None = None  # trio time in s while in flight


@dataclass
class FakeQueue:
    name: str
    options: dict[str, Any]
    messages: dict[int, FakeMessage] = field(default_factory=dict)
    dedup: dict[str, int] = field(default_factory=dict)
    acked: int = 0
    enqueued: int = 0


class FakeError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class FakeState:
    """A small queue model: enough semantics for client tests (not the real machine)."""

    def __init__(self) -> None:
        self.queues: dict[str, FakeQueue] = {}
        self.topics: dict[str, list[str]] = {}
        self.ids = itertools.count(1)
        self.changed = trio.Event()

    def _queue(self, name: Any) -> FakeQueue:
        if name not in self.queues:
            raise FakeError("QUEUE_NOT_FOUND", f"queue {name!r} does not exist")
        return self.queues[name]

    def _now_ms(self) -> int:
        return int(trio.current_time() * 1000)

    def _expire_leases(self, q: FakeQueue) -> None:
        now = trio.current_time()
        for m in q.messages.values():
            if m.lease_end is not None and m.lease_end <= now:
                m.lease_end = None

    def _poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _enqueue(self, q: FakeQueue, a: dict[str, Any]) -> dict[str, Any]:
        body = a.get("body")
        if type(body) is not bytes:
            raise FakeError("BAD_REQUEST", "body must be bytes")
        dedup_id = a.get("dedup_id")
        if dedup_id is not None and dedup_id in q.dedup:
            return {"message_id": q.dedup[dedup_id], "duplicate": True}
        max_bytes = q.options.get("max_message_bytes", 1 << 20)
        if len(body) > max_bytes:
            raise FakeError("MESSAGE_TOO_LARGE", f"message of {len(body)} bytes")
        max_length = q.options.get("max_length")
        if max_length is not None and len(q.messages) >= max_length:
            raise FakeError("QUEUE_FULL", f"queue {q.name!r} is full")
        mid = next(self.ids)
        q.messages[mid] = FakeMessage(
            mid, body, dict(a.get("headers") or {}), a.get("group"), self._now_ms()
        )
        q.enqueued += 1
        if dedup_id is not None:
            q.dedup[dedup_id] = mid
        self._poke()
        return {"message_id": mid, "duplicate": False}

    def _lease(self, q: FakeQueue, receipt: Any) -> FakeMessage:
        mid, _, attempt = str(receipt).partition(":")
        m = q.messages.get(int(mid)) if mid.isdigit() else None
        self._expire_leases(q)
        if m is None or m.lease_end is None or str(m.attempt) != attempt:
            raise FakeError("INVALID_RECEIPT", f"receipt {receipt!r} is not valid")
        return m

    def apply(self, op: str, a: dict[str, Any]) -> Any:
        if op == "create_queue":
            name, options = a["name"], dict(a.get("options") or {})
            if name in self.queues:
                if self.queues[name].options != options:
                    raise FakeError("QUEUE_EXISTS", f"queue {name!r} exists with other options")
                return {"queue": name, "created": False}
            self.queues[name] = FakeQueue(name, options)
            return {"queue": name, "created": True}
        if op == "delete_queue":
            q = self._queue(a["name"])
            del self.queues[q.name]
            return {"queue": q.name, "deleted": len(q.messages)}
        if op == "purge_queue":
            q = self._queue(a["name"])
            n = len(q.messages)
            q.messages.clear()
            return {"queue": q.name, "purged": n}
        if op == "list_queues":
            return {"queues": sorted(self.queues)}
        if op == "queue_stats":
            q = self._queue(a["name"])
            self._expire_leases(q)
            in_flight = sum(1 for m in q.messages.values() if m.lease_end is not None)
            return {
                "queue": q.name, "ready": len(q.messages) - in_flight, "in_flight": in_flight,
                "delayed": 0, "messages": len(q.messages), "oldest_age_ms": None,
                "enqueued": q.enqueued, "acked": q.acked,
            }
        if op == "enqueue":
            return self._enqueue(self._queue(a["queue"]), a)
        if op == "enqueue_batch":
            q = self._queue(a["queue"])
            if len(a["messages"]) > 100:
                raise FakeError("BATCH_TOO_LARGE", "at most 100 messages")
            max_bytes = q.options.get("max_message_bytes", 1 << 20)
            for m in a["messages"]:  # all or nothing, as the node
                if type(m.get("body")) is bytes and len(m["body"]) > max_bytes:
                    raise FakeError("MESSAGE_TOO_LARGE", f"message of {len(m['body'])} bytes")
            return {"results": [self._enqueue(q, m) for m in a["messages"]]}
        if op == "receive":
            q = self._queue(a["queue"])
            self._expire_leases(q)
            vis_ms = a.get("visibility_timeout_ms")
            if vis_ms is None:
                vis_ms = q.options.get("visibility_timeout_ms", 30_000)
            out: list[dict[str, Any]] = []
            for m in sorted(q.messages.values(), key=lambda m: m.message_id):
                if len(out) >= a.get("max_messages", 1):
                    break
                if m.lease_end is not None:
                    continue
                m.delivery_count += 1
                m.attempt += 1
                m.lease_end = trio.current_time() + vis_ms / 1000
                out.append({
                    "message_id": m.message_id, "body": m.body, "headers": m.headers,
                    "delivery_count": m.delivery_count, "first_enqueued_ms": m.first_enqueued_ms,
                    "enqueued_ms": m.first_enqueued_ms, "group": m.group,
                    "receipt": f"{m.message_id}:{m.attempt}",
                })
            return {"messages": out}
        if op == "ack":
            q = self._queue(a["queue"])
            acked, invalid = 0, []
            for r in a["receipts"]:
                try:
                    m = self._lease(q, r)
                except FakeError:
                    invalid.append(r)
                    continue
                del q.messages[m.message_id]
                q.acked += 1
                acked += 1
            if not acked:
                raise FakeError("INVALID_RECEIPT", "no valid receipt")
            return {"acked": acked, "invalid": invalid}
        if op == "nack":
            q = self._queue(a["queue"])
            m = self._lease(q, a["receipt"])
            m.lease_end = None
            if a.get("reject"):
                del q.messages[m.message_id]
                return {"message_id": m.message_id, "state": "dead_lettered"}
            self._poke()
            return {"message_id": m.message_id, "state": "ready"}
        if op == "change_visibility":
            q = self._queue(a["queue"])
            m = self._lease(q, a["receipt"])
            m.lease_end = trio.current_time() + a["timeout_ms"] / 1000
            return {"message_id": m.message_id, "visible_at_ms": int(m.lease_end * 1000)}
        if op == "redrive":
            src = self._queue(a["dlq"])
            target = self._queue(a["target"]) if a.get("target") else None
            moved = 0
            for mid in sorted(src.messages):
                m = src.messages[mid]
                dest = target or self.queues.get(m.headers.get("x-death-queue", ""))
                if dest is None or m.lease_end is not None:
                    continue
                del src.messages[mid]
                self._enqueue(dest, {"body": m.body, "headers": m.headers})
                moved += 1
            return {"moved": moved, "remaining": len(src.messages)}
        if op == "create_topic":
            created = a["name"] not in self.topics
            self.topics.setdefault(a["name"], [])
            return {"topic": a["name"], "created": created}
        if op == "delete_topic":
            if a["name"] not in self.topics:
                raise FakeError("TOPIC_NOT_FOUND", f"topic {a['name']!r} does not exist")
            del self.topics[a["name"]]
            return {"topic": a["name"], "deleted": True}
        if op == "list_topics":
            return {"topics": [{"name": t, "queues": qs} for t, qs in sorted(self.topics.items())]}
        if op in ("subscribe", "unsubscribe"):
            if a["topic"] not in self.topics:
                raise FakeError("TOPIC_NOT_FOUND", f"topic {a['topic']!r} does not exist")
            subs = self.topics[a["topic"]]
            if op == "subscribe":
                self._queue(a["queue"])
                new = a["queue"] not in subs
                if new:
                    subs.append(a["queue"])
                return {"topic": a["topic"], "queue": a["queue"], "subscribed": new}
            old = a["queue"] in subs
            if old:
                subs.remove(a["queue"])
            return {"topic": a["topic"], "queue": a["queue"], "unsubscribed": old}
        if op == "publish":
            if a["topic"] not in self.topics:
                raise FakeError("TOPIC_NOT_FOUND", f"topic {a['topic']!r} does not exist")
            results: list[dict[str, Any]] = []
            for qn in self.topics[a["topic"]]:
                try:
                    r = self._enqueue(self.queues[qn], a)
                    results.append({"queue": qn, **r, "error": None})
                except FakeError as exc:
                    results.append(
                        {"queue": qn, "message_id": None, "duplicate": False, "error": exc.code}
                    )
            return {"topic": a["topic"], "results": results}
        raise FakeError("UNKNOWN_OPERATION", f"unknown operation {op!r}")


class FakeNode:
    """One fake node: a TCP listener on 127.0.0.1 serving the client protocol."""

    def __init__(self, cluster: FakeCluster, node_id: int) -> None:
        self.cluster = cluster
        self.id = node_id
        self.port = 0
        self.running = False
        self.connections_accepted = 0
        self._scope: trio.CancelScope | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self._scope:
            try:
                async with trio.open_nursery() as nursery:
                    listeners = await nursery.start(
                        functools.partial(
                            trio.serve_tcp, self._handle, self.port, host="127.0.0.1",
                            handler_nursery=nursery,
                        )
                    )
                    self.port = listeners[0].socket.getsockname()[1]
                    self.running = True
                    task_status.started()
            finally:
                self.running = False

    def stop(self) -> None:
        """Close the listener and every connection (like a crashed process)."""
        if self._scope is not None:
            self._scope.cancel()
        self.running = False

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections_accepted += 1
        decoder = FrameDecoder(self.cluster.max_frame_bytes)
        lock = trio.Lock()
        try:
            async with trio.open_nursery() as conn_nursery:
                while True:
                    data = await stream.receive_some(1 << 16)
                    if not data:
                        break
                    decoder.feed(data)
                    try:
                        while (frame := decoder.next_frame()) is not None:
                            conn_nursery.start_soon(
                                self._serve, stream, lock, frame, conn_nursery.cancel_scope
                            )
                    except WireError as exc:
                        await stream.send_all(encode_frame({
                            "id": None, "ok": False,
                            "error": {"code": exc.code, "message": exc.message,
                                      "retryable": False, "leader": None},
                        }))
                        break
                conn_nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(
        self, stream: trio.SocketStream, lock: trio.Lock, frame: Any, conn_scope: trio.CancelScope
    ) -> None:
        req_id = frame.get("id") if isinstance(frame, dict) else None
        try:
            reply = await self._reply(frame)
        except _Drop:
            conn_scope.cancel()
            await trio.aclose_forcefully(stream)
            return
        if reply is None:
            return
        reply["id"] = req_id
        try:
            async with lock:
                await stream.send_all(encode_frame(reply))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _error(self, code: str, message: str, leader: str | None = None) -> dict[str, Any]:
        return {"ok": False, "error": {"code": code, "message": message,
                                       "retryable": False, "leader": leader}}

    def status(self) -> dict[str, Any]:
        c = self.cluster
        leader = c.nodes.get(c.leader_id) if c.leader_id is not None else None
        return {
            "node_id": self.id,
            "role": "leader" if self.id == c.leader_id else "follower",
            "term": c.term, "leader_id": c.leader_id,
            "leader_client_addr": leader.addr if leader else None,
            "commit_index": c.index, "applied_index": c.index, "last_index": c.index,
            "first_index": 1, "snapshot_index": 0, "peers": {}, "digest": "x", "transport": {},
        }

    async def _reply(self, frame: Any) -> dict[str, Any] | None:
        c = self.cluster
        if not isinstance(frame, dict) or type(frame.get("id")) is not int:
            return self._error("BAD_REQUEST", "not a request")
        op, args = str(frame.get("op")), frame.get("args") or {}
        c.requests.append((self.id, op, args))
        if op in ("enqueue", "publish"):
            c.dedup_ids_seen.append(args.get("dedup_id"))
        elif op == "enqueue_batch":
            c.dedup_ids_seen.extend(m.get("dedup_id") for m in args.get("messages", []))
        if op == "ping":
            return {"ok": True, "result": {"node_id": self.id}}
        if op == "node_status":
            return {"ok": True, "result": self.status()}
        if op == "cluster_status":
            nodes = [
                n.status() if n.running else {"node_id": n.id, "error": "unreachable"}
                for n in c.nodes.values()
            ]
            return {"ok": True, "result": {"leader_id": c.leader_id, "term": c.term,
                                           "nodes": nodes}}
        if self.id != c.leader_id:
            leader = c.nodes.get(c.leader_id) if c.leader_id is not None else None
            return self._error("NOT_LEADER", "not the leader", leader.addr if leader else None)
        action = c.faults[op].pop(0) if c.faults.get(op) else None
        if action == "drop_before":
            raise _Drop
        if action in ("unavailable", "busy", "timeout", "outcome_unknown"):
            return self._error(action.upper(), f"fake {action}")
        if action == "not_leader_null":
            return self._error("NOT_LEADER", "no leader", None)
        if action == "hang":
            await trio.sleep_forever()
        if action is not None and action.startswith("delay:"):
            await trio.sleep(float(action.split(":", 1)[1]))
        try:
            if op == "transfer_leadership":
                old = c.leader_id
                to = args.get("to") or next(i for i in c.nodes if i != old)
                c.leader_id = to
                c.term += 1
                result = {"from": old, "to": to}
            else:
                result = c.state.apply(op, args)
            if op == "receive" and not result["messages"] and args.get("wait_ms"):
                with trio.move_on_after(args["wait_ms"] / 1000):
                    while not result["messages"]:
                        await c.state.changed.wait()
                        result = c.state.apply(op, args)
        except FakeError as exc:
            return self._error(exc.code, exc.message)
        except (KeyError, TypeError) as exc:
            return self._error("BAD_REQUEST", f"{op}: {exc!r}")
        c.index += 1
        c.applied.append((op, args))
        if action == "drop_after":
            raise _Drop
        if action == "outcome_unknown_applied":
            return self._error("OUTCOME_UNKNOWN", "fake: lost office after proposing")
        return {"ok": True, "result": result}


class FakeCluster:
    """N fake nodes sharing one queue state; node `leader_id` leads (None: no leader)."""

    def __init__(self, n: int = 3, leader_id: int | None = 1) -> None:
        self.nodes = {i: FakeNode(self, i) for i in range(1, n + 1)}
        self.leader_id = leader_id
        self.term = 1
        self.index = 0
        self.state = FakeState()
        self.max_frame_bytes = 8 << 20
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.requests: list[tuple[int, Any, Any]] = []
        self.applied: list[tuple[Any, Any]] = []
        self.dedup_ids_seen: list[Any] = []
        self._nursery: trio.Nursery | None = None

    async def start(self, nursery: trio.Nursery) -> FakeCluster:
        self._nursery = nursery
        for node in self.nodes.values():
            await nursery.start(node.run)
        return self

    async def restart(self, node_id: int) -> None:
        assert self._nursery is not None
        await self._nursery.start(self.nodes[node_id].run)

    @property
    def addrs(self) -> list[str]:
        return [n.addr for n in self.nodes.values()]

    def addr(self, node_id: int) -> str:
        return self.nodes[node_id].addr

    def ops(self, op: str) -> list[tuple[int, Any]]:
        """(node id, args) of every request of `op` received, in order."""
        return [(nid, a) for nid, o, a in self.requests if o == op]

    def ops_at(self, op: str, node_id: int) -> list[Any]:
        """Args of every request of `op` that node `node_id` received, in order."""
        return [a for nid, o, a in self.requests if o == op and nid == node_id]
