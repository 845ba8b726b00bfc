"""Commands on the wire: client requests in, log entries out and in.

* `command_from_wire(op, args)` checks a decoded client request (op name and a map
  of arguments) and builds the command, or answers `BAD_REQUEST` /
  `UNKNOWN_OPERATION`. Unknown argument names are refused, so typos do not pass.
* `encode_command` / `decode_command` give the bytes stored in a Raft log entry:
  CBOR of `[op_code, field, ...]`. Op codes and field order are frozen: new fields
  go at the end, new commands get new codes. Nothing is unpickled or evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import cbor2

from . import _commands as C
from . import _errors as E
from . import _limits as L
from ._options import OPTION_NAMES, QueueOptions, options_from_list
from ._validate import validate

# Stable op codes of the log encoding. Never renumber.
OP_CODES: Final[dict[type, int]] = {
    C.CreateQueue: 1,
    C.DeleteQueue: 2,
    C.PurgeQueue: 3,
    C.ListQueues: 4,
    C.QueueStats: 5,
    C.Enqueue: 6,
    C.EnqueueBatch: 7,
    C.Receive: 8,
    C.Ack: 9,
    C.Nack: 10,
    C.ChangeVisibility: 11,
    C.Redrive: 12,
    C.CreateTopic: 13,
    C.DeleteTopic: 14,
    C.Subscribe: 15,
    C.Unsubscribe: 16,
    C.Publish: 17,
    C.ListTopics: 18,
    C.Tick: 19,
}
_TYPES_BY_CODE: Final[dict[int, type]] = {code: t for t, code in OP_CODES.items()}

_MESSAGE_FIELDS: Final = ("body", "headers", "dedup_id", "delay_ms", "ttl_ms", "group")


class _BadRequest(Exception):
    pass


def _spec_fields(m: Any) -> list[Any]:
    return [m.body, m.headers, m.dedup_id, m.delay_ms, m.ttl_ms, m.group]


def _fields(cmd: Any) -> list[Any]:
    t = type(cmd)
    if t is C.CreateQueue:
        opts = cmd.options
        return [cmd.name, opts.to_list() if type(opts) is QueueOptions else opts]
    if t is C.EnqueueBatch:
        return [cmd.queue, [_spec_fields(e) for e in cmd.entries]]
    if t is C.Ack:
        return [cmd.queue, list(cmd.receipts)]
    return [getattr(cmd, name) for name in cmd.__slots__]


def encode_command(cmd: C.Command) -> bytes:
    """Encode a command for a Raft log entry.

    Args:
        cmd: A command built by a `make_*` helper.

    Returns:
        CBOR bytes of `[op_code, field, ...]`.

    Raises:
        TypeError: `cmd` is not a command.
    """
    code = OP_CODES.get(type(cmd))
    if code is None:
        raise TypeError(f"not a command: {type(cmd).__name__}")
    return cbor2.dumps([code, *_fields(cmd)])


def _decode_spec(item: object) -> C.MessageSpec:
    if type(item) is not list or len(item) != len(_MESSAGE_FIELDS):
        raise _BadRequest("malformed batch entry")
    return C.MessageSpec(*item)


def decode_command(data: bytes) -> C.Command | E.ErrorReply:
    """Decode log entry bytes made by `encode_command`.

    Only the shape is checked here (op code and number of fields); `apply` checks
    every value. Never raises.

    Args:
        data: Bytes from a log entry (possibly garbage).

    Returns:
        The command, or `ErrorReply(BAD_REQUEST)` / `ErrorReply(UNKNOWN_OPERATION)`.
    """
    try:
        item = cbor2.loads(data)
    except Exception as exc:
        return E.ErrorReply(E.BAD_REQUEST, f"undecodable command: {type(exc).__name__}")
    if type(item) is not list or not item or type(item[0]) is not int:
        return E.ErrorReply(E.BAD_REQUEST, "a command is [op_code, field, ...]")
    t = _TYPES_BY_CODE.get(item[0])
    if t is None:
        return E.ErrorReply(E.UNKNOWN_OPERATION, f"unknown op code {item[0]}")
    fields = item[1:]
    arity = len(getattr(t, "__slots__", ()))
    if len(fields) != arity:
        return E.ErrorReply(E.BAD_REQUEST, f"{t.__name__} takes {arity} fields")
    try:
        if t is C.CreateQueue:
            opts = options_from_list(fields[1])
            if opts is None:
                raise _BadRequest("malformed queue options")
            return C.CreateQueue(fields[0], opts)
        if t is C.EnqueueBatch:
            if type(fields[1]) is not list:
                raise _BadRequest("malformed batch")
            return C.EnqueueBatch(fields[0], tuple(_decode_spec(e) for e in fields[1]))
        if t is C.Ack:
            if type(fields[1]) is not list:
                raise _BadRequest("malformed receipts")
            return C.Ack(fields[0], tuple(fields[1]))
        cmd: C.Command = t(*fields)
        return cmd
    except _BadRequest as exc:
        return E.ErrorReply(E.BAD_REQUEST, str(exc))


# --- client requests -------------------------------------------------------------


class _Args:
    """Typed access to a client's argument map; raises `_BadRequest` on any misfit."""

    def __init__(self, op: str, args: dict[Any, Any]) -> None:
        self.op = op
        self.args = args
        self.used: set[str] = set()

    def _get(self, key: str) -> Any:
        self.used.add(key)
        return self.args.get(key)

    def has(self, key: str) -> bool:
        return key in self.args

    def str_(self, key: str) -> str:
        value = self._get(key)
        if type(value) is not str:
            raise _BadRequest(f"{self.op}: {key} must be a str")
        return value

    def opt_str(self, key: str) -> str | None:
        value = self._get(key)
        if value is not None and type(value) is not str:
            raise _BadRequest(f"{self.op}: {key} must be a str or null")
        return value

    def opt_int(self, key: str) -> int | None:
        value = self._get(key)
        if value is not None and type(value) is not int:
            raise _BadRequest(f"{self.op}: {key} must be an int or null")
        return value

    def int_(self, key: str, default: int) -> int:
        value = self.opt_int(key)
        return default if value is None else value

    def bool_(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if type(value) is not bool:
            raise _BadRequest(f"{self.op}: {key} must be a bool")
        return value

    def bytes_(self, key: str) -> bytes:
        value = self._get(key)
        if type(value) is not bytes:
            raise _BadRequest(f"{self.op}: {key} must be bytes")
        return value

    def headers(self, key: str = "headers") -> dict[str, str]:
        value = self._get(key)
        if value is None:
            return {}
        if type(value) is not dict or not all(
            type(k) is str and type(v) is str for k, v in value.items()
        ):
            raise _BadRequest(f"{self.op}: {key} must be a map of str to str")
        return dict(value)

    def list_(self, key: str) -> list[Any]:
        value = self._get(key)
        if type(value) is not list:
            raise _BadRequest(f"{self.op}: {key} must be a list")
        return value

    def map_(self, key: str) -> dict[Any, Any]:
        value = self._get(key)
        if value is None:
            return {}
        if type(value) is not dict:
            raise _BadRequest(f"{self.op}: {key} must be a map")
        return value

    def finish(self) -> None:
        extra = sorted(str(k) for k in self.args if k not in self.used)
        if extra:
            raise _BadRequest(f"{self.op}: unknown argument(s) {', '.join(extra)}")


def _message(a: _Args) -> dict[str, Any]:
    return {
        "body": a.bytes_("body"),
        "headers": a.headers(),
        "dedup_id": a.opt_str("dedup_id"),
        "delay_ms": a.opt_int("delay_ms"),
        "ttl_ms": a.opt_int("ttl_ms"),
        "group": a.opt_str("group"),
    }


def _w_create_queue(a: _Args) -> C.Command:
    name = a.str_("name")
    raw = a.map_("options")
    o = _Args("create_queue options", raw)
    kwargs: dict[str, Any] = {}
    for key in OPTION_NAMES:
        if not o.has(key):
            continue
        if key == "dead_letter_queue":
            kwargs[key] = o.opt_str(key)
        elif key in ("max_length", "max_length_bytes"):
            kwargs[key] = o.opt_int(key)
        elif key == "overflow":
            kwargs[key] = o.str_(key)
        elif key == "fifo":
            kwargs[key] = o.bool_(key, False)
        else:
            value = o.opt_int(key)
            if value is None:
                raise _BadRequest(f"create_queue options: {key} must be an int")
            kwargs[key] = value
    o.finish()
    return C.make_create_queue(name, **kwargs)


def _w_message_batch(a: _Args) -> C.Command:
    queue = a.str_("queue")
    items = a.list_("messages")
    if len(items) > L.MAX_BATCH:
        raise _BatchTooLarge(f"enqueue_batch: at most {L.MAX_BATCH} messages")
    entries = []
    for item in items:
        if type(item) is not dict:
            raise _BadRequest("enqueue_batch: each message must be a map")
        m = _Args("enqueue_batch message", item)
        fields = _message(m)
        m.finish()
        entries.append(C.MessageSpec(**fields))
    return C.EnqueueBatch(queue, tuple(entries))


class _BatchTooLarge(_BadRequest):
    pass


def _w_ack(a: _Args) -> C.Command:
    queue = a.str_("queue")
    receipts = a.list_("receipts")
    if len(receipts) > L.MAX_BATCH:
        raise _BatchTooLarge(f"ack: at most {L.MAX_BATCH} receipts")
    return C.Ack(queue, tuple(receipts))


_WIRE: Final[dict[str, Callable[[_Args], C.Command]]] = {
    "create_queue": _w_create_queue,
    "delete_queue": lambda a: C.DeleteQueue(a.str_("name")),
    "purge_queue": lambda a: C.PurgeQueue(a.str_("name")),
    "list_queues": lambda a: C.ListQueues(),
    "queue_stats": lambda a: C.QueueStats(a.str_("name")),
    "enqueue": lambda a: C.Enqueue(a.str_("queue"), **_message(a)),
    "enqueue_batch": _w_message_batch,
    "receive": lambda a: C.Receive(
        a.str_("queue"),
        a.str_("consumer"),
        a.int_("max_messages", 1),
        a.opt_int("visibility_timeout_ms"),
    ),
    "ack": _w_ack,
    "nack": lambda a: C.Nack(
        a.str_("queue"), a.str_("receipt"), a.int_("delay_ms", 0), a.bool_("reject", False)
    ),
    "change_visibility": lambda a: C.ChangeVisibility(
        a.str_("queue"), a.str_("receipt"), a.int_("timeout_ms", -1)
    ),
    "redrive": lambda a: C.Redrive(
        a.str_("dlq"), a.opt_str("target"), a.int_("max_messages", L.DEFAULT_REDRIVE_MESSAGES)
    ),
    "create_topic": lambda a: C.CreateTopic(a.str_("name")),
    "delete_topic": lambda a: C.DeleteTopic(a.str_("name")),
    "subscribe": lambda a: C.Subscribe(a.str_("topic"), a.str_("queue")),
    "unsubscribe": lambda a: C.Unsubscribe(a.str_("topic"), a.str_("queue")),
    "publish": lambda a: C.Publish(a.str_("topic"), **_message(a)),
    "list_topics": lambda a: C.ListTopics(),
}

OPERATIONS: Final[tuple[str, ...]] = tuple(_WIRE)
"""Op names a client may send (`tick` is internal and not among them)."""


def command_from_wire(op: object, args: object) -> C.Command | E.ErrorReply:
    """Check a client request and build its command.

    Args:
        op: Operation name, e.g. "enqueue" (see `OPERATIONS`).
        args: Map of argument name to value as decoded from CBOR (None means no
            arguments). Values of any type, missing or extra keys are answered, not raised.

    Returns:
        The command, fully checked (the same checks `apply` runs), or
        `ErrorReply` with `UNKNOWN_OPERATION`, `BAD_REQUEST` or `BATCH_TOO_LARGE`.
    """
    if type(op) is not str:
        return E.ErrorReply(E.BAD_REQUEST, "op must be a str")
    build = _WIRE.get(op)
    if build is None:
        return E.ErrorReply(E.UNKNOWN_OPERATION, f"unknown operation {op[:80]!r}")
    if args is None:
        args = {}
    if type(args) is not dict:
        return E.ErrorReply(E.BAD_REQUEST, f"{op}: arguments must be a map")
    a = _Args(op, args)
    try:
        cmd = build(a)
        a.finish()
    except _BatchTooLarge as exc:
        return E.ErrorReply(E.BATCH_TOO_LARGE, str(exc))
    except _BadRequest as exc:
        return E.ErrorReply(E.BAD_REQUEST, str(exc))
    problem = validate(cmd)
    return cmd if problem is None else problem
