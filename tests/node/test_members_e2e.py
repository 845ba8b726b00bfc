"""Membership changes against real node processes on 127.0.0.1 (issue 12, the node side):
`raftq node --join` while a producer runs, removals of a follower and of the leader, and the
refusals a real cluster gives. Processes are started and stopped by pid (`Launcher`); every
wait is bounded."""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from cluster.client import AsyncClient
from cluster.launcher import Launcher
from node import config as config_mod
from node.join import JoinError, ask, ask_leader
from tests.client.test_launcher import alive, free_base_port

from .inproc import free_ports

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

QUEUE = "orders"


def fast_config(tmp: Path) -> config_mod.ClusterConfig:
    cfg = config_mod.local_cluster(tmp, 3, free_base_port())
    return dataclasses.replace(cfg, tick_ms=20)


def joiner(cluster: Launcher, tmp: Path, node_id: int) -> Launcher:
    """A launcher for a node added later: its own file holds the cluster's id, secret and
    timing and only its own entry (`initial = false`), as on another host."""
    raft, client = free_ports(2)
    nc = config_mod.NodeConfig(node_id, ("127.0.0.1", raft), ("127.0.0.1", client),
                               tmp / f"n{node_id}", initial=False)
    cfg = dataclasses.replace(cluster.config, nodes={node_id: nc}, path=None)
    return Launcher(cfg, config_path=tmp / f"n{node_id}.toml", log_dir=tmp)


async def until(what: str, check: Callable[[], Any], timeout_s: float = 20.0,
                every_s: float = 0.05) -> Any:
    """Wait (bounded) until `await check()` returns something true; returns it."""
    deadline = trio.current_time() + timeout_s
    last: Any = None
    while trio.current_time() < deadline:
        try:
            last = await check()
        except (JoinError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        await trio.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s:g} s (last: {last!r:.300})")


