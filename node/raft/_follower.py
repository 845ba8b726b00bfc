"""The follower's side of replication in `RaftNode`: AppendEntries, Heartbeat, InstallSnapshot.

Paper Figure 2 (AppendEntries receiver rules), section 7 and thesis chapter 5 (snapshots in
chunks); a compacted prefix is never a conflict (openraft#511).
"""

from __future__ import annotations

from ._errors import CompactedError, UnavailableError
from ._repair import RepairRules
from ._types import (
    REPAIR_DONE,
    REPAIR_ENTER,
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    Index,
    InstallSnapshot,
    InstallSnapshotResponse,
    Snapshot,
    Standing,
)


class FollowerReplication(RepairRules):
    """What a follower does with a leader's appends, heartbeats and snapshot chunks."""

    def _handle_append_entries(self, msg: AppendEntries) -> None:
        log = self.log
        repairing = self._not_voter
        if msg.prev_log_index <= log.committed and self._conflicts_with_committed(msg):
            self._send(
                AppendEntriesResponse(
                    self.term, self.id, msg.from_id, False, Index(0), msg.prev_log_index,
                    repairing=repairing, boot=self.boot_id, diverged=True,
                )
            )
            return
        if msg.prev_log_index < log.committed:
            # Everything up to our commit index matches any leader's log (openraft#511: a
            # compacted prefix is not a conflict).
            self._leader_match = max(self._leader_match, log.committed)
            self._send(
                AppendEntriesResponse(
                    self.term, self.id, msg.from_id, True, log.committed, repairing=repairing, boot=self.boot_id
                )
            )
            return
        last_new = log.maybe_append(
            msg.prev_log_index, msg.prev_log_term, msg.leader_commit, msg.entries
        )
        if last_new is not None:
            self._leader_match = max(self._leader_match, last_new)
            self._send(
                AppendEntriesResponse(
                    self.term, self.id, msg.from_id, True, last_new, repairing=repairing, boot=self.boot_id
                )
            )
            return
        probe = Index(min(msg.prev_log_index, log.last_index()))
        hint_index, hint_term = log.find_conflict_by_term(probe, msg.prev_log_term)
        self._send(
            AppendEntriesResponse(
                self.term,
                self.id,
                msg.from_id,
                False,
                Index(0),
                msg.prev_log_index,
                hint_index,
                hint_term,
                repairing,
                self.boot_id,
            )
        )

    def _conflicts_with_committed(self, msg: AppendEntries) -> bool:
        """The leader's term at `prev_log_index` (<= our commit index) is not our entry's.

        A leader holds every committed entry (paper 5.4), so this means committed entries were
        lost somewhere; this node keeps its log (committed entries are never removed) and
        says so (`conflict` in `status()`; the leader stops counting it).
        """
        try:
            held = self.log.term(msg.prev_log_index)
        except (CompactedError, UnavailableError):
            return False  # compacted: covered by our snapshot, which is committed
        if held == msg.prev_log_term:
            return False
        self.conflict = (
            f"leader {msg.from_id}'s log has term {msg.prev_log_term} at index "
            f"{msg.prev_log_index}, this node's committed entry there has term {held}: "
            "committed entries were lost somewhere"
        )
        return True

    def _handle_heartbeat(self, msg: Heartbeat) -> None:
        log = self.log
        # The leader sends min(its commit, our match); our match may be stale if we lost data,
        # so apply it only up to what we matched with this leader in this term.
        log.commit_to(Index(min(msg.commit, self._leader_match, log.last_index())))
        lagging = msg.commit > log.committed
        if msg.repair == REPAIR_ENTER:
            self._start_repair(
                f"leader {msg.from_id} saw this node's log fall below what it had acknowledged"
            )
        elif (
            msg.repair == REPAIR_DONE
            and self.standing is Standing.REPAIRING
            and self._boot_ticks >= 2 * self.config.election_ticks
        ):
            # Repaired past what we had, under a leader a quorum confirmed since. Our vote in
            # this term may have been given before the loss: count it as given to this leader.
            self.standing = Standing.VOTER
            self.repair_reason = None
            if self.vote is None:
                self.vote = msg.from_id
        self._send(
            HeartbeatResponse(
                self.term, self.id, msg.from_id, msg.round, self._not_voter, lagging, self.boot_id
            )
        )

    def _handle_install_snapshot(self, msg: InstallSnapshot) -> None:
        log = self.log
        meta = msg.meta
        repairing = self._not_voter
        if meta.index <= log.committed:
            self._incoming_meta = None
            self._incoming_data = bytearray()
            self._leader_match = max(self._leader_match, log.committed)
            self._send(
                InstallSnapshotResponse(
                    self.term, self.id, msg.from_id, log.committed, 0, True, repairing, self.boot_id
                )
            )
            return
        if msg.offset_bytes == 0:
            self._incoming_meta = meta
            self._incoming_data = bytearray()
        elif self._incoming_meta != meta or msg.offset_bytes != len(self._incoming_data):
            expected = len(self._incoming_data) if self._incoming_meta == meta else 0
            self._send(
                InstallSnapshotResponse(
                    self.term, self.id, msg.from_id, meta.index, expected, False, repairing, self.boot_id
                )
            )
            return
        self._incoming_data += msg.chunk
        if not msg.done:
            self._send(
                InstallSnapshotResponse(
                    self.term,
                    self.id,
                    msg.from_id,
                    meta.index,
                    len(self._incoming_data),
                    False,
                    repairing,
                    self.boot_id,
                )
            )
            return
        data = bytes(self._incoming_data)
        self._incoming_meta = None
        self._incoming_data = bytearray()
        self._restore(Snapshot(meta, data))
        self._leader_match = max(self._leader_match, meta.index)
        self._send(
            InstallSnapshotResponse(
                self.term, self.id, msg.from_id, meta.index, 0, True, repairing, self.boot_id
            )
        )

    def _restore(self, snap: Snapshot) -> None:
        log = self.log
        if log.match_term(snap.meta.index, snap.meta.term):
            # We already have the entry the snapshot ends at: keep the log, just commit to it.
            log.commit_to(snap.meta.index)
            return
        log.restore(snap)  # the snapshot's membership comes with it
