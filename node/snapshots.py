"""A node's snapshot: the machine's items, then the bodies of its messages (format 1).

The bytes a node stores as its snapshot and sends to a follower are a sequence of CBOR items,
written and read one at a time, so a large state never exists as one byte string:

1. `["raftq-snapshot", 1, machine_format, n_bodies]`;
2. the machine's items (node/machine/_snapshot.py, format 2), which hold no body;
3. the bodies, ascending by body key, in arrays `[key, body, key, body, ...]` of at most
   `BODY_SLICE_BYTES` of bodies each (at least one body per array), `n_bodies` in all: exactly
   one per message of the state, under the body keys the state names.

Equal states with equal bodies give equal bytes (canonical CBOR, fixed slicing), so the SHA-256
of the stream (`node_digest`) compares replicas, bodies included.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence

import cbor2

from node import machine
from node.raft import SnapshotData, snapshot_piece

__all__ = [
    "BODY_SLICE_BYTES",
    "DataFile",
    "MAGIC",
    "NODE_FORMAT",
    "SnapshotBodies",
    "body_items",
    "header_item",
    "node_digest",
    "read_header",
    "snapshot_stream",
]

MAGIC = "raftq-snapshot"
NODE_FORMAT = 1
BODY_SLICE_BYTES = 1 << 20
"""Body bytes per body item (an item holds at least one body)."""
KEY_BATCH = 256
"""Bodies read per `get_many` when bodies are read by key."""


def _dumps(obj: object) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def _body_slices(bodies: Iterator[tuple[int, bytes]]) -> Iterator[bytes]:
    batch: list[int | bytes] = []
    size = 0
    for key, body in bodies:
        batch.append(key)
        batch.append(body)
        size += len(body)
        if size >= BODY_SLICE_BYTES:
            yield _dumps(batch)
            batch = []
            size = 0
    if batch:
        yield _dumps(batch)


def _checked(
    bodies: Iterator[tuple[int, bytes]], keys: Sequence[int]
) -> Iterator[tuple[int, bytes]]:
    """`bodies`, checked to be exactly those of `keys` (the state's), in order.

    Raises:
        machine.BodyMissing: a key of the state has no body, or the store holds one more.
    """
    n = 0
    for key, body in bodies:
        if n >= len(keys) or key != keys[n]:
            expected = keys[n] if n < len(keys) else None
            if expected is not None and key > expected:
                raise machine.BodyMissing(f"no body under key {expected}")
            raise machine.BodyMissing(f"body {key} belongs to no message")
        yield key, body
        n += 1
    if n != len(keys):
        raise machine.BodyMissing(f"no body under key {keys[n]}")


def header_item(n_bodies: int) -> bytes:
    """The first item of a node snapshot of a state with `n_bodies` messages."""
    return _dumps([MAGIC, NODE_FORMAT, machine.SNAPSHOT_FORMAT_VERSION, n_bodies])


def body_items(keys: Sequence[int], bodies: Iterator[tuple[int, bytes]]) -> Iterator[bytes]:
    """The body items of a node snapshot whose state names `keys` (`machine.body_keys`).

    Args:
        keys: the state's body keys, ascending.
        bodies: every `(key, body)` of the body store as of the state, ascending.

    Raises:
        machine.BodyMissing: the bodies are not exactly those of `keys`.
    """
    return _body_slices(_checked(bodies, keys))


def snapshot_stream(
    state: machine.MachineState, keys: Sequence[int], bodies: Iterator[tuple[int, bytes]]
) -> Iterator[bytes]:
    """The node snapshot of `state`, item by item (the state must not change meanwhile).

    Raises:
        machine.BodyMissing: the bodies are not exactly those of the state's messages.
    """
    yield header_item(len(keys))
    yield from machine.snapshot_items(state)
    yield from body_items(keys, bodies)


def by_key(
    keys: Sequence[int], get_many: Callable[[Sequence[int]], Sequence[bytes | None]]
) -> Iterator[tuple[int, bytes]]:
    """`(key, body)` for each of `keys`, read `KEY_BATCH` at a time.

    Raises:
        machine.BodyMissing: a key has no body.
    """
    for start in range(0, len(keys), KEY_BATCH):
        part = keys[start : start + KEY_BATCH]
        for key, body in zip(part, get_many(part), strict=True):
            if body is None:
                raise machine.BodyMissing(f"no body under key {key}")
            yield key, body


def node_digest(
    state: machine.MachineState, get_many: Callable[[Sequence[int]], Sequence[bytes | None]]
) -> str:
    """Hex SHA-256 of the node snapshot of `state` with the bodies `get_many` reads.

    Raises:
        machine.BodyMissing: a body of the state is not in the store.
    """
    keys = machine.body_keys(state)
    h = hashlib.sha256()
    for item in snapshot_stream(state, keys, by_key(keys, get_many)):
        h.update(item)
    return h.hexdigest()


def read_header(next_item: Callable[[], object]) -> int:
    """Read the first item of a node snapshot; return its number of bodies.

    Raises:
        machine.SnapshotError: not a node snapshot, or of a format this version cannot read.
    """
    try:
        head = next_item()
    except Exception as exc:
        raise machine.SnapshotError(f"corrupt snapshot: {type(exc).__name__}: {exc}") from exc
    if not (type(head) is list and len(head) == 4 and head[0] == MAGIC):
        raise machine.SnapshotError(f"not a raftq snapshot: {head!r:.60}")
    _, node_format, machine_format, n_bodies = head
    if node_format != NODE_FORMAT or machine_format != machine.SNAPSHOT_FORMAT_VERSION:
        raise machine.SnapshotError(
            f"snapshot format {node_format}/{machine_format}: this version reads "
            f"{NODE_FORMAT}/{machine.SNAPSHOT_FORMAT_VERSION}"
        )
    if type(n_bodies) is not int or n_bodies < 0:
        raise machine.SnapshotError("corrupt snapshot: body count")
    return n_bodies


class SnapshotBodies:
    """The bodies part of a node snapshot being read, checked against the restored state.

    Iterate it for `(key, body)` pairs (ascending); after the last it checks that the stream
    ends there (`finish`), so a consumer sees every problem before the iteration ends.

    Raises (while iterating):
        machine.SnapshotError: a body item is malformed, or the bodies are not exactly one per
            message of the state, under its body keys.
    """

    def __init__(
        self, next_item: Callable[[], object], n_bodies: int, state: machine.MachineState
    ) -> None:
        self._next = next_item
        self._keys = machine.body_keys(state)
        if n_bodies != len(self._keys):
            raise machine.SnapshotError(
                f"corrupt snapshot: {n_bodies} bodies for {len(self._keys)} messages"
            )

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        keys = self._keys
        n = 0
        while n < len(keys):
            try:
                item = self._next()
            except Exception as exc:
                raise machine.SnapshotError(
                    f"corrupt snapshot: bodies: {type(exc).__name__}: {exc}"
                ) from exc
            if type(item) is not list or not item or len(item) % 2:
                raise machine.SnapshotError("corrupt snapshot: body item")
            for i in range(0, len(item), 2):
                key, body = item[i], item[i + 1]
                if n >= len(keys) or key != keys[n] or type(body) is not bytes:
                    raise machine.SnapshotError(f"corrupt snapshot: body {key!r:.20}")
                yield key, body
                n += 1
        self.finish()

    def finish(self) -> None:
        """Check that nothing follows the last body.

        Raises:
            machine.SnapshotError: more items follow.
        """
        try:
            self._next()
        except cbor2.CBORDecodeEOF:
            return
        except Exception as exc:
            raise machine.SnapshotError(
                f"corrupt snapshot: after the bodies: {type(exc).__name__}: {exc}"
            ) from exc
        raise machine.SnapshotError("corrupt snapshot: items after the bodies")


class DataFile:
    """A read-only file over snapshot data (bytes or `SnapshotData`), from its start."""

    def __init__(self, data: bytes | SnapshotData) -> None:
        self._data = data
        self._at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        size = len(self._data) - self._at if n < 0 else n
        piece = snapshot_piece(self._data, self._at, size)
        self._at += len(piece)
        return piece
