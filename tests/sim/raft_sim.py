"""A deterministic cluster simulator for the Raft core: N nodes, one process, one seed.

After TigerBeetle's VOPR and etcd-io/raft's `rafttest`: no sockets, no sleeps, no clock. Time is
counted in ticks. A seeded `random.Random` drives the network (drop, delay, duplicate, reorder),
the nemesis (partitions, crashes, restarts, leadership transfers, compaction) and the clients
(proposals). The same seed gives the same trace, byte for byte.

After every tick the simulator checks the safety properties of the Raft paper (Figure 3):
election safety, leader append-only, log matching, leader completeness, state machine safety;
plus: commit and applied index never go back, nothing reported committed to a proposer is
ever lost, and reads are linearizable (ReadIndex, thesis 6.4): a read's index is never below an
index some leader had committed before the read was asked, so the state it is answered from
holds every write committed before it began. After the faults stop it checks liveness: a leader within a bounded number of ticks,
and every node converges to the same applied log.

A node's "disk" is its `MemoryStorage`; a crash drops the `RaftNode` and the applied state and
loses whatever the core held that had not been persisted by a Ready. Beside the disk each node
keeps its durability mark (node/raft/_durability.py), written as the real driver writes it.
Disk faults (never on a majority of nodes at once) lose more: "wipe" (the node comes back with
an empty disk and no mark), "truncate" (synced log records at the tail are lost, down below the
mark's position, with an older hard state) and "corrupt" (a damaged record: the node refuses to
start until the operator moves its data away, then it comes back empty). Safety must hold
throughout; after the faults stop every node must be a voter again and converge.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from node.raft import (
    CompactedError,
    Config,
    DurabilityMark,
    Entry,
    EntryKind,
    HardState,
    Index,
    MemoryStorage,
    Message,
    NodeId,
    NotLeader,
    ProposalDropped,
    RaftNode,
    Ready,
    Role,
    Standing,
    Term,
    UnavailableError,
    assess_durability,
    follow_readies,
    lower_mark_before,
    mark_of,
    raise_mark_after,
    run_sync,
)

from .sim_members import MembershipNemesis

MAX_MESSAGES_PER_TICK = 20_000
"""More messages than this in one tick is a message storm: reported as a liveness failure
(a healthy 5-node run sends a few hundred at most)."""

# ---------------------------------------------------------------------------------------------
# Faults as data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fault:
    """One nemesis event at tick `at_tick`.

    kinds and their `args`:
        "isolate" (node,), "halves" (), "ring" (), "bridge" (), "cut" (a, b): partitions;
        "heal" (): remove every partition;
        "crash" (node, restart_after_ticks) / "restart" (node,): lose volatile state / come back
            from disk (restart_after_ticks 0: stay down until a "restart" or the final heal);
        "crash_leader" (restart_after_ticks,): crash whoever leads now;
        "lossy" (drop_pct, dup_pct, max_delay_ticks): network quality until the next "lossy";
        "transfer" (): the leader hands leadership to a random peer;
        "compact" (node,): the node snapshots its applied state and compacts its log;
        "crashy" (per_mille,): from now on each node crashes with this chance per tick and
            comes back 1 to 5 ticks later (0 stops it);
        "wipe" / "truncate" / "corrupt" (node, restart_after_ticks): disk faults (see the
            module docstring), skipped when they would leave a majority with damaged storage.
    """

    at_tick: int
    kind: str
    args: tuple[int, ...] = ()


FAULT_KINDS = (
    "isolate",
    "halves",
    "ring",
    "bridge",
    "cut",
    "heal",
    "crash",
    "restart",
    "crash_leader",
    "lossy",
    "transfer",
    "compact",
    "crashy",
    "wipe",
    "truncate",
    "corrupt",
)

DISK_FAULTS = ("wipe", "truncate", "corrupt")

MARK_REFRESH_TICKS = 6
"""Ticks between refreshes of a node's durability mark position (the node's 0.25 s at 40 ms)."""


def random_schedule(rng: random.Random, nodes: int, fault_ticks: int) -> list[Fault]:
    """A random fault schedule over `fault_ticks` ticks, sorted by tick.

    Swarm testing (Groce et al., ISSTA 2012): each schedule enables its own random mix of fault
    kinds and its own pace, so that some seeds hammer one kind of fault hard.
    """
    weights = [rng.choice((0, 0, 1, 3)) for _ in FAULT_KINDS]
    if not any(weights):
        weights[rng.randrange(len(weights))] = 1
    mean_gap = rng.choice((4, 10, 30))
    faults: list[Fault] = []
    t = 0
    while True:
        t += rng.randint(1, 2 * mean_gap)
        if t >= fault_ticks:
            break
        kind = rng.choices(FAULT_KINDS, weights)[0]
        node = rng.randint(1, nodes)
        args: tuple[int, ...] = ()
        if kind in ("isolate", "restart", "compact"):
            args = (node,)
        elif kind in ("crash", *DISK_FAULTS):
            args = (node, rng.choice((0, 2, 10, 40)))
        elif kind == "crash_leader":
            args = (rng.choice((0, 2, 10, 40)),)
        elif kind == "cut":
            other = rng.choice([n for n in range(1, nodes + 1) if n != node])
            args = (node, other)
        elif kind == "lossy":
            args = (rng.choice((0, 0, 5, 20, 40)), rng.choice((0, 0, 5, 20)), rng.choice((0, 1, 3)))
        elif kind == "crashy":
            args = (rng.choice((0, 10, 30, 100)),)
        faults.append(Fault(t, kind, args))
    return faults


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


class Violation(Exception):
    """An invariant failed. `invariant` names it; `str()` explains what was seen."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


