"""Whole-node deterministic simulation: real raftq nodes in one process, on a virtual clock.

After FoundationDB's simulation and TigerBeetle's VOPR: N `Replica`s (node/replica.py: the
production `RaftLoop`, `QueueApp`, `ActorSystem` and `ClientServer` request handling, wired as
a node process wires them) run in one trio run on `trio.testing.MockClock(autojump_threshold=0)`
over

* `SimNetwork` (tests/sim/sim_io.py, as the disk): Raft messages through the real codec,
  with per-seed delays, drops, duplicates and partitions;
* `SimDisk`: an in-memory database with the core's reads and the loop's writes. A synced write
  (`Ready.must_sync`, `save_snapshot`) is durable; an unsynced one (a commit index) survives a
  process crash but not a power loss;
* in-memory client connections: the real `cluster.client.AsyncClient` (redirects, retries with
  the same deduplication ids, backoff) talks to each node's real connection handler over
  `trio.testing.memory_stream_pair`.

jepsen_like's workload (`jepsen_like.runner.Run`: producers with deduplication ids, consumers
that ack, nack, crash holding messages, or let leases run out; readers of the queues'
counters, one starting at each node; the drain) runs against it
while a seeded nemesis crashes nodes (process kill, or power loss that drops unsynced writes),
crashes the whole cluster at once, partitions (the leader alone among them), delays, drops and
duplicates messages, and moves leadership. Afterwards everything heals, the drain empties every queue, and
jepsen_like's checker judges the history, with every node's final status.

Determinism (one seed, one history, byte for byte): no threads (storage work runs in the node's
worker stand-in, `SimNode._worker`); no real clock (the nodes' wall clock, the history's clocks and
the timing of synced writes all read the mock clock); every random choice comes from the seed;
and trio's scheduler is made deterministic the way trio does it for hypothesis: its
`_ALLOW_DETERMINISTIC_SCHEDULING` switch (each batch of runnable tasks sorted by creation, then
shuffled by trio's own `random.Random`, which `simulate_node` seeds). String hashing is fixed
by `scripts/simulate` (PYTHONHASHSEED=0) for replay in another process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.testing

from jepsen_like.generator import QueueConf, Workload
from jepsen_like.history import History
from jepsen_like.runner import Run, RunOptions, check_outcome
from node import config as config_mod
from node.config import ClusterConfig
from node.raft import (
    NodeId,
)
from tests.sim.sim_io import SimNetwork
from tests.sim.sim_node import SimNode

__all__ = ["BUGS", "NEMESES", "NodeSimResult", "NodeSimulator", "simulate_node"]

SIM_EPOCH_MS = 1_800_000_000_000
"""The nodes' wall clock at virtual time 0 (Unix milliseconds)."""

BUGS = ("confirm-before-fsync", "stale-read")
"""Bugs the simulator can plant, to show that it catches them:

* `confirm-before-fsync`: the disk treats synced writes as unsynced, so a node answers votes,
  appends and clients for entries a power loss takes away (NATS JetStream's default; DESIGN.md
  section 9).
* `stale-read`: a node that believes it leads answers reads (`queue_stats`, ...) from its
  applied state at once, without confirming its leadership by a heartbeat round and without
  waiting for the commit index of the read (raftq before ReadIndex): a leader cut off from a
  new one, or a new leader that has not yet applied what its predecessor committed, answers
  stale totals.
"""


# ---------------------------------------------------------------------------------------------
# Nemesis
# ---------------------------------------------------------------------------------------------

NEMESES = ("kill", "power-loss", "kill-leader", "crash-all", "isolate", "isolate-leader",
           "halves", "lossy", "transfer")


@dataclass(frozen=True)
class SimFault:
    """One nemesis event: at `at_s` (virtual seconds), `kind` with `args`, for `length_s`."""

    at_s: float
    kind: str
    node: int = 0
    length_s: float = 0.0
    args: tuple[int, ...] = ()


