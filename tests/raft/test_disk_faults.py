"""Storage faults in the pure core: joining, repair, the durability mark, and the simulator's
disk faults (with the fixes reverted, the simulator must catch the old behaviour)."""

from __future__ import annotations

import random

from node.raft import (
    REPAIR_DONE,
    REPAIR_ENTER,
    AppendEntries,
    AppendEntriesResponse,
    Config,
    DurabilityMark,
    Entry,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    Index,
    JoinQuery,
    JoinQueryResponse,
    MemoryStorage,
    NodeId,
    RaftNode,
    Ready,
    Role,
    Standing,
    Term,
    assess_durability,
    lower_mark_before,
    raise_mark_after,
)
from node.raft._progress import Progress, ProgressState
from tests.sim.raft_sim import SimNode, Simulator, simulate

from .test_simulation import first_violation

VOTERS = (NodeId(1), NodeId(2), NodeId(3))


def core(node_id: int, storage: MemoryStorage, seed: int = 0) -> RaftNode:
    return RaftNode(Config(NodeId(node_id), election_ticks=10, heartbeat_ticks=2), storage,
                    random.Random(seed))


def drain(node: RaftNode, storage: MemoryStorage) -> list[object]:
    """Run the node's Readys against `storage`; return the messages it sent."""
    out: list[object] = []
    while node.has_ready():
        rd = node.ready()
        out += rd.early_messages
        if rd.entries:
            storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        out += rd.messages
        node.advance(rd)
    return out


# -- joining ----------------------------------------------------------------------------------


def test_a_brand_new_cluster_bootstraps_when_every_voter_answers_empty() -> None:
    st = MemoryStorage(VOTERS, Standing.JOINING)
    n1 = core(1, st)
    n1.tick()
    queries = [m for m in drain(n1, st) if isinstance(m, JoinQuery)]
    assert sorted(q.to_id for q in queries) == [2, 3]
    assert n1.standing is Standing.JOINING
    for _ in range(30):  # a JOINING node never campaigns
        n1.tick()
        assert n1.role is Role.FOLLOWER
    queries = [m for m in drain(n1, st) if isinstance(m, JoinQuery)]
    nonce = queries[-1].nonce
    n1.step(JoinQueryResponse(Term(0), NodeId(2), NodeId(1), nonce, True))
    assert n1.standing is Standing.JOINING  # node 3 has not answered
    n1.step(JoinQueryResponse(Term(0), NodeId(3), NodeId(1), nonce + 1, True))  # stale nonce
    assert n1.standing is Standing.JOINING
    n1.step(JoinQueryResponse(Term(2), NodeId(3), NodeId(1), nonce, True))
    assert n1.standing is Standing.VOTER
    # A failed election happened in term 2: our vote there counts as given.
    assert (n1.term, n1.vote) == (2, 1)
    drain(n1, st)
    assert st.hard_state.standing is Standing.VOTER


def test_an_empty_node_of_an_existing_cluster_is_repaired_not_bootstrapped() -> None:
    st = MemoryStorage(VOTERS, Standing.JOINING)
    n1 = core(1, st)
    n1.tick()
    nonce = [m for m in drain(n1, st) if isinstance(m, JoinQuery)][-1].nonce
    n1.step(JoinQueryResponse(Term(0), NodeId(2), NodeId(1), nonce, True))
    n1.step(JoinQueryResponse(Term(5), NodeId(3), NodeId(1), nonce, False))
    assert n1.standing is Standing.REPAIRING
    assert n1.status().repair_reason is not None and "lost its disk" in n1.status().repair_reason
    drain(n1, st)
    assert st.hard_state.standing is Standing.REPAIRING


def test_a_repairing_node_neither_votes_nor_campaigns() -> None:
    from node.raft import RequestVote, RequestVoteResponse

    st = MemoryStorage(VOTERS, Standing.REPAIRING)
    n1 = core(1, st)
    for _ in range(100):
        n1.tick()
    assert n1.role is Role.FOLLOWER and n1.term == 0
    for pre in (True, False):
        n1.step(RequestVote(Term(3), NodeId(2), NodeId(1), Index(0), Term(0), pre_vote=pre))
        answers = [m for m in drain(n1, st) if isinstance(m, RequestVoteResponse)]
        assert answers and not answers[-1].granted
    assert n1.vote is None


