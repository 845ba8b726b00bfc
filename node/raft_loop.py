"""The single driver of a node's Raft core: ticks, inbound messages, proposals and the Ready loop.

One task owns the core (`RaftNode`); nothing else touches it (after etcd-io/raft's `node.go`
run loop, the only goroutine that calls RawNode). Other tasks hand it inputs and wake it:
proposals (`propose`, `submit`), linearizable reads (`read_index`), inbound messages (the
channel `run` reads), lost peers, snapshot requests, and calls that must see the core (`transfer_leadership`, `status`), which
run between two Readys, when no write is in progress. What others may read, the loop publishes:
`view` (role, term, leader, standing: the node's one record of leadership outside the core,
replaced whenever the core reports a new soft state), `applied_index` (the last entry the
application has applied: the one record of it outside the core and the machine) and
`membership` (node/loop_members.py; membership changes are `propose_conf_change`). Each turn:

1. feeds the pending ticks, lost peers, inbound messages, calls and proposals into the core;
2. takes each `Ready` and follows its contract (node/raft/_ready.py) through the one Ready
   loop every driver uses (`follow_readies`, node/raft/_driver.py): **send early** (a leader's
   appends), **persist** (one RocksDB write batch, synced when it holds entries or term/vote,
   in a worker thread when large or slow so the network keeps flowing), **send** the rest,
   **apply** committed entries through the `Application` and report dropped proposals,
   **advance**, then feed what arrived meanwhile.

While a write runs in its thread the core is left alone (RocksStorage is not thread-safe, and
inputs that arrive meanwhile simply make the next batch larger: that is group commit).

Snapshots are written while the loop goes on replicating, in two parts (node/app.py
`SnapshotJob`): first the machine's part, while committed entries are held back (not applied,
so the state does not change) and applied in order right after: in production only a
checkpoint of the bodies and a fork, the forked child then encoding the state
(node/snapshot_fork.py); in the simulator the encoding itself, in place. Then, while applies go
on, the child's output and the bodies are copied into the snapshot in a worker thread; the loop
commits it between Readys. A snapshot is taken once at least `snapshot_entries` entries and at
least as many log bytes as the previous snapshot's size were applied since the last one (so its
cost stays proportional to the log it replaces, after Ra's release cursor), or soon after the
application says the state is small (`request_snapshot`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from node.loop_api import (
    Application,
    BlockingRunner,
    LoopView,
    MarkStore,
    Persister,
    Proposal,
    ProposalFailed,
    Sender,
    SnapshotJob,
    SnapshotWriter,
    StagedSnapshot,
)
from node.loop_marks import MarkTracker
from node.loop_members import MembershipTracker, loop_status, start_transfer
from node.loop_reads import ReadTracker
from node.raft import (
    ConfChange,
    DurabilityMark,
    Entry,
    EntryKind,
    Index,
    Membership,
    Message,
    NodeId,
    NotLeader,
    ProposalDropped,
    RaftNode,
    Ready,
    Role,
    Snapshot,
    SnapshotData,
    SnapshotMeta,
    SoftState,
    Standing,
    follow_readies,
)
from node.snapshots import DataFile

__all__ = ["INLINE_SYNC_MAX_BYTES", "INLINE_SYNC_MAX_S", "RaftLoop"]

logger = logging.getLogger("raftq.raft")

T = TypeVar("T")

INLINE_SYNC_MAX_BYTES = 64 * 1024
"""A synced write of at most this many entry bytes may run on the event loop itself ..."""

INLINE_SYNC_MAX_S = 0.001
"""... while synced writes take less than this on average (else a worker thread does it, so a
slow disk never stalls heartbeats)."""


@dataclass(eq=False)
class _Call:
    """A function of the core run by the loop between Readys; `done` is set with its outcome."""

    fn: Callable[[RaftNode], Any]
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: Exception | None = None


class _LoopIO:
    """The loop's `ReadyIO` (node/raft/_driver.py): its own steps, bound once."""

    __slots__ = ("send", "persist", "apply", "after_advance")

    def __init__(self, loop: RaftLoop) -> None:
        self.send = loop.transport.send
        self.persist = loop._persist_step
        self.apply = loop._apply_step
        self.after_advance = loop._after_advance


