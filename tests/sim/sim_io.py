"""The whole-node simulator's disk, durability mark and network (tests/sim/node_sim.py).

Split from node_sim.py: what a simulated node writes to and sends through. Pure memory and the
mock clock; every random choice comes from the `random.Random` the simulator hands in.
"""

from __future__ import annotations

import heapq
import io
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cbor2
import trio

from node.bodies import MemoryBodies
from node.codec import decode_raft_message, encode_raft_message
from node.loop_api import StagedSnapshot
from node.raft import (
    DurabilityMark,
    Entry,
    HardState,
    Index,
    Membership,
    MemoryStorage,
    Message,
    NodeId,
    Ready,
    Snapshot,
    SnapshotMeta,
    Standing,
    Term,
)

__all__ = ["MemoryStage", "SimDisk", "SimMarks", "SimNetwork"]


class MemoryStage:
    """A snapshot being written (the loop's `SnapshotWriter`), kept in memory."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.parts: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.parts.append(bytes(data))

    def finish(self) -> StagedSnapshot:
        data = b"".join(self.parts)
        self.parts = [data]
        return StagedMemory(self.index, len(data), 1, data)

    def abort(self) -> None:
        self.aborted = True
        self.parts = []


@dataclass(frozen=True, slots=True)
class StagedMemory(StagedSnapshot):
    """A staged snapshot with its data (an in-memory storage commits it from here)."""

    data: bytes = b""


# ---------------------------------------------------------------------------------------------
# Disk
# ---------------------------------------------------------------------------------------------


@dataclass
class _Durable:
    hard: HardState
    snap: Snapshot
    log: list[Entry]


class SimDisk:
    """One node's database in memory (the `ReplicaStorage` of node/replica.py).

    What the node reads is `mem`, everything written. `_durable` is what a power loss keeps:
    the state as of the last synced write.

    A synced write takes virtual time (`latency_s()`, seeded: mostly 0.2 to 2 ms, sometimes
    20 to 80 ms). Run by the node's worker (`in_worker`: the simulator's stand-in for
    `trio.to_thread`), the time passes while other tasks run (`take_latency_s`); run inline
    on the event loop, it stalls the whole node's trio run, as an inline fsync does (`jump`,
    the mock clock's). So the loop's choice between the two (`INLINE_SYNC_MAX_S`) is exercised.

    Args:
        node_id: its node (for `path`).
        voters: the cluster's voters.
        skip_fsync: the planted bug `confirm-before-fsync`.
        latency_s: seconds one synced write takes (None: no time).
        jump: moves the virtual clock (`MockClock.jump`).
    """

    def __init__(self, node_id: int, voters: tuple[NodeId, ...], skip_fsync: bool = False,
                 latency_s: Callable[[], float] | None = None,
                 jump: Callable[[float], None] | None = None) -> None:
        self.path = Path(f"sim/n{node_id}/raft")
        self.mem = MemoryStorage(voters, Standing.JOINING)  # a new database starts JOINING
        self.bodies = MemoryBodies()  # in the same "database": synced with the log
        self.created = True
        self.skip_fsync = skip_fsync
        self._durable = self._capture()
        self.unsynced_writes = 0  # writes since the last synced one: what a power loss takes
        self.latency_s = latency_s
        self.jump = jump
        self.in_worker = False
        self._owed_s = 0.0

    def take_latency_s(self) -> float:
        """The virtual time the worker's writes took since the last call."""
        owed, self._owed_s = self._owed_s, 0.0
        return owed

    def _capture(self) -> _Durable:
        return _Durable(self.mem.hard_state, self.mem.snap, list(self.mem.log))

    # -- the core's reads --------------------------------------------------------------------
    def initial_state(self) -> tuple[HardState, Membership]:
        return self.mem.initial_state()

    def config_entries(self) -> list[Entry]:
        return self.mem.config_entries()

    def first_index(self) -> Index:
        return self.mem.first_index()

    def last_index(self) -> Index:
        return self.mem.last_index()

    def term(self, index: Index) -> Term:
        return self.mem.term(index)

    def entries(self, lo: Index, hi: Index, max_bytes: int | None = None) -> list[Entry]:
        return self.mem.entries(lo, hi, max_bytes)

    def snapshot(self) -> Snapshot:
        return self.mem.snapshot()

    def snapshot_meta(self) -> SnapshotMeta:
        return self.mem.snapshot().meta

    def snapshot_reader(self) -> io.BytesIO:
        return io.BytesIO(self.mem.snapshot().data)

    # -- the loop's writes -------------------------------------------------------------------
    def persist(self, rd: Ready) -> None:
        self.mem.stage_snapshot(rd.snapshot_chunks)
        if rd.snapshot is not None:
            self.mem.apply_snapshot(rd.snapshot)
            self.bodies.activate(rd.snapshot.meta.index)  # with the snapshot, atomically
        self.mem.append(rd.entries)
        if rd.hard_state is not None:
            self.mem.set_hard_state(rd.hard_state)
        if rd.must_sync:
            self._sync()
        elif (rd.entries or rd.hard_state is not None or rd.snapshot is not None
              or rd.snapshot_chunks):
            self.unsynced_writes += 1

    def incoming_snapshot(self, meta: SnapshotMeta) -> bytes | None:
        return self.mem.staged_snapshot(meta)

    def begin_snapshot(self, index: Index) -> MemoryStage:
        return MemoryStage(index)

    def commit_snapshot(
        self, staged: StagedSnapshot, membership: Membership, keep_entries: int = 0
    ) -> None:
        assert isinstance(staged, StagedMemory)
        if staged.index <= self.mem.snapshot().meta.index:
            return
        self.mem.create_snapshot(staged.index, staged.data, membership, keep_entries)
        self._sync()

    def _sync(self) -> None:
        if self.latency_s is not None:
            took_s = self.latency_s()
            if self.in_worker:
                self._owed_s += took_s
            elif self.jump is not None:
                self.jump(took_s)
        if self.skip_fsync:
            self.unsynced_writes += 1
        else:
            self._durable = self._capture()
            self.bodies.sync()
            self.unsynced_writes = 0

    # -- faults ------------------------------------------------------------------------------
    def reopen(self, *, power_loss: bool) -> int:
        """The node comes back: after a power loss only what was synced is there.

        Returns how many writes the power loss took away (0 after a process crash).
        """
        self.created = False
        if not power_loss:
            return 0
        d = self._durable
        self.bodies.lose_unsynced()
        lost, self.unsynced_writes = self.unsynced_writes, 0
        mem = MemoryStorage(self.mem.snap.meta.membership)
        mem.hard_state, mem.snap, mem.log = d.hard, d.snap, list(d.log)
        self.mem = mem
        return lost


