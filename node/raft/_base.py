"""`NodeState`: what every part of `RaftNode` shares, declared once for the type checker.

`RaftNode` (node/raft/_node.py) is assembled from parts with one job each: the leader's
replication (_leader.py), the follower's side of replication (_follower.py), the storage-fault
rules (_repair.py), and in _node.py itself the public surface, roles, term rules and elections.
Each part is a class over `NodeState`, which declares the attributes they share (created by
`RaftNode.__init__`) and holds the few helpers every part uses. The parts are mixins only in
the sense of files: there is one object, and one owner (the driver) calls it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._config import Config
from ._log import RaftLog
from ._progress import Progress
from ._quorum import has_quorum
from ._ready import ReadState
from ._types import (
    AppendEntries,
    Heartbeat,
    Index,
    InstallSnapshot,
    JoinQueryResponse,
    Message,
    NodeId,
    Role,
    SnapshotChunk,
    SnapshotMeta,
    Standing,
    Term,
    TimeoutNow,
)

if TYPE_CHECKING:
    from ._read_index import PendingRead


class NodeState:
    """Attributes shared by the parts of `RaftNode` (see `RaftNode.__init__` for each)."""

    config: Config
    id: NodeId
    rng: random.Random
    progress_class: type[Progress]
    log: RaftLog
    term: Term
    vote: NodeId | None
    standing: Standing
    repair_reason: str | None
    role: Role
    leader_id: NodeId | None
    progress: dict[NodeId, Progress]
    election_elapsed: int
    heartbeat_elapsed: int
    randomized_election_ticks: int
    transfer_target: NodeId | None
    msgs: list[Message]
    early_msgs: list[Message]
    boot_id: int
    divergences: int
    conflict: str | None
    repair_events: list[str]
    _append_pending: bool
    _incoming_meta: SnapshotMeta | None
    _incoming_offset: int
    _installing: SnapshotMeta | None
    snapshot_chunks: list[SnapshotChunk]
    snapshot_received: SnapshotMeta | None
    _boot_ticks: int
    _leader_match: Index
    _heartbeat_round: int
    _join_nonce: int
    _join_answers: dict[NodeId, JoinQueryResponse]
    pending_reads: list[PendingRead]
    read_states: list[ReadState]
    dropped_reads: list[int]
    _term_start_index: Index

    @property
    def voters(self) -> tuple[NodeId, ...]:
        """The voters of the membership in effect (the latest in the log: thesis 4.1)."""
        return self.log.membership().voters

    @property
    def learners(self) -> tuple[NodeId, ...]:
        return self.log.membership().learners

    def _active(self, pid: NodeId) -> bool:
        """Leader: `pid` answered within the last election timeout and counts (check-quorum)."""
        pr = self.progress.get(pid)
        return pid == self.id or (pr is not None and pr.recent_active and pr.counts)

    def _has_quorum(self, agrees: Callable[[NodeId], bool]) -> bool:
        """A majority of the voters satisfy `agrees` (node/raft/_quorum.py)."""
        return has_quorum(self.voters, agrees)

    def _reset_randomized_timeout(self) -> None:
        e = self.config.election_ticks
        self.randomized_election_ticks = e + self.rng.randrange(e)

    def _send(self, msg: Message) -> None:
        if isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot | TimeoutNow):
            # Sent only by a leader, whose term and vote are already durable; the entries they
            # carry may still be in flight to its own disk (thesis 10.2.1), since the leader
            # does not count itself for commitment until they are persisted.
            self.early_msgs.append(msg)
        else:
            self.msgs.append(msg)

    def _become_follower(self, term: Term, leader_id: NodeId | None) -> None:
        raise NotImplementedError  # RaftNode's
