"""Errors raised by the raftq client: one small hierarchy, one class per stable code.

Every error carries `code`, the stable code that crossed the wire (docs/protocol.md,
docs/semantics.md), or a client-side code for conditions the client detects itself
(`CLUSTER_UNAVAILABLE`, and `OUTCOME_UNKNOWN` for a connection lost after a request was sent).
Catch `RaftqError` for all of them.

Two errors matter for correctness:

* `OutcomeUnknownError`: the operation may or may not have taken effect (the connection was lost
  after the request was written, the leader lost office, the node's commit deadline passed, or
  the call's own deadline passed while waiting for the answer). A checker must count it as
  "info", never as "fail".
* `ClusterUnavailable`: the call's deadline passed and no attempt could have taken effect (no
  leader was found, every node refused or was unreachable before the request was sent).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyMember",
    "BadFrame",
    "BadRequest",
    "BatchTooLarge",
    "Busy",
    "DiskFull",
    "ChangeInProgress",
    "ClusterUnavailable",
    "FrameTooLarge",
    "IdRetired",
    "InternalError",
    "InvalidReceipt",
    "LastVoter",
    "LearnerBehind",
    "MembershipError",
    "MessageTooLarge",
    "NoQuorum",
    "NotLeader",
    "NotLearner",
    "OutcomeUnknownError",
    "QueueExists",
    "QueueFull",
    "QueueNotFound",
    "RaftqError",
    "TopicExists",
    "TopicNotFound",
    "Unavailable",
    "UnknownMember",
    "UnknownOperation",
    "error_from_wire",
]


class RaftqError(Exception):
    """Base of every error the client raises on behalf of the cluster.

    Attributes:
        code: the stable error code, e.g. `QUEUE_NOT_FOUND` (the wire code when the node sent it).
        message: human-readable detail (not part of the contract).
    """

    code: str = "ERROR"

    def __init__(self, code: str | None = None, message: str = "") -> None:
        """Create an error.

        Args:
            code: stable code; None keeps the class default.
            message: human-readable detail.
        """
        if code is not None:
            self.code = code
        self.message = message
        super().__init__(f"{self.code}: {message}" if message else self.code)


class NotLeader(RaftqError):
    """The node is not the leader (`NOT_LEADER`); the client redirects and retries by itself.

    Attributes:
        leader: the leader's client address ("host:port"), or None while none is known.
        nodes: the client addresses of the cluster's nodes, as the node that answered knows
            them (empty when it did not say).
    """

    code = "NOT_LEADER"

    def __init__(
        self,
        code: str | None = None,
        message: str = "",
        leader: str | None = None,
        nodes: tuple[str, ...] = (),
    ):
        super().__init__(code, message)
        self.leader = leader
        self.nodes = nodes


class Unavailable(RaftqError):
    """No leader right now, or the node is stopping (`UNAVAILABLE`); retried by the client."""

    code = "UNAVAILABLE"


class Busy(RaftqError):
    """The queue's mailbox on the leader is full (`BUSY`); retried with backoff by the client."""

    code = "BUSY"


class DiskFull(RaftqError):
    """The leader's disk is nearly full (`DISK_FULL`): it refuses new sends until space
    returns, while receives, acks and deletes go on; retried with backoff by the client."""

    code = "DISK_FULL"


class ClusterUnavailable(RaftqError):
    """The call's deadline passed and no attempt could have taken effect.

    Raised after the client retried (redirects, other nodes, backoff) until `timeout_s` without
    reaching a leader that answered. The operation was not executed.
    """

    code = "CLUSTER_UNAVAILABLE"


class OutcomeUnknownError(RaftqError):
    """The operation may or may not have happened; the client cannot know which.

    Raised for a non-idempotent operation (receive, ack, nack, change_visibility, purge, delete,
    redrive, transfer) when the connection was lost after the request was written, or the node
    answered `OUTCOME_UNKNOWN` or `TIMEOUT`; and for any write when the call's deadline passed
    after some attempt may have reached the leader. The code is the node's (`OUTCOME_UNKNOWN`,
    `TIMEOUT`) or `OUTCOME_UNKNOWN` when the client detected it.

    Attributes:
        op: the operation name, e.g. "ack".
        dedup_ids: the deduplication ids of the messages of a `send`, `send_batch` or
            `publish`; sending again with the same ids within the queue's deduplication window
            cannot enqueue twice.
    """

    code = "OUTCOME_UNKNOWN"

    def __init__(
        self,
        code: str | None = None,
        message: str = "",
        *,
        op: str = "",
        dedup_ids: tuple[str, ...] = (),
    ) -> None:
        super().__init__(code, message)
        self.op = op
        self.dedup_ids = dedup_ids


class BadRequest(RaftqError):
    """A malformed request or an argument out of range (`BAD_REQUEST`)."""

    code = "BAD_REQUEST"


class UnknownOperation(RaftqError):
    """The node does not know the operation (`UNKNOWN_OPERATION`)."""

    code = "UNKNOWN_OPERATION"


class QueueNotFound(RaftqError):
    """The queue (or a redrive target, or the queue to subscribe) does not exist."""

    code = "QUEUE_NOT_FOUND"


class QueueExists(RaftqError):
    """`create_queue` of an existing queue with different options (`QUEUE_EXISTS`)."""

    code = "QUEUE_EXISTS"


class TopicNotFound(RaftqError):
    """The topic does not exist (`TOPIC_NOT_FOUND`)."""

    code = "TOPIC_NOT_FOUND"


