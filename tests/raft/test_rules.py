"""The Raft core, rule by rule (Raft paper Figure 2 and section 5; thesis 3.10, 5, 6.2, 9.6)."""

from __future__ import annotations

import random
import zlib

import pytest

from node.raft import (
    AppendEntries,
    AppendEntriesResponse,
    Config,
    Entry,
    EntryKind,
    Heartbeat,
    Index,
    InstallSnapshot,
    InstallSnapshotResponse,
    Membership,
    MemoryStorage,
    NodeId,
    NotLeader,
    ProposalDropped,
    RaftNode,
    Ready,
    RequestVote,
    RequestVoteResponse,
    Role,
    SnapshotMeta,
    Term,
    TimeoutNow,
)
from node.raft._quorum import majority

from .harness import Net

# ---------------------------------------------------------------------------------------------
# 5.2 Leader election
# ---------------------------------------------------------------------------------------------


def test_single_node_elects_itself_and_commits() -> None:
    net = Net(1)
    node = net.elect(1)
    assert node.term == 1
    idx = node.propose(b"a")
    net.drive()
    assert [e.data for e in net.applied[1] if e.kind is EntryKind.NORMAL] == [b"a"]
    assert idx == 2  # index 1 is the leader's no-op


def test_three_nodes_elect_exactly_one_leader_and_term_moves_by_one() -> None:
    net = Net(3)
    net.elect(1)
    assert net.leaders() == [1]
    assert all(net.nodes[i].term == 1 for i in net.ids)
    assert all(net.nodes[i].leader_id == 1 for i in net.ids)


def test_vote_is_in_the_same_ready_as_the_granted_response() -> None:
    # Ready contract: term and vote are persisted before the vote response is sent.
    net = Net(3)
    net.elect(1)
    for i in (2, 3):
        for rd in net.readies[i]:
            granted = [
                m
                for m in rd.messages
                if isinstance(m, RequestVoteResponse) and m.granted and not m.pre_vote
            ]
            if granted:
                assert rd.hard_state is not None
                assert rd.hard_state.vote == 1 and rd.hard_state.term == granted[0].term
                assert rd.must_sync
                break
        else:
            raise AssertionError(f"n{i} never granted a vote")


def test_one_vote_per_term() -> None:
    net = Net(3)
    n3 = net.nodes[3]
    n3.step(RequestVote(Term(1), NodeId(1), NodeId(3), Index(0), Term(0)))
    n3.step(RequestVote(Term(1), NodeId(2), NodeId(3), Index(0), Term(0)))
    rd = n3.ready()
    answers = {m.to_id: m.granted for m in rd.messages if isinstance(m, RequestVoteResponse)}
    assert answers == {1: True, 2: False}
    assert rd.hard_state is not None and rd.hard_state.vote == 1


def test_vote_refused_to_a_less_up_to_date_log() -> None:
    # 5.4.1: last term wins, then length.
    net = Net(3, logs={1: [1], 2: [1, 1], 3: [1, 1]}, terms={1: 1, 2: 1, 3: 1})
    n2 = net.nodes[2]
    n2.step(RequestVote(Term(2), NodeId(1), NodeId(2), Index(1), Term(1)))
    rd = n2.ready()
    votes = [m for m in rd.messages if isinstance(m, RequestVoteResponse)]
    assert votes and not votes[0].granted
    # A log with a higher last term wins even when shorter.
    n3 = net.nodes[3]
    n3.step(RequestVote(Term(3), NodeId(1), NodeId(3), Index(1), Term(2)))
    rd = n3.ready()
    votes = [m for m in rd.messages if isinstance(m, RequestVoteResponse)]
    assert votes and votes[0].granted


def test_stale_log_cannot_win_an_election() -> None:
    net = Net(3, logs={1: [1], 2: [1, 1], 3: [1, 1]}, terms={1: 1, 2: 1, 3: 1})
    n1 = net.nodes[1]
    for _ in range(200):
        n1.tick()
        net.deliver()
    assert n1.role is not Role.LEADER
    assert n1.term == 1  # pre-vote failed every time: no term inflation