# -- the leader's side of repair ---------------------------------------------------------------


def elected_leader() -> tuple[RaftNode, MemoryStorage]:
    st = MemoryStorage(VOTERS)
    n1 = core(1, st, seed=4)
    while n1.role is not Role.CANDIDATE:
        n1.tick()
        if n1.role is Role.PRE_CANDIDATE:
            from node.raft import RequestVoteResponse
            drain(n1, st)
            n1.step(RequestVoteResponse(Term(1), NodeId(2), NodeId(1), True, True))
    drain(n1, st)
    from node.raft import RequestVoteResponse
    n1.step(RequestVoteResponse(n1.term, NodeId(2), NodeId(1), True, False))
    assert n1.role is Role.LEADER
    drain(n1, st)
    return n1, st


def test_a_follower_reporting_repair_is_probed_down_and_released_after_a_fresh_round() -> None:
    n1, st = elected_leader()
    term = n1.term
    n1.propose_many([b"a", b"b", b"c"])
    drain(n1, st)
    last = n1.log.last_index()
    # Node 2 acknowledged everything, then came back with an empty disk (another boot).
    n1.step(AppendEntriesResponse(term, NodeId(2), NodeId(1), True, last, boot=7))
    n1.step(AppendEntriesResponse(term, NodeId(3), NodeId(1), True, last, boot=8))
    assert n1.progress[NodeId(2)].match == last
    n1.step(HeartbeatResponse(term, NodeId(2), NodeId(1), 0, repairing=True, boot=9))
    pr = n1.progress[NodeId(2)]
    assert pr.repairing and pr.match == 0 and pr.repair_target == last
    assert n1.repair_events == [f"follower 2 is repairing; repaired once it holds index {last}"]
    assert n1.status().peers[NodeId(2)].repairing
    # Its old incarnation's success does not count any more.
    n1.step(AppendEntriesResponse(term, NodeId(2), NodeId(1), True, last, boot=7))
    assert pr.match == 0
    # Caught up by its new incarnation: still no release before a fresh heartbeat round.
    n1.step(AppendEntriesResponse(term, NodeId(2), NodeId(1), True, last, repairing=True, boot=9))
    assert pr.match == last
    signals = []
    for _ in range(6):
        n1.tick()
        for m in drain(n1, st):
            if isinstance(m, Heartbeat) and m.to_id == 2:
                signals.append(m.repair)
                n1.step(HeartbeatResponse(term, NodeId(3), NodeId(1), m.round, boot=8))
    assert signals[0] != REPAIR_DONE and REPAIR_DONE in signals


def test_a_regressed_follower_of_another_incarnation_is_told_to_repair() -> None:
    n1, st = elected_leader()
    term = n1.term
    n1.propose_many([b"a", b"b", b"c", b"d"])
    drain(n1, st)
    last = n1.log.last_index()
    n1.step(AppendEntriesResponse(term, NodeId(2), NodeId(1), True, last, boot=7))
    pr = n1.progress[NodeId(2)]
    assert pr.state is ProgressState.REPLICATE
    # The same incarnation's stale rejection of an index it since acknowledged: ignored.
    pr.become_probe()
    n1.step(AppendEntriesResponse(term, NodeId(2), NodeId(1), False, Index(0), Index(last), Index(1),
                                  Term(1), boot=7))
    assert pr.match == last and not pr.regressed
    # A new incarnation that lacks what was acknowledged: the leader probes down, says so.
    n1.step(AppendEntriesResponse(term, NodeId(2), NodeId(1), False, Index(0), Index(last), Index(1),
                                  Term(1), boot=11))
    assert pr.regressed and pr.match == 0 and pr.next <= 2
    assert any("follower 2 refused index" in e for e in n1.repair_events), n1.repair_events
    n1.tick()
    n1.tick()
    hbs = [m for m in drain(n1, st) if isinstance(m, Heartbeat) and m.to_id == 2]
    assert hbs and hbs[-1].repair == REPAIR_ENTER
    # Its acknowledgements no longer count: node 3 alone with the leader commits.
    assert not pr.counts


