"""Transport (node/transport.py) over real loopback TCP, on ephemeral ports."""

from __future__ import annotations

import logging
import random
import socket
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing

from node.codec import FrameDecoder, encode_frame, encode_raft_message
from node.raft._membership import Membership
from node.raft._types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    Index,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    NodeId,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    Term,
    TimeoutNow,
)
from node.transport import (
    HANDSHAKE_MAX_FRAME_BYTES,
    Backoff,
    HandshakeError,
    Transport,
    client_handshake,
    server_handshake,
)

SECRET = b"correct horse battery staple 32b"
CLUSTER = "cluster-a"
LOCALHOST = "127.0.0.1"


# -- helpers ----------------------------------------------------------------------------------


class LogWatch(logging.Handler):
    """Collects `raftq.transport` records; lets a test await one (no sleeping)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._waiters: list[tuple[str, trio.Event]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        text = record.getMessage()
        for substring, event in self._waiters:
            if substring in text:
                event.set()

    def lines(self, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]

    async def wait_for(self, substring: str) -> str:
        event = trio.Event()
        self._waiters.append((substring, event))
        with trio.fail_after(5):
            while True:
                for record in self.records:
                    if substring in record.getMessage():
                        return record.getMessage()
                await event.wait()
                event = trio.Event()
                self._waiters.append((substring, event))


@pytest.fixture
def logs() -> Iterator[LogWatch]:
    watch = LogWatch()
    logger = logging.getLogger("raftq.transport")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(watch)
    yield watch
    logger.removeHandler(watch)
    logger.setLevel(old_level)


@dataclass
class Node:
    transport: Transport
    inbound: trio.MemoryReceiveChannel[Message]

    async def receive(self, timeout_s: float = 5.0) -> Message:
        with trio.fail_after(timeout_s):
            return await self.inbound.receive()


def make_node(node_id: int, *, cluster_id: str = CLUSTER, secret: bytes = SECRET,
              port: int = 0, **kwargs: Any) -> Node:  # fmt: skip
    send, receive = trio.open_memory_channel[Message](10_000)
    transport = Transport(node_id, cluster_id, secret, (LOCALHOST, port), {}, send, **kwargs)
    return Node(transport, receive)


async def start_nodes(nursery: trio.Nursery, nodes: dict[int, Node]) -> dict[int, Node]:
    for node in nodes.values():
        await nursery.start(node.transport.run)
    addresses = {node_id: node.transport.listen_address for node_id, node in nodes.items()}
    for node in nodes.values():
        await node.transport.update_peers(addresses)
    return nodes


def hb(src: int, dst: int, commit: int = 0) -> Heartbeat:
    return Heartbeat(Term(1), NodeId(src), NodeId(dst), Index(commit))


def every_message(src: int, dst: int) -> list[Message]:
    s, d = NodeId(src), NodeId(dst)
    entries = (Entry(Term(2), Index(5), EntryKind.NORMAL, b"x"), Entry(Term(2), Index(6)))
    return [
        RequestVote(Term(2), s, d, Index(4), Term(1), pre_vote=True),
        RequestVoteResponse(Term(2), s, d, granted=True),
        AppendEntries(Term(2), s, d, Index(4), Term(1), entries, Index(3)),
        AppendEntriesResponse(Term(2), s, d, False, Index(0), Index(4), Index(2), Term(1)),
        Heartbeat(Term(2), s, d, Index(3)),
        HeartbeatResponse(Term(2), s, d),
        InstallSnapshot(Term(2), s, d, SnapshotMeta(Index(9), Term(2), Membership.of((s, d))), 0, b"c", True, 1, zlib.crc32(b"c")),
        InstallSnapshotResponse(Term(2), s, d, Index(9), 1, True),
        TimeoutNow(Term(2), s, d),
    ]


async def raw_connect(node: Node) -> trio.SocketStream:
    host, port = node.transport.listen_address
    return await trio.open_tcp_stream(host, port)


async def raw_authenticated(node: Node, as_node: int) -> trio.SocketStream:
    """A hand-driven client connection to `node`, authenticated as `as_node`."""
    stream = await raw_connect(node)
    await client_handshake(
        stream,
        FrameDecoder(HANDSHAKE_MAX_FRAME_BYTES),
        cluster_id=CLUSTER,
        node_id=as_node,
        secret=SECRET,
        peer_id=node.transport.node_id,
    )
    return stream


async def closed_by_peer(stream: trio.SocketStream) -> bool:
    """Read until the other side closes; True if it did (EOF or reset) within 5 s."""
    with trio.fail_after(5):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return True
            if not data:
                return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


# -- delivery ---------------------------------------------------------------------------------


async def test_three_nodes_exchange_every_message_type(nursery: trio.Nursery) -> None:
    nodes = await start_nodes(nursery, {i: make_node(i) for i in (1, 2, 3)})
    for src in nodes:
        for dst in nodes:
            if src != dst:
                for msg in every_message(src, dst):
                    nodes[src].transport.send(msg)
    for dst, node in nodes.items():
        got = [await node.receive() for _ in range(2 * 9)]
        for src in nodes:
            if src != dst:
                # Order is kept per connection.
                assert [m for m in got if m.from_id == src] == every_message(src, dst)
    await trio.testing.wait_all_tasks_blocked()  # senders are back waiting on their queues
    stats = nodes[1].transport.stats()
    assert stats["sent"] == 18 and stats["received"] == 18 and stats["dropped"] == 0
    assert stats["connects"] == 2 and stats["connected_peers"] == 2
    assert stats["handshake_failures"] == 0


async def test_large_append_entries(nursery: trio.Nursery) -> None:
    nodes = await start_nodes(nursery, {i: make_node(i) for i in (1, 2)})
    data = random.Random(7).randbytes(64 * 1024)
    entries = tuple(Entry(Term(3), Index(i), EntryKind.NORMAL, data) for i in range(1, 161))
    big = AppendEntries(Term(3), NodeId(1), NodeId(2), Index(0), Term(0), entries, Index(0))
    nodes[1].transport.send(big)  # about 10 MiB in one frame
    nodes[1].transport.send(hb(1, 2))
    assert await nodes[2].receive() == big
    assert await nodes[2].receive() == hb(1, 2)


async def test_burst_is_delivered_in_order(nursery: trio.Nursery) -> None:
    nodes = await start_nodes(nursery, {i: make_node(i) for i in (1, 2)})
    for round_ in range(5):
        for i in range(1000):
            nodes[1].transport.send(hb(1, 2, round_ * 1000 + i))
        for i in range(1000):
            msg = await nodes[2].receive()
            assert isinstance(msg, Heartbeat) and msg.commit == round_ * 1000 + i
    await trio.testing.wait_all_tasks_blocked()
    assert nodes[1].transport.stats()["sent"] == 5000


async def test_reconnects_after_the_listener_restarts(
    nursery: trio.Nursery, logs: LogWatch
) -> None:
    a = make_node(1, backoff_min_s=0.01, backoff_max_s=0.05)
    await nursery.start(a.transport.run)
    async with trio.open_nursery() as b_nursery:
        b = make_node(2)
        await b_nursery.start(b.transport.run)
        port_b = b.transport.listen_address[1]
        await b.transport.update_peers({1: a.transport.listen_address})
        await a.transport.update_peers({2: b.transport.listen_address})
        a.transport.send(hb(1, 2, 1))
        assert await b.receive() == hb(1, 2, 1)
        b_nursery.cancel_scope.cancel()
    await logs.wait_for("closed our connection")
    assert not a.transport.connected(2)
    # While B is down, send() still returns at once; messages wait in (or drop from) the queue.
    a.transport.send(hb(1, 2, 2))
    b2 = make_node(2, port=port_b)
    async with trio.open_nursery() as b_nursery:
        await b_nursery.start(b2.transport.run)
        await b2.transport.update_peers({1: a.transport.listen_address})
        await a.transport.wait_connected(2)
        a.transport.send(hb(1, 2, 3))
        got = [await b2.receive()]
        if got[0] == hb(1, 2, 2):
            got.append(await b2.receive())
        assert got[-1] == hb(1, 2, 3)
        b_nursery.cancel_scope.cancel()
    assert a.transport.stats()["connects"] == 2


# -- authentication ---------------------------------------------------------------------------


async def test_wrong_secret_is_refused(nursery: trio.Nursery, logs: LogWatch) -> None:
    nodes = {1: make_node(1), 2: make_node(2, secret=b"another secret, 32 bytes long!!")}
    await start_nodes(nursery, nodes)
    nodes[1].transport.send(hb(1, 2))
    nodes[2].transport.send(hb(2, 1))
    await logs.wait_for("node 2: inbound handshake from")
    await logs.wait_for("node 1: inbound handshake from")
    await logs.wait_for("node 1: handshake with peer 2")
    for node in nodes.values():
        with pytest.raises(trio.WouldBlock):
            node.inbound.receive_nowait()
        assert node.transport.stats()["handshake_failures"] >= 1
        assert node.transport.stats()["received"] == 0
    warnings = logs.lines()
    assert any("BAD_MAC" in line and "wrong secret" in line for line in warnings)
    for line in warnings:
        assert SECRET.decode() not in line and "another secret" not in line


async def test_server_refuses_a_client_with_the_wrong_secret(
    nursery: trio.Nursery, logs: LogWatch
) -> None:
    nodes = await start_nodes(nursery, {i: make_node(i) for i in (1, 2)})
    stream = await raw_connect(nodes[2])
    decoder = FrameDecoder(HANDSHAKE_MAX_FRAME_BYTES)
    await stream.send_all(
        encode_frame({"type": "hello", "cluster_id": CLUSTER, "node_id": 1, "nonce": b"n" * 32})
    )
    with trio.fail_after(5):
        while (challenge := decoder.next_frame()) is None:
            decoder.feed(await stream.receive_some(4096))
    assert isinstance(challenge, dict) and challenge["type"] == "challenge"
    await stream.send_all(encode_frame({"type": "auth", "mac": b"\x00" * 32}))  # a guess
    assert await closed_by_peer(stream)
    line = await logs.wait_for("inbound handshake from")
    assert "BAD_MAC" in line
    assert nodes[2].transport.stats()["refused_connections"] == 1
    with pytest.raises(trio.WouldBlock):
        nodes[2].inbound.receive_nowait()


async def test_client_refuses_a_server_with_the_wrong_secret(
    nursery: trio.Nursery, logs: LogWatch
) -> None:
    """A rogue listener that does not know the secret cannot make node 1 send to it."""
    listeners = await trio.open_tcp_listeners(0, host=LOCALHOST)
    port = listeners[0].socket.getsockname()[1]
    refused = trio.Event()

    async def rogue(stream: trio.SocketStream) -> None:
        with pytest.raises(HandshakeError) as info:
            await server_handshake(
                stream,
                FrameDecoder(HANDSHAKE_MAX_FRAME_BYTES),
                cluster_id=CLUSTER,
                node_id=2,
                secret=b"not the secret",
                known_peers={1},
            )
        assert info.value.remote and info.value.code == "BAD_MAC"
        refused.set()

    nursery.start_soon(trio.serve_listeners, rogue, listeners)
    a = make_node(1)
    await nursery.start(a.transport.run)
    await a.transport.update_peers({2: (LOCALHOST, port)})
    a.transport.send(hb(1, 2))
    with trio.fail_after(5):
        await refused.wait()
    line = await logs.wait_for("handshake with peer 2")
    assert "BAD_MAC" in line
    assert a.transport.stats()["connects"] == 0
    assert not a.transport.connected(2)


async def test_wrong_cluster_is_refused(nursery: trio.Nursery, logs: LogWatch) -> None:
    nodes = {1: make_node(1, cluster_id="cluster-b"), 2: make_node(2)}
    await start_nodes(nursery, nodes)
    nodes[1].transport.send(hb(1, 2))
    line = await logs.wait_for("node 2: inbound handshake from")
    assert "WRONG_CLUSTER" in line and "cluster-b" in line
    line = await logs.wait_for("node 1: handshake with peer 2")
    assert "peer refused: WRONG_CLUSTER" in line
    with pytest.raises(trio.WouldBlock):
        nodes[2].inbound.receive_nowait()


async def test_unknown_node_is_refused(nursery: trio.Nursery, logs: LogWatch) -> None:
    nodes = await start_nodes(nursery, {i: make_node(i) for i in (1, 2)})
    with pytest.raises(HandshakeError) as info:
        await raw_authenticated(nodes[2], as_node=9)
    assert info.value.remote and info.value.code == "UNKNOWN_NODE"
    assert "UNKNOWN_NODE" in await logs.wait_for("inbound handshake from")


async def test_silent_client_times_out(logs: LogWatch, nursery: trio.Nursery) -> None:
    nodes = {1: make_node(1), 2: make_node(2, handshake_timeout_s=0.2)}
    await start_nodes(nursery, nodes)
    stream = await raw_connect(nodes[2])
    assert await closed_by_peer(stream)
    assert "timed out" in await logs.wait_for("inbound handshake from")


async def test_oversized_frame_before_authentication_is_refused(
    nursery: trio.Nursery, logs: LogWatch
) -> None:
    nodes = await start_nodes(nursery, {i: make_node(i) for i in (1, 2)})
    stream = await raw_connect(nodes[2])
    await stream.send_all((HANDSHAKE_MAX_FRAME_BYTES + 1).to_bytes(4, "big"))
    assert await closed_by_peer(stream)
    assert "FRAME_TOO_LARGE" in await logs.wait_for("inbound handshake from")


# -- bad input on an authenticated connection --------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        pytest.param(b"\x00\x00\x00\x02\xff\xff", "BAD_FRAME", id="garbage"),
        pytest.param((2 * 1024 * 1024).to_bytes(4, "big"), "FRAME_TOO_LARGE", id="oversized"),
        pytest.param(encode_frame([99, 1, 2]), "BAD_MESSAGE", id="unknown-message"),
        pytest.param(encode_frame(encode_raft_message(hb(1, 2))), "MISADDRESSED", id="spoofed"),
        pytest.param(encode_frame(encode_raft_message(hb(3, 1))), "MISADDRESSED", id="not-for-me"),
    ],
)
async def test_bad_input_closes_only_that_connection(
    nursery: trio.Nursery, logs: LogWatch, payload: bytes, code: str
) -> None:
    nodes = {i: make_node(i, max_frame_bytes=1024 * 1024) for i in (1, 2, 3)}
    await start_nodes(nursery, nodes)
    nodes[1].transport.send(hb(1, 2, 1))
    assert await nodes[2].receive() == hb(1, 2, 1)
    # A client authenticated as node 3 (it knows the secret) sends bad bytes to node 2.
    stream = await raw_authenticated(nodes[2], as_node=3)
    await stream.send_all(encode_frame(encode_raft_message(hb(3, 2, 7))) + payload)
    assert await nodes[2].receive() == hb(3, 2, 7)  # what came before is delivered
    assert await closed_by_peer(stream)
    line = await logs.wait_for("closing connection from peer 3")
    assert code in line
    assert nodes[2].transport.stats()["wire_errors"] == 1
    # Node 1's connection to node 2 is untouched, and node 3's own transport still works.
    nodes[1].transport.send(hb(1, 2, 2))
    nodes[3].transport.send(hb(3, 2, 3))
    got = {await nodes[2].receive(), await nodes[2].receive()}
    assert got == {hb(1, 2, 2), hb(3, 2, 3)}
    assert nodes[1].transport.stats()["connects"] == 2


# -- send never blocks ------------------------------------------------------------------------


async def test_send_to_unknown_or_unreachable_peer_never_blocks(nursery: trio.Nursery) -> None:
    a = make_node(1, queue_capacity=10)
    await nursery.start(a.transport.run)
    await a.transport.update_peers({2: (LOCALHOST, free_port())})  # nobody listens there
    a.transport.send(hb(1, 7))  # unknown peer
    assert a.transport.stats()["dropped"] == 1
    for i in range(100):
        a.transport.send(hb(1, 2, i))
    stats = a.transport.stats()
    assert stats["dropped"] == 1 + 90
    assert stats["queued"] == 10
    with pytest.raises(KeyError):
        await a.transport.wait_connected(7)


async def test_send_to_a_stuck_peer_drops_instead_of_blocking(nursery: trio.Nursery) -> None:
    """A peer that authenticates and then stops reading fills the queue; send() drops."""
    listeners = await trio.open_tcp_listeners(0, host=LOCALHOST)
    port = listeners[0].socket.getsockname()[1]
    stop_reading = trio.Event()

    async def stuck(stream: trio.SocketStream) -> None:
        await server_handshake(
            stream,
            FrameDecoder(HANDSHAKE_MAX_FRAME_BYTES),
            cluster_id=CLUSTER,
            node_id=2,
            secret=SECRET,
            known_peers={1},
        )
        await stop_reading.wait()  # never reads again

    nursery.start_soon(trio.serve_listeners, stuck, listeners)
    a = make_node(1, queue_capacity=4)
    await nursery.start(a.transport.run)
    await a.transport.update_peers({2: (LOCALHOST, port)})
    await a.transport.wait_connected(2)
    chunk = b"z" * (1024 * 1024)
    entry = (Entry(Term(1), Index(1), EntryKind.NORMAL, chunk),)
    big = AppendEntries(Term(1), NodeId(1), NodeId(2), Index(0), Term(0), entry, Index(0))
    for _ in range(60):  # 60 MiB: far more than the socket buffers hold
        with trio.fail_after(1):  # send() is synchronous; this only bounds the checkpoint
            a.transport.send(big)
            await trio.testing.wait_all_tasks_blocked(cushion=0.001)
    stats = a.transport.stats()
    assert stats["dropped"] >= 10
    assert stats["queued"] <= 4


# -- peers and backoff ------------------------------------------------------------------------


async def test_removed_peer_is_disconnected(nursery: trio.Nursery, logs: LogWatch) -> None:
    nodes = await start_nodes(nursery, {i: make_node(i) for i in (1, 2)})
    nodes[1].transport.send(hb(1, 2))
    assert await nodes[2].receive() == hb(1, 2)
    await nodes[2].transport.update_peers({})
    assert nodes[2].transport.peers() == {}
    await logs.wait_for("node 1: peer 2 at")  # node 1 sees its connection closed
    nodes[2].transport.send(hb(2, 1))
    assert nodes[2].transport.stats()["dropped"] == 1
    # Node 1 is now refused as unknown when it reconnects.
    assert "UNKNOWN_NODE" in await logs.wait_for("node 2: inbound handshake from")


def test_backoff_doubles_with_jitter_and_resets() -> None:
    backoff = Backoff(0.05, 1.0, random.Random(1))
    delays = [backoff.next_delay_s() for _ in range(8)]
    nominal = [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for delay, top in zip(delays, nominal, strict=True):
        assert top / 2 <= delay <= top
    backoff.reset()
    assert backoff.next_delay_s() <= 0.05


def test_listen_address_before_run() -> None:
    with pytest.raises(RuntimeError):
        _ = make_node(1).transport.listen_address