def test_pre_vote_keeps_a_partitioned_node_from_disrupting_the_leader() -> None:
    net = Net(3)
    net.elect(1)
    net.cut.add(3)
    for _ in range(100):
        net.tick_all()
    n3 = net.nodes[3]
    assert n3.term == 1, "an isolated node must not raise its term (thesis 9.6)"
    net.cut.clear()
    net.tick_all(5)
    assert net.leaders() == [1]
    assert net.nodes[1].term == 1


def test_check_quorum_leader_steps_down_when_cut_off() -> None:
    net = Net(3, election_ticks=10)
    leader = net.elect(1)
    net.cut.add(1)
    for _ in range(25):
        net.tick_all()
    assert leader.role is Role.FOLLOWER
    assert net.leaders() and net.leaders()[0] != 1


def test_follower_in_lease_ignores_higher_term_vote() -> None:
    net = Net(3)
    net.elect(1)
    n2 = net.nodes[2]
    n2.step(RequestVote(Term(5), NodeId(3), NodeId(2), Index(9), Term(9)))
    assert n2.term == 1 and not n2.has_ready()


def test_stale_term_messages_are_ignored() -> None:
    net = Net(3)
    net.elect(1)
    net.nodes[1].propose(b"a")
    net.deliver()
    n2 = net.nodes[2]
    before = (n2.term, n2.log.last_index(), n2.log.committed)
    # An AppendEntries of an older term must not touch the log; the sender learns our term.
    n2.step(
        AppendEntries(
            Term(0),
            NodeId(3),
            NodeId(2),
            Index(0),
            Term(0),
            (Entry(Term(0), Index(1), data=b"bad"),),
            Index(1),
        )
    )
    rd = n2.ready()
    assert (n2.term, n2.log.last_index(), n2.log.committed) == before
    assert any(isinstance(m, AppendEntriesResponse) and m.term == 1 for m in rd.messages)
    n2.advance(rd)


# ---------------------------------------------------------------------------------------------
# 5.3 Log replication
# ---------------------------------------------------------------------------------------------


def test_replication_commits_on_all_nodes_in_order() -> None:
    net = Net(3)
    leader = net.elect(1)
    for k in range(20):
        leader.propose(b"m%d" % k)
    net.deliver()
    net.tick_all(2)  # heartbeats carry the commit index to followers
    for i in net.ids:
        datas = [e.data for e in net.applied[i] if e.kind is EntryKind.NORMAL]
        assert datas == [b"m%d" % k for k in range(20)]


def test_new_leader_appends_a_noop_of_its_term() -> None:
    net = Net(3)
    leader = net.elect(1)
    e = leader.log.entries(Index(1), Index(2))[0]
    assert (e.kind, e.term) == (EntryKind.NOOP, leader.term)


def test_append_entries_are_batched_by_count_and_bytes() -> None:
    net = Net(3, max_append_entries=8, max_append_bytes=1000)
    leader = net.elect(1)
    net.delivered.clear()
    for _k in range(40):
        leader.propose(bytes(100))
    net.deliver()
    appends = [m for m in net.delivered if isinstance(m, AppendEntries) and m.entries]
    assert appends
    assert max(len(m.entries) for m in appends) <= 8
    assert max(sum(len(e.data) + 24 for e in m.entries) for m in appends) <= 1000
    assert max(len(m.entries) for m in appends) > 1  # many entries per message


def test_pipelining_sends_several_appends_before_any_answer() -> None:
    net = Net(3, max_append_entries=4, max_inflight_appends=5)
    leader = net.elect(1)
    net.deliver()
    for _k in range(40):
        leader.propose(b"x")
    rd = leader.ready()
    to2 = [m for m in rd.early_messages if isinstance(m, AppendEntries) and m.to_id == 2]
    assert len(to2) == 5  # max_inflight_appends outstanding, not one round trip each
    leader.advance(rd)


