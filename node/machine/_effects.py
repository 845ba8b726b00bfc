"""Effects: what `apply` asks the node to do, as data (after ra_machine effects).

Only the leader realises effects, and each one is idempotent, because a new
leader re-issues them on taking office (`state_enter`).
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


Effect = WakeWaiters | ArmTimer | ReleaseCursor
"""Any effect the machine returns."""
