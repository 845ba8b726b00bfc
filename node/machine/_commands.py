"""Commands of the queue machine: frozen, slotted values built by `make_*` helpers.

A command is what a Raft log entry carries (see `encode_command`). The helpers
build commands without checking them; `apply` and `command_from_wire` check
every field (see `_validate.py`), so a command built from garbage is answered
with `BAD_REQUEST`, never an exception. After rabbit_fifo's command records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from . import _limits as L
from ._options import QueueOptions

__all__ = [
    "Meta",
    "Command",
    "READ_ONLY_TYPES",
]


@dataclass(frozen=True, slots=True)
class Meta:
    """Facts about the log entry being applied.

    Attributes:
        index: Raft log index of the entry (>= 0).
        term: Raft term of the entry (>= 0).
        now_ms: Wall-clock milliseconds stamped by the leader that proposed the entry.
            The machine uses `max(state.clock_ms, now_ms)`, so time never goes back.
    """

    index: int
    term: int
    now_ms: int


@dataclass(frozen=True, slots=True)
class CreateQueue:
    """Create a queue (idempotent with identical options)."""

    name: str
    options: QueueOptions


@dataclass(frozen=True, slots=True)
class DeleteQueue:
    """Delete a queue and every message in it."""

    name: str


@dataclass(frozen=True, slots=True)
class PurgeQueue:
    """Delete every message of a queue, keeping the queue."""

    name: str


@dataclass(frozen=True, slots=True)
class ListQueues:
    """Read: names of all queues."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Read: counts and totals of one queue."""

    name: str


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """One message of an `EnqueueBatch`; fields as in `Enqueue`."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    dedup_id: str | None = None
    delay_ms: int | None = None
    ttl_ms: int | None = None
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Enqueue:
    """Add one message to a queue.

    Attributes:
        queue: Queue name.
        body: Message body.
        headers: str to str map, at most 64 entries; counted in the message size.
        dedup_id: Deduplication id (1 to 128 chars) or None.
        delay_ms: Delay before the message becomes visible, 0 to 15 min, or None for
            the queue's `delay_ms`.
        ttl_ms: Time to live from enqueue, 1 ms to 14 days, or None (retention only).
        group: Message group (1 to 128 chars) or None; orders delivery in FIFO queues.
    """

    queue: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    dedup_id: str | None = None
    delay_ms: int | None = None
    ttl_ms: int | None = None
    group: str | None = None


@dataclass(frozen=True, slots=True)
class EnqueueBatch:
    """Add 1 to 100 messages to a queue, all or nothing."""

    queue: str
    entries: tuple[MessageSpec, ...]


@dataclass(frozen=True, slots=True)
class Receive:
    """Deliver up to `max_messages` visible messages and lease them.

    Attributes:
        queue: Queue name.
        consumer: Name of the consumer (1 to 128 chars; informational).
        max_messages: 1 to 100.
        visibility_timeout_ms: Lease length, 0 to 12 h, or None for the queue's.
    """

    queue: str
    consumer: str
    max_messages: int = 1
    visibility_timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """Settle delivered messages by receipt handle (1 to 100 receipts)."""

    queue: str
    receipts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Nack:
    """Give a delivered message back: visible again after `delay_ms`, or dead-letter it."""

    queue: str
    receipt: str
    delay_ms: int = 0
    reject: bool = False


@dataclass(frozen=True, slots=True)
class ChangeVisibility:
    """Set the lease of a delivered message to end `timeout_ms` from now."""

    queue: str
    receipt: str
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class Redrive:
    """Move ready messages of a dead-letter queue back to their source (or `target`)."""

    dlq: str
    target: str | None = None
    max_messages: int = L.DEFAULT_REDRIVE_MESSAGES


@dataclass(frozen=True, slots=True)
class CreateTopic:
    """Create a topic (idempotent)."""

    name: str


@dataclass(frozen=True, slots=True)
class DeleteTopic:
    """Delete a topic and its subscriptions."""

    name: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe a queue to a topic (idempotent)."""

    topic: str
    queue: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Remove a queue's subscription to a topic (idempotent)."""

    topic: str
    queue: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Enqueue one copy of a message into every queue subscribed to a topic."""

    topic: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    dedup_id: str | None = None
    delay_ms: int | None = None
    ttl_ms: int | None = None
    group: str | None = None


@dataclass(frozen=True, slots=True)
class ListTopics:
    """Read: topics and their subscribed queues."""


@dataclass(frozen=True, slots=True)
class Tick:
    """Internal: let time pass to `now_ms` (proposed by the leader on a timer)."""

    now_ms: int


Command = (
    CreateQueue
    | DeleteQueue
    | PurgeQueue
    | ListQueues
    | QueueStats
    | Enqueue
    | EnqueueBatch
    | Receive
    | Ack
    | Nack
    | ChangeVisibility
    | Redrive
    | CreateTopic
    | DeleteTopic
    | Subscribe
    | Unsubscribe
    | Publish
    | ListTopics
    | Tick
)
"""Any command the machine applies."""

COMMAND_TYPES: Final[tuple[type, ...]] = (
    CreateQueue,
    DeleteQueue,
    PurgeQueue,
    ListQueues,
    QueueStats,
    Enqueue,
    EnqueueBatch,
    Receive,
    Ack,
    Nack,
    ChangeVisibility,
    Redrive,
    CreateTopic,
    DeleteTopic,
    Subscribe,
    Unsubscribe,
    Publish,
    ListTopics,
    Tick,
)

READ_ONLY_TYPES: Final[frozenset[type]] = frozenset({ListQueues, QueueStats, ListTopics})


class _Default(Enum):
    DEFAULT = "default"


DEFAULT_DLQ: Final = _Default.DEFAULT
"""Sentinel for `make_create_queue(dead_letter_queue=...)`: use `<name>.dlq`."""


def make_create_queue(
    name: str,
    *,
    visibility_timeout_ms: int = L.DEFAULT_VISIBILITY_TIMEOUT_MS,
    max_deliveries: int = L.DEFAULT_MAX_DELIVERIES,
    dead_letter_queue: str | None | _Default = DEFAULT_DLQ,
    retention_ms: int = L.DEFAULT_RETENTION_MS,
    max_message_bytes: int = L.DEFAULT_MAX_MESSAGE_BYTES,
    max_length: int | None = None,
    overflow: str = L.OVERFLOW_REJECT_PUBLISH,
    dedup_window_ms: int = L.DEFAULT_DEDUP_WINDOW_MS,
    delay_ms: int = L.DEFAULT_DELAY_MS,
    fifo: bool = False,
    max_length_bytes: int | None = None,
) -> CreateQueue:
    """Build a `CreateQueue` with every default filled in (so the log is explicit).

    Args:
        name: Queue name, 1 to 80 characters from `[A-Za-z0-9._-]`.
        visibility_timeout_ms: See `QueueOptions`.
        max_deliveries: See `QueueOptions`.
        dead_letter_queue: A queue name, None for no dead-letter queue, or
            `DEFAULT_DLQ` for `<name>.dlq`.
        retention_ms: See `QueueOptions`.
        max_message_bytes: See `QueueOptions`.
        max_length: See `QueueOptions`.
        overflow: See `QueueOptions`.
        dedup_window_ms: See `QueueOptions`.
        delay_ms: See `QueueOptions`.
        fifo: See `QueueOptions`.
        max_length_bytes: See `QueueOptions`.

    Returns:
        The command (not checked; `apply` answers `BAD_REQUEST` for bad values).
    """
    dlq: str | None
    if dead_letter_queue is DEFAULT_DLQ:
        dlq = f"{name}{L.DLQ_SUFFIX}" if type(name) is str else None
    else:
        dlq = dead_letter_queue
    return CreateQueue(
        name,
        QueueOptions(
            visibility_timeout_ms=visibility_timeout_ms,
            max_deliveries=max_deliveries,
            dead_letter_queue=dlq,
            retention_ms=retention_ms,
            max_message_bytes=max_message_bytes,
            max_length=max_length,
            overflow=overflow,
            dedup_window_ms=dedup_window_ms,
            delay_ms=delay_ms,
            fifo=fifo,
            max_length_bytes=max_length_bytes,
        ),
    )


def make_delete_queue(name: str) -> DeleteQueue:
    """Build a `DeleteQueue` command."""
    return DeleteQueue(name)


def make_purge_queue(name: str) -> PurgeQueue:
    """Build a `PurgeQueue` command."""
    return PurgeQueue(name)


def make_list_queues() -> ListQueues:
    """Build a `ListQueues` read."""
    return ListQueues()


def make_queue_stats(name: str) -> QueueStats:
    """Build a `QueueStats` read."""
    return QueueStats(name)


def make_message(
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    dedup_id: str | None = None,
    delay_ms: int | None = None,
    ttl_ms: int | None = None,
    group: str | None = None,
) -> MessageSpec:
    """Build one entry of an `EnqueueBatch`; arguments as for `make_enqueue`."""
    return MessageSpec(body, {} if headers is None else headers, dedup_id, delay_ms, ttl_ms, group)


def make_enqueue(
    queue: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    dedup_id: str | None = None,
    delay_ms: int | None = None,
    ttl_ms: int | None = None,
    group: str | None = None,
) -> Enqueue:
    """Build an `Enqueue` command.

    Args:
        queue: Queue name.
        body: Message body.
        headers: str to str map or None for none.
        dedup_id: Deduplication id or None.
        delay_ms: 0 to 15 min, or None for the queue's delay.
        ttl_ms: 1 ms to 14 days, or None.
        group: Message group or None.

    Returns:
        The command (not checked).
    """
    return Enqueue(
        queue, body, {} if headers is None else headers, dedup_id, delay_ms, ttl_ms, group
    )


def make_enqueue_batch(
    queue: str, entries: list[MessageSpec] | tuple[MessageSpec, ...]
) -> EnqueueBatch:
    """Build an `EnqueueBatch` from `make_message` entries."""
    return EnqueueBatch(queue, tuple(entries))


def make_receive(
    queue: str,
    consumer: str,
    max_messages: int = 1,
    visibility_timeout_ms: int | None = None,
) -> Receive:
    """Build a `Receive` command (see `Receive` for ranges)."""
    return Receive(queue, consumer, max_messages, visibility_timeout_ms)


def make_ack(queue: str, receipts: list[str] | tuple[str, ...] | str) -> Ack:
    """Build an `Ack` for one receipt handle or a sequence of them."""
    if isinstance(receipts, str):
        return Ack(queue, (receipts,))
    return Ack(queue, tuple(receipts))


def make_nack(queue: str, receipt: str, delay_ms: int = 0, reject: bool = False) -> Nack:
    """Build a `Nack`: visible again after `delay_ms` (0 to 15 min), or dead-letter if `reject`."""
    return Nack(queue, receipt, delay_ms, reject)


def make_change_visibility(queue: str, receipt: str, timeout_ms: int) -> ChangeVisibility:
    """Build a `ChangeVisibility`: the lease ends `timeout_ms` (0 to 12 h) from now."""
    return ChangeVisibility(queue, receipt, timeout_ms)


def make_redrive(
    dlq: str, target: str | None = None, max_messages: int = L.DEFAULT_REDRIVE_MESSAGES
) -> Redrive:
    """Build a `Redrive` of up to `max_messages` (1 to 10,000) ready dead letters."""
    return Redrive(dlq, target, max_messages)


def make_create_topic(name: str) -> CreateTopic:
    """Build a `CreateTopic` command."""
    return CreateTopic(name)


def make_delete_topic(name: str) -> DeleteTopic:
    """Build a `DeleteTopic` command."""
    return DeleteTopic(name)


def make_subscribe(topic: str, queue: str) -> Subscribe:
    """Build a `Subscribe` command."""
    return Subscribe(topic, queue)


def make_unsubscribe(topic: str, queue: str) -> Unsubscribe:
    """Build an `Unsubscribe` command."""
    return Unsubscribe(topic, queue)


def make_publish(
    topic: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    dedup_id: str | None = None,
    delay_ms: int | None = None,
    ttl_ms: int | None = None,
    group: str | None = None,
) -> Publish:
    """Build a `Publish` command; arguments as for `make_enqueue`."""
    return Publish(
        topic, body, {} if headers is None else headers, dedup_id, delay_ms, ttl_ms, group
    )


def make_list_topics() -> ListTopics:
    """Build a `ListTopics` read."""
    return ListTopics()


def make_tick(now_ms: int) -> Tick:
    """Build the internal `Tick` the leader proposes when an `ArmTimer` falls due."""
    return Tick(now_ms)


def is_read_only(cmd: object) -> bool:
    """Tell whether a command only reads (list_queues, queue_stats, list_topics).

    Such commands may be answered from the leader's state with `query_*`,
    without a log entry.
    """
    return type(cmd) in READ_ONLY_TYPES


def queue_of(cmd: object) -> str | None:
    """The queue or topic a command addresses, to route it to a per-queue actor.

    Args:
        cmd: Any value.

    Returns:
        The queue name (the topic name for topic commands, the dead-letter queue
        for redrive), or None for commands that address no single queue
        (list_queues, list_topics, tick) or for non-commands.
    """
    t = type(cmd)
    if t in _QUEUE_ATTR:
        value = getattr(cmd, _QUEUE_ATTR[t])
        return value if type(value) is str else None
    return None


_QUEUE_ATTR: Final[dict[type, str]] = {
    CreateQueue: "name",
    DeleteQueue: "name",
    PurgeQueue: "name",
    QueueStats: "name",
    Enqueue: "queue",
    EnqueueBatch: "queue",
    Receive: "queue",
    Ack: "queue",
    Nack: "queue",
    ChangeVisibility: "queue",
    Redrive: "dlq",
    CreateTopic: "name",
    DeleteTopic: "name",
    Subscribe: "topic",
    Unsubscribe: "topic",
    Publish: "topic",
}
