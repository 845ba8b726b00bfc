"""TCP proxies between nodes, so the harness can cut, heal and delay links without privileges.

raftq nodes dial each peer and send on that connection only (node/transport.py): per ordered
pair (i, j) there is one connection, i -> j, carrying i's messages to j. The harness gives node i
a `dial` override so that it reaches peer j through `LinkProxy(i, j)`, which listens on an
ephemeral port of 127.0.0.1 and forwards to j's `raft_addr`. So every directed link of the
cluster passes through one proxy the harness controls:

* `cut()`: close the link's existing connections, and refuse new ones (accept, then close at
  once) until `heal()`. Messages from i to j stop; j's messages to i use the other link.
* `cut(silent=True)`: drop the link in silence, as a lost route or a firewall that drops does:
  nothing is closed or reset. Live connections stay open and what either side sends on them is
  read and discarded; new connections are accepted, never forwarded, and their bytes
  discarded too. The sender sees no error (its writes succeed); only Raft's own timeouts can
  tell. The swallowed bytes and connections are counted (`ProxyStats`).
* `heal()`: accept and forward again. Connections that were silenced are closed then (their
  byte streams lost data mid-frame, so they cannot carry on): the nodes dial again.
* `set_delay(ms)`: forward every chunk `ms` milliseconds after it was read (order kept).

`ProxyMesh` holds the proxies of a whole cluster and applies partitions given as a grudge
(Jepsen's term, jepsen/src/jepsen/nemesis.clj): node -> the nodes whose messages it must not
receive. A run with membership faults makes proxies for the ids of the nodes it may add, too
(their targets are where those nodes will listen; `retarget` when a new id takes an old
node's address).

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
        cuts: times `cut()` was called on a healed link (either mode).
        silent_cuts: times the link went silent (`cut(silent=True)` on a link not silent).
        silenced: live connections that a silent cut turned into swallowing ones.
        swallowed_connections: new connections accepted while silent (held open, never
            forwarded).
        bytes_swallowed: bytes read and discarded while silent, both directions (chunks
            read before the cut but held by a delay included).
        closed_at_heal: silenced connections closed by `heal()`.
    """

    accepted: int = 0
    refused: int = 0
    dropped: int = 0
    upstream_failures: int = 0
    bytes_forwarded: int = 0
    cuts: int = 0
    silent_cuts: int = 0
    silenced: int = 0
    swallowed_connections: int = 0
    bytes_swallowed: int = 0
    closed_at_heal: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(eq=False)
