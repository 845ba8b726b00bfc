"""Faults as data, a schedule drawn from a seed, and the nemesis that injects them.

After Jepsen's `nemesis/combined.clj`: a fault is a value (`Fault`: kind, variant, start time,
duration); `make_schedule` draws a list of them from a seeded `random.Random`, so one seed
names one schedule. `Nemesis` executes a schedule against the node processes (`NodeProcs`)
and the link proxies (`ProxyMesh`) and records what really happened (`FaultRecord`): start and
end times, which nodes, which links, which pids, and evidence that the fault took effect (the
killed pid exited with -9, the paused pid is in state T, the proxies dropped or refused
connections). A fault whose effect could not be verified is marked `verified: false`, which
fails the run.

Kinds and variants:

| kind | variants | effect, healed after `duration_s` |
| --- | --- | --- |
| `kill` | `one`, `leader`, `minority`, `all` | SIGKILL; restarted at the end |
| `pause` | `leader`, `one` | SIGSTOP; SIGCONT at the end |
| `partition` | `leader`, `halves`, `halves-leader`, `ring`, `bridge`, `link`, `one-way` | proxies cut links |
| `restart-all` | `kill` | SIGKILL every node at once, start them again after `duration_s` |
| `delay` | `all` | every link delayed by 50 to 150 ms |
| `disk-corruption` | `flip-wal`, `flip-sst`, `truncate-wal`, `cut-wal`, `delete-wal` | SIGKILL one node, damage its database, start it; wiped and started again if it refuses its data |
| `disk-loss` | `wipe` | SIGKILL one node, move its data directory away, start it |
| `membership` | `add`, `remove`, `remove-leader`, `replace` (each also `+kill-leader`) | a node joins (learner, then voter), a member leaves, or one is replaced by a new id at its address; permanent (`jepsen_like.membership_nemesis`) |

Disk faults (`jepsen_like.disk`) act on one running node at a time, and never on more nodes
than a minority: at most (n - 1) // 2 nodes (one of three) may be damaged and not yet repaired
at any moment. A damaged node counts as repaired once its `node_status` shows it applied
everything it could have acknowledged before the damage (its last index then, or the highest
commit index of the cluster if higher) and, when the status names a `standing`, that it is a
voter again. A disk fault waits (up to `Nemesis.repair_wait_s`) for that before it picks a node;
if none can be picked it is not injected (`verified: false`). `disk-corruption` applies its
variant's operation (another one chosen by the fault's seed when the variant finds nothing to
damage, e.g. `flip-sst` on a node without an SST) and starts the node again: it either refuses
to start (exit status 2, `raftq node N: cannot start: database ...`: outcome `refused`; the
nemesis then applies the operator procedure, `wipe` and start again) or keeps running (outcome
`running`: it found its state lost and is repaired by its peers, or the damage hit nothing
that mattered). Healed when the node runs again. The disk faults are the job of the
`Nemesis`'s `DiskNemesis` (`jepsen_like.disk_nemesis`), which keeps the damaged nodes.

Membership faults are the job of its `MembershipNemesis` (`jepsen_like.membership_nemesis`);
after one, the nemesis acts on the nodes that are members then (`NodeProcs.member_ids`): a
removed node is never restarted, partitioned or killed again.

Partitions are grudges (node -> the nodes it must not hear from), as in Jepsen's nemesis.clj:
`leader` isolates the leader both ways; `halves` splits the nodes into two random halves
(`halves-leader`: the leader in the smaller one);
`ring` is Jepsen's majorities ring (every node hears a majority, no two the same one; with 3
nodes each node hears one other node, one way); `bridge` cuts two halves apart except through
one node that hears both; `link` cuts one pair both ways; `one-way` cuts one direction of one
pair.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from jepsen_like.disk_nemesis import DISK_KINDS, DISK_OPS, Damaged, DiskNemesis, StatusOf
from jepsen_like.faults import KINDS, Fault, FaultRecord
from jepsen_like.membership_nemesis import MembershipNemesis
from jepsen_like.procs import NodeProcs
from jepsen_like.proxy import ProxyMesh

__all__ = [
    "DISK_KINDS",
    "DISK_OPS",
    "KINDS",
    "Fault",
    "FaultRecord",
    "Nemesis",
    "grudge_for",
    "make_schedule",
]

logger = logging.getLogger("jepsen_like.nemesis")


def make_schedule(
    kinds: Sequence[str],
    duration_s: float,
    rng: random.Random,
    *,
    warmup_s: float = 2.0,
    cooldown_s: float = 2.0,
    fault_s: tuple[float, float] = (2.0, 4.0),
    gap_s: tuple[float, float] = (1.5, 3.0),
    restart_down_s: tuple[float, float] = (0.3, 1.0),
) -> list[Fault]:
    """Draw a schedule: faults one after another, with quiet gaps, inside the workload.

    Kinds take turns in a shuffled order, so each requested kind comes up; the variant and
    duration are drawn at random. The first fault starts after `warmup_s`; none ends later than
    `cooldown_s` before `duration_s`. At least one fault is scheduled whenever the window is
    long enough for one of minimum length.

    Args:
        kinds: nemesis kinds (keys of `KINDS`).
        duration_s: length of the workload, seconds.
        rng: the seeded source of every choice.
        warmup_s: quiet time at the start, seconds.
        cooldown_s: quiet time at the end, seconds.
        fault_s: (min, max) duration of a fault, seconds.
        gap_s: (min, max) quiet time between faults, seconds.
        restart_down_s: (min, max) downtime of a restart-all, seconds.

    Raises:
        ValueError: an unknown kind.
    """
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown nemesis {k!r}; known: {', '.join(KINDS)}")
    if not kinds:
        return []
    order = list(kinds)
    rng.shuffle(order)
    out: list[Fault] = []
    t = warmup_s
    end = duration_s - cooldown_s
    turn = 0
    while True:
        kind = order[turn % len(order)]
        span = restart_down_s if kind == "restart-all" else fault_s
        dur = rng.uniform(*span)
        if t + dur > end:
            dur = span[0]
            if t + dur > end:
                break
        out.append(Fault(kind, rng.choice(KINDS[kind]), round(t, 3), round(dur, 3),
                         seed=rng.randrange(1 << 30)))
        t += dur + rng.uniform(*gap_s)
        turn += 1
    return out


def grudge_for(
    variant: str, nodes: Sequence[int], leader: int | None, rng: random.Random
) -> tuple[dict[int, set[int]], list[int]]:
    """The grudge of a partition variant: node -> nodes it must not hear from.

    Args:
        variant: a partition variant of `KINDS`.
        nodes: every node id.
        leader: the current leader, or None (then a random node stands in).
        rng: source of the random choices.

    Returns:
        (grudge, the nodes the variant is about: the isolated node, the bridge, the first
        half, or the pair whose link is cut).
    """
    ids = sorted(nodes)
    every = set(ids)
    grudge: dict[int, set[int]] = {i: set() for i in ids}
    if variant == "leader":
        target = leader if leader is not None else rng.choice(ids)
        for i in ids:
            if i != target:
                grudge[i].add(target)
                grudge[target].add(i)
        return grudge, [target]
    shuffled = list(ids)
    rng.shuffle(shuffled)
    if variant in ("halves", "halves-leader"):
        if variant == "halves-leader":
            target = leader if leader is not None else shuffled[0]
            shuffled.remove(target)
            shuffled.insert(0, target)
        half = set(shuffled[: len(ids) // 2])
        for i in ids:
            grudge[i] = (every - half) if i in half else set(half)
        return grudge, sorted(half)
    if variant == "ring":
        # Jepsen's majorities-ring: windows of a majority along a shuffled ring; the node in
        # the middle of each window hears exactly that window.
        n = len(ids)
        m = n // 2 + 1
        ring = shuffled + shuffled
        for k in range(n):
            window = ring[k : k + m]
            me = window[len(window) // 2]
            grudge[me] = every - set(window)
        return grudge, shuffled
    if variant == "bridge":
        bridge = shuffled[0]
        rest = shuffled[1:]
        a, b = set(rest[: len(rest) // 2]), set(rest[len(rest) // 2 :])
        for i in a:
            grudge[i] = set(b)
        for i in b:
            grudge[i] = set(a)
        return grudge, [bridge]
    if variant == "link":
        x, y = shuffled[0], shuffled[1]
        grudge[x].add(y)
        grudge[y].add(x)
        return grudge, sorted([x, y])
    if variant == "one-way":
        x, y = shuffled[0], shuffled[1]
        grudge[y].add(x)  # y does not hear x: link x -> y cut
        return grudge, [x, y]
    raise ValueError(f"unknown partition variant {variant!r}")


LeaderFinder = Callable[[], Awaitable[int | None]]


class Nemesis:
    """Injects the faults of a schedule and records them.

    Args:
        procs: the node processes.
        mesh: the link proxies.
        find_leader: returns the current leader's id (None when none is known).
        clock_s: seconds since the start of the run (the history's clock).
        status_of: one node's `node_status` (None when it does not answer); disk faults use
            it to see a restarted node serve and a damaged node repaired. Without it a
            restarted node is taken as started when it still runs after `settle_s`, and a
            damaged node as repaired once it runs.
        membership: injects the `membership` faults (None: a schedule must have none).

    Attributes:
        disk: the `DiskNemesis` that injects the disk faults; it keeps the damaged nodes
            (`damaged`) and the three settings below, which read and set its own.
        start_watch_s: how long a node started on damaged data may take to refuse it or serve.
        settle_s: without `status_of`, how long a restarted node must keep running.
        repair_wait_s: how long a disk fault waits for damaged nodes to be repaired when no
            other node may be damaged.
    """

    def __init__(
        self,
        procs: NodeProcs,
        mesh: ProxyMesh,
        find_leader: LeaderFinder,
        clock_s: Callable[[], float],
        status_of: StatusOf | None = None,
        membership: MembershipNemesis | None = None,
    ) -> None:
        self.procs = procs
        self.mesh = mesh
        self.find_leader = find_leader
        self.clock_s = clock_s
        self.records: list[FaultRecord] = []
        self.active: dict[int, FaultRecord] = {}
        self._started: dict[int, trio.Event] = {}
        self._by_index: dict[int, FaultRecord] = {}
        self.disk = DiskNemesis(procs, clock_s, self._by_index.get, status_of)
        self.membership = membership

    @property
    def node_ids(self) -> list[int]:
        """The nodes that are members now (a membership fault changes them)."""
        return self.procs.member_ids

    async def run(self, schedule: Sequence[Fault], t0_s: float) -> None:
        """Inject every fault at its time (relative to `t0_s` on `clock_s`), each in its own
        task, healing each at its end. Returns when all are done; when cancelled, faults that
        have not started are skipped (healing is then `heal_all`'s job)."""
        for i in range(len(schedule)):
            self._started[i] = trio.Event()
        async with trio.open_nursery() as nursery:
            for i, fault in enumerate(schedule):
                nursery.start_soon(self._run_one, i, fault, t0_s)

    async def _run_one(self, index: int, fault: Fault, t0_s: float) -> None:
        delay = t0_s + fault.at_s - self.clock_s()
        if delay > 0:
            await trio.sleep(delay)
        targets: list[int] | None = None
        if fault.nodes_from is not None:
            await self._started[fault.nodes_from].wait()
            targets = list(self._by_index[fault.nodes_from].nodes)
        rec = FaultRecord(index, fault.kind, fault.variant)
        rec.start_s = self.clock_s()
        rec.start_wall_ms = time.time_ns() / 1e6
        self._by_index[index] = rec
        self.records.append(rec)
        self.active[index] = rec
        rng = random.Random(fault.seed)
        try:
            heal = await self._start(fault, rec, rng, targets)
            self._started[index].set()
            logger.info("fault %d started: %s", index, rec.describe())
            try:
                await trio.sleep(fault.duration_s)
            finally:
                with trio.CancelScope(shield=True):
                    await heal()
        except Exception as exc:  # a fault that cannot be injected must not kill the run
            logger.exception("fault %d (%s/%s) failed", index, fault.kind, fault.variant)
            rec.note = f"{rec.note} error: {type(exc).__name__}: {exc}".strip()
            rec.verified = False
        finally:
            self._started[index].set()
            rec.end_s = self.clock_s()
            rec.end_wall_ms = time.time_ns() / 1e6
            self.active.pop(index, None)

    async def _leader_or_random(self, rec: FaultRecord, rng: random.Random) -> int:
        leader = await self.find_leader()
        if leader is None:
            leader = rng.choice(self.running_nodes() or self.node_ids)
            rec.note = f"leader unknown: chose node {leader}"
        return leader

    def running_nodes(self) -> list[int]:
        return [i for i in self.node_ids if self.procs.running(i) and not self.procs.paused(i)]

    async def _start(
        self, fault: Fault, rec: FaultRecord, rng: random.Random, targets: list[int] | None
    ) -> Callable[[], Awaitable[None]]:
        kind, variant = fault.kind, fault.variant
        if kind in ("kill", "pause"):
            if targets is None:
                targets = await self._choose_nodes(variant, rec, rng)
            rec.nodes = sorted(targets)
            if kind == "kill":
                return await self._kill(rec)
            return await self._pause(rec)
        if kind == "partition":
            return await self._partition(variant, rec, rng, targets)
        if kind == "restart-all":
            rec.nodes = self.node_ids
            return await self._kill(rec)
        if kind == "delay":
            return self._delay(rec, rng)
        if kind in DISK_KINDS:
            return await self.disk.start(fault, rec, rng, targets)
        if kind == "membership":
            if self.membership is None:
                raise ValueError("a membership fault needs the run's MembershipNemesis")
            return await self.membership.start(fault, rec, rng)
        raise ValueError(f"unknown fault kind {kind!r}")

    async def _choose_nodes(self, variant: str, rec: FaultRecord, rng: random.Random) -> list[int]:
        ids = self.node_ids
        if variant == "leader":
            return [await self._leader_or_random(rec, rng)]
        if variant == "one":
            return [rng.choice(self.running_nodes() or ids)]
        if variant == "minority":
            k = max(1, (len(ids) - 1) // 2)
            return rng.sample(ids, k)
        if variant == "all":
            return list(ids)
        raise ValueError(f"unknown node variant {variant!r}")

    async def _kill(self, rec: FaultRecord) -> Callable[[], Awaitable[None]]:
        codes: dict[str, int | None] = {}

        async def kill_one(nid: int) -> None:
            pid, code = await self.procs.kill(nid)
            if pid is not None:
                rec.pids.append(pid)
            codes[str(nid)] = code

        async with trio.open_nursery() as nursery:
            for nid in rec.nodes:
                nursery.start_soon(kill_one, nid)
        rec.evidence["exit_codes"] = codes
        # Verified when every targeted node that was running died of SIGKILL.
        rec.verified = bool(rec.pids) and all(
            c == -9 for c in codes.values() if c is not None
        ) and len([c for c in codes.values() if c is not None]) == len(rec.pids)

        async def heal() -> None:
            restarted = {}
            members = self.node_ids
            for nid in rec.nodes:
                if not self.procs.running(nid) and nid in members:  # not if removed since
                    restarted[str(nid)] = await self.procs.start(nid)
            rec.evidence["restarted_pids"] = restarted

        return heal

    async def _pause(self, rec: FaultRecord) -> Callable[[], Awaitable[None]]:
        states: dict[str, str | None] = {}
        for nid in rec.nodes:
            pid = self.procs.pause(nid)
            if pid is not None:
                rec.pids.append(pid)
        with trio.move_on_after(1.0):
            while True:
                for nid in rec.nodes:
                    states[str(nid)] = self.procs.state(nid)
                if all(s == "T" for s in states.values()):
                    break
                await trio.sleep(0.01)
        rec.evidence["states_after_stop"] = dict(states)
        rec.verified = bool(rec.pids) and all(s == "T" for s in states.values())

        async def heal() -> None:
            for nid in rec.nodes:
                self.procs.resume(nid)
            await trio.sleep(0.01)
            rec.evidence["states_after_cont"] = {
                str(nid): self.procs.state(nid) for nid in rec.nodes
            }

        return heal

    async def _partition(
        self, variant: str, rec: FaultRecord, rng: random.Random, targets: list[int] | None
    ) -> Callable[[], Awaitable[None]]:
        leader: int | None = None
        if targets and variant in ("leader", "halves-leader"):
            leader = targets[0]
        elif variant in ("leader", "halves-leader"):
            leader = await self._leader_or_random(rec, rng)
        grudge, about = grudge_for(variant, self.node_ids, leader, rng)
        rec.nodes = about
        links = sorted((src, dst) for dst, srcs in grudge.items() for src in srcs)
        before = {link: self.mesh.link(*link).stats.refused for link in links}
        closed = self.mesh.cut_links(links)
        rec.links = [list(link) for link in links]
        rec.evidence["grudge"] = {str(k): sorted(v) for k, v in grudge.items() if v}
        rec.evidence["connections_closed"] = closed

        async def heal() -> None:
            refused = sum(self.mesh.link(*link).stats.refused - before[link] for link in links)
            for link in links:
                self.mesh.link(*link).heal()
            rec.evidence["connections_refused"] = refused
            rec.verified = bool(links) and (closed + refused) > 0

        return heal

    def _delay(self, rec: FaultRecord, rng: random.Random) -> Callable[[], Awaitable[None]]:
        delay_ms = rng.uniform(50, 150)
        links = sorted(self.mesh.proxies)
        before = self.mesh.totals()["bytes_forwarded"]
        self.mesh.set_delay(delay_ms, links)
        rec.nodes = self.node_ids
        rec.evidence["delay_ms"] = round(delay_ms, 1)

        async def heal() -> None:
            self.mesh.set_delay(0, links)
            moved = self.mesh.totals()["bytes_forwarded"] - before
            rec.evidence["bytes_forwarded_while_delayed"] = moved
            rec.verified = moved > 0

        return heal

    # -- disk faults: the DiskNemesis's ----------------------------------------------------
    @property
    def status_of(self) -> StatusOf | None:
        return self.disk.status_of

    @property
    def damaged(self) -> dict[int, Damaged]:
        """The nodes damaged and not yet seen repaired (the DiskNemesis's)."""
        return self.disk.damaged

    @property
    def damage_budget(self) -> int:
        """How many nodes may be damaged and not yet repaired at once: a minority."""
        return self.disk.damage_budget

    async def refresh_repairs(self) -> list[int]:
        """Forget damaged nodes that are repaired (see the module docstring); record when on
        their faults. Returns the nodes still damaged."""
        return await self.disk.refresh_repairs()

    @property
    def start_watch_s(self) -> float:
        return self.disk.start_watch_s

    @start_watch_s.setter
    def start_watch_s(self, value: float) -> None:
        self.disk.start_watch_s = value

    @property
    def settle_s(self) -> float:
        return self.disk.settle_s

    @settle_s.setter
    def settle_s(self, value: float) -> None:
        self.disk.settle_s = value

    @property
    def repair_wait_s(self) -> float:
        return self.disk.repair_wait_s

    @repair_wait_s.setter
    def repair_wait_s(self, value: float) -> None:
        self.disk.repair_wait_s = value

    async def heal_all(self) -> dict[str, Any]:
        """Heal everything: every link, every paused node, every node that is down.

        Returns:
            What was done: nodes started.
        """
        with trio.CancelScope(shield=True):
            self.mesh.heal()
            started = await self.procs.ensure_running()
            damaged: list[int] = []
            if self.damaged:
                with trio.move_on_after(2.0):
                    damaged = await self.refresh_repairs()
        out: dict[str, Any] = {"started": started}
        if self.damaged:
            out["damaged_not_repaired"] = damaged or sorted(self.damaged)
        return out