@dataclass
class SimResult:
    """What one run saw. `violation` is None when every check passed."""

    seed: int
    nodes: int
    ticks: int
    violation: Violation | None
    trace: list[str]
    committed: int = 0
    acked: int = 0
    elections: int = 0
    faults: int = 0
    counters: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# A simulated node: disk, core and application state
# ---------------------------------------------------------------------------------------------


def _encode_applied(applied: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray()
    for index, term, data in applied:
        out += index.to_bytes(8, "big") + term.to_bytes(8, "big") + len(data).to_bytes(4, "big")
        out += data
    return bytes(out)


def _decode_applied(blob: bytes) -> list[tuple[int, int, bytes]]:
    out: list[tuple[int, int, bytes]] = []
    pos = 0
    while pos < len(blob):
        index = int.from_bytes(blob[pos : pos + 8], "big")
        term = int.from_bytes(blob[pos + 8 : pos + 16], "big")
        size = int.from_bytes(blob[pos + 16 : pos + 20], "big")
        out.append((index, term, blob[pos + 20 : pos + 20 + size]))
        pos += 20 + size
    return out


class SimNode:
    """One node: its disk (`storage`, survives crashes), its core and its applied entries."""

    def __init__(
        self,
        node_id: NodeId,
        voters: tuple[NodeId, ...],
        config: Config,
        rng: random.Random,
        node_factory: Callable[[Config, MemoryStorage, random.Random], RaftNode],
        standing: Standing = Standing.VOTER,
    ) -> None:
        self.id = node_id
        self.cluster = voters
        self.storage = MemoryStorage(voters, standing)
        self.config = config
        self.rng = rng
        self.node_factory = node_factory
        self.core: RaftNode | None = None
        self.applied: list[tuple[int, int, bytes]] = []  # the "state machine"
        self.max_commit = 0
        self.max_applied = 0
        self.persisted_commit = 0
        self.mark: DurabilityMark | None = mark_of(self.storage.hard_state, Index(0), Term(0))
        self.damaged = False  # a disk fault hit it and it is not a voter again yet
        self.refuses_start = False  # "corrupt": it will not start until its data is moved away
        self.start()

    def start(self) -> None:
        if self.refuses_start:
            # The operator's procedure: move the damaged data directory away, start again.
            self.refuses_start = False
            self.wipe()
        st = self.storage
        fixed, reason = assess_durability(st.hard_state, st, self.mark)
        st.set_hard_state(fixed)
        last = st.last_index()
        self.mark = mark_of(fixed, last, st.term(last))
        self.core = self.node_factory(self.config, st, self.rng)
        if reason is not None:
            self.core.repair_reason = reason
        snap = self.storage.snapshot()
        self.applied = _decode_applied(snap.data) if snap.data else []
        self.max_commit = self.core.log.committed
        self.max_applied = self.core.log.applied

    def crash(self) -> None:
        self.core = None
        self.applied = []

    def wipe(self) -> None:
        """The disk is gone: a new, empty database (JOINING) and no durability mark."""
        self.storage = MemoryStorage(self.cluster, Standing.JOINING)
        self.mark = None

    @property
    def alive(self) -> bool:
        return self.core is not None


# ---------------------------------------------------------------------------------------------
# The simulator
# ---------------------------------------------------------------------------------------------


class _SimIO:
    """One node's `ReadyIO`: the simulator's network, disk, applied log and checks."""

    __slots__ = ("sim", "sn")

    def __init__(self, sim: Simulator, sn: SimNode) -> None:
        self.sim = sim
        self.sn = sn

    def send(self, msg: Message) -> None:
        self.sim._send(msg)

    async def persist(self, rd: Ready) -> bool:
        return await self.sim._persist_step(self.sn, rd)

    def apply(self, rd: Ready) -> None:
        self.sim._apply(self.sn, rd)

    def after_advance(self, rd: Ready) -> None:
        self.sim._after_ready(self.sn, rd)


@dataclass
class _InFlight:
    deliver_at: int
    seq: int
    msg: Message


class Simulator:
    """Runs one seeded scenario. Use `run()`; see the module docstring.

    Args:
        seed: drives everything random.
        nodes: cluster size (3 or 5 typically).
        fault_ticks: ticks with faults; afterwards everything heals and liveness is checked.
        schedule: explicit faults (for hypothesis); default: `random_schedule` from the seed.
        node_factory: builds a core; tests pass a deliberately broken variant here.
        liveness_ticks: budget after the faults stop for a leader and convergence.
        config: core tuning (id is filled in per node).
        brand_new: every node starts with a new, empty database (JOINING: the cluster forms
            only once all have asked each other); default: on odd seeds.
        membership: run the membership nemesis (tests/sim/sim_members.py: nodes added,
            promoted, removed and replaced; disk faults are off then); default: on seeds
            that leave 2 modulo 3.
        membership_pace: (changes per thousand ticks, percent of bursts of two) for the
            membership nemesis; default tests/sim/sim_members.py's.
    """

    def __init__(
        self,
        seed: int,
        nodes: int = 3,
        fault_ticks: int = 600,
        schedule: list[Fault] | None = None,
        node_factory: Callable[[Config, MemoryStorage, random.Random], RaftNode] = RaftNode,
        liveness_ticks: int = 400,
        config: Config | None = None,
        propose_pct: int = 30,
        brand_new: bool | None = None,
        membership: bool | None = None,
        membership_pace: tuple[int, int] | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.install_rng = random.Random(seed * 7919 + 13)  # its own: the main stream stays
        self.n = nodes
        self.fault_ticks = fault_ticks
        self.liveness_ticks = liveness_ticks
        self.propose_pct = propose_pct
        base = config or Config(
            NodeId(1),
            election_ticks=10,
            heartbeat_ticks=2,
            max_append_entries=16,
            max_inflight_appends=8,
            max_snapshot_chunk_bytes=256,
            max_promote_lag_entries=8,
        )
        voters = tuple(NodeId(i) for i in range(1, nodes + 1))
        self.nodes: dict[NodeId, SimNode] = {}
        for nid in voters:
            cfg = replace(base, id=nid)
            fresh = brand_new if brand_new is not None else seed % 2 == 1
            self.nodes[nid] = SimNode(
                nid,
                voters,
                cfg,
                random.Random(self.rng.random()),
                node_factory,
                Standing.JOINING if fresh else Standing.VOTER,
            )
        self.schedule = (
            list(schedule)
            if schedule is not None
            else random_schedule(self.rng, nodes, fault_ticks)
        )
        self.schedule.sort(key=lambda f: f.at_tick)
        self.now = 0
        self.seq = 0
        self.inflight: list[_InFlight] = []
        self.restarts: list[tuple[int, NodeId]] = []
        self.crash_per_mille = 0
        self.blocked: set[tuple[int, int]] = set()
        self.drop_pct = 0
        self.dup_pct = 0
        self.max_delay = 0
        self.trace: list[str] = []
        # Global knowledge for the checks.
        self.leader_of_term: dict[int, int] = {}
        self.applied_at: dict[int, tuple[int, bytes]] = {}
        # index -> (entry term, term of the leader that first committed it)
        self.committed_in: dict[int, tuple[int, int]] = {}
        self.max_committed = 0
        self.entry_identity: dict[tuple[int, int], tuple[int, bytes]] = {}
        self.leader_tip: dict[int, tuple[int, int, int]] = {}  # node -> (term, index, entry term)
        self.pending: dict[tuple[int, int], tuple[int, bytes]] = {}  # (node, index) -> (term, data)
        self.acked: dict[int, tuple[int, bytes]] = {}  # index -> (term, data), told "committed"
        self.counter = 0
        self.sent_this_tick = 0
        # Reads: (node, ctx) -> the highest index committed anywhere when the read was asked.
        self.reads: dict[tuple[int, int], int] = {}
        self.read_rng = random.Random(f"{seed}/reads")
        self.faults_injected = 0
        self.elections = 0
        self.counters: dict[str, int] = {}
        with_members = membership if membership is not None else seed % 3 == 2
        self.members = (
            MembershipNemesis(self, seed, *(membership_pace or ())) if with_members else None
        )

    # -- trace ------------------------------------------------------------------------------
    def _log(self, text: str) -> None:
        self.trace.append(f"t={self.now} {text}")

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    # -- run --------------------------------------------------------------------------------
    def run(self) -> SimResult:
        """Run faults then liveness; return the result (violation or None)."""
        violation: Violation | None = None
        try:
            self._log(f"start seed={self.seed} nodes={self.n} faults={len(self.schedule)}")
            sched = list(self.schedule)
            while self.now < self.fault_ticks:
                while sched and sched[0].at_tick <= self.now:
                    self._inject(sched.pop(0))
                if self.members is not None:
                    self.members.tick()
                for due in [r for r in self.restarts if r[0] <= self.now]:
                    self.restarts.remove(due)
                    if not self.nodes[due[1]].alive and self._may_restart(due[1]):
                        self.nodes[due[1]].start()
                        self._log(f"restart n{due[1]}")
                self._step_tick(allow_proposals=True)
            self._heal_all()
            self._check_liveness()
            self._check_final()
        except Violation as v:
            violation = v
            self._log(f"VIOLATION {v}")
        return SimResult(
            seed=self.seed,
            nodes=self.n,
            ticks=self.now,
            violation=violation,
            trace=self.trace,
            committed=len(self.applied_at),
            acked=len(self.acked),
            elections=self.elections,
            faults=self.faults_injected,
            counters=dict(sorted(self.counters.items())),
        )

    def _step_tick(self, allow_proposals: bool) -> None:
        self.now += 1
        self.sent_this_tick = 0
        if allow_proposals and self.rng.randrange(100) < self.propose_pct:
            self._propose()
        if allow_proposals and self.read_rng.randrange(100) < self.propose_pct:
            self._read()
        for sn in self._alive():
            assert sn.core is not None
            sn.core.tick()
        for _round in range(20):
            self._process_readies()
            if not self._deliver_due():
                break
            if self.crash_per_mille:
                # Crash between receiving messages and persisting what they changed.
                for sn in self._alive():
                    if self.rng.randrange(1000) < self.crash_per_mille:
                        self._crash(sn)
                        self.restarts.append((self.now + self.rng.randint(1, 5), sn.id))
        self._process_readies()
        if self.now % MARK_REFRESH_TICKS == 0:
            self._refresh_marks()
        for sn in self._alive():
            if sn.damaged and sn.core is not None and sn.core.standing is Standing.VOTER:
                sn.damaged = False
                self._log(f"n{sn.id} repaired: a voter again")
                self._count("repaired")
        self._check_tick()

    def _may_restart(self, nid: NodeId) -> bool:
        return self.members is None or self.members.may_restart(nid)

    def _alive(self) -> list[SimNode]:
        return [sn for _, sn in sorted(self.nodes.items()) if sn.alive]

    def _leader(self) -> SimNode | None:
        best: SimNode | None = None
        for sn in self._alive():
            assert sn.core is not None
            if sn.core.role is Role.LEADER and (best is None or sn.core.term > best.core.term):  # type: ignore[union-attr]
                best = sn
        return best

    # -- clients ----------------------------------------------------------------------------
    def _propose(self) -> None:
        alive = self._alive()
        if not alive:
            return
        leader = self._leader()
        # Clients mostly find the leader; sometimes they ask a stale or random node.
        sn = (
            leader
            if leader is not None and self.rng.randrange(100) < 80
            else self.rng.choice(alive)
        )
        assert sn.core is not None
        count = self.rng.choice((1, 1, 1, 3))
        datas = []
        for _ in range(count):
            self.counter += 1
            datas.append(f"v{self.counter}".encode())
        try:
            first = sn.core.propose_many(datas)
        except (NotLeader, ProposalDropped):
            self._count("proposals_refused")
            return
        for n, d in enumerate(datas):
            self.pending[(sn.id, first + n)] = (sn.core.term, d)
        self._count("proposals")

    def _read(self) -> None:
        """A client asks a node that believes it leads (a deposed one as often as the real
        one) for a linearizable read."""
        leaders = [sn for sn in self._alive() if sn.core is not None and sn.core.is_leader]
        sn = self.read_rng.choice(leaders or self._alive() or [None])
        if sn is None or sn.core is None:
            return
        self.counter += 1
        try:
            sn.core.read_index(self.counter)
        except NotLeader:
            self._count("reads_refused")
            return
        self.reads[(sn.id, self.counter)] = self.max_committed
        self._count("reads")

    # -- network ----------------------------------------------------------------------------
    def _send(self, msg: Message) -> None:
        self.sent_this_tick += 1
        if self.sent_this_tick > MAX_MESSAGES_PER_TICK:
            # Messages that beget messages without end (a follower refused forever, each
            # refusal answered by a new append): no progress is possible.
            raise Violation(
                "liveness",
                f"message storm: over {MAX_MESSAGES_PER_TICK:,} messages in tick {self.now}",
            )
        if self.drop_pct and self.rng.randrange(100) < self.drop_pct:
            self._count("dropped")
            return
        copies = 2 if self.dup_pct and self.rng.randrange(100) < self.dup_pct else 1
        if copies == 2:
            self._count("duplicated")
        for _ in range(copies):
            delay = self.rng.randint(0, self.max_delay) if self.max_delay else 0
            self.seq += 1
            self.inflight.append(_InFlight(self.now + delay, self.seq, msg))

    def _deliver_due(self) -> bool:
        due = [m for m in self.inflight if m.deliver_at <= self.now]
        if not due:
            return False
        self.inflight = [m for m in self.inflight if m.deliver_at > self.now]
        self.rng.shuffle(due)  # reorder within a delivery round
        for m in due:
            msg = m.msg
            if (msg.from_id, msg.to_id) in self.blocked:
                self._count("partitioned")
                continue
            sn = self.nodes.get(msg.to_id)
            if sn is None or sn.core is None:
                continue
            sn.core.step(msg)
        return True

    # -- the driver's Ready loop (persist, send, apply, advance) -----------------------------
    def _process_readies(self) -> None:
        for sn in self._alive():
            assert sn.core is not None
            run_sync(follow_readies(sn.core, _SimIO(self, sn)))

    async def _persist_step(self, sn: SimNode, rd: Ready) -> bool:
        if self.crash_per_mille and self.rng.randrange(1000) < self.crash_per_mille:
            # Crash after the leader's early sends, before this Ready is durable.
            self._crash(sn)
            self.restarts.append((self.now + self.rng.randint(1, 5), sn.id))
            return False
        self._persist(sn, rd)
        return True

    def _persist(self, sn: SimNode, rd: Ready) -> None:
        st = sn.storage
        if sn.mark is not None:
            lowered = lower_mark_before(sn.mark, rd, st)
            if lowered is not None:
                sn.mark = lowered
        self._write(sn, rd)
        if sn.mark is not None:
            last = st.last_index()
            raised = raise_mark_after(sn.mark, st.hard_state, (last, st.term(last)), False)
            if raised is not None:
                sn.mark = raised

    def _refresh_marks(self) -> None:
        for sn in self._alive():
            if sn.mark is None:
                continue
            st = sn.storage
            last = st.last_index()
            moved = raise_mark_after(sn.mark, st.hard_state, (last, st.term(last)), refresh=True)
            if moved is not None:
                sn.mark = moved

    def _write(self, sn: SimNode, rd: Ready) -> None:
        st = sn.storage
        st.stage_snapshot(rd.snapshot_chunks)
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        if rd.entries:
            st.append(rd.entries)
            self._check_log_matching(sn, rd.entries)
        if rd.hard_state is not None:
            if rd.hard_state.commit < st.hard_state.commit:
                raise Violation(
                    "commit-monotonic",
                    f"n{sn.id} persisted commit {rd.hard_state.commit} < {st.hard_state.commit}",
                )
            if rd.hard_state.term < st.hard_state.term:
                raise Violation("term-monotonic", f"n{sn.id} persisted a lower term")
            st.set_hard_state(rd.hard_state)

    def _apply(self, sn: SimNode, rd: Ready) -> None:
        if rd.snapshot is not None:
            restored = _decode_applied(rd.snapshot.data)
            for index, term, data in restored:
                self._check_applied(sn, index, term, data)
            sn.applied = restored
            self._log(f"n{sn.id} restored snapshot at {rd.snapshot.meta.index}")
            self._count("snapshots_installed")
        for e in rd.committed_entries:
            expected = sn.applied[-1][0] + 1 if sn.applied else 1
            if e.index != expected:
                raise Violation(
                    "apply-order", f"n{sn.id} applied index {e.index}, expected {expected}"
                )
            self._check_applied(sn, e.index, e.term, e.data)
            if e.kind is EntryKind.CONFIG and self.members is not None:
                self.members.committed_config(sn, e.index, e.data)
            sn.applied.append((e.index, e.term, e.data))
            pend = self.pending.pop((sn.id, e.index), None)
            if pend is not None and pend[0] == e.term:
                if e.data != pend[1]:
                    raise Violation("proposal-identity", f"n{sn.id} index {e.index} data differs")
                self.acked[e.index] = (e.term, e.data)
        for index in rd.dropped:
            self.pending.pop((sn.id, index), None)
            self._count("proposals_unknown")
        for rs in rd.read_states:
            floor = self.reads.pop((sn.id, rs.ctx))
            if rs.index < floor:
                raise Violation(
                    "linearizable-read",
                    f"n{sn.id} confirmed read {rs.ctx} at index {rs.index}, but index {floor} "
                    "was committed before the read was asked (a stale read)",
                )
            self._count("reads_confirmed")
        for ctx in rd.dropped_reads:
            del self.reads[(sn.id, ctx)]
            self._count("reads_dropped")

    def _after_ready(self, sn: SimNode, rd: Ready) -> None:
        core = sn.core
        assert core is not None
        if rd.snapshot_received is not None:
            # The driver's install: the assembled bytes, or now and then a refusal (as a
            # snapshot that does not decode is refused), which makes the leader send it again.
            meta = rd.snapshot_received
            refused = self.install_rng.random() < 0.1
            if refused:
                self._count("snapshot_installs_refused")
            core.snapshot_prepared(meta, None if refused else sn.storage.staged_snapshot(meta))
        self._record_commits(sn)
        if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
            self.elections += 1
            self._log(f"n{sn.id} leader term {core.term} last={core.log.last_index()}")
            self._check_leader_completeness(sn)
        if core.log.committed < sn.max_commit:
            raise Violation("commit-monotonic", f"n{sn.id} commit went back")
        if core.log.applied < sn.max_applied:
            raise Violation("applied-monotonic", f"n{sn.id} applied went back")
        sn.max_commit = core.log.committed
        sn.max_applied = core.log.applied

    # -- nemesis ----------------------------------------------------------------------------
    def _inject(self, f: Fault) -> None:
        ids: list[int] = sorted(self.nodes)
        kind = f.kind
        self.faults_injected += 1
        if kind == "heal":
            self.blocked = set()
        elif kind == "isolate":
            self._partition([[f.args[0]], [i for i in ids if i != f.args[0]]])
        elif kind == "halves":
            shuffled = list(ids)
            self.rng.shuffle(shuffled)
            half = len(ids) // 2
            self._partition([shuffled[:half], shuffled[half:]])
        elif kind == "ring":
            self.blocked = set()
            for a in ids:
                for b in ids:
                    d = min((a - b) % self.n, (b - a) % self.n)
                    if a != b and d > 1:
                        self.blocked.add((a, b))
        elif kind == "bridge":
            shuffled = list(ids)
            self.rng.shuffle(shuffled)
            half = len(ids) // 2
            bridge_node = shuffled[half]
            left, right = shuffled[:half], shuffled[half + 1 :]
            self.blocked = {(a, b) for a in left for b in right}
            self.blocked |= {(b, a) for a in left for b in right}
            self._log(f"bridge n{bridge_node}")
        elif kind == "cut":
            a, b = f.args
            self.blocked |= {(a, b), (b, a)}
        elif kind in ("crash", "crash_leader"):
            victim = self._leader() if kind == "crash_leader" else self.nodes[NodeId(f.args[0])]
            if victim is None or not victim.alive:
                self.faults_injected -= 1
                return
            self._crash(victim)
            if f.args[-1]:
                self.restarts.append((self.now + f.args[-1], victim.id))
        elif kind == "restart":
            sn = self.nodes[NodeId(f.args[0])]
            if sn.alive or not self._may_restart(sn.id):
                self.faults_injected -= 1
                return
            sn.start()
        elif kind == "lossy":
            self.drop_pct, self.dup_pct, self.max_delay = f.args
        elif kind == "crashy":
            self.crash_per_mille = f.args[0]
        elif kind == "transfer":
            leader = self._leader()
            if leader is None or leader.core is None:
                self.faults_injected -= 1
                return
            voters = [i for i in leader.core.voters if i != leader.id]
            if not voters:
                self.faults_injected -= 1
                return
            transferee = self.rng.choice(voters)
            leader.core.transfer_leadership(NodeId(transferee))
        elif kind == "compact":
            sn = self.nodes[NodeId(f.args[0])]
            if not sn.alive or not sn.applied:
                self.faults_injected -= 1
                return
            self._compact(sn)
        elif kind in DISK_FAULTS:
            if not self._disk_fault(kind, self.nodes[NodeId(f.args[0])], f.args[1]):
                self.faults_injected -= 1
                return
        self._log(f"fault {kind}{f.args} blocked={sorted(self.blocked)}")

    def _disk_fault(self, kind: str, sn: SimNode, restart_after: int) -> bool:
        """Crash `sn` and damage its disk; False (nothing done) when that would leave a
        majority of nodes with damaged storage, or there is nothing the mark could miss."""
        if self.members is not None:
            return False  # the majority rule below assumes a fixed membership
        damaged = sum(1 for other in self.nodes.values() if other.damaged and other is not sn)
        if damaged + 1 > (self.n - 1) // 2:
            return False
        st = sn.storage
        if kind == "truncate":
            # Lose synced records at the tail, down below the mark's position (a cut of only
            # records newer than the mark is the one loss a node cannot see: module docs).
            floor = st.snap.meta.index
            top = min(st.last_index(), sn.mark.index if sn.mark is not None else 0)
            if top <= floor:
                return False
            cut = self.rng.randint(floor, top - 1)
        if sn.alive:
            self._crash(sn)
        if kind == "wipe":
            sn.wipe()
        elif kind == "truncate":
            offset = st.log[0].index
            del st.log[cut - offset + 1 :]
            hs = st.hard_state
            # The hard state written with those records is lost with them: an older one.
            st.hard_state = HardState(
                Term(min(hs.term, st.term(Index(cut)))), None, Index(min(hs.commit, cut)),
                hs.standing,
            )
        else:
            sn.refuses_start = True
        sn.damaged = True
        self._count(f"disk_{kind}")
        if restart_after:
            self.restarts.append((self.now + restart_after, sn.id))
        self._log(f"disk fault {kind} n{sn.id}")
        return True

    def _partition(self, groups: Iterable[Iterable[int]]) -> None:
        gs = [list(g) for g in groups]
        self.blocked = set()
        for i, g in enumerate(gs):
            for j, h in enumerate(gs):
                if i != j:
                    self.blocked |= {(a, b) for a in g for b in h}

    def _crash(self, sn: SimNode) -> None:
        # Whatever the core holds that no Ready has persisted yet is lost with the process.
        core = sn.core
        assert core is not None
        lost = len(core.log.unstable_entries)
        for key in [k for k in self.pending if k[0] == sn.id]:
            del self.pending[key]
        for key in [k for k in self.reads if k[0] == sn.id]:
            del self.reads[key]
        sn.crash()
        for other in self._alive():
            assert other.core is not None
            if self.rng.randrange(2):  # its peers may or may not see the connection break
                other.core.peer_unreachable(sn.id)
        self._log(f"crash n{sn.id} (unsynced entries lost: {lost})")
        self._count("crashes")

    def _compact(self, sn: SimNode) -> None:
        index = sn.applied[-1][0]
        if index <= sn.storage.snapshot().meta.index:
            return
        keep = self.install_rng.choice((0, 0, 3, 12))  # a trailing margin of log, or none
        sn.storage.create_snapshot(
            Index(index), _encode_applied(sn.applied), sn.core.membership_at(Index(index)), keep
        )
        self._log(f"n{sn.id} compacted to {index}")
        self._count("compactions")

    def _heal_all(self) -> None:
        self.blocked = set()
        self.drop_pct = self.dup_pct = self.max_delay = self.crash_per_mille = 0
        for sn in self.nodes.values():
            if not sn.alive and self._may_restart(sn.id):
                sn.start()
        self._log("heal all; restart all")

    # -- checks -----------------------------------------------------------------------------
    def _check_tick(self) -> None:
        for sn in self._alive():
            core = sn.core
            assert core is not None
            if core.role is Role.LEADER:
                # Election safety: at most one leader per term.
                prev = self.leader_of_term.setdefault(core.term, sn.id)
                if prev != sn.id:
                    raise Violation(
                        "election-safety", f"n{prev} and n{sn.id} both lead term {core.term}"
                    )
                # Leader append-only: the entry at the tip we saw last tick is still there.
                tip = self.leader_tip.get(sn.id)
                if tip is not None and tip[0] == core.term:
                    _, index, term = tip
                    if not core.log.match_term(Index(index), Term(term)):
                        raise Violation(
                            "leader-append-only",
                            f"n{sn.id} lost or overwrote index {index} in term {core.term}",
                        )
                last = core.log.last_index()
                self.leader_tip[sn.id] = (core.term, last, core.log.term(last))
            else:
                self.leader_tip.pop(sn.id, None)
        if self.members is not None:
            self.members.check_tick()

    def _check_log_matching(self, sn: SimNode, entries: tuple[Entry, ...]) -> None:
        # Log matching (paper 5.3): an entry identified by (index, term) is the same entry
        # everywhere, with the same predecessor term; by induction the logs agree up to it.
        st = sn.storage
        for e in entries:
            try:
                prev_term = st.term(Index(e.index - 1))
            except (CompactedError, UnavailableError):
                continue
            ident = (prev_term, e.data if e.kind is not EntryKind.NOOP else b"\x00noop")
            known = self.entry_identity.setdefault((e.index, e.term), ident)
            if known != ident:
                raise Violation(
                    "log-matching",
                    f"n{sn.id} entry ({e.index}, term {e.term}) differs from another node's",
                )

    def _check_applied(self, sn: SimNode, index: int, term: int, data: bytes) -> None:
        # State machine safety: one entry per index, applied everywhere the same.
        known = self.applied_at.setdefault(index, (term, data))
        if known != (term, data):
            raise Violation(
                "state-machine-safety",
                f"n{sn.id} applied {data!r} (term {term}) at {index}; "
                f"another node applied {known[1]!r} (term {known[0]})",
            )

    def _record_commits(self, sn: SimNode) -> None:
        # The first node to know an index is committed is the leader that committed it.
        core = sn.core
        assert core is not None
        if core.role is not Role.LEADER or core.log.committed <= self.max_committed:
            return
        lo = max(self.max_committed + 1, core.log.first_index())
        for i in range(lo, core.log.committed + 1):
            self.committed_in[i] = (core.log.term(Index(i)), core.term)
        self.max_committed = core.log.committed

    def _check_leader_completeness(self, sn: SimNode) -> None:
        # Leader completeness (paper 5.4): a leader holds every entry committed in an earlier
        # term (entries committed in later terms, by a newer leader, need not be there).
        core = sn.core
        assert core is not None
        first = core.log.first_index()
        for index, (term, commit_term) in self.committed_in.items():
            if index < first - 1 or commit_term >= core.term:
                continue
            if not core.log.match_term(Index(index), Term(term)):
                raise Violation(
                    "leader-completeness",
                    f"n{sn.id} leads term {core.term} without index {index} (term {term}), "
                    f"committed in term {commit_term}",
                )

    def _check_liveness(self) -> None:
        bound = self.liveness_ticks
        start = self.now
        leader: SimNode | None = None
        while self.now - start < bound:
            self._step_tick(allow_proposals=False)
            leader = self._leader()
            if leader is not None and self._converged(leader):
                break
        else:
            state = ", ".join(
                f"n{sn.id}:{sn.core.role.value}/t{sn.core.term}/c{sn.core.log.committed}"
                f"/a{sn.core.log.applied}/l{sn.core.log.last_index()}"
                for sn in self._alive()
                if sn.core is not None
            )
            raise Violation(
                "liveness",
                f"no leader with a converged cluster within {bound} ticks after healing ({state})",
            )
        self._log(f"converged: leader n{leader.id if leader else '?'}")

    def _converged(self, leader: SimNode) -> bool:
        assert leader.core is not None
        if leader.core.log.committed < leader.core.log.last_index():
            return False
        target = leader.core.log.last_index()
        return all(
            sn.core is not None
            and sn.core.standing is Standing.VOTER
            and sn.core.log.applied == target
            and sn.applied
            and sn.applied[-1][0] == target
            for sn in self._must_converge(leader)
        )

    def _must_converge(self, leader: SimNode) -> list[SimNode]:
        if self.members is None:
            return list(self.nodes.values())
        return [self.nodes[nid] for nid in self.members.must_converge(leader)]

    def _check_final(self) -> None:
        # Every node (every member) applied the same log, and it holds every acknowledged
        # proposal.
        leader = self._leader()
        nodes = self._must_converge(leader) if leader is not None else list(self.nodes.values())
        ref = nodes[0].applied
        for sn in nodes:
            if sn.applied != ref:
                raise Violation(
                    "convergence", f"n{sn.id} and n{nodes[0].id} applied different logs"
                )
        by_index = {i: (t, d) for i, t, d in ref}
        for i, (term, data) in sorted(self.acked.items()):
            if by_index.get(i) != (term, data):
                raise Violation(
                    "durability",
                    f"acknowledged {data!r} at {i} (term {term}) is not in the final log",
                )


def simulate(seed: int, nodes: int = 3, **kwargs: object) -> SimResult:
    """Run one seeded simulation; see `Simulator` for the keyword arguments."""
    return Simulator(seed, nodes, **kwargs).run()  # type: ignore[arg-type]
