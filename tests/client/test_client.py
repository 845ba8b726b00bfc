"""AsyncClient against the fake cluster: leader finding, retries, idempotency, multiplexing.

The fake runs the real queue machine (tests/client/fake.py). Tests that wait for time to pass
(backoff, deadlines, leases, long polls, scripted delays) run on trio's virtual clock
(`autojump_clock`); "wait until X happened" uses the fake's `wait_until` or
`trio.testing.wait_all_tasks_blocked`, never a real sleep.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from cluster.client import AsyncClient, OutgoingMessage
from cluster.errors import (
    ClusterUnavailable,
    FrameTooLarge,
    InvalidReceipt,
    MessageTooLarge,
    OutcomeUnknownError,
    QueueExists,
    QueueNotFound,
    RaftqError,
    TopicNotFound,
)
from tests.client.fake import FakeCluster


def client(addrs: list[str], **kw: object) -> AsyncClient:
    kw.setdefault("timeout_s", 5.0)
    kw.setdefault("backoff_initial_s", 0.01)
    kw.setdefault("backoff_max_s", 0.1)
    return AsyncClient(addrs, rng=random.Random(7), **kw)  # type: ignore[arg-type]


async def test_queue_round_trip(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with client(fake.addrs) as c:
        assert await c.create_queue("jobs", visibility_timeout_ms=1000) is True
        assert await c.create_queue("jobs", visibility_timeout_ms=1000) is False
        with pytest.raises(QueueExists) as exc_info:
            await c.create_queue("jobs", visibility_timeout_ms=2000)
        assert exc_info.value.code == "QUEUE_EXISTS"
        r = await c.send("jobs", "hello", headers={"k": "v"})
        assert not r.duplicate and len(r.dedup_id) == 32
        assert await c.list_queues() == ["jobs", "jobs.dlq"]  # its dead-letter queue, by default
        [m] = await c.receive("jobs", max_messages=5)
        assert (m.body, m.headers, m.delivery_count, m.queue) == (b"hello", {"k": "v"}, 1, "jobs")
        assert m.message_id == r.message_id
        assert (await c.ack("jobs", [m.receipt])).acked == 1
        with pytest.raises(InvalidReceipt):
            await c.ack("jobs", m.receipt)
        stats = await c.queue_stats("jobs")
        assert stats["messages"] == 0 and stats["acked"] == 1
        with pytest.raises(QueueNotFound, match="nope"):
            await c.send("nope", b"x")
        assert await c.purge_queue("jobs") == 0
        assert await c.delete_queue("jobs") == 0


async def test_batch_topics_and_redrive(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with client(fake.addrs) as c:
        await c.create_queue("a")
        await c.create_queue("b")
        results = await c.send_batch(
            "a", [b"1", "2", OutgoingMessage("3", dedup_id="d3"), {"body": b"4", "group": "g"}]
        )
        assert [r.duplicate for r in results] == [False] * 4
        assert results[2].dedup_id == "d3"
        assert len({r.dedup_id for r in results}) == 4
        assert await c.create_topic("t") is True
        assert await c.subscribe("t", "a") is True
        assert await c.subscribe("t", "b") is True
        assert await c.subscribe("t", "b") is False
        assert await c.list_topics() == {"t": ["a", "b"]}
        p = await c.publish("t", b"news", dedup_id="n1")
        assert [(x.queue, x.duplicate, x.error) for x in p.results] == [
            ("a", False, None), ("b", False, None)]
        again = await c.publish("t", b"news", dedup_id="n1")
        assert all(x.duplicate for x in again.results)
        assert await c.unsubscribe("t", "b") is True
        await c.delete_topic("t")
        with pytest.raises(TopicNotFound):
            await c.publish("t", b"x")
        moved = await c.redrive("a", "b")
        assert (moved.moved, moved.remaining) == (5, 0)
        ms = await c.receive("b", max_messages=10)
        assert await c.nack("b", ms[0].receipt) == "ready"
        assert await c.nack("b", ms[1].receipt, reject=True) == "dead_lettered"
        assert await c.change_visibility("b", ms[2].receipt, 5000) > 0


async def test_redirects_on_not_leader(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    fake.leader_id = 3
    async with client([fake.addr(1)]) as c:  # knows only a follower
        await c.create_queue("q")
        assert c.leader == fake.addr(3)
        assert fake.addr(3) in c.servers  # learnt from the redirect
        await c.send("q", b"x")
    # the follower was asked once; the leader got every later call directly
    assert [nid for nid, _ in fake.ops("create_queue")] == [1, 3]
    assert [nid for nid, _ in fake.ops("enqueue")] == [3]


async def test_no_leader_then_election(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    fake.leader_id = None

    async def elect() -> None:  # once every node has refused the call twice
        await fake.wait_until(lambda: len(fake.ops("create_queue")) >= 6)
        fake.leader_id = 2

    async with trio.open_nursery() as nursery, client(fake.addrs) as c:
        nursery.start_soon(elect)
        t0 = trio.current_time()
        assert await c.create_queue("q") is True
        elapsed = trio.current_time() - t0
        assert c.leader == fake.addr(2)
    # while there was no leader it went round the nodes; then straight (or redirected) to 2
    tried = [nid for nid, _ in fake.ops("create_queue")]
    assert tried[:6] == [1, 2, 3, 1, 2, 3]
    assert tried[-1] == 2 and len(tried) <= 8
    # the first pass round the nodes at once, then with backoff, not a hot loop: four waits
    # of at least half of 10, 20, 40, 80 ms
    assert elapsed >= 0.075


async def test_a_node_that_knows_no_leader_sends_the_client_on_at_once(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    # Node 1 (a leader that was cut off and stepped down) knows no leader; node 2 leads. A
    # client that knew only node 1 learns the others from the NOT_LEADER and goes on at once.
    async with client(fake.addrs) as c:
        await c.create_queue("q")
    fake.leader_id = 2
    fake.faults["queue_stats"] = ["not_leader_null"]
    async with client([fake.addr(1)]) as c:
        t0 = trio.current_time()
        stats = await c.queue_stats("q")
        assert trio.current_time() - t0 == 0  # no backoff: not one virtual millisecond
        assert stats["messages"] == 0
        assert c.leader == fake.addr(2)
        assert set(c.servers) == set(fake.addrs)
    tried = [nid for nid, _ in fake.ops("queue_stats")]
    assert tried[0] == 1 and tried[-1] == 2


async def test_unavailable_and_busy_are_retried(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    fake.faults["list_queues"] = ["unavailable", "busy", "not_leader_null"]
    async with client(fake.addrs) as c:
        assert await c.list_queues() == []
    # UNAVAILABLE and NOT_LEADER(null) move on to node 2, which redirects back to node 1
    assert [nid for nid, _ in fake.ops("list_queues")] == [1, 2, 1, 1, 2, 1]


async def test_retry_through_dropped_connection_reuses_dedup_id(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with client(fake.addrs) as c:
        await c.create_queue("q")
        fake.faults["enqueue"] = ["drop_before", "drop_after", "outcome_unknown_applied"]
        r = await c.send("q", b"once")
        # At the leader: the first attempt was dropped unexecuted, the second enqueued and was
        # dropped, the third was deduplicated and answered OUTCOME_UNKNOWN, the fourth answered.
        # (After each lost connection the client tried node 2, which redirected to node 1.)
        assert [nid for nid, _ in fake.ops("enqueue")] == [1, 2, 1, 2, 1, 1]
        assert fake.dedup_ids_seen == [r.dedup_id] * 6
        assert r.duplicate is True
        assert (await c.queue_stats("q"))["messages"] == 1
        # a caller's own dedup id is kept too, and for every message of a batch
        fake.faults["enqueue_batch"] = ["drop_after"]
        rs = await c.send_batch("q", [OutgoingMessage(b"a", dedup_id="mine"), b"b"])
        assert [r.dedup_id for r in rs][0] == "mine"
        assert fake.dedup_ids_seen[-6:] == [rs[0].dedup_id, rs[1].dedup_id] * 3
        assert (await c.queue_stats("q"))["messages"] == 3


async def test_non_idempotent_ops_raise_outcome_unknown(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with client(fake.addrs) as c:
        await c.create_queue("q")
        await c.send("q", b"x")
        fake.faults["receive"] = ["drop_after"]
        with pytest.raises(OutcomeUnknownError, match="may or may not") as exc_info:
            await c.receive("q")
        assert exc_info.value.code == "OUTCOME_UNKNOWN" and exc_info.value.op == "receive"
        assert len(fake.ops_at("receive", 1)) == 1  # not retried
        assert (await c.queue_stats("q"))["in_flight"] == 1  # it did happen, unknown to us
        await c.send("q", b"y")
        [m] = await c.receive("q")
        for fault, code in [
            ("drop_before", "OUTCOME_UNKNOWN"),  # written, then lost: the client cannot know
            ("outcome_unknown", "OUTCOME_UNKNOWN"),
            ("timeout", "TIMEOUT"),
        ]:
            fake.faults["ack"] = [fault]
            with pytest.raises(OutcomeUnknownError) as exc_info:
                await c.ack("q", [m.receipt])
            assert exc_info.value.code == code
        assert len(fake.ops_at("ack", 1)) == 3  # at the leader: never retried
        await c.send_batch("q", [b"1", b"2"])
        m1, m2 = await c.receive("q", max_messages=2)
        calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("nack", lambda: c.nack("q", m1.receipt)),
            ("change_visibility", lambda: c.change_visibility("q", m2.receipt, 10)),
            ("purge_queue", lambda: c.purge_queue("q")),
            ("redrive", lambda: c.redrive("q")),
            ("delete_queue", lambda: c.delete_queue("q")),
            ("transfer_leadership", lambda: c.transfer_leadership()),
        ]
        for op, call in calls:
            fake.faults[op] = ["drop_after"]
            with pytest.raises(OutcomeUnknownError):
                await call()
            assert len(fake.ops_at(op, 1)) == 1, op


async def test_unsafe_op_retried_when_not_sent(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A refused connection or NOT_LEADER means not executed: safe to retry any op."""
    fake.nodes[1].stop()
    fake.leader_id = 2
    async with client(fake.addrs) as c:
        await c.create_queue("q")
        await c.send("q", b"x")
        [m] = await c.receive("q")
        assert (await c.ack("q", [m.receipt])).acked == 1


