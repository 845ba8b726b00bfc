"""Membership changes, rule by rule (single-server changes, thesis 4.1 to 4.3;
node/raft/_conf_change.py, _membership.py, _quorum.py)."""

from __future__ import annotations

import pytest

from node.raft import (
    AppendEntries,
    ChangeKind,
    ConfChange,
    ConfChangeError,
    EntryKind,
    HardState,
    Index,
    Membership,
    MemoryStorage,
    NodeId,
    RequestVote,
    Role,
)
from node.raft._conf_change import FAREWELL_HEARTBEATS
from node.raft._quorum import VoteResult, committed_index, majority, overlapping, vote_result

from .harness import Net

N = NodeId


def add(node_id: int) -> ConfChange:
    return ConfChange(
        ChangeKind.ADD_LEARNER, N(node_id), f"127.0.0.1:{7100 + node_id}", f"127.0.0.1:{7000 + node_id}"
    )


def promote(node_id: int) -> ConfChange:
    return ConfChange(ChangeKind.PROMOTE, N(node_id))


def remove(node_id: int) -> ConfChange:
    return ConfChange(ChangeKind.REMOVE, N(node_id))


def refused(code: str, fn: object, *args: object) -> ConfChangeError:
    with pytest.raises(ConfChangeError) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.code == code, info.value
    return info.value


def committed_leader(n: int = 3) -> tuple[Net, object]:
    net = Net(n)
    leader = net.elect(1)
    net.deliver()  # the no-op commits: changes are allowed from here on
    return net, leader


def grow(net: Net, leader: object, node_id: int) -> None:
    """Admit `node_id` as a learner, let it catch up, promote it."""
    net.add(node_id)
    leader.propose_conf_change(add(node_id))  # type: ignore[attr-defined]
    net.deliver()
    net.tick_all(3)  # heartbeats: the learner answers and counts as active
    leader.propose_conf_change(promote(node_id))  # type: ignore[attr-defined]
    net.deliver()


# -- quorum arithmetic ---------------------------------------------------------------------------


def test_majorities() -> None:
    assert [majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]
    voters = (N(1), N(2), N(3))
    assert vote_result(voters, {N(1): True}) is VoteResult.PENDING
    assert vote_result(voters, {N(1): True, N(2): True}) is VoteResult.WON
    assert vote_result(voters, {N(1): True, N(2): False, N(3): False}) is VoteResult.LOST
    # Votes of non-voters (learners, removed nodes) never count.
    assert vote_result(voters, {N(1): True, N(4): True, N(5): True}) is VoteResult.PENDING
    match = {N(1): Index(9), N(2): Index(5), N(3): Index(2)}
    assert committed_index(voters, match.get) == 5
    assert committed_index((N(1), N(2), N(3), N(4)), match.get) == 2


def test_single_server_changes_overlap_and_two_at_once_need_not() -> None:
    three = (N(1), N(2), N(3))
    assert overlapping(three, (*three, N(4)))
    assert overlapping(three, (N(1), N(2)))
    assert overlapping((N(1), N(2)), (N(1),))
    assert not overlapping(three, (*three, N(4), N(5)))  # two added at once
    assert not overlapping(three, (N(1), N(2), N(4)))  # a replace in one step
    assert not overlapping((*three, N(4), N(5)), three)  # two removed at once


def test_membership_entry_round_trips_and_rejects_garbage() -> None:
    m = Membership.of((N(1), N(2)), (N(4),)).with_addresses({N(4): ("h:1", "h:2")})
    assert Membership.decode(m.encode()) == m
    assert m.address(N(4)) == ("h:1", "h:2") and m.address(N(1)) is None
    for bad in (b"", b"[]", b'{"voters":[0]}', b'{"voters":[1],"learners":[1]}'):
        with pytest.raises(ValueError):
            Membership.decode(bad)


def test_changes_to_a_membership() -> None:
    m = Membership.of((N(1), N(2), N(3)))
    m4 = m.apply(add(4))
    assert (m4.voters, m4.learners, m4.max_id) == ((1, 2, 3), (4,), 4)
    assert m4.address(N(4)) == ("127.0.0.1:7104", "127.0.0.1:7004")
    assert m4.apply(promote(4)).voters == (1, 2, 3, 4)
    assert m4.apply(remove(4)) == Membership((N(1), N(2), N(3)), (), (), 4)
    with pytest.raises(ConfChangeError) as info:
        m4.apply(remove(4)).apply(add(4))
    assert info.value.code == "ID_RETIRED"  # a removed id is never given again
    for change, code in [
        (add(2), "ALREADY_MEMBER"),
        (promote(2), "NOT_LEARNER"),
        (promote(9), "UNKNOWN_MEMBER"),
        (remove(9), "UNKNOWN_MEMBER"),
        (ConfChange(ChangeKind.ADD_LEARNER, N(9)), "BAD_CHANGE"),
    ]:
        with pytest.raises(ConfChangeError) as info:
            m4.apply(change)
        assert info.value.code == code
    with pytest.raises(ConfChangeError) as info:
        Membership.of((N(1),)).apply(remove(1))
    assert info.value.code == "LAST_VOTER"