def test_fast_backoff_skips_a_whole_term_per_rejection() -> None:
    # Follower 3 holds 30 entries of a term the leader never had (thesis 5.4.2 back-off).
    logs = {1: [1] * 5 + [3] * 5, 2: [1] * 5 + [3] * 5, 3: [1] * 5 + [2] * 30}
    net = Net(3, logs=logs, terms={1: 3, 2: 3, 3: 2})
    net.elect(1)
    net.nodes[1].propose(b"after")
    net.deliver()
    rejections = [
        m
        for m in net.delivered
        if isinstance(m, AppendEntriesResponse) and m.from_id == 3 and not m.success
    ]
    assert 1 <= len(rejections) <= 3, f"{len(rejections)} rejections: back-off is per entry"
    n3 = net.nodes[3]
    assert n3.log.last_index() == net.nodes[1].log.last_index()
    assert [n3.log.term(Index(i)) for i in range(1, 11)] == [1] * 5 + [3] * 5


def test_follower_commit_is_bounded_by_the_last_new_entry() -> None:
    # etcd#10166: leader_commit may be past what this message proves the follower holds.
    net = Net(3)
    n2 = net.nodes[2]
    n2.step(
        AppendEntries(
            Term(1),
            NodeId(1),
            NodeId(2),
            Index(0),
            Term(0),
            (Entry(Term(1), Index(1)), Entry(Term(1), Index(2))),
            Index(10),
        )
    )
    assert n2.log.committed == 2


def test_follower_truncates_conflicting_suffix() -> None:
    net = Net(3, logs={2: [1, 1, 2, 2]}, terms={2: 2})
    n2 = net.nodes[2]
    n2.step(
        AppendEntries(
            Term(3),
            NodeId(1),
            NodeId(2),
            Index(2),
            Term(1),
            (Entry(Term(3), Index(3), data=b"new"),),
            Index(0),
        )
    )
    assert n2.log.last_index() == 3
    assert n2.log.term(Index(3)) == 3
    rd = n2.ready()
    assert rd.entries[0].index == 3 and rd.must_sync
    n2.advance(rd)


def holds_index_2_and_carries_noop(net: Net, m: object) -> bool:
    return (
        isinstance(m, AppendEntries)
        and net.storage[m.to_id].last_index() >= 2
        and any(e.index == 3 for e in m.entries)
    )


def test_figure8_old_term_entry_not_committed_by_counting_replicas() -> None:
    # Raft paper Figure 8 (c): S1 leads term 4 with index 2 from term 2; once S2 and S3 have it
    # a majority holds index 2, but it must not commit until an entry of term 4 (the no-op at
    # index 3) is on a majority.
    logs = {1: [1, 2], 2: [1], 3: [1], 4: [1], 5: [1, 3]}
    net = Net(5, logs=logs, terms={1: 3, 2: 3, 3: 3, 4: 3, 5: 3}, max_append_entries=1)
    n1 = net.nodes[1]
    for _ in range(40):
        n1.tick()
        if n1.role is not Role.FOLLOWER:
            break
    # S4 and S5 hear nothing. S2 and S3 reject the first probe, get index 2, and then lose
    # every append that carries the no-op.
    net.cut.update({4, 5})
    net.deliver(drop=lambda m: holds_index_2_and_carries_noop(net, m))
    assert n1.role is Role.LEADER and n1.term == 4
    assert n1.progress[NodeId(3)].match == 2 and n1.progress[NodeId(2)].match == 2
    assert n1.log.committed < 2, "an entry of an earlier term was committed by counting replicas"
    # Once the no-op of term 4 reaches a majority, index 2 commits with it.
    net.tick(1, 3)
    net.deliver()
    assert n1.log.committed == 3


