"""consume (async and blocking) and the blocking Client, against the fake cluster.

The async tests run on trio's virtual clock (`autojump_clock`): leases, lease extensions and
long polls take no wall time. The blocking client's test stays on the real clock, because its
work happens in threads that trio cannot see (virtual time would jump while they run).
"""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from cluster.client import AsyncClient, Client, Message
from cluster.errors import ClusterUnavailable, QueueNotFound
from tests.client.fake import FakeCluster


async def test_consume_acks_nacks_and_extends_leases(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with AsyncClient(fake.addrs, timeout_s=5) as c:
        await c.create_queue("q")
        for i in range(6):
            await c.send("q", f"m{i}")
        seen: list[tuple[str, int]] = []
        stop = trio.Event()

        async def handler(m: Message) -> None:
            seen.append((m.text, m.delivery_count))
            if m.text == "m2" and m.delivery_count == 1:
                raise RuntimeError("boom")  # nacked, delivered again
            if m.text == "m4":
                await trio.sleep(0.8)  # much longer than the 0.3 s lease (virtual time)

        async def stop_when_empty() -> None:  # every message acked
            await fake.wait_until(lambda: fake.depth("q") == 0)
            stop.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_when_empty)
            with trio.fail_after(10):
                stats = await c.consume(
                    "q", handler, concurrency=3, visibility_timeout_ms=300, wait_s=0.2, stop=stop
                )
    assert (stats.handled, stats.failed, stats.ack_errors) == (6, 1, 0)
    assert sorted(seen) == sorted([(f"m{i}", 1) for i in range(6)] + [("m2", 2)])
    # m4's lease was extended every 0.1 s while its handler ran, so it was never redelivered
    extensions = [a for a in fake.ops_at("change_visibility", 1) if a["timeout_ms"] == 300]
    assert len(extensions) >= 4 and stats.lease_extensions == len(extensions)
    assert len(fake.ops_at("nack", 1)) == 1
    assert all(len(a["receipts"]) == 1 for a in fake.ops_at("ack", 1))
    # a receive never asks for more messages than there are free handler slots
    assert all(a["max_messages"] <= 3 for a in fake.ops_at("receive", 1))


async def test_consume_stops_promptly_and_raises_queue_not_found(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with AsyncClient(fake.addrs, timeout_s=5) as c:
        await c.create_queue("q")
        stop = trio.Event()

        async def handler(m: Message) -> None:
            raise AssertionError("no message expected")

        async def stop_soon() -> None:  # once consume's receive waits at the leader
            await fake.wait_until(lambda: fake.polls_waiting == 1)
            stop.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_soon)
            t0 = trio.current_time()
            with trio.fail_after(2):  # a 20 s long poll in progress is cancelled by stop
                await c.consume("q", handler, stop=stop)
            assert trio.current_time() - t0 < 1
        assert [a["wait_ms"] for a in fake.ops_at("receive", 1)] == [20_000]
        with pytest.raises(QueueNotFound):
            await c.consume("missing", handler)


async def test_blocking_client_from_plain_threads(fake: FakeCluster) -> None:
    addrs = fake.addrs

    def work() -> None:
        with Client(addrs, timeout_s=5) as c:
            assert c.create_queue("q", max_deliveries=3) is True
            errors: list[BaseException] = []

            def producer(k: int) -> None:
                try:
                    for i in range(20):
                        c.send("q", f"{k}-{i}")
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors
            assert c.queue_stats("q")["messages"] == 80

            got: list[str] = []
            handler_threads: set[str] = set()
            stop = threading.Event()

            def handler(m: Message) -> None:
                handler_threads.add(threading.current_thread().name)
                got.append(m.text)
                if len(got) >= 80:
                    stop.set()

            stats = c.consume("q", handler, concurrency=4, wait_s=0.2, stop=stop)
            assert stats.handled == 80 and sorted(got) == sorted(
                f"{k}-{i}" for k in range(4) for i in range(20)
            )
            assert threading.current_thread().name not in handler_threads
            assert c.queue_stats("q")["messages"] == 0
            with pytest.raises(QueueNotFound, match="nope"):
                c.send("nope", b"x")
            with pytest.raises(QueueNotFound, match="nope"):
                c.consume("nope", handler, wait_s=0.1)
        with pytest.raises(RuntimeError, match="closed"):
            c.list_queues()

    await trio.to_thread.run_sync(work)


def test_blocking_client_unreachable_cluster() -> None:
    with Client(["127.0.0.1:9"], timeout_s=0.3, connect_timeout_s=0.1) as c:
        with pytest.raises(ClusterUnavailable, match="cannot connect"):
            c.list_queues()