# -- the core ------------------------------------------------------------------------------------


def test_a_learner_receives_the_log_and_never_counts_or_campaigns() -> None:
    net, leader = committed_leader()
    learner = net.add(4)
    index = leader.propose_conf_change(add(4))
    assert leader.learners == (4,) and leader.voters == (1, 2, 3)  # in effect at once
    net.deliver()
    assert leader.log.committed >= index
    assert learner.learners == (4,) and learner.log.membership().address(N(4)) is not None
    leader.propose(b"a")
    net.tick_all(2)  # the commit index travels with the next message: a heartbeat
    assert learner.log.committed == leader.log.committed
    assert [e.data for e in net.applied[4] if e.kind is EntryKind.NORMAL] == [b"a"]
    # With both followers cut off, the learner's acknowledgement does not commit anything.
    net.cut = {2, 3}
    leader.propose(b"b")
    net.deliver()
    assert leader.log.committed < leader.log.last_index()
    assert leader.progress[N(4)].match == leader.log.last_index()
    # The learner never campaigns, however long it hears nothing.
    net.cut = {4}
    net.delivered.clear()
    for _ in range(100):
        learner.tick()
    net.cut = set()
    net.drive()
    assert learner.role is Role.FOLLOWER
    assert not [m for m in net.outbox if isinstance(m, RequestVote) and m.from_id == 4]


def test_promote_waits_for_a_caught_up_learner_and_then_counts_it() -> None:
    net, leader = committed_leader()
    net.add(4)
    net.down.add(4)
    leader.propose_conf_change(add(4))
    net.deliver()
    refused("LEARNER_BEHIND", leader.propose_conf_change, promote(4))
    net.down.discard(4)
    net.tick_all(3)
    leader.propose_conf_change(promote(4))
    net.deliver()
    assert leader.voters == (1, 2, 3, 4)
    # Four voters: a majority is three; two cut off followers stop commitment, one does not.
    net.cut = {2, 3}
    leader.propose(b"x")
    net.deliver()
    assert leader.log.committed < leader.log.last_index()
    net.cut = {3}
    net.deliver()
    leader.propose(b"y")
    net.deliver()
    assert leader.log.committed == leader.log.last_index()


def test_one_change_at_a_time_and_not_before_the_leader_committed_in_its_term() -> None:
    net = Net(3)
    leader = net.nodes[1]
    while leader.role is Role.FOLLOWER:
        leader.tick()
    net.deliver(drop=lambda m: isinstance(m, AppendEntries))  # elected; its no-op is not out
    assert leader.role is Role.LEADER and leader.log.committed < leader.log.last_index()
    err = refused("CHANGE_IN_PROGRESS", leader.propose_conf_change, add(4))
    assert "entry of its term" in str(err)
    net.tick_all(2)  # a heartbeat: the dropped no-op goes out again and commits
    net.add(4)
    net.cut = {2, 3}
    leader.propose_conf_change(add(4))
    net.drive()
    err = refused("CHANGE_IN_PROGRESS", leader.propose_conf_change, add(5))
    assert "not committed" in str(err)
    net.cut = set()
    net.deliver()
    net.add(5)
    leader.propose_conf_change(add(5))  # the first one committed: the next may go
    assert leader.learners == (4, 5)


def test_remove_a_voter_and_the_refusals_of_remove() -> None:
    net, leader = committed_leader(5)
    refused("LEADER_REMOVAL", leader.propose_conf_change, remove(1))
    refused("UNKNOWN_MEMBER", leader.propose_conf_change, remove(9))
    index = leader.propose_conf_change(remove(5))
    net.deliver()
    assert leader.voters == (1, 2, 3, 4)
    removed = net.nodes[5]
    assert removed.voters == (1, 2, 3, 4)  # it received its own removal
    # It gets a few more heartbeats, which tell it the removal is committed, then nothing.
    assert leader.progress[N(5)].farewell_heartbeats == FAREWELL_HEARTBEATS
    net.tick_all(FAREWELL_HEARTBEATS * leader.config.heartbeat_ticks)
    assert N(5) not in leader.progress
    assert removed.log.committed >= index
    net.delivered.clear()
    for _ in range(100):
        removed.tick()
    net.drive()
    assert not [m for m in net.outbox if m.from_id == 5]  # a removed node stops campaigning


