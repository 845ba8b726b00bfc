"""Faults as data: the nemesis kinds and their variants, one fault to inject (`Fault`) and what
one fault really did (`FaultRecord`).

`jepsen_like.nemesis` draws schedules of faults from a seed and injects them (its docstring says
what each kind and variant does); `jepsen_like.disk_nemesis` injects the disk faults for it,
`jepsen_like.membership_nemesis` the membership changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["KINDS", "Fault", "FaultRecord"]

KINDS: dict[str, tuple[str, ...]] = {
    "kill": ("one", "leader", "minority", "all"),
    "pause": ("leader", "one"),
    "partition": ("leader", "halves", "halves-leader", "ring", "bridge", "link", "one-way"),
    "restart-all": ("kill",),
    "delay": ("all",),
    "disk-corruption": ("flip-wal", "flip-sst", "truncate-wal", "cut-wal", "delete-wal"),
    "disk-loss": ("wipe",),
    "membership": ("add", "remove", "remove-leader", "replace"),
}
"""Every nemesis kind and the variants a drawn schedule picks from. A `membership` variant may
also end in `+kill-leader` (the leader is killed while the change is in flight; scenarios use
them: `jepsen_like.membership_nemesis`)."""


@dataclass(frozen=True)
class Fault:
    """One fault to inject.

    Attributes:
        kind: a key of `KINDS`.
        variant: one of the kind's variants.
        at_s: start, seconds after the workload began.
        duration_s: how long it lasts before it is healed, seconds.
        nodes_from: index (in the schedule) of an earlier fault whose nodes this one targets
            (e.g. kill the node that an earlier partition isolated), or None.
        seed: randomness for choosing nodes when it starts.
    """

    kind: str
    variant: str
    at_s: float
    duration_s: float
    nodes_from: int | None = None
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FaultRecord:
    """What one fault really did.

    Attributes:
        index: its index in the schedule.
        kind, variant: as the `Fault`.
        nodes: the nodes it targeted.
        links: directed links cut (partition), as [src, dst].
        pids: pids signalled (kill, pause, restart-all, disk-corruption, disk-loss).
        start_s, end_s: seconds since the start of the run (monotonic); end None while active.
        start_wall_ms, end_wall_ms: Unix wall-clock milliseconds.
        evidence: what proves the fault took effect (exit codes, process states, proxy counts).
        verified: the evidence shows the fault took effect.
        note: anything notable (e.g. "leader unknown: chose node 2").
    """

    index: int
    kind: str
    variant: str
    nodes: list[int] = field(default_factory=list)
    links: list[list[int]] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    start_s: float = 0.0
    end_s: float | None = None
    start_wall_ms: float = 0.0
    end_wall_ms: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    verified: bool = False
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        what = f"{self.kind}/{self.variant}"
        if self.links:
            return f"{what} links {' '.join(f'{a}->{b}' for a, b in self.links)}"
        return f"{what} nodes {self.nodes}"
