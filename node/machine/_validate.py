"""Field checks for every command: the one place that decides `BAD_REQUEST`.

`apply` runs these on every command, whatever built it (a `make_*` helper,
`decode_command` or a test), and `command_from_wire` runs them so a client
hears about a bad request before anything reaches the log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from . import _commands as C
from . import _errors as E
from . import _limits as L
from ._options import options_problem


def _bad(message: str) -> E.ErrorReply:
    return E.ErrorReply(E.BAD_REQUEST, message)


def _name_problem(value: object, what: str) -> E.ErrorReply | None:
    if not L.is_valid_name(value):
        return _bad(f"{what} must be 1 to {L.NAME_MAX_CHARS} characters from [A-Za-z0-9._-]")
    return None


def _id_ok(value: object) -> bool:
    return type(value) is str and 0 < len(value) <= L.MAX_ID_CHARS


def _opt_int_ok(value: object, low: int, high: int) -> bool:
    return value is None or (type(value) is int and low <= value <= high)


def message_problem(m: Any) -> E.ErrorReply | None:
    """Check the message fields shared by `Enqueue`, `Publish` and `MessageSpec`.

    Args:
        m: An object with `body`, `headers`, `dedup_id`, `delay_ms`, `ttl_ms`, `group`.

    Returns:
        None when valid, else a `BAD_REQUEST` reply.
    """
    if type(m.body) is not bytes:
        return _bad("body must be bytes")
    headers = m.headers
    if type(headers) is not dict:
        return _bad("headers must be a map of str to str")
    if headers:
        if len(headers) > L.MAX_HEADERS:
            return _bad(f"at most {L.MAX_HEADERS} headers")
        for k, v in headers.items():
            if type(k) is not str or type(v) is not str:
                return _bad("headers must be a map of str to str")
            if not 0 < len(k) <= L.MAX_HEADER_KEY_CHARS:
                return _bad(f"header names must have 1 to {L.MAX_HEADER_KEY_CHARS} characters")
    if m.dedup_id is not None and not _id_ok(m.dedup_id):
        return _bad(f"dedup_id must be a str of 1 to {L.MAX_ID_CHARS} characters")
    if m.group is not None and not _id_ok(m.group):
        return _bad(f"group must be a str of 1 to {L.MAX_ID_CHARS} characters")
    if not _opt_int_ok(m.delay_ms, 0, L.MAX_DELAY_MS):
        return _bad(f"delay_ms must be an int from 0 to {L.MAX_DELAY_MS}")
    if not _opt_int_ok(m.ttl_ms, 1, L.MAX_TTL_MS):
        return _bad(f"ttl_ms must be an int from 1 to {L.MAX_TTL_MS}")
    return None


def _queue_name(value: object, what: str = "queue") -> E.ErrorReply | None:
    # Existing queues always have valid names: only the type matters for lookups,
    # but a malformed name is reported as BAD_REQUEST, not QUEUE_NOT_FOUND.
    return _name_problem(value, what)


def _v_create_queue(c: C.CreateQueue) -> E.ErrorReply | None:
    problem = _name_problem(c.name, "name")
    if problem is not None:
        return problem
    text = options_problem(c.options)
    if text is not None:
        return _bad(text)
    if c.options.dead_letter_queue == c.name:
        return _bad("a queue cannot be its own dead_letter_queue")
    return None


def _v_name(c: Any) -> E.ErrorReply | None:
    return _name_problem(c.name, "name")


def _v_none(c: Any) -> E.ErrorReply | None:
    return None


def _v_enqueue(c: C.Enqueue) -> E.ErrorReply | None:
    return _queue_name(c.queue) or message_problem(c)


def _v_enqueue_batch(c: C.EnqueueBatch) -> E.ErrorReply | None:
    problem = _queue_name(c.queue)
    if problem is not None:
        return problem
    entries = c.entries
    if type(entries) is not tuple or not entries:
        return _bad("entries must be a non-empty sequence of messages")
    if len(entries) > L.MAX_BATCH:
        return E.ErrorReply(E.BATCH_TOO_LARGE, f"at most {L.MAX_BATCH} messages in a batch")
    for entry in entries:
        if type(entry) is not C.MessageSpec:
            return _bad("each entry must be a message")
        problem = message_problem(entry)
        if problem is not None:
            return problem
    return None


def _v_receive(c: C.Receive) -> E.ErrorReply | None:
    problem = _queue_name(c.queue)
    if problem is not None:
        return problem
    if not _id_ok(c.consumer):
        return _bad(f"consumer must be a str of 1 to {L.MAX_ID_CHARS} characters")
    mm = c.max_messages
    if type(mm) is not int or not 1 <= mm <= L.MAX_BATCH:
        return _bad(f"max_messages must be an int from 1 to {L.MAX_BATCH}")
    if not _opt_int_ok(c.visibility_timeout_ms, 0, L.MAX_VISIBILITY_TIMEOUT_MS):
        return _bad(f"visibility_timeout_ms must be an int from 0 to {L.MAX_VISIBILITY_TIMEOUT_MS}")
    return None


def _receipt_type(value: object) -> E.ErrorReply | None:
    if type(value) is not str:
        return _bad("a receipt must be a str")
    return None


def _v_ack(c: C.Ack) -> E.ErrorReply | None:
    problem = _queue_name(c.queue)
    if problem is not None:
        return problem
    receipts = c.receipts
    if type(receipts) is not tuple or not receipts:
        return _bad("receipts must be a non-empty sequence of str")
    if len(receipts) > L.MAX_BATCH:
        return E.ErrorReply(E.BATCH_TOO_LARGE, f"at most {L.MAX_BATCH} receipts in one ack")
    for r in receipts:
        if type(r) is not str:
            return _bad("a receipt must be a str")
    return None


def _v_nack(c: C.Nack) -> E.ErrorReply | None:
    problem = _queue_name(c.queue) or _receipt_type(c.receipt)
    if problem is not None:
        return problem
    if type(c.delay_ms) is not int or not 0 <= c.delay_ms <= L.MAX_DELAY_MS:
        return _bad(f"delay_ms must be an int from 0 to {L.MAX_DELAY_MS}")
    if type(c.reject) is not bool:
        return _bad("reject must be a bool")
    return None


def _v_change_visibility(c: C.ChangeVisibility) -> E.ErrorReply | None:
    problem = _queue_name(c.queue) or _receipt_type(c.receipt)
    if problem is not None:
        return problem
    t = c.timeout_ms
    if type(t) is not int or not 0 <= t <= L.MAX_VISIBILITY_TIMEOUT_MS:
        return _bad(f"timeout_ms must be an int from 0 to {L.MAX_VISIBILITY_TIMEOUT_MS}")
    return None


def _v_redrive(c: C.Redrive) -> E.ErrorReply | None:
    problem = _queue_name(c.dlq, "dlq")
    if problem is not None:
        return problem
    if c.target is not None:
        problem = _queue_name(c.target, "target")
        if problem is not None:
            return problem
    mm = c.max_messages
    if type(mm) is not int or not 1 <= mm <= L.MAX_REDRIVE_MESSAGES:
        return _bad(f"max_messages must be an int from 1 to {L.MAX_REDRIVE_MESSAGES}")
    return None


def _v_subscription(c: C.Subscribe | C.Unsubscribe) -> E.ErrorReply | None:
    return _name_problem(c.topic, "topic") or _queue_name(c.queue)


def _v_publish(c: C.Publish) -> E.ErrorReply | None:
    return _name_problem(c.topic, "topic") or message_problem(c)


def _v_tick(c: C.Tick) -> E.ErrorReply | None:
    if type(c.now_ms) is not int or not 0 <= c.now_ms <= L.MAX_TIME_MS:
        return _bad("now_ms must be a non-negative int")
    return None


_VALIDATORS: Final[dict[type, Callable[[Any], E.ErrorReply | None]]] = {
    C.CreateQueue: _v_create_queue,
    C.DeleteQueue: _v_name,
    C.PurgeQueue: _v_name,
    C.ListQueues: _v_none,
    C.QueueStats: _v_name,
    C.Enqueue: _v_enqueue,
    C.EnqueueBatch: _v_enqueue_batch,
    C.Receive: _v_receive,
    C.Ack: _v_ack,
    C.Nack: _v_nack,
    C.ChangeVisibility: _v_change_visibility,
    C.Redrive: _v_redrive,
    C.CreateTopic: _v_name,
    C.DeleteTopic: _v_name,
    C.Subscribe: _v_subscription,
    C.Unsubscribe: _v_subscription,
    C.Publish: _v_publish,
    C.ListTopics: _v_none,
    C.Tick: _v_tick,
}


def validate(cmd: object) -> E.ErrorReply | None:
    """Check every field of a command.

    Args:
        cmd: Any value.

    Returns:
        None for a well-formed command; `UNKNOWN_OPERATION` for anything that is
        not a command; `BAD_REQUEST` (or `BATCH_TOO_LARGE`) naming the first bad field.
    """
    check = _VALIDATORS.get(type(cmd))
    if check is None:
        return E.ErrorReply(E.UNKNOWN_OPERATION, f"not a command: {type(cmd).__name__}")
    return check(cmd)


def meta_problem(meta: object) -> E.ErrorReply | None:
    """Check a `Meta`: non-negative ints, `now_ms` at most 2**62.

    Args:
        meta: Any value.

    Returns:
        None when valid, else a `BAD_REQUEST` reply.
    """
    if type(meta) is not C.Meta:
        return _bad("meta must be a Meta")
    index, term, now = meta.index, meta.term, meta.now_ms
    if (
        type(index) is int
        and type(term) is int
        and type(now) is int
        and 0 <= index <= _MAX
        and 0 <= term <= _MAX
        and 0 <= now <= _MAX
    ):
        return None
    return _bad("meta fields must be non-negative ints")


_MAX: Final = L.MAX_TIME_MS