class _Conn:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    silenced: bool = False
    """Swallow everything from now on (a silent cut); closed at the heal."""


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
        self.mode: str | None = None
        """None (forwarding), "close" (cut: connections closed, new ones refused) or
        "silent" (cut: everything swallowed, nothing closed)."""
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
    def is_cut(self) -> bool:
        """The link is cut, in either mode."""
        return self.mode is not None

    @property
    def is_silent(self) -> bool:
        """The link drops in silence."""
        return self.mode == "silent"

    @property
    def live_connections(self) -> int:
        """Open connections, silenced ones included."""
        return len(self._conns)

    @property
    def silent_connections(self) -> int:
        """Open connections that swallow everything (until the heal closes them)."""
        return sum(1 for c in self._conns if c.silenced)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (binds first if `bind` was not called)."""
        if not self._listeners:
            await self.bind()
        await trio.serve_listeners(self._handle, self._listeners, task_status=task_status)

    def cut(self, *, silent: bool = False) -> int:
        """Cut the link until `heal()`.

        Args:
            silent: drop in silence (see the module docstring) instead of closing.

        Returns:
            How many live connections were closed (default) or silenced (`silent`).
        """
        if self.mode is None:
            self.stats.cuts += 1
        if silent:
            if self.mode != "silent":
                self.stats.silent_cuts += 1
            self.mode = "silent"
            n = 0
            for conn in self._conns:
                if not conn.silenced:
                    conn.silenced = True
                    n += 1
            self.stats.silenced += n
            return n
        self.mode = "close"
        n = len(self._conns)
        for conn in list(self._conns):
            conn.scope.cancel()
        self.stats.dropped += n
        return n

    def heal(self) -> int:
        """Forward new connections again (and stop delaying). Returns how many silenced
        connections were closed."""
        self.mode = None
        self.delay_s = 0.0
        silenced = [c for c in self._conns if c.silenced and not c.scope.cancel_called]
        for conn in silenced:
            conn.scope.cancel()
        self.stats.closed_at_heal += len(silenced)
        return len(silenced)

    def set_delay(self, delay_ms: float) -> None:
        """Delay every forwarded chunk by `delay_ms` milliseconds (0 to stop)."""
        self.delay_s = max(0.0, delay_ms / 1000)

    async def _handle(self, down: trio.SocketStream) -> None:
        if self.mode == "close":
            self.stats.refused += 1
            await _close(down)
            return
        conn = _Conn(silenced=self.mode == "silent")
        self._conns.add(conn)
        try:
            with conn.scope:
                if conn.silenced:
                    self.stats.swallowed_connections += 1
                    await self._swallow(down, conn)
                    return
                try:
                    with trio.fail_after(CONNECT_TIMEOUT_S):
                        up = await trio.open_tcp_stream(*self.target)
                except (OSError, trio.TooSlowError):
                    self.stats.upstream_failures += 1
                    return
                self.stats.accepted += 1
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, down, up, conn, nursery.cancel_scope)
                        nursery.start_soon(self._pump, up, down, conn, nursery.cancel_scope)
                finally:
                    await _close(up)
                if conn.silenced:  # the target closed after a silent cut: keep swallowing
                    await self._swallow(down, conn)
        finally:
            self._conns.discard(conn)
            await _close(down)

    async def _swallow(self, src: trio.SocketStream, conn: _Conn) -> None:
        """Read and discard what `src` sends until it closes (or the heal closes it)."""
        try:
            while True:
                data = await src.receive_some(CHUNK_BYTES)
                if not data:
                    return
                self.stats.bytes_swallowed += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, conn: _Conn,
        scope: trio.CancelScope,
    ) -> None:
        """Copy src -> dst, each chunk after the link's delay, until either side closes.

        Once `conn` is silenced, chunks are discarded instead (also those already read and
        waiting out a delay).
        """
        send, receive = trio.open_memory_channel[tuple[float, bytes]](256)

        async def writer() -> None:
            async for due, data in receive:
                wait = due - trio.current_time()
                if wait > 0:
                    await trio.sleep(wait)
                if conn.silenced:
                    self.stats.bytes_swallowed += len(data)
                    continue
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
                        if conn.silenced:
                            self.stats.bytes_swallowed += len(data)
                            continue
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

    def retarget(self, dst: int, target: tuple[str, int]) -> None:
        """Forward the links towards `dst` to `target` from now on (a node that takes another
        one's raft address: connections made from then on reach it)."""
        for (_, j), p in self.proxies.items():
            if j == dst:
                p.target = target

    def cut_links(self, links: list[tuple[int, int]], *, silent: bool = False) -> int:
        """Cut each directed link (src, dst), closing (default) or in silence (`silent`).

        Returns:
            The live connections closed (or, `silent`, silenced).
        """
        return sum(self.proxies[link].cut(silent=silent) for link in links)

    def partition(
        self, grudge: Mapping[int, set[int]], *, silent: bool = False
    ) -> tuple[list[tuple[int, int]], int]:
        """Apply a grudge: node -> nodes it must not hear from. Heals everything else first.

        Args:
            grudge: node -> the nodes whose messages it must not receive.
            silent: drop the cut links in silence instead of closing them.

        Returns:
            The directed links cut (src, dst) and how many live connections were closed (or
            silenced).
        """
        self.heal()
        links = sorted((src, dst) for dst, srcs in grudge.items() for src in srcs if src != dst)
        return links, self.cut_links(links, silent=silent)

    def heal(self) -> int:
        """Heal every link and remove every delay. Returns the silenced connections closed."""
        return sum(p.heal() for p in self.proxies.values())

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