class RaftLoop:
    """Owns the core; see the module docstring.

    Args:
        core: the Raft core, built on `storage`.
        storage: the durable store the core reads and this loop writes.
        transport: sends messages to peers (never blocks).
        app: the application the committed entries are applied to.
        tick_s: length of one Raft tick in seconds.
        snapshot_entries: take a snapshot after this many entries were applied since the last
            (the cluster configuration's `snapshot_entries`: no default here, so there is one).
        log_margin_entries: entries a snapshot covers that the log keeps (a follower that far
            behind catches up from the log rather than by a snapshot).
        marker: where the durability mark is kept, with `mark` its current contents; None to
            keep no mark (tests).
        blocking: how storage writes that may block run (see `BlockingRunner`).
        perf_clock: seconds, for timing synced writes (`time.perf_counter`; the simulator
            passes its virtual clock).
        on_membership: called (from the loop's task; it must not block) with the membership
            in effect whenever it, or the set of nodes the core still talks to
            (`linked_ids`), changed: the node updates its transport's peers.
    """

    def __init__(
        self,
        core: RaftNode,
        storage: Persister,
        transport: Sender,
        app: Application,
        *,
        tick_s: float,
        snapshot_entries: int,
        log_margin_entries: int = 0,
        marker: MarkStore | None = None,
        mark: DurabilityMark | None = None,
        blocking: BlockingRunner = trio.to_thread.run_sync,
        perf_clock: Callable[[], float] = time.perf_counter,
        on_membership: Callable[[Membership], None] | None = None,
    ) -> None:
        self._core = core
        self.storage = storage
        self.transport = transport
        self.app = app
        self.tick_s = tick_s
        self.snapshot_entries = snapshot_entries
        self.log_margin_entries = log_margin_entries
        self._wake = trio.Event()
        self._pending_ticks = 0
        self._inbox: list[Message] = []
        self._lost_peers: list[int] = []
        self._proposals: list[list[Proposal]] = []
        self._calls: list[_Call] = []
        self._blocking = blocking
        self._perf_clock = perf_clock
        self._waiting: dict[int, Proposal] = {}
        self._applied_index = core.log.applied
        self._applied_since_snapshot = 0
        self._log_bytes_since_snapshot = 0
        self._last_snapshot_bytes = 0
        self._snapshot_requested = False
        self._snapshotting = False  # the machine's part is being written: applies wait
        self._snapshot_job = False  # a snapshot is being written (either part): no second one
        self._deferred: list[Entry | Snapshot] = []
        self._serialized: tuple[StagedSnapshot, Membership] | None = None
        self._install_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._sync_s = 0.0  # moving average of a synced write's duration
        self._marks: MarkTracker | None = None  # set below, once `stats` exists
        self._standing = core.standing
        self._divergences = 0
        self._conflict: str | None = None
        self.view = LoopView(core.id, core.role, core.term, core.leader_id, core.standing)
        self._io = _LoopIO(self)
        self.role_changed = trio.Event()
        self.stats: dict[str, int] = {
            "readies": 0, "synced_writes": 0, "entries_applied": 0, "proposals": 0,
            "snapshots_taken": 0, "snapshots_installed": 0, "inline_synced_writes": 0,
            "marks_written": 0, "reads": 0, "reads_failed": 0, "snapshots_refused": 0,
        }
        self._reads = ReadTracker(self.stats)
        self._members = MembershipTracker(core, on_membership)
        if marker is not None:
            self._marks = MarkTracker(
                marker, mark if mark is not None else DurabilityMark(), core.log.storage,
                blocking, self.stats,
            )

    # -- API for other tasks (same trio thread) ------------------------------------------------
    def propose(self, datas: Sequence[bytes]) -> list[Proposal]:
        """Queue entries for the log; each Proposal resolves when applied (or fails).

        Failures arrive as `ProposalFailed` in `Proposal.error`, never raised here.
        """
        props = [Proposal(d) for d in datas]
        self.submit(props)
        return props

    def submit(self, props: list[Proposal]) -> None:
        """Queue already-built proposals as one batch of consecutive log entries."""
        if props:
            self._proposals.append(props)
            self._wake.set()

    def peer_lost(self, peer_id: int) -> None:
        """The transport lost its connection from `peer_id` (see `RaftNode.peer_unreachable`)."""
        self._lost_peers.append(peer_id)
        self._wake.set()

    def request_snapshot(self, min_entries: int = 0) -> None:
        """Take a snapshot soon (the machine released the log, so the state is small), if at
        least `min_entries` entries were applied since the last one."""
        if self._applied_since_snapshot >= min_entries and not self._snapshotting:
            self._snapshot_requested = True
            self._wake.set()

    @property
    def applied_index(self) -> int:
        """The last log index the application has applied (or restored a snapshot at)."""
        return self._applied_index

    @property
    def is_leader(self) -> bool:
        return self.view.role is Role.LEADER

    @property
    def membership(self) -> Membership:
        """The membership in effect (the latest in the log, committed or not)."""
        return self._members.membership

    @property
    def membership_changed(self) -> trio.Event:
        """Set when `membership` next changes."""
        return self._members.changed

    @property
    def linked_ids(self) -> frozenset[int]:
        """The nodes the core still talks to: the members, and those a change not committed
        yet removed (see node/loop_members.py)."""
        return self._members.linked_ids

    async def propose_conf_change(self, change: ConfChange) -> int:
        """Propose a membership change and wait until its CONFIG entry is applied in this
        leader's term (thesis 4.1: it is in effect from the moment it is appended; it is done
        once committed). Not bounded in time here: the caller bounds it.

        Returns:
            The entry's log index.

        Raises:
            ConfChangeError: the core refused the change now (its `code` says why).
            ProposalFailed: NOT_LEADER or UNAVAILABLE (a leadership transfer is under way, or
                another leader's entry took the index: not done), OUTCOME_UNKNOWN (the leader
                lost office before the entry committed: it may still).
        """
        prop = Proposal(b"")

        def propose(core: RaftNode) -> int:
            index = core.propose_conf_change(change)
            prop.index, prop.term = index, core.term
            self._waiting[index] = prop
            return index

        try:
            index = await self.call(propose)
        except NotLeader as exc:
            raise ProposalFailed("NOT_LEADER", "not the leader", exc.leader_id) from None
        except ProposalDropped:
            raise ProposalFailed("UNAVAILABLE", "leadership transfer in progress") from None
        await prop.done.wait()
        if prop.error is not None:
            raise prop.error
        return index

    async def call(self, fn: Callable[[RaftNode], T]) -> T:
        """Run `fn(core)` in the loop, between two Readys (no write in progress), and return
        its result, or raise what it raised. Needs `run` to be running."""
        c = _Call(fn)
        self._calls.append(c)
        self._wake.set()
        await c.done.wait()
        if c.error is not None:
            raise c.error
        return c.result  # type: ignore[no-any-return]

    async def read_index(self) -> int:
        """Wait until a linearizable read may be answered from the application's state; see
        `ReadTracker.read_index` (node/loop_reads.py) for what it waits for and raises."""
        r = self._reads.ask()
        self._wake.set()
        return await r.wait()

    async def transfer_leadership(self, target: int | None = None) -> int | None:
        """Ask the core to hand leadership to `target`, or to the most caught-up peer that
        answered within the last election timeout (thesis 3.10). Returns at once; the core
        abandons a transfer that did not happen within an election timeout.

        Returns the chosen target (a voter), or None when this node does not lead or no voter
        answers.

        Raises:
            ValueError: `target` is this node or not a voter of the cluster (from the core).
            TransferFailed: `target` has not answered this leader within an election timeout
                (it is down or cut off), so the transfer could not happen.
        """
        return await self.call(lambda core: start_transfer(core, target))

    # -- tasks ----------------------------------------------------------------------------
    async def run(
        self,
        inbound: trio.MemoryReceiveChannel[Message],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the ticker, the inbound reader and the Ready loop until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._ticker)
            nursery.start_soon(self._reader, inbound)
            if self._marks is not None:
                nursery.start_soon(self._marks.run)
            task_status.started()
            await self._ready_loop()

    async def _ticker(self) -> None:
        next_at = trio.current_time()
        while True:
            next_at += self.tick_s
            now = trio.current_time()
            if next_at < now - 5 * self.tick_s:
                next_at = now  # we were paused (SIGSTOP): do not replay a burst of ticks
            await trio.sleep_until(next_at)
            self._pending_ticks += 1
            self._wake.set()

    async def _reader(self, inbound: trio.MemoryReceiveChannel[Message]) -> None:
        async for msg in inbound:
            self._inbox.append(msg)
            self._wake.set()

    async def _ready_loop(self) -> None:
        core = self._core
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            self._feed()
            await follow_readies(core, self._io)
            if core.conflict != self._conflict:
                self._conflict = core.conflict
                logger.error("%s; this node keeps its log (see docs/operations.md, Recovery)",
                             core.conflict)
            if core.repair_events:
                events, core.repair_events = core.repair_events, []
                for event in events:
                    logger.warning("%s", event)
            if core.divergences != self._divergences:
                self._divergences = core.divergences
                diverged = [pid for pid, p in core.status().peers.items() if p.diverged]
                logger.error(
                    "followers %s claim entries past this leader's log: committed entries were "
                    "lost somewhere (a disk fault the nodes could not see); they no longer count",
                    diverged,
                )
            await self._maybe_snapshot()

    def _feed(self) -> None:
        core = self._core
        if self._pending_ticks:
            ticks = min(self._pending_ticks, core.config.election_ticks)
            self._pending_ticks = 0
            for _ in range(ticks):
                core.tick()
        if self._lost_peers:
            lost, self._lost_peers = self._lost_peers, []
            for peer in lost:
                core.peer_unreachable(NodeId(peer))
        if self._inbox:
            msgs, self._inbox = self._inbox, []
            for m in msgs:
                core.step(m)
        if self._calls:
            calls, self._calls = self._calls, []
            for c in calls:
                try:
                    c.result = c.fn(core)
                except Exception as exc:  # handed to the caller
                    c.error = exc
                c.done.set()
        if self._reads.asked:
            self._reads.feed(core)
        if self._proposals:
            batches, self._proposals = self._proposals, []
            for props in batches:
                self._propose_now(props)
        self._members.sync(core)

    def _propose_now(self, props: list[Proposal]) -> None:
        core = self._core
        try:
            first = core.propose_many([p.data for p in props])
        except NotLeader as exc:
            err = ProposalFailed("NOT_LEADER", "not the leader", exc.leader_id)
            for p in props:
                p.fail(err)
            return
        except ProposalDropped:
            err = ProposalFailed("UNAVAILABLE", "leadership transfer in progress", None)
            for p in props:
                p.fail(err)
            return
        self.stats["proposals"] += len(props)
        for n, p in enumerate(props):
            p.index = first + n
            p.term = core.term
            self._waiting[p.index] = p

    # -- the Ready contract's steps (node/raft/_driver.py calls them in order) ---------------
    async def _persist_step(self, rd: Ready) -> bool:
        """Step 1: persist (and keep the durability mark true when there is one)."""
        self.stats["readies"] += 1
        if self._marks is None:
            await self._persist(rd)
        else:
            await self._marks.persist(rd, self._persist)
        return True

    def _apply_step(self, rd: Ready) -> None:
        """Steps 3 and 4: apply (or hold back while the state is being serialised), fail the
        proposals the leader dropped, take in a new soft state."""
        if rd.snapshot is not None:
            self._apply_or_defer(rd.snapshot)
        for e in rd.committed_entries:
            self._apply_or_defer(e)
        self.app.flush(self._applied_index)
        for index in rd.dropped:
            p = self._waiting.pop(index, None)
            if p is not None:
                p.fail(ProposalFailed(
                    "OUTCOME_UNKNOWN", "leader lost office before the command was committed"
                ))
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state)
        self._reads.on_ready(rd, self._applied_index, self.view.leader_id)
        if rd.snapshot_received is not None and self._nursery is not None:
            self._nursery.start_soon(self._prepare_install, rd.snapshot_received)

    def _after_advance(self, rd: Ready) -> None:
        self._feed()

    async def _persist(self, rd: Ready) -> None:
        """Step 1 of the Ready contract: one atomic write, synced when `rd.must_sync`."""
        if rd.must_sync:
            self.stats["synced_writes"] += 1
            started = self._perf_clock()
            if self._sync_inline(rd):
                # A small synced write on a fast disk costs less than the hop to a thread.
                self.storage.persist(rd)
                self.stats["inline_synced_writes"] += 1
            else:
                await self._blocking(self.storage.persist, rd)
            took_s = self._perf_clock() - started
            self._sync_s = 0.9 * self._sync_s + 0.1 * took_s
        elif (rd.entries or rd.hard_state is not None or rd.snapshot is not None
              or rd.snapshot_chunks):
            # A commit index, or a piece of a snapshot being received: no fsync, fast enough
            # inline.
            self.storage.persist(rd)

    def _sync_inline(self, rd: Ready) -> bool:
        if rd.snapshot is not None or rd.snapshot_chunks or self._sync_s > INLINE_SYNC_MAX_S:
            return False
        size = 0
        for e in rd.entries:
            size += len(e.data)
            if size > INLINE_SYNC_MAX_BYTES:
                return False
        return True

    def _apply_or_defer(self, item: Entry | Snapshot) -> None:
        if self._snapshotting:
            self._deferred.append(item)
        elif isinstance(item, Snapshot):
            self._restore(item)
        else:
            self._apply(item)

    async def _prepare_install(self, meta: SnapshotMeta) -> None:
        """Get the install of a snapshot from the leader ready, off the event loop (decode it,
        write its bodies as the next generation), then tell the core: it installs it, or
        fetches it again if it is unfit. One at a time; the core goes on meanwhile."""
        async with self._install_lock:
            data = self.storage.incoming_snapshot(meta)
            outcome: bytes | SnapshotData | None = None
            if data is None:
                logger.warning("snapshot at index %d: not all of it arrived; fetched again",
                               meta.index)
            else:
                try:
                    await self._blocking(self.app.prepare_restore, DataFile(data), meta.index)
                    outcome = data
                except Exception as exc:  # unfit: refused, never installed
                    self.stats["snapshots_refused"] += 1
                    logger.warning("snapshot at index %d from the leader refused: %s; it is "
                                   "fetched again", meta.index, exc)
            await self.call(lambda core: core.snapshot_prepared(meta, outcome))

    def _restore(self, snap: Snapshot) -> None:
        self.app.restore(snap.data, snap.meta.index)
        self.stats["snapshots_installed"] += 1
        self._applied_index = snap.meta.index
        self._fail_waiting_up_to(snap.meta.index)
        logger.info("installed snapshot at index %d", snap.meta.index)

    def _apply(self, e: Entry) -> None:
        reply: Any = None
        p = self._waiting.pop(e.index, None)
        if e.kind is EntryKind.NORMAL:
            reply = self.app.apply(e, p is not None and p.term == e.term)
            self.stats["entries_applied"] += 1
        self._applied_index = e.index
        self._applied_since_snapshot += 1
        self._log_bytes_since_snapshot += len(e.data)
        if p is None:
            return
        if p.term == e.term:
            p.resolve(reply)
        else:
            p.fail(ProposalFailed("UNAVAILABLE", "another leader's entry took this log index"))

    def _fail_waiting_up_to(self, index: int) -> None:
        for i in [i for i in self._waiting if i <= index]:
            self._waiting.pop(i).fail(
                ProposalFailed("OUTCOME_UNKNOWN", "state replaced by a snapshot from the leader")
            )

    def _on_soft_state(self, soft: SoftState) -> None:
        if soft.role is not Role.LEADER and self._waiting:
            err = ProposalFailed("OUTCOME_UNKNOWN", "leader lost office", soft.leader_id)
            waiting, self._waiting = self._waiting, {}
            for p in waiting.values():
                p.fail(err)
        was_leader = self.view.is_leader
        self.view = LoopView(self._core.id, soft.role, soft.term, soft.leader_id, soft.standing)
        logger.info("role %s term %d leader %s", soft.role.value, soft.term, soft.leader_id)
        if soft.standing != self._standing:
            self._standing = soft.standing
            reason = self._core.repair_reason
            logger.log(
                logging.INFO if soft.standing is Standing.VOTER else logging.WARNING,
                "standing %s%s",
                soft.standing.name.lower(),
                f" ({reason})" if reason else "",
            )
        if self.view.is_leader != was_leader:
            self.app.on_leadership(self.view.is_leader)
        self.role_changed.set()
        self.role_changed = trio.Event()

    async def _maybe_snapshot(self) -> None:
        if self._serialized is not None:
            staged, membership = self._serialized
            self._serialized = None
            # Between Readys: no persist is running, so the storage is ours. (A snapshot from
            # the leader may have come meanwhile: the storage then drops this older one.)
            await self._blocking(self.storage.commit_snapshot, staged, membership,
                                 self.log_margin_entries)
            self.stats["snapshots_taken"] += 1
            logger.info("snapshot at index %d (%d bytes)", staged.index, staged.size_bytes)
            return
        if self._snapshot_job or self._nursery is None:
            return
        due = (
            self._applied_since_snapshot >= self.snapshot_entries
            and self._log_bytes_since_snapshot >= self._last_snapshot_bytes
        )
        if not (self._snapshot_requested or due):
            return
        if self._applied_index <= self._core.log.first_index() - 1:
            return  # nothing new since the last snapshot
        self._snapshot_requested = False
        self._snapshotting = True
        self._snapshot_job = True
        index = self._applied_index
        # The membership at the snapshot's index, known now (older ones are pruned as applies
        # go on while the snapshot is written).
        membership = self._core.membership_at(Index(index))
        self._nursery.start_soon(self._serialize, index, membership)

    async def _serialize(self, index: int, membership: Membership) -> None:
        """Write a snapshot of the state at `index` in a worker thread, in two parts: the
        machine's items while applies are held back (the state must not change), then the
        bodies, from a frozen view of the body store, while applies go on. The loop makes it
        the node's snapshot between two Readys (`_maybe_snapshot`)."""
        try:
            await self._write_snapshot(index, membership)
        finally:
            self._snapshot_job = False

    async def _write_snapshot(self, index: int, membership: Membership) -> None:
        staged: StagedSnapshot | None = None
        stage: SnapshotWriter | None = None
        job = self.app.snapshot_job()
        try:
            stage = self.storage.begin_snapshot(Index(index))
            await self._take_machine_part(job, stage)
        except Exception:
            logger.exception("writing a snapshot at index %d failed", index)
            job.close()
            if stage is not None:
                stage.abort()
            stage = None
        finally:
            self._resume_applies()
        if stage is None:
            return
        try:
            if job.forks:
                await self._blocking(job.write_forked, stage)
            await self._blocking(job.write_bodies, stage)
            staged = await self._blocking(stage.finish)
        except Exception:
            logger.exception("writing the bodies of a snapshot at index %d failed", index)
            job.close()
            stage.abort()
            return
        self._serialized = (staged, membership)
        self._applied_since_snapshot = 0
        self._log_bytes_since_snapshot = 0
        self._last_snapshot_bytes = staged.size_bytes
        self._wake.set()

    async def _take_machine_part(self, job: SnapshotJob, out: SnapshotWriter) -> None:
        """Phase 1 of a snapshot job, applies held back: forked, the bodies' checkpoint and
        the fork (the child writes the machine's items, `write_forked` copies them later);
        in place, the machine's items themselves, to `out`."""
        if job.forks:
            await self._blocking(job.freeze)
            job.fork()
        else:
            await self._blocking(job.write_machine, out)

    def _resume_applies(self) -> None:
        """The machine's part of a snapshot job is taken: apply what was held back."""
        self._snapshotting = False
        deferred, self._deferred = self._deferred, []
        for item in deferred:
            self._apply_or_defer(item)
        self.app.flush(self._applied_index)
        self._reads.release(self._applied_index)

    # -- status ---------------------------------------------------------------------------
    async def status(
        self, app_status: Callable[[], dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """The core's status and the loop's counters, as plain data (node_status).

        Args:
            app_status: called in the same step, so that what it reports of the application
                (e.g. a digest of the state) is at `applied_index`; its keys are merged in.
        """

        def status(core: RaftNode) -> dict[str, Any]:
            st = self._status(core)
            if app_status is not None:
                st.update(app_status())
            return st

        return await self.call(status)

    async def membership_status(self) -> tuple[dict[str, Any], Membership]:
        """The loop's status and the membership in effect, read in one step (`members`)."""
        return await self.call(lambda core: (self._status(core), core.log.membership()))

    def _status(self, core: RaftNode) -> dict[str, Any]:
        return loop_status(core, self._applied_index, self.stats)