def test_heartbeat_commit_is_bounded_by_what_matched_this_leader() -> None:
    # A follower whose old log tail differs from the leader's must not commit it from a
    # heartbeat that trusted a stale match index.
    st = MemoryStorage(VOTERS)
    st.append([Entry(Term(1), Index(1)), Entry(Term(1), Index(2)), Entry(Term(1), Index(3))])
    st.set_hard_state(HardState(Term(1), None, Index(1)))
    n2 = core(2, st)
    n2.step(Heartbeat(Term(2), NodeId(1), NodeId(2), Index(3), 1))
    out = drain(n2, st)
    assert n2.log.committed == 1
    resp = [m for m in out if isinstance(m, HeartbeatResponse)][-1]
    assert resp.lagging
    # An append proves the match; then the heartbeat commit applies.
    n2.step(AppendEntries(Term(2), NodeId(1), NodeId(2), Index(3), Term(1), (), Index(3)))
    drain(n2, st)
    assert n2.log.committed == 3


def test_repair_done_waits_two_election_timeouts_after_a_restart() -> None:
    st = MemoryStorage(VOTERS, Standing.REPAIRING)
    n2 = core(2, st)
    n2.step(Heartbeat(Term(4), NodeId(1), NodeId(2), Index(0), 1, REPAIR_DONE))
    assert n2.standing is Standing.REPAIRING
    for _ in range(20):
        n2.tick()
    n2.step(Heartbeat(Term(4), NodeId(1), NodeId(2), Index(0), 2, REPAIR_DONE))
    assert n2.standing is Standing.VOTER and n2.vote == 1  # its vote in term 4 is spent


def test_join_queries_bypass_the_term_rules() -> None:
    st = MemoryStorage(VOTERS)
    st.append([Entry(Term(3), Index(1))])
    st.set_hard_state(HardState(Term(3), None, Index(0)))
    n3 = core(3, st)
    n3.step(JoinQuery(Term(0), NodeId(1), NodeId(3), 99))
    answers = [m for m in drain(n3, st) if isinstance(m, JoinQueryResponse)]
    assert answers == [JoinQueryResponse(Term(3), NodeId(3), NodeId(1), 99, False)]
    assert n3.term == 3


# -- the durability mark -------------------------------------------------------------------


def log_of(terms: list[int]) -> MemoryStorage:
    st = MemoryStorage(VOTERS)
    st.append([Entry(Term(t), Index(i + 1)) for i, t in enumerate(terms)])
    return st


def test_assess_durability() -> None:
    st = log_of([1, 1, 2, 2])
    hard = HardState(Term(2), NodeId(2), Index(3))
    whole = DurabilityMark(Term(2), NodeId(2), Standing.VOTER, Index(3), Term(2))
    assert assess_durability(hard, st, whole) == (hard, None)
    assert assess_durability(hard, st, None) == (hard, None)
    # The log lost the marked entry: REPAIRING.
    ahead = DurabilityMark(Term(2), NodeId(2), Standing.VOTER, Index(6), Term(2))
    fixed, why = assess_durability(hard, st, ahead)
    assert fixed.standing is Standing.REPAIRING and why and "entry 6" in why
    # A different term at the marked index: REPAIRING.
    other = DurabilityMark(Term(2), NodeId(2), Standing.VOTER, Index(2), Term(2))
    assert assess_durability(hard, st, other)[0].standing is Standing.REPAIRING
    # Term and vote behind the mark are taken from it.
    later = DurabilityMark(Term(5), NodeId(3), Standing.VOTER, Index(3), Term(2))
    fixed, why = assess_durability(hard, st, later)
    assert (fixed.term, fixed.vote) == (5, 3) and fixed.standing is Standing.REPAIRING and why
    # A fresh database (JOINING) with a mark of a voter: the cluster existed.
    fresh = MemoryStorage(VOTERS, Standing.JOINING)
    fixed, why = assess_durability(fresh.hard_state, fresh, whole)
    assert fixed.standing is Standing.REPAIRING and fixed.term == 2
    # A node that never joined lost nothing anyone relied on.
    joining = DurabilityMark(Term(0), None, Standing.JOINING, Index(0), Term(0))
    assert assess_durability(fresh.hard_state, fresh, joining)[0].standing is Standing.JOINING
    # A compacted marked index is covered by the snapshot.
    st.create_snapshot(Index(4), b"", VOTERS)
    assert assess_durability(hard, st, whole) == (hard, None)


