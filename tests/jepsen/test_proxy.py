"""The link proxy against a local echo server: forward, cut, heal, delay."""

from __future__ import annotations

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
