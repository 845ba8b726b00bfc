"""One node's replicated parts wired together, whatever disk, network and clock they run on.

`Replica` checks the durability of the given storage against its mark, builds the Raft core,
the Raft loop, the queue application, the leader's actors and the client request handling,
and runs the loop and the actors. It opens no socket and no file: a node process
(node/main.py) gives it RocksDB, the marker file, the TCP transport and the real clocks; the
whole-node simulator (tests/sim/node_sim.py) gives it an in-memory disk and network and trio's
mock clock. Both run this same wiring, so the code that runs in production is the code the
simulator checks.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import trio

from node import machine
from node.actors import ActorSystem, wall_clock_ms
from node.app import QueueApp, load_state
from node.bodies import BodyStore
from node.config import ClusterConfig
from node.disk_alarm import DiskAlarm
from node.loop_api import BlockingRunner, Sender, SnapshotWriter, StagedSnapshot
from node.raft import (
    DurabilityMark,
    HardState,
    Index,
    Membership,
    Message,
    RaftNode,
    Ready,
    SnapshotData,
    SnapshotMeta,
    Standing,
    Storage,
    assess_durability,
    mark_of,
)
from node.raft_loop import RaftLoop
from node.server import ClientServer
from node.storage import StorageError

logger = logging.getLogger("raftq.node")


class ReplicaStorage(Storage, Protocol):
    """What a replica needs of its database: the core's reads and the loop's writes.

    Attributes:
        created: the database was created empty by this open (a new node, or a lost disk).
        path: where it lives (for messages).
        bodies: the message bodies (node/bodies.py), in the same database.
    """

    created: bool

    @property
    def path(self) -> Path: ...

    @property
    def bodies(self) -> BodyStore: ...

    def persist(self, ready: Ready) -> None: ...

    def snapshot_meta(self) -> SnapshotMeta: ...

    def snapshot_reader(self) -> Any: ...  # a binary file (read, readable, seekable)

    def begin_snapshot(self, index: Index) -> SnapshotWriter: ...

    def commit_snapshot(
        self, staged: StagedSnapshot, membership: Membership, keep_entries: int = 0
    ) -> None: ...

    def incoming_snapshot(self, meta: SnapshotMeta) -> bytes | SnapshotData | None: ...


class MarkKeeper(Protocol):
    """Where the durability mark lives (node/marker.py's MarkerFile, or an in-memory one)."""

    @property
    def path(self) -> Path: ...

    def load(self) -> DurabilityMark | None: ...

    def store(self, mark: DurabilityMark) -> None: ...


class Replica:
    """A node's core, loop, application, actors and request handling.

    Args:
        cfg: the cluster configuration (tuning, peers' client addresses).
        node_id: this node.
        storage: its database, already open.
        marker: its durability mark.
        transport: sends Raft messages to peers (never blocks).
        inbound: the Raft messages peers sent it.
        rng: the core's randomness (election jitter).
        clock_ms: the wall clock leaders stamp entries with (Unix milliseconds).
        blocking: how blocking storage work runs (see `node.raft_loop.BlockingRunner`).
        perf_clock: seconds, for timing synced writes.
        transport_stats: the transport's counters, for `node_status`.
        force_voter: vote at once even if the node lost durable state (docs/operations.md).
        on_membership: called by the Raft loop when the membership (or the set of nodes the
            core talks to) changed, with the membership in effect; must not block (see
            `RaftLoop`).
        disk: the free-disk alarm the client server consults (None: none).
        snapshot_fork_dir: where a forked child writes the machine's part of each snapshot
            (node/snapshot_fork.py); None writes it in place, in a worker thread, holding
            applies back meanwhile (the simulator, where no process may fork).

    Raises:
        StorageError: the latest snapshot does not decode, or the mark or database is damaged.
    """

    def __init__(
        self,
        cfg: ClusterConfig,
        node_id: int,
        storage: ReplicaStorage,
        marker: MarkKeeper,
        transport: Sender,
        inbound: trio.MemoryReceiveChannel[Message],
        *,
        rng: random.Random,
        clock_ms: Callable[[], int] = wall_clock_ms,
        blocking: BlockingRunner = trio.to_thread.run_sync,
        perf_clock: Callable[[], float] = time.perf_counter,
        transport_stats: Callable[[], dict[str, Any]] = dict,
        force_voter: bool = False,
        on_membership: Callable[[Membership], None] | None = None,
        disk: DiskAlarm | None = None,
        snapshot_fork_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.storage = storage
        self.marker = marker
        self.force_voter = force_voter
        self.inbound = inbound
        mark, repair_reason = self._check_durability()
        index = storage.snapshot_meta().index
        try:
            if index > 0:
                state = load_state(storage.snapshot_reader(), index, storage.bodies)
            else:
                state = machine.new_state()
        except machine.SnapshotError as exc:
            raise StorageError(
                f"database {storage.path}: snapshot at index {index} does not decode: {exc}"
            ) from None
        core = RaftNode(cfg.raft_config(node_id), storage, rng, repair_reason=repair_reason)
        self.app = QueueApp(state, storage.bodies, snapshot_fork_dir=snapshot_fork_dir)
        self.loop = RaftLoop(
            core,
            storage,
            transport,
            self.app,
            tick_s=cfg.tick_ms / 1000,
            snapshot_entries=cfg.snapshot_entries,
            log_margin_entries=cfg.log_margin_entries,
            marker=marker,
            mark=mark,
            blocking=blocking,
            perf_clock=perf_clock,
            on_membership=on_membership,
        )
        self.actors = ActorSystem(self.loop, clock_ms=clock_ms)
        self.app.sink = self.actors
        self.server = ClientServer(node_id, cfg, self.loop, self.app, self.actors, transport_stats,
                                   disk=disk)

    def _check_durability(self) -> tuple[DurabilityMark, str | None]:
        """Compare the database with the durability mark; start REPAIRING if state was lost.

        Returns the mark now kept and why the node lost durable state (None if it did not).
        """
        storage = self.storage
        hard, _ = storage.initial_state()
        mark = self.marker.load()
        fixed, reason = assess_durability(hard, storage, mark)
        if self.force_voter and fixed.standing is not Standing.VOTER:
            logger.warning(
                "node %d: --force-voter: votes at once although it %s; what only the lost "
                "disks held is lost (docs/operations.md, \"Recovery\")",
                self.node_id,
                reason or "has a new, empty database",
            )
            fixed = HardState(fixed.term, fixed.vote, fixed.commit, Standing.VOTER)
            reason = None
        if fixed != hard:
            storage.persist(Ready(fixed, (), None, (), (), (), None, (), must_sync=True))
        if reason is not None:
            logger.warning(
                "node %d lost durable state: %s; it neither votes nor counts towards a quorum "
                "until a leader has repaired it",
                self.node_id,
                reason,
            )
        if mark is None and not storage.created:
            logger.warning(
                "node %d: no durability mark beside its database (%s): a new one is written; "
                "a loss of state before now cannot be seen",
                self.node_id,
                self.marker.path,
            )
        last = storage.last_index()
        current = mark_of(fixed, last, storage.term(last))
        if mark is None or reason is not None or (mark.term, mark.vote, mark.standing) != (
            current.term, current.vote, current.standing
        ):
            self.marker.store(current)
            mark = current
        return mark, reason

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the actors and the Raft loop until cancelled (no client listener: see
        `ClientServer.run`; requests may also go to `server.dispatch` directly)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.actors.run)
            await nursery.start(self.loop.run, self.inbound)
            task_status.started()

    async def hand_over(self, timeout_s: float = 2.0) -> None:
        """If leading, transfer leadership and wait (up to `timeout_s`) until it moved."""
        if not self.loop.is_leader:
            return
        with trio.move_on_after(timeout_s):
            target = await self.loop.transfer_leadership()  # a peer that answers, if any
            if target is None:
                logger.info("no peer answers: stopping without a handover")
                return
            logger.info("handing leadership to node %d", target)
            while self.loop.is_leader:
                await self.loop.role_changed.wait()
