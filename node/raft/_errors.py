"""Errors raised by the Raft core and its storage interface."""

from __future__ import annotations

from ._ids import Index, NodeId


class RaftError(Exception):
    """Base of every error the Raft core raises. `code` is stable and may cross the wire."""

    code = "RAFT_ERROR"


class NotLeader(RaftError):
    """`propose` was called on a node that is not the leader.

    Attributes:
        leader_id: the leader this node knows of, or None while it knows none.
    """

    code = "NOT_LEADER"

    def __init__(self, leader_id: NodeId | None) -> None:
        super().__init__(f"not the leader; leader is {leader_id if leader_id else 'unknown'}")
        self.leader_id = leader_id


class ProposalDropped(RaftError):
    """The leader refuses proposals for now (a leadership transfer is under way)."""

    code = "PROPOSAL_DROPPED"


class CompactedError(RaftError):
    """A storage read asked for an index that a snapshot has compacted away."""

    code = "COMPACTED"

    def __init__(self, index: Index) -> None:
        super().__init__(f"log index {index} is compacted")
        self.index = index


class UnavailableError(RaftError):
    """A storage read asked for an index past the end of the log."""

    code = "UNAVAILABLE"

    def __init__(self, index: Index) -> None:
        super().__init__(f"log index {index} is not in the log")
        self.index = index
