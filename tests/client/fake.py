"""A fake raftq cluster for client tests: trio TCP servers speaking docs/protocol.md.

`FakeCluster` runs N `FakeNode`s on 127.0.0.1 (ephemeral ports) over ONE copy of the real queue
state machine (`node.machine`). Requests are served as a real node serves them
(node/server.py `dispatch`): `machine.command_from_wire` builds the command (or the error), reads
are answered with `machine.query_*`, and a write is applied with `machine.apply` as the next log
entry, stamped with trio's clock (`now_ms`). So results, error codes and timing (leases,
visibility, delays, deduplication windows) are the machine's own, and follow
`trio.testing.MockClock` in tests that run on virtual time. As on a real leader, the machine's
effects are realised: `WakeWaiters` wakes the long-poll receives of its queue, and `ArmTimer`
makes a timer task apply `machine.make_tick(now_ms)` when it falls due, so expired leases come
back without any request.

What is fake is everything around the machine: there is no Raft and no disk (a write "commits"
the moment it is applied, in one shared state), the leader is whichever node `leader_id` names
(the others answer NOT_LEADER with its address; None: no leader; the timer ticks either way;
entries carry the cluster's `term`, which only a leadership transfer raises), and faults are
scripted per op: `cluster.faults["enqueue"] = ["drop_after"]` makes the leader apply the next
enqueue and then close the connection without answering. Everything received is recorded for
assertions.

Membership (`members`, `add_member`, `promote_member`, `remove_member`, docs/protocol.md) is kept
in `FakeCluster.roles` (id -> "voter" | "learner"), with the node/raft Membership rules: ids are
never reused (`max_id`), one voter at least, a learner in `behind` is refused promotion
(LEARNER_BEHIND), one in `silent` is shown as not answering the leader; removing the leader
moves leadership to another fake node and answers NOT_LEADER (as a real leader hands over
first). Every change commits at once as the next index.
Added members have no listener (their client address is what the test gave).

Fault actions (consumed in order by the leader, one per well-formed request of that op):
    drop_before: close the connection without executing.
    drop_after: execute, then close the connection without answering.
    outcome_unknown: answer OUTCOME_UNKNOWN without executing.
    outcome_unknown_applied: execute, then answer OUTCOME_UNKNOWN.
    timeout: answer TIMEOUT without executing.
    unavailable: answer UNAVAILABLE.
    busy: answer BUSY.
    change_in_progress: answer CHANGE_IN_PROGRESS (membership ops).
    no_quorum: answer NO_QUORUM (membership ops).
    not_leader_null: answer NOT_LEADER with leader null.
    hang: never answer.
    delay:<seconds>: wait (trio time), then execute and answer.
    error:<CODE>: answer that error code without executing (e.g. error:ID_RETIRED).
"""

from __future__ import annotations

import functools
import os
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import trio

from node import machine
from node.bodies import MemoryBodies
from node.codec import FrameDecoder, WireError, encode_frame
from node.server import MAX_WAIT_MS, RequestError, parse_request, request_id_of
from node.snapshots import node_digest

EPOCH_MS = 1_700_000_000_000
"""`now_ms` at trio time 0 (a MockClock starts there): a plausible wall clock."""

_REFUSALS = {"outcome_unknown", "timeout", "unavailable", "busy", "change_in_progress",
             "no_quorum"}
MEMBER_OPS = {"members", "add_member", "promote_member", "remove_member"}
_MEMBER_ARGS = {"members": set(), "add_member": {"raft_addr", "client_addr", "id"},
                "promote_member": {"id"}, "remove_member": {"id"}}
_FAULTS = _REFUSALS | {"drop_before", "drop_after", "outcome_unknown_applied",
                       "not_leader_null", "hang"}


