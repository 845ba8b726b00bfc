"""Quorum arithmetic: the one place that counts majorities.

Every decision the core takes by majority goes through here: elections (paper Figure 2,
"Candidates"), commitment (paper 5.3 and Figure 8), check-quorum (thesis 6.2), ReadIndex and
repair confirmations (thesis 6.4). Only voters count: learners receive the log but never make
up a majority (thesis 4.2.1, "catching up new servers"; etcd-io/raft's `quorum` package).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping

from ._types import Index, NodeId


class VoteResult(enum.Enum):
    """Outcome of an election so far."""

    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(voters: int) -> int:
    """Smallest number of voters that is more than half of `voters` (1 for 0 or 1 voters)."""
    return voters // 2 + 1


def vote_result(voters: tuple[NodeId, ...], votes: Mapping[NodeId, bool]) -> VoteResult:
    """Whether the `votes` received so far (granted or refused, by node) decide an election.

    Votes from nodes that are not among `voters` are ignored (a learner's, or a removed node's).
    """
    need = majority(len(voters))
    granted = refused = 0
    for v in voters:
        answer = votes.get(v)
        if answer is True:
            granted += 1
        elif answer is False:
            refused += 1
    if granted >= need:
        return VoteResult.WON
    if refused > len(voters) - need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: tuple[NodeId, ...], agrees: Callable[[NodeId], bool]) -> bool:
    """True when a majority of `voters` satisfy `agrees` (an empty voter set has no quorum)."""
    if not voters:
        return False
    return sum(1 for v in voters if agrees(v)) >= majority(len(voters))


def committed_index(voters: tuple[NodeId, ...], match: Callable[[NodeId], Index | None]) -> Index:
    """The highest log index that a majority of `voters` hold.

    `match(v)` is what voter `v` is known to hold, or None when it does not count (under
    repair, diverged, unknown); those count as holding nothing. Returns 0 when `voters` is empty.
    """
    if not voters:
        return Index(0)
    held = sorted((match(v) or Index(0) for v in voters), reverse=True)
    return held[majority(len(voters)) - 1]


def overlapping(a: Iterable[NodeId], b: Iterable[NodeId]) -> bool:
    """True when every majority of voter set `a` shares a node with every majority of `b`.

    That is the safety condition of a configuration change (thesis 4.1): the smallest
    majority of `a` plus the smallest majority of `b` must exceed the nodes they span. It holds
    whenever the two differ by adding or removing one voter.
    """
    sa, sb = set(a), set(b)
    if not sa or not sb:
        return False
    shared = len(sa & sb)
    # Worst case: each majority takes as many of its nodes as it can outside the shared ones;
    # the two are disjoint when what is left of both fits in the shared nodes.
    inside_a = max(0, majority(len(sa)) - (len(sa) - shared))
    inside_b = max(0, majority(len(sb)) - (len(sb) - shared))
    return inside_a + inside_b > shared
