"""The Ready loop, written once: every driver of a core follows the contract through it.

`follow_readies(core, io)` takes Readys from the core while it has any and, for each, does the
steps of the contract (node/raft/_ready.py) in order, through the driver's `ReadyIO`:
send early, persist, send, apply (and report dropped proposals and soft state), advance, then
the driver's `after_advance` (where it feeds new input). The production driver
(node/raft_loop.py) awaits it; the test drivers (the Raft-core simulator, the rule tests'
harness) run it synchronously with `run_sync`, their `persist` never suspending. The order of
the steps therefore cannot differ between the driver that runs in production and the ones that
check the core.

Pure: an `async def` needs no event loop until something suspends, and nothing here does.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from ._ready import Ready
from ._types import Message

T = TypeVar("T")


class ReadyIO(Protocol):
    """What a driver does for each step of a Ready."""

    def send(self, msg: Message) -> None:
        """Hand a message to the network (never blocks; it may be lost)."""
        ...

    async def persist(self, rd: Ready) -> bool:
        """Step 1: make `rd`'s snapshot, entries and hard state durable (synced when
        `rd.must_sync`). Returns False when the node stopped instead (a simulated crash):
        the loop then ends without sending, applying or advancing."""
        ...

    def apply(self, rd: Ready) -> None:
        """Steps 3 and 4: restore `rd.snapshot`, apply `rd.committed_entries` in order, tell
        the proposers of `rd.dropped`, take note of `rd.soft_state`."""
        ...

    def after_advance(self, rd: Ready) -> None:
        """After `advance(rd)`: feed new input (ticks, messages, proposals) before the next
        Ready, or check invariants."""
        ...


class _Core(Protocol):
    def has_ready(self) -> bool: ...

    def ready(self) -> Ready: ...

    def advance(self, rd: Ready) -> None: ...


async def follow_readies(core: _Core, io: ReadyIO) -> int:
    """Follow the Ready contract until the core has no Ready left.

    Returns how many Readys were followed to the end (a crash in `persist` ends the loop).
    """
    done = 0
    while core.has_ready():
        rd = core.ready()
        for m in rd.early_messages:  # 0. a leader's appends go out while it writes
            io.send(m)
        if not await io.persist(rd):  # 1. durable before anything that depends on it leaves
            return done
        for m in rd.messages:  # 2. votes, append responses
            io.send(m)
        io.apply(rd)  # 3, 4.
        core.advance(rd)  # 5.
        done += 1
        io.after_advance(rd)
    return done


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (a synchronous driver's `follow_readies`).

    Raises:
        RuntimeError: the coroutine suspended (its `persist` awaited something real).
    """
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a synchronous Ready driver suspended")
