"""The one Ready loop (node/raft/_driver.py): step order, a crash in persist, run_sync."""

from __future__ import annotations

import random
import types

import pytest

from node.raft import (
    Config,
    MemoryStorage,
    Message,
    NodeId,
    RaftNode,
    Ready,
    follow_readies,
    run_sync,
)


class Recorder:
    def __init__(self, store: MemoryStorage, crash_at: int | None = None) -> None:
        self.store = store
        self.steps: list[str] = []
        self.crash_at = crash_at
        self.persists = 0

    def send(self, msg: Message) -> None:
        self.steps.append(f"send {type(msg).__name__}")

    async def persist(self, rd: Ready) -> bool:
        self.persists += 1
        if self.persists == self.crash_at:
            self.steps.append("crash")
            return False
        self.steps.append("persist")
        self.store.append(rd.entries)
        if rd.hard_state is not None:
            self.store.set_hard_state(rd.hard_state)
        return True

    def apply(self, rd: Ready) -> None:
        self.steps.append(f"apply {len(rd.committed_entries)}")

    def after_advance(self, rd: Ready) -> None:
        self.steps.append("advanced")


def three_node_candidate() -> tuple[RaftNode, MemoryStorage]:
    ids = (NodeId(1), NodeId(2), NodeId(3))
    st = MemoryStorage(ids)
    core = RaftNode(Config(NodeId(1), pre_vote=False), st, random.Random(1))
    for _ in range(40):  # past the election timeout: it campaigns
        core.tick()
    return core, st


def test_votes_leave_only_after_the_term_and_vote_are_persisted() -> None:
    core, st = three_node_candidate()
    io = Recorder(st)
    assert run_sync(follow_readies(core, io)) >= 1
    first_send = io.steps.index("send RequestVote")
    assert io.steps.index("persist") < first_send
    assert io.steps[-1] == "advanced" and st.hard_state.vote == 1


def test_a_crash_in_persist_sends_nothing_after_it_and_does_not_advance() -> None:
    core, st = three_node_candidate()
    io = Recorder(st, crash_at=1)
    assert run_sync(follow_readies(core, io)) == 0
    assert io.steps == ["crash"]  # no vote request left, nothing applied, no advance
    assert st.hard_state.vote is None


def test_run_sync_refuses_a_driver_that_suspends() -> None:
    @types.coroutine
    def suspend() -> object:
        yield "suspended"

    async def suspends() -> None:
        await suspend()

    with pytest.raises(RuntimeError, match="suspended"):
        run_sync(suspends())
