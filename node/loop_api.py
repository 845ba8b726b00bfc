"""What the Raft loop's users see: the application it drives, its published view, proposals
and their failures, and the storage, network and mark interfaces it writes to.

Split from node/raft_loop.py (the loop itself): import these names from here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

import trio

from node.raft import (
    DurabilityMark,
    Entry,
    Index,
    Membership,
    Message,
    Ready,
    Role,
    SnapshotData,
    SnapshotMeta,
    Standing,
)

__all__ = [
    "Application",
    "BlockingRunner",
    "LoopView",
    "MarkStore",
    "Persister",
    "Proposal",
    "ProposalFailed",
    "ReadFailed",
    "Sender",
    "SnapshotJob",
    "SnapshotWriter",
    "StagedSnapshot",
    "TransferFailed",
]


@dataclass(frozen=True, slots=True)
class StagedSnapshot:
    """A snapshot's data, written to storage under `index`, not yet the node's snapshot."""

    index: Index
    size_bytes: int
    chunk_count: int


class SnapshotWriter(Protocol):
    """Where a snapshot's data is written, piece by piece (node/snapshot_store.py)."""

    def write(self, data: bytes) -> None: ...

    def finish(self) -> StagedSnapshot: ...

    def abort(self) -> None: ...


class SnapshotJob(Protocol):
    """Writes one snapshot of the application (node/app.py's SnapshotJob). In place:
    `write_machine` while the state must not change. Forked (`forks`): `freeze` and `fork`
    while the state must not change, then `write_forked` while applies go on. Then
    `write_bodies` while applies go on."""

    @property
    def forks(self) -> bool: ...

    def write_machine(self, out: SnapshotWriter) -> None: ...

    def freeze(self) -> None: ...

    def fork(self) -> None: ...

    def write_forked(self, out: SnapshotWriter) -> None: ...

    def write_bodies(self, out: SnapshotWriter) -> None: ...

    def close(self) -> None: ...


class Application(Protocol):
    """What the Raft loop drives: the replicated state machine and its side effects."""

    def apply(self, entry: Entry, reply_wanted: bool) -> Any:
        """Apply one committed NORMAL entry; returns the reply for its proposer (complete
        only when `reply_wanted`: nobody waits for the reply otherwise)."""
        ...

    def flush(self, applied_index: int) -> None:
        """The end of an apply step: make what the applies since the last call wrote one
        atomic write, with `applied_index`."""
        ...

    def prepare_restore(self, data: BinaryIO, index: int) -> None:
        """Decode the snapshot at `index` received from the leader (`data` reads it) and get
        its install ready; runs in a worker thread while the loop goes on. Raises what makes
        the snapshot unfit (it is then fetched again)."""
        ...

    def restore(self, data: bytes | SnapshotData, index: int) -> None:
        """Replace the whole state with a snapshot's (the snapshot at `index`; the one
        `prepare_restore` got ready, if it is at `index`)."""
        ...

    def snapshot_job(self) -> SnapshotJob:
        """A job writing a snapshot of the state at the last applied index."""
        ...

    def on_leadership(self, leading: bool) -> None:
        """This node began (True) or stopped (False) leading; `RaftLoop.view` already says so."""
        ...


BlockingRunner = Callable[..., Awaitable[Any]]
"""How blocking storage work runs: `await runner(fn, *args)` returns `fn(*args)`. In production
`trio.to_thread.run_sync` (a worker thread, so the network keeps flowing); the whole-node
simulator runs it at once without a thread (`SimNode._worker`, tests/sim/node_sim.py), so that
no thread makes a run nondeterministic."""


@dataclass(frozen=True, slots=True)
class LoopView:
    """What the loop publishes about leadership, replaced on every soft-state change.

    Attributes:
        node_id: this node.
        role: its role in `term`.
        term: its current term.
        leader_id: the leader it knows of in `term`, or None.
        standing: VOTER, or JOINING / REPAIRING while it may not vote (node/raft/_repair.py).
    """

    node_id: int
    role: Role
    term: int
    leader_id: int | None
    standing: Standing

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER


class TransferFailed(Exception):
    """A leadership transfer could not happen (code `UNAVAILABLE`: retryable)."""

    code = "UNAVAILABLE"


class ProposalFailed(Exception):
    """A proposal did not (certainly or maybe) take effect.

    Attributes:
        code: `NOT_LEADER` (not executed; `leader_id` is the hint), `UNAVAILABLE` (not executed:
            the entry was replaced by another leader's), or `OUTCOME_UNKNOWN` (the leader lost
            office before the entry was known to be committed; it may still commit).
    """

    def __init__(self, code: str, message: str, leader_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.leader_id = leader_id


class ReadFailed(Exception):
    """A linearizable read could not be answered here (nothing was read).

    Attributes:
        code: `NOT_LEADER` (this node does not lead, or left office before it could confirm
            that it still led; `leader_id` is the leader it knows of, or None) or `UNAVAILABLE`
            (leadership was not confirmed within the bound: a quorum did not answer).
        leader_id: the leader this node knows of, or None.
        left_office: this node led when the read was asked and left office before it could
            confirm (else it did not lead at all).
    """

    def __init__(
        self, code: str, message: str, leader_id: int | None = None, left_office: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.leader_id = leader_id
        self.left_office = left_office


@dataclass(eq=False)
class Proposal:
    """One entry proposed through the loop; `done` is set once `result` or `error` is known."""

    data: bytes
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: ProposalFailed | None = None
    index: int = 0
    term: int = 0

    def resolve(self, result: Any) -> None:
        if not self.done.is_set():  # it may have timed out meanwhile
            self.result = result
            self.done.set()

    def fail(self, error: ProposalFailed) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class Persister(Protocol):
    """The storage writes the loop needs (RocksStorage, or a test double)."""

    def persist(self, ready: Ready) -> None: ...

    def begin_snapshot(self, index: Index) -> SnapshotWriter: ...

    def commit_snapshot(
        self, staged: StagedSnapshot, membership: Membership, keep_entries: int = 0
    ) -> None: ...

    def incoming_snapshot(self, meta: SnapshotMeta) -> bytes | SnapshotData | None:
        """The data of the snapshot from the leader assembled so far (`Ready.snapshot_chunks`)
        when it is `meta`'s, else None."""
        ...


class Sender(Protocol):
    def send(self, msg: Message) -> None: ...


class MarkStore(Protocol):
    """Where the durability mark is written (node/marker.py's MarkerFile, or a test double)."""

    def store(self, mark: DurabilityMark) -> None: ...
