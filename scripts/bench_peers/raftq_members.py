"""A new node catching up, for `scripts/bench cluster` (`--only catchup`): how fast a node
admitted to a running cluster that holds a backlog gets the whole state, and what the change
costs the producers meanwhile.

It drives a started `RaftqSystem`'s cluster as a user would: the new node's entry is added to
the cluster's configuration file (`cluster.launcher.new_local_node`, as `raftq cluster
add-node` does), the node is started with `--join` (it asks to be admitted as a learner, then
for its own promotion), and the membership is polled through `AsyncClient.members()` until the
node is a voter whose applied index reached the leader's.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import trio

from bench_peers.common import body, rate_window, tree_memory_bytes
from bench_peers.raftq_peer import RaftqSystem, dir_bytes, keep_sending, tcp_bytes_received
from cluster.client import AsyncClient
from cluster.errors import RaftqError
from cluster.launcher import new_local_node, with_node, write_config
from node.config import format_addr


def catch_up(
    system: RaftqSystem,
    queue: str | None,
    load_in_flight: int = 16,
    producers: int = 16,
    before_s: float = 5.0,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Admit a new node to `system`'s cluster while `load_in_flight` sends are kept
    outstanding, and time it until it is a voter that applied the leader's index.

    Args:
        system: a started `RaftqSystem`, normally holding a backlog (`RaftqSystem.fill`).
        queue: the backlog's queue, for its message count (None: not counted).
        load_in_flight: sends kept outstanding by `producers` clients from `before_s` before
            the start until the node caught up (0: no load).
        producers: clients sharing the load.
        before_s: seconds of load measured before the node starts (the baseline rate).
        timeout_s: give up after this long from the start (`timed_out` is then True).

    Returns:
        node (new id), timed_out, learner_s (first seen as a member), caught_up_s (its applied
        index reached the leader's), voter_s (first seen as a voter), done_s (both),
        entries (the leader's applied index then), messages, received_bytes (what its peers
        sent it: TCP bytes received on its Raft port), data_bytes (its data directory when
        done), bytes_per_s and messages_per_s (over done_s), sends_before_per_s (the baseline)
        and sends_during_per_s (from the start until done) with their ratio, errors.
    """
    return trio.run(_catch_up, system, queue, load_in_flight, producers, before_s, timeout_s)


async def _catch_up(
    system: RaftqSystem,
    queue: str | None,
    load_in_flight: int,
    producers: int,
    before_s: float,
    timeout_s: float,
) -> dict[str, Any]:
    launcher = system.launcher
    assert launcher is not None
    payload = body(0)
    dones: list[float] = []
    errors: list[str] = []
    stop_load = trio.Event()
    async with contextlib.AsyncExitStack() as stack:
        c = await stack.enter_async_context(
            AsyncClient(launcher.servers, timeout_s=60.0, request_timeout_s=2.0))
        members = await c.members()
        nid = members.max_id + 1
        node = new_local_node(launcher.config, nid)
        launcher.config = write_config(with_node(launcher.config, node), launcher.config_path)
        clients = [
            await stack.enter_async_context(AsyncClient(launcher.servers, timeout_s=60.0))
            for _ in range(producers if load_in_flight else 0)
        ]
        load_q = await system._new_queue(c, "catchup-load") if load_in_flight else None
        nursery = await stack.enter_async_context(trio.open_nursery())

        for i in range(load_in_flight):
            assert load_q is not None
            nursery.start_soon(keep_sending, clients[i % producers], load_q, payload,
                               stop_load, dones, errors)
        t_load = time.monotonic()
        if load_in_flight:
            await trio.sleep(before_s)
        leader = members.leader_id
        join = next(m.client_addr for m in members.members if m.id == leader)
        steady = {f"n{k}": tree_memory_bytes(pid) for k, pid in launcher.pids.items()}
        peak = dict(steady)

        def sample() -> None:
            for k, pid in launcher.pids.items():
                name = f"n{k}"
                peak[name] = max(peak.get(name, 0), tree_memory_bytes(pid))

        t0 = time.monotonic()
        launcher.start_node(nid, join=join)
        learner_s = caught_up_s = voter_s = None
        lead_applied = 0
        addr = format_addr(node.client_addr)
        while time.monotonic() - t0 < timeout_s:
            await trio.to_thread.run_sync(sample)
            try:
                m = await c.members()
                mine = next((x for x in m.members if x.id == nid), None)
                lead_addr = next(x.client_addr for x in m.members if x.id == m.leader_id)
                lead_applied = (await c.node_status(lead_addr, timeout_s=2.0))["applied_index"]
                st = await c.node_status(addr, timeout_s=1.0) if mine is not None else None
            except RaftqError:
                await trio.sleep(0.05)
                continue
            now = time.monotonic() - t0
            if mine is not None and learner_s is None:
                learner_s = now
            if mine is not None and mine.role == "voter" and voter_s is None:
                voter_s = now
            if st is not None and st["applied_index"] >= lead_applied and caught_up_s is None:
                caught_up_s = now
            if voter_s is not None and caught_up_s is not None:
                break
            await trio.sleep(0.05)
        done_s = time.monotonic() - t0
        t_done = t0 + done_s
        received = await trio.to_thread.run_sync(tcp_bytes_received, node.raft_addr[1])
        stop_load.set()  # the producers finish the sends they have out (the nursery waits)
    messages = None
    if queue is not None:
        async with AsyncClient(launcher.servers, timeout_s=30.0) as c:
            with contextlib.suppress(RaftqError):
                messages = (await c.queue_stats(queue))["messages"]
    timed_out = voter_s is None or caught_up_s is None
    before = rate_window(dones, t_load + 1.0, t0) if load_in_flight else None
    during = rate_window(dones, t0, t_done) if load_in_flight else None
    return {
        "node": nid,
        "timed_out": timed_out,
        "learner_s": learner_s,
        "caught_up_s": caught_up_s,
        "voter_s": voter_s,
        "done_s": done_s,
        "entries": lead_applied,
        "messages": messages,
        "received_bytes": received,
        "data_bytes": dir_bytes(node.data_dir),
        "bytes_per_s": received / done_s if received is not None else None,
        "messages_per_s": messages / done_s if messages is not None else None,
        "sends_before_per_s": before,
        "sends_during_per_s": during,
        "during_vs_before": during / before if before and during is not None else None,
        "errors": len(errors),
        "longest_confirm_gap_s": _longest_gap(dones, t0, t_done),
        "memory_before_mib": {k: round(v / 2**20, 1) for k, v in steady.items()},
        "memory_peak_mib": {k: round(v / 2**20, 1) for k, v in peak.items()},
    }


def _longest_gap(dones: list[float], lo: float, hi: float) -> float | None:
    """The longest time between two confirmed sends (or an end of [lo, hi]) inside [lo, hi]."""
    inside = sorted(t for t in dones if lo <= t <= hi)
    if not inside:
        return None
    points = [lo, *inside, hi]
    return max(b - a for a, b in zip(points, points[1:], strict=False))
