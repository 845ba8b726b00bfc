"""Stable error codes and the error reply value of the queue machine.

Every error the machine reports is a value, never an exception raised out of
`apply`: replicas must all reach the same state whatever a client sends. The
codes cross the wire unchanged and are part of the public contract (see
docs/semantics.md).
"""

from __future__ import annotations

from dataclasses import dataclass

BAD_REQUEST = "BAD_REQUEST"
"""An argument is missing, of the wrong type or out of range."""
UNKNOWN_OPERATION = "UNKNOWN_OPERATION"
"""The operation name (or command type) is not one the machine knows."""
QUEUE_NOT_FOUND = "QUEUE_NOT_FOUND"
"""The addressed queue does not exist."""
QUEUE_EXISTS = "QUEUE_EXISTS"
"""`create_queue` of an existing queue with different options."""
TOPIC_NOT_FOUND = "TOPIC_NOT_FOUND"
"""The addressed topic does not exist."""
TOPIC_EXISTS = "TOPIC_EXISTS"
"""Reserved: `create_topic` is idempotent and does not return it today."""
MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
"""Body plus headers exceed the queue's `max_message_bytes`."""
QUEUE_FULL = "QUEUE_FULL"
"""The queue holds `max_length` messages and its overflow is `reject_publish`."""
INVALID_RECEIPT = "INVALID_RECEIPT"
"""The receipt handle does not name the current delivery of an in-flight message."""
BATCH_TOO_LARGE = "BATCH_TOO_LARGE"
"""More than 100 entries in `enqueue_batch` or receipts in `ack`."""
INTERNAL_ERROR = "INTERNAL_ERROR"
"""A bug in the machine: `apply` caught an unexpected exception (never expected)."""

ERROR_CODES: frozenset[str] = frozenset(
    {
        BAD_REQUEST,
        UNKNOWN_OPERATION,
        QUEUE_NOT_FOUND,
        QUEUE_EXISTS,
        TOPIC_NOT_FOUND,
        TOPIC_EXISTS,
        MESSAGE_TOO_LARGE,
        QUEUE_FULL,
        INVALID_RECEIPT,
        BATCH_TOO_LARGE,
        INTERNAL_ERROR,
    }
)
"""Every code the machine may put in an `ErrorReply`."""


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An error answer to a command, returned (never raised) by `apply`.

    Attributes:
        code: One of the stable codes above, e.g. `QUEUE_NOT_FOUND`.
        message: A human-readable explanation; not part of the contract.
    """

    code: str
    message: str


class SnapshotError(ValueError):
    """Raised by `restore` when snapshot bytes are corrupt or of an unknown version."""
