"""The durability mark kept true while the Raft loop persists (node/raft/_durability.py).

The mark (node/marker.py) vouches for term, vote, standing and a durable log position. The
`RaftLoop` owns one `MarkTracker` and hands it every persist: a write that removes durable
entries (a conflicting suffix, a snapshot over the log) holds the mark lock, after lowering the
mark if it vouches for what goes, so no refresh raises it meanwhile; a new term, vote or
standing is marked (synced) before any message that depends on it is sent; the log position
follows the durable log every `MARK_REFRESH_S`, in a background task (`run`), so no fsync is
added to the hot path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from node.loop_api import BlockingRunner, MarkStore
from node.raft import (
    DurabilityMark,
    HardState,
    Index,
    Ready,
    Storage,
    Term,
    lower_mark_before,
    raise_mark_after,
)

__all__ = ["MARK_REFRESH_S", "MarkTracker"]

MARK_REFRESH_S = 0.25
"""How often the durability mark's log position follows the durable log (node/marker.py). A
WAL cut exactly at a record boundary that removes only entries written since the last refresh
is the one storage fault a node cannot see by itself (docs/architecture.md)."""


class MarkTracker:
    """A node's durability mark and what the disk durably holds, as the loop persists.

    Args:
        marker: where the mark is written.
        mark: the mark now written.
        storage: the database the core reads (for what a write would remove).
        blocking: how the (synced) mark write runs.
        stats: the loop's counters; `marks_written` is counted here.
    """

    def __init__(
        self,
        marker: MarkStore,
        mark: DurabilityMark,
        storage: Storage,
        blocking: BlockingRunner,
        stats: dict[str, int],
    ) -> None:
        self._marker = marker
        self._mark = mark
        self._storage = storage
        self._blocking = blocking
        self._stats = stats
        self._hard: HardState = storage.initial_state()[0]
        last = storage.last_index()
        self._durable_last: tuple[Index, Term] = (last, storage.term(last))
        self._refreshed_at: float | None = None  # trio time of the last refresh
        self._lock = trio.Lock()  # one mark write at a time
        self._refresh_due = trio.Event()

    async def persist(self, rd: Ready, write: Callable[[Ready], Awaitable[None]]) -> None:
        """Persist `rd` with `write` and keep the mark true (see the module docstring)."""
        removes = rd.snapshot is not None or (
            bool(rd.entries) and rd.entries[0].index <= self._durable_last[0]
        )
        if removes:
            async with self._lock:
                lowered = lower_mark_before(self._mark, rd, self._storage)
                if lowered is not None:
                    await self._store(lowered)
                await write(rd)
                self._note_durable(rd)
        else:
            await write(rd)
            self._note_durable(rd)
        if raise_mark_after(self._mark, self._hard, self._durable_last, refresh=False):
            async with self._lock:
                raised = raise_mark_after(self._mark, self._hard, self._durable_last, False)
                if raised is not None:  # (a refresh may have written it meanwhile)
                    await self._store(raised)
        now = trio.current_time()
        if self._refreshed_at is None:
            self._refreshed_at = now
        elif now - self._refreshed_at >= MARK_REFRESH_S:
            self._refreshed_at = now
            self._refresh_due.set()

    def _note_durable(self, rd: Ready) -> None:
        if rd.hard_state is not None:
            self._hard = rd.hard_state
        if rd.entries:
            self._durable_last = (rd.entries[-1].index, rd.entries[-1].term)
        elif rd.snapshot is not None:
            self._durable_last = (rd.snapshot.meta.index, rd.snapshot.meta.term)

    async def run(self) -> None:
        """Move the mark's log position to the durable log whenever `persist` asks, until
        cancelled."""
        while True:
            await self._refresh_due.wait()
            self._refresh_due = trio.Event()
            async with self._lock:
                moved = raise_mark_after(self._mark, self._hard, self._durable_last, True)
                if moved is not None:
                    await self._store(moved)

    async def _store(self, mark: DurabilityMark) -> None:
        """Write `mark`; callers hold the lock."""
        await self._blocking(self._marker.store, mark)
        self._mark = mark
        self._stats["marks_written"] += 1
