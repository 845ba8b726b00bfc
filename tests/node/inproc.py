"""A whole cluster of `Node`s inside the test's trio run (same code as the processes)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from node import config as config_mod
from node.codec import FrameDecoder, encode_frame
from node.config import ClusterConfig
from node.main import Node


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def make_config(tmp: Path, nodes: int = 3, **overrides: Any) -> ClusterConfig:
    ports = free_ports(2 * nodes)
    entries = {
        i: config_mod.NodeConfig(
            id=i,
            raft_addr=("127.0.0.1", ports[2 * (i - 1)]),
            client_addr=("127.0.0.1", ports[2 * (i - 1) + 1]),
            data_dir=tmp / f"n{i}",
        )
        for i in range(1, nodes + 1)
    }
    cfg = ClusterConfig(cluster_id="test", secret=b"s" * 32, nodes=entries, tick_ms=20,
                        **overrides)
    return cfg


@asynccontextmanager
async def running_cluster(cfg: ClusterConfig) -> AsyncIterator[dict[int, Node]]:
    nodes = {i: Node(cfg, i) for i in cfg.nodes}
    async with trio.open_nursery() as nursery:
        for n in nodes.values():
            await nursery.start(n.run)
        yield nodes
        nursery.cancel_scope.cancel()


async def wait_leader(nodes: dict[int, Node], timeout_s: float = 10) -> Node:
    """The first node whose Raft loop says it leads; waits on the loops' role-change events."""
    with trio.fail_after(timeout_s):
        while True:
            leaders = [n for n in nodes.values() if n.loop.is_leader]
            if leaders:
                return leaders[0]
            async with trio.open_nursery() as nursery:  # until any node's role changes
                for n in nodes.values():
                    nursery.start_soon(_then_cancel, n.loop.role_changed, nursery.cancel_scope)


async def _then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


class Conn:
    """A raw protocol connection: send frames or bytes, read replies."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(1 << 26)
        self.next_id = 0

    @classmethod
    async def open(cls, addr: tuple[str, int]) -> Conn:
        return cls(await trio.open_tcp_stream(*addr))

    async def read_frame(self, timeout_s: float = 10) -> Any:
        with trio.fail_after(timeout_s):
            while True:
                f = self.decoder.next_frame()
                if f is not None:
                    return f
                data = await self.stream.receive_some(1 << 20)
                if not data:
                    raise EOFError("connection closed")
                self.decoder.feed(data)

    async def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        self.next_id += 1
        await self.stream.send_all(encode_frame({"id": self.next_id, "op": op, "args": args or {}}))
        return await self.read_frame()

    async def aclose(self) -> None:
        await self.stream.aclose()