async def members(addrs: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = await ask_leader(addrs, "members", timeout_s=10)
    return result


def rows(view: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {row["id"]: row for row in view["members"]}


async def status(addr: str) -> dict[str, Any]:
    reply = await ask(addr, "node_status", timeout_s=5)
    assert reply["ok"], reply
    result: dict[str, Any] = reply["result"]
    return result


async def drain(c: AsyncClient) -> dict[str, int]:
    received: dict[str, int] = {}
    empty = 0
    while empty < 3:
        msgs = await c.receive(QUEUE, max_messages=100)
        if not msgs:
            empty += 1
            continue
        empty = 0
        for m in msgs:
            received[m.body.decode()] = received.get(m.body.decode(), 0) + 1
        await c.ack(QUEUE, [m.receipt for m in msgs])
    return received


@pytest.mark.extended  # CI time: tests/node/test_membership_jepsen.py proof (c) runs in CI
async def test_joined_nodes_catch_up_and_five_survive_losing_two_originals(
    tmp_path: Path,
) -> None:
    """3 -> 5 with `--join` while a producer runs; each newcomer is a learner until caught
    up, then a voter; then two of the original three are killed (SIGKILL, the leader among
    them): writes still commit, and nothing acknowledged is lost."""
    launcher = Launcher(fast_config(tmp_path))
    newcomers = {nid: joiner(launcher, tmp_path, nid) for nid in (4, 5)}
    confirmed: list[str] = []
    stop = trio.Event()
    with launcher, newcomers[4], newcomers[5]:
        launcher.start(wait=False)
        leader = await launcher.wait_for_leader_async()
        servers = launcher.servers
        async with AsyncClient(servers, timeout_s=30) as c:
            await c.create_queue(QUEUE)

            async def producer(k: int) -> None:
                i = 0
                while not stop.is_set():
                    value = f"p{k}-{i}"
                    await c.send(QUEUE, value.encode(), dedup_id=value)
                    confirmed.append(value)
                    i += 1

            async with trio.open_nursery() as nursery:
                for k in range(2):
                    nursery.start_soon(producer, k)
                await until("the producers run", lambda: _true(len(confirmed) >= 50))
                for nid, node in newcomers.items():
                    before = len(confirmed)
                    node.start_node(nid, ["--join", servers[0]])
                    learner = await until(
                        f"node {nid} admitted",
                        lambda nid=nid, at=servers: _row_if(members(at), nid))
                    view = await until(
                        f"node {nid} promoted and caught up",
                        lambda nid=nid, at=servers: _row_if(members(at), nid, role="voter",
                                                            lag=50))
                    assert learner["role"] in ("learner", "voter")
                    assert view["state"] == "replicate" and not view["repairing"]
                    await until(f"node {nid}'s log tells its steps", lambda nid=nid, node=node:
                                _true(_logged(node.log_path(nid), "admitted as a learner",
                                              f"learners [{nid}]", "promoted to voter")))
                    assert len(confirmed) > before, "the producers stalled during the change"
                    servers = [*servers, view["client_addr"]]
                view = await members(servers)
                assert [(r["id"], r["role"]) for r in view["members"]] == [
                    (i, "voter") for i in range(1, 6)]
                # A new member's node_status shows the membership it learned from the log.
                st = await status(rows(view)[5]["client_addr"])
                assert st["voters"] == [1, 2, 3, 4, 5] and st["learners"] == []
                # Two of the original three die at once, the leader among them.
                leader = view["leader_id"]
                victims = [n for n in (leader, 1, 2, 3) if n in (1, 2, 3)]
                victims = list(dict.fromkeys(victims))[:2]
                pids = [launcher.pids[v] for v in victims]
                for v in victims:
                    assert launcher.kill(v) == -signal.SIGKILL
                assert not any(alive(p) for p in pids)
                at_kill = len(confirmed)
                await until("writes commit after the kill",
                            lambda: _true(len(confirmed) >= at_kill + 100), timeout_s=30)
                stop.set()
            view = await members(servers)
            assert view["leader_id"] not in victims
            received = await drain(c)
            # Restarted with --join again, a member with a database changes nothing.
            newcomers[4].stop_node(4)
            newcomers[4].start_node(4, ["--join", servers[0]])
            await until("node 4 back", lambda: _true(_logged(
                newcomers[4].log_path(4), "already has a database")))
            addr4 = rows(view)[4]["client_addr"]
            st = await until("node 4 serves again", lambda: status(addr4))
            assert st["voters"] == [1, 2, 3, 4, 5]
            assert len(rows(await members(servers))) == 5
        lost = set(confirmed) - set(received)
        assert not lost, f"confirmed but never received: {sorted(lost)[:10]}"
        assert not set(received) - set(confirmed)
        dups = {v: n for v, n in received.items() if n > 1}
        assert not dups, f"enqueued twice under one dedup id: {dups}"


def _logged(path: Path, *lines: str) -> bool:
    text = path.read_text()
    return all(line in text for line in lines)


async def _true(value: bool) -> bool:
    return value


async def _row_if(view_of: Any, nid: int, role: str | None = None,
                  lag: int | None = None) -> dict[str, Any] | None:
    row = rows(await view_of).get(nid)
    if row is None or (role is not None and row["role"] != role):
        return None
    if lag is not None and (row["lag"] is None or row["lag"] > lag):
        return None
    return row


async def test_remove_a_follower_then_the_leader(tmp_path: Path) -> None:
    """A removed follower is no longer dialled; the leader hands over before its own removal;
    the cluster refuses unknown and retired ids, also to `raftq node --join`."""
    launcher = Launcher(fast_config(tmp_path))
    with launcher:
        launcher.start(wait=False)
        leader = await launcher.wait_for_leader_async()
        servers = launcher.servers
        follower = next(n for n in launcher.node_ids if n != leader)
        async with AsyncClient(servers, timeout_s=30) as c:
            await c.create_queue(QUEUE)
            for i in range(20):
                await c.send(QUEUE, f"m{i}")
            # Unknown id: a clear, stable refusal.
            with pytest.raises(JoinError) as info:
                await ask_leader(servers, "remove_member", {"id": 9})
            assert info.value.code == "UNKNOWN_MEMBER"
            # A follower: removed; the others stop dialling it; it keeps running, outside.
            r = await ask_leader(servers, "remove_member", {"id": follower}, timeout_s=15)
            assert r["node_id"] == follower
            view = await members(servers)
            assert sorted(rows(view)) == sorted(set(launcher.node_ids) - {follower})
            rest = [n for n in launcher.node_ids if n != follower]
            for n in rest:
                await until(f"node {n} stops dialling node {follower}", lambda n=n: _not_dialling(
                    launcher.addresses[n], follower))
            assert launcher.is_running(follower)
            await until("the removed node says so", lambda: _true(
                "is not a member" in launcher.log_path(follower).read_text()))
            # The leader: it hands over, the new leader removes it.
            r = await ask_leader(servers, "remove_member", {"id": leader}, timeout_s=15)
            assert r["node_id"] == leader
            view = await members(servers)
            (last,) = [n for n in rest if n != leader]
            assert view["leader_id"] == last and sorted(rows(view)) == [last]
            await until(f"node {last} stops dialling node {leader}",
                        lambda: _not_dialling(launcher.addresses[last], leader))
            # One voter left: writes still commit, nothing was lost.
            await c.send(QUEUE, "after")
            assert (await c.queue_stats(QUEUE))["messages"] == 21
            # A retired id is never given again, not even to a new process that asks for it.
            again = joiner(launcher, tmp_path / "again", follower)
            with again:
                again.start_node(follower, ["--join", launcher.addresses[last]])
                deadline = time.monotonic() + 20
                while again.is_running(follower):
                    assert time.monotonic() < deadline, "a node with a retired id started"
                    await trio.sleep(0.05)
                assert again.exit_code(follower) == 2
                line = again.log_path(follower).read_text().strip().splitlines()[-1]
                assert "cannot join the cluster" in line and "ID_RETIRED" in line, line


async def _not_dialling(addr: str, peer: int) -> bool:
    st = await status(addr)
    return str(peer) not in st["transport"]["peers"]


async def test_members_is_refused_by_a_cut_off_leader(tmp_path: Path) -> None:
    """With both followers paused (SIGSTOP), the leader cannot confirm that it leads: it
    answers `members` with NOT_LEADER or UNAVAILABLE, never with what it last knew."""
    launcher = Launcher(fast_config(tmp_path))
    with launcher:
        launcher.start(wait=False)
        leader = await launcher.wait_for_leader_async()
        addr = launcher.addresses[leader]
        assert (await ask(addr, "members"))["ok"]
        followers = [n for n in launcher.node_ids if n != leader]
        for f in followers:
            launcher.pause(f)
        try:
            codes = set()
            deadline = trio.current_time() + 2.0
            while trio.current_time() < deadline:
                reply = await ask(addr, "members", timeout_s=5)
                assert not reply["ok"], f"a cut-off leader answered members: {reply}"
                codes.add(reply["error"]["code"])
            assert codes <= {"NOT_LEADER", "UNAVAILABLE"}, codes
        finally:
            for f in followers:
                launcher.resume(f)
        await until("a leader again", lambda: ask_leader(launcher.servers, "members"))
