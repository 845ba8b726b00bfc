"""The client's membership operations against the fake cluster (tests/client/fake.py): results,
error codes, CHANGE_IN_PROGRESS retried until the deadline, LEARNER_BEHIND left to the caller,
the leader's own removal redirected, and retries after an unknown outcome reconciled."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from cluster.client import AsyncClient, Client, MemberChange
from cluster.errors import (
    AlreadyMember,
    ChangeInProgress,
    ClusterUnavailable,
    IdRetired,
    LastVoter,
    LearnerBehind,
    NoQuorum,
    NotLearner,
    OutcomeUnknownError,
    UnknownMember,
    error_from_wire,
)
from cluster.members import members_from_wire, reached
from tests.client.fake import FakeCluster

NEW_RAFT, NEW_CLIENT = "127.0.0.1:29104", "127.0.0.1:29004"


def client(addrs: list[str], **kw: object) -> AsyncClient:
    kw.setdefault("timeout_s", 5.0)
    kw.setdefault("backoff_initial_s", 0.01)
    kw.setdefault("backoff_max_s", 0.1)
    return AsyncClient(addrs, rng=random.Random(7), **kw)  # type: ignore[arg-type]


async def test_members_add_promote_remove(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with client([fake.addr(2)]) as c:
        view = await c.members()
        assert [(m.id, m.role, m.leader) for m in view.members] == [
            (1, "voter", True), (2, "voter", False), (3, "voter", False)]
        assert (view.leader_id, view.max_id, view.membership_index) == (1, 3, 0)
        assert view.leader is not None and view.leader.client_addr == fake.addr(1)
        assert [m.id for m in view.voters] == [1, 2, 3] and view.learners == []

        added = await c.add_member(NEW_RAFT, NEW_CLIENT)
        assert added == MemberChange(4, fake.index)
        # The id was read first (max_id + 1) and sent, so that a retry asks for the same one.
        assert fake.ops("add_member")[-1][1] == {
            "raft_addr": NEW_RAFT, "client_addr": NEW_CLIENT, "id": 4}
        view = await c.members()
        assert view.get(4) is not None and view.get(4).role == "learner"  # type: ignore[union-attr]
        assert NEW_CLIENT in c.servers  # learnt from members()
        # The same learner again: the node answers success (idempotent).
        assert (await c.add_member(NEW_RAFT, NEW_CLIENT, 4)).node_id == 4
        with pytest.raises(AlreadyMember):
            await c.add_member("127.0.0.1:1", "127.0.0.1:2", 4)

        assert (await c.promote_member(4)).node_id == 4
        with pytest.raises(NotLearner, match="already a voter"):
            await c.promote_member(4)
        removed = await c.remove_member(4)
        assert removed.node_id == 4 and removed.index == fake.membership_index
        assert (await c.members()).get(4) is None
        with pytest.raises(IdRetired, match="never reused"):
            await c.add_member(NEW_RAFT, NEW_CLIENT, 4)
        with pytest.raises(UnknownMember) as exc_info:
            await c.remove_member(9)
        assert exc_info.value.code == "UNKNOWN_MEMBER"
        assert len(fake.ops("remove_member")) == 2  # a definite refusal is not retried


async def test_bad_arguments_are_refused_before_sending(fake: FakeCluster) -> None:
    async with client(fake.addrs) as c:
        with pytest.raises(ValueError, match="not host:port"):
            await c.add_member("nohost", NEW_CLIENT)
        with pytest.raises(ValueError, match="client_addr"):
            await c.add_member(NEW_RAFT, 7004)  # type: ignore[arg-type]
        for bad in (0, -1, True, "2"):
            with pytest.raises(ValueError, match="positive integer"):
                await c.remove_member(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await c.promote_member(None)  # type: ignore[arg-type]
    assert fake.ops("remove_member") == [] and fake.ops("add_member") == []


async def test_last_voter_and_learner_behind_are_not_retried(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    fake = await FakeCluster(1, leader_id=1).start(nursery)
    async with client(fake.addrs) as c:
        with pytest.raises(LastVoter):
            await c.remove_member(1)
        await c.add_member(NEW_RAFT, NEW_CLIENT, 2)
        fake.behind.add(2)
        with pytest.raises(LearnerBehind) as exc_info:
            await c.promote_member(2)
        assert exc_info.value.code == "LEARNER_BEHIND"
        assert len(fake.ops("promote_member")) == 1  # left to the caller
        assert (await c.members()).get(2).lag == fake.index  # type: ignore[union-attr]
        fake.behind.clear()
        assert (await c.promote_member(2)).node_id == 2
    for node in fake.nodes.values():
        node.stop()


async def test_change_in_progress_is_retried_until_the_deadline(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with client(fake.addrs, timeout_s=3.0) as c:
        fake.faults["remove_member"] = ["change_in_progress"] * 3
        assert (await c.remove_member(3)).node_id == 3
        assert len(fake.ops("remove_member")) == 4
        fake.faults["remove_member"] = ["change_in_progress"] * 10_000
        start = trio.current_time()
        with pytest.raises(ChangeInProgress) as exc_info:
            await c.remove_member(2)
        assert 2.5 <= trio.current_time() - start <= 3.5
        assert exc_info.value.code == "CHANGE_IN_PROGRESS"
        assert "the operation was not executed" in exc_info.value.message
        assert fake.roles == {1: "voter", 2: "voter"}
        # Another retryable refusal last: the usual ClusterUnavailable.
        fake.faults["remove_member"] = ["change_in_progress"] + ["unavailable"] * 10_000
        with pytest.raises(ClusterUnavailable):
            await c.remove_member(2)
        fake.faults["remove_member"] = ["no_quorum"]
        with pytest.raises(NoQuorum):
            await c.remove_member(2)


async def test_removing_the_leader_is_redirected_to_the_new_leader(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with client(fake.addrs) as c:
        change = await c.remove_member(1)
        assert change.node_id == 1 and not change.on_retry
        assert [nid for nid, _ in fake.ops("remove_member")] == [1, 2]  # handed over, redirected
        assert fake.leader_id == 2 and 1 not in fake.roles
        assert c.leader == fake.addr(2)


@pytest.mark.parametrize("fault", ["drop_after", "outcome_unknown_applied"])
async def test_a_change_confirmed_only_on_a_retry(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock, fault: str
) -> None:
    async with client(fake.addrs) as c:
        fake.faults["add_member"] = [fault]
        assert (await c.add_member(NEW_RAFT, NEW_CLIENT)).node_id == 4  # the node: idempotent
        fake.faults["promote_member"] = [fault]
        promoted = await c.promote_member(4)  # the retry hears NOT_LEARNER: it is a voter
        assert promoted == MemberChange(4, fake.membership_index, on_retry=True)
        fake.faults["remove_member"] = [fault]
        removed = await c.remove_member(4)  # the retry hears UNKNOWN_MEMBER: it is gone
        assert removed.on_retry and removed.node_id == 4 and 4 not in fake.roles
        # A refusal that does not show the state asked for still raises.
        fake.faults["add_member"] = [fault]
        with pytest.raises(IdRetired):
            await c.add_member(NEW_RAFT, NEW_CLIENT, 4)


async def test_an_unknown_outcome_until_the_deadline(
    fake: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with client(fake.addrs, timeout_s=2.0) as c:
        fake.faults["remove_member"] = ["outcome_unknown"] * 10_000
        with pytest.raises(OutcomeUnknownError, match="may or may not have happened"):
            await c.remove_member(3)


def test_reached_and_wire_parsing() -> None:
    wire = {
        "leader_id": 1, "term": 2, "commit_index": 9, "membership_index": 7, "max_id": 4,
        "members": [
            {"id": 4, "role": "learner", "raft_addr": "h:2", "client_addr": "h:1",
             "match_index": None, "lag": None, "state": None, "recent_active": False,
             "repairing": True, "leader": False},
            {"id": 1, "role": "voter", "raft_addr": None, "client_addr": "h:3",
             "match_index": 9, "lag": 0, "state": None, "recent_active": True,
             "repairing": False, "leader": True},
        ],
    }
    view = members_from_wire(wire)
    assert view.ids == [1, 4] and view.client_addrs() == ["h:3", "h:1"]
    learner = view.get(4)
    assert learner is not None and learner.lag is None and not learner.caught_up(100)
    assert view.get(1) is not None and view.get(1).caught_up(0)  # type: ignore[union-attr]
    assert members_from_wire(view.to_json()) == view
    assert reached("add_member", {"id": 4, "raft_addr": "h:2", "client_addr": "h:1"}, view)
    assert not reached("add_member", {"id": 4, "raft_addr": "h:9", "client_addr": "h:1"}, view)
    assert not reached("promote_member", {"id": 4}, view)
    assert reached("remove_member", {"id": 5}, view)
    with pytest.raises(Exception, match="malformed"):
        members_from_wire({"members": [{"id": 1, "role": "boss"}]})
    err = error_from_wire({"code": "ID_RETIRED", "message": "m"})
    assert isinstance(err, IdRetired) and err.code == "ID_RETIRED"


async def test_blocking_client_membership(fake: FakeCluster) -> None:
    def work() -> tuple[list[int], int]:
        with Client(fake.addrs, timeout_s=5.0) as c:
            c.add_member(NEW_RAFT, NEW_CLIENT)
            return c.members().ids, c.remove_member(4).node_id

    assert await trio.to_thread.run_sync(work) == ([1, 2, 3, 4], 4)
