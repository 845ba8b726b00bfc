"""Linearizable reads against real node processes: a leader cut off from both followers never
answers a read with data from before the cut once a new leader has committed writes.

Three nodes on 127.0.0.1 whose node-to-node links all pass through the harness's proxies
(`jepsen_like.proxy.ProxyMesh`, as `scripts/jepsen` builds them); the processes are started
and stopped by pid (`jepsen_like.procs.NodeProcs`). In each of three rounds the leader of the
moment, L, is cut off from both followers, both directions: by closing its connections, or
in silence (bytes swallowed, nothing closed or reset; the test's parameter). Meanwhile:

* a client that knows only L's address reads `queue_stats` in a loop (two tasks), and so does
  a client that knows every node;
* a client that knows only the followers waits for one of them to lead, then sends messages
  (one at a time, each with its own deduplication id) and records when each was confirmed;
* a client that knows only L asks it for `cluster_status` in a loop.

Then: no read answered OK shows fewer `enqueued` than the messages confirmed before the read
was issued (never stale); the fault happened (the proxies' counters, a new leader with a
higher term); the client that knew only L reaches the new leader (reads the new data there)
within 5 s of the cut; `cluster_status` asked of L does not name L once the new leader has
committed writes. The links are healed and the nodes converge before the next round.

Before ReadIndex (with node/server.py `_confirm_leadership` returning at once) the old leader
answered reads from before the cut until check-quorum made it step down, after the new
leader's first commits whenever the followers elected one before that: in most rounds with
closed links (the followers notice the closed connections and elect within ~50 ms), in about
half with silent ones (they wait for their election timeout).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from cluster.client import AsyncClient
from cluster.errors import RaftqError
from jepsen_like.procs import NodeProcs
from jepsen_like.proxy import ProxyMesh
from jepsen_like.runner import _free_ports
from node import config as config_mod

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

TICK_MS = 20  # election timeout 200 to 400 ms; a read waits at most 3 x 200 ms
INITIAL = 5  # messages sent before the first cut
ROUNDS = 3  # cuts per test, each of the leader of the moment, healed in between
WRITE_S = 2.0  # the writer sends for this long after the cut
REACH_BOUND_S = 5.0  # the client that knew only L reads from the new leader by then
QUEUE = "q"


@dataclass
class Read:
    who: str
    issued: float  # trio.current_time(), like every time here
    done: float
    enqueued: int | None  # None: the call failed
    leader: str | None  # the client's `leader` after the call
    error: str | None = None


@dataclass
class Status:
    issued: float
    done: float
    leader_id: int | None
    term: int | None
    error: str | None = None


@dataclass
class Observed:
    """One round: the leader of the moment cut off, observed, healed."""

    mode: str
    round: int
    base: int  # `enqueued` before the cut, every one of them confirmed
    leader: int
    leader_term: int
    addrs: dict[int, str]
    cut_at: float = 0.0
    cut_links: list[tuple[int, int]] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    confirmed: list[float] = field(default_factory=list)  # when each post-cut send was confirmed
    send_errors: list[str] = field(default_factory=list)
    attempted: int = 0
    new_leader_seen: float = 0.0
    writer_leader: str | None = None
    l_client_leader: str | None = None
    new_status: dict[str, Any] = field(default_factory=dict)  # the new leader's node_status
    stats_before_cut: dict[str, dict[str, int]] = field(default_factory=dict)
    stats_at_cut: dict[str, dict[str, int]] = field(default_factory=dict)  # just after the cut
    stats_before_heal: dict[str, dict[str, int]] = field(default_factory=dict)
    stats_after_heal: dict[str, dict[str, int]] = field(default_factory=dict)
    final_enqueued: int = 0
    converged: dict[int, dict[str, Any]] = field(default_factory=dict)


def _client(servers: list[str], **kw: Any) -> AsyncClient:
    opts: dict[str, Any] = dict(timeout_s=3.0, connect_timeout_s=0.5, request_timeout_s=1.0,
                                backoff_initial_s=0.01, backoff_max_s=0.1)
    opts.update(kw)
    return AsyncClient(servers, **opts)


async def _build(tmp: Path) -> tuple[config_mod.ClusterConfig, ProxyMesh]:
    ports = _free_ports(6)
    raft = {i: ("127.0.0.1", ports[2 * i - 2]) for i in (1, 2, 3)}
    client = {i: ("127.0.0.1", ports[2 * i - 1]) for i in (1, 2, 3)}
    mesh = ProxyMesh(raft)
    dial = await mesh.bind()
    nodes = {i: config_mod.NodeConfig(i, raft[i], client[i], tmp / "data" / f"n{i}", dial[i])
             for i in (1, 2, 3)}
    cfg = config_mod.ClusterConfig(cluster_id="stale-reads", secret=b"stale-reads-0123456789abc",
                                   nodes=nodes, tick_ms=TICK_MS)
    return config_mod.write(cfg, tmp / "cluster.toml"), mesh


async def _confirmed_leader(admin: AsyncClient, addrs: dict[int, str]) -> tuple[int, int] | None:
    """The node that leads and confirms it with a heartbeat round, and its term."""
    for nid, addr in addrs.items():
        try:
            st = await admin.node_status(addr, timeout_s=1.0, confirm=True)
        except RaftqError:
            continue
        if st.get("role") == "leader" and st.get("leader_confirmed"):
            return nid, int(st["term"])
    return None


async def _scenario(tmp: Path, mode: str) -> list[Observed]:
    cfg, mesh = await _build(tmp)
    procs = NodeProcs(cfg, tmp / "logs")
    addrs = {nid: config_mod.format_addr(nc.client_addr) for nid, nc in sorted(cfg.nodes.items())}
    async with trio.open_nursery() as nursery:
        await nursery.start(mesh.run)
        try:
            for nid in sorted(cfg.nodes):
                await procs.start(nid)
            return await _rounds(procs, mesh, addrs, mode)
        finally:
            await procs.stop_all()
            nursery.cancel_scope.cancel()
    raise AssertionError("unreachable")  # pragma: no cover


async def _rounds(procs: NodeProcs, mesh: ProxyMesh, addrs: dict[int, str],
                  mode: str) -> list[Observed]:
    await procs.launcher.wait_for_leader_async(timeout_s=30)
    async with _client(list(addrs.values()), timeout_s=10.0) as admin:
        await admin.create_queue(QUEUE)
        for i in range(INITIAL):
            await admin.send(QUEUE, f"before {i}", dedup_id=f"before-{i}")
    out: list[Observed] = []
    base = INITIAL
    for k in range(ROUNDS):
        async with _client(list(addrs.values()), timeout_s=10.0) as admin:
            with trio.fail_after(10):
                while (found := await _confirmed_leader(admin, addrs)) is None:
                    await trio.sleep(0.05)
        obs = Observed(mode, k, base, found[0], found[1], addrs)
        await _round(mesh, obs)
        out.append(obs)
        base = obs.final_enqueued
    return out


async def _round(mesh: ProxyMesh, obs: Observed) -> None:
    """Cut `obs.leader` off from both followers, observe, heal, wait until all converge."""
    leader, term, addrs, mode, k = obs.leader, obs.leader_term, obs.addrs, obs.mode, obs.round
    followers = [n for n in addrs if n != leader]
    cut = trio.Event()
    writer_done = trio.Event()
    reached = trio.Event()  # the client that knew only L read from the new leader after a write

    l_reader = _client([addrs[leader]])
    any_reader = _client(list(addrs.values()))
    status_client = _client([addrs[leader]])
    probe = _client(list(addrs.values()))

    async def read_loop(who: str, c: AsyncClient) -> None:
        while not (writer_done.is_set() and (reached.is_set() or
                                             trio.current_time() > obs.cut_at + REACH_BOUND_S)):
            t0 = trio.current_time()
            try:
                st = await c.queue_stats(QUEUE)
            except RaftqError as exc:
                obs.reads.append(Read(who, t0, trio.current_time(), None, c.leader,
                                      f"{type(exc).__name__}: {exc}"))
                continue
            obs.reads.append(Read(who, t0, trio.current_time(), int(st["enqueued"]), c.leader))
            if (who == "L-only" and cut.is_set() and obs.confirmed and t0 > obs.confirmed[0]
                    and c.leader not in (None, addrs[leader]) and writer_done.is_set()):
                reached.set()
            await trio.sleep(0.002)

    async def status_loop() -> None:
        await cut.wait()
        while not writer_done.is_set():
            t0 = trio.current_time()
            try:
                st = await status_client.cluster_status(timeout_s=3.0)
                obs.statuses.append(Status(t0, trio.current_time(), st.get("leader_id"),
                                           st.get("term")))
            except RaftqError as exc:
                obs.statuses.append(Status(t0, trio.current_time(), None, None,
                                           f"{type(exc).__name__}: {exc}"))
            await trio.sleep(0.05)

    async def new_leader() -> int:
        """Wait for a follower that says it leads, in a term above L's (its own view)."""
        with trio.fail_after(REACH_BOUND_S):
            while True:
                for f in followers:
                    try:
                        st = await probe.node_status(addrs[f], timeout_s=0.5)
                    except RaftqError:
                        continue
                    if st.get("role") == "leader" and st.get("term", 0) > term:
                        obs.new_leader_seen = trio.current_time()
                        return f
                await trio.sleep(0.005)

    async def write_loop() -> None:
        # A client that knows only the followers, the new leader first. (A client sent to a
        # follower that has not timed out yet is redirected to L, and waits there, L being
        # unable to commit, until L steps down: its first writes would come too late to
        # show a stale read.)
        await cut.wait()
        try:
            new = await new_leader()
            other = next(f for f in followers if f != new)
            async with _client([addrs[new], addrs[other]], timeout_s=10.0) as writer:
                i = 0
                while trio.current_time() < obs.cut_at + WRITE_S:
                    obs.attempted += 1
                    try:
                        await writer.send(QUEUE, f"round {k} {i}", dedup_id=f"r{k}-{i}")
                    except RaftqError as exc:
                        obs.send_errors.append(f"{type(exc).__name__}: {exc}")
                    else:
                        obs.confirmed.append(trio.current_time())
                    i += 1
                obs.writer_leader = writer.leader
                if writer.leader is not None:
                    try:
                        obs.new_status = await writer.node_status(writer.leader, timeout_s=2.0,
                                                                  confirm=True)
                    except RaftqError as exc:
                        obs.new_status = {"error": str(exc)}
        finally:
            writer_done.set()

    async def cutter() -> None:
        # L answers reads before the cut (so the L-only client is talking to it), then its
        # four links are cut: L -> each follower and each follower -> L.
        with trio.fail_after(10):
            while sum(1 for r in obs.reads if r.who == "L-only" and r.enqueued is not None) < 5:
                await trio.sleep(0.01)
        obs.cut_links = sorted([(leader, f) for f in followers] + [(f, leader) for f in followers])
        obs.stats_before_cut = mesh.stats()
        mesh.cut_links(obs.cut_links, silent=mode == "silent")
        obs.cut_at = trio.current_time()
        cut.set()
        await trio.sleep(0.1)  # a write under way at the cut may still complete
        obs.stats_at_cut = mesh.stats()

    async with l_reader, any_reader, status_client, probe:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_loop, "L-only", l_reader)
                nursery.start_soon(read_loop, "L-only", l_reader)
                nursery.start_soon(read_loop, "any", any_reader)
                nursery.start_soon(status_loop)
                nursery.start_soon(write_loop)
                nursery.start_soon(cutter)
        obs.l_client_leader = l_reader.leader
    obs.stats_before_heal = mesh.stats()
    mesh.heal()
    obs.stats_after_heal = mesh.stats()

    # Healed: L rejoins as a follower and every node applies the same log.
    async with _client(list(addrs.values()), timeout_s=10.0) as admin:
        with trio.fail_after(20):
            while True:
                sts = {}
                for nid, addr in addrs.items():
                    try:
                        sts[nid] = await admin.node_status(addr, timeout_s=1.0)
                    except RaftqError:
                        pass
                if (len(sts) == 3 and len({s["applied_index"] for s in sts.values()}) == 1
                        and sts[leader]["role"] == "follower"):
                    obs.converged = sts
                    break
                await trio.sleep(0.1)
        obs.final_enqueued = int((await admin.queue_stats(QUEUE))["enqueued"])


