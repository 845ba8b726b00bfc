"""`RaftNode`: one Raft participant as a pure, deterministic state machine (no I/O).

Sources: Ongaro & Ousterhout, "In Search of an Understandable Consensus Algorithm" (2014),
Figure 2 for the rules, section 5.4 for safety (Figure 8: commit only entries of the current
term); Ongaro's thesis (2014) for pre-vote (9.6), check-quorum / leader lease (6.2, 9.6),
leadership transfer (3.10) and snapshots (chapter 5). Shape after etcd-io/raft's `raft.go`.

Input arrives as calls: `tick()` (time, in ticks), `step(message)`, `propose(data)`,
`read_index(ctx)` (a linearizable read, thesis 6.4), `transfer_leadership(target)`. Output
leaves as data: `ready()` returns a `Ready` that the driver persists, sends and applies before
calling `advance`. Randomness (election jitter) comes
from the injected `random.Random`. Only one Ready may be outstanding at a time; `tick`, `step`
and `propose` may be called between `ready()` and `advance()`.

The class is assembled from parts, one job per module: this one holds the public surface,
roles, term rules and elections; the leader's replication is in _leader.py, the follower's in
_follower.py, the storage-fault rules (joining, repair) in _repair.py, ReadIndex in
_read_index.py, shared state in _base.py.
"""

from __future__ import annotations

import random

from ._config import Config as Config
from ._errors import NotLeader, ProposalDropped
from ._follower import FollowerReplication
from ._leader import LeaderReplication
from ._log import RaftLog
from ._progress import Progress
from ._quorum import VoteResult, vote_result
from ._read_index import PendingRead
from ._ready import ReadState, Ready, SoftState
from ._status import PeerStatus as PeerStatus
from ._status import Status as Status
from ._storage import Storage
from ._types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    Index,
    InstallSnapshot,
    InstallSnapshotResponse,
    JoinQuery,
    JoinQueryResponse,
    Message,
    NodeId,
    RequestVote,
    RequestVoteResponse,
    Role,
    SnapshotChunk,
    SnapshotMeta,
    Standing,
    Term,
    TimeoutNow,
)


