"""The leader's view of one follower's log: match index, next index and flow control.

After etcd-io/raft `tracker/progress.go` and `tracker/inflights.go`. A follower is in one of
three states:

- PROBE: the leader does not know where the logs diverge. It sends one AppendEntries and waits
  (`probe_sent`) for the answer or for the next heartbeat answer.
- REPLICATE: the logs match up to `match`. The leader streams AppendEntries optimistically,
  advancing `next` as it sends, with at most `max_inflight` messages outstanding.
- SNAPSHOT: the follower needs entries the leader has compacted; the leader sends the snapshot in
  chunks, one chunk at a time.
"""

from __future__ import annotations

import enum
from collections import deque

from ._types import Index, Snapshot


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    """Replication state of one peer, kept by the leader.

    Attributes:
        match: highest index known to be replicated on the peer.
        next: index of the next entry to send.
        state: PROBE, REPLICATE or SNAPSHOT.
        probe_sent: in PROBE, an AppendEntries is outstanding; wait before sending more.
        inflight: in REPLICATE, last indexes of outstanding AppendEntries, oldest first.
        recent_active: heard from since the last check-quorum round.
        snapshot: in SNAPSHOT, the snapshot being sent; `snapshot_offset_bytes` is the next chunk.
        chunk_sent: in SNAPSHOT, a chunk is outstanding.
        chunk_waits: in SNAPSHOT, heartbeat answers since that chunk was sent.
        repairing: the follower says it is not a VOTER (it lost durable state or is joining);
            its match does not count towards commit or check-quorum.
        repair_target: while repairing, the leader's last index when it learned so: the
            follower holds everything it could have acknowledged before its loss once its
            match reaches it (docs/architecture.md, "Storage faults").
        repair_round: while repairing, the first heartbeat round sent after that moment.
        acked_round: the latest heartbeat round the follower answered.
        regressed: the follower refused an index at or below the match it had acknowledged
            (it lost data without knowing); it is told to become REPAIRING.
        match_boot: the process incarnation (`boot`) of the follower's last success.
        repair_boot: while repairing, the incarnation that said so; answers of others are old.
        diverged: the follower claimed entries past the leader's log (committed entries were
            lost somewhere); it no longer counts.
    """

    __slots__ = (
        "match",
        "next",
        "state",
        "probe_sent",
        "inflight",
        "max_inflight",
        "recent_active",
        "snapshot",
        "snapshot_offset_bytes",
        "chunk_sent",
        "chunk_waits",
        "repairing",
        "repair_target",
        "repair_round",
        "acked_round",
        "regressed",
        "match_boot",
        "repair_boot",
        "diverged",
        "farewell_heartbeats",
    )

    def __init__(self, next_index: Index, max_inflight: int) -> None:
        self.match = Index(0)
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight: deque[Index] = deque()
        self.max_inflight = max_inflight
        self.recent_active = False
        self.snapshot: Snapshot | None = None
        self.snapshot_offset_bytes = 0
        self.chunk_sent = False
        self.chunk_waits = 0
        self.repairing = False
        self.repair_target: Index | None = None
        self.repair_round = 0
        self.acked_round = 0
        self.regressed = False
        self.match_boot = 0
        self.repair_boot = 0
        self.diverged = False
        self.farewell_heartbeats: int | None = None  # removed: heartbeats it still gets

    @property
    def counts(self) -> bool:
        """True when this follower's match counts towards commit and check-quorum."""
        return not (self.repairing or self.regressed or self.diverged)

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.inflight.clear()
        self.snapshot = None
        self.snapshot_offset_bytes = 0
        self.chunk_sent = False

    def become_probe(self) -> None:
        """Go to PROBE; after a snapshot, resume from the snapshot's index."""
        snap_index = self.snapshot.meta.index if self.snapshot is not None else 0
        self._reset(ProgressState.PROBE)
        self.next = Index(max(self.match + 1, snap_index + 1))

    def become_replicate(self) -> None:
        self._reset(ProgressState.REPLICATE)
        self.next = Index(self.match + 1)

    def become_snapshot(self, snapshot: Snapshot) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.snapshot = snapshot

    def is_paused(self) -> bool:
        """True when the leader must not send another AppendEntries now."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def sent_entries(self, last_index: Index) -> None:
        """Record an AppendEntries ending at `last_index` (which may equal next - 1: empty)."""
        if self.state is ProgressState.REPLICATE:
            if last_index >= self.next:
                self.next = Index(last_index + 1)
                self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def maybe_update(self, index: Index) -> bool:
        """A success for `index` arrived. Returns True if match moved forward."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        if index + 1 > self.next:
            self.next = Index(index + 1)
        inflight = self.inflight
        while inflight and inflight[0] <= index:
            inflight.popleft()
        return updated

    def maybe_decrease_to(self, rejected: Index, hint_next: Index, boot: int) -> bool:
        """A rejection of the append after `rejected` arrived. Returns False if it is stale.

        Args:
            rejected: the prev_log_index the follower refused.
            hint_next: the next index the fast back-off suggests (thesis 5.4.2).
            boot: the incarnation of the follower that answered (see `match_boot`).
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = Index(self.match + 1)
            return True
        if self.next - 1 != rejected:
            return False
        target = Index(max(min(rejected, hint_next), 1))
        if target <= self.match:
            if boot == self.match_boot:
                return False  # this incarnation held it: an answer older than its success
            self.lost_match(target)
        else:
            self.next = target
        self.probe_sent = False
        return True

    def lost_match(self, next_index: Index) -> None:
        """The follower refused an index at or below its match: it lost acknowledged entries.

        The match is no longer known (whatever the follower holds below `next_index` is not
        proven to match), so it goes to 0 and the leader probes down from `next_index`; it
        never assumes the follower still holds what it acknowledged (the probe floor at
        `match + 1` that used to stand here left such a follower refused forever).
        """
        self.match = Index(0)
        self.next = next_index
        if not self.repairing:
            self.regressed = True