def random_faults(rng: random.Random, nodes: int, duration_s: float) -> list[SimFault]:
    """A seeded schedule over `duration_s`: swarm testing, each seed with its own mix."""
    weights = [rng.choice((0, 1, 3)) for _ in NEMESES]
    # Every mix cuts the leader off now and then: the fault under which a leader that lost
    # office may still answer reads (the checker's `reads` rule).
    k = NEMESES.index("isolate-leader")
    weights[k] = max(1, weights[k])
    if not any(weights):
        weights[rng.randrange(len(weights))] = 1
    faults: list[SimFault] = []
    t = rng.uniform(0.5, 2.0)
    while t < duration_s:
        kind = rng.choices(NEMESES, weights)[0]
        length = rng.choice((0.2, 0.5, 1.0, 2.0, 3.0))
        if kind == "isolate-leader":
            # Long enough for the others to elect a leader and commit writes while the
            # isolated one may still believe it leads (it steps down by check-quorum within
            # two election timeouts, 0.8 s).
            length = max(length, 1.0)
        args: tuple[int, ...] = ()
        if kind == "lossy":
            args = (rng.choice((0, 5, 20, 40)), rng.choice((0, 5, 20)), rng.choice((1, 5, 30)))
        faults.append(SimFault(round(t, 3), kind, rng.randint(1, nodes), length, args))
        t += rng.uniform(0.3, 3.0)
    return faults


# ---------------------------------------------------------------------------------------------
# The simulator
# ---------------------------------------------------------------------------------------------


@dataclass
class NodeSimResult:
    """One seed's run.

    Attributes:
        seed: the seed.
        valid: the checker's verdict (and the run's own checks: drain complete, nodes agree).
        failed_checks: the checker sections that failed.
        trace: what happened, one line per event, virtual times in ms.
        history_sha256: hash of the whole history (replay compares it).
        ops: operations in the history.
        acknowledged: enqueues acknowledged to their producer.
        lost: acknowledged values never received.
        virtual_s: simulated seconds.
        check: the checker's whole result.
        counters: the nodes' Raft loop stats summed over every life of every node, the
            network's counters (`net_*`) and `writes_lost_to_power_loss`.
    """

    seed: int
    valid: bool
    failed_checks: list[str]
    trace: list[str]
    history_sha256: str
    ops: int
    acknowledged: int
    lost: int
    virtual_s: float
    check: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


class _SimRun(Run):
    """jepsen_like's run (workers, drain, checks) against the simulated nodes."""

    def __init__(self, opts: RunOptions, history: History, sim: NodeSimulator) -> None:
        super().__init__(opts, history)
        self.sim = sim
        self.addrs = [f"n{i}:{i}" for i in sorted(sim.nodes)]
        self.open_stream = sim.open_stream

    async def node_statuses(self, timeout_s: float = 1.0) -> list[dict[str, Any]]:
        """Every node's `node_status` with its digest, asked of its request handling."""
        sts: list[dict[str, Any]] = []
        for n in self.sim.nodes.values():
            if n.replica is None:
                sts.append({"node_id": n.id, "error": "down"})
            else:
                with trio.move_on_after(timeout_s):
                    sts.append(await n.replica.server.node_status(digest=True))
                    continue
                sts.append({"node_id": n.id, "error": "no answer"})
        return sts