def test_a_removal_that_leaves_no_active_majority_is_refused() -> None:
    net, leader = committed_leader(5)
    net.cut = {4, 5}
    net.tick_all(net.nodes[1].config.election_ticks + 1)  # 4 and 5 are no longer active
    assert leader.role is Role.LEADER  # 1, 2, 3 of five
    refused("NO_QUORUM", leader.propose_conf_change, remove(3))
    leader.propose_conf_change(remove(5))  # 1, 2, 3 of 1..4: still a majority
    net.deliver()
    assert leader.voters == (1, 2, 3, 4)


def test_a_node_holding_its_own_uncommitted_removal_still_campaigns() -> None:
    """Two voters; the leader proposes removing the follower and crashes after only the
    follower got the entry. The follower's log is the more up to date, so it must campaign (it
    would refuse its vote to the other) and, leading, commit its removal and step down."""
    net = Net(2)
    leader = net.elect(1)
    net.deliver()
    index = leader.propose_conf_change(remove(2))
    net.deliver(drop=lambda m: m.to_id == 1)  # the acknowledgement is lost
    follower = net.nodes[2]
    assert follower.voters == (1,) and follower.log.committed < index
    # Node 1 restarts having lost the entry: it crashed before its own write of it was
    # durable (a leader sends entries while it writes them, thesis 10.2.1), so it never
    # counted its own copy and the entry was never committed.
    st = net.storage[1]
    st.log = st.log[:index]
    st.set_hard_state(HardState(st.hard_state.term, st.hard_state.vote, Index(index - 1)))
    net.restart(1)
    assert net.nodes[1].voters == (1, 2)
    for _ in range(5):
        net.tick_all(net.nodes[1].config.election_ticks)
    assert net.nodes[1].role is Role.LEADER and net.nodes[1].voters == (1,)
    assert follower.role is Role.FOLLOWER  # it led long enough to commit its removal
    assert follower.log.committed >= index
    for _ in range(5):
        net.tick_all(net.nodes[1].config.election_ticks)
    assert net.nodes[1].role is Role.LEADER  # and the removed node no longer campaigns


def test_an_uncommitted_membership_is_undone_when_its_entry_is_truncated() -> None:
    net, leader = committed_leader(5)
    net.add(6)
    net.cut = {3, 4, 5, 6}
    leader.propose_conf_change(add(6))
    net.deliver()
    assert net.nodes[2].learners == (6,)  # node 2 holds the uncommitted entry
    net.crash(1)
    for i in (3, 4, 5):
        net.nodes[i].peer_unreachable(N(1))  # they saw the leader's connection close
    net.cut = {2}
    new = net.elect(3)
    net.cut = set()
    new.propose(b"other")
    net.tick_all(2)  # a heartbeat brings node 2 in (the first probe was lost)
    assert net.nodes[2].learners == ()  # truncated away: back to the membership before
    assert net.nodes[2].log.membership() == new.log.membership()


def test_a_snapshot_carries_the_membership_and_a_restart_finds_it_in_the_log() -> None:
    net, leader = committed_leader()
    grow(net, leader, 4)
    assert net.nodes[4].voters == (1, 2, 3, 4)
    leader.propose(b"a")
    net.deliver()
    # Restart from the log: the CONFIG entries give the membership back.
    net.restart(2)
    assert net.nodes[2].voters == (1, 2, 3, 4) and net.nodes[2].learners == ()
    # Compact node 1 and admit a node that can only be brought up by the snapshot.
    applied = leader.log.applied
    st: MemoryStorage = net.storage[1]
    st.create_snapshot(applied, b"state", leader.membership_at(applied))
    assert st.snapshot().meta.membership.voters == (1, 2, 3, 4)
    net.add(5)
    leader.propose_conf_change(add(5))
    net.deliver()
    net.tick_all(3)
    assert net.storage[5].snapshot().meta.index == applied
    assert net.nodes[5].learners == (5,) and net.nodes[5].voters == (1, 2, 3, 4)


def test_ready_reports_each_change_of_membership() -> None:
    net, leader = committed_leader()
    net.readies[2].clear()
    net.add(4)
    leader.propose_conf_change(add(4))
    net.deliver()
    seen = [rd.membership for rd in net.readies[2] if rd.membership is not None]
    assert [m.learners for m in seen] == [(4,)]


def test_a_new_member_may_win_elections_once_promoted() -> None:
    net, leader = committed_leader()
    grow(net, leader, 4)
    net.crash(1)
    for i in (2, 3, 4):
        net.nodes[i].peer_unreachable(N(1))
    new = net.elect(4)
    assert new.role is Role.LEADER and new.voters == (1, 2, 3, 4)
    assert len(net.leaders()) == 1
