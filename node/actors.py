"""Leader-side actors: one trio task per queue batching client commands into Raft proposals.

Only the leader runs actors. A client command for queue Q goes into Q's actor's bounded mailbox.
The actor takes everything waiting in its mailbox (up to `max_batch`), stamps it with the wall
clock (`now_ms`, the machine's notion of time), proposes it as one batch of log entries, and
waits until every entry of the batch is applied (or failed) before it proposes the next batch:
the commands that arrive while a proposal is in flight make up the next one. Clients are
answered by the Raft loop when their entry is applied, never before it is committed.

When leadership moves away, every actor stops: queued commands fail with NOT_LEADER (they were
never proposed) and proposed ones with OUTCOME_UNKNOWN (by the Raft loop). A new leader starts
actors on demand from the replicated state.

The system also realises the machine's effects on the leader: it wakes long-poll receivers of a
queue, proposes the periodic `tick` when the machine's timer falls due, and asks for a cheap
snapshot when the machine released the log.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from node import machine
from node.app import EffectSink
from node.entry import encode_entry
from node.loop_api import Proposal, ProposalFailed
from node.raft_loop import RaftLoop

logger = logging.getLogger("raftq.actors")

TICK_KEY = "\x00tick"
"""Mailbox key of the internal timer's commands (no queue name can contain NUL)."""


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch: the clock every leader stamps entries with."""
    return time.time_ns() // 1_000_000


class Busy(Exception):
    """The actor's mailbox is full."""


@dataclass(eq=False)
class _Actor:
    key: str
    send: trio.MemorySendChannel[Proposal]
    receive: trio.MemoryReceiveChannel[Proposal]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    queued_bytes: int = 0  # entry bytes in the mailbox


