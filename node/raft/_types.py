"""Plain data of the Raft core: ids, log entries, hard state, snapshots and messages.

Everything here is a frozen, slotted dataclass of plain values (ints, bytes, tuples), so that the
outer ring can encode it with cbor2 and the simulator can copy it freely. Names follow the Raft
paper (Ongaro & Ousterhout, 2014, Figure 2) and Ongaro's thesis (2014) for pre-vote (section 9.6),
leadership transfer (3.10) and snapshots (chapter 5).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from ._ids import Index as Index
from ._ids import NodeId as NodeId
from ._ids import Term as Term
from ._membership import Membership


class EntryKind(enum.IntEnum):
    """What a log entry carries."""

    NORMAL = 0
    """Application data, handed to the state machine."""
    NOOP = 1
    """The empty entry a new leader appends at the start of its term (paper section 5.4.2)."""
    CONFIG = 2
    """A new cluster membership (`Membership.encode`), in effect from the moment it is in the
    log (thesis 4.1); node/raft/_membership.py."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry.

    Attributes:
        term: term of the leader that created the entry.
        index: position in the log, >= 1.
        kind: NORMAL (application data) or NOOP.
        data: application bytes; empty for NOOP.
    """

    term: Term
    index: Index
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


class Standing(enum.IntEnum):
    """Whether a node may vote and count towards a quorum (docs/architecture.md, "Storage
    faults"; after protocol-aware recovery, Alagappan et al., FAST 2018).

    A node that cannot prove its durable state intact must not vote and must not count towards
    a commit quorum until a leader has repaired it past what it had.
    """

    VOTER = 0
    """Normal: votes, campaigns and counts towards commit and check-quorum."""
    JOINING = 1
    """Started with an empty database: asks every other voter whether the cluster is brand new
    (all answer "empty": it becomes a VOTER) or exists (it lost its disk: REPAIRING)."""
    REPAIRING = 2
    """Lost durable state: follows a leader, grants no vote, never campaigns, and its
    acknowledgements do not count, until the leader declares it repaired."""


REPAIR_NONE = 0
"""`Heartbeat.repair`: nothing to say."""
REPAIR_ENTER = 1
"""`Heartbeat.repair`: the leader saw this follower's log fall below the match index it had
acknowledged (it lost data): become REPAIRING."""
REPAIR_DONE = 2
"""`Heartbeat.repair`: this REPAIRING follower now holds everything it could have acknowledged
before its loss, and the leader confirmed its term with a quorum since: vote again."""


@dataclass(frozen=True, slots=True)
class HardState:
    """The state a node must persist before it acts on it (paper Figure 2, "persistent state").

    Attributes:
        term: latest term the node has seen.
        vote: node voted for in `term`, or None.
        commit: the commit index known to the node. Persisting it is not required for safety;
            it lets a restarted node apply committed entries without waiting for a leader.
        standing: VOTER, JOINING or REPAIRING (see `Standing`); persisted so that a restart
            does not turn a node under repair back into a voter.
    """

    term: Term = Term(0)
    vote: NodeId | None = None
    commit: Index = Index(0)
    standing: Standing = Standing.VOTER


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Where a snapshot sits in the log.

    Attributes:
        index: last log index the snapshot covers (the last applied entry).
        term: term of the entry at `index`.
        membership: the cluster membership at `index`.
    """

    index: Index = Index(0)
    term: Term = Term(0)
    membership: Membership = field(default_factory=Membership)

    @property
    def voters(self) -> tuple[NodeId, ...]:
        return self.membership.voters


class SnapshotData(Protocol):
    """Snapshot bytes kept elsewhere (on disk), read a piece at a time.

    The core only measures them and reads pieces to send (`snapshot_piece`); a storage may
    hand out this instead of `bytes` so that a large snapshot is never in memory whole.
    """

    def __len__(self) -> int: ...

    def read_at(self, offset: int, size: int) -> bytes:
        """The bytes [offset, offset + size) (fewer at the end).

        Raises:
            Exception: what the storage raises when it cannot read them.
        """
        ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state machine snapshot at `meta.index`, as opaque application bytes (in memory, or
    a `SnapshotData` that reads them from storage)."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes | SnapshotData = b""


def snapshot_piece(data: bytes | SnapshotData, offset: int, size: int) -> bytes:
    """The bytes [offset, offset + size) of a snapshot's data."""
    if isinstance(data, bytes):
        return data[offset : offset + size]
    return data.read_at(offset, size)


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """A piece of a snapshot being received, for the driver to write where the snapshot is
    assembled (`Ready.snapshot_chunks`): `offset_bytes` 0 starts the snapshot afresh."""

    meta: SnapshotMeta
    offset_bytes: int
    data: bytes


class Role(enum.Enum):
    """The role of a node (paper Figure 4, plus the pre-candidate of thesis section 9.6)."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


# ---------------------------------------------------------------------------------------------
# Messages. Every message has `term`, `from_id` and `to_id`.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestVote:
    """RequestVote (paper Figure 2), or a pre-vote (thesis 9.6) when `pre_vote` is set.

    A pre-vote carries the term the sender *would* use (its term + 1) without the sender having
    moved to it. `transfer` marks an election started by TimeoutNow (thesis 3.10): voters then
    ignore their leader lease.
    """

    term: Term
    from_id: NodeId
    to_id: NodeId
    last_log_index: Index
    last_log_term: Term
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    """Answer to RequestVote; `term` is the request's term when granted, the voter's otherwise."""

    term: Term
    from_id: NodeId
    to_id: NodeId
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """AppendEntries (paper Figure 2), carrying zero or more entries after `prev_log_index`."""

    term: Term
    from_id: NodeId
    to_id: NodeId
    prev_log_index: Index
    prev_log_term: Term
    entries: tuple[Entry, ...]
    leader_commit: Index


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """Answer to AppendEntries.

    On success `match_index` is the last index known to match the leader's log. On rejection
    `reject_index` is the `prev_log_index` that failed and (`hint_index`, `hint_term`) let the
    leader skip back a whole term at once (thesis 5.4.2 / etcd-io/raft's findConflictByTerm):
    the follower's largest index at or below the probe whose term is <= `prev_log_term`.
    `repairing` is set while the follower is not a VOTER: its match does not count. `boot`
    identifies the follower's process incarnation: a rejection at or below the match index
    from another incarnation than the one that acknowledged it means the follower lost data;
    from the same one it is a stale (reordered) answer. `diverged`: the leader's term at
    `prev_log_index` differs from the follower's *committed* entry there (impossible unless
    committed entries were lost somewhere: see docs/architecture.md, "What is not covered").
    """

    term: Term
    from_id: NodeId
    to_id: NodeId
    success: bool
    match_index: Index = Index(0)
    reject_index: Index = Index(0)
    hint_index: Index = Index(0)
    hint_term: Term = Term(0)
    repairing: bool = False
    boot: int = 0
    diverged: bool = False


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader heartbeat. `commit` is min(leader commit, the follower's match index).

    Kept apart from AppendEntries (as etcd-io/raft does) so that a heartbeat never has to probe
    the log. A follower applies the commit it carries only up to the last index it has matched
    with this leader's log in this term (the leader's match index may be stale if the follower
    lost data).

    Attributes:
        round: the leader's heartbeat round, echoed in the response, so that the leader knows
            which followers confirmed its term after a given moment.
        repair: REPAIR_NONE, REPAIR_ENTER or REPAIR_DONE (see those constants).
    """

    term: Term
    from_id: NodeId
    to_id: NodeId
    commit: Index
    round: int = 0
    repair: int = REPAIR_NONE


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    """Answer to Heartbeat; tells the leader the follower is alive (check-quorum).

    Attributes:
        round: the heartbeat's round.
        repairing: the follower is not a VOTER (REPAIRING or JOINING).
        lagging: the heartbeat's commit is past what the follower has matched with this leader;
            the leader answers with an AppendEntries so that the follower can catch up.
        boot: the follower's incarnation (see AppendEntriesResponse).
    """

    term: Term
    from_id: NodeId
    to_id: NodeId
    round: int = 0
    repairing: bool = False
    lagging: bool = False
    boot: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """One chunk of a snapshot (paper section 7; thesis chapter 5).

    Attributes:
        meta: index, term and configuration of the whole snapshot.
        offset_bytes: where `chunk` starts in the snapshot data.
        chunk: at most `Config.max_snapshot_chunk_bytes` bytes of snapshot data.
        done: True on the last chunk.
        size_bytes: size of the whole snapshot data.
        crc32: CRC-32 (zlib) of `chunk`: a chunk damaged on the way is refused.
    """

    term: Term
    from_id: NodeId
    to_id: NodeId
    meta: SnapshotMeta
    offset_bytes: int
    chunk: bytes
    done: bool
    size_bytes: int
    crc32: int


@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    """Answer to an InstallSnapshot chunk.

    `next_offset_bytes` is the offset the follower expects next (0 to restart); when `done`, the
    follower has the whole snapshot up to `snapshot_index` and its log matches up to there.
    """

    term: Term
    from_id: NodeId
    to_id: NodeId
    snapshot_index: Index
    next_offset_bytes: int
    done: bool
    repairing: bool = False
    boot: int = 0


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer (thesis 3.10): the receiver starts an election at once."""

    term: Term
    from_id: NodeId
    to_id: NodeId


@dataclass(frozen=True, slots=True)
class JoinQuery:
    """A JOINING node (empty database) asks a peer whether it holds any Raft state.

    Outside the term rules: it neither raises nor reveals a term. `nonce` is echoed, so that
    answers to an earlier incarnation's question are ignored.
    """

    term: Term
    from_id: NodeId
    to_id: NodeId
    nonce: int


@dataclass(frozen=True, slots=True)
class JoinQueryResponse:
    """Answer to JoinQuery: `empty` when the peer's log is empty and it is not repairing.

    `term` is the peer's current term (a brand-new cluster may have had failed elections).
    """

    term: Term
    from_id: NodeId
    to_id: NodeId
    nonce: int
    empty: bool


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
    | JoinQuery
    | JoinQueryResponse
)
"""Every message the core sends or accepts."""

MESSAGE_TYPES: tuple[type, ...] = (
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    TimeoutNow,
    JoinQuery,
    JoinQueryResponse,
)
"""The message classes, in a fixed order (their position is their wire tag)."""
