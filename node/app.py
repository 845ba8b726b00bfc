"""The queue application the Raft loop drives: the machine state and what its effects ask for.

Every replica applies every committed entry here, in log order, with the `now_ms` the leader
stamped on it. Effects (wake long-poll waiters, arm the tick timer, release the log) go to the
sink, the `ActorSystem`, which realises them only while this node leads (it asks the Raft loop,
the one record of leadership). A new leader re-issues them through `state_enter`
(node.machine), so nothing depends on a follower having seen them. The app keeps no copy of
leadership and no applied index: the loop has both (`RaftLoop.view`, `RaftLoop.applied_index`).
"""

from __future__ import annotations

import logging
from typing import Any

from node import machine
from node.entry import decode_entry
from node.raft import Entry

logger = logging.getLogger("raftq.app")


class EffectSink:
    """Where the machine's effects go (the ActorSystem, which realises them while this node
    leads); the default ignores them."""

    def wake(self, queue: str) -> None:
        """Messages became deliverable in `queue`."""

    def arm_timer(self, at_ms: int) -> None:
        """Propose a tick at wall-clock `at_ms`."""

    def release(self, index: int) -> None:
        """The log up to `index` is not needed to rebuild the state."""

    def became_leader(self, effects: list[machine.Effect]) -> None:
        """This node now leads; `effects` come from `state_enter`."""

    def lost_leadership(self) -> None:
        """This node no longer leads."""


class QueueApp:
    """Holds the machine state and applies committed entries to it.

    Args:
        state: the starting state (restored from the latest snapshot, or new).
        sink: where effects go while this node leads.
    """

    def __init__(self, state: machine.MachineState, sink: EffectSink | None = None) -> None:
        self.state = state
        self.sink = sink or EffectSink()

    def apply(self, entry: Entry) -> Any:
        now_ms, cmd = decode_entry(entry.data)
        meta = machine.Meta(entry.index, entry.term, now_ms)
        self.state, reply, effects = machine.apply(meta, cmd, self.state)
        if effects:
            self._realise(effects)
        return reply

    def _realise(self, effects: list[machine.Effect]) -> None:
        sink = self.sink
        for eff in effects:
            if isinstance(eff, machine.WakeWaiters):
                sink.wake(eff.queue)
            elif isinstance(eff, machine.ArmTimer):
                sink.arm_timer(eff.at_ms)
            elif isinstance(eff, machine.ReleaseCursor):
                sink.release(eff.index)

    def restore(self, data: bytes) -> None:
        self.state = machine.restore(data)
        logger.info("state restored from snapshot (%d messages)",
                    machine.query_total_messages(self.state))

    def snapshot(self) -> bytes:
        return machine.snapshot(self.state)

    def digest(self) -> str:
        return machine.digest(self.state)

    def on_leadership(self, leading: bool) -> None:
        """This node began (True) or stopped (False) leading: tell the sink."""
        if leading:
            self.sink.became_leader(machine.state_enter("leader", self.state))
        else:
            self.sink.lost_leadership()
