"""TCP proxies between nodes, so the harness can cut, heal and delay links without privileges.

raftq nodes dial each peer and send on that connection only (node/transport.py): per ordered
pair (i, j) there is one connection, i -> j, carrying i's messages to j. The harness gives node i
a `dial` override so that it reaches peer j through `LinkProxy(i, j)`, which listens on an
ephemeral port of 127.0.0.1 and forwards to j's `raft_addr`. So every directed link of the
cluster passes through one proxy the harness controls:

* `cut()`: close the link's existing connections, and refuse new ones (accept, then close at
  once) until `heal()`. Messages from i to j stop; j's messages to i use the other link.
* `heal()`: accept and forward again.
* `set_delay(ms)`: forward every chunk `ms` milliseconds after it was read (order kept).

`ProxyMesh` holds the proxies of a whole cluster and applies partitions given as a grudge
(Jepsen's term, jepsen/src/jepsen/nemesis.clj): node -> the nodes whose messages it must not
receive.

Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

__all__ = ["LinkProxy", "ProxyMesh", "ProxyStats"]

logger = logging.getLogger("jepsen_like.proxy")

CHUNK_BYTES = 256 * 1024
CONNECT_TIMEOUT_S = 2.0


@dataclass
class ProxyStats:
    """Counters of one proxy.

    Attributes:
        accepted: connections accepted and forwarded.
        refused: connections closed at once because the link was cut.
        dropped: live connections closed by `cut()`.
        upstream_failures: connections whose upstream could not be reached.
        bytes_forwarded: bytes forwarded in both directions.
        cuts: times `cut()` was called on a healed link.
    """

    accepted: int = 0
    refused: int = 0
    dropped: int = 0
    upstream_failures: int = 0
    bytes_forwarded: int = 0
    cuts: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(eq=False)
class _Conn:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class LinkProxy:
    """Forwards TCP connections for one directed link `src -> dst`.

    Args:
        src: the dialing node's id.
        dst: the node dialed.
        target: where to forward (dst's raft_addr), (host, port).
        listen_host: address to listen on (loopback).
    """

    def __init__(
        self, src: int, dst: int, target: tuple[str, int], listen_host: str = "127.0.0.1"
    ) -> None:
        self.src = src
        self.dst = dst
        self.target = target
        self.listen_host = listen_host
        self.is_cut = False
        self.delay_s = 0.0
        self.stats = ProxyStats()
        self._listeners: list[trio.SocketListener] = []
        self._conns: set[_Conn] = set()

    async def bind(self) -> tuple[str, int]:
        """Open the listening socket on an ephemeral port; returns its (host, port)."""
        self._listeners = await trio.open_tcp_listeners(0, host=self.listen_host)
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) this proxy listens on (after `bind`)."""
        sockname = self._listeners[0].socket.getsockname()
        return (sockname[0], sockname[1])

    @property
    def live_connections(self) -> int:
        return len(self._conns)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (binds first if `bind` was not called)."""
        if not self._listeners:
            await self.bind()
        await trio.serve_listeners(self._handle, self._listeners, task_status=task_status)

    def cut(self) -> int:
        """Cut the link: close live connections and refuse new ones. Returns how many closed."""
        if not self.is_cut:
            self.stats.cuts += 1
        self.is_cut = True
        n = len(self._conns)
        for conn in list(self._conns):
            conn.scope.cancel()
        self.stats.dropped += n
        return n

    def heal(self) -> None:
        """Forward new connections again (and stop delaying)."""
        self.is_cut = False
        self.delay_s = 0.0

    def set_delay(self, delay_ms: float) -> None:
        """Delay every forwarded chunk by `delay_ms` milliseconds (0 to stop)."""
        self.delay_s = max(0.0, delay_ms / 1000)

    async def _handle(self, down: trio.SocketStream) -> None:
        if self.is_cut:
            self.stats.refused += 1
            await _close(down)
            return
        conn = _Conn()
        self._conns.add(conn)
        try:
            with conn.scope:
                try:
                    with trio.fail_after(CONNECT_TIMEOUT_S):
                        up = await trio.open_tcp_stream(*self.target)
                except (OSError, trio.TooSlowError):
                    self.stats.upstream_failures += 1
                    return
                self.stats.accepted += 1
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, down, up, nursery.cancel_scope)
                        nursery.start_soon(self._pump, up, down, nursery.cancel_scope)
                finally:
                    await _close(up)
        finally:
            self._conns.discard(conn)
            await _close(down)

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        """Copy src -> dst, each chunk after the link's delay, until either side closes."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](256)

        async def writer() -> None:
            async for due, data in receive:
                wait = due - trio.current_time()
                if wait > 0:
                    await trio.sleep(wait)
                await dst.send_all(data)
                self.stats.bytes_forwarded += len(data)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                async with send:
                    while True:
                        data = await src.receive_some(CHUNK_BYTES)
                        if not data:
                            break
                        await send.send((trio.current_time() + self.delay_s, data))
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()


async def _close(stream: trio.SocketStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


class ProxyMesh:
    """The proxies of a whole cluster: one per ordered pair of distinct nodes.

    Args:
        raft_addrs: each node's raft address, by node id.
    """

    def __init__(self, raft_addrs: Mapping[int, tuple[str, int]]) -> None:
        self.node_ids = sorted(raft_addrs)
        self.proxies: dict[tuple[int, int], LinkProxy] = {
            (i, j): LinkProxy(i, j, raft_addrs[j])
            for i, j in itertools.permutations(self.node_ids, 2)
        }

    async def bind(self) -> dict[int, dict[int, tuple[str, int]]]:
        """Bind every proxy; returns each node's dial map: node -> {peer: proxy address}."""
        dial: dict[int, dict[int, tuple[str, int]]] = {i: {} for i in self.node_ids}
        for (i, j), p in self.proxies.items():
            dial[i][j] = await p.bind()
        return dial

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve every proxy until cancelled."""
        async with trio.open_nursery() as nursery:
            for p in self.proxies.values():
                await nursery.start(p.run)
            task_status.started()

    def link(self, src: int, dst: int) -> LinkProxy:
        return self.proxies[(src, dst)]

    def cut_links(self, links: list[tuple[int, int]]) -> int:
        """Cut each directed link (src, dst). Returns the live connections closed."""
        return sum(self.proxies[link].cut() for link in links)

    def partition(self, grudge: Mapping[int, set[int]]) -> tuple[list[tuple[int, int]], int]:
        """Apply a grudge: node -> nodes it must not hear from. Heals everything else first.

        Returns:
            The directed links cut (src, dst) and how many live connections were closed.
        """
        self.heal()
        links = sorted((src, dst) for dst, srcs in grudge.items() for src in srcs if src != dst)
        return links, self.cut_links(links)

    def heal(self) -> None:
        """Heal every link and remove every delay."""
        for p in self.proxies.values():
            p.heal()

    def set_delay(self, delay_ms: float, links: list[tuple[int, int]] | None = None) -> None:
        """Delay the given links (all by default) by `delay_ms`."""
        for key in links if links is not None else list(self.proxies):
            self.proxies[key].set_delay(delay_ms)

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters of each proxy, keyed "src->dst"."""
        return {f"{i}->{j}": p.stats.as_dict() for (i, j), p in sorted(self.proxies.items())}

    def totals(self) -> dict[str, int]:
        """Counters summed over all proxies."""
        out: dict[str, int] = {}
        for p in self.proxies.values():
            for k, v in p.stats.as_dict().items():
                out[k] = out.get(k, 0) + v
        return out