class TopicExists(RaftqError):
    """Reserved (`TOPIC_EXISTS`): `create_topic` is idempotent and does not raise it today."""

    code = "TOPIC_EXISTS"


class MessageTooLarge(RaftqError):
    """Body plus headers exceed the queue's `max_message_bytes` (`MESSAGE_TOO_LARGE`)."""

    code = "MESSAGE_TOO_LARGE"


class QueueFull(RaftqError):
    """The queue holds `max_length` messages and rejects new ones (`QUEUE_FULL`)."""

    code = "QUEUE_FULL"


class InvalidReceipt(RaftqError):
    """The receipt does not name the current delivery of an in-flight message.

    The lease ended, or the message was acked, nacked or expired (`INVALID_RECEIPT`).
    """

    code = "INVALID_RECEIPT"


class BatchTooLarge(RaftqError):
    """More than 100 messages in a batch or receipts in an ack (`BATCH_TOO_LARGE`)."""

    code = "BATCH_TOO_LARGE"


class FrameTooLarge(RaftqError):
    """A request is larger than the frame limit (`FRAME_TOO_LARGE`); it was not sent."""

    code = "FRAME_TOO_LARGE"


class BadFrame(RaftqError):
    """The node could not decode a frame (`BAD_FRAME`), or sent one the client cannot decode."""

    code = "BAD_FRAME"


class InternalError(RaftqError):
    """A bug on the node (`INTERNAL_ERROR`); the node logged it."""

    code = "INTERNAL_ERROR"


class MembershipError(RaftqError):
    """A membership change (`add_member`, `promote_member`, `remove_member`) was refused.

    The subclasses carry the stable codes of docs/protocol.md; none of them was executed.
    """

    code = "MEMBERSHIP_ERROR"


class ChangeInProgress(MembershipError):
    """Another membership change is not committed yet, or a new leader has not yet committed
    an entry of its term (`CHANGE_IN_PROGRESS`). The client retries it with backoff until the
    call's deadline, then raises it."""

    code = "CHANGE_IN_PROGRESS"


class LearnerBehind(MembershipError):
    """`promote_member` of a learner that has not caught up yet, or is still being repaired
    (`LEARNER_BEHIND`). Retryable, but left to the caller: wait for it to catch up."""

    code = "LEARNER_BEHIND"


class UnknownMember(MembershipError):
    """No member has this id (`UNKNOWN_MEMBER`)."""

    code = "UNKNOWN_MEMBER"


class AlreadyMember(MembershipError):
    """`add_member` of an id that is already a member, with other addresses or already a
    voter (`ALREADY_MEMBER`)."""

    code = "ALREADY_MEMBER"


class IdRetired(MembershipError):
    """`add_member` with an id given before (`ID_RETIRED`): ids of removed nodes are never
    reused, so that a message from an old process can never pass for a new member's."""

    code = "ID_RETIRED"


class NotLearner(MembershipError):
    """`promote_member` of a node that is already a voter (`NOT_LEARNER`)."""

    code = "NOT_LEARNER"


class LastVoter(MembershipError):
    """`remove_member` of the cluster's only voter (`LAST_VOTER`)."""

    code = "LAST_VOTER"


class NoQuorum(MembershipError):
    """The change would leave the voters without an active majority (`NO_QUORUM`): e.g.
    removing a healthy voter while another one is down."""

    code = "NO_QUORUM"


_BY_CODE: dict[str, type[RaftqError]] = {
    cls.code: cls
    for cls in (
        NotLeader,
        Unavailable,
        Busy,
        DiskFull,
        ClusterUnavailable,
        OutcomeUnknownError,
        BadRequest,
        UnknownOperation,
        QueueNotFound,
        QueueExists,
        TopicNotFound,
        TopicExists,
        MessageTooLarge,
        QueueFull,
        InvalidReceipt,
        BatchTooLarge,
        FrameTooLarge,
        BadFrame,
        InternalError,
        ChangeInProgress,
        LearnerBehind,
        UnknownMember,
        AlreadyMember,
        IdRetired,
        NotLearner,
        LastVoter,
        NoQuorum,
    )
}
_BY_CODE["TIMEOUT"] = OutcomeUnknownError


def error_from_wire(error: Any) -> RaftqError:
    """Build the error of a node's error reply.

    Args:
        error: the `error` map of a reply, `{"code", "message", "retryable", "leader"}` (and
            `"nodes"` with NOT_LEADER);
            anything else is tolerated and gives a `RaftqError` with code `BAD_FRAME`.

    Returns:
        An instance of the class of the code (`RaftqError` itself for an unknown code), with
        the wire code kept in `code` (so `TIMEOUT` gives an `OutcomeUnknownError` whose code is
        `TIMEOUT`).
    """
    if not isinstance(error, dict):
        return BadFrame(None, f"malformed error reply: {error!r:.200}")
    code = error.get("code")
    message = error.get("message")
    code = code if isinstance(code, str) and code else "ERROR"
    message = message if isinstance(message, str) else ""
    cls = _BY_CODE.get(code, RaftqError)
    if cls is NotLeader:
        leader = error.get("leader")
        nodes = error.get("nodes")
        known = tuple(n for n in nodes if isinstance(n, str)) if isinstance(nodes, list) else ()
        return NotLeader(code, message, leader if isinstance(leader, str) else None, known)
    return cls(code, message)