class ActorSystem(EffectSink):
    """The leader's actors and effects. See the module docstring.

    Args:
        loop: the Raft loop proposals go to.
        clock_ms: the wall clock (injectable for tests).
        mailbox_capacity: commands an actor's mailbox holds before `submit` raises Busy.
        mailbox_max_bytes: entry bytes an actor's mailbox holds before `submit` raises Busy
            (a command larger than that is taken into an empty mailbox).
        max_batch: most commands in one proposal.
        commit_timeout_s: how long a client waits for its entry before TIMEOUT.
        idle_s: an actor with nothing to do for this long stops (it restarts on demand).
    """

    def __init__(
        self,
        loop: RaftLoop,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        mailbox_capacity: int = 4096,
        mailbox_max_bytes: int = 64 * 1024 * 1024,
        max_batch: int = 512,
        commit_timeout_s: float = 10.0,
        idle_s: float = 60.0,
    ) -> None:
        self.loop = loop
        self.clock_ms = clock_ms
        self.mailbox_capacity = mailbox_capacity
        self.mailbox_max_bytes = mailbox_max_bytes
        self.max_batch = max_batch
        self.commit_timeout_s = commit_timeout_s
        self.idle_s = idle_s
        self._actors: dict[str, _Actor] = {}
        self._nursery: trio.Nursery | None = None
        self._wakes: dict[str, trio.Event] = {}
        self._timer_at: int | None = None
        self._timer_changed = trio.Event()
        self._leader_epoch = 0
        self._deadlines: deque[tuple[float, Proposal]] = deque()
        self.stats = {"batches": 0, "commands": 0, "ticks": 0, "busy": 0}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the actors' nursery and the timer task until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._timer_task)
            nursery.start_soon(self._sweep_deadlines)
            task_status.started()
            await trio.sleep_forever()

    # -- submitting ---------------------------------------------------------------------------
    async def submit(self, cmd: machine.Command, key: str) -> Any:
        """Run a write command through the log and return the machine's reply.

        The command is stamped with the wall clock now (the machine's `now_ms`).

        Returns:
            The reply (plain data, or a `machine.ErrorReply`).

        Raises:
            ProposalFailed: NOT_LEADER / UNAVAILABLE (not executed), OUTCOME_UNKNOWN or TIMEOUT
                (may or may not have taken effect).
            Busy: the mailbox is full (not executed).
        """
        if not self.loop.is_leader or self._nursery is None:
            raise ProposalFailed("NOT_LEADER", "not the leader", self.loop.view.leader_id)
        actor = self._actors.get(key)
        if actor is None:
            actor = self._start_actor(key)
        prop = Proposal(encode_entry(self.clock_ms(), cmd))
        size = len(prop.data)
        if actor.queued_bytes and actor.queued_bytes + size > self.mailbox_max_bytes:
            self.stats["busy"] += 1
            raise Busy(f"mailbox of {key!r} holds {actor.queued_bytes} bytes")
        try:
            actor.send.send_nowait(prop)
        except trio.WouldBlock:
            self.stats["busy"] += 1
            raise Busy(f"mailbox of {key!r} is full") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ProposalFailed("NOT_LEADER", "not the leader", self.loop.view.leader_id) from None
        actor.queued_bytes += size
        # One deadline sweep for everyone instead of a cancel scope per request.
        self._deadlines.append((trio.current_time() + self.commit_timeout_s, prop))
        await prop.done.wait()
        if prop.error is not None:
            raise prop.error
        return prop.result

    async def _sweep_deadlines(self) -> None:
        deadlines = self._deadlines
        timeout = ProposalFailed("TIMEOUT", f"not committed within {self.commit_timeout_s} s")
        while True:
            await trio.sleep(min(1.0, self.commit_timeout_s / 4))
            now = trio.current_time()
            while deadlines and deadlines[0][0] <= now:
                _, prop = deadlines.popleft()
                if not prop.done.is_set():
                    prop.fail(timeout)
            while deadlines and deadlines[0][1].done.is_set():
                deadlines.popleft()

    def _start_actor(self, key: str) -> _Actor:
        assert self._nursery is not None
        send, receive = trio.open_memory_channel[Proposal](self.mailbox_capacity)
        actor = _Actor(key, send, receive)
        self._actors[key] = actor
        self._nursery.start_soon(self._run_actor, actor)
        return actor

    async def _run_actor(self, actor: _Actor) -> None:
        loop = self.loop
        receive = actor.receive
        with actor.scope:
            while True:
                first: Proposal | None = None
                with trio.move_on_after(self.idle_s):
                    first = await receive.receive()
                if first is None:
                    # Idle: retire. No await between here and close, so no submit can race in.
                    if self._actors.get(actor.key) is actor:
                        del self._actors[actor.key]
                    actor.send.close()
                    return
                batch = [first]
                while len(batch) < self.max_batch:
                    try:
                        batch.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                actor.queued_bytes -= sum(len(p.data) for p in batch)
                batch = [p for p in batch if not p.done.is_set()]  # timed out while queued
                loop.submit(batch)
                self.stats["batches"] += 1
                self.stats["commands"] += len(batch)
                for prop in batch:
                    await prop.done.wait()

    def _stop_actors(self) -> None:
        err = ProposalFailed("NOT_LEADER", "leadership moved", self.loop.view.leader_id)
        actors, self._actors = self._actors, {}
        for actor in actors.values():
            actor.scope.cancel()
            actor.send.close()
            while True:
                try:
                    prop = actor.receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                if not prop.done.is_set():
                    prop.fail(err)  # never proposed: certainly not executed

    # -- effects (EffectSink): realised only while this node leads -----------------------------
    def wake(self, queue: str) -> None:
        ev = self._wakes.pop(queue, None)
        if ev is not None:
            ev.set()

    async def wait_wake(self, queue: str, timeout_s: float) -> bool:
        """Wait until `queue` may have deliverable messages; False when `timeout_s` ran out."""
        ev = self._wakes.get(queue)
        if ev is None:
            ev = self._wakes[queue] = trio.Event()
        with trio.move_on_after(timeout_s):
            await ev.wait()
            return True
        return False

    def arm_timer(self, at_ms: int) -> None:
        if self.loop.is_leader:
            self._timer_at = at_ms
            self._timer_changed.set()

    def release(self, index: int) -> None:
        if self.loop.is_leader:
            self.loop.request_snapshot(min_entries=1000)

    def became_leader(self, effects: list[machine.Effect]) -> None:
        self._leader_epoch += 1
        logger.info("leading: starting actors on demand")
        for eff in effects:
            if isinstance(eff, machine.WakeWaiters):
                self.wake(eff.queue)
            elif isinstance(eff, machine.ArmTimer):
                self.arm_timer(eff.at_ms)

    def lost_leadership(self) -> None:
        self._timer_at = None
        self._timer_changed.set()
        self._stop_actors()
        wakes, self._wakes = self._wakes, {}
        for ev in wakes.values():
            ev.set()  # long-poll receivers re-check and learn that this node no longer leads

    # -- the machine's timer ------------------------------------------------------------------
    async def _timer_task(self) -> None:
        while True:
            changed = self._timer_changed
            at = self._timer_at
            if not self.loop.is_leader or at is None:
                await changed.wait()
                self._timer_changed = trio.Event()
                continue
            delay_s = (at - self.clock_ms()) / 1000
            if delay_s > 0:
                with trio.move_on_after(delay_s):
                    await changed.wait()
                    self._timer_changed = trio.Event()
                    continue
            self._timer_at = None
            try:
                await self.submit(machine.make_tick(self.clock_ms()), TICK_KEY)
                self.stats["ticks"] += 1
            except (ProposalFailed, Busy) as exc:
                logger.debug("tick not applied: %s", exc)
                if self._timer_at is None and self.loop.is_leader:
                    self._timer_at = at
                await trio.sleep(0.05)
