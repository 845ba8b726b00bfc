"""The history of a run: operations as `invoke`, then `ok`, `fail` or `info`, in JSON lines.

After Jepsen's history model. Each logical client operation is an `invoke` record followed by
exactly one completion of the same process:

* `ok`: the operation happened, with its result (an enqueue's message id, a receive's messages).
* `fail`: the operation certainly did not happen (the node said so with a code that guarantees
  it was not executed, e.g. `INVALID_RECEIPT`, or no attempt could have reached a leader).
* `info`: the outcome is unknown (timeout, lost connection, `OUTCOME_UNKNOWN`): the operation may
  or may not have taken effect, now or later. A checker must allow both.

A process is one logical client thread (a producer, a consumer, a reader, the drainer) and has
at most one operation outstanding. A consumer that crashes on purpose records an `info` `crash`
operation and continues under a new process id, as Jepsen does.

Every record carries `time_ns` (monotonic nanoseconds since the start of the run), `wall_ms`
(Unix wall clock in milliseconds, the clock the leader stamps log entries with, used to reason
about leases) and `index` (its position in the history).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "COMPLETIONS",
    "Delivery",
    "History",
    "Op",
    "body_of",
    "pair_ops",
    "read_jsonl",
    "value_of",
]

COMPLETIONS = ("ok", "fail", "info")
"""Types of the record that ends an operation."""

BODY_PREFIX = b"raftq-jepsen:"


def body_of(value: int) -> bytes:
    """The message body carrying `value` (a unique integer)."""
    return BODY_PREFIX + str(value).encode()


def value_of(body: bytes) -> int | None:
    """The value a body carries, or None for a body this harness did not write."""
    if not body.startswith(BODY_PREFIX):
        return None
    try:
        return int(body[len(BODY_PREFIX) :])
    except ValueError:
        return None


@dataclass
class Delivery:
    """One message as a `receive` returned it.

    Attributes:
        value: the value in its body (None when the body is not one of ours).
        message_id: the id in the queue it was received from.
        receipt: the receipt handle of this delivery, "<message id>:<attempt>".
        delivery_count: 1 on the first delivery, +1 on each redelivery.
        group: the message group (FIFO queues), or None.
        death: for a dead letter, its `x-death-*` headers without the prefix (`reason`, `queue`,
            `message_id`, `delivery_count`), else None.
    """

    value: int | None
    message_id: int
    receipt: str
    delivery_count: int
    group: str | None = None
    death: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Delivery:
        return cls(
            value=d.get("value"),
            message_id=int(d["message_id"]),
            receipt=str(d["receipt"]),
            delivery_count=int(d["delivery_count"]),
            group=d.get("group"),
            death=d.get("death"),
        )


@dataclass
class Op:
    """One record of the history.

    Attributes:
        type: "invoke", "ok", "fail" or "info".
        f: the function: "enqueue", "receive", "ack", "nack", "crash", "stats" (a reader's
            `queue_stats`).
        process: the logical client that performed it.
        time_ns: monotonic nanoseconds since the start of the run.
        wall_ms: Unix wall-clock milliseconds.
        index: position in the history (set by `History.append`).
        queue: the queue operated on.
        value: the value of an enqueue (or of the message an ack or nack settles).
        dedup_id: deduplication id of an enqueue.
        group: message group of an enqueue (FIFO queues).
        receipt: receipt handle of an ack or nack.
        message_id: an enqueue's message id (ok), or the message an ack/nack settles.
        delivery_count: delivery count of the message an ack/nack settles.
        visibility_timeout_ms: the lease a receive asked for (the queue's default, written out).
        max_messages: most messages a receive asked for.
        messages: an ok receive's deliveries.
        duplicate: an ok enqueue whose dedup id was already known.
        error: the error code of a fail or info ("TIMEOUT", "INVALID_RECEIPT", ...).
        tag: free-form marker (e.g. "drain", "poison", "stale-ack").
        receipts: receipts a crashed consumer abandoned.
        totals: an ok `stats` read's lifetime totals of the queue (`enqueued`, `acked`, ...).
    """

    type: str
    f: str
    process: int
    time_ns: int = 0
    wall_ms: float = 0.0
    index: int = -1
    queue: str | None = None
    value: int | None = None
    dedup_id: str | None = None
    group: str | None = None
    receipt: str | None = None
    message_id: int | None = None
    delivery_count: int | None = None
    visibility_timeout_ms: int | None = None
    max_messages: int | None = None
    messages: list[Delivery] | None = None
    duplicate: bool | None = None
    error: str | None = None
    tag: str | None = None
    receipts: list[str] | None = field(default=None)
    totals: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map without the fields that are None."""
        d = asdict(self)
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Op:
        d = dict(d)
        msgs = d.pop("messages", None)
        known = set(cls.__dataclass_fields__)
        op = cls(**{k: v for k, v in d.items() if k in known})
        if msgs is not None:
            op.messages = [Delivery.from_json(m) for m in msgs]
        return op

    @property
    def is_invoke(self) -> bool:
        return self.type == "invoke"


class History:
    """An append-only list of operations, timed against one monotonic origin.

    Args:
        origin_ns: `clock_ns()` at the start of the run (now by default).
        clock_ns: the monotonic clock, nanoseconds (`time.monotonic_ns`; the whole-node
            simulator passes its virtual clock).
        wall_clock_ms: the wall clock, Unix milliseconds (the clock the leaders stamp with).
    """

    def __init__(
        self,
        origin_ns: int | None = None,
        *,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        wall_clock_ms: Callable[[], float] = lambda: time.time_ns() / 1e6,
    ) -> None:
        self._clock_ns = clock_ns
        self._wall_clock_ms = wall_clock_ms
        self.origin_ns = clock_ns() if origin_ns is None else origin_ns
        self.ops: list[Op] = []
        self._open: dict[int, Op] = {}

    def now_ns(self) -> int:
        """Monotonic nanoseconds since the origin."""
        return self._clock_ns() - self.origin_ns

    def append(self, op: Op) -> Op:
        """Stamp `op` (time, wall clock, index) and add it.

        Raises:
            ValueError: an invoke on a process that has an operation outstanding, or a
                completion on a process that has none (a bug of the workload).
        """
        if op.time_ns == 0:
            op.time_ns = self.now_ns()
        if op.wall_ms == 0.0:
            op.wall_ms = self._wall_clock_ms()
        op.index = len(self.ops)
        if op.type == "invoke":
            if op.process in self._open:
                raise ValueError(f"process {op.process} already has an operation outstanding")
            self._open[op.process] = op
        elif op.type in COMPLETIONS:
            if op.f != "crash":
                inv = self._open.pop(op.process, None)
                if inv is None:
                    raise ValueError(f"process {op.process} completes nothing it invoked")
        else:
            raise ValueError(f"unknown op type {op.type!r}")
        self.ops.append(op)
        return op

    def invoke(self, f: str, process: int, **fields: Any) -> Op:
        """Record the invocation of `f` by `process` and return it."""
        return self.append(Op("invoke", f, process, **fields))

    def complete(self, inv: Op, type_: str, **fields: Any) -> Op:
        """Record the completion (`ok`, `fail`, `info`) of the operation `inv`.

        The completion repeats the invocation's queue, value, dedup id, group and receipt.
        """
        base: dict[str, Any] = {
            "queue": inv.queue,
            "value": inv.value,
            "dedup_id": inv.dedup_id,
            "group": inv.group,
            "receipt": inv.receipt,
            "tag": inv.tag,
        }
        base.update(fields)
        return self.append(Op(type_, inv.f, inv.process, **base))

    def outstanding(self) -> list[Op]:
        """Invocations that have no completion yet."""
        return list(self._open.values())

    def close_outstanding(self, error: str = "RUN_ENDED") -> None:
        """Complete every outstanding invocation as `info` (its outcome is unknown)."""
        for inv in list(self._open.values()):
            self.complete(inv, "info", error=error)

    def write_jsonl(self, path: Path) -> None:
        """Write the history as JSON lines to `path`."""
        with path.open("w") as fh:
            for op in self.ops:
                fh.write(json.dumps(op.to_json(), separators=(",", ":")) + "\n")

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)


def read_jsonl(path: Path) -> list[Op]:
    """Read a history written by `History.write_jsonl`."""
    ops = []
    with path.open() as fh:
        for line in fh:
            line = line.strip()
            if line:
                ops.append(Op.from_json(json.loads(line)))
    return ops


def pair_ops(ops: Iterable[Op]) -> list[tuple[Op, Op | None]]:
    """Pair each invocation with its completion (None when it has none).

    Crash records, which complete nothing, are returned as `(crash, crash)`.
    """
    pairs: list[tuple[Op, Op | None]] = []
    open_: dict[int, int] = {}
    for op in ops:
        if op.f == "crash":
            pairs.append((op, op))
        elif op.type == "invoke":
            open_[op.process] = len(pairs)
            pairs.append((op, None))
        else:
            i = open_.pop(op.process, None)
            if i is not None:
                pairs[i] = (pairs[i][0], op)
    return pairs
