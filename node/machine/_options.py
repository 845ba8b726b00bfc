"""Queue options: one frozen value per queue, every field filled in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _limits as L


@dataclass(frozen=True, slots=True)
class QueueOptions:
    """The settings of one queue, fixed when it is created.

    Attributes:
        visibility_timeout_ms: Lease of a received message, 0 to 12 h [30 s]
            (SQS visibility timeout).
        max_deliveries: Deliveries before dead-lettering, 0 = unlimited [10]
            (RabbitMQ `delivery-limit`, SQS `maxReceiveCount`).
        dead_letter_queue: Name of the dead-letter queue, or None [`<name>.dlq`].
        retention_ms: Time a message may stay, 60 s to 14 days [4 days].
        max_message_bytes: Largest body plus headers, 1 B to 4 MiB [1 MiB].
        max_length: Most messages held (ready, in flight, delayed), or None.
        overflow: `reject_publish` or `drop_head` [reject_publish] (RabbitMQ `x-overflow`).
        dedup_window_ms: How long a deduplication id is remembered, 0 to 1 day, 0 = off
            [5 min] (JetStream duplicate window).
        delay_ms: Delay of every new message, 0 to 15 min [0] (SQS delay queue).
        fifo: Deliver each message group in order, one in flight at a time [False].
        max_length_bytes: Most body bytes held (ready, in flight, delayed), or None; the
            overflow policy is `overflow`'s, as for `max_length` (RabbitMQ
            `x-max-length-bytes`, JetStream `max_bytes`).
    """

    visibility_timeout_ms: int = L.DEFAULT_VISIBILITY_TIMEOUT_MS
    max_deliveries: int = L.DEFAULT_MAX_DELIVERIES
    dead_letter_queue: str | None = None
    retention_ms: int = L.DEFAULT_RETENTION_MS
    max_message_bytes: int = L.DEFAULT_MAX_MESSAGE_BYTES
    max_length: int | None = None
    overflow: str = L.OVERFLOW_REJECT_PUBLISH
    dedup_window_ms: int = L.DEFAULT_DEDUP_WINDOW_MS
    delay_ms: int = L.DEFAULT_DELAY_MS
    fifo: bool = False
    max_length_bytes: int | None = None

    def to_list(self) -> list[Any]:
        """Return the fields in declaration order (the wire and snapshot form)."""
        return [
            self.visibility_timeout_ms,
            self.max_deliveries,
            self.dead_letter_queue,
            self.retention_ms,
            self.max_message_bytes,
            self.max_length,
            self.overflow,
            self.dedup_window_ms,
            self.delay_ms,
            self.fifo,
            self.max_length_bytes,
        ]

    def to_dict(self) -> dict[str, Any]:
        """Return the options as a plain dict with str keys (for replies)."""
        return dict(zip(OPTION_NAMES, self.to_list(), strict=True))


OPTION_NAMES: tuple[str, ...] = (
    "visibility_timeout_ms",
    "max_deliveries",
    "dead_letter_queue",
    "retention_ms",
    "max_message_bytes",
    "max_length",
    "overflow",
    "dedup_window_ms",
    "delay_ms",
    "fifo",
    "max_length_bytes",
)


def _int_in(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def options_problem(options: object) -> str | None:
    """Check a `QueueOptions` value field by field.

    Args:
        options: Anything; a `QueueOptions` is expected.

    Returns:
        None when valid, else a sentence naming the first bad field.
    """
    if type(options) is not QueueOptions:
        return "options must be QueueOptions"
    o = options
    if not _int_in(o.visibility_timeout_ms, 0, L.MAX_VISIBILITY_TIMEOUT_MS):
        return f"visibility_timeout_ms must be an int from 0 to {L.MAX_VISIBILITY_TIMEOUT_MS}"
    if not _int_in(o.max_deliveries, 0, L.MAX_MAX_DELIVERIES):
        return f"max_deliveries must be an int from 0 to {L.MAX_MAX_DELIVERIES}"
    if o.dead_letter_queue is not None and not L.is_valid_name(o.dead_letter_queue):
        return "dead_letter_queue must be None or a valid queue name"
    if not _int_in(o.retention_ms, L.MIN_RETENTION_MS, L.MAX_RETENTION_MS):
        return f"retention_ms must be an int from {L.MIN_RETENTION_MS} to {L.MAX_RETENTION_MS}"
    if not _int_in(o.max_message_bytes, 1, L.MAX_MAX_MESSAGE_BYTES):
        return f"max_message_bytes must be an int from 1 to {L.MAX_MAX_MESSAGE_BYTES}"
    if o.max_length is not None and not _int_in(o.max_length, 1, L.MAX_MAX_LENGTH):
        return f"max_length must be None or an int from 1 to {L.MAX_MAX_LENGTH}"
    if o.max_length_bytes is not None and not _int_in(
        o.max_length_bytes, 1, L.MAX_MAX_LENGTH_BYTES
    ):
        return f"max_length_bytes must be None or an int from 1 to {L.MAX_MAX_LENGTH_BYTES}"
    if type(o.overflow) is not str or o.overflow not in L.OVERFLOW_MODES:
        return f"overflow must be one of {', '.join(L.OVERFLOW_MODES)}"
    if not _int_in(o.dedup_window_ms, 0, L.MAX_DEDUP_WINDOW_MS):
        return f"dedup_window_ms must be an int from 0 to {L.MAX_DEDUP_WINDOW_MS}"
    if not _int_in(o.delay_ms, 0, L.MAX_DELAY_MS):
        return f"delay_ms must be an int from 0 to {L.MAX_DELAY_MS}"
    if type(o.fifo) is not bool:
        return "fifo must be a bool"
    return None


def options_from_list(fields: object) -> QueueOptions | None:
    """Build options from their list form without checking values.

    Args:
        fields: A list of exactly `len(OPTION_NAMES)` items, as `to_list` returns.

    Returns:
        The options (check them with `options_problem`), or None when the shape is wrong.
    """
    if type(fields) is not list or len(fields) != len(OPTION_NAMES):
        return None
    return QueueOptions(*fields)


def dead_letter_options(source: QueueOptions) -> QueueOptions:
    """Options of a dead-letter queue created together with its source queue.

    Defaults, except: no dead-letter queue of its own, 14 days of retention, and
    FIFO when the source is FIFO (as SQS requires).

    Args:
        source: Options of the queue being created.

    Returns:
        The options for the dead-letter queue.
    """
    return QueueOptions(
        dead_letter_queue=None,
        retention_ms=L.DLQ_RETENTION_MS,
        fifo=source.fifo,
        max_message_bytes=max(source.max_message_bytes, L.DEFAULT_MAX_MESSAGE_BYTES),
    )
