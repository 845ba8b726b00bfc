"""The link proxy against a local echo server: forward, cut (closing or silent), heal, delay."""

from __future__ import annotations

from collections.abc import Callable

import trio

from jepsen_like.proxy import LinkProxy, ProxyMesh


async def _echo(stream: trio.SocketStream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _start_echo(nursery: trio.Nursery) -> tuple[str, int]:
    listeners = await nursery.start(trio.serve_tcp, _echo, 0)
    name = listeners[0].socket.getsockname()
    return ("127.0.0.1", name[1])


async def _roundtrip(addr: tuple[str, int], payload: bytes = b"ping") -> bytes:
    stream = await trio.open_tcp_stream(*addr)
    async with stream:
        await stream.send_all(payload)
        got = b""
        while len(got) < len(payload):
            data = await stream.receive_some(1024)
            if not data:
                break
            got += data
        return got


async def test_forwards_cuts_and_heals() -> None:
    async with trio.open_nursery() as nursery:
        target = await _start_echo(nursery)
        proxy = LinkProxy(1, 2, target)
        await nursery.start(proxy.run)
        assert await _roundtrip(proxy.address) == b"ping"

        # A live connection is closed by the cut.
        live = await trio.open_tcp_stream(*proxy.address)
        await live.send_all(b"a")
        assert await live.receive_some(10) == b"a"
        assert proxy.live_connections == 1
        assert proxy.cut() == 1
        with trio.fail_after(2):
            data = b"x"
            try:
                while data:
                    data = await live.receive_some(10)
            except trio.BrokenResourceError:
                pass
        await live.aclose()
        assert proxy.stats.dropped == 1

        # New connections are refused while cut: closed without an answer.
        with trio.fail_after(2):
            assert await _roundtrip(proxy.address) == b""
        assert proxy.stats.refused >= 1

        proxy.heal()
        with trio.fail_after(2):
            assert await _roundtrip(proxy.address, b"again") == b"again"
        nursery.cancel_scope.cancel()


async def test_delay_holds_each_chunk() -> None:
    async with trio.open_nursery() as nursery:
        target = await _start_echo(nursery)
        proxy = LinkProxy(1, 2, target)
        await nursery.start(proxy.run)
        proxy.set_delay(150)
        t0 = trio.current_time()
        with trio.fail_after(3):
            assert await _roundtrip(proxy.address, b"slow") == b"slow"
        # Delayed both ways: at least 2 x 150 ms.
        assert trio.current_time() - t0 >= 0.29
        proxy.heal()
        t0 = trio.current_time()
        assert await _roundtrip(proxy.address) == b"ping"
        assert trio.current_time() - t0 < 0.25
        nursery.cancel_scope.cancel()


async def test_mesh_partition_by_grudge() -> None:
    async with trio.open_nursery() as nursery:
        targets = {i: await _start_echo(nursery) for i in (1, 2, 3)}
        mesh = ProxyMesh(targets)
        dial = await mesh.bind()
        assert set(dial) == {1, 2, 3} and set(dial[1]) == {2, 3}
        await nursery.start(mesh.run)
        for i, peers in dial.items():
            for _j, addr in peers.items():
                assert await _roundtrip(addr) == b"ping", i
        # Node 3 must not hear from 1 or 2: links 1->3 and 2->3 are cut, the rest forward.
        links, _closed = mesh.partition({3: {1, 2}})
        assert links == [(1, 3), (2, 3)]
        assert await _roundtrip(dial[1][3]) == b""
        assert await _roundtrip(dial[2][3]) == b""
        assert await _roundtrip(dial[3][1]) == b"ping"
        assert await _roundtrip(dial[1][2]) == b"ping"
        mesh.heal()
        assert await _roundtrip(dial[1][3]) == b"ping"
        assert mesh.totals()["refused"] == 2
        nursery.cancel_scope.cancel()


class _Recorder:
    """An echo server that records what reached it, and can hang up on every client."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self.hang_up = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with trio.open_nursery() as nursery:

            async def hang_up() -> None:
                await self.hang_up.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(hang_up)
            try:
                async for data in stream:
                    self.received += data
                    await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            nursery.cancel_scope.cancel()
        await stream.aclose()

    async def start(self, nursery: trio.Nursery) -> tuple[str, int]:
        listeners = await nursery.start(trio.serve_tcp, self.handle, 0)
        return ("127.0.0.1", listeners[0].socket.getsockname()[1])


async def _stays_silent(stream: trio.SocketStream, seconds: float = 0.3) -> bool:
    """Nothing arrives on `stream` for `seconds`, and it is neither closed nor reset."""
    with trio.move_on_after(seconds):
        await stream.receive_some(1024)  # data, EOF (b"") or an error all mean "not silent"
        return False
    return True


async def _closed_within(stream: trio.SocketStream, seconds: float = 2.0) -> bool:
    """`stream` reaches EOF or breaks within `seconds` (data before that is skipped)."""
    with trio.move_on_after(seconds):
        try:
            while await stream.receive_some(1024):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def _wait_until(pred: Callable[[], bool], seconds: float = 2.0) -> None:
    with trio.fail_after(seconds):
        while not pred():
            await trio.sleep(0.01)


async def _live_link(
    nursery: trio.Nursery,
) -> tuple[_Recorder, LinkProxy, trio.SocketStream]:
    """A recording target behind a running proxy, and a connection through it that has
    carried one byte both ways."""
    target = _Recorder()
    proxy = LinkProxy(1, 2, await target.start(nursery))
    await nursery.start(proxy.run)
    live = await trio.open_tcp_stream(*proxy.address)
    await live.send_all(b"a")
    assert await live.receive_some(10) == b"a"
    return target, proxy, live


async def test_silent_cut_swallows_without_closing_and_heals() -> None:
    async with trio.open_nursery() as nursery:
        target, proxy, live = await _live_link(nursery)

        assert proxy.cut(silent=True) == 1
        assert proxy.is_cut and proxy.is_silent
        assert (proxy.stats.cuts, proxy.stats.silent_cuts, proxy.stats.silenced) == (1, 1, 1)
        # The live connection stays open; what is written on it is read and thrown away,
        # a megabyte as readily as a few bytes (no back pressure reaches the sender).
        with trio.fail_after(2):
            await live.send_all(b"lost")
            await live.send_all(b"z" * 1_000_000)
        await _wait_until(lambda: proxy.stats.bytes_swallowed == 1_000_004)
        assert await _stays_silent(live)

        # A new connection is accepted and held open, and its bytes are swallowed too; the
        # target never hears of it.
        fresh = await trio.open_tcp_stream(*proxy.address)
        await fresh.send_all(b"hello")
        await _wait_until(lambda: proxy.stats.bytes_swallowed == 1_000_009)
        assert await _stays_silent(fresh)
        assert proxy.stats.swallowed_connections == 1
        assert proxy.live_connections == proxy.silent_connections == 2
        assert bytes(target.received) == b"a" and target.connections == 1
        assert proxy.stats.dropped == proxy.stats.refused == 0
        assert proxy.stats.bytes_forwarded == 2

        # Healing closes the silenced connections and forwards new ones again.
        assert proxy.heal() == 2
        assert proxy.heal() == 0  # closing already: not counted twice
        assert not proxy.is_cut
        assert await _closed_within(live) and await _closed_within(fresh)
        await live.aclose()
        await fresh.aclose()
        assert proxy.stats.closed_at_heal == 2
        with trio.fail_after(2):
            assert await _roundtrip(proxy.address, b"again") == b"again"
        assert bytes(target.received) == b"aagain"
        nursery.cancel_scope.cancel()


async def test_silent_cut_swallows_chunks_held_by_a_delay() -> None:
    async with trio.open_nursery() as nursery:
        target = _Recorder()
        proxy = LinkProxy(1, 2, await target.start(nursery))
        await nursery.start(proxy.run)
        proxy.set_delay(300)
        live = await trio.open_tcp_stream(*proxy.address)
        await live.send_all(b"held")
        await _wait_until(lambda: proxy.live_connections == 1)
        await trio.sleep(0.05)  # read by the proxy, waiting out its delay
        proxy.cut(silent=True)
        await _wait_until(lambda: proxy.stats.bytes_swallowed == 4)
        assert await _stays_silent(live, 0.4)
        assert bytes(target.received) == b""
        proxy.heal()
        assert await _closed_within(live)
        await live.aclose()
        nursery.cancel_scope.cancel()


async def test_silent_link_stays_open_when_the_target_hangs_up() -> None:
    async with trio.open_nursery() as nursery:
        target, proxy, live = await _live_link(nursery)
        proxy.cut(silent=True)
        target.hang_up.set()  # the target closes its side: the sender must not see it
        assert await _stays_silent(live, 0.4)
        await live.send_all(b"still")
        await _wait_until(lambda: proxy.stats.bytes_swallowed == 5)
        assert proxy.silent_connections == 1
        assert proxy.heal() == 1
        assert await _closed_within(live)
        await live.aclose()
        nursery.cancel_scope.cancel()


async def test_closing_cut_after_a_silent_one_closes_and_refuses() -> None:
    async with trio.open_nursery() as nursery:
        target, proxy, live = await _live_link(nursery)
        assert proxy.cut(silent=True) == 1
        assert proxy.cut() == 1  # now closing: the silenced connection is closed
        assert not proxy.is_silent and proxy.stats.cuts == 1
        assert await _closed_within(live)
        await live.aclose()
        with trio.fail_after(2):
            assert await _roundtrip(proxy.address) == b""
        assert proxy.stats.refused == 1 and proxy.stats.dropped == 1
        assert proxy.heal() == 0
        assert await _roundtrip(proxy.address) == b"ping"
        nursery.cancel_scope.cancel()


async def test_mesh_silent_partition() -> None:
    async with trio.open_nursery() as nursery:
        targets = {i: await _start_echo(nursery) for i in (1, 2, 3)}
        mesh = ProxyMesh(targets)
        dial = await mesh.bind()
        await nursery.start(mesh.run)
        live = await trio.open_tcp_stream(*dial[1][3])
        await live.send_all(b"a")
        assert await live.receive_some(10) == b"a"
        links, silenced = mesh.partition({3: {1, 2}}, silent=True)
        assert links == [(1, 3), (2, 3)] and silenced == 1
        assert mesh.link(1, 3).is_silent and mesh.link(2, 3).is_silent
        assert not mesh.link(3, 1).is_cut
        fresh = await trio.open_tcp_stream(*dial[2][3])
        await fresh.send_all(b"b")
        assert await _stays_silent(fresh) and await _stays_silent(live, 0.05)
        assert await _roundtrip(dial[3][1]) == b"ping"
        totals = mesh.totals()
        assert totals["swallowed_connections"] == 1 and totals["bytes_swallowed"] == 1
        assert totals["silenced"] == 1 and totals["silent_cuts"] == 2
        assert totals["dropped"] == totals["refused"] == 0
        assert mesh.heal() == 2
        assert await _closed_within(live) and await _closed_within(fresh)
        await live.aclose()
        await fresh.aclose()
        assert await _roundtrip(dial[2][3]) == b"ping"
        assert mesh.stats()["2->3"]["closed_at_heal"] == 1
        nursery.cancel_scope.cancel()
