"""One node of the whole-node simulator (tests/sim/node_sim.py): its disk and mark, which
survive crashes, and its `Replica`, rebuilt on each start.

Split from node_sim.py: a node's life (start, crash, the worker stand-in for blocking storage
work, client connections to its real handler, the reads it answers).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
import trio.testing

from node.raft import Message
from node.replica import Replica
from node.server import RequestError
from tests.sim.sim_io import SimDisk, SimMarks

if TYPE_CHECKING:
    from tests.sim.node_sim import NodeSimulator

__all__ = ["SimNode"]


class SimNode:
    """One node: its disk and mark survive crashes; its `Replica` is rebuilt on each start."""

    def __init__(self, sim: NodeSimulator, node_id: int) -> None:
        self.sim = sim
        self.id = node_id
        rng = random.Random(f"{sim.seed}/disk/{node_id}")

        def latency_s() -> float:
            if rng.random() < 0.02:
                return rng.uniform(0.02, 0.08)
            return rng.uniform(0.0002, 0.002)

        self.disk = SimDisk(node_id, sim.voters, skip_fsync=sim.bug == "confirm-before-fsync",
                            latency_s=latency_s, jump=sim.jump)
        self.marks = SimMarks(node_id)
        self.replica: Replica | None = None
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._stopped = trio.Event()
        self._stopped.set()
        self.starts = 0

    @property
    def up(self) -> bool:
        return self.replica is not None

    async def start(self) -> None:
        """Build the node from its disk and run it in the simulator's nursery."""
        await self._stopped.wait()
        assert self.sim.nursery is not None
        await self.sim.nursery.start(self._life)

    async def _life(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sim = self.sim
        self._stopped = trio.Event()
        send, receive = trio.open_memory_channel[Message](16384)
        try:
            replica = Replica(
                sim.cfg,
                self.id,
                self.disk,
                self.marks,
                sim.net.endpoint(self.id),
                receive,
                rng=random.Random(f"{sim.seed}/core/{self.id}/{self.starts}"),
                clock_ms=sim.clock_ms,
                blocking=self._worker,
                perf_clock=trio.current_time,
            )
            self._watch_reads(replica)
            self.starts += 1
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(replica.run)
                    self.replica = replica
                    sim.net.inboxes[self.id] = send
                    sim.links_epoch += 1
                    task_status.started()
        finally:
            if self.replica is not None:
                sim.counters.update(self.replica.loop.stats)
            sim.net.inboxes[self.id] = None
            sim.links_epoch += 1
            self.replica = None
            self._nursery = None
            self._stopped.set()

    def _watch_reads(self, replica: Replica) -> None:
        """Count the reads this node answers as leader (`reads_*` in the simulator's counters),
        and whether it was cut off from a majority when one arrived; with the planted bug
        `stale-read`, answer them without confirming leadership.

        Wraps the server's `_confirm_leadership` (its reads' ReadIndex step); counts only.
        """
        server = replica.server
        confirm = server._confirm_leadership
        sim = self.sim
        c = sim.counters

        async def confirm_leadership(timeout_s: float) -> None:
            cut = sim.cut_off(self.id)
            epoch = sim.links_epoch
            c["reads_at_leader"] += 1
            c["reads_at_cut_off_leader"] += cut
            if sim.bug == "stale-read":
                c["reads_unconfirmed"] += 1
                c["reads_unconfirmed_at_cut_off_leader"] += cut
                return
            try:
                await confirm(timeout_s)
            except RequestError as exc:
                c[f"reads_refused_{exc.code}"] += 1
                c["reads_at_cut_off_leader_refused"] += cut
                raise
            c["reads_confirmed"] += 1
            # Cut off from a majority from the read's arrival to its answer, with no change
            # of links or of nodes up in between: no quorum could have confirmed it.
            c["reads_confirmed_while_cut_off"] += cut and epoch == sim.links_epoch

        server._confirm_leadership = confirm_leadership  # type: ignore[method-assign]

    async def _worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """The node's stand-in for `trio.to_thread.run_sync`: runs `fn` at once (no thread),
        then lets the write's virtual time pass while the node's other tasks run."""
        self.disk.in_worker = True
        try:
            result = fn(*args)
        finally:
            self.disk.in_worker = False
        owed_s = self.disk.take_latency_s()
        if owed_s:
            await trio.sleep(owed_s)
        else:
            await trio.lowlevel.checkpoint()
        return result

    async def crash(self, *, power_loss: bool) -> int:
        """Stop the node at once (a kill -9; with `power_loss`, unsynced writes are lost too).

        Returns how many writes the power loss took away.
        """
        if self._scope is None or not self.up:
            return 0
        self._scope.cancel()
        await self._stopped.wait()
        self._scope = None
        for other in self.sim.nodes.values():  # the transport's "peer lost"
            if other.replica is not None:
                other.replica.loop.peer_lost(self.id)
        return self.disk.reopen(power_loss=power_loss)

    async def connect(self) -> trio.abc.Stream:
        """A client connection to this node's real connection handler, in memory.

        Raises:
            OSError: the node is down (connection refused).
        """
        if self.replica is None or self._nursery is None:
            raise ConnectionRefusedError(f"node {self.id} is down")
        client_side, server_side = trio.testing.memory_stream_pair()
        self._nursery.start_soon(self.replica.server._handle_connection, server_side)
        return client_side