def test_figure8_checker_flags_a_core_that_counts_old_replicas() -> None:
    class CountsReplicas(RaftNode):
        def _maybe_commit(self) -> bool:
            matches = sorted((pr.match for pr in self.progress.values()), reverse=True)
            idx = matches[majority(len(self.voters)) - 1]
            if idx > self.log.committed:
                self.log.committed = idx
                return True
            return False

    logs = {1: [1, 2], 2: [1], 3: [1], 4: [1], 5: [1, 3]}
    net = Net(
        5,
        logs=logs,
        terms={1: 3, 2: 3, 3: 3, 4: 3, 5: 3},
        max_append_entries=1,
        factory=CountsReplicas,
    )
    n1 = net.nodes[1]
    for _ in range(40):
        n1.tick()
        if n1.role is not Role.FOLLOWER:
            break
    net.cut.update({4, 5})
    net.deliver(drop=lambda m: holds_index_2_and_carries_noop(net, m))
    assert n1.log.committed == 2  # the broken core commits the term-2 entry
    # Figure 8 (d): S1 crashes, S5 (last term 3) wins with S2, S3, S4 and overwrites index 2.
    net.crash(1)
    for i in (2, 3, 4):
        net.restart(i)  # forget S1 as leader (no lease), keep term, vote and log
    net.cut.clear()
    n5 = net.nodes[5]
    for _ in range(100):
        n5.tick()
        net.deliver()
        if n5.role is Role.LEADER:
            break
    assert n5.role is Role.LEADER
    net.deliver()
    assert net.nodes[3].log.term(Index(2)) == 3, "committed index 2 (term 2) was overwritten"


# ---------------------------------------------------------------------------------------------
# Proposals
# ---------------------------------------------------------------------------------------------


def test_propose_on_follower_raises_not_leader_with_hint() -> None:
    net = Net(3)
    net.elect(2)
    with pytest.raises(NotLeader) as exc:
        net.nodes[1].propose(b"x")
    assert exc.value.leader_id == 2
    fresh = Net(3)
    with pytest.raises(NotLeader) as exc:
        fresh.nodes[1].propose(b"x")
    assert exc.value.leader_id is None


def test_leader_losing_office_reports_dropped_proposals() -> None:
    net = Net(3)
    leader = net.elect(1)
    net.cut.add(1)
    idx = [leader.propose(b"p%d" % k) for k in range(3)]
    net.drive()
    for _ in range(25):
        leader.tick()
        net.deliver()
    assert leader.role is Role.FOLLOWER
    dropped = [i for rd in net.readies[1] for i in rd.dropped]
    assert dropped == idx


# ---------------------------------------------------------------------------------------------
# Snapshots and compaction (thesis chapter 5)
# ---------------------------------------------------------------------------------------------


def test_lagging_follower_gets_snapshot_in_chunks() -> None:
    net = Net(3, max_snapshot_chunk_bytes=10)
    leader = net.elect(1)
    net.crash(3)
    for k in range(10):
        leader.propose(b"v%d" % k)
    net.deliver()
    applied = leader.log.applied
    snapshot_data = b"state-at-%d" % applied + bytes(40)
    net.storage[1].create_snapshot(applied, snapshot_data, (NodeId(1), NodeId(2), NodeId(3)))
    assert net.storage[1].first_index() == applied + 1
    net.restart(3)
    net.delivered.clear()
    net.tick_all(6)
    chunks = [m for m in net.delivered if isinstance(m, InstallSnapshot) and m.to_id == 3]
    assert len(chunks) >= 5 and all(len(m.chunk) <= 10 for m in chunks)
    snaps = [rd.snapshot for rd in net.readies[3] if rd.snapshot is not None]
    assert snaps and snaps[-1].data == snapshot_data and snaps[-1].meta.index == applied
    assert net.storage[3].snapshot().meta.index == applied
    # The follower continues replicating after the snapshot.
    leader.propose(b"after")
    net.deliver()
    net.tick_all(2)
    assert net.nodes[3].log.committed == leader.log.committed
    assert net.applied[3][-1].data == b"after"


