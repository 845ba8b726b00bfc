"""Effects: what `apply` asks the node to do, as data (after ra_machine effects).

Only the leader realises `WakeWaiters`, `ArmTimer` and `ReleaseCursor`, and each one is
idempotent, because a new leader re-issues them on taking office (`state_enter`).
`StoreBodies` is different: it is part of the state (message bodies live in the node's body
store, not in `MachineState`), so every replica realises it, in log order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WakeWaiters:
    """Messages became deliverable in `queue`: wake its long-poll receivers.

    Attributes:
        queue: Queue name.
    """

    queue: str


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """The machine's earliest due time is now `at_ms`: keep one timer, set to it.

    When the wall clock reaches `at_ms`, the leader proposes `make_tick(now_ms)`.
    A later `ArmTimer` replaces an earlier one. A tick that finds nothing due is cheap.

    Attributes:
        at_ms: Wall-clock milliseconds of the earliest lease end, delay end or expiry.
    """

    at_ms: int


@dataclass(frozen=True, slots=True)
class ReleaseCursor:
    """The log up to `index` is not needed: the state is cheap to snapshot now.

    Emitted when no queue holds a message, after rabbit_fifo's release cursor.

    Attributes:
        index: Raft log index of the entry just applied.
    """

    index: int


@dataclass(frozen=True, slots=True)
class StoreBodies:
    """Write these bodies to the body store and delete those keys (every replica, in order).

    Keys are never reused, so a key is always put before it is dropped: a driver that
    gathers the writes of many entries may put them all, then drop them all.

    Attributes:
        puts: `(body_key, body)` pairs of new messages.
        drops: body keys no message refers to any more.
    """

    puts: tuple[tuple[int, bytes], ...]
    drops: tuple[int, ...]


Effect = WakeWaiters | ArmTimer | ReleaseCursor | StoreBodies
"""Any effect the machine returns."""
