"""The follower's side of replication in `RaftNode`: AppendEntries, Heartbeat, InstallSnapshot.

Paper Figure 2 (AppendEntries receiver rules), section 7 and thesis chapter 5 (snapshots in
chunks); a compacted prefix is never a conflict (openraft#511).
"""

from __future__ import annotations

import zlib

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
    NodeId,
    Snapshot,
    SnapshotChunk,
    SnapshotData,
    SnapshotMeta,
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
        """Take one chunk of a snapshot (thesis chapter 5), without keeping its bytes.

        Each accepted chunk goes to the driver (`Ready.snapshot_chunks`), which writes it where
        the snapshot is assembled; its answer leaves once that write is done. A chunk that
        does not follow the last one, fails its CRC, or runs past the snapshot's size is
        refused (the answer names the offset expected). After the last chunk the driver is
        asked to prepare the install (`Ready.snapshot_received`) and the answer waits for
        `snapshot_prepared`; chunks of that snapshot that come meanwhile are answered with
        its size (everything is here).
        """
        log = self.log
        meta = msg.meta
        if meta.index <= log.committed:
            self._incoming_meta = None
            self._incoming_offset = 0
            self._leader_match = max(self._leader_match, log.committed)
            self._answer_snapshot(msg.from_id, log.committed, 0, True)
            return
        if self._installing is not None:
            if meta == self._installing:
                self._answer_snapshot(msg.from_id, meta.index, msg.size_bytes, False)
                return
            self._installing = None  # another snapshot: what was being installed is dropped
        if msg.offset_bytes == 0:
            self._incoming_meta = meta
            self._incoming_offset = 0
        elif self._incoming_meta != meta or msg.offset_bytes != self._incoming_offset:
            expected = self._incoming_offset if self._incoming_meta == meta else 0
            self._answer_snapshot(msg.from_id, meta.index, expected, False)
            return
        end = msg.offset_bytes + len(msg.chunk)
        if (
            zlib.crc32(msg.chunk) != msg.crc32
            or end > msg.size_bytes
            or msg.done != (end == msg.size_bytes)
        ):
            # Damaged on the way, or not the snapshot the leader says: ask for it again.
            self._answer_snapshot(msg.from_id, meta.index, msg.offset_bytes, False)
            return
        self.snapshot_chunks.append(SnapshotChunk(meta, msg.offset_bytes, msg.chunk))
        self._incoming_offset = end
        if not msg.done:
            self._answer_snapshot(msg.from_id, meta.index, end, False)
            return
        self._installing = meta
        self.snapshot_received = meta

    def snapshot_prepared(self, meta: SnapshotMeta, data: bytes | SnapshotData | None) -> None:
        """The driver prepared the install of the snapshot `Ready.snapshot_received` named:
        `data` reads the assembled snapshot, or is None when it must not be installed (it does
        not decode, or could not be written): it is then fetched again from its start.

        Does nothing when that snapshot was dropped meanwhile (another one came).
        """
        if self._installing != meta:
            return
        self._installing = None
        self._incoming_meta = None
        self._incoming_offset = 0
        leader = self.leader_id
        log = self.log
        if data is None:
            if leader is not None:
                self._answer_snapshot(leader, meta.index, 0, False)
            return
        if meta.index <= log.committed:
            if leader is not None:
                self._answer_snapshot(leader, log.committed, 0, True)
            return
        self._restore(Snapshot(meta, data))
        self._leader_match = max(self._leader_match, meta.index)
        if leader is not None:
            self._answer_snapshot(leader, meta.index, 0, True)

    def _answer_snapshot(self, to: NodeId, index: Index, next_offset: int, done: bool) -> None:
        self._send(
            InstallSnapshotResponse(
                self.term, self.id, to, index, next_offset, done, self._not_voter, self.boot_id
            )
        )

    def _restore(self, snap: Snapshot) -> None:
        log = self.log
        if log.match_term(snap.meta.index, snap.meta.term):
            # We already have the entry the snapshot ends at: keep the log, just commit to it.
            log.commit_to(snap.meta.index)
            return
        log.restore(snap)  # the snapshot's membership comes with it
