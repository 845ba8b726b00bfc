"""Issue 4's proofs against real node processes on 127.0.0.1 (started and killed by pid).

Each test checks that its fault really happened (the process is gone, the leader changed).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import struct
import time
from pathlib import Path

import pytest
import trio

from cluster.client import AsyncClient, Client
from cluster.errors import InvalidReceipt, RaftqError
from cluster.launcher import Launcher
from node import config as config_mod
from node.raft import Heartbeat, Index, NodeId, Term
from node.transport import Transport
from tests.client.test_launcher import alive, free_base_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def fast_config(tmp: Path, **kw: int) -> config_mod.ClusterConfig:
    cfg = config_mod.local_cluster(tmp, 3, free_base_port())
    return dataclasses.replace(cfg, tick_ms=20, **kw)


def statuses(c: Client, launcher: Launcher) -> dict[int, dict]:
    return {nid: c.node_status(addr, digest=True) for nid, addr in launcher.addresses.items()
            if launcher.is_running(nid)}


def wait_converged(c: Client, launcher: Launcher, timeout_s: float = 20) -> dict[int, dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        st = statuses(c, launcher)
        applied = {s["applied_index"] for s in st.values()}
        digests = {s["digest"] for s in st.values()}
        if len(applied) == 1 and len(digests) == 1 and len(st) == len(launcher.node_ids):
            return st
        assert time.monotonic() < deadline, f"nodes did not converge: {st}"
        time.sleep(0.1)


def test_thousand_messages_arrive_once_intact(tmp_path: Path) -> None:
    with Launcher(fast_config(tmp_path)) as launcher:
        launcher.start()
        with Client(launcher.servers, timeout_s=30) as c:
            c.create_queue("q", visibility_timeout_ms=60_000)
            sent = {}
            for i in range(1000):
                body = f"message {i} ".encode() + bytes([i % 256]) * (i % 50)
                r = c.send("q", body, headers={"n": str(i), "kind": "test"})
                sent[r.message_id] = (body, i)
            assert len(sent) == 1000
            seen: dict[int, int] = {}
            while True:
                msgs = c.receive("q", max_messages=100)
                if not msgs:
                    break
                for m in msgs:
                    body, i = sent[m.message_id]
                    assert m.body == body
                    assert m.headers == {"n": str(i), "kind": "test"}
                    assert m.delivery_count == 1
                    seen[m.message_id] = seen.get(m.message_id, 0) + 1
                assert c.ack("q", [m.receipt for m in msgs]).acked == len(msgs)
            assert sorted(seen) == sorted(sent) and set(seen.values()) == {1}
            stats = c.queue_stats("q")
            assert stats["messages"] == 0 and stats["acked"] == 1000
            wait_converged(c, launcher)


async def test_leader_killed_during_confirmed_sends_loses_nothing(tmp_path: Path) -> None:
    launcher = Launcher(fast_config(tmp_path))
    with launcher:
        launcher.start(wait=False)
        leader = await launcher.wait_for_leader_async()
        old_pid = launcher.pids[leader]
        confirmed: list[str] = []
        after_kill: list[str] = []
        killed = trio.Event()
        async with AsyncClient(launcher.servers, timeout_s=30) as c:
            await c.create_queue("orders")

            async def producer(k: int) -> None:
                for i in range(150):
                    value = f"p{k}-{i}"
                    await c.send("orders", value.encode(), dedup_id=value)
                    confirmed.append(value)
                    if killed.is_set():
                        after_kill.append(value)

            async def killer() -> None:
                while len(confirmed) < 200:
                    await trio.sleep(0.01)
                assert launcher.kill(leader) == -signal.SIGKILL
                killed.set()

            async with trio.open_nursery() as nursery:
                for k in range(4):
                    nursery.start_soon(producer, k)
                nursery.start_soon(killer)
            # The fault really happened: the process is gone and another node leads.
            assert not alive(old_pid)
            new_leader = await launcher.wait_for_leader_async()
            assert new_leader != leader
            assert len(after_kill) > 50, "the client did not carry on after the kill"
            launcher.start_node(leader)
            received: dict[str, int] = {}
            empty = 0
            while empty < 3:
                msgs = await c.receive("orders", max_messages=100)
                if not msgs:
                    empty += 1
                    continue
                empty = 0
                for m in msgs:
                    received[m.body.decode()] = received.get(m.body.decode(), 0) + 1
                await c.ack("orders", [m.receipt for m in msgs])
        assert len(confirmed) == 600
        lost = set(confirmed) - set(received)
        assert not lost, f"confirmed but never received: {sorted(lost)[:10]}"
        assert not set(received) - set(confirmed)
        dups = {v: n for v, n in received.items() if n > 1}
        assert not dups, f"enqueued twice under one dedup id: {dups}"


def test_restart_all_keeps_queues_messages_leases_and_counts(tmp_path: Path) -> None:
    with Launcher(fast_config(tmp_path)) as launcher:
        launcher.start()
        with Client(launcher.servers, timeout_s=30) as c:
            c.create_queue("jobs", visibility_timeout_ms=60_000)
            c.create_queue("other", fifo=True)
            for i in range(20):
                c.send("jobs", f"job {i}")
            c.send("other", "x", group="g")
            # Two messages delivered twice (short lease, expired), five now in flight.
            first = c.receive("jobs", max_messages=2, visibility_timeout_ms=200)
            time.sleep(0.5)
            again = c.receive("jobs", max_messages=2)
            assert [m.message_id for m in again] == [m.message_id for m in first]
            assert {m.delivery_count for m in again} == {2}
            leased = c.receive("jobs", max_messages=3)
            in_flight = {m.message_id: m for m in again + leased}
            before = c.queue_stats("jobs")
            assert before["in_flight"] == 5 and before["messages"] == 20
            pids = launcher.pids
            for nid in launcher.node_ids:
                launcher.kill(nid)
            assert all(not alive(p) for p in pids.values())
            launcher.start()
            assert sorted(c.list_queues()) == ["jobs", "jobs.dlq", "other", "other.dlq"]
            after = c.queue_stats("jobs")
            for key in ("messages", "in_flight", "ready", "enqueued", "delivered", "redelivered"):
                assert after[key] == before[key], key
            # The leases survived: the in-flight messages are not delivered to others, and
            # their receipts (delivery attempt included) still work.
            rest = c.receive("jobs", max_messages=100)
            assert len(rest) == 15 and not {m.message_id for m in rest} & set(in_flight)
            assert c.ack("jobs", [m.receipt for m in in_flight.values()]).acked == 5
            # Delivery counts survived too: nack one and see its count go on from 1.
            c.nack("jobs", rest[0].receipt)
            again2 = c.receive("jobs", max_messages=1)
            assert again2[0].message_id == rest[0].message_id
            assert again2[0].delivery_count == 2
            wait_converged(c, launcher)


def test_follower_catches_up_through_a_snapshot(tmp_path: Path) -> None:
    with Launcher(fast_config(tmp_path, snapshot_entries=200, log_margin_entries=0)) as launcher:
        leader = launcher.start()
        follower = next(n for n in launcher.node_ids if n != leader)
        with Client(launcher.servers, timeout_s=30) as c:
            c.create_queue("q")
            pid = launcher.pids[follower]
            launcher.kill(follower)
            assert not alive(pid)
            for i in range(240):  # one log entry each: past snapshot_entries
                c.send("q", f"m{i}")
            st = c.node_status(launcher.addresses[leader])
            assert st["snapshot_index"] > 0, "the leader did not compact its log"
            launcher.start_node(follower)
            converged = wait_converged(c, launcher, timeout_s=30)
            fs = converged[follower]
            assert fs["raft_stats"]["snapshots_installed"] >= 1, "caught up without a snapshot"
            assert c.queue_stats("q")["messages"] == 240
            # And it keeps replicating afterwards.
            c.send("q", "after")
            wait_converged(c, launcher)


def test_unacked_message_is_redelivered_and_old_receipt_rejected(tmp_path: Path) -> None:
    with Launcher(fast_config(tmp_path)) as launcher:
        launcher.start()
        with Client(launcher.servers, timeout_s=30) as c:
            c.create_queue("q", visibility_timeout_ms=800)
            c.send("q", "work")
            m1 = c.receive("q")[0]
            assert m1.delivery_count == 1
            assert c.receive("q") == []  # invisible while leased
            time.sleep(1.2)
            m2 = c.receive("q", wait_s=2)[0]
            assert m2.message_id == m1.message_id and m2.delivery_count == 2
            assert m2.receipt != m1.receipt
            with pytest.raises(InvalidReceipt):
                c.ack("q", [m1.receipt])
            assert c.ack("q", [m2.receipt]).acked == 1
            assert c.queue_stats("q")["messages"] == 0


def test_bad_input_and_wrong_peers_are_refused(tmp_path: Path) -> None:
    cfg = fast_config(tmp_path)
    with Launcher(cfg) as launcher:
        leader = launcher.start()
        cfg = launcher.config
        with Client(launcher.servers, timeout_s=30) as c:
            c.create_queue("q")

            async def attack() -> dict[str, int]:
                host, port = cfg.node(leader).client_addr
                results = {}
                # Garbage, an oversized frame, and a non-CBOR frame on client connections.
                for name, blob in [
                    ("garbage", os.urandom(64)),
                    ("oversized", struct.pack(">I", 1 << 30) + b"x"),
                    ("not_cbor", struct.pack(">I", 3) + b"\xff\xfe\xfd"),
                ]:
                    s = await trio.open_tcp_stream(host, port)
                    await s.send_all(blob)
                    with trio.move_on_after(2):
                        data = await s.receive_some(1 << 16)
                        results[name] = len(data)
                    await s.aclose()
                # Peers with the wrong secret and the wrong cluster id.
                for cluster_id, secret in [(cfg.cluster_id, b"w" * 32), ("other", cfg.secret)]:
                    send, _receive = trio.open_memory_channel(10)
                    t = Transport(99, cluster_id, secret, ("127.0.0.1", 0),
                                  {leader: cfg.node(leader).raft_addr}, send)
                    async with trio.open_nursery() as n:
                        await n.start(t.run)
                        t.send(Heartbeat(Term(10**6), NodeId(99), NodeId(leader), Index(0)))
                        await trio.sleep(1.0)
                        assert not t.connected(leader)
                        n.cancel_scope.cancel()
                return results

            before = c.node_status(launcher.addresses[leader])
            replies = trio.run(attack)
            assert replies.get("oversized", 0) > 0 and replies.get("not_cbor", 0) > 0
            after = c.node_status(launcher.addresses[leader])
            assert after["transport"]["handshake_failures"] >= before["transport"][
                "handshake_failures"] + 2
            assert after["term"] == before["term"], "a refused peer changed the term"
            assert after["server"]["bad_frames"] >= before["server"]["bad_frames"] + 2
            # The node goes on serving everyone.
            assert c.send("q", "still fine").message_id > 0
            assert [m.text for m in c.receive("q")] == ["still fine"]
            assert launcher.is_running(leader)


def test_raftq_error_codes_cross_the_wire(tmp_path: Path) -> None:
    with Launcher(fast_config(tmp_path)) as launcher:
        launcher.start()
        with Client(launcher.servers, timeout_s=10) as c:
            with pytest.raises(RaftqError) as exc:
                c.send("missing", "x")
            assert exc.value.code == "QUEUE_NOT_FOUND"


def test_client_moves_on_from_a_paused_node(tmp_path: Path) -> None:
    # A SIGSTOPped node still accepts TCP connections; the client must notice it does not
    # answer (ping probe) and carry on with the others well before its request timeout.
    with Launcher(fast_config(tmp_path)) as launcher:
        leader = launcher.start()
        follower = next(n for n in launcher.node_ids if n != leader)
        servers = [launcher.addresses[follower]] + [
            a for n, a in launcher.addresses.items() if n != follower]
        launcher.pause(follower)
        assert launcher.is_paused(follower)
        with Client(servers, timeout_s=30, request_timeout_s=25) as c:
            t0 = time.monotonic()
            c.create_queue("q")
            assert c.send("q", "x").message_id > 0
            elapsed = time.monotonic() - t0
        launcher.resume(follower)
        assert elapsed < 10, f"took {elapsed:.1f} s to get past a paused node"


def test_node_with_corrupt_data_refuses_to_start_and_names_the_file(tmp_path: Path) -> None:
    from tests.io.test_storage import flip_byte, raw_db

    with Launcher(fast_config(tmp_path)) as launcher:
        leader = launcher.start()
        victim = next(n for n in launcher.node_ids if n != leader)
        with Client(launcher.servers, timeout_s=30) as c:
            c.create_queue("q")
            for i in range(20):
                c.send("q", f"m{i}")
            wait_converged(c, launcher)
            launcher.stop_node(victim)
            assert not launcher.is_running(victim)
            db_path = launcher.config.node(victim).data_dir / "raft"
            with raw_db(db_path) as cfs:
                keys = list(cfs["log"].keys())
                flip_byte(cfs["log"], keys[len(keys) // 2])
            launcher.start_node(victim)
            deadline = time.monotonic() + 20
            while launcher.is_running(victim):
                assert time.monotonic() < deadline, "node started on corrupt data"
                time.sleep(0.1)
            assert launcher.exit_code(victim) not in (0, None)
            log = launcher.log_path(victim).read_text()
            assert "cannot start" in log and str(db_path) in log and "checksum" in log
            # The other two carry on.
            assert c.send("q", "after").message_id > 0
