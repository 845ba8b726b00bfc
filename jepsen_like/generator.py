"""The workload as data: which operation each client performs next, drawn from a seed.

The runner asks, per process, for the next operation (`Generator.enqueue`, `.receive`, `.read`)
and, per received message, for what the consumer does with it (`.action`): the choices come
from a `random.Random` seeded by the run's seed and the process id, so one seed describes one
workload (the interleaving, of course, is the cluster's).

Values are unique integers; each enqueue carries the deduplication id `v<value>`. Some values
are poison (every consumer nacks them, so they end in the dead-letter queue by the delivery
limit).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

__all__ = [
    "Action",
    "EnqueueOp",
    "Generator",
    "QueueConf",
    "ReadOp",
    "ReceiveOp",
    "Workload",
]

Action = str
"""What a consumer does with one message: "ack", "nack", "crash" or "stale-ack"."""


@dataclass(frozen=True)
class QueueConf:
    """One queue of the workload.

    Attributes:
        name: the queue (its dead-letter queue is `<name>.dlq`).
        fifo: FIFO message groups.
        visibility_timeout_ms: lease of a received message.
        max_deliveries: delivery limit before dead-lettering.
        weight: share of the enqueues that go to this queue.
        groups: number of message groups (FIFO queues), named `g0`, `g1`, ...
        poison_fraction: share of this queue's values that are poison.
    """

    name: str
    fifo: bool = False
    visibility_timeout_ms: int = 2000
    max_deliveries: int = 8
    weight: float = 1.0
    groups: int = 8
    poison_fraction: float = 0.0

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"

    def options(self) -> dict[str, object]:
        """Options for `create_queue`."""
        return {
            "visibility_timeout_ms": self.visibility_timeout_ms,
            "max_deliveries": self.max_deliveries,
            "fifo": self.fifo,
            "dead_letter_queue": self.dlq,
        }


@dataclass(frozen=True)
class Workload:
    """What the clients do.

    Attributes:
        queues: the queues.
        p_nack: probability that a consumer nacks a message.
        p_crash: probability that a consumer crashes holding a message (it and the rest of its
            batch are never acked; the consumer continues as a new process).
        p_stale: probability that a consumer keeps a message past its lease, then acks it
            (the ack must be refused).
        stale_lease_ms: the short lease a stale-ack receive asks for.
        stale_hold_s: how long a stale-ack consumer holds the message before acking, seconds.
        max_messages: most messages per receive.
        wait_s: long-poll time of a receive, seconds.
        producer_share: share of the processes that produce (the rest consume).
        readers: reader processes, besides the producers and consumers: each asks for the
            `queue_stats` of one of the queues at a time, through its own client, the first
            reader starting at the first node, the next at the next node (None: one per
            node; 0: none).
        read_rate: `queue_stats` invocations per second of each reader.
    """

    queues: tuple[QueueConf, ...] = (
        QueueConf("jq"),
        QueueConf("jqf", fifo=True, weight=0.5),
    )
    p_nack: float = 0.05
    p_crash: float = 0.02
    p_stale: float = 0.0
    stale_lease_ms: int = 300
    stale_hold_s: float = 1.0
    max_messages: int = 5
    wait_s: float = 0.3
    producer_share: float = 0.5
    readers: int | None = None
    read_rate: float = 4.0

    def queue(self, name: str) -> QueueConf:
        for q in self.queues:
            if q.name == name:
                return q
        raise KeyError(name)

    @property
    def max_visibility_timeout_ms(self) -> int:
        return max(q.visibility_timeout_ms for q in self.queues)


@dataclass(frozen=True)
class EnqueueOp:
    """Send one value."""

    queue: str
    value: int
    dedup_id: str
    group: str | None
    poison: bool


@dataclass(frozen=True)
class ReceiveOp:
    """Receive from a queue."""

    queue: str
    max_messages: int
    visibility_timeout_ms: int
    wait_s: float
    stale: bool = False


@dataclass(frozen=True)
class ReadOp:
    """Read a queue's counters (`queue_stats`)."""

    queue: str


@dataclass
class Generator:
    """Draws operations for every process of a run.

    Args:
        workload: what to do.
        seed: the run's seed.
    """

    workload: Workload
    seed: int
    poison_values: set[int] = field(default_factory=set)
    _values: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _rngs: dict[int, random.Random] = field(default_factory=dict)

    def rng(self, process: int) -> random.Random:
        """The process's own random source (seeded by the run's seed and the process id)."""
        r = self._rngs.get(process)
        if r is None:
            r = self._rngs[process] = random.Random(f"{self.seed}/{process}")
        return r

    def enqueue(self, process: int) -> EnqueueOp:
        """The next enqueue of a producer."""
        r = self.rng(process)
        qs = self.workload.queues
        q = r.choices(qs, weights=[x.weight for x in qs])[0]
        value = next(self._values)
        group = f"g{r.randrange(q.groups)}" if q.fifo else None
        poison = q.poison_fraction > 0 and r.random() < q.poison_fraction
        if poison:
            self.poison_values.add(value)
        return EnqueueOp(q.name, value, f"v{value}", group, poison)

    def receive(self, process: int) -> ReceiveOp:
        """The next receive of a consumer."""
        r = self.rng(process)
        wl = self.workload
        q = r.choice(wl.queues)
        if wl.p_stale > 0 and r.random() < wl.p_stale:
            return ReceiveOp(q.name, 1, wl.stale_lease_ms, wl.wait_s, stale=True)
        return ReceiveOp(q.name, r.randint(1, wl.max_messages), q.visibility_timeout_ms,
                         wl.wait_s)

    def read(self, process: int) -> ReadOp:
        """The next read of a reader."""
        return ReadOp(self.rng(process).choice(self.workload.queues).name)

    def action(self, process: int, value: int | None, op: ReceiveOp) -> Action:
        """What the consumer does with a message it received by `op`."""
        if value is not None and value in self.poison_values:
            return "nack"
        if op.stale:
            return "stale-ack"
        r = self.rng(process)
        x = r.random()
        if x < self.workload.p_crash:
            return "crash"
        if x < self.workload.p_crash + self.workload.p_nack:
            return "nack"
        return "ack"