class RaftNode(LeaderReplication, FollowerReplication):
    """One Raft node. See the module docstring for the calling rules.

    Args:
        config: tuning and this node's id.
        storage: read-only view of what the driver persisted (hard state, log, snapshot).
        rng: the only source of randomness (election jitter, join nonces).
        repair_reason: why the driver found this node's durable state lost (see
            `assess_durability`), shown in `status()` while the node is not a VOTER.

    A node need not be a member of its stored membership: a new node starts knowing only
    the voters it will ask (it is admitted as a learner by the leader), and a removed node
    keeps running without campaigning.

    Raises:
        ValueError: the storage's commit index is past its last index.
    """

    progress_class: type[Progress] = Progress
    """The class of the leader's per-follower progress (tests swap in broken variants)."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        rng: random.Random,
        repair_reason: str | None = None,
    ) -> None:
        self.config = config
        self.id = config.id
        self.rng = rng
        hard_state, membership = storage.initial_state()
        self.log = RaftLog(storage, hard_state.commit, membership)
        self.term: Term = hard_state.term
        self.vote: NodeId | None = hard_state.vote
        self.standing: Standing = hard_state.standing
        self.repair_reason: str | None = repair_reason
        if self.standing is Standing.JOINING and repair_reason is None:
            self.repair_reason = "new database: asking the other voters whether the cluster is new"
        self.role = Role.FOLLOWER
        self.leader_id: NodeId | None = None
        self.progress: dict[NodeId, Progress] = {}
        self.votes: dict[NodeId, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_ticks = self.config.election_ticks
        self.transfer_target: NodeId | None = None
        self.msgs: list[Message] = []
        # Leader messages that may leave before this node's own Ready is persisted.
        self.early_msgs: list[Message] = []
        self.dropped: list[Index] = []
        # Leader: entries were appended since the last broadcast (sent lazily in ready()).
        self._append_pending = False
        # Follower: snapshot being received in chunks (their bytes go to the driver), and
        # one received whole whose install the driver is preparing.
        self._incoming_meta: SnapshotMeta | None = None
        self._incoming_offset = 0
        self._installing: SnapshotMeta | None = None
        self.snapshot_chunks: list[SnapshotChunk] = []
        self.snapshot_received: SnapshotMeta | None = None
        # Last values handed out in a Ready, to detect changes.
        self._prev_hard = hard_state
        self._prev_soft = SoftState(self.role, None, self.term, self.standing)
        self._prev_membership = self.log.membership()
        self._outstanding: Ready | None = None
        # Ticks since this core was built (a restart): a node whose term was lost waits two
        # election timeouts before it accepts REPAIR_DONE (docs/architecture.md).
        self._boot_ticks = 0
        # Follower: last index proven to match the current leader's log in this term; the
        # commit a heartbeat carries is applied only up to it.
        self._leader_match = Index(0)
        # Leader: heartbeat rounds, for fresh quorum confirmations.
        self._heartbeat_round = 0
        # JOINING: the current question to the other voters and the answers so far.
        self._join_nonce = 0
        self._join_answers: dict[NodeId, JoinQueryResponse] = {}
        self._reset_randomized_timeout()
        # This incarnation, named in append and snapshot answers (see AppendEntriesResponse).
        # Derived from the generator's state rather than drawn from it, so that adding it did
        # not shift the election jitter of every seeded run.
        self.boot_id = hash(self.rng.getstate()) % ((1 << 62) - 1) + 1
        # Leader: followers seen claiming entries past this node's log (see _diverged).
        self.divergences = 0
        # Follower: a leader's log conflicts with our committed entries (see _follower.py).
        self.conflict: str | None = None
        # Leader: followers' changes of standing, drained and logged by the driver.
        self.repair_events: list[str] = []
        # Leader: ReadIndex (node/raft/_read_index.py): reads waiting for confirmation, and
        # the outcomes for the next Ready. `_term_start_index` is this term's no-op.
        self.pending_reads: list[PendingRead] = []
        self.read_states: list[ReadState] = []
        self.dropped_reads: list[int] = []
        self._term_start_index = Index(0)

    # =========================================================================================
    # Public surface
    # =========================================================================================
    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def tick(self) -> None:
        """Advance time by one tick: election timeout for followers, heartbeats for leaders."""
        self.election_elapsed += 1
        self._boot_ticks += 1
        if self.role is Role.LEADER:
            self._tick_leader()
        elif self.standing is Standing.JOINING:
            self._tick_joining()
        elif self.election_elapsed >= self.randomized_election_ticks:
            self.election_elapsed = 0
            if self._may_campaign() and self._in_electorate():
                self._campaign(transfer=False)
            else:
                # A repairing node or a learner waits for a leader to contact it; it no longer
                # vouches for the old one (its lease would refuse every pre-vote for ever).
                self.leader_id = None

    def propose(self, data: bytes) -> Index:
        """Append one entry of application data to the leader's log.

        Returns:
            The entry's log index; its term is `self.term`. The driver learns the outcome when
            the entry at that index is applied (same term: committed) or when the index appears
            in a Ready's `dropped` (outcome unknown).

        Raises:
            NotLeader: this node is not the leader; carries the leader id if known.
            ProposalDropped: a leadership transfer is under way.
        """
        return self.propose_many((data,))

    def propose_many(self, datas: tuple[bytes, ...] | list[bytes]) -> Index:
        """Append several entries at once; returns the index of the first (they are consecutive).

        Raises:
            NotLeader, ProposalDropped: as `propose`.
            ValueError: `datas` is empty.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self.transfer_target is not None:
            raise ProposalDropped("leadership transfer in progress")
        if not datas:
            raise ValueError("nothing to propose")
        first = Index(self.log.last_index() + 1)
        term = self.term
        self._append_entries_as_leader(
            [Entry(term, Index(first + n), EntryKind.NORMAL, d) for n, d in enumerate(datas)]
        )
        return first

    def step(self, msg: Message) -> None:
        """Handle one message from a peer. Messages for another node, or stale ones, are ignored."""
        if msg.to_id != self.id or msg.from_id == self.id:
            return
        if isinstance(msg, JoinQuery | JoinQueryResponse):
            self._handle_join(msg)
            return
        if msg.term > self.term:
            if not self._accept_higher_term(msg):
                return
        elif msg.term < self.term:
            self._handle_lower_term(msg)
            return
        self._dispatch(msg)

    def transfer_leadership(self, target: NodeId) -> None:
        """Hand leadership to `target` (thesis 3.10): catch it up, then send TimeoutNow.

        New proposals are refused with ProposalDropped until the transfer ends; it is abandoned
        after one election timeout.

        Raises:
            NotLeader: this node is not the leader.
            ValueError: target is this node or not a voter.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if target == self.id or target not in self.voters:
            raise ValueError(f"cannot transfer leadership to {target}")
        self.transfer_target = target
        self.election_elapsed = 0
        pr = self.progress[target]
        if pr.match == self.log.last_index():
            self._send(TimeoutNow(self.term, self.id, target))
        else:
            self._maybe_send_append(target, allow_empty=True)

    def peer_unreachable(self, peer: NodeId) -> None:
        """The driver saw its connection from `peer` break (the process died, or the link).

        A follower that followed `peer` stops trusting its leader lease and lets its election
        timer run out within one to three ticks instead of a whole election timeout, so a
        crashed leader is replaced sooner. Only timing changes: the election still needs a
        pre-vote majority, and a follower that still hears the leader refuses it (thesis 9.6),
        so a broken link to a live leader does not depose it.
        """
        if self.role is Role.FOLLOWER and peer == self.leader_id:
            self.leader_id = None
            soon = self.randomized_election_ticks - 1 - self.rng.randrange(3)
            self.election_elapsed = max(self.election_elapsed, soon)

    def has_ready(self) -> bool:
        """True when `ready()` has work for the driver."""
        if self._outstanding is not None:
            return False
        self._flush_appends()
        self._flush_reads()
        log = self.log
        return bool(
            self.msgs
            or self.early_msgs
            or self.read_states
            or self.dropped_reads
            or log.unstable_entries
            or log.unstable_snapshot is not None
            or self.snapshot_chunks
            or self.snapshot_received is not None
            or log.has_next_committed_entries()
            or self.dropped
            or self._hard_state() != self._prev_hard
            or self._soft_state() != self._prev_soft
            or self.log.membership() != self._prev_membership
        )

    def ready(self) -> Ready:
        """Take the pending work. See `Ready` for the persist, send, apply, advance contract.

        Raises:
            RuntimeError: the previous Ready was not yet passed to `advance`.
        """
        if self._outstanding is not None:
            raise RuntimeError("ready() called again before advance()")
        self._flush_appends()
        self._flush_reads()
        log = self.log
        hard = self._hard_state()
        soft = self._soft_state()
        committed: tuple[Entry, ...] = ()
        if log.has_next_committed_entries():
            committed = tuple(log.next_committed_entries(self.config.max_committed_bytes_per_ready))
        entries = tuple(log.unstable_entries)
        membership = log.membership()
        rd = Ready(
            hard_state=hard if hard != self._prev_hard else None,
            entries=entries,
            snapshot=log.unstable_snapshot,
            messages=tuple(self.msgs),
            early_messages=tuple(self.early_msgs),
            committed_entries=committed,
            soft_state=soft if soft != self._prev_soft else None,
            dropped=tuple(self.dropped),
            must_sync=bool(entries)
            or log.unstable_snapshot is not None
            or hard.term != self._prev_hard.term
            or hard.vote != self._prev_hard.vote
            or hard.standing != self._prev_hard.standing,
            read_states=tuple(self.read_states),
            dropped_reads=tuple(self.dropped_reads),
            membership=membership if membership != self._prev_membership else None,
            snapshot_chunks=tuple(self.snapshot_chunks),
            snapshot_received=self.snapshot_received,
        )
        self.snapshot_chunks = []
        self.snapshot_received = None
        self._prev_membership = membership
        self.msgs = []
        self.early_msgs = []
        self.dropped = []
        self.read_states = []
        self.dropped_reads = []
        self._prev_hard = hard
        self._prev_soft = soft
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied `rd`.

        Raises:
            RuntimeError: `rd` is not the outstanding Ready.
        """
        if rd is not self._outstanding:
            raise RuntimeError("advance() with a Ready that is not the outstanding one")
        self._outstanding = None
        log = self.log
        if rd.snapshot is not None:
            log.stable_snapshot_to(rd.snapshot.meta.index)
            log.applied = max(log.applied, rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            log.stable_to(last.index, last.term)
            if self.role is Role.LEADER and last.term == self.term:
                # Thesis 10.2.1: the leader counts its own copy only once it is durable.
                if self.progress[self.id].maybe_update(last.index):
                    self._maybe_commit()
        if rd.committed_entries:
            log.applied = max(log.applied, rd.committed_entries[-1].index)
        if rd.snapshot is not None or rd.committed_entries:
            log.prune_configs()

    def status(self) -> Status:
        """Role, term, leader, commit and applied index, and (on a leader) each peer's progress."""
        peers: dict[NodeId, PeerStatus] = {}
        if self.role is Role.LEADER:
            for pid, pr in self.progress.items():
                peers[pid] = PeerStatus(
                    pr.match,
                    pr.next,
                    pr.state.value,
                    pr.recent_active,
                    pr.repairing or pr.regressed,
                    pr.repair_target,
                    pr.diverged,
                )
        return Status(
            id=self.id,
            role=self.role,
            term=self.term,
            leader_id=self.leader_id,
            vote=self.vote,
            commit_index=self.log.committed,
            applied_index=self.log.applied,
            last_index=self.log.last_index(),
            first_index=self.log.first_index(),
            voters=self.voters,
            learners=self.learners,
            membership_index=self.log.membership_index(),
            peers=peers,
            standing=self.standing,
            repair_reason=self.repair_reason if self.standing is not Standing.VOTER else None,
            conflict=self.conflict,
            snapshot_index=self.log.snapshot_index(),
        )

    # =========================================================================================
    # Roles
    # =========================================================================================
    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed, self.standing)

    def _soft_state(self) -> SoftState:
        return SoftState(self.role, self.leader_id, self.term, self.standing)

    def _reset(self, term: Term) -> None:
        if self.role is Role.LEADER:
            self._drop_pending_proposals()  # before the term changes: they are of the old term
            self._drop_pending_reads()
        if self.term != term:
            self.term = term
            self.vote = None
        self.leader_id = None
        self._leader_match = Index(0)
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.votes = {}
        self.transfer_target = None
        self.progress = {}
        self._append_pending = False

    def _drop_pending_proposals(self) -> None:
        """A leader leaves office: its uncommitted proposals have an unknown outcome."""
        log = self.log
        last = log.last_index()
        lo = Index(max(log.committed + 1, log.first_index()))
        if lo > last:
            return
        for e in log.entries(lo, Index(last + 1)):
            if e.term == self.term and e.kind is not EntryKind.NOOP:
                self.dropped.append(e.index)  # proposals and membership changes

    def _become_follower(self, term: Term, leader_id: NodeId | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader_id = leader_id

    def _become_pre_candidate(self) -> None:
        # Thesis 9.6: no term change and no vote yet; only ask whether we could win.
        self.role = Role.PRE_CANDIDATE
        self.leader_id = None
        self.votes = {}
        self.progress = {}
        self.transfer_target = None
        self._reset_randomized_timeout()

    def _become_candidate(self) -> None:
        self._reset(Term(self.term + 1))
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader_id = self.id
        last = self.log.last_index()
        for pid in sorted({self.id, *self.log.membership().members()}):
            pr = self.progress_class(Index(last + 1), self.config.max_inflight_appends)
            if pid == self.id:
                # Our own entries count once durable: what earlier Readys persisted.
                pr.match = self._durable_last_index()
                pr.become_replicate()
                pr.recent_active = True
            self.progress[pid] = pr
        # Paper 5.4.2 / 8: a no-op entry of the new term lets earlier entries commit; reads
        # wait until it is committed (thesis 6.4).
        self._term_start_index = Index(last + 1)
        self._append_entries_as_leader([Entry(self.term, Index(last + 1), EntryKind.NOOP)])

    def _campaign(self, transfer: bool) -> None:
        """Start a pre-election (thesis 9.6), or an election at once when `transfer` is set
        (started by TimeoutNow) or pre-vote is off."""
        if not self._in_electorate() or not self._may_campaign():
            return
        if not self.config.pre_vote or transfer:
            self._start_election(transfer)
            return
        self._become_pre_candidate()
        self.votes[self.id] = True
        if vote_result(self._electorate(), self.votes) is VoteResult.WON:
            self._start_election(transfer=False)
            return
        term = Term(self.term + 1)
        last_index = self.log.last_index()
        last_term = self.log.last_term()
        for pid in self._electorate():
            if pid != self.id:
                self._send(RequestVote(term, self.id, pid, last_index, last_term, pre_vote=True))

    def _electorate(self) -> tuple[NodeId, ...]:
        """The nodes whose votes decide an election: the voters of the membership in effect
        (not learners, not removed nodes)."""
        return self.voters

    def _start_election(self, transfer: bool) -> None:
        self._become_candidate()
        self.votes[self.id] = True
        if vote_result(self._electorate(), self.votes) is VoteResult.WON:
            self._become_leader()
            return
        last_index = self.log.last_index()
        last_term = self.log.last_term()
        for pid in self._electorate():
            if pid != self.id:
                self._send(
                    RequestVote(self.term, self.id, pid, last_index, last_term, transfer=transfer)
                )


    # =========================================================================================
    # Term rules (paper Figure 2 "All servers"; thesis 9.6 for lease and pre-vote)
    # =========================================================================================
    def _in_lease(self) -> bool:
        return (
            self.config.check_quorum
            and self.leader_id is not None
            and self.election_elapsed < self.config.election_ticks
        )

    def _accept_higher_term(self, msg: Message) -> bool:
        """A message with a higher term arrived. Returns False if it must be ignored."""
        if isinstance(msg, RequestVote):
            if not msg.transfer and self._in_lease():
                # Thesis 6.2 / 9.6: we heard from a live leader recently; do not let a
                # disconnected node disrupt it.
                return False
            if msg.pre_vote:
                return True  # a pre-vote never changes our term
            self._become_follower(msg.term, None)
            return True
        if isinstance(msg, RequestVoteResponse) and msg.pre_vote and msg.granted:
            return True  # granted pre-votes carry the term we would campaign in
        leader = (
            msg.from_id
            if isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot | TimeoutNow)
            else None
        )
        self._become_follower(msg.term, leader)
        return True

    def _handle_lower_term(self, msg: Message) -> None:
        if isinstance(msg, AppendEntries | Heartbeat) and (
            self.config.check_quorum or self.config.pre_vote
        ):
            # A leader of an older term may be cut off from the rest; tell it our term so it
            # steps down (etcd-io/raft does the same: with pre-vote it cannot learn otherwise).
            self._send(AppendEntriesResponse(self.term, self.id, msg.from_id, False))
        elif isinstance(msg, RequestVote) and msg.pre_vote:
            self._send(RequestVoteResponse(self.term, self.id, msg.from_id, False, True))
        # Anything else from an older term is stale: ignore it.

    def _dispatch(self, msg: Message) -> None:
        if isinstance(msg, RequestVote):
            self._handle_request_vote(msg)
            return
        role = self.role
        if role is Role.LEADER:
            if isinstance(msg, AppendEntriesResponse):
                self._handle_append_response(msg)
            elif isinstance(msg, HeartbeatResponse):
                self._handle_heartbeat_response(msg)
            elif isinstance(msg, InstallSnapshotResponse):
                self._handle_snapshot_response(msg)
            return
        if isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot):
            if role is not Role.FOLLOWER or self.leader_id != msg.from_id:
                # A leader exists in our term (or in the term we would have moved to).
                self._become_follower(msg.term, msg.from_id)
            self.election_elapsed = 0
            if self.standing is Standing.JOINING:
                self._start_repair(
                    self._joining_reason(f"node {msg.from_id} leads term {msg.term}")
                )
            if isinstance(msg, AppendEntries):
                self._handle_append_entries(msg)
            elif isinstance(msg, Heartbeat):
                self._handle_heartbeat(msg)
            else:
                self._handle_install_snapshot(msg)
        elif isinstance(msg, RequestVoteResponse):
            self._handle_vote_response(msg)
        elif isinstance(msg, TimeoutNow):
            if role is Role.FOLLOWER and msg.from_id == self.leader_id:
                self._campaign(transfer=True)

    # =========================================================================================
    # Elections
    # =========================================================================================
    def _handle_request_vote(self, msg: RequestVote) -> None:
        can_vote = self._may_vote() and (
            self.vote == msg.from_id
            or (self.vote is None and self.leader_id is None)
            or (msg.pre_vote and msg.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(msg.last_log_index, msg.last_log_term):
            self._send(RequestVoteResponse(msg.term, self.id, msg.from_id, True, msg.pre_vote))
            if not msg.pre_vote:
                self.election_elapsed = 0
                self.vote = msg.from_id
        else:
            self._send(RequestVoteResponse(self.term, self.id, msg.from_id, False, msg.pre_vote))

    def _handle_vote_response(self, msg: RequestVoteResponse) -> None:
        expect_pre = self.role is Role.PRE_CANDIDATE
        if self.role not in (Role.PRE_CANDIDATE, Role.CANDIDATE) or msg.pre_vote != expect_pre:
            return
        self.votes.setdefault(msg.from_id, msg.granted)
        result = vote_result(self._electorate(), self.votes)
        if result is VoteResult.WON:
            if expect_pre:
                self._start_election(transfer=False)
            else:
                self._become_leader()
        elif result is VoteResult.LOST:
            self._become_follower(self.term, None)
