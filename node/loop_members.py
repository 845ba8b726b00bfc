"""The Raft loop's side of membership changes: the membership it publishes, the nodes the
core still talks to, and what a member's row says.

The core keeps the membership in its log (node/raft/_log.py: the latest CONFIG entry, committed
or not, is in effect; thesis 4.1). The loop (node/raft_loop.py) publishes it as
`RaftLoop.membership` and tells the node whenever it changes, or whenever the set of nodes the
core still exchanges messages with changes (`linked_ids`), so that the transport dials new
members and lets removed ones go. A node removed by a change that is not committed yet still
receives the log (so that it learns of its removal), so it stays linked until the removal
commits. Owned by the `RaftLoop`: only the loop calls `sync`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from node.loop_api import TransferFailed
from node.raft import Membership, NodeId, RaftNode

__all__ = ["MembershipTracker", "loop_status", "member_rows", "start_transfer"]

logger = logging.getLogger("raftq.raft")


def _ignore(membership: Membership) -> None:
    pass


class MembershipTracker:
    """The membership in effect, as the loop last saw it in the core's log.

    Args:
        core: the Raft core (read at construction and by `sync`, between Readys).
        on_membership: called with the membership in effect whenever it or `linked_ids`
            changed (from the loop's task: it must not block).

    Attributes:
        membership: the membership in effect (the latest in the log, committed or not).
        linked_ids: the nodes the core still exchanges messages with: the members in effect,
            while a change is not committed the members before it, and on a leader every node
            it keeps a progress for (a removed node during its farewell heartbeats); this node
            included when it is one.
        changed: set (and replaced by a new event) when `membership` changes.
    """

    def __init__(
        self, core: RaftNode, on_membership: Callable[[Membership], None] | None = None
    ) -> None:
        self._on_membership = on_membership or _ignore
        self.membership = core.log.membership()
        self.linked_ids: frozenset[int] = frozenset()
        self.changed = trio.Event()
        self._settled = False
        self._progress_ids: frozenset[int] = frozenset()
        self._linked(core)

    def _linked(self, core: RaftNode) -> bool:
        """Recompute `linked_ids`; True when it changed."""
        log = core.log
        ids = set(self.membership.members())
        self._settled = log.committed >= log.membership_index()
        if not self._settled:
            ids.update(log.membership_at(log.committed).members())
        if core.is_leader:
            # A removed node still gets its farewell heartbeats (node/raft/_conf_change.py),
            # which tell it that its removal is committed.
            ids.update(core.progress)
        self._progress_ids = frozenset(core.progress)
        linked = frozenset(ids)
        if linked == self.linked_ids:
            return False
        self.linked_ids = linked
        return True

    def sync(self, core: RaftNode) -> None:
        """Take in the core's membership (called after each input batch and each Ready:
        a CONFIG entry appended, truncated, restored with a snapshot, or committed)."""
        membership = core.log.membership()
        changed = membership is not self.membership and membership != self.membership
        if not changed and self._settled and self._progress_ids == frozenset(core.progress):
            return
        if changed:
            before = self.membership
            self.membership = membership
            self.changed.set()
            self.changed = trio.Event()
            logger.info(
                "membership (index %d): voters %s, learners %s%s",
                core.log.membership_index(),
                list(membership.voters),
                list(membership.learners),
                _what_changed(before, membership),
            )
        elif membership is not self.membership:
            self.membership = membership  # equal, from another entry
        if self._linked(core) or changed:
            self._on_membership(self.membership)


def _what_changed(before: Membership, after: Membership) -> str:
    notes = []
    for nid in after.members():
        if nid not in before.members():
            notes.append(f"node {nid} added")
        elif after.is_voter(nid) and before.is_learner(nid):
            notes.append(f"node {nid} promoted")
    for nid in before.members():
        if nid not in after.members():
            notes.append(f"node {nid} removed")
    return f" ({', '.join(notes)})" if notes else ""


def member_rows(
    status: dict[str, Any],
    membership: Membership,
    node_id: int,
    address: Callable[[int], tuple[str, str] | None],
) -> list[dict[str, Any]]:
    """One row per member for the `members` operation (docs/protocol.md), sorted by id.

    Args:
        status: the leader's `RaftLoop` status (commit index, peers' progress).
        membership: the membership in effect, read in the same step as `status`.
        node_id: this node (the leader).
        address: (raft, client) "host:port" of a member, or None when unknown.
    """
    commit = int(status["commit_index"])
    peers: dict[str, dict[str, Any]] = status.get("peers", {})
    rows = []
    for nid in membership.members():
        addr = address(nid)
        pr = peers.get(str(nid))
        match = None if pr is None else pr["match_index"]
        is_leader = nid == node_id
        rows.append({
            "id": nid,
            "role": "voter" if membership.is_voter(nid) else "learner",
            "raft_addr": addr[0] if addr else None,
            "client_addr": addr[1] if addr else None,
            "match_index": commit if is_leader and match is None else match,
            "lag": 0 if is_leader else (None if match is None else max(0, commit - match)),
            "state": None if pr is None else pr["state"],
            "recent_active": True if is_leader else (pr is not None and pr["recent_active"]),
            "repairing": pr is not None and pr["repairing"],
            "leader": is_leader,
        })
    return rows


def start_transfer(core: RaftNode, target: int | None) -> int | None:
    """Start a leadership transfer to `target`, or to the most caught-up voter that answered
    within the last election timeout (thesis 3.10); run by the loop between Readys
    (`RaftLoop.transfer_leadership` documents the outcome). Learners are never chosen: they
    cannot lead."""
    if not core.is_leader:
        return None
    chosen = target
    if chosen is None:
        voters = core.voters
        peers = [
            (pr.match, pid)
            for pid, pr in core.progress.items()
            if pid != core.id and pid in voters and pr.counts and pr.recent_active
        ]
        if not peers:
            return None
        chosen = max(peers)[1]
    else:
        pr = core.progress.get(NodeId(chosen))
        if pr is not None and chosen != core.id and not pr.recent_active:
            raise TransferFailed(
                f"node {chosen} has not answered this leader within an election "
                "timeout (down or cut off)"
            )
    core.transfer_leadership(NodeId(chosen))
    return chosen


def loop_status(core: RaftNode, applied_index: int, stats: dict[str, int]) -> dict[str, Any]:
    """The core's status and the loop's counters as plain data (`node_status`'s core part).

    Args:
        core: the Raft core (read between Readys).
        applied_index: the last index the application applied.
        stats: the loop's counters.
    """
    s = core.status()
    learners = set(s.learners)
    return {
        "node_id": s.id,
        "role": s.role.value,
        "term": s.term,
        "leader_id": s.leader_id,
        "commit_index": s.commit_index,
        "applied_index": applied_index,
        "last_index": s.last_index,
        "first_index": s.first_index,
        "snapshot_index": s.snapshot_index,
        "standing": s.standing.name.lower(),
        "repair_reason": s.repair_reason,
        "conflict": s.conflict,
        "voters": list(s.voters),
        "learners": list(s.learners),
        "membership_index": s.membership_index,
        "peers": {
            str(pid): {
                "match_index": p.match_index,
                "next_index": p.next_index,
                "state": p.state,
                "recent_active": p.recent_active,
                "repairing": p.repairing,
                "repair_target": p.repair_target,
                "diverged": p.diverged,
                "learner": pid in learners,
            }
            for pid, p in sorted(s.peers.items())
        },
        "raft_stats": dict(stats),
    }