def _summary(obs: Observed) -> str:
    t_cut = obs.cut_at
    ok = [r for r in obs.reads if r.enqueued is not None]
    errors: dict[str, int] = {}
    for r in obs.reads:
        if r.error:
            key = r.error.split(":")[0]
            errors[key] = errors.get(key, 0) + 1
    l_addr = obs.addrs[obs.leader]
    l_new = [r for r in ok if r.who == "L-only" and r.issued > t_cut and r.leader != l_addr]
    first = f"{obs.confirmed[0] - t_cut:.3f}s" if obs.confirmed else "never"
    reach = f"{l_new[0].done - t_cut:.3f}s" if l_new else "never"
    named: dict[str, int] = {}
    for s in obs.statuses:
        key = s.error.split(":")[0] if s.error else f"leader_id {s.leader_id}"
        named[key] = named.get(key, 0) + 1
    seen = f"{obs.new_leader_seen - t_cut:.3f}s" if obs.new_leader_seen else "never"
    return (f"[{obs.mode} round {obs.round}] L=node {obs.leader} term {obs.leader_term}; "
            f"new leader seen at +{seen}; first write after the cut confirmed at +{first}, "
            f"{len(obs.confirmed)} confirmed of {obs.attempted}; "
            f"{len(ok)} OK reads ({errors or 'no errors'}); L-only client at the new leader "
            f"+{reach}; new leader {obs.writer_leader} term {obs.new_status.get('term')}; "
            f"cluster_status of L: {named}")


