"""Linearizable reads without a log entry: ReadIndex (Ongaro's thesis, section 6.4).

A leader that was cut off may still believe it leads while another leader commits writes; a
read answered from its state would then be stale. ReadIndex answers a read only once the leader
has shown that it still led after the read arrived:

1. The leader must have committed an entry of its own term (its no-op), so that its commit index
   is at least every index committed by earlier leaders (thesis 6.4, step 1). Reads that arrive
   before then wait for it.
2. The read's *read index* is the leader's commit index.
3. The leader sends a heartbeat round; once a quorum of voters (itself included, followers under
   repair not counted) answered a round sent after the read index was recorded, no leader of a
   later term can have been elected before that moment (it would have needed one of those voters).
4. The driver waits until the application has applied up to the read index and answers.

The confirmation travels in the heartbeat: etcd-io/raft (`read_only.go`) puts each request's
context in the heartbeat; here the context is the heartbeat's `round`, which every follower
echoes already. Reads share rounds: all reads recorded before a round is sent are confirmed by
it, and while one read round is unanswered, newer reads wait for the next round (sent when that
one is confirmed, or by the next periodic heartbeat), so a burst of reads costs one round trip
per batch, not per read. A read costs no log entry and no fsync.

No leader lease (thesis 6.4.1): reading without the round while a lease holds would rest on
bounded clock drift between the nodes, which nothing here measures or enforces.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import NotLeader
from ._ready import ReadState
from ._repair import RepairRules
from ._types import Index, Role


@dataclass(slots=True)
class PendingRead:
    """A read the leader has not confirmed yet.

    Attributes:
        ctx: the driver's id for the read (echoed in `ReadState`).
        index: the read index, once recorded (None before the leader committed in its term).
        round: the heartbeat round that confirms it, once sent (None before).
    """

    ctx: int
    index: Index | None = None
    round: int | None = None


class ReadIndexRules(RepairRules):
    """The leader's ReadIndex; see the module docstring."""

    def read_index(self, ctx: int) -> None:
        """Ask for a linearizable read. Its outcome comes in a later Ready: a `ReadState(ctx,
        index)` in `read_states` once leadership is confirmed (answer after applying up to
        `index`), or `ctx` in `dropped_reads` if this node leaves office first.

        Raises:
            NotLeader: this node is not the leader; carries the leader id if known.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        self.pending_reads.append(PendingRead(ctx))

    def _committed_in_term(self) -> bool:
        """The leader has committed an entry of its own term (thesis 6.4 step 1)."""
        return self.log.committed >= self._term_start_index

    def _flush_reads(self) -> None:
        """Leader: start a heartbeat round for reads that have none, unless one is unanswered."""
        if (
            self.role is Role.LEADER
            and self.pending_reads
            and self.pending_reads[-1].round is None
            and self._committed_in_term()
            and not self._read_round_unanswered()
        ):
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _read_round_unanswered(self) -> bool:
        return any(r.round is not None for r in self.pending_reads)

    def _assign_reads(self, heartbeat_round: int) -> None:
        """Leader: a heartbeat round is being sent; it confirms every read recorded so far."""
        if not self._committed_in_term():
            return
        committed = self.log.committed
        for r in self.pending_reads:
            if r.round is None:
                r.index = committed
                r.round = heartbeat_round
        self._confirm_reads()

    def _confirm_reads(self) -> None:
        """Leader: hand out, in order, the reads whose round a quorum has answered."""
        reads = self.pending_reads
        done = 0
        for r in reads:
            if r.round is None or r.index is None or not self._confirmed_since(r.round):
                break
            self.read_states.append(ReadState(r.ctx, r.index))
            done += 1
        if done:
            del reads[:done]

    def _drop_pending_reads(self) -> None:
        """The leader leaves office: its unconfirmed reads cannot be answered here."""
        self.dropped_reads.extend(r.ctx for r in self.pending_reads)
        self.pending_reads.clear()

    def _broadcast_heartbeat(self) -> None:
        raise NotImplementedError  # LeaderReplication's
