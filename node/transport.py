"""trio TCP between nodes: authenticated connections carrying Raft messages as cbor2 frames.

Each node dials every peer and sends on that connection only; it receives on the connections its
peers dial to it. So per pair of nodes there are two TCP connections, one per direction. The
peers change with the cluster's membership (`set_peers`: node/main.py calls it whenever the
membership changes); a node may connect when it is a peer or one of the other ids accepted
(`accept`: the node passes the members and the configuration file's nodes, so that a node
being admitted can connect before this one dials it).

- Sending: `Transport.send(msg)` never blocks. It encodes the message and puts the frame on the
  peer's bounded queue (a trio memory channel); when the queue is full (by messages or bytes) or
  the peer is unknown, the message is dropped and counted: Raft retries. One sender task per peer
  connects, reconnects with exponential backoff and jitter, and writes everything queued at that
  moment (up to `COALESCE_BYTES`) with one `send_all` (trio does not buffer writes).
- Handshake, before any Raft frame, on every connection (the secret never goes on the wire):

      client -> hello     {cluster_id, node_id, nonce}                       nonce_c
      server -> challenge {cluster_id, node_id, nonce, mac}                  nonce_s, mac_s
      client -> auth      {mac}                                              mac_c
      server -> ok        {}

  with mac_X = HMAC-SHA256(secret, "raftq-transport-v1" | CBOR([X, cluster_id, client_id,
  server_id, nonce_c, nonce_s])) and X = "server" or "client". Either side may answer
  `error {code, message}` and close. A wrong cluster id, a node id not accepted, a bad MAC, a
  malformed frame or a timeout closes the connection with one warning on logger
  `raftq.transport`. Frames before authentication are limited to `HANDSHAKE_MAX_FRAME_BYTES`.
- Receiving: frames are decoded with `FrameDecoder` and `decode_raft_message`; a message must be
  addressed to this node and come from the authenticated peer. Any wire error closes that
  connection only; the listener keeps serving the others.

Every task lives in the nursery of `Transport.run`; cancelling it closes everything.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import secrets
from collections.abc import Callable, Collection, Mapping
from typing import Any

import cbor2
import trio

from node.codec import (
    MAX_FRAME_BYTES,
    FrameDecoder,
    WireError,
    decode_raft_message,
    encode_frame,
    encode_raft_message,
)
from node.raft._types import Message

__all__ = [
    "COALESCE_BYTES",
    "HANDSHAKE_MAX_FRAME_BYTES",
    "Backoff",
    "HandshakeError",
    "Transport",
    "client_handshake",
    "server_handshake",
]

logger = logging.getLogger("raftq.transport")

PROTOCOL = b"raftq-transport-v1"
"""Domain separation prefix of the handshake MACs."""

HANDSHAKE_MAX_FRAME_BYTES = 4096
"""Largest frame accepted from a peer before it has authenticated."""

COALESCE_BYTES = 256 * 1024
"""A sender writes at most about this many bytes of queued frames per `send_all`."""

RECEIVE_BYTES = 256 * 1024
"""Largest read from a socket at once."""

NONCE_BYTES = 32
_MIN_NONCE_BYTES = 16
_MAX_NONCE_BYTES = 64
_MAX_REMOTE_TEXT = 200


class HandshakeError(WireError):
    """The handshake of a connection failed; the connection must be closed.

    Codes: `WRONG_CLUSTER`, `UNKNOWN_NODE`, `WRONG_NODE`, `BAD_MAC`, `BAD_HANDSHAKE`, `CLOSED`.

    Attributes:
        remote: True when the peer reported the error (an `error` frame), False when this side
            detected it.
    """

    def __init__(self, code: str, message: str, *, remote: bool = False) -> None:
        super().__init__(code, message)
        self.remote = remote


class Backoff:
    """Exponential backoff with jitter, for reconnecting.

    Delays double from `min_s` up to `max_s`; each returned delay is drawn uniformly from
    [delay / 2, delay] ("equal jitter", after the AWS Architecture Blog's "Exponential Backoff
    and Jitter", 2015) so that peers restarting together do not retry in lockstep.
    """

    def __init__(self, min_s: float = 0.05, max_s: float = 1.0, rng: random.Random | None = None):
        """Create a backoff at its minimum delay.

        Args:
            min_s: first delay, seconds, > 0.
            max_s: largest delay, seconds, >= min_s.
            rng: source of jitter (a fresh `random.Random()` by default).
        """
        self.min_s = min_s
        self.max_s = max_s
        self._rng = rng if rng is not None else random.Random()
        self._delay_s = min_s

    def next_delay_s(self) -> float:
        """Return the next delay, in seconds, and double the one after (up to `max_s`)."""
        delay = self._delay_s
        self._delay_s = min(self.max_s, delay * 2)
        return delay / 2 + self._rng.random() * delay / 2

    def reset(self) -> None:
        """Start again from `min_s` (after a successful connection)."""
        self._delay_s = self.min_s


# ---------------------------------------------------------------------------------------------
# Handshake
# ---------------------------------------------------------------------------------------------


def _mac(
    secret: bytes,
    role: str,
    cluster_id: str,
    client_id: int,
    server_id: int,
    nonce_c: bytes,
    nonce_s: bytes,
) -> bytes:
    transcript = cbor2.dumps([role, cluster_id, client_id, server_id, nonce_c, nonce_s])
    return hmac.new(secret, PROTOCOL + transcript, hashlib.sha256).digest()


def _clip(text: object) -> str:
    out = str(text)
    return out if len(out) <= _MAX_REMOTE_TEXT else out[:_MAX_REMOTE_TEXT] + "..."


async def _receive_frame(stream: trio.abc.ReceiveStream, decoder: FrameDecoder) -> object:
    while True:
        frame = decoder.next_frame()
        if frame is not None:
            return frame
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            raise HandshakeError("CLOSED", "connection closed during the handshake")
        decoder.feed(data)


_FIELD_TYPES: dict[str, type] = {
    "cluster_id": str,
    "node_id": int,
    "nonce": bytes,
    "mac": bytes,
}


async def _receive_handshake(
    stream: trio.abc.ReceiveStream, decoder: FrameDecoder, expected: str, *fields: str
) -> dict[str, Any]:
    """Receive a handshake frame of type `expected` holding `fields` (types as _FIELD_TYPES)."""
    frame = await _receive_frame(stream, decoder)
    if type(frame) is not dict:
        raise HandshakeError("BAD_HANDSHAKE", f"expected a {expected} map, got {_clip(frame)}")
    kind = frame.get("type")
    if kind == "error":
        raise HandshakeError(
            _clip(frame.get("code", "ERROR")), _clip(frame.get("message", "")), remote=True
        )
    if kind != expected:
        raise HandshakeError("BAD_HANDSHAKE", f"expected {expected}, got {_clip(kind)}")
    for name in fields:
        value = frame.get(name)
        if type(value) is not _FIELD_TYPES[name]:
            raise HandshakeError("BAD_HANDSHAKE", f"{expected}.{name} is {_clip(repr(value))}")
    if "nonce" in fields and not _MIN_NONCE_BYTES <= len(frame["nonce"]) <= _MAX_NONCE_BYTES:
        raise HandshakeError("BAD_HANDSHAKE", f"nonce of {len(frame['nonce'])} bytes")
    return frame


async def _refuse(stream: trio.abc.SendStream, code: str, message: str) -> HandshakeError:
    """Tell the peer why (best effort) and return the error to raise."""
    try:
        await stream.send_all(encode_frame({"type": "error", "code": code, "message": message}))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    return HandshakeError(code, message)


async def client_handshake(
    stream: trio.abc.Stream,
    decoder: FrameDecoder,
    *,
    cluster_id: str,
    node_id: int,
    secret: bytes,
    peer_id: int,
) -> None:
    """Authenticate a connection this node dialed to `peer_id` (see the module docstring).

    The caller bounds it in time (e.g. `trio.fail_after`).

    Args:
        stream: the new connection.
        decoder: decoder for frames from the peer (limit `HANDSHAKE_MAX_FRAME_BYTES`).
        cluster_id: this node's cluster.
        node_id: this node's id.
        secret: the cluster's shared secret.
        peer_id: the node expected at the other end.

    Raises:
        HandshakeError: the peer refused us, or is in another cluster, is another node, or
            failed to prove it knows the secret (`BAD_MAC`), or broke the protocol.
        WireError: a frame could not be decoded.
        trio.BrokenResourceError: the connection broke.
    """
    nonce_c = secrets.token_bytes(NONCE_BYTES)
    hello = {"type": "hello", "cluster_id": cluster_id, "node_id": node_id, "nonce": nonce_c}
    await stream.send_all(encode_frame(hello))
    challenge = await _receive_handshake(stream, decoder, "challenge", *_FIELD_TYPES)
    if challenge["cluster_id"] != cluster_id:
        raise await _refuse(
            stream,
            "WRONG_CLUSTER",
            f"peer is in cluster {_clip(challenge['cluster_id'])!r}, not {cluster_id!r}",
        )
    if challenge["node_id"] != peer_id:
        raise await _refuse(
            stream, "WRONG_NODE", f"peer is node {challenge['node_id']}, expected {peer_id}"
        )
    nonce_s = challenge["nonce"]
    expected = _mac(secret, "server", cluster_id, node_id, peer_id, nonce_c, nonce_s)
    if not hmac.compare_digest(challenge["mac"], expected):
        raise await _refuse(stream, "BAD_MAC", "server MAC does not verify (wrong secret?)")
    mac_c = _mac(secret, "client", cluster_id, node_id, peer_id, nonce_c, nonce_s)
    await stream.send_all(encode_frame({"type": "auth", "mac": mac_c}))
    await _receive_handshake(stream, decoder, "ok")


async def server_handshake(
    stream: trio.abc.Stream,
    decoder: FrameDecoder,
    *,
    cluster_id: str,
    node_id: int,
    secret: bytes,
    known_peers: Collection[int],
) -> int:
    """Authenticate a connection a peer dialed to this node (see the module docstring).

    The caller bounds it in time (e.g. `trio.fail_after`).

    Args:
        stream: the accepted connection.
        decoder: decoder for frames from the peer (limit `HANDSHAKE_MAX_FRAME_BYTES`).
        cluster_id: this node's cluster.
        node_id: this node's id.
        secret: the cluster's shared secret.
        known_peers: node ids allowed to connect.

    Returns:
        The authenticated peer's node id.

    Raises:
        HandshakeError: the peer is in another cluster (`WRONG_CLUSTER`), is not a known peer
            (`UNKNOWN_NODE`), failed to prove it knows the secret (`BAD_MAC`), refused us, or
            broke the protocol.
        WireError: a frame could not be decoded.
        trio.BrokenResourceError: the connection broke.
    """
    hello = await _receive_handshake(stream, decoder, "hello", "cluster_id", "node_id", "nonce")
    if hello["cluster_id"] != cluster_id:
        raise await _refuse(
            stream,
            "WRONG_CLUSTER",
            f"peer claims cluster {_clip(hello['cluster_id'])!r}, this is {cluster_id!r}",
        )
    peer_id: int = hello["node_id"]
    if peer_id not in known_peers or peer_id == node_id:
        raise await _refuse(stream, "UNKNOWN_NODE", f"node {peer_id} is not a peer of {node_id}")
    nonce_c = hello["nonce"]
    nonce_s = secrets.token_bytes(NONCE_BYTES)
    mac_s = _mac(secret, "server", cluster_id, peer_id, node_id, nonce_c, nonce_s)
    challenge = {
        "type": "challenge",
        "cluster_id": cluster_id,
        "node_id": node_id,
        "nonce": nonce_s,
        "mac": mac_s,
    }
    await stream.send_all(encode_frame(challenge))
    auth = await _receive_handshake(stream, decoder, "auth", "mac")
    expected = _mac(secret, "client", cluster_id, peer_id, node_id, nonce_c, nonce_s)
    if not hmac.compare_digest(auth["mac"], expected):
        raise await _refuse(
            stream, "BAD_MAC", f"node {peer_id}'s MAC does not verify (wrong secret?)"
        )
    await stream.send_all(encode_frame({"type": "ok"}))
    return peer_id


# ---------------------------------------------------------------------------------------------
# Transport
# ---------------------------------------------------------------------------------------------


def _address_of(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


class _Peer:
    """One peer: its address, outbound queue, sender task scope and connection state."""

    def __init__(self, node_id: int, address: tuple[str, int], capacity: int) -> None:
        self.node_id = node_id
        self.address = address
        self.queue_send, self.queue_receive = trio.open_memory_channel[bytes](capacity)
        self.queued_bytes = 0
        self.cancel_scope = trio.CancelScope()
        self.connected = False
        self.connected_event = trio.Event()
        self.inbound_scopes: set[trio.CancelScope] = set()

    def set_connected(self, connected: bool) -> None:
        self.connected = connected
        if connected:
            self.connected_event.set()
        elif self.connected_event.is_set():
            self.connected_event = trio.Event()

    def stop(self) -> None:
        self.cancel_scope.cancel()
        for scope in self.inbound_scopes:
            scope.cancel()
        self.queue_send.close()


class Transport:
    """TCP links to the other nodes of a cluster, carrying Raft messages.

    Call `await nursery.start(transport.run)`; then `send` queues messages to peers and
    received messages arrive on the `inbound` channel.
    """

    def __init__(
        self,
        node_id: int,
        cluster_id: str,
        secret: bytes,
        listen: tuple[str, int],
        peers: Mapping[int, tuple[str, int]],
        inbound: trio.MemorySendChannel[Message],
        max_frame_bytes: int = MAX_FRAME_BYTES,
        *,
        queue_capacity: int = 4096,
        queue_max_bytes: int = 256 * 1024 * 1024,
        handshake_timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        backoff_min_s: float = 0.05,
        backoff_max_s: float = 1.0,
        on_peer_lost: Callable[[int], None] | None = None,
        accept: Collection[int] = (),
    ) -> None:
        """Configure the transport; nothing starts before `run`.

        Args:
            node_id: this node's id, >= 1.
            cluster_id: the cluster's id; peers in another cluster are refused.
            secret: the cluster's shared secret (at least 16 bytes advised); never sent.
            listen: (host, port) to listen on; port 0 picks a free port (see
                `listen_address`).
            peers: node id -> (host, port) of the other nodes (this node's own id is ignored).
            inbound: where received messages go; the transport waits when it is full.
            max_frame_bytes: largest frame accepted from an authenticated peer.
            queue_capacity: messages queued per peer before `send` drops.
            queue_max_bytes: encoded bytes queued per peer before `send` drops.
            handshake_timeout_s: time allowed for a handshake, seconds.
            connect_timeout_s: time allowed for a TCP connect, seconds.
            backoff_min_s: first reconnection delay, seconds.
            backoff_max_s: largest reconnection delay, seconds.
            on_peer_lost: called with a peer's id when its authenticated connection to this
                node closes or breaks (not when this transport shuts down).
            accept: more node ids allowed to connect to this node, besides `peers` (e.g. a
                node being admitted that this one does not dial yet).
        """
        self.node_id = node_id
        self._on_peer_lost = on_peer_lost
        self.cluster_id = cluster_id
        self._secret = secret
        self._listen = listen
        self._inbound = inbound
        self._max_frame_bytes = max_frame_bytes
        self._queue_capacity = queue_capacity
        self._queue_max_bytes = queue_max_bytes
        self._handshake_timeout_s = handshake_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        self._peers: dict[int, _Peer] = {}
        self._nursery: trio.Nursery | None = None
        self._listen_address: tuple[str, int] | None = None
        self._stats = dict.fromkeys(
            (
                "sent",
                "dropped",
                "received",
                "connects",
                "handshake_failures",
                "wire_errors",
                "refused_connections",
            ),
            0,
        )
        for peer_id, address in peers.items():
            if peer_id != node_id:
                self._peers[peer_id] = _Peer(peer_id, address, queue_capacity)
        self._accept: set[int] = {*self._peers, *accept} - {node_id}
        # Inbound connections of accepted nodes that are not (or no longer) dialled peers.
        self._inbound_scopes: dict[int, set[trio.CancelScope]] = {}

    # -- public surface -----------------------------------------------------------------------

    @property
    def listen_address(self) -> tuple[str, int]:
        """The (host, port) actually listened on, once `run` has started.

        Raises:
            RuntimeError: `run` has not started yet.
        """
        if self._listen_address is None:
            raise RuntimeError("the transport is not listening yet")
        return self._listen_address

    def peers(self) -> dict[int, tuple[str, int]]:
        """Node id -> (host, port) of the current peers."""
        return {peer_id: peer.address for peer_id, peer in self._peers.items()}

    def stats(self) -> dict[str, Any]:
        """Counters since start, and the peers now, for the node's status.

        Returns:
            `sent` and `received` messages; `dropped` messages (queue full, unknown peer, or
            lost with a broken connection); `connects` (outbound handshakes that succeeded);
            `handshake_failures` (either direction); `wire_errors` (connections closed for a
            bad frame or message); `refused_connections` (subset of handshake failures:
            inbound ones); `queued` messages and `connected_peers` now; `peers` (node id as a
            string -> the "host:port" dialled) and `accepted` (node ids allowed to connect).
        """
        out: dict[str, Any] = dict(self._stats)
        out["queued"] = sum(
            p.queue_send.statistics().current_buffer_used for p in self._peers.values()
        )
        out["connected_peers"] = sum(p.connected for p in self._peers.values())
        out["peers"] = {str(pid): f"{p.address[0]}:{p.address[1]}"
                        for pid, p in sorted(self._peers.items())}
        out["accepted"] = sorted(self._accept)
        return out

    def connected(self, peer_id: int) -> bool:
        """Whether the outbound connection to `peer_id` is up and authenticated."""
        peer = self._peers.get(peer_id)
        return peer is not None and peer.connected

    async def wait_connected(self, peer_id: int) -> None:
        """Wait until the outbound connection to `peer_id` is up and authenticated.

        Raises:
            KeyError: `peer_id` is not a peer.
        """
        peer = self._peers[peer_id]
        while not peer.connected:
            await peer.connected_event.wait()

    def send(self, msg: Message) -> None:
        """Queue `msg` for `msg.to_id`; never blocks. Drops (and counts) it when the peer is
        unknown or its queue is full.

        Args:
            msg: a Raft message.

        Raises:
            TypeError: `msg` is not a Raft message.
        """
        frame = encode_frame(encode_raft_message(msg))
        peer = self._peers.get(msg.to_id)
        if peer is None or peer.queued_bytes + len(frame) > self._queue_max_bytes:
            self._stats["dropped"] += 1
            return
        try:
            peer.queue_send.send_nowait(frame)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self._stats["dropped"] += 1
            return
        peer.queued_bytes += len(frame)

    def accepted(self) -> set[int]:
        """Node ids allowed to connect to this node (the peers and `accept`)."""
        return set(self._accept)

    def set_peers(
        self, peers: Mapping[int, tuple[str, int]], accept: Collection[int] = ()
    ) -> None:
        """Replace the set of peers: stop links to removed (or moved) ones, start new ones.

        Messages queued to a removed peer are dropped; its inbound connections are closed (it
        may connect again while it is still accepted). Does not block: usable from the Raft
        loop's membership callback.

        Args:
            peers: node id -> (host, port) of the nodes to dial (this node's own id is ignored).
            accept: more node ids allowed to connect, besides `peers`; connections of nodes
                no longer accepted are closed.
        """
        wanted = {
            pid: (str(host), int(port))
            for pid, (host, port) in peers.items()
            if pid != self.node_id
        }
        for peer_id, peer in list(self._peers.items()):
            if wanted.get(peer_id) != peer.address:
                peer.stop()
                del self._peers[peer_id]
                host, port = peer.address
                logger.info("node %d: removed peer %d at %s:%d", self.node_id, peer_id, host, port)
        for peer_id, address in wanted.items():
            if peer_id not in self._peers:
                peer = _Peer(peer_id, address, self._queue_capacity)
                self._peers[peer_id] = peer
                host, port = address
                logger.info("node %d: peer %d at %s:%d", self.node_id, peer_id, host, port)
                if self._nursery is not None:
                    self._nursery.start_soon(self._run_peer, peer)
        self._accept = {*wanted, *accept} - {self.node_id}
        for peer_id in [p for p in self._inbound_scopes if p not in self._accept]:
            for scope in self._inbound_scopes.pop(peer_id):
                scope.cancel()

    async def update_peers(
        self, peers: Mapping[int, tuple[str, int]], accept: Collection[int] = ()
    ) -> None:
        """`set_peers`, then a checkpoint (for callers in a task)."""
        self.set_peers(peers, accept)
        await trio.lowlevel.checkpoint()

    async def run(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, and run one sender per peer, until cancelled. Run it once per Transport.

        Args:
            task_status: `started` with the listen (host, port) once listening.

        Raises:
            OSError: the listen address cannot be bound.
        """
        host, port = self._listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        self._listen_address = listeners[0].socket.getsockname()[:2]
        logger.info("node %d: listening on %s:%d", self.node_id, *self._listen_address)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(trio.serve_listeners, self._serve_connection, listeners)
                for peer in self._peers.values():
                    nursery.start_soon(self._run_peer, peer)
                task_status.started(self._listen_address)
        finally:
            self._nursery = None

    # -- outbound -----------------------------------------------------------------------------

    async def _run_peer(self, peer: _Peer) -> None:
        backoff = Backoff(self._backoff_min_s, self._backoff_max_s)
        failures = 0
        with peer.cancel_scope:
            while True:
                if await self._connect_and_pump(peer, quiet=failures > 0):
                    backoff.reset()
                    failures = 0
                else:
                    failures += 1
                await trio.sleep(backoff.next_delay_s())

    async def _connect_and_pump(self, peer: _Peer, *, quiet: bool) -> bool:
        """Connect to `peer`, authenticate, then send its queue until the connection breaks.

        Returns:
            True if the handshake succeeded (the backoff starts over).
        """
        host, port = peer.address
        where = f"peer {peer.node_id} at {host}:{port}"
        try:
            with trio.fail_after(self._connect_timeout_s):
                stream = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            log = logger.debug if quiet else logger.info
            log("node %d: cannot connect to %s: %s; retrying", self.node_id, where, _clip(exc))
            return False
        async with stream:
            decoder = FrameDecoder(HANDSHAKE_MAX_FRAME_BYTES)
            try:
                with trio.fail_after(self._handshake_timeout_s):
                    await client_handshake(
                        stream,
                        decoder,
                        cluster_id=self.cluster_id,
                        node_id=self.node_id,
                        secret=self._secret,
                        peer_id=peer.node_id,
                    )
            except (WireError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                self._stats["handshake_failures"] += 1
                logger.warning(
                    "node %d: handshake with %s failed: %s", self.node_id, where, _describe(exc)
                )
                return False
            self._stats["connects"] += 1
            logger.info("node %d: connected to %s", self.node_id, where)
            peer.set_connected(True)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_outbound, stream, where, nursery.cancel_scope)
                    await self._pump(stream, peer, where, nursery.cancel_scope)
            finally:
                peer.set_connected(False)
        return True

    async def _pump(
        self, stream: trio.SocketStream, peer: _Peer, where: str, scope: trio.CancelScope
    ) -> None:
        """Send queued frames, coalescing what is queued into one write, until an error."""
        receive = peer.queue_receive
        pending = 0
        try:
            while True:
                frame = await receive.receive()
                frames = [frame]
                size = len(frame)
                while size < COALESCE_BYTES:
                    try:
                        frame = receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    frames.append(frame)
                    size += len(frame)
                peer.queued_bytes -= size
                pending = len(frames)
                await stream.send_all(b"".join(frames) if pending > 1 else frames[0])
                self._stats["sent"] += pending
                pending = 0
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel) as exc:
            logger.info("node %d: connection to %s lost: %s", self.node_id, where, _describe(exc))
        finally:
            self._stats["dropped"] += pending
            scope.cancel()

    async def _watch_outbound(
        self, stream: trio.SocketStream, where: str, scope: trio.CancelScope
    ) -> None:
        """Notice at once when the peer closes our outbound connection (it never sends)."""
        try:
            data = await stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.info("node %d: connection to %s lost: %s", self.node_id, where, _describe(exc))
        else:
            if data:
                self._stats["wire_errors"] += 1
                logger.warning(
                    "node %d: %s sent unexpected data on our connection; closing",
                    self.node_id,
                    where,
                )
            else:
                logger.info("node %d: %s closed our connection", self.node_id, where)
        scope.cancel()

    # -- inbound ------------------------------------------------------------------------------

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        """One inbound connection; whatever goes wrong with it never stops the listener."""
        try:
            await self._handle_connection(stream)
        except Exception:
            self._stats["wire_errors"] += 1
            logger.exception("node %d: inbound connection failed", self.node_id)
            await trio.aclose_forcefully(stream)

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        where = _address_of(stream)
        async with stream:
            decoder = FrameDecoder(HANDSHAKE_MAX_FRAME_BYTES)
            try:
                with trio.fail_after(self._handshake_timeout_s):
                    peer_id = await server_handshake(
                        stream,
                        decoder,
                        cluster_id=self.cluster_id,
                        node_id=self.node_id,
                        secret=self._secret,
                        known_peers=self._accept,
                    )
            except (WireError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                self._stats["handshake_failures"] += 1
                self._stats["refused_connections"] += 1
                logger.warning(
                    "node %d: inbound handshake from %s failed: %s",
                    self.node_id,
                    where,
                    _describe(exc),
                )
                return
            if peer_id not in self._accept:  # removed while the handshake ran
                return
            peer = self._peers.get(peer_id)
            # A peer's inbound connections close with it; an accepted node not dialled (one
            # being admitted) has its own set, closed when it is no longer accepted.
            scopes = (
                peer.inbound_scopes if peer is not None
                else self._inbound_scopes.setdefault(peer_id, set())
            )
            where = f"peer {peer_id} at {where}"
            decoder.max_frame_bytes = self._max_frame_bytes
            with trio.CancelScope() as scope:
                scopes.add(scope)
                try:
                    await self._receive_loop(stream, decoder, peer_id, where)
                except WireError as exc:
                    self._stats["wire_errors"] += 1
                    logger.warning(
                        "node %d: closing connection from %s: %s", self.node_id, where, exc
                    )
                except trio.BrokenResourceError as exc:
                    logger.info(
                        "node %d: connection from %s lost: %s", self.node_id, where, _describe(exc)
                    )
                finally:
                    scopes.discard(scope)
                    if not scopes and self._inbound_scopes.get(peer_id) is scopes:
                        del self._inbound_scopes[peer_id]
            if not scope.cancelled_caught and self._on_peer_lost is not None:
                self._on_peer_lost(peer_id)

    async def _receive_loop(
        self, stream: trio.SocketStream, decoder: FrameDecoder, peer_id: int, where: str
    ) -> None:
        inbound = self._inbound
        node_id = self.node_id
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                logger.info("node %d: %s closed its connection", node_id, where)
                return
            decoder.feed(data)
            while (frame := decoder.next_frame()) is not None:
                msg = decode_raft_message(frame)
                if msg.to_id != node_id or msg.from_id != peer_id:
                    raise WireError(
                        "MISADDRESSED",
                        f"{type(msg).__name__} from {msg.from_id} to {msg.to_id} "
                        f"on the connection of node {peer_id} to node {node_id}",
                    )
                try:
                    try:
                        inbound.send_nowait(msg)  # no scheduling round per message
                    except trio.WouldBlock:
                        await inbound.send(msg)  # the node is behind: wait (backpressure)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the node is shutting down
                self._stats["received"] += 1


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, HandshakeError) and exc.remote:
        return f"peer refused: {exc.code}: {exc.message}"
    if isinstance(exc, WireError):
        return f"{exc.code}: {exc.message}"
    cause = exc.__cause__ or exc.__context__
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{text} ({cause})" if cause is not None else text