class NodeSimulator:
    """One seeded whole-node run; see the module docstring. Use `simulate_node`.

    Args:
        seed: drives the faults, the network, the workload and trio's scheduler.
        nodes: cluster size.
        duration_s: virtual seconds of workload with faults.
        bug: a planted bug from `BUGS`, or None.
        jump: the mock clock's `jump`: synced writes then take virtual time (see `SimDisk`).
    """

    def __init__(self, seed: int, nodes: int = 3, duration_s: float = 8.0,
                 bug: str | None = None, jump: Callable[[float], None] | None = None) -> None:
        if bug is not None and bug not in BUGS:
            raise ValueError(f"unknown bug {bug!r}; known: {', '.join(BUGS)}")
        self.seed = seed
        self.bug = bug
        self.jump = jump  # the mock clock's, for disk latency (None: writes take no time)
        self.duration_s = duration_s
        self.rng = random.Random(f"{seed}/nemesis")
        self.voters = tuple(NodeId(i) for i in range(1, nodes + 1))
        self.cfg = ClusterConfig(
            cluster_id="sim",
            secret=b"s" * 32,
            nodes={
                i: config_mod.NodeConfig(
                    id=i, raft_addr=(f"n{i}", 1), client_addr=(f"n{i}", i),
                    data_dir=Path(f"sim/n{i}"),
                )
                for i in self.voters
            },
            tick_ms=40,
            snapshot_entries=50,  # small: snapshots and their installs happen in most seeds
            log_margin_entries=(seed % 3) * 10,  # none, or a margin of 10 or 20 entries
        )
        self.net = SimNetwork(random.Random(f"{seed}/network"))
        self.nodes = {i: SimNode(self, i) for i in self.voters}
        self.nursery: trio.Nursery | None = None
        self.trace: list[str] = []
        self.faults: list[dict[str, Any]] = []
        self.counters: Counter[str] = Counter()  # the nodes' loop stats, and the sim's own
        self.links_epoch = 0  # +1 at every change of the links cut or of the nodes up
        self._lossy = 0

    def clock_ms(self) -> int:
        return SIM_EPOCH_MS + int(trio.current_time() * 1000)

    def log(self, text: str) -> None:
        self.trace.append(f"{int(trio.current_time() * 1000):>7} {text}")

    async def open_stream(self, host: str, port: int) -> trio.abc.Stream:
        node = self.nodes.get(port)
        if node is None or host != f"n{port}":
            raise OSError(f"no simulated node at {host}:{port}")
        return await node.connect()

    def cut_off(self, node_id: int) -> bool:
        """Whether `node_id` cannot exchange messages with a majority (itself included): the
        others are down or their links with it cut, either way."""
        blocked = self.net.blocked
        reach = 1 + sum(
            1 for j, n in self.nodes.items()
            if j != node_id and n.up and not blocked[(node_id, j)] and not blocked[(j, node_id)]
        )
        return reach <= len(self.nodes) // 2

    def leader(self) -> int | None:
        leaders = [n.id for n in self.nodes.values() if n.replica and n.replica.loop.is_leader]
        if not leaders:
            return None
        return max(leaders, key=lambda i: self.nodes[i].replica.loop.view.term)  # type: ignore[union-attr]

    # -- nemesis ---------------------------------------------------------------------------
    async def _crash(self, node: SimNode, power_loss: bool, down_s: float, kind: str) -> None:
        if not node.up:
            self.log(f"{kind} n{node.id}: no effect (it is down); not counted")
            return
        lost = await node.crash(power_loss=power_loss)
        self.counters["writes_lost_to_power_loss"] += lost
        self.log(f"{kind} n{node.id}" + (f" (lost {lost} unsynced writes)" if power_loss else ""))
        self.faults.append({"kind": kind, "node": node.id, "verified": not node.up})
        await trio.sleep(down_s)
        await node.start()
        self.log(f"restart n{node.id}")

    async def _fault(self, f: SimFault) -> None:
        net = self.net
        node = self.nodes[f.node]
        if f.kind in ("kill", "power-loss"):
            await self._crash(node, f.kind == "power-loss", f.length_s, f.kind)
        elif f.kind == "kill-leader":
            lead = self.leader()
            if lead is not None:
                await self._crash(self.nodes[lead], self.rng.random() < 0.5, f.length_s, f.kind)
        elif f.kind == "crash-all":
            power = self.rng.random() < 0.7
            down = [n for n in self.nodes.values() if n.up]
            for n in down:
                self.counters["writes_lost_to_power_loss"] += await n.crash(power_loss=power)
            self.log(f"crash-all power_loss={power}")
            self._record(f.kind, bool(down) and not any(n.up for n in down), "no node was up")
            await trio.sleep(f.length_s)
            for n in down:
                await n.start()
            self.log("restart all")
        elif f.kind in ("isolate", "isolate-leader", "halves"):
            ids = sorted(self.nodes)
            if f.kind == "isolate-leader":
                lead = await self._leader_after_check_quorum()
                if lead is None:
                    self.log(f"{f.kind}: no effect (no leader); not counted")
                    return
                side = {lead}
            elif f.kind == "isolate":
                side = {f.node}
            else:
                side = set(self.rng.sample(ids, len(ids) // 2))
            cut = Counter((a, b) for a in ids for b in ids if (a in side) != (b in side))
            before = net.counters["blocked"]
            net.blocked += cut
            self.links_epoch += 1
            self.log(f"{f.kind} {sorted(side)} | {sorted(set(ids) - side)}")
            await trio.sleep(f.length_s)
            net.blocked -= cut
            self.links_epoch += 1
            self._record(f.kind, net.counters["blocked"] > before, "no message crossed the cut")
        elif f.kind == "lossy":
            drop, dup, delay = f.args
            c = net.counters
            before = (c["dropped"] + c["duplicated"], c["sent"])
            net.drop_pct, net.dup_pct, net.max_delay_ms = drop, dup, delay
            self._lossy += 1
            mine = self._lossy
            self.log(f"lossy drop={drop}% dup={dup}% delay<={delay}ms")
            await trio.sleep(f.length_s)
            if self._lossy == mine:  # no later lossy window took over
                net.drop_pct, net.dup_pct, net.max_delay_ms = 0, 0, 1
                self.log("lossy off")
            hit = c["dropped"] + c["duplicated"] > before[0] or (
                delay > 1 and c["sent"] > before[1])
            self._record(f.kind, hit, "no message was dropped, duplicated or delayed")
        elif f.kind == "transfer":
            lead = self.leader()
            rep = self.nodes[lead].replica if lead is not None else None
            if rep is not None:
                target = await rep.loop.transfer_leadership()
                self.log(f"transfer n{lead} -> {target}")
                with trio.move_on_after(1.0):  # 2.5 election timeouts
                    while rep.loop.is_leader:
                        await rep.loop.role_changed.wait()
                self._record(f.kind, target is not None and not rep.loop.is_leader,
                             "leadership did not move")

    async def _leader_after_check_quorum(self) -> int | None:
        """The leader, just after it began a check-quorum round (waiting at most one election
        timeout for that): cut off then, it believes it leads for the longest time, two
        election timeouts, while the others elect a new leader and commit writes."""
        tick_s = self.cfg.tick_ms / 1000
        with trio.move_on_after(self.cfg.election_ticks * tick_s):
            while True:
                lead = self.leader()
                rep = self.nodes[lead].replica if lead is not None else None
                if rep is None:
                    return None
                elapsed = await rep.loop.call(lambda core: core.election_elapsed)
                if elapsed <= 1 and rep.loop.is_leader:
                    return lead
                await trio.sleep(tick_s / 2)
        return self.leader()

    def _record(self, kind: str, took_effect: bool, otherwise: str) -> None:
        """Count a fault as injected only when its effect was seen (else trace why not)."""
        if took_effect:
            self.faults.append({"kind": kind, "verified": True})
        else:
            self.log(f"{kind}: no effect ({otherwise}); not counted")

    async def _nemesis(self, schedule: list[SimFault], t0: float) -> None:
        async with trio.open_nursery() as nursery:
            for f in schedule:
                await trio.sleep_until(t0 + f.at_s)
                nursery.start_soon(self._fault, f)

    # -- the run ---------------------------------------------------------------------------
    async def _wait_leader(self, timeout_s: float) -> int | None:
        with trio.move_on_after(timeout_s):
            while True:
                lead = self.leader()
                if lead is not None:
                    return lead
                await trio.sleep(0.05)
        return None

    async def main(self) -> tuple[dict[str, Any], History]:
        """Run the whole scenario; returns the checker's result and the history."""
        workload = Workload(
            queues=(QueueConf("jq", visibility_timeout_ms=1000),
                    QueueConf("jqf", fifo=True, weight=0.5, visibility_timeout_ms=1000,
                              groups=3)),
            p_nack=0.05, p_crash=0.03, p_stale=0.03, wait_s=0.2, read_rate=10.0,
        )
        opts = RunOptions(
            out_dir=Path("sim"), duration_s=self.duration_s, rate=60.0, concurrency=4,
            seed=self.seed, nodes=len(self.nodes), workload=workload, op_timeout_s=3.0,
            # A client tries another node after 0.3 s without an answer to a send or a read:
            # sooner than a cut-off leader steps down (up to two election timeouts, 0.8 s),
            # so writes reach a new leader while the old one may still answer reads.
            request_timeout_s=0.3,
            drain_timeout_s=40.0, progress=False, require_faults=False, plots=False,
        )
        history = History(
            clock_ns=lambda: int(trio.current_time() * 1e9),
            wall_clock_ms=lambda: SIM_EPOCH_MS + trio.current_time() * 1000,
        )
        run = _SimRun(opts, history, self)
        schedule = random_faults(self.rng, len(self.nodes), self.duration_s)
        self.log(f"start seed={self.seed} nodes={len(self.nodes)} faults={len(schedule)}"
                 + (f" bug={self.bug}" if self.bug else ""))
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self.net.run)
            for n in self.nodes.values():
                await n.start()
            lead = await self._wait_leader(10.0)
            self.log(f"leader n{lead}" if lead is not None else "no leader within 10 s")
            async with run._client(0) as admin:
                run.admin = admin
                await run._create_queues()
            await self._workload(run, schedule)
            # Heal: links, network quality, nodes.
            self.net.blocked.clear()
            self.links_epoch += 1
            self.net.drop_pct = self.net.dup_pct = 0
            self.net.max_delay_ms = 1
            for n in self.nodes.values():
                if not n.up:
                    await n.start()
            self.log("healed")
            lead = await self._wait_leader(20.0)
            self.log(f"leader n{lead}" if lead is not None else "no leader within 20 s")
            await trio.sleep(workload.max_visibility_timeout_ms / 1000 + 0.5)
            run.phase = "drain"
            run.outcome.drain = await run._drain()
            self.log(f"drained {run.outcome.drain.get('received')}")
            run.outcome.final_statuses = await run._final_statuses(20.0)
            nursery.cancel_scope.cancel()
        run.outcome.faults = self.faults
        self.counters.update({f"net_{k}": v for k, v in self.net.counters.items()})
        return check_outcome(run.outcome), history

    async def _workload(self, run: _SimRun, schedule: list[SimFault]) -> None:
        from jepsen_like.runner import _RateLimiter

        o = run.opts
        n_prod = max(1, round(o.concurrency * o.workload.producer_share))
        n_cons = max(1, o.concurrency - n_prod)
        prod = _RateLimiter(o.rate * n_prod / (n_prod + n_cons))
        cons = _RateLimiter(o.rate * n_cons / (n_prod + n_cons))
        run.phase = "workload"
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._nemesis, schedule, t0)
            async with trio.open_nursery() as workers:
                for p in range(n_prod):
                    workers.start_soon(run.producer, p, prod)
                for p in range(n_prod, n_prod + n_cons):
                    workers.start_soon(run.consumer, p, cons)
                run.start_readers(workers)
                await trio.sleep(self.duration_s)
                run.stop.set()
        self.log("workload done")


