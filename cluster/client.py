"""The raftq client: leader finding, multiplexed connections, retries, consumers.

`AsyncClient` (trio) and `Client` (blocking, for scripts) speak the client protocol of
docs/protocol.md to any node of a cluster and give the queue operations of docs/semantics.md.

How a call is made:

* One TCP connection per node address, opened on first use; requests carry an id and many are
  in flight on one connection (a reader task routes replies to their callers by id; a writer
  task coalesces the frames that are ready into one `send_all`).
* A call starts at the last known leader (else the first address). `NOT_LEADER` with a `leader`
  address redirects there at once (a new address is added to the known ones, as are the
  `nodes` a NOT_LEADER lists); `NOT_LEADER` without one (that node knows no leader: an election,
  or it is cut off) tries the next address at once too, once round the known nodes, then with
  backoff; `UNAVAILABLE`, `BUSY`, `CHANGE_IN_PROGRESS`, a refused connection or one lost before
  the request was written try the next address after an exponential backoff with jitter
  (tenacity), until the call's deadline (`timeout_s`). Then `ClusterUnavailable` (or
  `ChangeInProgress` when that was the last answer): nothing was executed.
* Idempotency. `send`, `send_batch` and `publish` give every message a deduplication id (the
  caller's, else a fresh uuid4 hex) kept across retries, so a retry never enqueues twice within
  the queue's deduplication window; they, the reads and `create_queue`, `create_topic`,
  `subscribe`, `unsubscribe` and the membership changes (cluster/members.py says why they may
  be) are retried through unknown outcomes. The other writes (`receive`,
  `ack`, `nack`, `change_visibility`, `purge_queue`, `delete_queue`, `delete_topic`, `redrive`,
  `transfer_leadership`) are never retried once the request may have reached the leader: a lost
  connection after the write, `OUTCOME_UNKNOWN` or `TIMEOUT` raise `OutcomeUnknownError`.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import itertools
import logging
import math
import os
import random
import secrets
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Concatenate, ParamSpec, TypeVar

import trio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from cluster.errors import (
    AlreadyMember,
    BadFrame,
    BadRequest,
    Busy,
    ChangeInProgress,
    ClusterUnavailable,
    DiskFull,
    FrameTooLarge,
    InvalidReceipt,
    MessageTooLarge,
    NotLeader,
    NotLearner,
    OutcomeUnknownError,
    QueueFull,
    QueueNotFound,
    RaftqError,
    Unavailable,
    UnknownMember,
    error_from_wire,
)
from cluster.members import (
    Member,
    MemberChange,
    Members,
    add_member_args,
    change_from_wire,
    check_node_id,
    members_from_wire,
    reached,
)
from node.codec import HEADER_BYTES, FrameDecoder, WireError, encode_frame
from node.config import ConfigError, parse_addr

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "AckResult",
    "AsyncClient",
    "Client",
    "ConsumeStats",
    "Member",
    "MemberChange",
    "Members",
    "Message",
    "OutgoingMessage",
    "PublishQueueResult",
    "PublishResult",
    "RedriveResult",
    "SendResult",
    "default_consumer_id",
    "parse_servers",
]

log = logging.getLogger("raftq.client")

DEFAULT_MAX_FRAME_BYTES = 8 << 20
"""Largest frame sent or accepted by default (the node's default `max_frame_bytes`)."""

_WRITE_QUEUE = 1024
"""Requests waiting for the writer task of one connection (bounded; callers wait when full)."""

_COALESCE_BYTES = 256 << 10
"""The writer joins ready frames into one `send_all` up to about this many bytes."""

PROBE_AFTER_S = 1.5
"""A connection with requests waiting and nothing received for this long gets a `ping`."""

DEAD_AFTER_S = 2.0
"""If the `ping` brings nothing back within this long, the connection is treated as lost: the
node is paused, hung or cut off (a stopped process still accepts TCP connections, so a connect
timeout alone never notices)."""

_FAST_REDIRECTS = 3
"""Redirects in a row that are followed at once; later ones back off like other failures."""


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendResult:
    """Result of sending one message.

    Attributes:
        message_id: the message's id (for a duplicate, the id of the first message).
        duplicate: True when the deduplication id was already seen in the queue's window, so
            nothing new was enqueued. Also True when an earlier attempt of this same call took
            effect before a retry (the id is then the one that attempt enqueued).
        dedup_id: the deduplication id used (the caller's, or the one the client made).
    """

    message_id: int
    duplicate: bool
    dedup_id: str


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message of `send_batch`.

    Attributes:
        body: the body; `str` is sent as UTF-8.
        headers: str to str, at most 64 entries.
        dedup_id: deduplication id, 1 to 128 characters; None makes a fresh one.
        delay_ms: delay before the message becomes visible, 0 to 900,000 ms.
        ttl_ms: time to live from enqueue, 1 ms to 14 days.
        group: message group (FIFO queues), 1 to 128 characters.
    """

    body: bytes | str
    headers: Mapping[str, str] | None = None
    dedup_id: str | None = None
    delay_ms: int | None = None
    ttl_ms: int | None = None
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A received message.

    Attributes:
        queue: the queue it was received from.
        message_id: its id (unique in the cluster, never reused).
        body: the body bytes.
        headers: str to str.
        delivery_count: 1 on the first delivery, +1 on each redelivery.
        first_enqueued_ms: when it was first enqueued (leader clock, ms since the epoch).
        receipt: the receipt handle of this delivery (opaque): pass it to ack, nack and
            change_visibility.
        group: its message group, or None.
        enqueued_ms: when it entered this queue (leader clock), when the node reports it.
    """

    queue: str
    message_id: int
    body: bytes
    headers: dict[str, str]
    delivery_count: int
    first_enqueued_ms: int
    receipt: str
    group: str | None = None
    enqueued_ms: int | None = None

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: `body` as text when it is UTF-8, else `body_base64`."""
        out: dict[str, Any] = {
            "queue": self.queue,
            "message_id": self.message_id,
            "receipt": self.receipt,
            "delivery_count": self.delivery_count,
            "first_enqueued_ms": self.first_enqueued_ms,
            "enqueued_ms": self.enqueued_ms,
            "group": self.group,
            "headers": dict(self.headers),
        }
        try:
            out["body"] = self.body.decode("utf-8")
        except UnicodeDecodeError:
            out["body_base64"] = base64.b64encode(self.body).decode("ascii")
        return out


@dataclass(frozen=True, slots=True)
class AckResult:
    """Result of `ack`.

    Attributes:
        acked: number of messages deleted.
        invalid: the receipts that were refused (stale or unknown); at least one was valid.
    """

    acked: int
    invalid: list[str]


@dataclass(frozen=True, slots=True)
class RedriveResult:
    """Result of `redrive`.

    Attributes:
        moved: messages moved out of the dead-letter queue by this call.
        remaining: messages left in the dead-letter queue.
    """

    moved: int
    remaining: int


@dataclass(frozen=True, slots=True)
class PublishQueueResult:
    """What `publish` did in one subscribed queue.

    Attributes:
        queue: the queue.
        message_id: the id of the copy (or of the first message for a duplicate); None on error.
        duplicate: True when the deduplication id was already seen in that queue.
        error: the error code for that queue (e.g. `QUEUE_FULL`), or None.
    """

    queue: str
    message_id: int | None
    duplicate: bool
    error: str | None


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Result of `publish`.

    Attributes:
        topic: the topic.
        dedup_id: the deduplication id used in every queue.
        results: one entry per subscribed queue, in subscription order.
    """

    topic: str
    dedup_id: str
    results: list[PublishQueueResult]


@dataclass(slots=True)
class ConsumeStats:
    """Counters of one `consume` run.

    Attributes:
        handled: messages whose handler returned (acked, or ack attempted).
        failed: messages whose handler raised (nacked, or nack attempted).
        ack_errors: acks or nacks that failed (e.g. the lease had ended: the message comes back).
        lease_extensions: successful `change_visibility` calls made while handlers ran.
    """

    handled: int = 0
    failed: int = 0
    ack_errors: int = 0
    lease_extensions: int = 0


def default_consumer_id() -> str:
    """A consumer name for this process: `<hostname>-<pid>-<6 random hex>` (at most 128 chars)."""
    host = socket.gethostname() or "host"
    return f"{host[:100]}-{os.getpid()}-{secrets.token_hex(3)}"


def parse_servers(servers: str | Iterable[str]) -> list[str]:
    """Normalise a server list: "h:p,h:p" or an iterable of "host:port", duplicates dropped.

    Raises:
        ValueError: empty, or an entry is not host:port.
    """
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    out: list[str] = []
    for item in items:
        text = item.strip()
        if not text:
            continue
        try:
            parse_addr(text, "server address")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if text not in out:
            out.append(text)
    if not out:
        raise ValueError("no server addresses given")
    return out


# ---------------------------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------------------------


class _Kind(Enum):
    READ = "read"  # no side effect: retry freely
    IDEMPOTENT = "idempotent"  # repeating it is harmless: retry through unknown outcomes
    UNSAFE = "unsafe"  # never repeat once it may have reached the leader


class _ConnectionLost(Exception):
    def __init__(self, addr: str, reason: str, *, sent: bool) -> None:
        super().__init__(f"{addr}: {reason}")
        self.addr = addr
        self.reason = reason
        self.sent = sent


class _Call:
    """One request on one connection, waiting for its reply."""

    __slots__ = ("id", "frame", "sent", "abandoned", "done", "reply", "error")

    def __init__(self, call_id: int, frame: bytes) -> None:
        self.id = call_id
        self.frame = frame
        self.sent = False  # set when the writer starts writing it: from then on, outcome unknown
        self.abandoned = False
        self.done = trio.Event()
        self.reply: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def finish(self, reply: dict[str, Any]) -> None:
        if not self.done.is_set():
            self.reply = reply
            self.done.set()

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class _Connection:
    """One TCP connection to one node, with a reader and a writer task."""

    def __init__(self, addr: str, stream: trio.abc.Stream, max_frame_bytes: int) -> None:
        self.addr = addr
        self.closed = False
        self.close_reason = ""
        self._stream = stream
        self._decoder = FrameDecoder(max_frame_bytes)
        self._pending: dict[int, _Call] = {}
        self._send_q, self._recv_q = trio.open_memory_channel[_Call](_WRITE_QUEUE)
        self._scope = trio.CancelScope()
        self._last_received = trio.current_time()
        self._probe_ids = itertools.count(-1, -1)  # negative: never clash with request ids

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the reader and writer until the connection closes; never raises (but Cancelled)."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_loop)
                    nursery.start_soon(self._write_loop)
                    nursery.start_soon(self._watchdog)
                    task_status.started()
        finally:
            self.close("client closed")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._stream)

    def close(self, reason: str) -> None:
        """Close the connection: every pending call fails with `_ConnectionLost`."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        pending, self._pending = self._pending, {}
        for call in pending.values():
            call.fail(_ConnectionLost(self.addr, reason, sent=call.sent))
        self._recv_q.close()
        self._scope.cancel()

    async def request(self, call: _Call) -> dict[str, Any]:
        """Send `call` and wait for its reply.

        Raises:
            _ConnectionLost: the connection closed before the reply (`sent` says whether the
                request may have been written).
        """
        if self.closed:
            raise _ConnectionLost(self.addr, self.close_reason, sent=False)
        self._pending[call.id] = call
        try:
            try:
                await self._send_q.send(call)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                call.fail(_ConnectionLost(self.addr, self.close_reason, sent=False))
            await call.done.wait()
        finally:
            if not call.done.is_set():  # cancelled (deadline): forget it
                call.abandoned = True
                self._pending.pop(call.id, None)
        if call.error is not None:
            raise call.error
        assert call.reply is not None
        return call.reply

    async def _write_loop(self) -> None:
        try:
            async for call in self._recv_q:
                batch = [call]
                size = len(call.frame)
                while size < _COALESCE_BYTES:
                    try:
                        nxt = self._recv_q.receive_nowait()
                    except trio.WouldBlock:
                        break
                    batch.append(nxt)
                    size += len(nxt.frame)
                chunks = []
                for c in batch:
                    if not c.abandoned:
                        c.sent = True
                        chunks.append(c.frame)
                if chunks:
                    await self._stream.send_all(b"".join(chunks))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.close(f"connection lost while sending ({exc or type(exc).__name__})")
        except Exception as exc:  # a bug; never let it escape into the client's nursery
            log.warning("raftq client: writer to %s failed", self.addr, exc_info=True)
            self.close(f"client writer failed: {exc!r}")

    async def _watchdog(self) -> None:
        """Close the connection when the node stops answering while requests wait."""
        while True:
            await trio.sleep(PROBE_AFTER_S / 3)
            if not self._pending or trio.current_time() - self._last_received < PROBE_AFTER_S:
                continue
            probe_id = next(self._probe_ids)
            probe = _Call(probe_id, encode_frame({"id": probe_id, "op": "ping"}))
            self._pending[probe_id] = probe
            try:
                self._send_q.send_nowait(probe)
            except trio.WouldBlock:
                self._pending.pop(probe_id, None)
                continue
            sent_at = trio.current_time()
            await trio.sleep(DEAD_AFTER_S)
            self._pending.pop(probe_id, None)
            if self._last_received < sent_at:
                self.close(
                    f"{self.addr} did not answer a ping within {DEAD_AFTER_S:g} s "
                    "(paused, hung or cut off)"
                )
                return

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._stream.receive_some(1 << 16)
                self._last_received = trio.current_time()
                if not data:
                    self.close("connection closed by the node")
                    return
                self._decoder.feed(data)
                while (frame := self._decoder.next_frame()) is not None:
                    self._dispatch(frame)
        except WireError as exc:
            self.close(f"undecodable data from the node ({exc})")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.close(f"connection lost ({exc or type(exc).__name__})")
        except Exception as exc:  # a bug; never let it escape into the client's nursery
            log.warning("raftq client: reader from %s failed", self.addr, exc_info=True)
            self.close(f"client reader failed: {exc!r}")

    def _dispatch(self, frame: object) -> None:
        if not isinstance(frame, dict):
            self.close(f"reply is not a map: {frame!r:.100}")
            return
        call_id = frame.get("id")
        if call_id is None:  # a connection-level error (FRAME_TOO_LARGE, BAD_FRAME): it closes
            err = error_from_wire(frame.get("error"))
            self.close(f"the node refused the connection's input ({err})")
            return
        call = self._pending.pop(call_id, None) if type(call_id) is int else None
        if call is not None:
            call.finish(frame)


# ---------------------------------------------------------------------------------------------
# Retry policy (tenacity)
# ---------------------------------------------------------------------------------------------


class _Retry(Exception):
    """An attempt failed in a way that allows another attempt (maybe elsewhere).

    `redirect`: sent to the leader a node named. `next_node`: the node knows no leader, so the
    next one is asked. `cut` marks an attempt stopped by the call's deadline: its reason says
    less than the failure before it, which the final error reports instead. `refusal`: the
    node's retryable error, when one made the attempt fail (raised itself at the deadline when
    it is a `ChangeInProgress`).
    """

    def __init__(
        self,
        reason: str,
        *,
        redirect: bool = False,
        next_node: bool = False,
        cut: bool = False,
        refusal: RaftqError | None = None,
    ) -> None:
        super().__init__(reason)
        self.redirect = redirect
        self.next_node = next_node
        self.cut = cut
        self.refusal = refusal


class _Backoff(wait_base):
    """Exponential backoff with jitter, clamped to the deadline. Redirects go at once (up to
    `_FAST_REDIRECTS` in a row), and so does the first pass over the other nodes when nodes
    answer that they know no leader (`known_nodes()` is how many addresses the client knows)."""

    def __init__(
        self,
        deadline: float,
        initial_s: float,
        max_s: float,
        rng: random.Random,
        known_nodes: Callable[[], int] = lambda: 1,
    ) -> None:
        self._deadline = deadline
        self._initial_s = initial_s
        self._max_s = max_s
        self._rng = rng
        self._known_nodes = known_nodes
        self._redirects = 0
        self._hops = 0
        self._failures = 0

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        remaining_s = max(0.0, self._deadline - trio.current_time())
        if isinstance(exc, _Retry) and exc.redirect:
            self._redirects += 1
            if self._redirects <= _FAST_REDIRECTS:
                return 0.0
        elif isinstance(exc, _Retry) and exc.next_node:
            self._hops += 1
            if self._hops < self._known_nodes():
                return 0.0
        else:
            self._redirects = 0
        self._failures += 1
        base_s = min(self._max_s, self._initial_s * 2 ** min(self._failures - 1, 30))
        return min(remaining_s, self._rng.uniform(base_s / 2, base_s))


class _StopAtDeadline(stop_base):
    """Stop when the next attempt could not start before the deadline."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        upcoming_s = getattr(retry_state, "upcoming_sleep", 0.0) or 0.0
        return trio.current_time() + upcoming_s >= self._deadline