class SimMarks:
    """The durability mark beside the database (node/marker.py), written synchronously."""

    def __init__(self, node_id: int) -> None:
        self.path = Path(f"sim/n{node_id}/durable.mark")
        self.mark: DurabilityMark | None = None

    def load(self) -> DurabilityMark | None:
        return self.mark

    def store(self, mark: DurabilityMark) -> None:
        self.mark = mark


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------


class SimNetwork:
    """Raft messages between the nodes, through the real codec, with seeded faults.

    Args:
        rng: the network's randomness.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.inboxes: dict[int, trio.MemorySendChannel[Message] | None] = {}
        self.blocked: Counter[tuple[int, int]] = Counter()  # link -> partitions cutting it
        self.drop_pct = 0
        self.dup_pct = 0
        self.max_delay_ms = 1
        self._heap: list[tuple[float, int, int, bytes]] = []
        self._seq = 0
        self._changed = trio.Event()
        self.counters = {"sent": 0, "delivered": 0, "dropped": 0, "blocked": 0, "duplicated": 0,
                         "to_down": 0}

    def endpoint(self, node_id: int) -> _Endpoint:
        return _Endpoint(self, node_id)

    def send(self, msg: Message) -> None:
        c = self.counters
        c["sent"] += 1
        if self.inboxes.get(msg.to_id) is None:
            c["to_down"] += 1
            return
        if self.blocked[(msg.from_id, msg.to_id)]:
            c["blocked"] += 1
            return
        if self.drop_pct and self.rng.randrange(100) < self.drop_pct:
            c["dropped"] += 1
            return
        copies = 1
        if self.dup_pct and self.rng.randrange(100) < self.dup_pct:
            copies = 2
            c["duplicated"] += 1
        frame = cbor2.dumps(encode_raft_message(msg))
        now = trio.current_time()
        for _ in range(copies):
            delay_s = self.rng.randrange(self.max_delay_ms + 1) / 1000
            self._seq += 1
            heapq.heappush(self._heap, (now + delay_s, self._seq, msg.to_id, frame))
        self._changed.set()

    async def run(self) -> None:
        """Deliver messages when they are due, until cancelled."""
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, to, frame = heapq.heappop(heap)
                inbox = self.inboxes.get(to)
                msg = decode_raft_message(cbor2.loads(frame))
                if inbox is None:
                    self.counters["to_down"] += 1
                    continue
                if self.blocked[(msg.from_id, msg.to_id)]:
                    self.counters["blocked"] += 1
                    continue
                try:
                    inbox.send_nowait(msg)
                    self.counters["delivered"] += 1
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    self.counters["dropped"] += 1
            self._changed = trio.Event()
            if heap:
                with trio.move_on_at(heap[0][0]):
                    await self._changed.wait()
            else:
                await self._changed.wait()


@dataclass
class _Endpoint:
    net: SimNetwork
    node_id: int

    def send(self, msg: Message) -> None:
        self.net.send(msg)
