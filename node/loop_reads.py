"""The Raft loop's linearizable reads: asked of the core, confirmed, answered once applied.

ReadIndex (Ongaro's thesis 6.4; the core's half is node/raft/_read_index.py): a read asks the
core, between two Readys, to confirm leadership; the core hands the read back in a Ready's
`read_states` with its read index (the commit index when it was asked) once a heartbeat round
sent after it was answered by a quorum, or in `dropped_reads` if this node left office first.
A confirmed read is answered once the application has applied up to its index. Owned by the
`RaftLoop` (node/raft_loop.py): only the loop calls `feed`, `on_ready` and `release`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from node.loop_api import ReadFailed
from node.raft import NotLeader, RaftNode, Ready

__all__ = ["ReadRequest", "ReadTracker"]


@dataclass(eq=False)
class ReadRequest:
    """One read: `done` is set once its `index` is applied, or with `error`."""

    ctx: int = 0
    done: trio.Event = field(default_factory=trio.Event)
    index: int | None = None
    error: ReadFailed | None = None

    def finish(self, error: ReadFailed | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()

    async def wait(self) -> int:
        """The read index, once the read may be answered.

        Raises:
            ReadFailed: NOT_LEADER when this node does not lead or left office before it
                could confirm that it still led (`leader_id`: the leader it knows of).
        """
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.index is not None
        return self.index


class ReadTracker:
    """The loop's reads at each stage.

    Args:
        stats: the loop's counters; `reads` (asked of the core) and `reads_failed` are kept.
    """

    def __init__(self, stats: dict[str, int]) -> None:
        self.stats = stats
        self.asked: list[ReadRequest] = []  # not yet handed to the core
        self._confirming: dict[int, ReadRequest] = {}  # by ctx: the core has them
        self._applying: list[ReadRequest] = []  # confirmed; their index is not applied yet
        self._next_ctx = 0

    def ask(self) -> ReadRequest:
        """A new read, handed to the core at the loop's next turn."""
        r = ReadRequest()
        self.asked.append(r)
        return r

    def feed(self, core: RaftNode) -> None:
        """Hand the asked reads to the core (the loop calls this between Readys)."""
        asked, self.asked = self.asked, []
        for r in asked:
            self._next_ctx += 1
            r.ctx = self._next_ctx
            try:
                core.read_index(r.ctx)
            except NotLeader as exc:
                self.stats["reads_failed"] += 1
                r.finish(ReadFailed("NOT_LEADER", "not the leader", exc.leader_id))
                continue
            self.stats["reads"] += 1
            self._confirming[r.ctx] = r

    def on_ready(self, rd: Ready, applied_index: int, leader_id: int | None) -> None:
        """Take a Ready's confirmed and dropped reads (after its entries were applied, up to
        `applied_index`); `leader_id` is the leader this node now knows of."""
        for rs in rd.read_states:
            r = self._confirming.pop(rs.ctx, None)
            if r is not None:
                r.index = rs.index
                self._applying.append(r)
        for ctx in rd.dropped_reads:
            r = self._confirming.pop(ctx, None)
            if r is not None:
                self.stats["reads_failed"] += 1
                r.finish(ReadFailed(
                    "NOT_LEADER", "left office before it could confirm that it still led",
                    leader_id, left_office=True,
                ))
        self.release(applied_index)

    def release(self, applied_index: int) -> None:
        """Answer the confirmed reads whose index is at or below `applied_index`."""
        if not self._applying:
            return
        waiting = []
        for r in self._applying:
            if r.index is not None and r.index <= applied_index:
                r.finish()
            else:
                waiting.append(r)
        self._applying = waiting