def ready(entries: tuple[Entry, ...] = (), hard: HardState | None = None) -> Ready:
    return Ready(hard, entries, None, (), (), (), None, (), True)


def test_the_mark_goes_down_before_a_truncation_and_up_on_refresh() -> None:
    st = log_of([1, 1, 1, 1])
    mark = DurabilityMark(Term(1), None, Standing.VOTER, Index(4), Term(1))
    assert lower_mark_before(mark, ready((Entry(Term(1), Index(5)),)), st) is None
    lowered = lower_mark_before(mark, ready((Entry(Term(2), Index(3)),)), st)
    assert lowered is not None and (lowered.index, lowered.index_term) == (2, 1)
    hard = HardState(Term(1), None, Index(2))
    assert raise_mark_after(mark, hard, (Index(9), Term(1)), refresh=False) is None
    moved = raise_mark_after(mark, hard, (Index(9), Term(1)), refresh=True)
    assert moved is not None and moved.index == 9
    voted = raise_mark_after(mark, HardState(Term(3), NodeId(2), Index(2)), (Index(9), Term(1)),
                             refresh=False)
    assert voted is not None and (voted.term, voted.vote, voted.index) == (3, 2, 4)


# -- the simulator's disk faults, and the checker with the fixes reverted ---------------------


class VotesWhileRepairing(RaftNode):
    """D3 reverted: a node that lost durable state votes and campaigns as if whole."""

    def _may_vote(self) -> bool:
        return True

    def _may_campaign(self) -> bool:
        return True


class ProbeFloorAtMatch(Progress):
    """D2 reverted: the leader never probes below the match index it recorded."""

    def maybe_decrease_to(self, rejected: Index, hint_next: Index, boot: int) -> bool:
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = Index(self.match + 1)
            return True
        if self.next - 1 != rejected:
            return False
        self.next = Index(max(min(rejected, hint_next), self.match + 1))
        self.probe_sent = False
        return True


class NeverProbesBelowMatch(RaftNode):
    progress_class = ProbeFloorAtMatch

    def _note_follower_standing(self, pr: Progress, repairing: bool, boot: int) -> None:
        match = pr.match
        super()._note_follower_standing(pr, repairing, boot)
        pr.match = match  # keeps trusting the old match
        pr.next = Index(max(pr.next, match + 1))


SAFETY = ("election-safety", "log-matching", "state-machine-safety", "leader-completeness",
          "durability")


def test_the_simulator_catches_a_node_that_votes_after_losing_state() -> None:
    # Such a node also stalls some runs (a liveness failure): look past those for the safety
    # violation it causes.
    found = None
    for seed in range(60):
        for n in (3, 5):
            r = simulate(seed, n, node_factory=VotesWhileRepairing)
            if r.violation is not None and r.violation.invariant in SAFETY:
                found = (seed, r.violation.invariant)
                break
        if found:
            break
    assert found is not None, "votes after a disk loss broke no safety property in 60 seeds"


def test_the_simulator_catches_a_leader_that_trusts_a_lost_match() -> None:
    found = first_violation(NeverProbesBelowMatch, 60)
    assert found is not None, "a follower refused forever went unnoticed"
    assert found[1] == "liveness"


