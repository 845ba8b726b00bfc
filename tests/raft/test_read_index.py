"""ReadIndex, rule by rule (Ongaro's thesis 6.4; node/raft/_read_index.py)."""

from __future__ import annotations

import pytest

from node.raft import (
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    NotLeader,
    ReadState,
    Role,
)

from .harness import Net


def read_states(net: Net, i: int) -> list[ReadState]:
    return [rs for rd in net.readies[i] for rs in rd.read_states]


def dropped_reads(net: Net, i: int) -> list[int]:
    return [ctx for rd in net.readies[i] for ctx in rd.dropped_reads]


def heartbeats(net: Net) -> list[Heartbeat]:
    return [m for m in net.delivered if isinstance(m, Heartbeat)]


def test_read_is_confirmed_by_a_heartbeat_round_with_no_log_entry_and_no_fsync() -> None:
    net = Net(3)
    leader = net.elect(1)
    leader.propose(b"a")
    net.deliver()
    last, committed = leader.log.last_index(), leader.log.committed
    net.readies[1].clear()
    leader.read_index(7)
    net.drive()
    assert read_states(net, 1) == []  # not before a quorum answered
    net.deliver()
    assert read_states(net, 1) == [ReadState(7, committed)]
    assert leader.log.last_index() == last  # no log entry
    rd = next(rd for rd in net.readies[1] if rd.read_states)
    assert not rd.must_sync and not rd.entries and rd.hard_state is None


def test_concurrent_reads_share_one_round() -> None:
    net = Net(3)
    leader = net.elect(1)
    net.delivered.clear()
    net.readies[1].clear()
    for ctx in (1, 2, 3):
        leader.read_index(ctx)
    net.deliver()
    assert len(heartbeats(net)) == 2  # one round: one heartbeat per follower
    states = read_states(net, 1)
    assert [rs.ctx for rs in states] == [1, 2, 3]
    assert len({rs.index for rs in states}) == 1


def test_reads_asked_while_a_round_is_unanswered_wait_for_the_next_round() -> None:
    net = Net(3)
    leader = net.elect(1)
    leader.read_index(1)
    net.drive()  # round sent, not delivered
    sent = [m for m in net.outbox if isinstance(m, Heartbeat)]
    assert len(sent) == 2
    leader.read_index(2)
    net.drive()
    assert len([m for m in net.outbox if isinstance(m, Heartbeat)]) == 2  # no new round yet
    net.deliver()
    states = {rs.ctx: rs for rs in read_states(net, 1)}
    assert set(states) == {1, 2}
    rounds = sorted({m.round for m in heartbeats(net)})
    assert len(rounds) == 2  # read 2 went out in the round sent once read 1's was answered


def test_answers_to_a_round_sent_before_the_read_do_not_confirm_it() -> None:
    net = Net(3)
    leader = net.elect(1)
    # A periodic heartbeat round goes out before the read is asked ...
    leader.tick()
    leader.tick()
    net.drive()
    old = [m for m in net.outbox if isinstance(m, Heartbeat)]
    assert old
    old_round = old[0].round
    leader.read_index(5)
    # ... and only the answers to that old round arrive.
    net.deliver(drop=lambda m: isinstance(m, Heartbeat) and m.round > old_round)
    assert read_states(net, 1) == []
    assert leader.pending_reads and leader.pending_reads[0].round is not None
    # The next periodic round confirms it.
    net.tick(1, 2)
    net.deliver()
    assert [rs.ctx for rs in read_states(net, 1)] == [5]


def test_a_read_waits_until_the_leader_committed_an_entry_of_its_term() -> None:
    net = Net(3)
    node = net.nodes[1]
    for _ in range(100):
        node.tick()
        if node.role is not Role.FOLLOWER:
            break
    # Elected, but its no-op is not committed: append answers are lost.
    net.deliver(drop=lambda m: isinstance(m, AppendEntriesResponse))
    assert node.role is Role.LEADER and node.log.committed < node.log.last_index()
    node.read_index(9)
    net.deliver(drop=lambda m: isinstance(m, AppendEntriesResponse))
    assert read_states(net, 1) == []  # heartbeats were answered, but step 1 does not hold
    net.tick(1, 2)  # heartbeat answers ask for the missing entries again
    net.deliver()
    assert node.log.committed == node.log.last_index()
    assert read_states(net, 1) == [ReadState(9, node.log.committed)]


def test_a_cut_off_leader_never_confirms_and_drops_its_reads_when_it_steps_down() -> None:
    net = Net(3)
    old = net.elect(1)
    net.cut = {1}
    old.read_index(11)
    net.deliver()
    net.tick(2, 30)  # node 2 times out and wins in the majority
    for _ in range(30):
        net.tick_all()
    assert old.role is not Role.LEADER
    assert read_states(net, 1) == []
    assert dropped_reads(net, 1) == [11]
    assert old.pending_reads == []


def test_single_node_confirms_at_once() -> None:
    net = Net(1)
    node = net.elect(1)
    node.read_index(3)
    net.drive()
    assert read_states(net, 1) == [ReadState(3, node.log.committed)]


def test_read_on_a_follower_raises_not_leader_with_the_hint() -> None:
    net = Net(3)
    net.elect(1)
    with pytest.raises(NotLeader) as err:
        net.nodes[2].read_index(1)
    assert err.value.leader_id == 1


def test_answers_of_a_repairing_follower_do_not_confirm() -> None:
    net = Net(3)
    leader = net.elect(1)
    net.cut = {3}
    # Node 2 answers, but says it is repairing (it lost its disk): it does not count.

    def as_repairing(m: object) -> bool:
        return isinstance(m, HeartbeatResponse) and m.from_id == 2

    leader.read_index(4)
    net.drive()
    for m in [m for m in net.outbox if isinstance(m, Heartbeat) and m.to_id == 2]:
        net.nodes[2].step(m)
    net.drive()
    replies = [m for m in net.outbox if as_repairing(m)]
    assert replies
    net.outbox = []
    for m in replies:
        assert isinstance(m, HeartbeatResponse)
        leader.step(HeartbeatResponse(m.term, m.from_id, m.to_id, m.round, True, False, m.boot))
    net.drive()
    assert read_states(net, 1) == []