def test_snapshot_chunks_are_checked_staged_and_installed_only_once_prepared() -> None:
    """A follower keeps no snapshot bytes: each chunk that follows the last one, with a good
    CRC, inside the size, goes to the driver; a damaged or truncated one is refused (the
    answer names the offset expected); the whole is installed only once the driver has
    prepared it, and a refused install makes the leader send it again from the start."""
    st = MemoryStorage((NodeId(1), NodeId(2), NodeId(3)))
    f = RaftNode(Config(NodeId(2)), st, random.Random(0))
    meta = SnapshotMeta(Index(5), Term(1), Membership.of((NodeId(1), NodeId(2), NodeId(3))))
    data = b"0123456789abcdef"

    def chunk(off: int, piece: bytes, done: bool, crc: int | None = None) -> InstallSnapshot:
        return InstallSnapshot(Term(1), NodeId(1), NodeId(2), meta, off, piece, done, len(data),
                               zlib.crc32(piece) if crc is None else crc)

    def step(msg: InstallSnapshot | None = None) -> tuple[Ready, list[InstallSnapshotResponse]]:
        if msg is not None:
            f.step(msg)
        rd = f.ready()
        st.stage_snapshot(rd.snapshot_chunks)
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        f.advance(rd)
        return rd, [m for m in rd.messages if isinstance(m, InstallSnapshotResponse)]

    rd, answers = step(chunk(0, data[:8], False, crc=zlib.crc32(data[:8]) ^ 1))  # damaged
    assert rd.snapshot_chunks == () and [a.next_offset_bytes for a in answers] == [0]
    rd, answers = step(chunk(0, data[:8], False))
    assert len(rd.snapshot_chunks) == 1 and answers[0].next_offset_bytes == 8
    rd, answers = step(chunk(8, data[8:12], True))  # "done" short of the size: truncated
    assert rd.snapshot_chunks == () and answers[0].next_offset_bytes == 8
    rd, answers = step(chunk(12, data[12:], True))  # not where the last one ended
    assert answers[0].next_offset_bytes == 8 and not answers[0].done
    rd, answers = step(chunk(8, data[8:], True))
    assert rd.snapshot_received == meta and answers == []
    assert st.staged_snapshot(meta) == data and f.log.committed == 0
    _, answers = step(chunk(8, data[8:], True))  # sent again while being installed
    assert answers[0].next_offset_bytes == len(data) and not answers[0].done
    f.snapshot_prepared(meta, None)  # it did not decode: fetched again, not installed
    rd, answers = step()
    assert rd.snapshot is None and st.snapshot().meta.index == 0
    assert answers[0].next_offset_bytes == 0 and not answers[0].done
    step(chunk(0, data[:8], False))
    rd, _ = step(chunk(8, data[8:], True))
    assert rd.snapshot_received == meta
    f.snapshot_prepared(meta, st.staged_snapshot(meta))
    rd, answers = step()
    assert rd.snapshot is not None and rd.snapshot.data == data
    assert answers[0].done and answers[0].snapshot_index == 5
    assert st.snapshot().meta.index == 5 and f.log.committed == 5


def test_restart_recovers_term_vote_and_log() -> None:
    net = Net(3)
    leader = net.elect(1)
    for k in range(5):
        leader.propose(b"%d" % k)
    net.deliver()
    st = net.storage[2]
    node = RaftNode(Config(NodeId(2)), st, random.Random(0))
    assert node.term == 1 and node.vote == 1
    assert node.log.last_index() == leader.log.last_index()


def test_commit_past_log_in_storage_is_refused() -> None:
    st = MemoryStorage((NodeId(1),))
    from node.raft import HardState

    st.set_hard_state(HardState(Term(1), None, Index(5)))
    with pytest.raises(ValueError, match="past the last index"):
        RaftNode(Config(NodeId(1)), st, random.Random(0))


# ---------------------------------------------------------------------------------------------
# Leadership transfer (thesis 3.10)
# ---------------------------------------------------------------------------------------------