def _link(a: int, b: int) -> str:
    return f"{a}->{b}"


def _stale(obs: Observed) -> list[str]:
    """The OK reads that counted fewer messages than were confirmed before they were issued."""
    out = []
    for r in obs.reads:
        if r.enqueued is None:
            continue
        floor = obs.base + bisect.bisect_left(obs.confirmed, r.issued)
        if r.enqueued < floor:
            out.append(f"round {obs.round}: {r.who} issued {r.issued - obs.cut_at:+.3f}s answered "
                       f"{r.done - obs.cut_at:+.3f}s by {r.leader}: enqueued {r.enqueued} < "
                       f"{floor} confirmed before")
    return out


def _delta(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]], link: str,
           key: str) -> int:
    return after[link][key] - before[link][key]


def _check_round(obs: Observed) -> None:
    L, addrs, t_cut, k = obs.leader, obs.addrs, obs.cut_at, obs.round
    followers = [n for n in addrs if n != L]
    where = f"round {k}, L = node {L}"

    def rel(t: float) -> str:
        return f"{t - t_cut:+.3f}s"

    # The workload ran: reads from L before the cut, writes confirmed by the new leader.
    before = [r for r in obs.reads if r.who == "L-only" and r.done < t_cut and r.enqueued]
    assert len(before) >= 5 and {r.leader for r in before} == {addrs[L]}, where
    assert len(obs.confirmed) >= 10, (where, len(obs.confirmed), obs.send_errors[:5])
    first_write = obs.confirmed[0]
    after_write = [r for r in obs.reads if r.enqueued is not None and r.issued > first_write]
    assert len(after_write) >= 10, f"{where}: too few reads after the new leader's first write"

    # The fault happened: a new leader of a higher term, elected by the followers; the four
    # links carried nothing from the cut to the heal; the proxies closed, or swallowed.
    new_addr = obs.writer_leader
    assert new_addr in [addrs[f] for f in followers], (where, new_addr, addrs)
    assert obs.new_status.get("role") == "leader" and obs.new_status.get("leader_confirmed"), \
        (where, obs.new_status)
    assert obs.new_status["term"] > obs.leader_term, where
    pre_cut, at_cut, pre_heal = obs.stats_before_cut, obs.stats_at_cut, obs.stats_before_heal
    cut = [_link(a, b) for a, b in obs.cut_links]
    for link in cut:
        assert _delta(pre_heal, at_cut, link, "bytes_forwarded") == 0, (where, link, pre_heal)
    leader_out = [_link(L, f) for f in followers]
    if obs.mode == "close":
        for link in leader_out:  # L's live connection was closed, and L's redials refused
            assert _delta(pre_heal, pre_cut, link, "dropped") >= 1, (where, link, pre_heal)
        assert sum(_delta(pre_heal, pre_cut, link, "refused") for link in cut) >= 1, where
        assert sum(_delta(pre_heal, pre_cut, link, "bytes_swallowed") for link in cut) == 0
    else:
        for link in leader_out:  # L kept sending (heartbeats) into its silenced connections
            assert _delta(pre_heal, pre_cut, link, "silenced") >= 1, (where, link, pre_heal)
            assert _delta(pre_heal, pre_cut, link, "bytes_swallowed") > 0, (where, link)
        for link in cut:  # nothing was closed or refused while silent
            assert _delta(pre_heal, pre_cut, link, "dropped") == 0, (where, link, pre_heal)
            assert _delta(pre_heal, pre_cut, link, "refused") == 0, (where, link, pre_heal)
        assert sum(_delta(obs.stats_after_heal, pre_heal, link, "closed_at_heal")
                   for link in leader_out) >= 2, where

    # The client that knew only L reached the new leader and read the new data there.
    reached = [r for r in obs.reads if r.who == "L-only" and r.enqueued is not None
               and r.issued > first_write and r.leader == new_addr]
    assert reached, (where, [(rel(r.issued), r.enqueued, r.leader, r.error)
                             for r in obs.reads if r.who == "L-only"][-20:])
    assert reached[0].done - t_cut < REACH_BOUND_S, (where, rel(reached[0].done))
    assert reached[0].enqueued is not None and reached[0].enqueued > obs.base, where
    assert obs.l_client_leader == new_addr, where

    # cluster_status asked of L never names L once the new leader has committed writes: it
    # names a follower, in a term above L's, or no one. (Not necessarily `new_leader`, the
    # writer's leader at the end: on a loaded machine leadership can move once more between
    # the two followers during the write window, and then the earlier one is named.)
    late = [s for s in obs.statuses if s.issued > first_write and s.error is None]
    assert late, (where, [(rel(s.issued), s.leader_id, s.error) for s in obs.statuses])
    assert all(s.leader_id is None or (s.leader_id in followers and s.term is not None
                                       and s.term > obs.leader_term) for s in late), \
        (where, [(rel(s.issued), s.leader_id, s.term) for s in late])
    assert any(s.leader_id is not None for s in late), (where, "no late status named a leader")

    # Healed, L rejoined as a follower; everything confirmed is there, nothing twice.
    assert obs.converged[L]["role"] == "follower", where
    assert obs.base + len(obs.confirmed) <= obs.final_enqueued <= obs.base + obs.attempted, where


@pytest.mark.parametrize("mode", ["close", "silent"])
async def test_cut_off_leader_never_answers_stale_reads(tmp_path: Path, mode: str) -> None:
    rounds = await _scenario(tmp_path, mode)
    for obs in rounds:
        print(_summary(obs))  # shown with a failure (or with -s)
    stale = [line for obs in rounds for line in _stale(obs)]
    per_round = [len(_stale(obs)) for obs in rounds]
    assert not stale, (f"{len(stale)} stale reads ({mode}; per round {per_round}):\n"
                       + "\n".join(stale[:10]))
    for obs in rounds:
        _check_round(obs)
