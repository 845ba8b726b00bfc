"""The Raft driver loop with an in-memory disk: snapshots serialised off the loop."""

from __future__ import annotations

import random
import threading
from typing import Any

import trio
import trio.testing

from node.raft import (
    Config,
    DurabilityMark,
    Entry,
    Index,
    MemoryStorage,
    Message,
    NodeId,
    RaftNode,
    Ready,
    SoftState,
)
from node.raft_loop import MARK_REFRESH_S, RaftLoop


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

    def save_snapshot(self, index: Index, data: bytes, voters: tuple[NodeId, ...]) -> None:
        self.store.create_snapshot(index, data, voters)


class SlowSnapshotApp:
    """Records applied entries; `snapshot()` blocks (in its thread) until released."""

    def __init__(self) -> None:
        self.applied: list[bytes] = []
        self.release = threading.Event()
        self.serialising = threading.Event()
        self.snapshot_of: list[bytes] | None = None

    def apply(self, entry: Entry) -> Any:
        self.applied.append(entry.data)
        return len(self.applied)

    def restore(self, data: bytes) -> None:
        raise AssertionError("single node: never restores")

    def snapshot(self) -> bytes:
        self.serialising.set()
        self.snapshot_of = list(self.applied)
        assert self.release.wait(10)
        assert self.applied == self.snapshot_of, "the state changed while it was serialised"
        return b"|".join(self.snapshot_of)

    def on_soft_state(self, soft: SoftState) -> None:
        pass


class NoNetwork:
    def send(self, msg: Message) -> None:
        raise AssertionError("single node: no peers")


async def test_snapshot_serialises_in_a_thread_while_applies_wait() -> None:
    disk = MemoryDisk()
    core = RaftNode(Config(NodeId(1)), disk.store, random.Random(1))
    app = SlowSnapshotApp()
    loop = RaftLoop(core, disk, NoNetwork(), app, tick_s=0.01, snapshot_entries=10**9)
    send, receive = trio.open_memory_channel[Message](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run, receive)
        with trio.fail_after(5):
            while not core.is_leader:
                await trio.sleep(0.01)
        first = loop.propose([b"a", b"b", b"c"])
        for p in first:
            await p.done.wait()
        assert [p.result for p in first] == [1, 2, 3]
        loop.request_snapshot()
        with trio.fail_after(5):
            while not app.serialising.is_set():
                await trio.sleep(0.01)
        persists_before = disk.persists
        second = loop.propose([b"d", b"e"])
        with trio.move_on_after(0.3):
            await second[-1].done.wait()
        # Replication went on (the entries were persisted and committed) ...
        assert disk.persists > persists_before
        assert core.log.committed >= second[-1].index
        # ... but nothing was applied to the state being serialised.
        assert not second[-1].done.is_set() and app.applied == [b"a", b"b", b"c"]
        app.release.set()
        with trio.fail_after(5):
            for p in second:
                await p.done.wait()
        assert [p.result for p in second] == [4, 5]
        assert app.applied == [b"a", b"b", b"c", b"d", b"e"]
        with trio.fail_after(5):
            while disk.store.snapshot().meta.index == 0:
                await trio.sleep(0.01)
        snap = disk.store.snapshot()
        assert snap.data == b"a|b|c"
        assert snap.meta.index == first[-1].index  # the state it holds, not a later index
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
    # Virtual time (trio.testing.MockClock, autojump): ticks and the refresh interval pass
    # without real sleeps.
    disk = MemoryDisk()
    core = RaftNode(Config(NodeId(1)), disk.store, random.Random(1))
    marks = RecordingMarks(disk)
    loop = RaftLoop(core, disk, NoNetwork(), CountingApp(), tick_s=0.01,
                    snapshot_entries=10**9, marker=marks, mark=DurabilityMark())
    send, receive = trio.open_memory_channel[Message](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run, receive)
        with trio.fail_after(5):
            while not core.is_leader:
                await trio.sleep(0.01)
        # The election (its term, its vote for itself) is marked, after the disk held it.
        with trio.fail_after(5):
            while not any(m.term == core.term for m, _ in marks.written):
                await trio.sleep(0.01)
        voted = [(m, t) for m, t in marks.written if m.term == core.term]
        assert voted and voted[0][0].vote == 1 and voted[0][1] == core.term
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
                await trio.sleep(0.01)
        last = marks.written[-1][0]
        assert last.index <= disk.store.last_index()
        assert last.index_term == disk.store.term(last.index)
        nursery.cancel_scope.cancel()
