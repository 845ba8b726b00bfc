"""Defaults and limits of the queue machine, in one place.

Anchors: SQS quotas (visibility timeout 0 to 12 h, delay at most 15 min,
retention 60 s to 14 days, batches of 10 there, 100 here), RabbitMQ quorum
queues (delivery limit, `x-overflow`), NATS JetStream (duplicate window).
"""

from __future__ import annotations

import re
from typing import Final

SECOND_MS: Final = 1_000
MINUTE_MS: Final = 60 * SECOND_MS
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS
MIB: Final = 1024 * 1024

NAME_MAX_CHARS: Final = 80
"""Queue and topic names: 1 to 80 characters from `[A-Za-z0-9._-]`."""
NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,80}")

DEFAULT_VISIBILITY_TIMEOUT_MS: Final = 30 * SECOND_MS
MAX_VISIBILITY_TIMEOUT_MS: Final = 12 * HOUR_MS
DEFAULT_MAX_DELIVERIES: Final = 10
MAX_MAX_DELIVERIES: Final = 10_000
DEFAULT_RETENTION_MS: Final = 4 * DAY_MS
MIN_RETENTION_MS: Final = 60 * SECOND_MS
MAX_RETENTION_MS: Final = 14 * DAY_MS
DEFAULT_MAX_MESSAGE_BYTES: Final = MIB
MAX_MAX_MESSAGE_BYTES: Final = 4 * MIB
MAX_MAX_LENGTH: Final = 1_000_000_000
MAX_MAX_LENGTH_BYTES: Final = 1 << 50
DEFAULT_DEDUP_WINDOW_MS: Final = 5 * MINUTE_MS
MAX_DEDUP_WINDOW_MS: Final = DAY_MS
DEFAULT_DELAY_MS: Final = 0
MAX_DELAY_MS: Final = 15 * MINUTE_MS
MAX_TTL_MS: Final = 14 * DAY_MS
DLQ_SUFFIX: Final = ".dlq"
DLQ_RETENTION_MS: Final = MAX_RETENTION_MS
"""A dead-letter queue created with its source keeps messages 14 days (SQS advice)."""

OVERFLOW_REJECT_PUBLISH: Final = "reject_publish"
OVERFLOW_DROP_HEAD: Final = "drop_head"
OVERFLOW_MODES: Final = (OVERFLOW_REJECT_PUBLISH, OVERFLOW_DROP_HEAD)

MAX_BATCH: Final = 100
"""Most entries in `enqueue_batch`, receipts in `ack`, messages in `receive`."""
DEFAULT_REDRIVE_MESSAGES: Final = 1_000
MAX_REDRIVE_MESSAGES: Final = 10_000
MAX_HEADERS: Final = 64
MAX_HEADER_KEY_CHARS: Final = 256
MAX_ID_CHARS: Final = 128
"""Longest deduplication id, group id or consumer name."""
MAX_TIME_MS: Final = 2**62
"""Upper bound on any time or duration the machine accepts (keeps ints small)."""

DEFAULT_GROUP: Final = ""
"""Group of a message without one, in a FIFO queue."""

# Dead-letter headers (after RabbitMQ's x-first-death-* and SQS redrive attributes).
H_REASON: Final = "x-death-reason"
H_QUEUE: Final = "x-death-queue"
H_COUNT: Final = "x-death-delivery-count"
H_TIME: Final = "x-death-time-ms"
H_MESSAGE_ID: Final = "x-death-message-id"

REASON_DELIVERY_LIMIT: Final = "delivery_limit"
REASON_EXPIRED: Final = "expired"
REASON_MAX_LENGTH: Final = "max_length"
REASON_REJECTED: Final = "rejected"


def is_valid_name(name: object) -> bool:
    """Tell whether `name` is a valid queue or topic name.

    Args:
        name: Any value.

    Returns:
        True for a str of 1 to 80 characters from `[A-Za-z0-9._-]`.
    """
    return type(name) is str and NAME_RE.fullmatch(name) is not None