async def test_many_concurrent_requests_share_one_connection(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    rng = random.Random(3)
    async with client(fake.addrs, coalesce_sends=False) as c:
        await c.create_queue("q")
        fake.faults["enqueue"] = [f"delay:{rng.random() * 0.05:.4f}" for _ in range(300)]
        results: dict[int, int] = {}

        async def one(i: int) -> None:
            r = await c.send("q", f"m{i}", dedup_id=f"d{i}")
            results[i] = r.message_id

        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(one, i)
        assert len(set(results.values())) == 300
        [m] = await c.receive("q", max_messages=1)
        assert m.message_id == min(results.values())
    assert fake.nodes[1].connections_accepted == 1
    bodies = {q_args["body"]: q_args["dedup_id"] for _, q_args in fake.ops("enqueue")}
    assert all(bodies[f"m{i}".encode()] == f"d{i}" for i in range(300))


async def test_deadline_gives_cluster_unavailable(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    fake.leader_id = None
    async with client(fake.addrs, timeout_s=0.5) as c:
        t0 = trio.current_time()
        with pytest.raises(ClusterUnavailable, match="not executed") as exc_info:
            await c.send("q", b"x")
        assert 0.3 <= trio.current_time() - t0 <= 1.0
        assert exc_info.value.code == "CLUSTER_UNAVAILABLE"
        assert isinstance(exc_info.value, RaftqError)
        for node in fake.nodes.values():
            node.stop()
        with pytest.raises(ClusterUnavailable, match="cannot connect"):
            await c.list_queues()
    assert fake.applied == []


async def test_deadline_after_maybe_executed_is_outcome_unknown(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with client(fake.addrs, timeout_s=0.6, request_timeout_s=0.2) as c:
        await c.create_queue("q")
        fake.faults["enqueue"] = ["hang"] * 20
        with pytest.raises(OutcomeUnknownError) as exc_info:
            await c.send("q", b"x", dedup_id="keep")
        assert exc_info.value.dedup_ids == ("keep",)
        # a read that gets no answer is tried again (elsewhere) after request_timeout_s
        fake.faults["list_queues"] = ["hang"]
        t0 = trio.current_time()
        assert await c.list_queues() == ["q", "q.dlq"]
        assert trio.current_time() - t0 >= 0.2
        assert len(fake.ops_at("list_queues", 1)) == 2


async def test_pinned_node_status_and_cluster_status(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with client(fake.addrs) as c:
        assert await c.ping(fake.addr(2)) == 2
        st = await c.node_status(fake.addr(3))
        assert (st["node_id"], st["role"], st["leader_id"]) == (3, "follower", 1)
        fake.nodes[3].stop()
        cs = await c.cluster_status()
        assert cs["leader_id"] == 1 and cs["term"] == 1
        assert [n["node_id"] for n in cs["nodes"]] == [1, 2, 3]
        assert [n.get("role") for n in cs["nodes"]] == ["leader", "follower", None]
        assert cs["nodes"][2]["client_addr"] == fake.addr(3) and "error" in cs["nodes"][2]
        with pytest.raises(ClusterUnavailable, match=fake.addr(3)):
            await c.node_status(fake.addr(3), timeout_s=0.3)
        assert await c.transfer_leadership(to=2) == {"from": 1, "to": 2}
        await c.list_queues()
        assert c.leader == fake.addr(2)


async def test_frame_too_large_is_not_sent(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with client(fake.addrs, max_frame_bytes=1024) as c:
        with pytest.raises(FrameTooLarge, match="not sent"):
            await c.send("q", b"x" * 2000)
    assert fake.ops("enqueue") == []


async def test_long_poll_receive(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with client(fake.addrs) as c:
        await c.create_queue("q")

        async def later() -> None:  # once the receive waits at the leader
            await fake.wait_until(lambda: fake.polls_waiting == 1)
            await c.send("q", b"late")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            t0 = trio.current_time()
            [m] = await c.receive("q", wait_s=5)
            assert m.body == b"late" and trio.current_time() - t0 < 1  # woken, not timed out
        assert fake.ops("receive")[0][1]["wait_ms"] == 5000
        t0 = trio.current_time()
        assert await c.receive("q", wait_s=0.1) == []
        assert trio.current_time() - t0 >= 0.1  # held for its wait_ms
        assert fake.polls_waiting == 0


async def test_expired_lease_comes_back_to_a_waiting_receive(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with client(fake.addrs) as c:
        await c.create_queue("q", visibility_timeout_ms=1000)
        await c.send("q", b"once")
        [first] = await c.receive("q")
        assert (await c.queue_stats("q"))["in_flight"] == 1
        t0 = trio.current_time()
        # nothing is ready: the long poll waits until the machine's timer ends the lease
        [again] = await c.receive("q", wait_s=5)
        assert 1.0 <= trio.current_time() - t0 < 1.5
        assert (again.message_id, again.delivery_count) == (first.message_id, 2)
        with pytest.raises(InvalidReceipt):
            await c.ack("q", first.receipt)
        # a lease that runs out while nobody asks is ended by the tick alone
        await trio.sleep(1.5)
        stats = await c.queue_stats("q")
        assert (stats["ready"], stats["in_flight"], stats["redelivered"]) == (1, 0, 1)
        assert (await c.ack("q", (await c.receive("q"))[0].receipt)).acked == 1


async def test_connection_is_reopened_after_node_restart(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with client(fake.addrs) as c:
        await c.create_queue("q")
        fake.nodes[1].stop()
        fake.leader_id = None
        # the stopped node's tasks close its listener and connection (the client sees EOF)
        await trio.testing.wait_all_tasks_blocked()
        await fake.restart(1)
        fake.leader_id = 1
        assert await c.list_queues() == ["q", "q.dlq"]
    assert fake.nodes[1].connections_accepted == 2


async def test_client_must_be_opened() -> None:
    c = AsyncClient(["127.0.0.1:1"])
    with pytest.raises(RuntimeError, match="not open"):
        await c.list_queues()
    with pytest.raises(ValueError):
        AsyncClient(["nohost"])
    with pytest.raises(ValueError):
        AsyncClient("")


async def test_concurrent_sends_share_enqueue_batch_requests(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with client(fake.addrs) as c:
        await c.create_queue("q", max_message_bytes=100)
        fake.faults["enqueue_batch"] = ["delay:0.05"] * 50
        results: dict[int, object] = {}

        async def one(i: int) -> None:
            body = b"x" * 500 if i == 77 else f"m{i}".encode()
            try:
                results[i] = await c.send("q", body, dedup_id=f"d{i}")
            except MessageTooLarge as exc:
                results[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(one, i)
    batches = fake.ops("enqueue_batch")
    singles = fake.ops("enqueue")
    assert batches, "concurrent sends did not share requests"
    assert len(batches) + len(singles) < 150
    # Every send got its own answer; the one too-large message got its own error.
    assert isinstance(results[77], MessageTooLarge)
    ok = {i: r for i, r in results.items() if i != 77}
    assert len(ok) == 299
    assert len({r.message_id for r in ok.values()}) == 299  # type: ignore[attr-defined]
    assert all(r.dedup_id == f"d{i}" for i, r in ok.items())  # type: ignore[attr-defined]