class _Drop(Exception):
    """Close the connection without answering."""


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
        # As the real node: requests run concurrently; at end of input (or on a framing error,
        # answered with one error frame) the requests already read are answered, then it closes.
        self.connections_accepted += 1
        decoder = FrameDecoder(self.cluster.max_frame_bytes)
        lock = trio.Lock()
        try:
            async with trio.open_nursery() as conn_nursery:
                while data := await stream.receive_some(1 << 16):
                    decoder.feed(data)
                    try:
                        while (frame := decoder.next_frame()) is not None:
                            conn_nursery.start_soon(
                                self._serve, stream, lock, frame, conn_nursery.cancel_scope
                            )
                    except WireError as exc:
                        error = RequestError(exc.code, exc.message).to_wire()
                        async with lock:
                            await stream.send_all(
                                encode_frame({"id": None, "ok": False, "error": error})
                            )
                        break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(
        self, stream: trio.SocketStream, lock: trio.Lock, frame: Any, conn_scope: trio.CancelScope
    ) -> None:
        try:
            reply = await self._reply(frame)
        except _Drop:
            conn_scope.cancel()
            await trio.aclose_forcefully(stream)
            return
        try:
            async with lock:
                await stream.send_all(encode_frame(reply))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _reply(self, frame: Any) -> dict[str, Any]:
        """The reply frame, checked as node/server.py `_serve_frame` checks it."""
        req_id = request_id_of(frame)
        try:
            op, args = parse_request(frame)
            self.cluster._record(self.id, op, args)
            return {"id": req_id, "ok": True, "result": await self._dispatch(op, args)}
        except RequestError as exc:
            return {"id": req_id, "ok": False, "error": exc.to_wire()}

    def _require_leader(self) -> None:
        c = self.cluster
        if self.id != c.leader_id:
            leader = c.nodes.get(c.leader_id) if c.leader_id is not None else None
            raise RequestError("NOT_LEADER", f"node {self.id} is not the leader",
                               leader.addr if leader else None, c.node_addrs())

    async def _dispatch(self, op: str, args: dict[Any, Any]) -> Any:
        """Serve one request as node/server.py `dispatch` does, plus the scripted faults."""
        c = self.cluster
        if op == "ping":
            return {"node_id": self.id}
        if op == "node_status":
            return self.status(digest=args.get("digest") is True)
        if op == "cluster_status":
            return c.cluster_status()
        if op in MEMBER_OPS:
            c.check_member_args(op, args)
            self._require_leader()
            action = await self._fault_before(op)
            result = c.member_op(self.id, op, args)
            if action == "drop_after":
                raise _Drop
            if action == "outcome_unknown_applied":
                raise RequestError("OUTCOME_UNKNOWN", "fake: lost office after proposing")
            return result
        cmd: machine.Command | None = None
        wait_ms = 0
        if op == "transfer_leadership":
            to = args.get("to")
            if to is not None and (type(to) is not int or to not in c.nodes):
                raise RequestError("BAD_REQUEST", "to must be a node id of this cluster")
        else:
            if op == "receive" and "wait_ms" in args:
                args = dict(args)
                wait_ms = args.pop("wait_ms")
                if type(wait_ms) is not int or not 0 <= wait_ms <= MAX_WAIT_MS:
                    raise RequestError("BAD_REQUEST",
                                       f"wait_ms must be an integer 0..{MAX_WAIT_MS}")
            built = machine.command_from_wire(op, args)
            if isinstance(built, machine.ErrorReply):
                raise RequestError(built.code, built.message)
            cmd = built
        self._require_leader()
        action = await self._fault_before(op)
        if cmd is None:
            result: Any = self._transfer(args.get("to"))
        elif machine.is_read_only(cmd):
            result = c.read(cmd)
        elif isinstance(cmd, machine.Receive) and wait_ms:
            result = await self._long_poll(cmd, wait_ms, args)
        else:
            result = c.write(op, args, cmd)
        if action == "drop_after":
            raise _Drop
        if action == "outcome_unknown_applied":
            raise RequestError("OUTCOME_UNKNOWN", "fake: lost office after proposing")
        return result

    async def _fault_before(self, op: str) -> str | None:
        """Take the next scripted fault of `op` and act out its part before execution."""
        faults = self.cluster.faults.get(op)
        action = faults.pop(0) if faults else None
        if action is None:
            return None
        if action not in _FAULTS and not action.startswith(("delay:", "error:")):
            raise AssertionError(f"unknown fake fault {action!r}")
        if action.startswith("error:"):
            code = action.split(":", 1)[1]
            raise RequestError(code, f"fake {code}")
        if action == "drop_before":
            raise _Drop
        if action in _REFUSALS:
            raise RequestError(action.upper(), f"fake {action}")
        if action == "not_leader_null":
            raise RequestError("NOT_LEADER", "no leader", None, self.cluster.node_addrs())
        if action == "hang":
            await trio.sleep_forever()
        if action.startswith("delay:"):
            await trio.sleep(float(action.split(":", 1)[1]))
        return action

    async def _long_poll(self, cmd: machine.Receive, wait_ms: int, args: Any) -> Any:
        """node/server.py `_long_poll`: receive only when the state shows ready messages."""
        c = self.cluster
        deadline = trio.current_time() + wait_ms / 1000
        while True:
            self._require_leader()
            ready = machine.query_ready(c.state, cmd.queue)
            if ready is None:
                return c.write("receive", args, cmd)  # QUEUE_NOT_FOUND, through the log path
            if ready > 0:
                reply = c.write("receive", args, cmd)
                if reply["messages"]:
                    return reply
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                return {"messages": []}
            await c._wait_wake(cmd.queue, remaining)

    def _transfer(self, to: int | None) -> dict[str, int]:
        c = self.cluster
        if to is None:
            to = next(i for i in c.nodes if i != self.id)
        if to == self.id:
            raise RequestError("BAD_REQUEST", f"cannot transfer leadership to {to}")
        c.term += 1
        c.leader_id = to
        return {"from": self.id, "to": to}

    def status(self, digest: bool = False) -> dict[str, Any]:
        """This node's `node_status` (the Raft part made up: every node has applied all)."""
        c = self.cluster
        leader = c.nodes.get(c.leader_id) if c.leader_id is not None else None
        st: dict[str, Any] = {
            "node_id": self.id,
            "role": "leader" if self.id == c.leader_id else "follower",
            "term": c.term, "leader_id": c.leader_id,
            "leader_client_addr": leader.addr if leader else None,
            "client_addr": self.addr, "pid": os.getpid(),
            "commit_index": c.index, "applied_index": c.index, "last_index": c.index,
            "first_index": 1, "snapshot_index": 0, "standing": "voter", "peers": {},
            "machine_index": c.index, "transport": {},
            "voters": sorted(i for i, r in c.roles.items() if r == "voter"),
            "learners": sorted(i for i, r in c.roles.items() if r == "learner"),
            "membership_index": c.membership_index,
        }
        if digest:
            st["digest"] = node_digest(c.state, c.bodies.get_many)
        return st


