"""Membership changes in `RaftNode`: when a leader may propose one, and what follows.

Single-server changes (Ongaro's thesis, 4.1 and 4.2; the membership in effect is the latest in
the log, committed or not, kept by `RaftLog`). A leader proposes a change only when:

1. it has committed an entry of its own term (its no-op). Without this rule a change could be
   lost while a conflicting one from an older term commits (the bug Ongaro reported on raft-dev
   in July 2015, "bug in single-server membership changes"): an older leader's uncommitted
   change C1 and a newer leader's C2 could each be one server away from the original and two
   from each other, so their majorities need not overlap;
2. no earlier change is uncommitted (one change in flight: each membership then differs from
   the one before by at most one voter, so every majority of one overlaps every majority of
   the next);
3. the change leaves a majority of the new voters active (otherwise it could never commit and
   would block every later change), never removes the last voter, and promotes only a learner
   that has caught up (thesis 4.2.1) and is not under repair;
4. it does not remove the leader itself: the driver hands leadership over first (thesis 3.10),
   and the new leader removes it. (Thesis 4.2.2 lets a removed leader step down once the
   change commits; handing over first keeps the leader always a voter of its membership.)

A learner never campaigns; a removed node stops campaigning once it knows its removal is
committed (`_in_electorate`).
"""

from __future__ import annotations

from ._errors import NotLeader, ProposalDropped
from ._membership import ChangeKind, ConfChange, ConfChangeError, Membership
from ._progress import ProgressState
from ._quorum import has_quorum
from ._read_index import ReadIndexRules
from ._types import Entry, EntryKind, Index, NodeId, Role

FAREWELL_HEARTBEATS = 3
"""Heartbeats a removed node still gets once its removal is committed (see `_sync_progress`)."""


class MembershipRules(ReadIndexRules):
    """The leader's side of membership changes; see the module docstring."""

    def propose_conf_change(self, change: ConfChange) -> Index:
        """Append a CONFIG entry with the membership after `change`; in effect at once.

        Returns:
            The entry's log index; the change is done when that index is committed (applied in
            this term), or its outcome is unknown when the index appears in `Ready.dropped`.

        Raises:
            NotLeader: this node is not the leader.
            ProposalDropped: a leadership transfer is under way.
            ConfChangeError: the change is refused now (see the codes in `ConfChangeError`).
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self.transfer_target is not None:
            raise ProposalDropped("leadership transfer in progress")
        log = self.log
        self._check_no_change_in_flight()
        new = log.membership().apply(change)
        nid = change.node_id
        if change.kind is ChangeKind.REMOVE and nid == self.id:
            raise ConfChangeError(
                "LEADER_REMOVAL", f"node {nid} leads: it hands leadership over before removal"
            )
        if change.kind is ChangeKind.PROMOTE:
            self._check_caught_up(nid)
        if not has_quorum(new.voters, self._active):
            raise ConfChangeError(
                "NO_QUORUM",
                f"after this change the voters {list(new.voters)} would have no active "
                "majority (too many of them have not answered within an election timeout)",
            )
        index = Index(log.last_index() + 1)
        self._append_entries_as_leader([Entry(self.term, index, EntryKind.CONFIG, new.encode())])
        self._sync_progress(index)
        return index

    def _check_no_change_in_flight(self) -> None:
        """Rules 1 and 2 of the module docstring.

        Raises:
            ConfChangeError: CHANGE_IN_PROGRESS.
        """
        log = self.log
        if not self._committed_in_term():
            raise ConfChangeError(
                "CHANGE_IN_PROGRESS",
                "this leader has not yet committed an entry of its term; retry shortly",
            )
        if log.membership_index() > log.committed:
            raise ConfChangeError(
                "CHANGE_IN_PROGRESS",
                f"the membership change at index {log.membership_index()} is not committed "
                "yet; one change at a time",
            )

    def membership_at(self, index: Index) -> Membership:
        """The membership in effect at log index `index` (at or after the applied index):
        what a snapshot taken at `index` records."""
        return self.log.membership_at(index)

    def _check_caught_up(self, nid: NodeId) -> None:
        """Raise LEARNER_BEHIND unless learner `nid` follows the log closely (thesis 4.2.1)."""
        pr = self.progress.get(nid)
        lag_limit = self.config.max_promote_lag_entries
        if pr is None or not pr.recent_active:
            raise ConfChangeError(
                "LEARNER_BEHIND", f"learner {nid} has not answered within an election timeout"
            )
        if not pr.counts:
            raise ConfChangeError(
                "LEARNER_BEHIND", f"learner {nid} is still being repaired (or diverged)"
            )
        lag = self.log.committed - pr.match
        if pr.state is not ProgressState.REPLICATE or lag > lag_limit:
            raise ConfChangeError(
                "LEARNER_BEHIND",
                f"learner {nid} is {lag} entries behind the commit index (at most "
                f"{lag_limit} to be promoted); retry once it caught up",
            )

    def _sync_progress(self, next_index: Index) -> None:
        """Leader: keep one progress per member of the membership in effect, and per node
        removed by a change not yet committed (it still receives the log, so that it learns
        of its removal); once the removal is committed, the node gets `FAREWELL_HEARTBEATS`
        more heartbeats (they carry the commit index: it learns its removal is committed and
        stops campaigning), then nothing. A new member's probe starts at `next_index`."""
        log = self.log
        keep = {self.id, *log.membership().members(), *log.membership_at(log.committed).members()}
        for pid, pr in self.progress.items():
            if pid not in keep and pr.farewell_heartbeats is None:
                pr.farewell_heartbeats = FAREWELL_HEARTBEATS
        for pid in sorted(keep - set(self.progress)):
            self.progress[pid] = self.progress_class(next_index, self.config.max_inflight_appends)
        if self.transfer_target is not None and self.transfer_target not in self.voters:
            self.transfer_target = None

    def _say_farewells(self) -> None:
        """Leader, after a heartbeat round: forget removed nodes that had their farewells."""
        for pid in [p for p, pr in self.progress.items() if pr.farewell_heartbeats is not None]:
            pr = self.progress[pid]
            pr.farewell_heartbeats = (pr.farewell_heartbeats or 0) - 1
            if pr.farewell_heartbeats <= 0:
                del self.progress[pid]

    def _in_electorate(self) -> bool:
        """Whether membership lets this node campaign: it is a voter of the membership in
        effect; or it was a voter of the committed one and its removal is not known to be
        committed yet (otherwise a node holding an uncommitted entry that removes it, with a
        log more up to date than the others', would let no one win: it neither campaigns nor
        votes for a node that lacks the entry). As a leader it then commits that entry
        without counting itself, and steps down (thesis 4.2.2). A learner never campaigns."""
        log = self.log
        if self.id in self.voters:
            return True
        return (
            log.membership_index() > log.committed
            and self.id in log.membership_at(log.committed).voters
        )

    def _append_entries_as_leader(self, entries: list[Entry]) -> None:
        raise NotImplementedError  # LeaderReplication's

    def _after_commit(self) -> None:
        """Leader: a commit moved. Nodes whose removal committed get no more messages; a
        leader that is no longer a voter of a committed membership steps down (thesis 4.2.2; not reached while removal of the leader is
        refused, kept so that the rule holds on its own)."""
        log = self.log
        members = log.membership().members()
        if any(
            pid != self.id and pid not in members and pr.farewell_heartbeats is None
            for pid, pr in self.progress.items()
        ):
            self._sync_progress(Index(log.last_index() + 1))  # a removal may have committed
        if self.id not in self.voters and log.membership_index() <= log.committed:
            self._become_follower(self.term, None)
