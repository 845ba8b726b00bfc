"""The machine's state: queues of messages with the indexes that keep every step O(log n).

Layout of one queue (all keyed by message id, a global counter that never repeats):

* `messages`: dict id -> `Message`, in insertion order, which is id order and
  arrival-time order (ids only grow and time never goes back).
* `ready`: a heap of ids. In a standard queue it holds every READY message (a
  redelivered message keeps its place, as in rabbit_fifo); in a FIFO queue it holds
  only group heads that are READY. Entries of removed messages stay behind and are
  skipped when popped (lazy deletion), and the heap is compacted when half stale.
* `arrivals`: a deque of ids in arrival order; its head is always a live message (the
  oldest), which gives retention expiry, `drop_head` and the oldest age in O(1).
* `groups` (FIFO): group -> deque of ids in enqueue order; the head is always live.
* `dedup` / `dedup_order`: deduplication id -> message id, and (expiry, id) in insertion
  order, cleaned from the front (window and clock never shrink).

Timers of every queue share one heap in the state, entries
`(due_ms, kind, queue_uid, message_id, extra)`, checked against the message when popped
(lease end and delay end carry the value they expect). Each queue arms one retention
timer, for its oldest message, and re-arms it when it fires.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from ._effects import WakeWaiters
from ._options import QueueOptions

READY: Final = 0
INFLIGHT: Final = 1
DELAYED: Final = 2

T_LEASE: Final = 0
T_DELAY: Final = 1
T_EXPIRE: Final = 2
X_TTL: Final = 0
X_RETAIN: Final = 1

COMPACT_SLACK: Final = 1024
"""A lazily cleaned structure is compacted when longer than twice its live size plus this."""

TimerEntry = tuple[int, int, int, int, int]
"""(due_ms, kind, queue_uid, message_id, extra): extra is the delivery attempt of a lease,
or `X_TTL` / `X_RETAIN` for an expiry."""


class Message:
    """One stored message (slotted to keep the per-message overhead small).

    The body is not here: it lives in the node's body store (on disk) under `body_key`, and
    `apply` says what to write there (`StoreBodies`). A message keeps its body key when it
    moves (dead-lettering, redrive), so a move writes no body.

    Attributes:
        body_key: Key of the body in the body store (the id it was first enqueued with).
        size_bytes: Body size in bytes.
        headers: str to str map, or None when empty.
        arrived_ms: When it entered this queue (retention counts from here).
        first_ms: When it was first enqueued anywhere (kept through dead-lettering).
        delivery_count: Deliveries so far from this queue.
        status: READY, INFLIGHT or DELAYED.
        due_ms: Lease end (INFLIGHT) or delay end (DELAYED), else None.
        expire_ms: TTL expiry when earlier than retention expiry, else None.
        group: Message group, or None.
    """

    __slots__ = (
        "body_key",
        "size_bytes",
        "headers",
        "arrived_ms",
        "first_ms",
        "delivery_count",
        "status",
        "due_ms",
        "expire_ms",
        "group",
    )

    def __init__(
        self,
        body_key: int,
        size_bytes: int,
        headers: dict[str, str] | None,
        arrived_ms: int,
        first_ms: int,
        delivery_count: int,
        status: int,
        due_ms: int | None,
        expire_ms: int | None,
        group: str | None,
    ) -> None:
        self.body_key = body_key
        self.size_bytes = size_bytes
        self.headers = headers
        self.arrived_ms = arrived_ms
        self.first_ms = first_ms
        self.delivery_count = delivery_count
        self.status = status
        self.due_ms = due_ms
        self.expire_ms = expire_ms
        self.group = group


class Queue:
    """One queue: messages, their indexes, counters and lifetime totals."""

    __slots__ = (
        "uid",
        "name",
        "options",
        "fifo",
        "messages",
        "ready",
        "ready_limit",
        "arrivals",
        "groups",
        "dedup",
        "dedup_order",
        "n_ready",
        "n_inflight",
        "n_delayed",
        "n_bytes",
        "enqueued",
        "delivered",
        "redelivered",
        "acked",
        "dead_lettered",
        "expired",
        "purged",
        "redriven",
        "retain_mid",
        "retain_at_ms",
        "wake",
    )

    def __init__(self, uid: int, name: str, options: QueueOptions) -> None:
        self.uid = uid
        self.name = name
        self.options = options
        self.fifo = options.fifo
        self.messages: dict[int, Message] = {}
        self.ready: list[int] = []
        self.ready_limit = COMPACT_SLACK
        self.arrivals: deque[int] = deque()
        self.groups: dict[str, deque[int]] = {}
        self.dedup: dict[str, int] = {}
        self.dedup_order: deque[tuple[int, str]] = deque()
        self.n_ready = 0
        self.n_inflight = 0
        self.n_delayed = 0
        self.n_bytes = 0  # body bytes of the messages held
        self.enqueued = 0
        self.delivered = 0
        self.redelivered = 0
        self.acked = 0
        self.dead_lettered = 0
        self.expired = 0
        self.purged = 0
        self.redriven = 0
        self.retain_mid: int | None = None
        self.retain_at_ms: int | None = None
        self.wake = WakeWaiters(name)

    def totals(self) -> list[int]:
        """Lifetime totals in snapshot order."""
        return [
            self.enqueued,
            self.delivered,
            self.redelivered,
            self.acked,
            self.dead_lettered,
            self.expired,
            self.purged,
            self.redriven,
        ]


TOTAL_NAMES: Final = (
    "enqueued",
    "delivered",
    "redelivered",
    "acked",
    "dead_lettered",
    "expired",
    "purged",
    "redriven",
)


class MachineState:
    """The whole replicated state. `apply` mutates it in place and returns it.

    Attributes:
        clock_ms: Latest time applied (max of every entry's `now_ms`).
        next_message_id: Next message id; ids are never reused.
        next_queue_uid: Next queue uid; a re-created queue gets a new one.
        last_index: Log index of the last applied entry.
        last_term: Term of the last applied entry.
        queues: name -> Queue.
        queues_by_uid: uid -> Queue (timers name queues by uid).
        topics: topic -> subscribed queue names, in subscription order.
        timers: heap of `TimerEntry`.
        timers_limit: compaction threshold of `timers`.
        total_messages: messages held in all queues.
        woken: scratch for one apply: queues that got deliverable messages.
        body_puts: scratch for one apply: bodies to store, `(body_key, body)`.
        body_drops: scratch for one apply: body keys no message refers to any more.
    """

    __slots__ = (
        "clock_ms",
        "next_message_id",
        "next_queue_uid",
        "last_index",
        "last_term",
        "queues",
        "queues_by_uid",
        "topics",
        "timers",
        "timers_limit",
        "total_messages",
        "woken",
        "body_puts",
        "body_drops",
    )

    def __init__(self) -> None:
        self.clock_ms = 0
        self.next_message_id = 1
        self.next_queue_uid = 1
        self.last_index = 0
        self.last_term = 0
        self.queues: dict[str, Queue] = {}
        self.queues_by_uid: dict[int, Queue] = {}
        self.topics: dict[str, dict[str, None]] = {}
        self.timers: list[TimerEntry] = []
        self.timers_limit = COMPACT_SLACK
        self.total_messages = 0
        self.woken: dict[str, WakeWaiters] = {}
        self.body_puts: list[tuple[int, bytes]] = []
        self.body_drops: list[int] = []


def new_state() -> MachineState:
    """Return the empty state every replica starts from."""
    return MachineState()