class FakeCluster:
    """N fake nodes over one real machine state; node `leader_id` leads (None: no leader).

    Recorded for assertions: `requests` (node id, op, args) of every well-formed request as
    received; `applied` (op, args) of every client write applied to the state (whatever its
    reply); `dedup_ids_seen`, the dedup id of every message sent by enqueue, enqueue_batch or
    publish. `index` is the last log index (ticks included).
    """

    def __init__(self, n: int = 3, leader_id: int | None = 1) -> None:
        self.nodes = {i: FakeNode(self, i) for i in range(1, n + 1)}
        self._leader_id = leader_id
        self.term = 1
        self.index = 0
        self.state = machine.new_state()
        self.bodies = MemoryBodies()  # kept outside the state, as a node keeps them
        self.max_frame_bytes = 8 << 20
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.requests: list[tuple[int, str, Any]] = []
        self.applied: list[tuple[str, Any]] = []
        self.dedup_ids_seen: list[Any] = []
        self.polls_waiting = 0
        self.roles: dict[int, str] = {i: "voter" for i in self.nodes}
        self.member_addrs: dict[int, tuple[str, str]] = {}
        self.max_id = n
        self.membership_index = 0
        self.behind: set[int] = set()
        self.silent: set[int] = set()
        self._wakes: dict[str, trio.Event] = {}
        self._timer_at: int | None = None
        self._timer_changed = trio.Event()
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def start(self, nursery: trio.Nursery) -> FakeCluster:
        """Start the nodes and the machine's timer in `nursery` (cancel it to stop them)."""
        self._nursery = nursery
        for node in self.nodes.values():
            await nursery.start(node.run)
        nursery.start_soon(self._timer_task)
        return self

    async def restart(self, node_id: int) -> None:
        assert self._nursery is not None
        await self._nursery.start(self.nodes[node_id].run)

    @property
    def leader_id(self) -> int | None:
        return self._leader_id

    @leader_id.setter
    def leader_id(self, value: int | None) -> None:
        # As a real node losing office, wake the long polls: they re-check who leads.
        self._leader_id = value
        wakes, self._wakes = self._wakes, {}
        for ev in wakes.values():
            ev.set()
        self._poke()

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

    def depth(self, queue: str) -> int | None:
        """Messages `queue` holds (ready, in flight, delayed), or None if it does not exist."""
        return machine.query_depth(self.state, queue)

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Return once `predicate()` holds; it is checked after every request received, write
        applied, leader change and long poll parked.

        Raises:
            trio.TooSlowError: not within `timeout_s` of trio time (a test that would hang).
        """
        with trio.fail_after(timeout_s):
            while not predicate():
                await self._changed.wait()

    # -- the machine ------------------------------------------------------------------------
    def now_ms(self) -> int:
        """The leader's clock: trio time in ms (virtual under a MockClock) plus `EPOCH_MS`."""
        return EPOCH_MS + int(trio.current_time() * 1000)

    def read(self, cmd: machine.Command) -> Any:
        """Answer a read-only command from the state, as node/server.py `_read`."""
        if isinstance(cmd, machine.ListQueues):
            return machine.query_list_queues(self.state)
        if isinstance(cmd, machine.ListTopics):
            return machine.query_list_topics(self.state)
        assert isinstance(cmd, machine.QueueStats), cmd
        reply = machine.query_queue_stats(self.state, cmd.name, self.now_ms())
        if isinstance(reply, machine.ErrorReply):
            raise RequestError(reply.code, reply.message)
        return reply

    def write(self, op: str, args: Any, cmd: machine.Command) -> Any:
        """Apply a client's write as the next log entry; its result, or RequestError."""
        self.applied.append((op, args))
        reply = self._apply(cmd)
        if isinstance(reply, machine.ErrorReply):
            raise RequestError(reply.code, reply.message)
        return reply

    def _apply(self, cmd: machine.Command) -> Any:
        self.index += 1
        meta = machine.Meta(self.index, self.term, self.now_ms())
        self.state, reply, effects = machine.apply(meta, cmd, self.state)
        for eff in effects:
            if isinstance(eff, machine.StoreBodies):
                self.bodies.write(eff.puts, eff.drops, self.index)
            elif isinstance(eff, machine.WakeWaiters):
                ev = self._wakes.pop(eff.queue, None)
                if ev is not None:
                    ev.set()
            elif isinstance(eff, machine.ArmTimer):
                self._timer_at = eff.at_ms
                self._timer_changed.set()
        self._poke()
        if isinstance(cmd, machine.Receive) and isinstance(reply, dict):
            reply = machine.fill_bodies(reply, self.bodies.get_many)
        return reply

    async def _timer_task(self) -> None:
        """node/actors.py `_timer_task`: apply a tick when the machine's timer falls due."""
        while True:
            self._timer_changed = changed = trio.Event()
            at = self._timer_at
            if at is None:
                await changed.wait()
            elif at > self.now_ms():
                with trio.move_on_after((at - self.now_ms()) / 1000):
                    await changed.wait()
            else:
                self._timer_at = None
                self._apply(machine.make_tick(self.now_ms()))

    async def _wait_wake(self, queue: str, timeout_s: float) -> None:
        ev = self._wakes.get(queue)
        if ev is None:
            ev = self._wakes[queue] = trio.Event()
        self.polls_waiting += 1
        self._poke()
        try:
            with trio.move_on_after(timeout_s):
                await ev.wait()
        finally:
            self.polls_waiting -= 1

    # -- membership ---------------------------------------------------------------------------
    def member_addr(self, node_id: int) -> tuple[str, str]:
        """(raft, client) address of a member: a fake node's real client address."""
        if node_id in self.member_addrs:
            return self.member_addrs[node_id]
        return f"127.0.0.1:{20000 + node_id}", self.nodes[node_id].addr

    def check_member_args(self, op: str, args: dict[Any, Any]) -> None:
        """BAD_REQUEST as node/server_members.py: unknown or missing arguments, bad types."""
        known = _MEMBER_ARGS[op]
        unknown = sorted(str(k) for k in args if k not in known)
        if unknown:
            raise RequestError("BAD_REQUEST", f"{op}: unknown arguments {unknown}")
        needed = {"id"} if op in ("promote_member", "remove_member") else (
            {"raft_addr", "client_addr"} if op == "add_member" else set())
        if needed - set(args):
            missing = sorted(needed - set(args))
            raise RequestError("BAD_REQUEST", f"{op}: missing arguments {missing}")
        if "id" in args and (type(args["id"]) is not int or args["id"] <= 0):
            raise RequestError("BAD_REQUEST", f"{op}: id must be a positive integer")
        for k in ("raft_addr", "client_addr"):
            if k in args and (type(args[k]) is not str or ":" not in args[k]):
                raise RequestError("BAD_REQUEST", f"{op}: {k} must be a \"host:port\" string")

    def _commit_change(self) -> int:
        self.index += 1
        self.membership_index = self.index
        self._poke()
        return self.index

    def members_result(self) -> dict[str, Any]:
        rows = []
        for nid, role in sorted(self.roles.items()):
            raft, client = self.member_addr(nid)
            leader = nid == self.leader_id
            rows.append({
                "id": nid, "role": role, "raft_addr": raft, "client_addr": client,
                "match_index": self.index if nid not in self.behind else 0,
                "lag": 0 if nid not in self.behind else self.index,
                "state": None if leader else "replicate",
                "recent_active": leader or nid not in self.silent,
                "repairing": False, "leader": leader,
            })
        return {"leader_id": self.leader_id, "term": self.term, "commit_index": self.index,
                "membership_index": self.membership_index, "max_id": self.max_id,
                "members": rows}

    def member_op(self, node_id: int, op: str, args: dict[Any, Any]) -> Any:
        """A membership operation on the leader `node_id`, with the Membership rules."""
        if op == "members":
            return self.members_result()
        nid = args.get("id")
        if op == "add_member":
            addrs = (args["raft_addr"], args["client_addr"])
            if nid is None:
                same = [i for i, r in self.roles.items()
                        if r == "learner" and self.member_addrs.get(i) == addrs]
                nid = same[0] if same else self.max_id + 1
            if nid in self.roles:
                if self.roles[nid] == "learner" and self.member_addr(nid) == addrs:
                    return {"node_id": nid, "index": self.membership_index}
                raise RequestError("ALREADY_MEMBER", f"node {nid} is already a member")
            if nid <= self.max_id:
                raise RequestError("ID_RETIRED", f"node id {nid} was given before; ids are "
                                   f"never reused: use {self.max_id + 1} or higher")
            self.roles[nid] = "learner"
            self.member_addrs[nid] = addrs
            self.max_id = nid
            return {"node_id": nid, "index": self._commit_change()}
        if nid not in self.roles:
            raise RequestError("UNKNOWN_MEMBER", f"node {nid} is not a member")
        if op == "promote_member":
            if self.roles[nid] == "voter":
                raise RequestError("NOT_LEARNER", f"node {nid} is already a voter")
            if nid in self.behind:
                raise RequestError("LEARNER_BEHIND", f"learner {nid} has not caught up yet")
            self.roles[nid] = "voter"
            return {"node_id": nid, "index": self._commit_change()}
        assert op == "remove_member", op
        voters = [i for i, r in self.roles.items() if r == "voter"]
        if voters == [nid]:
            raise RequestError("LAST_VOTER", f"node {nid} is the last voter: a cluster needs one")
        if nid == node_id:  # the leader hands over first, then redirects
            self.term += 1
            self.leader_id = next(i for i in sorted(voters) if i != nid and i in self.nodes)
            new = self.nodes[self.leader_id]
            raise RequestError("NOT_LEADER", f"node {nid} handed leadership over to be removed",
                               new.addr, self.node_addrs())
        del self.roles[nid]
        self.member_addrs.pop(nid, None)
        return {"node_id": nid, "index": self._commit_change()}

    # -- recording ----------------------------------------------------------------------------
    def _record(self, node_id: int, op: str, args: dict[Any, Any]) -> None:
        self.requests.append((node_id, op, args))
        if op in ("enqueue", "publish"):
            self.dedup_ids_seen.append(args.get("dedup_id"))
        elif op == "enqueue_batch":
            messages = args.get("messages")
            if isinstance(messages, list):
                self.dedup_ids_seen.extend(
                    m.get("dedup_id") if isinstance(m, dict) else None for m in messages
                )
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def node_addrs(self) -> list[str]:
        """Every node's client address, as a NOT_LEADER lists them (node/server.py)."""
        return [n.addr for _, n in sorted(self.nodes.items())]

    def cluster_status(self) -> dict[str, Any]:
        """`cluster_status` as a node computes it from every node's status."""
        nodes: list[dict[str, Any]] = [
            n.status() if n.running else {
                "node_id": n.id, "client_addr": n.addr,
                "error": f"OSError: cannot connect to {n.addr} (fake node stopped)",
            }
            for _, n in sorted(self.nodes.items())
        ]
        leaders = [n for n in nodes if n.get("role") == "leader"]
        best = max(leaders, key=lambda n: n["term"]) if leaders else None
        return {
            "leader_id": best["node_id"] if best else None,
            "term": best["term"] if best else max((n.get("term", 0) for n in nodes), default=0),
            "nodes": nodes,
        }