@dataclass
class _CallState:
    maybe_executed: bool = False
    attempts: int = 0
    last_reason: str = ""
    last_refusal: RaftqError | None = None


def _message_args(
    body: bytes | str,
    headers: Mapping[str, str] | None,
    dedup_id: str | None,
    delay_ms: int | None,
    ttl_ms: int | None,
    group: str | None,
) -> dict[str, Any]:
    if isinstance(body, str):
        body = body.encode("utf-8")
    elif not isinstance(body, bytes):
        body = bytes(body)
    args: dict[str, Any] = {"body": body, "dedup_id": dedup_id or uuid.uuid4().hex}
    if headers:
        args["headers"] = dict(headers)
    if delay_ms is not None:
        args["delay_ms"] = delay_ms
    if ttl_ms is not None:
        args["ttl_ms"] = ttl_ms
    if group is not None:
        args["group"] = group
    return args


def _field(result: Any, key: str, op: str) -> Any:
    if not isinstance(result, dict) or key not in result:
        raise BadFrame(None, f"malformed reply to {op}: no {key!r} in {result!r:.200}")
    return result[key]


def _message_from_wire(queue: str, m: Any) -> Message:
    if not isinstance(m, dict):
        raise BadFrame(None, f"malformed message in a receive reply: {m!r:.200}")
    try:
        return Message(
            queue=queue,
            message_id=m["message_id"],
            body=m["body"],
            headers=dict(m.get("headers") or {}),
            delivery_count=m["delivery_count"],
            first_enqueued_ms=m["first_enqueued_ms"],
            receipt=m["receipt"],
            group=m.get("group"),
            enqueued_ms=m.get("enqueued_ms"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BadFrame(None, f"malformed message in a receive reply ({exc!r})") from None


# ---------------------------------------------------------------------------------------------
# AsyncClient
# ---------------------------------------------------------------------------------------------


_COALESCE_IN_FLIGHT = 4
"""Requests to one queue a client keeps in flight before concurrent sends share a batch."""

_MAX_BATCH = 100
"""Most messages in one `enqueue_batch` (the node's limit)."""


class _PendingSend:
    """A `send` waiting to go out in a shared `enqueue_batch`."""

    __slots__ = ("msg", "done", "taken", "result", "error")

    def __init__(self, msg: dict[str, Any]) -> None:
        self.msg = msg
        self.done = trio.Event()
        self.taken = False
        self.result: SendResult | None = None
        self.error: BaseException | None = None

    def settle(self, result: SendResult | None, error: BaseException | None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


class _SendCoalescer:
    """The sends waiting for one queue, and how many of its requests are in flight."""

    __slots__ = ("pending", "in_flight")

    def __init__(self) -> None:
        self.pending: list[_PendingSend] = []
        self.in_flight = 0


class AsyncClient:
    """A trio client of a raftq cluster.

    Use it as an async context manager; it owns one connection per node, opened on first use::

        async with AsyncClient(["127.0.0.1:7001", "127.0.0.1:7002"]) as c:
            await c.create_queue("jobs")
            await c.send("jobs", b"hello")
            for m in await c.receive("jobs", wait_s=5):
                await c.ack("jobs", [m.receipt])

    Every method may raise, besides the errors it lists: `ClusterUnavailable` (the deadline
    passed and nothing was executed), `BadRequest` (an argument the node refused),
    `FrameTooLarge` (the request is over `max_frame_bytes`; not sent), `InternalError`; and
    writes `OutcomeUnknownError` (see the module docstring for which ones, and when).

    Attributes:
        servers: the known node client addresses ("host:port"), including those learnt from
            redirects.
        consumer_id: the consumer name sent with `receive` when none is given.
        timeout_s: default deadline of one call, retries included.
    """

    def __init__(
        self,
        servers: str | Iterable[str],
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 2.0,
        request_timeout_s: float = 10.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        consumer_id: str | None = None,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 1.0,
        rng: random.Random | None = None,
        coalesce_sends: bool = True,
        open_stream: Callable[[str, int], Awaitable[trio.abc.Stream]] = trio.open_tcp_stream,
    ) -> None:
        """Create a client (no connection is opened until the first call).

        Args:
            servers: node client addresses, "host:port" each, as a list or "h:p,h:p".
            timeout_s: deadline of one call in seconds, retries included (a long-poll
                `receive` adds its `wait_s`).
            connect_timeout_s: deadline of one TCP connect, in seconds.
            request_timeout_s: how long one attempt of a read or idempotent call waits for its
                reply before trying another node (a paused node accepts connections but does
                not answer). Non-idempotent calls wait until the call's deadline.
            max_frame_bytes: largest frame sent or accepted, in bytes.
            consumer_id: consumer name for `receive`; default `default_consumer_id()`.
            backoff_initial_s: first retry delay in seconds; doubles per failure.
            backoff_max_s: largest retry delay in seconds.
            rng: random source for the jitter (tests pass a seeded one).
            coalesce_sends: let concurrent `send`s to one queue share `enqueue_batch`
                requests (see `send`); False sends each message on its own.
            open_stream: opens a byte stream to (host, port): TCP by default; the whole-node
                simulator (tests/sim/node_sim.py) connects to its nodes in memory. OSError
                means "cannot connect".

        Raises:
            ValueError: no server, or one is not host:port.
        """
        self._addrs = parse_servers(servers)
        self.coalesce_sends = coalesce_sends
        self._coalescers: dict[str, _SendCoalescer] = {}
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.consumer_id = consumer_id or default_consumer_id()
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._rng = rng or random.Random()
        self._open_stream = open_stream
        self._ids = itertools.count(1)
        self._leader: str | None = None
        self._rr = 0
        self._conns: dict[str, _Connection] = {}
        self._connect_locks: dict[str, trio.Lock] = {}
        self._connect_failed: dict[str, tuple[float, str]] = {}
        self._nursery: trio.Nursery | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncClient:
        if self._nursery is not None:
            raise RuntimeError("AsyncClient is already open")
        stack = contextlib.AsyncExitStack()
        self._nursery = await stack.enter_async_context(trio.open_nursery())
        self._stack = stack
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection and stop the client's tasks. Calls in flight fail."""
        stack, nursery = self._stack, self._nursery
        self._stack = None
        if stack is None or nursery is None:
            return
        for conn in list(self._conns.values()):
            conn.close("client closed")
        nursery.cancel_scope.cancel()
        await stack.aclose()
        self._conns.clear()

    @property
    def servers(self) -> list[str]:
        """The known node client addresses ("host:port")."""
        return list(self._addrs)

    @property
    def leader(self) -> str | None:
        """The address of the node believed to lead, or None."""
        return self._leader

    # -- leader tracking ------------------------------------------------------------------

    def _target(self) -> str:
        return self._leader or self._addrs[self._rr % len(self._addrs)]

    def _forget(self, addr: str) -> None:
        if self._leader == addr:
            self._leader = None
        if self._addrs[self._rr % len(self._addrs)] == addr:
            self._rr = (self._rr + 1) % len(self._addrs)

    def _learn_leader(self, addr: str) -> None:
        self._learn_node(addr)
        self._leader = addr

    def _learn_node(self, addr: str) -> None:
        if addr not in self._addrs:
            self._addrs.append(addr)

    async def _connect(self, addr: str) -> _Connection:
        conn = self._conns.get(addr)
        if conn is not None and not conn.closed:
            return conn
        if self._nursery is None or self._stack is None:
            raise RuntimeError("AsyncClient is not open: use `async with AsyncClient(...)`")
        started_at = trio.current_time()
        lock = self._connect_locks.setdefault(addr, trio.Lock())
        async with lock:
            conn = self._conns.get(addr)
            if conn is not None and not conn.closed:
                return conn
            failed = self._connect_failed.get(addr)
            if failed is not None and failed[0] >= started_at:  # failed while we waited
                raise _Retry(failed[1])
            try:
                host, port = parse_addr(addr)
                with trio.fail_after(self.connect_timeout_s):
                    stream = await self._open_stream(host, port)
            except (OSError, trio.TooSlowError, ConfigError) as exc:
                reason = f"cannot connect to {addr} ({exc or 'timed out'})"
                self._connect_failed[addr] = (trio.current_time(), reason)
                self._forget(addr)
                raise _Retry(reason) from None
            conn = _Connection(addr, stream, self.max_frame_bytes)
            await self._nursery.start(conn.run)
            self._conns[addr] = conn
            return conn

    # -- the call machinery ---------------------------------------------------------------

    async def _request(
        self,
        op: str,
        args: dict[str, Any] | None,
        kind: _Kind,
        *,
        addr: str | None = None,
        any_node: bool = False,
        timeout_s: float | None = None,
        extra_s: float = 0.0,
        dedup_ids: tuple[str, ...] = (),
        state: _CallState | None = None,
    ) -> Any:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = trio.current_time() + timeout + extra_s
        if state is None:
            state = _CallState()
        retrying = AsyncRetrying(
            sleep=trio.sleep,
            stop=_StopAtDeadline(deadline),
            wait=_Backoff(deadline, self._backoff_initial_s, self._backoff_max_s, self._rng,
                          lambda: len(self._addrs)),
            retry=retry_if_exception_type(_Retry),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        return await self._attempt(
                            op, args, kind, state, deadline, addr, any_node or addr is not None,
                            extra_s,
                        )
                    except _Retry as exc:
                        if not exc.cut:
                            state.last_reason = str(exc)
                            state.last_refusal = exc.refusal
                        raise
        except _Retry as exc:
            reason = state.last_reason if exc.cut and state.last_reason else str(exc)
            refusal = state.last_refusal
            if isinstance(refusal, ChangeInProgress | DiskFull) and not state.maybe_executed:
                raise type(refusal)(
                    refusal.code,
                    f"{op}: {refusal.message or refusal.code} (still so after retrying for "
                    f"{timeout:g} s; the operation was not executed)",
                ) from None
            if state.maybe_executed:
                raise OutcomeUnknownError(
                    None,
                    f"{op}: no definite answer within {timeout:g} s ({reason}); the operation may "
                    "or may not have happened",
                    op=op,
                    dedup_ids=dedup_ids,
                ) from None
            where = f"node {addr}" if addr is not None else "the cluster"
            raise ClusterUnavailable(
                None,
                f"{op}: {where} did not answer within {timeout:g} s ({reason}); "
                "the operation was not executed",
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self,
        op: str,
        args: dict[str, Any] | None,
        kind: _Kind,
        state: _CallState,
        deadline: float,
        pinned: str | None,
        any_node: bool,
        extra_s: float,
    ) -> Any:
        state.attempts += 1
        addr = pinned or self._target()
        call_id = next(self._ids)
        request: dict[str, Any] = {"id": call_id, "op": op}
        if args:
            request["args"] = args
        frame = encode_frame(request)
        if len(frame) - HEADER_BYTES > self.max_frame_bytes:
            raise FrameTooLarge(
                None,
                f"{op}: request of {len(frame) - HEADER_BYTES} bytes is over the frame limit "
                f"of {self.max_frame_bytes} bytes; not sent",
            )
        call = _Call(call_id, frame)
        if kind is _Kind.UNSAFE:
            attempt_deadline = deadline
        else:
            attempt_deadline = min(
                deadline, trio.current_time() + self.request_timeout_s + extra_s
            )
        reply: dict[str, Any] | None = None
        with trio.move_on_at(attempt_deadline):
            conn = await self._connect(addr)
            try:
                reply = await conn.request(call)
            except _ConnectionLost as lost:
                self._forget(addr)
                if not lost.sent:
                    raise _Retry(str(lost)) from None
                if kind is _Kind.UNSAFE:
                    raise OutcomeUnknownError(
                        None,
                        f"{op}: {lost} after the request was sent; the operation may or may "
                        "not have happened",
                        op=op,
                    ) from None
                state.maybe_executed |= kind is _Kind.IDEMPOTENT
                raise _Retry(str(lost)) from None
        if reply is None:  # the attempt's deadline passed
            if not call.sent:
                raise _Retry(f"{addr}: no connection before the deadline", cut=True)
            if kind is _Kind.UNSAFE:
                raise OutcomeUnknownError(
                    None,
                    f"{op}: no answer from {addr} before the deadline; the operation may or "
                    "may not have happened",
                    op=op,
                )
            state.maybe_executed |= kind is _Kind.IDEMPOTENT
            self._forget(addr)
            raise _Retry(f"{addr}: no answer within {self.request_timeout_s + extra_s:g} s")
        if reply.get("ok") is True:
            if not any_node:
                self._leader = addr
            return reply.get("result")
        err = error_from_wire(reply.get("error"))
        if isinstance(err, NotLeader) and pinned is None:
            for known in err.nodes:
                self._learn_node(known)
            if err.leader and err.leader != addr:
                self._learn_leader(err.leader)
                raise _Retry(f"{addr}: not the leader, redirected to {err.leader}", redirect=True)
            # It knows no leader (an election, or it is cut off): ask the next node at once;
            # only after a few such answers in a row does the call back off.
            self._forget(addr)
            raise _Retry(f"{addr}: not the leader, no leader known", next_node=True)
        if isinstance(err, (Unavailable, Busy, ChangeInProgress, DiskFull)):
            if isinstance(err, Unavailable):
                self._forget(addr)
            raise _Retry(f"{addr}: {err}", refusal=err)
        if isinstance(err, OutcomeUnknownError):  # OUTCOME_UNKNOWN or TIMEOUT
            if kind is _Kind.UNSAFE:
                raise OutcomeUnknownError(
                    err.code,
                    f"{op}: {err.message or err.code}; the operation may or may not have "
                    "happened",
                    op=op,
                )
            state.maybe_executed |= kind is _Kind.IDEMPOTENT
            raise _Retry(f"{addr}: {err}")
        raise err

    # -- node level -----------------------------------------------------------------------

    async def ping(self, addr: str | None = None, *, timeout_s: float | None = None) -> int:
        """Ask a node for its id (any node answers, leader or not).

        Args:
            addr: the node's client address; None asks any known node.
            timeout_s: deadline in seconds; default the client's `timeout_s`.

        Returns:
            The node id.

        Raises:
            ClusterUnavailable: no node (or not `addr`) answered before the deadline.
        """
        result = await self._request(
            "ping", None, _Kind.READ, addr=addr, any_node=True, timeout_s=timeout_s
        )
        return int(_field(result, "node_id", "ping"))

    async def node_status(
        self,
        addr: str | None = None,
        *,
        timeout_s: float | None = None,
        digest: bool = False,
        confirm: bool = False,
    ) -> dict[str, Any]:
        """One node's own view of the cluster (role, term, indexes, peers), a local read: a
        leader cut off from the others still says it leads; see docs/protocol.md.

        Args:
            addr: the node's client address; None asks any known node.
            timeout_s: deadline in seconds; default the client's `timeout_s`.
            digest: also return `digest`, a hash of the node's whole queue state (costs time
                in proportion to the state: ask for it when comparing replicas).
            confirm: a node that believes it leads checks it with a heartbeat round first
                (at most 0.5 s) and says whether that passed (`leader_confirmed`).

        Returns:
            The `node_status` map: `node_id`, `role`, `term`, `leader_id`,
            `leader_client_addr`, `commit_index`, `applied_index`, `last_index`, ...

        Raises:
            ClusterUnavailable: the node did not answer before the deadline.
        """
        args = {k: True for k, on in (("digest", digest), ("confirm", confirm)) if on}
        result = await self._request(
            "node_status", args or None, _Kind.READ, addr=addr, any_node=True,
            timeout_s=timeout_s,
        )
        if not isinstance(result, dict):
            raise BadFrame(None, f"malformed reply to node_status: {result!r:.200}")
        return result

    async def cluster_status(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        """The whole cluster as seen from one node (it asks the others).

        Args:
            timeout_s: deadline in seconds; default the client's `timeout_s`.

        Returns:
            `{"leader_id", "term", "nodes": [node_status, or {"node_id", "error"}, ...]}`.

        Raises:
            ClusterUnavailable: no node answered before the deadline.
        """
        result = await self._request(
            "cluster_status", None, _Kind.READ, any_node=True, timeout_s=timeout_s
        )
        if not isinstance(result, dict):
            raise BadFrame(None, f"malformed reply to cluster_status: {result!r:.200}")
        return result

    async def transfer_leadership(self, to: int | None = None) -> dict[str, Any]:
        """Ask the leader to hand leadership over.

        Args:
            to: the node id to hand over to; None lets the leader pick the most up-to-date peer.

        Returns:
            `{"from": <old leader id>, "to": <new leader id>}`.

        Raises:
            OutcomeUnknownError: the request may have reached the leader but no answer came.
            BadRequest: `to` is not a peer.
        """
        result = await self._request(
            "transfer_leadership", {} if to is None else {"to": to}, _Kind.UNSAFE
        )
        self._leader = None
        if not isinstance(result, dict):
            raise BadFrame(None, f"malformed reply to transfer_leadership: {result!r:.200}")
        return result

    # -- membership (cluster/members.py; docs/operations.md, "Membership") ------------------

    async def members(self, *, timeout_s: float | None = None) -> Members:
        """The cluster's members, read from the leader (linearizable: `NOT_LEADER` or
        `UNAVAILABLE` rather than an old membership). The client learns every member's client
        address from it.

        Returns:
            A `Members`: leader id, term, commit index, membership index, max id, and per
            member its role (voter or learner), addresses, match index, lag and state.
        """
        result = await self._request("members", None, _Kind.READ, timeout_s=timeout_s)
        view = members_from_wire(result)
        for addr in view.client_addrs():
            self._learn_node(addr)
        return view

    async def add_member(
        self,
        raft_addr: str,
        client_addr: str,
        node_id: int | None = None,
        *,
        timeout_s: float | None = None,
    ) -> MemberChange:
        """Admit a new node as a learner (it receives the log; it does not vote).

        Returns once the CONFIG entry is committed. The node itself must run (with an empty
        database made from the cluster's membership: `raftq node --join` does both).

        Args:
            raft_addr: "host:port" where the other nodes reach it.
            client_addr: "host:port" where clients reach it.
            node_id: its id; None takes `members().max_id + 1` (read first, so that a retry
                asks for the same id).
            timeout_s: deadline in seconds, retries included; default the client's.

        Raises:
            AlreadyMember: the id is a member with other addresses (or was promoted).
            IdRetired: the id was given before (ids are never reused).
            ChangeInProgress: another change was still in flight at the deadline.
            ValueError: an address is not host:port, or the id is not a positive integer.
        """
        args = add_member_args(raft_addr, client_addr, node_id)
        if node_id is None:
            args["id"] = (await self.members(timeout_s=timeout_s)).max_id + 1
        return await self._change_member("add_member", args, timeout_s)

    async def promote_member(
        self, node_id: int, *, timeout_s: float | None = None
    ) -> MemberChange:
        """Make a learner a voter; returns once the CONFIG entry is committed.

        Raises:
            LearnerBehind: it has not caught up yet (or is being repaired): retry later.
            NotLearner: it is a voter already. UnknownMember: no such member.
            ChangeInProgress: another change was still in flight at the deadline.
        """
        return await self._change_member(
            "promote_member", {"id": check_node_id(node_id)}, timeout_s
        )

    async def remove_member(
        self, node_id: int, *, timeout_s: float | None = None
    ) -> MemberChange:
        """Take a voter or learner out of the cluster; returns once it is committed. Removing
        the leader: it hands leadership over first, and the client asks the new leader.

        Raises:
            UnknownMember: no such member. LastVoter: it is the only voter.
            NoQuorum: the voters left would have no active majority.
            ChangeInProgress: another change was still in flight at the deadline.
        """
        return await self._change_member(
            "remove_member", {"id": check_node_id(node_id)}, timeout_s
        )

    async def _change_member(
        self, op: str, args: dict[str, Any], timeout_s: float | None
    ) -> MemberChange:
        state = _CallState()
        try:
            result = await self._request(
                op, args, _Kind.IDEMPOTENT, timeout_s=timeout_s, state=state
            )
        except (AlreadyMember, NotLearner, UnknownMember):
            if not state.maybe_executed:
                raise
            # An attempt whose outcome is unknown may have made the change: read what holds.
            view = await self.members(timeout_s=timeout_s)
            if not reached(op, args, view):
                raise
            log.info("raftq client: %s %s: already done (found on a retry)", op, args["id"])
            return MemberChange(args["id"], view.membership_index, on_retry=True)
        return change_from_wire(op, result)

    # -- queues ---------------------------------------------------------------------------

    async def create_queue(self, name: str, **options: Any) -> bool:
        """Create a queue; idempotent when the options are the same.

        Args:
            name: 1 to 80 characters from `[A-Za-z0-9._-]`.
            **options: any of `visibility_timeout_ms`, `max_deliveries`, `dead_letter_queue`
                (a name, or None for none; default `<name>.dlq`), `retention_ms`,
                `max_message_bytes`, `max_length`, `max_length_bytes`, `overflow`
                ("reject_publish" or "drop_head"), `dedup_window_ms`, `delay_ms`, `fifo`
                (docs/semantics.md).

        Returns:
            True when created, False when it existed with the same options.

        Raises:
            QueueExists: it exists with different options.
            BadRequest: a bad name or option.
            OutcomeUnknownError: the deadline passed after an attempt may have taken effect.
        """
        args: dict[str, Any] = {"name": name}
        if options:
            args["options"] = dict(options)
        result = await self._request("create_queue", args, _Kind.IDEMPOTENT)
        return bool(_field(result, "created", "create_queue"))

    async def delete_queue(self, name: str) -> int:
        """Delete a queue, its messages and subscriptions (its dead-letter queue stays).

        Returns:
            The number of messages deleted with it.

        Raises:
            QueueNotFound: no such queue.
            OutcomeUnknownError: the request may have reached the leader but no answer came.
        """
        result = await self._request("delete_queue", {"name": name}, _Kind.UNSAFE)
        return int(_field(result, "deleted", "delete_queue"))

    async def purge_queue(self, name: str) -> int:
        """Delete every message of a queue (ready, in flight, delayed).

        Returns:
            The number of messages purged.

        Raises:
            QueueNotFound: no such queue.
            OutcomeUnknownError: the request may have reached the leader but no answer came.
        """
        result = await self._request("purge_queue", {"name": name}, _Kind.UNSAFE)
        return int(_field(result, "purged", "purge_queue"))

    async def list_queues(self) -> list[str]:
        """Names of all queues, sorted."""
        result = await self._request("list_queues", None, _Kind.READ)
        return list(_field(result, "queues", "list_queues"))

    async def queue_stats(self, name: str) -> dict[str, Any]:
        """Counters of a queue: `ready`, `in_flight`, `delayed`, `messages`, `bytes` (body bytes
        held), `oldest_age_ms`, and lifetime totals `enqueued`, `delivered`, `redelivered`,
        `acked`, `dead_lettered`, `expired`, `purged`, `redriven`.

        Raises:
            QueueNotFound: no such queue.
        """
        result = await self._request("queue_stats", {"name": name}, _Kind.READ)
        if not isinstance(result, dict):
            raise BadFrame(None, f"malformed reply to queue_stats: {result!r:.200}")
        return result

    # -- messages -------------------------------------------------------------------------

    async def send(
        self,
        queue: str,
        body: bytes | str,
        *,
        headers: Mapping[str, str] | None = None,
        dedup_id: str | None = None,
        delay_ms: int | None = None,
        ttl_ms: int | None = None,
        group: str | None = None,
    ) -> SendResult:
        """Enqueue one message. Retried safely: the deduplication id is kept across retries.

        Concurrent sends to the same queue from one client share requests: while
        `_COALESCE_IN_FLIGHT` requests to the queue are in flight, further sends wait and then
        go out together as one `enqueue_batch` (up to 100), like a producer's batching without
        any added delay. Each send still gets its own result or error, in submission order.

        Args:
            queue: the queue name.
            body: the body; `str` is sent as UTF-8.
            headers: str to str, at most 64 entries.
            dedup_id: deduplication id (1 to 128 characters); None makes a fresh uuid4 hex.
            delay_ms: delay before it becomes visible, 0 to 900,000 ms; None: the queue's.
            ttl_ms: time to live from enqueue, in ms; None: only the queue's retention.
            group: message group (FIFO queues), 1 to 128 characters.

        Returns:
            The message id, whether it was a duplicate, and the deduplication id used.

        Raises:
            QueueNotFound: no such queue.
            MessageTooLarge: body plus headers over the queue's `max_message_bytes`.
            QueueFull: the queue is at `max_length` or `max_length_bytes` and rejects new
                messages (or the body alone is larger than `max_length_bytes`).
            OutcomeUnknownError: the deadline passed after an attempt may have enqueued it;
                `dedup_ids` holds the id to send again with.
        """
        msg = _message_args(body, headers, dedup_id, delay_ms, ttl_ms, group)
        if not self.coalesce_sends:
            return await self._send_one(queue, msg)
        co = self._coalescers.get(queue)
        if co is None:
            co = self._coalescers[queue] = _SendCoalescer()
        if co.in_flight < _COALESCE_IN_FLIGHT and not co.pending:
            co.in_flight += 1  # nothing to share with: go straight out
            try:
                return await self._send_one(queue, msg)
            finally:
                co.in_flight -= 1
                self._flush_sends(queue, co)
        slot = _PendingSend(msg)
        co.pending.append(slot)
        try:
            await slot.done.wait()
        finally:
            if not slot.taken:  # cancelled while waiting: it was never sent
                co.pending.remove(slot)
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    async def _send_one(self, queue: str, msg: dict[str, Any]) -> SendResult:
        result = await self._request(
            "enqueue", {"queue": queue, **msg}, _Kind.IDEMPOTENT, dedup_ids=(msg["dedup_id"],)
        )
        return SendResult(
            int(_field(result, "message_id", "enqueue")),
            bool(_field(result, "duplicate", "enqueue")),
            msg["dedup_id"],
        )

    def _flush_sends(self, queue: str, co: _SendCoalescer) -> None:
        """Start `enqueue_batch` requests for waiting sends while request slots are free."""
        while co.pending and co.in_flight < _COALESCE_IN_FLIGHT and self._nursery is not None:
            batch, co.pending = co.pending[:_MAX_BATCH], co.pending[_MAX_BATCH:]
            for slot in batch:
                slot.taken = True
            co.in_flight += 1
            self._nursery.start_soon(self._send_coalesced, queue, co, batch)

    async def _send_coalesced(
        self, queue: str, co: _SendCoalescer, batch: list[_PendingSend]
    ) -> None:
        try:
            if len(batch) == 1:
                await self._settle_one(queue, batch[0])
                return
            ids = tuple(slot.msg["dedup_id"] for slot in batch)
            try:
                result = await self._request(
                    "enqueue_batch", {"queue": queue, "messages": [s.msg for s in batch]},
                    _Kind.IDEMPOTENT, dedup_ids=ids,
                )
                results = _field(result, "results", "enqueue_batch")
                for slot, r in zip(batch, results, strict=True):
                    slot.settle(SendResult(int(r["message_id"]), bool(r["duplicate"]),
                                           slot.msg["dedup_id"]), None)
            except (MessageTooLarge, QueueFull, BadRequest):
                # All or nothing refused the batch for some message: find out which, one by one.
                for slot in batch:
                    await self._settle_one(queue, slot)
            except OutcomeUnknownError as exc:
                for slot in batch:
                    slot.settle(None, OutcomeUnknownError(
                        exc.code, exc.message, op="enqueue", dedup_ids=(slot.msg["dedup_id"],)))
            except RaftqError as exc:
                for slot in batch:
                    slot.settle(None, exc)
        except BaseException as exc:  # cancelled with the client: tell every waiter
            for slot in batch:
                slot.settle(None, ClusterUnavailable(None, f"send not completed: {exc!r}"))
            raise
        finally:
            co.in_flight -= 1
            self._flush_sends(queue, co)

    async def _settle_one(self, queue: str, slot: _PendingSend) -> None:
        try:
            slot.settle(await self._send_one(queue, slot.msg), None)
        except RaftqError as exc:
            slot.settle(None, exc)

    async def send_batch(
        self, queue: str, messages: Iterable[bytes | str | OutgoingMessage | Mapping[str, Any]]
    ) -> list[SendResult]:
        """Enqueue 1 to 100 messages atomically (all or nothing), retried like `send`.

        Args:
            queue: the queue name.
            messages: bodies, `OutgoingMessage`s, or maps with the keys of `OutgoingMessage`.
                Each gets a deduplication id unless it has one.

        Returns:
            One `SendResult` per message, in order.

        Raises:
            BatchTooLarge: more than 100 messages.
            QueueNotFound, MessageTooLarge, QueueFull: as `send`; nothing was enqueued.
            OutcomeUnknownError: as `send`, with every deduplication id in `dedup_ids`.
        """
        specs = []
        for m in messages:
            if isinstance(m, OutgoingMessage):
                specs.append(
                    _message_args(m.body, m.headers, m.dedup_id, m.delay_ms, m.ttl_ms, m.group)
                )
            elif isinstance(m, Mapping):
                unknown = set(m) - {"body", "headers", "dedup_id", "delay_ms", "ttl_ms", "group"}
                if unknown or "body" not in m:
                    raise TypeError(f"send_batch: bad message keys {sorted(m)}")
                specs.append(
                    _message_args(
                        m["body"], m.get("headers"), m.get("dedup_id"), m.get("delay_ms"),
                        m.get("ttl_ms"), m.get("group"),
                    )
                )
            else:
                specs.append(_message_args(m, None, None, None, None, None))
        ids = tuple(s["dedup_id"] for s in specs)
        result = await self._request(
            "enqueue_batch", {"queue": queue, "messages": specs}, _Kind.IDEMPOTENT, dedup_ids=ids
        )
        results = _field(result, "results", "enqueue_batch")
        return [
            SendResult(int(r["message_id"]), bool(r["duplicate"]), d)
            for r, d in zip(results, ids, strict=True)
        ]

    async def receive(
        self,
        queue: str,
        *,
        max_messages: int = 1,
        wait_s: float = 0.0,
        visibility_timeout_ms: int | None = None,
        consumer: str | None = None,
    ) -> list[Message]:
        """Receive up to `max_messages` messages and lease them.

        A leased message is invisible to other receivers until its lease ends (then it is
        delivered again); ack it to delete it. Not retried once the request may have reached
        the leader (a retry could lease more messages).

        Args:
            queue: the queue name.
            max_messages: 1 to 100.
            wait_s: long poll: wait up to this many seconds (0 to 20) for a message.
            visibility_timeout_ms: lease length in ms (0 to 12 h); None: the queue's.
            consumer: consumer name (informational); default the client's `consumer_id`.

        Returns:
            The messages (empty when none became visible in time).

        Raises:
            QueueNotFound: no such queue.
            OutcomeUnknownError: messages may have been leased but the answer was lost; they
                become visible again when their lease ends.
        """
        args: dict[str, Any] = {
            "queue": queue,
            "consumer": consumer or self.consumer_id,
            "max_messages": max_messages,
        }
        if visibility_timeout_ms is not None:
            args["visibility_timeout_ms"] = visibility_timeout_ms
        if wait_s > 0:
            args["wait_ms"] = int(math.ceil(wait_s * 1000))
        result = await self._request("receive", args, _Kind.UNSAFE, extra_s=max(0.0, wait_s))
        return [_message_from_wire(queue, m) for m in _field(result, "messages", "receive")]

    async def ack(self, queue: str, receipts: str | Iterable[str]) -> AckResult:
        """Delete received messages by their receipts (1 to 100).

        Returns:
            The number acked and the receipts refused (when at least one was valid).

        Raises:
            InvalidReceipt: no receipt was valid (leases ended, or already acked).
            QueueNotFound: no such queue.
            OutcomeUnknownError: the request may have reached the leader but no answer came.
        """
        items = [receipts] if isinstance(receipts, str) else list(receipts)
        result = await self._request("ack", {"queue": queue, "receipts": items}, _Kind.UNSAFE)
        return AckResult(
            int(_field(result, "acked", "ack")), list(_field(result, "invalid", "ack"))
        )

    async def nack(
        self, queue: str, receipt: str, *, delay_ms: int = 0, reject: bool = False
    ) -> str:
        """End a lease early: the message is ready again (in its place) or delayed.

        Args:
            queue: the queue name.
            receipt: the receipt of the delivery.
            delay_ms: make it visible again only after this many ms (0 to 900,000).
            reject: dead-letter it at once (reason `rejected`) instead.

        Returns:
            The message's new state: "ready", "delayed" or "dead_lettered".

        Raises:
            InvalidReceipt: the receipt is stale.
            QueueNotFound: no such queue.
            OutcomeUnknownError: the request may have reached the leader but no answer came.
        """
        args: dict[str, Any] = {"queue": queue, "receipt": receipt}
        if delay_ms:
            args["delay_ms"] = delay_ms
        if reject:
            args["reject"] = True
        result = await self._request("nack", args, _Kind.UNSAFE)
        return str(_field(result, "state", "nack"))

    async def change_visibility(self, queue: str, receipt: str, timeout_ms: int) -> int:
        """Set a lease to end `timeout_ms` from now (extend it for long work, or 0 to end it).

        Returns:
            When the message becomes visible again, in ms on the leader's clock.

        Raises:
            InvalidReceipt: the receipt is stale (the lease already ended).
            QueueNotFound: no such queue.
            OutcomeUnknownError: the request may have reached the leader but no answer came.
        """
        result = await self._request(
            "change_visibility",
            {"queue": queue, "receipt": receipt, "timeout_ms": timeout_ms},
            _Kind.UNSAFE,
        )
        return int(_field(result, "visible_at_ms", "change_visibility"))

    async def redrive(
        self, dlq: str, target: str | None = None, *, max_messages: int | None = None
    ) -> RedriveResult:
        """Move ready messages of a dead-letter queue back (oldest first).

        Args:
            dlq: the dead-letter queue.
            target: where to move them; None: each to the queue named by its `x-death-queue`.
            max_messages: at most this many (1 to 10,000; default 1,000). Call again while
                `moved` is not 0.

        Raises:
            QueueNotFound: `dlq` or `target` does not exist.
            OutcomeUnknownError: the request may have reached the leader but no answer came.
        """
        args: dict[str, Any] = {"dlq": dlq}
        if target is not None:
            args["target"] = target
        if max_messages is not None:
            args["max_messages"] = max_messages
        result = await self._request("redrive", args, _Kind.UNSAFE)
        return RedriveResult(
            int(_field(result, "moved", "redrive")), int(_field(result, "remaining", "redrive"))
        )

    # -- topics ---------------------------------------------------------------------------

    async def create_topic(self, name: str) -> bool:
        """Create a topic (idempotent). Returns True when created, False when it existed."""
        result = await self._request("create_topic", {"name": name}, _Kind.IDEMPOTENT)
        return bool(_field(result, "created", "create_topic"))

    async def delete_topic(self, name: str) -> None:
        """Delete a topic.

        Raises:
            TopicNotFound: no such topic.
            OutcomeUnknownError: the request may have reached the leader but no answer came.
        """
        await self._request("delete_topic", {"name": name}, _Kind.UNSAFE)

    async def list_topics(self) -> dict[str, list[str]]:
        """Topics (sorted) with their subscribed queues (in subscription order)."""
        result = await self._request("list_topics", None, _Kind.READ)
        return {
            str(t["name"]): list(t.get("queues") or [])
            for t in _field(result, "topics", "list_topics")
        }

    async def subscribe(self, topic: str, queue: str) -> bool:
        """Subscribe a queue to a topic (idempotent). Returns True when new.

        Raises:
            TopicNotFound: no such topic.
            QueueNotFound: no such queue.
        """
        result = await self._request(
            "subscribe", {"topic": topic, "queue": queue}, _Kind.IDEMPOTENT
        )
        return bool(_field(result, "subscribed", "subscribe"))

    async def unsubscribe(self, topic: str, queue: str) -> bool:
        """Unsubscribe a queue from a topic (idempotent). Returns True when it was subscribed.

        Raises:
            TopicNotFound: no such topic.
        """
        result = await self._request(
            "unsubscribe", {"topic": topic, "queue": queue}, _Kind.IDEMPOTENT
        )
        return bool(_field(result, "unsubscribed", "unsubscribe"))

    async def publish(
        self,
        topic: str,
        body: bytes | str,
        *,
        headers: Mapping[str, str] | None = None,
        dedup_id: str | None = None,
        delay_ms: int | None = None,
        ttl_ms: int | None = None,
        group: str | None = None,
    ) -> PublishResult:
        """Enqueue a copy of a message into every queue subscribed to `topic`.

        Arguments as `send`; the deduplication id is applied per queue and kept across
        retries. Per-queue failures (e.g. `QUEUE_FULL`) are reported in the results, not
        raised.

        Raises:
            TopicNotFound: no such topic.
            OutcomeUnknownError: as `send`.
        """
        msg = _message_args(body, headers, dedup_id, delay_ms, ttl_ms, group)
        result = await self._request(
            "publish", {"topic": topic, **msg}, _Kind.IDEMPOTENT, dedup_ids=(msg["dedup_id"],)
        )
        return PublishResult(
            topic=str(_field(result, "topic", "publish")),
            dedup_id=msg["dedup_id"],
            results=[
                PublishQueueResult(
                    queue=r["queue"],
                    message_id=r.get("message_id"),
                    duplicate=bool(r.get("duplicate")),
                    error=r.get("error"),
                )
                for r in _field(result, "results", "publish")
            ],
        )

    # -- consumer -------------------------------------------------------------------------

    async def consume(
        self,
        queue: str,
        handler: Callable[[Message], Awaitable[object]],
        *,
        concurrency: int = 1,
        visibility_timeout_ms: int = 30_000,
        wait_s: float = 20.0,
        max_messages: int | None = None,
        stop: trio.Event | None = None,
        consumer: str | None = None,
        extend_every_s: float | None = None,
    ) -> ConsumeStats:
        """Receive messages and run `handler` on each, until `stop` is set (or cancelled).

        Each message is leased for `visibility_timeout_ms`; while its handler runs the lease is
        extended (`change_visibility`) every `extend_every_s`. When the handler returns, the
        message is acked; when it raises an `Exception`, it is nacked (visible again at once)
        and the error is logged. Delivery is at least once: a message whose ack fails, or whose
        lease ends, is delivered again.

        When `stop` is set, no new receive starts (a long poll in progress is cancelled: a
        message it may have leased comes back after its visibility timeout), the running
        handlers finish, and `consume` returns.

        Args:
            queue: the queue name.
            handler: `async def handler(message)`.
            concurrency: most handlers running at once, >= 1.
            visibility_timeout_ms: the lease asked for each message, > 0 ms.
            wait_s: long-poll time of each receive, 0 to 20 s.
            max_messages: most messages per receive (1 to 100); default `concurrency` (at most
                100). A receive never asks for more than the free handler slots.
            stop: set it to stop consuming.
            consumer: consumer name; default the client's `consumer_id`.
            extend_every_s: lease extension period in seconds; default a third of the lease.

        Returns:
            Counters of what was done.

        Raises:
            QueueNotFound: no such queue (or it was deleted meanwhile).
            ValueError: a bad `concurrency` or `visibility_timeout_ms`.
            RaftqError: another error that retrying would not cure (e.g. `BadRequest`).
                Unknown outcomes and unavailability are logged and retried.
        """
        if concurrency < 1:
            raise ValueError("consume: concurrency must be >= 1")
        if visibility_timeout_ms <= 0:
            raise ValueError("consume: visibility_timeout_ms must be > 0")
        per_receive = max(1, min(max_messages or concurrency, 100))
        period_s = extend_every_s or max(visibility_timeout_ms / 3000.0, 0.01)
        stats = ConsumeStats()
        slots = trio.Semaphore(concurrency)
        fatal: list[BaseException] = []

        async def fetch(handlers: trio.Nursery) -> None:
            failures = 0
            while True:
                await slots.acquire()
                free = 1
                while free < per_receive:
                    try:
                        slots.acquire_nowait()
                    except trio.WouldBlock:
                        break
                    free += 1
                try:
                    messages = await self.receive(
                        queue,
                        max_messages=free,
                        wait_s=wait_s,
                        visibility_timeout_ms=visibility_timeout_ms,
                        consumer=consumer,
                    )
                    failures = 0
                except (OutcomeUnknownError, ClusterUnavailable, Unavailable, Busy) as exc:
                    for _ in range(free):
                        slots.release()
                    failures += 1
                    log.warning("raftq consume %s: receive failed, retrying: %s", queue, exc)
                    await trio.sleep(min(5.0, 0.1 * 2 ** min(failures, 6)))
                    continue
                except BaseException:
                    for _ in range(free):
                        slots.release()
                    raise
                for _ in range(free - len(messages)):
                    slots.release()
                for m in messages:
                    handlers.start_soon(self._handle_one, m, handler, visibility_timeout_ms,
                                        period_s, stats, slots)

        async def stop_watch(scope: trio.CancelScope) -> None:
            assert stop is not None
            await stop.wait()
            scope.cancel()

        async with trio.open_nursery() as handlers:
            async with trio.open_nursery() as fetching:
                if stop is not None:
                    fetching.start_soon(stop_watch, fetching.cancel_scope)
                try:
                    await fetch(handlers)
                except RaftqError as exc:
                    fatal.append(exc)
                    handlers.cancel_scope.cancel()
                fetching.cancel_scope.cancel()
        if fatal:
            raise fatal[0]
        return stats

    async def _handle_one(
        self,
        m: Message,
        handler: Callable[[Message], Awaitable[object]],
        visibility_timeout_ms: int,
        period_s: float,
        stats: ConsumeStats,
        slots: trio.Semaphore,
    ) -> None:
        try:
            ok = False
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_leased, m, visibility_timeout_ms, period_s, stats)
                try:
                    await handler(m)
                    ok = True
                except Exception:
                    log.exception(
                        "raftq consume %s: handler failed on message %s; nacking",
                        m.queue, m.message_id,
                    )
                nursery.cancel_scope.cancel()
            try:
                if ok:
                    stats.handled += 1
                    await self.ack(m.queue, [m.receipt])
                else:
                    stats.failed += 1
                    await self.nack(m.queue, m.receipt)
            except RaftqError as exc:
                stats.ack_errors += 1
                log.warning(
                    "raftq consume %s: %s of message %s failed (%s); it may be delivered again",
                    m.queue, "ack" if ok else "nack", m.message_id, exc,
                )
        finally:
            slots.release()

    async def _keep_leased(
        self, m: Message, visibility_timeout_ms: int, period_s: float, stats: ConsumeStats
    ) -> None:
        while True:
            await trio.sleep(period_s)
            try:
                await self.change_visibility(m.queue, m.receipt, visibility_timeout_ms)
                stats.lease_extensions += 1
            except (InvalidReceipt, QueueNotFound) as exc:
                log.warning(
                    "raftq consume %s: lease of message %s lost (%s)", m.queue, m.message_id, exc
                )
                return
            except RaftqError as exc:  # unknown outcome etc.: try again next period
                log.info("raftq consume %s: lease extension failed: %s", m.queue, exc)


# ---------------------------------------------------------------------------------------------
# Blocking client
# ---------------------------------------------------------------------------------------------

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _blocking(
    afn: Callable[Concatenate[AsyncClient, _P], Awaitable[_R]],
) -> Callable[Concatenate[Client, _P], _R]:
    """Make a blocking `Client` method of an `AsyncClient` coroutine method."""

    def method(self: Client, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return self._run(functools.partial(afn, self._async, *args, **kwargs))

    functools.update_wrapper(method, afn)
    return method


class Client:
    """A blocking client for scripts and threads: the methods of `AsyncClient`, without await.

    It runs an `AsyncClient` on a trio loop in a background thread and calls into it (a
    portal, `trio.from_thread.run`). Any number of threads may use one `Client` at once; their
    calls are multiplexed on the same connections. Use it as a context manager, or call
    `close()`::

        with Client(["127.0.0.1:7001"]) as c:
            c.send("jobs", "hello")

    Do not call it from the trio thread of a handler run by `AsyncClient.consume`; inside
    trio, use `AsyncClient`.
    """

    def __init__(self, servers: str | Iterable[str], **options: Any) -> None:
        """Start the background loop.

        Args:
            servers: node client addresses, as for `AsyncClient`.
            **options: keyword options of `AsyncClient` (`timeout_s`, `connect_timeout_s`, ...).

        Raises:
            ValueError: a bad server address.
        """
        self._async = AsyncClient(servers, **options)
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop_loop: trio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._thread_main, name="raftq-client", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def _thread_main(self) -> None:
        try:
            trio.run(self._loop_main)
        except BaseException as exc:  # surfaced by __init__
            self._startup_error = exc
        finally:
            self._ready.set()

    async def _loop_main(self) -> None:
        async with self._async:
            self._token = trio.lowlevel.current_trio_token()
            self._stop_loop = trio.Event()
            self._ready.set()
            await self._stop_loop.wait()

    def _run(self, afn: Callable[[], Awaitable[_R]]) -> _R:
        if self._closed or self._token is None:
            raise RuntimeError("Client is closed")
        scopes: list[trio.CancelScope] = []

        async def runner() -> _R:
            with trio.CancelScope() as scope:
                scopes.append(scope)
                return await afn()
            raise KeyboardInterrupt  # cancelled from close() or Ctrl-C: only for the caller

        try:
            return trio.from_thread.run(runner, trio_token=self._token)
        except KeyboardInterrupt:
            if scopes and not self._closed:
                with contextlib.suppress(trio.RunFinishedError):
                    trio.from_thread.run_sync(scopes[0].cancel, trio_token=self._token)
            raise

    def close(self) -> None:
        """Close the connections and stop the background thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._token is not None and self._stop_loop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop_loop.set, trio_token=self._token)
        self._thread.join()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def servers(self) -> list[str]:
        """The known node client addresses ("host:port")."""
        return self._async.servers

    @property
    def consumer_id(self) -> str:
        """The consumer name sent with `receive` when none is given."""
        return self._async.consumer_id

    ping = _blocking(AsyncClient.ping)
    node_status = _blocking(AsyncClient.node_status)
    cluster_status = _blocking(AsyncClient.cluster_status)
    transfer_leadership = _blocking(AsyncClient.transfer_leadership)
    members = _blocking(AsyncClient.members)
    add_member = _blocking(AsyncClient.add_member)
    promote_member = _blocking(AsyncClient.promote_member)
    remove_member = _blocking(AsyncClient.remove_member)

    def create_queue(self, name: str, **options: Any) -> bool:
        """Create a queue; see `AsyncClient.create_queue`."""
        return self._run(functools.partial(self._async.create_queue, name, **options))

    delete_queue = _blocking(AsyncClient.delete_queue)
    purge_queue = _blocking(AsyncClient.purge_queue)
    list_queues = _blocking(AsyncClient.list_queues)
    queue_stats = _blocking(AsyncClient.queue_stats)
    send = _blocking(AsyncClient.send)
    send_batch = _blocking(AsyncClient.send_batch)
    receive = _blocking(AsyncClient.receive)
    ack = _blocking(AsyncClient.ack)
    nack = _blocking(AsyncClient.nack)
    change_visibility = _blocking(AsyncClient.change_visibility)
    redrive = _blocking(AsyncClient.redrive)
    create_topic = _blocking(AsyncClient.create_topic)
    delete_topic = _blocking(AsyncClient.delete_topic)
    list_topics = _blocking(AsyncClient.list_topics)
    subscribe = _blocking(AsyncClient.subscribe)
    unsubscribe = _blocking(AsyncClient.unsubscribe)
    publish = _blocking(AsyncClient.publish)

    def consume(
        self,
        queue: str,
        handler: Callable[[Message], object],
        *,
        concurrency: int = 1,
        visibility_timeout_ms: int = 30_000,
        wait_s: float = 20.0,
        max_messages: int | None = None,
        stop: threading.Event | None = None,
        consumer: str | None = None,
        extend_every_s: float | None = None,
    ) -> ConsumeStats:
        """Run a blocking `handler(message)` on each message, in worker threads, until `stop`.

        As `AsyncClient.consume` (ack on return, nack on exception, lease extended while the
        handler runs), with a plain function run in up to `concurrency` worker threads and a
        `threading.Event` to stop. Blocks the calling thread; Ctrl-C stops it too.

        Raises:
            QueueNotFound: no such queue.
            ValueError: a bad `concurrency` or `visibility_timeout_ms`.
        """
        limiter_box: list[trio.CapacityLimiter] = []

        async def run_handler(m: Message) -> None:
            await trio.to_thread.run_sync(handler, m, limiter=limiter_box[0])

        async def run() -> ConsumeStats:
            limiter_box.append(trio.CapacityLimiter(concurrency))
            done = trio.Event()
            outcome: list[ConsumeStats] = []
            failure: list[Exception] = []
            async with trio.open_nursery() as nursery:
                if stop is not None:

                    async def poll_stop() -> None:
                        while not stop.is_set():
                            await trio.sleep(0.05)
                        done.set()

                    nursery.start_soon(poll_stop)
                try:  # raise outside the nursery, or the error would come in an ExceptionGroup
                    outcome.append(
                        await self._async.consume(
                            queue,
                            run_handler,
                            concurrency=concurrency,
                            visibility_timeout_ms=visibility_timeout_ms,
                            wait_s=wait_s,
                            max_messages=max_messages,
                            stop=done,
                            consumer=consumer,
                            extend_every_s=extend_every_s,
                        )
                    )
                except Exception as exc:
                    failure.append(exc)
                nursery.cancel_scope.cancel()
            if failure:
                raise failure[0]
            return outcome[0]

        return self._run(run)