def _history_digest(history: History) -> str:
    h = hashlib.sha256()
    for op in history.ops:
        h.update(json.dumps(op.to_json(), sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


def simulate_node(seed: int, *, nodes: int = 3, duration_s: float = 8.0,
                  bug: str | None = None) -> NodeSimResult:
    """Run one seed of the whole-node simulation (see the module docstring)."""
    from trio._core import _run as trio_run  # the scheduler switch trio sets for hypothesis

    deterministic = trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    trio_run._r.seed(f"{seed}/scheduler")
    clock = trio.testing.MockClock(autojump_threshold=0)
    sim = NodeSimulator(seed, nodes=nodes, duration_s=duration_s, bug=bug, jump=clock.jump)
    quiet = logging.getLogger("raftq")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        result, history = trio.run(sim.main, clock=clock)
        virtual_s = clock.current_time()
    finally:
        quiet.setLevel(level)
        # Leave trio as it was for whatever runs next in this process.
        trio_run._ALLOW_DETERMINISTIC_SCHEDULING = deterministic  # type: ignore[misc]
        trio_run._r.seed()
    tq = result.get("total_queue", {})
    for name in result.get("failed_checks", []):
        section = result.get(name, {})
        text = json.dumps(_brief(section))
        sim.trace.append(f"FAILED {name}: {text if len(text) <= 600 else text[:600] + ' ...'}")
    return NodeSimResult(
        seed=seed,
        valid=bool(result.get("valid")),
        failed_checks=list(result.get("failed_checks", [])),
        trace=sim.trace,
        history_sha256=_history_digest(history),
        ops=len(history.ops),
        acknowledged=int(tq.get("acknowledged_count", 0)),
        lost=int(tq.get("lost_count", 0)),
        virtual_s=round(virtual_s, 3),
        check=result,
        counters=dict(sorted(sim.counters.items())),
    )


def _brief(section: Any) -> Any:
    if isinstance(section, dict):
        out = {k: v for k, v in section.items() if k in ("why", "lost", "valid", "errors",
                                                         "violations", "complete", "nodes",
                                                         "stale_count", "non_monotonic_count")}
        for k in ("stale", "non_monotonic"):  # the reads rule's: the first of each
            if section.get(k):
                out[k] = section[k][:1]
        return out
    return section

