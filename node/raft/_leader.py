"""The leader's side of replication in `RaftNode`: heartbeats, appends, snapshots, commit.

Paper Figure 2 (AppendEntries, commitment, Figure 8's rule); thesis 6.2 (check-quorum),
3.10 (leadership transfer), chapter 5 (snapshots), 10.2.1 (the leader writes its log in
parallel with replicating it). Flow control per follower: node/raft/_progress.py.
"""

from __future__ import annotations

import zlib

from ._conf_change import MembershipRules
from ._errors import CompactedError
from ._progress import Progress, ProgressState
from ._quorum import committed_index
from ._types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    Heartbeat,
    HeartbeatResponse,
    Index,
    InstallSnapshot,
    InstallSnapshotResponse,
    NodeId,
    Role,
    TimeoutNow,
    snapshot_piece,
)

CHUNK_RESEND_HEARTBEATS = 4
"""Heartbeat answers after which an unanswered snapshot chunk is sent again."""


class LeaderReplication(MembershipRules):
    """What a leader does to replicate its log and to learn what is committed."""

    def _tick_leader(self) -> None:
        cfg = self.config
        self.heartbeat_elapsed += 1
        if self.election_elapsed >= cfg.election_ticks:
            self.election_elapsed = 0
            if cfg.check_quorum:
                active = self._has_quorum(self._active)
                for pid, pr in self.progress.items():
                    pr.recent_active = pid == self.id
                if not active:
                    self._become_follower(self.term, None)
                    return
            self.transfer_target = None  # a transfer that did not finish in time is abandoned
        if self.heartbeat_elapsed >= cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _broadcast_heartbeat(self) -> None:
        committed = self.log.committed
        self._heartbeat_round += 1
        hb_round = self._heartbeat_round
        for pid, pr in self.progress.items():
            if pid != self.id:
                self._send(
                    Heartbeat(
                        self.term,
                        self.id,
                        pid,
                        Index(min(pr.match, committed)),
                        hb_round,
                        self._repair_signal(pr),
                    )
                )
        self._assign_reads(hb_round)
        self._say_farewells()

    def _durable_last_index(self) -> Index:
        log = self.log
        return Index(log.unstable_offset - 1) if log.unstable_entries else log.last_index()

    def _append_entries_as_leader(self, entries: list[Entry]) -> None:
        # The leader's own match moves in advance(), once the Ready holding these is persisted.
        self.log.append(entries)
        self._append_pending = True

    def _flush_appends(self) -> None:
        if self._append_pending and self.role is Role.LEADER:
            self._append_pending = False
            for pid in self.progress:
                if pid != self.id:
                    while self._maybe_send_append(pid, allow_empty=False):
                        pass

    def _maybe_send_append(self, pid: NodeId, allow_empty: bool) -> bool:
        """Send the next AppendEntries (or snapshot chunk) to `pid` if flow control allows.

        Returns True if an AppendEntries with entries was sent and more may follow.
        """
        pr = self.progress[pid]
        if pr.state is ProgressState.SNAPSHOT:
            self._maybe_send_snapshot_chunk(pid, pr)
            return False
        if pr.is_paused():
            return False
        log = self.log
        last = log.last_index()
        if pr.next > last and not allow_empty:
            return False
        prev = Index(pr.next - 1)
        try:
            prev_term = log.term(prev)
            entries: list[Entry] = []
            if pr.next <= last:
                hi = Index(min(last + 1, pr.next + self.config.max_append_entries))
                entries = log.entries(pr.next, hi, self.config.max_append_bytes)
        except CompactedError:
            # Thesis chapter 5: the follower needs entries we compacted; send the snapshot.
            snap = log.storage.snapshot()
            pr.become_snapshot(snap)
            self._maybe_send_snapshot_chunk(pid, pr)
            return False
        self._send(
            AppendEntries(self.term, self.id, pid, prev, prev_term, tuple(entries), log.committed)
        )
        if entries:
            pr.sent_entries(entries[-1].index)
        else:
            pr.sent_entries(prev)
        return bool(entries)

    def _maybe_send_snapshot_chunk(self, pid: NodeId, pr: Progress) -> None:
        """Send the next chunk of the snapshot `pid` is receiving, read from storage.

        A snapshot newer than the one being sent (taken meanwhile) replaces it, from its
        start. When the follower has every byte (it is installing), the chunk sent is an
        empty one at the end: the follower answers it when its install is done.
        """
        snap = pr.snapshot
        if snap is None or pr.chunk_sent:
            return
        current = self.log.storage.snapshot()
        if current.meta.index > snap.meta.index:
            pr.become_snapshot(current)
            snap = current
        size = self.config.max_snapshot_chunk_bytes
        total = len(snap.data)
        off = min(pr.snapshot_offset_bytes, total)
        chunk = snapshot_piece(snap.data, off, size)
        done = off + len(chunk) >= total
        self._send(InstallSnapshot(
            self.term, self.id, pid, snap.meta, off, chunk, done, total, zlib.crc32(chunk)
        ))
        pr.chunk_sent = True
        pr.chunk_waits = 0

    def _counted_match(self, pid: NodeId) -> Index | None:
        """Leader: what voter `pid` holds, for commitment; followers under repair (whose
        acknowledgements before their loss did count) and learners' absence count as nothing."""
        pr = self.progress.get(pid)
        if pr is None or not (pid == self.id or pr.counts):
            return None
        return pr.match

    def _maybe_commit(self) -> bool:
        # Paper Figure 8: only an entry of the current term is committed by counting replicas.
        index = committed_index(self.voters, self._counted_match)
        if not self.log.maybe_commit(index, self.term):
            return False
        self._after_commit()
        return True

    def _handle_append_response(self, msg: AppendEntriesResponse) -> None:
        pr = self.progress.get(msg.from_id)
        if pr is None:
            return
        if not self._follower_news(pr, msg.repairing, msg.boot):
            return  # an answer of an incarnation from before the loss
        pr.recent_active = True
        pid = msg.from_id
        if msg.diverged:
            self._diverged(pr)
            return
        if not msg.success:
            hint_next = msg.hint_index
            if msg.hint_term > 0:
                hint_next, _ = self.log.find_conflict_by_term(msg.hint_index, msg.hint_term)
            regressed = pr.regressed
            if pr.maybe_decrease_to(msg.reject_index, Index(hint_next + 1), msg.boot):
                if pr.regressed and not regressed:
                    self.repair_events.append(
                        f"follower {pid} refused index {msg.reject_index}, which it had "
                        "acknowledged: it lost data; told to repair"
                    )
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._maybe_send_append(pid, allow_empty=True)
            return
        if msg.match_index > self.log.last_index():
            self._diverged(pr)
            return
        updated = pr.maybe_update(msg.match_index)
        pr.match_boot = msg.boot
        if not updated and not (pr.state is ProgressState.PROBE and msg.match_index == pr.match):
            return  # a stale or duplicate success
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        if updated and self._maybe_commit() and self.role is not Role.LEADER:
            return  # it committed its own removal and stepped down
        while self._maybe_send_append(pid, allow_empty=False):
            pass
        if self.transfer_target == pid and pr.match == self.log.last_index():
            self._send(TimeoutNow(self.term, self.id, pid))

    def _diverged(self, pr: Progress) -> None:
        """The follower says it holds entries past this leader's last index.

        Impossible while Raft's assumptions hold (a leader holds every committed entry): some
        node lost committed entries without noticing (docs/architecture.md, "What is not
        covered"). The follower's answer is not counted, and the peer is shown as diverged in
        `status()` so that the operator learns of it.
        """
        if not pr.diverged:
            pr.diverged = True
            self.divergences += 1

    def _handle_heartbeat_response(self, msg: HeartbeatResponse) -> None:
        pr = self.progress.get(msg.from_id)
        if pr is None:
            return
        if not self._follower_news(pr, msg.repairing, msg.boot, msg.round):
            return
        pr.recent_active = True
        if msg.round > pr.acked_round:
            pr.acked_round = msg.round
            if self.pending_reads:
                self._confirm_reads()
        pr.probe_sent = False
        if pr.state is ProgressState.SNAPSHOT:
            # Resend the chunk in case it was lost, but only once it has gone unanswered for
            # a few heartbeats: a large chunk takes longer than one heartbeat to arrive, and
            # resending it on every answer multiplied the bytes of a snapshot several times.
            pr.chunk_waits += 1
            if pr.chunk_waits >= CHUNK_RESEND_HEARTBEATS:
                pr.chunk_sent = False
        elif pr.state is ProgressState.REPLICATE and len(pr.inflight) >= pr.max_inflight:
            pr.inflight.popleft()  # a lost append would otherwise stall the stream
        if msg.lagging or pr.match < self.log.last_index() or pr.state is ProgressState.SNAPSHOT:
            self._maybe_send_append(msg.from_id, allow_empty=True)

    def _handle_snapshot_response(self, msg: InstallSnapshotResponse) -> None:
        pr = self.progress.get(msg.from_id)
        if pr is None:
            return
        if not self._follower_news(pr, msg.repairing, msg.boot):
            return
        pr.recent_active = True
        if msg.done:
            if msg.snapshot_index > self.log.last_index():
                self._diverged(pr)
                return
            pr.maybe_update(msg.snapshot_index)
            pr.match_boot = msg.boot
            pr.become_probe()
            self._maybe_send_append(msg.from_id, allow_empty=True)
            return
        if pr.state is not ProgressState.SNAPSHOT or pr.snapshot is None:
            return
        if msg.snapshot_index != pr.snapshot.meta.index:
            return
        if msg.next_offset_bytes == pr.snapshot_offset_bytes and pr.chunk_sent:
            # A duplicated answer for the chunk already on its way: resending on each one
            # multiplied the chunks in flight with every duplicate (a message storm); a lost
            # chunk is resent after CHUNK_RESEND_HEARTBEATS instead.
            return
        pr.snapshot_offset_bytes = msg.next_offset_bytes
        pr.chunk_sent = False
        self._maybe_send_snapshot_chunk(msg.from_id, pr)