def test_leadership_transfer_hands_over_at_once() -> None:
    net = Net(3)
    leader = net.elect(1)
    leader.propose(b"a")
    net.deliver()
    leader.transfer_leadership(NodeId(3))
    with pytest.raises(ProposalDropped):
        leader.propose(b"b")
    net.deliver()  # no ticks: the handover needs no election timeout
    assert net.leaders() == [3]
    assert net.nodes[3].term == 2
    assert any(isinstance(m, TimeoutNow) and m.to_id == 3 for m in net.delivered)


def test_transfer_to_lagging_follower_catches_it_up_first() -> None:
    net = Net(3)
    leader = net.elect(1)
    net.cut.add(3)
    for k in range(5):
        leader.propose(b"%d" % k)
    net.deliver()
    net.cut.clear()
    leader.transfer_leadership(NodeId(3))
    net.deliver()
    net.tick_all(3)
    assert net.leaders() == [3]
    assert net.nodes[3].log.last_index() >= 7


# ---------------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------------


def test_status_reports_role_term_indexes_and_peer_progress() -> None:
    net = Net(3)
    leader = net.elect(1)
    leader.propose(b"a")
    net.deliver()
    s = leader.status()
    assert (s.role, s.term, s.leader_id) == (Role.LEADER, 1, 1)
    assert s.commit_index == 2 and s.applied_index == 2 and s.last_index == 2
    assert {p: st.match_index for p, st in s.peers.items()} == {1: 2, 2: 2, 3: 2}
    f = net.nodes[2].status()
    assert f.role is Role.FOLLOWER and f.leader_id == 1 and not f.peers


def test_heartbeat_commit_never_exceeds_follower_log() -> None:
    net = Net(3)
    n2 = net.nodes[2]
    n2.step(Heartbeat(Term(1), NodeId(1), NodeId(2), Index(50)))
    assert n2.log.committed == 0


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        Config(NodeId(1), election_ticks=2, heartbeat_ticks=2)
    with pytest.raises(ValueError):
        Config(NodeId(0))


def test_leader_counts_its_own_entry_only_once_durable() -> None:
    # Thesis 10.2.1: appends may leave before the leader's own write, but the leader's copy
    # counts towards a majority only after that write.
    net = Net(3)
    leader = net.elect(1)
    net.deliver()
    idx = leader.propose(b"x")
    rd = leader.ready()  # not yet persisted or advanced
    appends = [m for m in rd.early_messages if isinstance(m, AppendEntries) and m.to_id == 2]
    assert appends and appends[0].entries[-1].index == idx
    assert not [m for m in rd.messages if isinstance(m, AppendEntries)]
    n2 = net.nodes[2]
    n2.step(appends[0])
    rd2 = n2.ready()
    net.storage[2].append(rd2.entries)
    n2.advance(rd2)
    for m in rd2.messages:
        leader.step(m)
    assert leader.log.committed < idx, "committed with only one durable copy"
    net.storage[1].append(rd.entries)
    leader.advance(rd)
    assert leader.log.committed == idx


def test_lost_leader_connection_starts_an_election_within_a_few_ticks() -> None:
    net = Net(3, election_ticks=10)
    net.elect(1)
    net.crash(1)
    for i in (2, 3):  # both followers saw the dead leader's connection close
        net.nodes[i].peer_unreachable(NodeId(1))
        assert net.nodes[i].leader_id is None
    ticks = 0
    while not net.leaders() and ticks < 10:
        net.tick_all()
        ticks += 1
    assert net.leaders() and net.leaders()[0] in (2, 3)
    assert ticks <= 4, f"took {ticks} ticks (a full election timeout is 10 to 20)"


def test_lost_link_to_a_live_leader_does_not_depose_it() -> None:
    net = Net(3, election_ticks=10)
    net.elect(1)
    net.tick_all(3)
    net.nodes[2].peer_unreachable(NodeId(1))  # only node 2's link broke; node 3 still hears 1
    for _ in range(40):
        net.tick_all()
    assert net.leaders() == [1] and net.nodes[1].term == 1
