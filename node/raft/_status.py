"""What `RaftNode.status()` reports: plain data for operators and the driver."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._types import Index, NodeId, Role, Standing, Term


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """Replication status of one peer, as the leader sees it."""

    match_index: Index
    next_index: Index
    state: str
    recent_active: bool
    repairing: bool = False
    repair_target: Index | None = None
    diverged: bool = False


@dataclass(frozen=True, slots=True)
class Status:
    """What an operator wants to know about a node."""

    id: NodeId
    role: Role
    term: Term
    leader_id: NodeId | None
    vote: NodeId | None
    commit_index: Index
    applied_index: Index
    last_index: Index
    first_index: Index
    voters: tuple[NodeId, ...]
    learners: tuple[NodeId, ...] = ()
    membership_index: Index = Index(0)
    peers: dict[NodeId, PeerStatus] = field(default_factory=dict)
    standing: Standing = Standing.VOTER
    repair_reason: str | None = None
    conflict: str | None = None
    snapshot_index: Index = Index(0)
