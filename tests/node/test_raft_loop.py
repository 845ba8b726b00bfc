"""The Raft driver loop with an in-memory disk: snapshots serialised off the loop, the
durability mark, and the loop as the only code that touches the core (calls between Readys)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from node.loop_api import ProposalFailed, ReadFailed, StagedSnapshot
from node.loop_marks import MARK_REFRESH_S
from node.raft import (
    ChangeKind,
    ConfChange,
    ConfChangeError,
    Config,
    DurabilityMark,
    Entry,
    Index,
    Membership,
    MemoryStorage,
    Message,
    NodeId,
    RaftNode,
    Ready,
    Role,
)
from node.raft_loop import RaftLoop
from tests.sim.sim_io import MemoryStage, StagedMemory


async def run_inline(fn: Callable[..., Any], *args: Any) -> Any:
    """A blocking-work runner without threads: run `fn` at once, then let other tasks run."""
    result = fn(*args)
    await trio.lowlevel.checkpoint()
    return result


class MemoryDisk:
    """MemoryStorage plus the two writes the loop makes."""

    def __init__(self) -> None:
        self.store = MemoryStorage((NodeId(1),))
        self.persists = 0

    def persist(self, rd: Ready) -> None:
        self.persists += 1
        if rd.snapshot is not None:
            self.store.apply_snapshot(rd.snapshot)
        self.store.append(rd.entries)
        if rd.hard_state is not None:
            self.store.set_hard_state(rd.hard_state)

    def begin_snapshot(self, index: Index) -> MemoryStage:
        return MemoryStage(index)

    def commit_snapshot(
        self, staged: StagedSnapshot, membership: Membership, keep_entries: int = 0
    ) -> None:
        assert isinstance(staged, StagedMemory)
        self.store.create_snapshot(staged.index, staged.data, membership, keep_entries)


class _Job:
    forks = False  # written in place (node/app.py's fork: tests/node/test_snapshot_job.py)

    def __init__(self, app: SlowSnapshotApp) -> None:
        self.app = app

    def write_machine(self, out: MemoryStage) -> None:
        out.write(self.app.snapshot())

    def write_bodies(self, out: MemoryStage) -> None:
        pass

    def close(self) -> None:
        pass


class SlowSnapshotApp:
    """Records applied entries; `snapshot()` blocks (in its thread) until released."""

    def __init__(self) -> None:
        self.applied: list[bytes] = []
        self.release = threading.Event()
        self.serialising = threading.Event()
        self.snapshot_of: list[bytes] | None = None

    def apply(self, entry: Entry, reply_wanted: bool) -> Any:
        self.applied.append(entry.data)
        return len(self.applied)

    def flush(self, applied_index: int) -> None:
        pass

    def restore(self, data: object, index: int) -> None:
        raise AssertionError("single node: never restores")

    def snapshot_job(self) -> _Job:
        return _Job(self)

    def snapshot(self) -> bytes:
        self.serialising.set()
        self.snapshot_of = list(self.applied)
        assert self.release.wait(10)
        assert self.applied == self.snapshot_of, "the state changed while it was serialised"
        return b"|".join(self.snapshot_of)

    def on_leadership(self, leading: bool) -> None:
        pass


class NoNetwork:
    def send(self, msg: Message) -> None:
        raise AssertionError("single node: no peers")


async def wait_leading(loop: RaftLoop) -> None:
    """Wait (on the loop's published view and its event) until the loop's core leads."""
    while not loop.is_leader:
        await loop.role_changed.wait()


async def test_snapshot_serialises_in_a_thread_while_applies_wait() -> None:
    # Real worker threads (the point of the test), so the real clock; every wait is on an
    # event or on the loop's answer, bounded.
    disk = MemoryDisk()
    core = RaftNode(Config(NodeId(1)), disk.store, random.Random(1))
    app = SlowSnapshotApp()
    loop = RaftLoop(core, disk, NoNetwork(), app, tick_s=0.01, snapshot_entries=10**9)
    send, receive = trio.open_memory_channel[Message](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run, receive)
        with trio.fail_after(5):
            await wait_leading(loop)
        first = loop.propose([b"a", b"b", b"c"])
        for p in first:
            await p.done.wait()
        assert [p.result for p in first] == [1, 2, 3]
        loop.request_snapshot()
        assert await trio.to_thread.run_sync(app.serialising.wait, 5)
        persists_before = disk.persists
        second = loop.propose([b"d", b"e"])
        with trio.fail_after(5):
            # Each status is answered between two Readys, so this waits on the loop's turns.
            while (await loop.status())["commit_index"] < second[-1].index:
                pass
        # Replication went on (the entries were persisted and committed) ...
        assert disk.persists > persists_before
        # ... but nothing was applied to the state being serialised.
        assert not second[-1].done.is_set() and app.applied == [b"a", b"b", b"c"]
        # A read asked now is confirmed (one node), but waits until what was committed before
        # it is applied: it never answers from the older state.
        read_at: list[int] = []
        read_done = trio.Event()

        async def read() -> None:
            read_at.append(await loop.read_index())
            read_done.set()

        nursery.start_soon(read)
        for _ in range(3):
            await loop.status()  # a few of the loop's turns
        assert read_at == []
        app.release.set()
        with trio.fail_after(5):
            for p in second:
                await p.done.wait()
            await read_done.wait()
        assert read_at[0] >= second[-1].index and loop.applied_index >= read_at[0]
        assert [p.result for p in second] == [4, 5]
        assert app.applied == [b"a", b"b", b"c", b"d", b"e"]
        with trio.fail_after(5):
            while (await loop.status())["snapshot_index"] == 0:
                pass
        snap = disk.store.snapshot()
        assert snap.data == b"a|b|c"
        assert snap.meta.index == first[-1].index  # the state it holds, not a later index
        nursery.cancel_scope.cancel()


class _SlowBodiesJob(_Job):
    """Writes the machine's part at once; its bodies wait (in their thread) until released."""

    def write_machine(self, out: MemoryStage) -> None:
        out.write(b"|".join(self.app.applied))

    def write_bodies(self, out: MemoryStage) -> None:
        assert isinstance(self.app, SlowBodiesApp)
        self.app.in_bodies.set()
        assert self.app.bodies_go.wait(10)


class SlowBodiesApp(SlowSnapshotApp):
    def __init__(self) -> None:
        super().__init__()
        self.jobs = 0
        self.in_bodies = threading.Event()
        self.bodies_go = threading.Event()

    def snapshot_job(self) -> _Job:
        self.jobs += 1
        return _SlowBodiesJob(self)


async def test_applies_go_on_while_a_snapshots_bodies_are_written_and_no_second_starts() -> None:
    # Real worker threads (the bodies are written in one), so the real clock; bounded waits.
    disk = MemoryDisk()
    core = RaftNode(Config(NodeId(1)), disk.store, random.Random(1))
    app = SlowBodiesApp()
    loop = RaftLoop(core, disk, NoNetwork(), app, tick_s=0.01, snapshot_entries=2)
    send, receive = trio.open_memory_channel[Message](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run, receive)
        with trio.fail_after(5):
            await wait_leading(loop)
        for p in loop.propose([b"a", b"b", b"c"]):
            await p.done.wait()
        assert await trio.to_thread.run_sync(app.in_bodies.wait, 5)
        # The bodies are being written: applies go on, and however many entries pass
        # snapshot_entries meanwhile, no second snapshot starts (they would share a checkpoint).
        later = loop.propose([b"d", b"e", b"f", b"g", b"h"])
        with trio.fail_after(5):
            for p in later:
                await p.done.wait()
        assert app.applied[-1] == b"h" and app.jobs == 1
        app.bodies_go.set()
        with trio.fail_after(5):
            while disk.store.snapshot().meta.index == 0:
                await loop.status()  # a few of the loop's turns
        assert disk.store.snapshot().data.startswith(b"a|b|c")
        nursery.cancel_scope.cancel()


class RecordingMarks:
    """A MarkStore that keeps every mark written, and what the disk held at that moment."""

    def __init__(self, disk: MemoryDisk) -> None:
        self.disk = disk
        self.written: list[tuple[DurabilityMark, int]] = []

    def store(self, mark: DurabilityMark) -> None:
        self.written.append((mark, self.disk.store.hard_state.term))


class CountingApp(SlowSnapshotApp):
    def snapshot(self) -> bytes:
        return b""


async def test_the_durability_mark_follows_term_vote_and_now_and_then_the_log(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Virtual time (trio.testing.MockClock, autojump) and no threads (blocking work inline):
    # ticks and the refresh interval pass without real sleeps.
    disk = MemoryDisk()
    core = RaftNode(Config(NodeId(1)), disk.store, random.Random(1))
    marks = RecordingMarks(disk)
    loop = RaftLoop(core, disk, NoNetwork(), CountingApp(), tick_s=0.01,
                    snapshot_entries=10**9, marker=marks, mark=DurabilityMark(),
                    blocking=run_inline, perf_clock=trio.current_time)
    send, receive = trio.open_memory_channel[Message](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run, receive)
        with trio.fail_after(5):
            await wait_leading(loop)
        term = loop.view.term
        # The election (its term, its vote for itself) was marked, after the disk held it:
        # the loop publishes leadership only after the Ready that made it was persisted.
        voted = [(m, t) for m, t in marks.written if m.term == term]
        assert voted and voted[0][0].vote == 1 and voted[0][1] == term
        written = len(marks.written)
        for _ in range(20):  # many synced writes within one refresh interval: no mark each
            props = loop.propose([b"x"])
            await props[0].done.wait()
        assert len(marks.written) <= written + 1
        await trio.sleep(MARK_REFRESH_S * 2)
        props = loop.propose([b"y"])
        await props[0].done.wait()
        await trio.sleep(MARK_REFRESH_S * 2)
        loop.propose([b"z"])
        with trio.fail_after(5):
            while marks.written[-1][0].index < props[0].index:
                await trio.sleep(MARK_REFRESH_S)  # virtual time: the next refresh
        last = marks.written[-1][0]
        assert last.index <= disk.store.last_index()
        assert last.index_term == disk.store.term(last.index)
        nursery.cancel_scope.cancel()


async def test_calls_run_between_readys_and_transfer_refuses_without_leadership(
    autojump_clock: trio.testing.MockClock,
) -> None:
    disk = MemoryDisk()
    core = RaftNode(Config(NodeId(1)), disk.store, random.Random(1))
    loop = RaftLoop(core, disk, NoNetwork(), CountingApp(), tick_s=0.01,
                    snapshot_entries=10**9, blocking=run_inline, perf_clock=trio.current_time)
    send, receive = trio.open_memory_channel[Message](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run, receive)
        assert loop.view.role is Role.FOLLOWER and not loop.is_leader
        assert await loop.transfer_leadership() is None  # not leading: nothing to hand over
        try:
            await loop.read_index()
        except ReadFailed as exc:
            assert exc.code == "NOT_LEADER"
        else:
            raise AssertionError("a follower answered a linearizable read")
        with trio.fail_after(5):
            await wait_leading(loop)
        assert loop.view.leader_id == 1 and loop.view.term >= 1
        assert await loop.transfer_leadership() is None  # leading, but no peer to take it
        props = loop.propose([b"a", b"b"])
        for p in props:
            await p.done.wait()
        assert loop.applied_index == props[-1].index
        assert props[-1].index <= await loop.read_index() <= loop.applied_index
        assert loop.stats["reads"] == 1 and loop.stats["reads_failed"] == 1
        st = await loop.status(lambda: {"app": "x"})
        assert st["applied_index"] == loop.applied_index and st["app"] == "x"
        assert st["role"] == "leader" and st["node_id"] == 1

        def boom(core: RaftNode) -> None:
            raise ValueError("refused")

        try:
            await loop.call(boom)
        except ValueError as exc:
            assert str(exc) == "refused"
        else:
            raise AssertionError("the call's error did not reach the caller")
        nursery.cancel_scope.cancel()


class DropNetwork:
    """A network to nowhere: messages to the learner that never runs are lost."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send(self, msg: Message) -> None:
        self.sent.append(msg)


async def test_membership_changes_through_the_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    disk = MemoryDisk()
    core = RaftNode(Config(NodeId(1)), disk.store, random.Random(1))
    app = CountingApp()
    seen: list[Membership] = []
    net = DropNetwork()
    loop = RaftLoop(core, disk, net, app, tick_s=0.01, snapshot_entries=10**9,
                    blocking=run_inline, perf_clock=trio.current_time, on_membership=seen.append)
    assert loop.membership.voters == (1,) and loop.linked_ids == {1}
    send, receive = trio.open_memory_channel[Message](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run, receive)
        add = ConfChange(ChangeKind.ADD_LEARNER, NodeId(2), "127.0.0.1:1", "127.0.0.1:2")
        try:
            await loop.propose_conf_change(add)
        except ProposalFailed as exc:
            assert exc.code == "NOT_LEADER"
        else:
            raise AssertionError("a follower proposed a membership change")
        with trio.fail_after(5):
            await wait_leading(loop)
        changed = loop.membership_changed
        index = await loop.propose_conf_change(add)
        # Applied in this term: the callback saw the learner; the app saw no CONFIG entry.
        assert loop.applied_index >= index and changed.is_set()
        assert loop.membership.learners == (2,) and loop.linked_ids == {1, 2}
        assert seen[-1].learners == (2,) and seen[-1].address(NodeId(2)) == (
            "127.0.0.1:1", "127.0.0.1:2")
        assert app.applied == []
        st = await loop.status()
        assert st["voters"] == [1] and st["learners"] == [2]
        assert st["membership_index"] == index and st["peers"]["2"]["learner"] is True
        # A learner that never answered is not promoted; it cannot take leadership either.
        try:
            await loop.propose_conf_change(ConfChange(ChangeKind.PROMOTE, NodeId(2)))
        except ConfChangeError as exc:
            assert exc.code == "LEARNER_BEHIND"
        else:
            raise AssertionError("a learner that never answered was promoted")
        assert await loop.transfer_leadership() is None
        removed = await loop.propose_conf_change(ConfChange(ChangeKind.REMOVE, NodeId(2)))
        assert removed > index and loop.membership.members() == (1,)
        with trio.fail_after(5):
            # Once the removal is committed and the removed node had its farewell heartbeats
            # (node/raft/_conf_change.py), the loop lets it go (virtual time: ticks must pass).
            while loop.linked_ids != {1}:
                await trio.sleep(0.01)
        assert seen[-1].members() == (1,)
        nursery.cancel_scope.cancel()