def test_a_majority_that_lost_its_disks_elects_nobody() -> None:
    sim = Simulator(5, 3, fault_ticks=0, schedule=[])
    for _ in range(150):
        sim._step_tick(allow_proposals=True)
    leader = sim._leader()
    assert leader is not None and leader.core is not None
    committed = leader.core.log.committed
    assert committed > 10
    for victim in [sn for sn in sim.nodes.values() if sn is not leader][:1] + [leader]:
        sim._crash(victim)
        victim.wipe()
        victim.start()
    survivor = next(sn for sn in sim.nodes.values() if sn.storage.last_index() > 0)
    for _ in range(400):
        sim._step_tick(allow_proposals=False)
        assert sim._leader() is None, "a cluster whose majority lost its disks elected a leader"
    assert survivor.storage.last_index() >= committed  # and the survivor kept its log
    standings = sorted(sn.core.standing for sn in sim.nodes.values() if sn.core is not None)
    assert standings == [Standing.VOTER, Standing.REPAIRING, Standing.REPAIRING]


def test_every_simulated_disk_fault_leaves_a_repaired_voter() -> None:
    for kind in ("wipe", "truncate", "corrupt"):
        hit = 0
        for seed in range(10):
            from tests.sim.raft_sim import Fault

            sched = [Fault(120, kind, (2, 10))]
            sim = Simulator(seed, 3, fault_ticks=200, schedule=sched)
            r = sim.run()
            assert r.violation is None, (kind, seed, r.violation)
            if r.counters.get(f"disk_{kind}"):
                hit += 1
                assert r.counters.get("repaired"), (kind, seed)
                node2: SimNode = sim.nodes[NodeId(2)]
                assert node2.core is not None and node2.core.standing is Standing.VOTER
        assert hit >= 5, (kind, hit)


def test_a_follower_claiming_entries_past_the_leader_is_shown_diverged_and_not_counted() -> None:
    # Only possible after a disk fault nobody could see (docs/architecture.md): a follower
    # that committed entries the new leader never had.
    n1, st = elected_leader()
    term = n1.term
    last = n1.log.last_index()
    n1.step(AppendEntriesResponse(term, NodeId(2), NodeId(1), True, Index(last + 5), boot=3))
    pr = n1.progress[NodeId(2)]
    assert pr.match < last + 5 and pr.diverged and not pr.counts
    assert n1.status().peers[NodeId(2)].diverged and n1.divergences == 1
    # Node 3 alone with the leader still commits; node 2's claims never count.
    n1.propose(b"x")
    drain(n1, st)
    n1.step(AppendEntriesResponse(term, NodeId(3), NodeId(1), True, n1.log.last_index(), boot=4))
    assert n1.log.committed == n1.log.last_index()


def test_a_follower_whose_committed_entry_conflicts_with_the_leader_says_so() -> None:
    st = MemoryStorage(VOTERS)
    st.append([Entry(Term(1), Index(i)) for i in (1, 2, 3)])
    st.set_hard_state(HardState(Term(1), None, Index(3)))
    n2 = core(2, st)
    # A leader of term 3 whose log has term 2 at index 3, where our committed entry has 1.
    n2.step(AppendEntries(Term(3), NodeId(1), NodeId(2), Index(3), Term(2), (), Index(3)))
    out = [m for m in drain(n2, st) if isinstance(m, AppendEntriesResponse)]
    assert out and not out[-1].success and out[-1].diverged
    assert n2.status().conflict is not None and "index 3" in n2.status().conflict
    assert st.last_index() == 3 and st.term(Index(3)) == 1  # committed entries are kept
    # Below the commit index, a matching prefix is still a plain success (openraft#511).
    n2.step(AppendEntries(Term(3), NodeId(1), NodeId(2), Index(2), Term(1), (), Index(3)))
    ok = [m for m in drain(n2, st) if isinstance(m, AppendEntriesResponse)]
    assert ok[-1].success and not ok[-1].diverged
    # The leader that hears `diverged` stops counting that follower.
    n1, st1 = elected_leader()
    n1.step(AppendEntriesResponse(n1.term, NodeId(2), NodeId(1), False, Index(0), Index(1),
                                  boot=5, diverged=True))
    assert n1.progress[NodeId(2)].diverged and not n1.progress[NodeId(2)].counts
