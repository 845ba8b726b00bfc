"""The client listener: CBOR frames in, requests dispatched concurrently, replies out.

Protocol: docs/protocol.md. Each connection has a reader (this task), one task per request
(bounded by `max_in_flight`), and a writer task that coalesces reply frames into few writes.
Bad input gets a clear error with a stable code; where framing is lost (a length over the
limit, bytes that are not CBOR) the error frame is sent and that connection is closed. Nothing a
client sends can stop the node serving everyone else.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

import trio

from node import machine
from node.actors import ActorSystem, Busy
from node.app import QueueApp
from node.budget import ByteBudget
from node.codec import FrameDecoder, WireError, encode_frame
from node.config import ClusterConfig, format_addr, parse_addr
from node.disk_alarm import DiskAlarm
from node.loop_api import ProposalFailed, ReadFailed, TransferFailed
from node.raft import NodeId
from node.raft_loop import RaftLoop
from node.server_errors import RETRYABLE, RequestError
from node.server_members import MEMBER_OPS, MemberOps

__all__ = [
    "MAX_WAIT_MS", "RETRYABLE", "ClientServer", "RequestError", "parse_request", "request_id_of",
]

logger = logging.getLogger("raftq.server")

PARTIAL_FRAME_TIMEOUT_S = 30.0
"""A client that sends part of a frame and then nothing for this long is disconnected."""

MAX_WAIT_MS = 20_000
"""Longest long poll of `receive` (SQS allows 20 s too)."""

STATUS_TIMEOUT_S = 5.0
"""Longest wait for the Raft loop to answer a status request."""

READ_TIMEOUT_ELECTIONS = 3
"""A read waits at most this many election timeouts for the leader to confirm that it still
leads (ReadIndex); a leader cut off from a quorum steps down within two (check-quorum), which
fails the read with NOT_LEADER first. Past the bound: UNAVAILABLE."""

CONFIRM_TIMEOUT_S = 0.5
"""`node_status` with `confirm`: longest wait for the leadership check (within the 1 s that
`cluster_status` gives each node)."""

def request_id_of(frame: object) -> int | None:
    """The request id of a decoded frame: its integer `id`, else None."""
    if isinstance(frame, dict):
        req_id = frame.get("id")
        if type(req_id) is int:
            return req_id
    return None


def parse_request(frame: object) -> tuple[str, dict[Any, Any]]:
    """The `op` and `args` of a decoded request frame (docs/protocol.md).

    Raises:
        RequestError: BAD_REQUEST when the frame is not a map, has no integer id, its op is
            not a string or its args not a map (a missing or null args is an empty map).
    """
    if not isinstance(frame, dict):
        raise RequestError("BAD_REQUEST", "a request must be a map")
    if request_id_of(frame) is None:
        raise RequestError("BAD_REQUEST", "a request needs an integer id")
    op = frame.get("op")
    if type(op) is not str:
        raise RequestError("BAD_REQUEST", "op must be a string")
    args = frame.get("args", {})
    if args is None:
        args = {}
    if type(args) is not dict:
        raise RequestError("BAD_REQUEST", "args must be a map")
    return op, args


_SENDS = (machine.Enqueue, machine.EnqueueBatch, machine.Publish)
"""The commands that bring new message bodies: refused while the disk alarm is raised."""

REPLY_MAX_BYTES = 32 * 1024 * 1024
"""Default budget of the replies one connection holds before they are sent."""


class _Replies:
    """A connection's outgoing reply frames: the writer's channel, bounded in bytes too."""

    __slots__ = ("_send", "_budget")

    def __init__(self, send: trio.MemorySendChannel[bytes], budget: ByteBudget) -> None:
        self._send = send
        self._budget = budget

    async def send(self, frame: bytes) -> None:
        """Queue `frame` once it fits the budget (the writer gives the bytes back once sent).

        Raises:
            trio.BrokenResourceError, trio.ClosedResourceError: the writer is gone.
        """
        await self._budget.acquire(len(frame))
        try:
            await self._send.send(frame)
        except BaseException:
            self._budget.release(len(frame))
            raise


class ClientServer:
    """Serves clients of one node.

    Args:
        node_id: this node.
        cfg: the cluster configuration (client addresses of the peers, frame limit).
        loop: the Raft loop (leadership, status, leadership transfer).
        app: the applied state (reads).
        actors: the leader's actors (writes).
        transport_stats: returns the transport's counters for `node_status`.
        max_in_flight: requests served at once per connection; reading pauses beyond it.
        reply_max_bytes: bytes of replies a connection holds before they are sent; a slow
            reader makes its requests wait beyond it (and, through `max_in_flight`, reading).
        disk: the free-disk alarm (node/disk_alarm.py): while raised, sends are refused with
            `DISK_FULL`; None: no alarm.
    """

    def __init__(
        self,
        node_id: int,
        cfg: ClusterConfig,
        loop: RaftLoop,
        app: QueueApp,
        actors: ActorSystem,
        transport_stats: Callable[[], dict[str, Any]] = dict,
        max_in_flight: int = 1024,
        reply_max_bytes: int = REPLY_MAX_BYTES,
        disk: DiskAlarm | None = None,
    ) -> None:
        self.node_id = node_id
        self.cfg = cfg
        self.loop = loop
        self.app = app
        self.actors = actors
        self.transport_stats = transport_stats
        self.max_in_flight = max_in_flight
        self.reply_max_bytes = reply_max_bytes
        self.disk = disk
        self.stats = {"connections": 0, "requests": 0, "errors": 0, "bad_frames": 0}
        self.member_ops = MemberOps(self)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on this node's client address until cancelled."""
        host, port = self.cfg.node(self.node_id).client_addr
        await trio.serve_tcp(self._handle_connection, port, host=host, task_status=task_status)

    # -- connections --------------------------------------------------------------------------
    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        self.stats["connections"] += 1
        out_send, out_receive = trio.open_memory_channel[bytes](self.max_in_flight)
        decoder = FrameDecoder(self.cfg.max_frame_bytes)
        limiter = trio.Semaphore(self.max_in_flight)
        budget = ByteBudget(self.reply_max_bytes)
        out = _Replies(out_send, budget)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, stream, out_receive, budget,
                                   nursery.cancel_scope)
                async with out_send:
                    await self._reader(stream, decoder, nursery, out, limiter)
                    # The client closed its side: wait for its outstanding replies, then close.
                    for _ in range(self.max_in_flight):
                        await limiter.acquire()
        except Exception:
            # Nothing one connection does may stop the node: log it and drop the connection.
            logger.exception("client connection failed")
        finally:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await trio.aclose_forcefully(stream)

    async def _reader(
        self,
        stream: trio.SocketStream,
        decoder: FrameDecoder,
        nursery: trio.Nursery,
        out: _Replies,
        limiter: trio.Semaphore,
    ) -> None:
        while True:
            # Idle connections may stay open; a frame left half-sent may not.
            wait_s = PARTIAL_FRAME_TIMEOUT_S if decoder.buffered_bytes else math.inf
            data = None
            with trio.move_on_after(wait_s):
                try:
                    data = await stream.receive_some(256 * 1024)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    nursery.cancel_scope.cancel()
                    return
            if data is None:
                self.stats["bad_frames"] += 1
                err = RequestError(
                    "BAD_FRAME", f"incomplete frame: no more bytes for {wait_s:g} s"
                )
                await out.send(encode_frame({"id": None, "ok": False, "error": err.to_wire()}))
                return
            if not data:
                return
            decoder.feed(data)
            while True:
                try:
                    frame = decoder.next_frame()
                except WireError as exc:
                    # Framing is lost: say why and read no more; the requests already read
                    # are still answered before the connection closes.
                    self.stats["bad_frames"] += 1
                    logger.warning("closing client connection: %s", exc)
                    err = RequestError(exc.code, exc.message)
                    await out.send(encode_frame({"id": None, "ok": False, "error": err.to_wire()}))
                    return
                if frame is None:
                    break
                await limiter.acquire()
                nursery.start_soon(self._serve_frame, frame, out, limiter)

    async def _writer(
        self,
        stream: trio.SocketStream,
        out: trio.MemoryReceiveChannel[bytes],
        budget: ByteBudget,
        connection_scope: trio.CancelScope,
    ) -> None:
        async with out:  # once the writer is gone, replies fail fast (BrokenResourceError)
            async for first in out:
                chunks = [first]
                size = len(first)
                while size < 256 * 1024:
                    try:
                        chunk = out.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                try:
                    await stream.send_all(b"".join(chunks))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # The client went away (EPIPE / reset): drop the whole connection.
                    connection_scope.cancel()
                    return
                budget.release(size)

    async def _serve_frame(
        self, frame: object, out: _Replies, limiter: trio.Semaphore
    ) -> None:
        try:
            req_id = request_id_of(frame)
            try:
                op, args = parse_request(frame)
                self.stats["requests"] += 1
                result = await self.dispatch(op, args)
                reply: dict[str, Any] = {"id": req_id, "ok": True, "result": result}
            except RequestError as exc:
                self.stats["errors"] += 1
                reply = {"id": req_id, "ok": False, "error": exc.to_wire()}
            except Exception as exc:  # a bug: answer, log, keep serving
                logger.exception("internal error serving a request")
                err = RequestError("INTERNAL_ERROR", f"{type(exc).__name__}: {exc}")
                reply = {"id": req_id, "ok": False, "error": err.to_wire()}
            try:
                await out.send(encode_frame(reply))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        finally:
            limiter.release()

    # -- requests -------------------------------------------------------------------------------
    def member_addr(self, node_id: int) -> tuple[str, str] | None:
        """(raft, client) "host:port" of a node: the membership's (it travels in the log),
        else the configuration file's, else None."""
        addr = self.loop.membership.address(NodeId(node_id))
        if addr is not None:
            return addr
        nc = self.cfg.nodes.get(node_id)
        if nc is None:
            return None
        return format_addr(nc.raft_addr), format_addr(nc.client_addr)

    def member_client_addrs(self) -> dict[int, str]:
        """Client address of every member of the membership in effect that has one (the
        configuration file's nodes when the membership has no members, which never happens
        in a running cluster)."""
        ids = [int(n) for n in self.loop.membership.members()] or sorted(self.cfg.nodes)
        out = {}
        for nid in ids:
            addr = self.member_addr(nid)
            if addr is not None:
                out[nid] = addr[1]
        return out

    def _leader_addr(self, leader_id: int | None = None) -> str | None:
        lid = self.loop.view.leader_id if leader_id is None else leader_id
        addr = None if lid is None else self.member_addr(lid)
        return None if addr is None else addr[1]

    def _not_leader(self, leader_id: int | None = None, why: str = "") -> RequestError:
        """NOT_LEADER naming the leader this node knows of, or saying that it knows none;
        with every member's client address either way."""
        lid = self.loop.view.leader_id if leader_id is None else leader_id
        addr = self._leader_addr(lid)
        if addr is not None and lid != self.node_id:
            message = f"node {self.node_id} is not the leader{why}; node {lid} leads ({addr})"
        else:
            addr = None
            message = (
                f"node {self.node_id} is not the leader{why} and knows no leader (an election "
                "may be under way, or this node is cut off): try the other nodes"
            )
        nodes = list(self.member_client_addrs().values())
        return RequestError("NOT_LEADER", message, addr, nodes)

    @property
    def election_timeout_s(self) -> float:
        """One (minimum) election timeout, in seconds."""
        return self.cfg.election_ticks * self.cfg.tick_ms / 1000

    @property
    def read_timeout_s(self) -> float:
        """How long a read waits for leadership to be confirmed (see READ_TIMEOUT_ELECTIONS)."""
        return READ_TIMEOUT_ELECTIONS * self.election_timeout_s

    async def _confirm_leadership(self, timeout_s: float) -> None:
        """Linearizable reads: return once the Raft loop confirmed that this node still leads
        and applied every write committed before the call (ReadIndex, node/loop_reads.py).

        Raises:
            RequestError: NOT_LEADER when this node does not lead or lost office meanwhile;
                UNAVAILABLE when leadership was not confirmed within `timeout_s`.
        """
        done = False
        with trio.move_on_after(timeout_s):
            try:
                await self.loop.read_index()
            except ReadFailed as exc:
                if exc.code == "NOT_LEADER":
                    why = f" ({exc})" if exc.left_office else ""
                    raise self._not_leader(exc.leader_id, why) from None
                raise RequestError(exc.code, str(exc)) from None
            done = True
        if not done:
            raise RequestError(
                "UNAVAILABLE",
                f"node {self.node_id} could not confirm within {timeout_s:g} s that it still "
                "leads (a quorum did not answer); nothing was read",
            )

    async def dispatch(self, op: str, args: dict[Any, Any]) -> Any:
        """Serve one request; returns the result or raises RequestError."""
        if op == "ping":
            return {"node_id": self.node_id}
        if op == "node_status":
            unknown = sorted(str(k) for k in args if k not in ("digest", "confirm"))
            if unknown:
                raise RequestError("BAD_REQUEST", f"node_status: unknown arguments {unknown}")
            for name in ("digest", "confirm"):
                if type(args.get(name, False)) is not bool:
                    raise RequestError("BAD_REQUEST", f"node_status: {name} must be a bool")
            return await self.node_status(
                digest=args.get("digest") is True, confirm=args.get("confirm") is True
            )
        if op == "cluster_status":
            return await self.cluster_status()
        if op == "transfer_leadership":
            return await self._transfer(args)
        if op in MEMBER_OPS:
            return await self.member_ops.dispatch(op, args)
        wait_ms = 0
        if op == "receive" and "wait_ms" in args:
            args = dict(args)
            wait_ms = args.pop("wait_ms")
            if type(wait_ms) is not int or not 0 <= wait_ms <= MAX_WAIT_MS:
                raise RequestError("BAD_REQUEST", f"wait_ms must be an integer 0..{MAX_WAIT_MS}")
        cmd = machine.command_from_wire(op, args)
        if isinstance(cmd, machine.ErrorReply):
            raise RequestError(cmd.code, cmd.message)
        if not self.loop.is_leader:
            raise self._not_leader()
        if machine.is_read_only(cmd):
            return await self._read(cmd)
        if isinstance(cmd, machine.Receive) and wait_ms:
            return await self._long_poll(cmd, wait_ms)
        return await self._write(cmd)

    async def _write(self, cmd: machine.Command) -> Any:
        if self.disk is not None and isinstance(cmd, _SENDS):
            refusal = self.disk.refusal()
            if refusal is not None:
                raise RequestError("DISK_FULL", f"node {self.node_id}: {refusal}")
        key = machine.queue_of(cmd) or type(cmd).__name__
        try:
            reply = await self.actors.submit(cmd, key)
        except Busy as exc:
            raise RequestError("BUSY", str(exc)) from None
        except ProposalFailed as exc:
            if exc.code == "NOT_LEADER":
                raise self._not_leader(exc.leader_id) from None
            raise RequestError(exc.code, str(exc)) from None
        if isinstance(reply, machine.ErrorReply):
            raise RequestError(reply.code, reply.message)
        return reply

    async def _read(self, cmd: machine.Command) -> Any:
        """A linearizable read: answered from the applied state once leadership is confirmed
        and every write committed before the request is applied (no stale answer from a
        leader that lost office)."""
        await self._confirm_leadership(self.read_timeout_s)
        state = self.app.state
        if isinstance(cmd, machine.ListQueues):
            return machine.query_list_queues(state)
        if isinstance(cmd, machine.ListTopics):
            return machine.query_list_topics(state)
        if isinstance(cmd, machine.QueueStats):
            reply = machine.query_queue_stats(state, cmd.name, self.actors.clock_ms())
            if isinstance(reply, machine.ErrorReply):
                raise RequestError(reply.code, reply.message)
            return reply
        raise RequestError("INTERNAL_ERROR", f"no read path for {type(cmd).__name__}")

    async def _long_poll(self, cmd: machine.Receive, wait_ms: int) -> Any:
        """Receive, holding the request up to `wait_ms` until a message is visible (SQS-style).

        A receive is proposed only when the leader's state shows ready messages, so waiting
        consumers do not fill the log with empty receives.
        """
        deadline = trio.current_time() + wait_ms / 1000
        while True:
            if not self.loop.is_leader:
                raise self._not_leader()
            ready = machine.query_ready(self.app.state, cmd.queue)
            if ready is None:
                return await self._write(cmd)  # answers QUEUE_NOT_FOUND through the log path
            if ready > 0:
                reply = await self._write(cmd)
                if reply.get("messages"):
                    return reply
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                return {"messages": []}
            await self.actors.wait_wake(cmd.queue, remaining)

    async def _transfer(self, args: dict[Any, Any]) -> Any:
        """Hand leadership over and wait until this node no longer leads (at most two
        election timeouts), so that a success means it moved."""
        to = args.get("to")
        if to is not None and (
            type(to) is not int or not self.loop.membership.is_voter(NodeId(to))
        ):
            raise RequestError("BAD_REQUEST", "to must be the id of a voter of this cluster")
        if not self.loop.is_leader:
            raise self._not_leader()
        if to == self.node_id:
            raise RequestError("BAD_REQUEST", f"node {to} already leads")
        try:
            target = await self.loop.transfer_leadership(to)
        except ValueError as exc:
            raise RequestError("BAD_REQUEST", str(exc)) from None
        except TransferFailed as exc:
            raise RequestError(exc.code, str(exc)) from None
        if target is None:
            if not self.loop.is_leader:
                raise self._not_leader()
            raise RequestError("UNAVAILABLE", "no peer answered this leader recently")
        wait_s = 2 * self.election_timeout_s
        with trio.move_on_after(wait_s):
            while self.loop.is_leader:
                await self.loop.role_changed.wait()
        if self.loop.is_leader:
            raise RequestError(
                "UNAVAILABLE", f"leadership did not move to node {target} within {wait_s:g} s"
            )
        return {"from": self.node_id, "to": target}

    # -- status ---------------------------------------------------------------------------------
    async def node_status(self, digest: bool = False, confirm: bool = False) -> dict[str, Any]:
        """This node's own view (a local read: role, term and leader as this node believes
        them, which a cut-off leader may still believe); `digest` (a hash of the whole state)
        only when asked: it costs time in proportion to the state. With `confirm`, a node that
        believes it leads first checks it with a heartbeat round (ReadIndex, at most
        `CONFIRM_TIMEOUT_S`) and reports `leader_confirmed` (and `leader_confirm_error`); other
        nodes report neither.

        Raises:
            RequestError: UNAVAILABLE when the Raft loop did not answer within
                `STATUS_TIMEOUT_S` (it is stuck in a write).
        """
        confirmed: dict[str, Any] = {}
        if confirm and self.loop.is_leader:
            try:
                await self._confirm_leadership(CONFIRM_TIMEOUT_S)
                confirmed["leader_confirmed"] = True
            except RequestError as exc:
                confirmed["leader_confirmed"] = False
                confirmed["leader_confirm_error"] = f"{exc.code}: {exc.message}"

        def app_status() -> dict[str, Any]:  # run by the loop: matches its applied_index
            out: dict[str, Any] = {"machine_index": self.app.state.last_index}
            if digest:
                out["digest"] = self.app.digest()
            return out

        st: dict[str, Any] | None = None
        with trio.move_on_after(STATUS_TIMEOUT_S):
            st = await self.loop.status(app_status)
        if st is None:
            raise RequestError(
                "UNAVAILABLE", f"the Raft loop did not answer within {STATUS_TIMEOUT_S:g} s"
            )
        st.update(confirmed)
        st["leader_client_addr"] = self._leader_addr()
        st["client_addr"] = format_addr(self.cfg.node(self.node_id).client_addr)
        st["pid"] = os.getpid()
        st["transport"] = self.transport_stats()
        st["server"] = dict(self.stats)
        st["actors"] = dict(self.actors.stats)
        if self.disk is not None:
            st.update(self.disk.status())
        return st

    async def cluster_status(self) -> dict[str, Any]:
        """Every member's `node_status`, asked in parallel (1 s each), and the leader: the
        node of the highest term whose leadership was confirmed by a heartbeat round just now
        (`node_status` with `confirm`), so that a leader that was cut off and still believes
        it leads is not reported as the leader. None when no node could confirm. The members
        are those of this node's membership; each row says whether it is a voter or a
        learner (`membership_role`)."""
        found: dict[int, dict[str, Any]] = {}
        membership = self.loop.membership
        addrs = self.member_client_addrs()

        async def ask(nid: int) -> None:
            addr = addrs.get(nid)
            if nid == self.node_id:
                try:
                    found[nid] = await self.node_status(confirm=True)
                except RequestError as exc:
                    found[nid] = {"node_id": nid, "error": f"{exc.code}: {exc.message}"}
                return
            if addr is None:
                found[nid] = {"node_id": nid, "client_addr": None,
                              "error": "no client address known for this member"}
                return
            try:
                with trio.fail_after(1.0):
                    found[nid] = await _ask(
                        parse_addr(addr), "node_status", self.cfg.max_frame_bytes,
                        {"confirm": True},
                    )
            except trio.TooSlowError:
                found[nid] = {"node_id": nid, "client_addr": addr,
                              "error": "no answer within 1 s (paused, hung or cut off)"}
            except (OSError, WireError, RequestError) as exc:
                found[nid] = {"node_id": nid, "client_addr": addr,
                              "error": f"{type(exc).__name__}: {exc}"}

        ids = [int(n) for n in membership.members()] or sorted(self.cfg.nodes)
        async with trio.open_nursery() as nursery:
            for nid in ids:
                nursery.start_soon(ask, nid)
        nodes = [found[nid] for nid in sorted(found)]
        for row in nodes:
            nid = NodeId(row["node_id"])
            row["membership_role"] = (
                "voter" if membership.is_voter(nid)
                else "learner" if membership.is_learner(nid) else None
            )
        leaders = [n for n in nodes if n.get("role") == "leader" and n.get("leader_confirmed")]
        best = max(leaders, key=lambda n: n.get("term", 0)) if leaders else None
        return {
            "leader_id": best["node_id"] if best else None,
            "term": best["term"] if best else max((n.get("term", 0) for n in nodes), default=0),
            "nodes": nodes,
        }


async def _ask(
    addr: tuple[str, int], op: str, max_frame_bytes: int, args: dict[str, Any] | None = None
) -> Any:
    """One request to another node's client port; returns its result or raises RequestError."""
    stream = await trio.open_tcp_stream(*addr)
    async with stream:
        request: dict[str, Any] = {"id": 1, "op": op}
        if args:
            request["args"] = args
        await stream.send_all(encode_frame(request))
        decoder = FrameDecoder(max_frame_bytes)
        while True:
            data = await stream.receive_some(256 * 1024)
            if not data:
                raise RequestError("UNAVAILABLE", "connection closed")
            decoder.feed(data)
            frame = decoder.next_frame()
            if frame is not None:
                break
    if not isinstance(frame, dict):
        raise RequestError("BAD_FRAME", "reply is not a map")
    if frame.get("ok"):
        return frame.get("result")
    err = frame.get("error") or {}
    raise RequestError(str(err.get("code")), str(err.get("message")))
