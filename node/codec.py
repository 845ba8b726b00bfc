"""Wire encoding between nodes: length-prefixed cbor2 frames, and Raft messages as CBOR arrays.

A frame is a 4-byte big-endian payload length followed by one CBOR data item. `FrameDecoder` is
fed bytes as they arrive and hands out whole decoded frames (h11 style: bytes in, frames out, no
I/O). Peer input is decoded into plain types only (ints, bytes, str, bools, None, lists, maps with
str/bytes keys): every CBOR semantic tag is refused, nesting depth and frame size are bounded, and
whatever cbor2 raises on garbage surfaces as a `WireError` (DESIGN.md section 9: never unpickle
or eval peer bytes).

Raft messages travel as compact arrays `[tag, field, field, ...]`, `tag` being the position of the
message class in `MESSAGE_TYPES` and the fields in dataclass order; an entry is
`[term, index, kind, data]` and a snapshot meta `[index, term, [voter, ...]]`.
`decode_raft_message` checks the type and range of every field.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator, Mapping
from operator import attrgetter
from typing import Any, NoReturn

import cbor2

from node.raft._membership import Membership
from node.raft._types import (
    MESSAGE_TYPES,
    AppendEntries,
    Entry,
    EntryKind,
    Index,
    InstallSnapshot,
    Message,
    SnapshotMeta,
    Term,
)

__all__ = [
    "HEADER_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_WIRE_INT",
    "FrameDecodeError",
    "FrameDecoder",
    "FrameTooLarge",
    "WireError",
    "decode_entry",
    "decode_raft_message",
    "decode_snapshot_meta",
    "encode_entry",
    "encode_frame",
    "encode_raft_message",
    "encode_snapshot_meta",
]

HEADER_BYTES = 4
"""Size of the big-endian length prefix of a frame."""

MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Default largest payload a `FrameDecoder` accepts (64 MiB)."""

MAX_WIRE_INT = 2**63 - 1
"""Largest term, index, offset or node id accepted from the wire (fits a signed 64-bit int)."""

MAX_DEPTH = 16
"""Deepest container nesting accepted in a frame (a Raft message needs 4)."""


class WireError(Exception):
    """Bytes from a peer that cannot be accepted. The connection that sent them must be closed.

    Attributes:
        code: stable error code, e.g. `FRAME_TOO_LARGE`, `BAD_FRAME`, `BAD_MESSAGE`.
        message: human-readable detail.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class FrameTooLarge(WireError):
    """A frame header announces a payload longer than the decoder's maximum."""

    def __init__(self, length_bytes: int, max_frame_bytes: int) -> None:
        super().__init__(
            "FRAME_TOO_LARGE", f"frame of {length_bytes} bytes exceeds limit {max_frame_bytes}"
        )
        self.length_bytes = length_bytes
        self.max_frame_bytes = max_frame_bytes


class FrameDecodeError(WireError):
    """A frame payload is not exactly one acceptable CBOR data item."""

    def __init__(self, message: str) -> None:
        super().__init__("BAD_FRAME", message)


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------


def encode_frame(obj: object) -> bytes:
    """Encode `obj` as one frame: 4-byte big-endian payload length, then the CBOR payload.

    Args:
        obj: plain data cbor2 can encode (ints, bytes, str, bools, None, lists, dicts).

    Returns:
        The frame bytes.

    Raises:
        cbor2.CBOREncodeError: `obj` holds something cbor2 cannot encode (a local bug).
        OverflowError: the payload is 4 GiB or more.
    """
    payload = cbor2.dumps(obj)
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


def _refuse_tag(decoder: object, *args: object) -> NoReturn:
    raise ValueError("CBOR semantic tags are not accepted")


class _RefuseEveryTag(Mapping[int, Callable[..., Any]]):
    """`semantic_decoders` mapping that overrides every tag, known to cbor2 or not, to refuse."""

    def __getitem__(self, tag: int) -> Callable[..., Any]:
        return _refuse_tag

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


_REFUSE_EVERY_TAG = _RefuseEveryTag()


class FrameDecoder:
    """Turns a byte stream into decoded frames (bytes in, objects out, no I/O).

    `feed` appends bytes; `next_frame` returns the next whole frame decoded, or None until one
    is complete (a frame holding CBOR null is therefore refused). Feeding is amortized O(n): consumed bytes are dropped from the front of the
    buffer only once they make up half of it. After a `WireError` the stream is out of sync:
    every later call raises the same error.

    Attributes:
        max_frame_bytes: largest accepted payload; may be changed between frames (e.g. raised
            once a peer has authenticated).
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        """Create an empty decoder.

        Args:
            max_frame_bytes: largest accepted payload length, in bytes, >= 1.
        """
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._pos = 0
        self._error: WireError | None = None
        self._decoder = cbor2.CBORDecoder(
            io.BytesIO(b""),
            tag_hook=_refuse_tag,
            semantic_decoders=_REFUSE_EVERY_TAG,
            max_depth=MAX_DEPTH,
            allow_indefinite=False,
            strict_hashable_types=True,
        )

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet handed out as frames."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes.

        Args:
            data: the next bytes of the stream (may be empty, or hold any number of frames).

        Raises:
            WireError: an earlier call failed; the stream cannot be resumed.
        """
        if self._error is not None:
            raise self._error
        pos = self._pos
        if pos and pos * 2 >= len(self._buf):
            del self._buf[:pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> object | None:
        """Decode and return the next whole frame, or None if none is complete yet.

        Returns:
            The decoded payload (plain data), or None.

        Raises:
            FrameTooLarge: the next frame announces more than `max_frame_bytes`.
            FrameDecodeError: the next payload is not exactly one acceptable CBOR item, or is
                null.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < HEADER_BYTES:
            return None
        length = _unpack_header(buf, pos)[0]
        if length > self.max_frame_bytes:
            self._error = FrameTooLarge(length, self.max_frame_bytes)
            raise self._error
        end = pos + HEADER_BYTES + length
        if len(buf) < end:
            return None
        payload = bytes(buf[pos + HEADER_BYTES : end])
        self._pos = end
        return self._decode(payload)

    def _decode(self, payload: bytes) -> object:
        fp = io.BytesIO(payload)
        decoder = self._decoder
        decoder.fp = fp
        try:
            obj = decoder.decode()
        except Exception as exc:  # cbor2 raises many types on garbage; all mean "bad frame".
            self._error = FrameDecodeError(f"invalid CBOR payload ({type(exc).__name__}: {exc})")
            raise self._error from exc
        if fp.tell() != len(payload):
            self._error = FrameDecodeError(
                f"{len(payload) - fp.tell()} trailing bytes after the CBOR item"
            )
            raise self._error
        if obj is None:  # None means "no frame yet" to the caller, so null is not a frame.
            self._error = FrameDecodeError("a frame may not be CBOR null")
            raise self._error
        return obj


_unpack_header = struct.Struct(">I").unpack_from


# ---------------------------------------------------------------------------------------------
# Raft messages
# ---------------------------------------------------------------------------------------------

# Field kinds, checked by `decode_raft_message`.
_U = 0  # int, 0 <= v <= MAX_WIRE_INT
_ID = 1  # node id: int, 1 <= v <= MAX_WIRE_INT
_BOOL = 2
_BYTES = 3
_ENTRIES = 4  # list of [term, index, kind, data]
_META = 5  # [index, term, [voter, ...]]

_KIND_NAMES = {
    _U: "a non-negative int",
    _ID: "a positive node id",
    _BOOL: "a bool",
    _BYTES: "bytes",
    _ENTRIES: "a list of entries",
    _META: "a snapshot meta",
}

_FIELD_KINDS: dict[str, int] = {
    "term": _U, "from_id": _ID, "to_id": _ID,
    "last_log_index": _U, "last_log_term": _U, "pre_vote": _BOOL, "transfer": _BOOL,
    "granted": _BOOL, "prev_log_index": _U, "prev_log_term": _U, "entries": _ENTRIES,
    "leader_commit": _U, "success": _BOOL, "match_index": _U, "reject_index": _U,
    "hint_index": _U, "hint_term": _U, "commit": _U, "meta": _META, "offset_bytes": _U,
    "chunk": _BYTES, "done": _BOOL, "snapshot_index": _U, "next_offset_bytes": _U,
    "round": _U, "repair": _U, "repairing": _BOOL, "lagging": _BOOL, "nonce": _U,
    "empty": _BOOL, "boot": _U, "diverged": _BOOL, "size_bytes": _U, "crc32": _U,
}  # fmt: skip


class _Schema:
    """How one message class maps to its wire array: tag, field names and field positions by kind.

    Positions count from 1 (0 holds the tag), so that checks index the decoded array directly.
    """

    __slots__ = ("cls", "tag", "names", "kinds", "length", "get_fields", "by_kind")

    def __init__(self, tag: int, cls: type) -> None:
        self.cls = cls
        self.tag = tag
        self.names: tuple[str, ...] = tuple(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        self.kinds = tuple(_FIELD_KINDS[name] for name in self.names)
        self.length = len(self.names) + 1
        self.get_fields: Callable[[object], tuple[Any, ...]] = attrgetter(*self.names)
        self.by_kind: dict[int, tuple[int, ...]] = {
            kind: tuple(n + 1 for n, k in enumerate(self.kinds) if k == kind)
            for kind in _KIND_NAMES
        }


_SCHEMAS: tuple[_Schema, ...] = tuple(_Schema(tag, cls) for tag, cls in enumerate(MESSAGE_TYPES))
_SCHEMA_BY_CLASS: dict[type, _Schema] = {s.cls: s for s in _SCHEMAS}
_KIND_BY_VALUE: dict[int, EntryKind] = {kind.value: kind for kind in EntryKind}


def _bad(message: str) -> NoReturn:
    raise WireError("BAD_MESSAGE", message)


def encode_entry(entry: Entry) -> list[Any]:
    """Return the wire form `[term, index, kind, data]` of a log entry."""
    return [entry.term, entry.index, int(entry.kind), entry.data]


def decode_entry(obj: object) -> Entry:
    """Build an `Entry` from its wire form, checking every field.

    Args:
        obj: `[term, index, kind, data]` as decoded from CBOR.

    Returns:
        The entry.

    Raises:
        WireError: code `BAD_MESSAGE` when `obj` is not a well-formed entry.
    """
    if type(obj) is not list or len(obj) != 4:
        _bad("an entry must be [term, index, kind, data]")
    term, index, kind, data = obj
    entry_kind = _KIND_BY_VALUE.get(kind) if type(kind) is int else None
    if (
        type(term) is not int
        or type(index) is not int
        or type(data) is not bytes
        or entry_kind is None
        or term < 0
        or index < 1
        or term > MAX_WIRE_INT
        or index > MAX_WIRE_INT
    ):
        _bad_entry(term, index, kind, data)
    return Entry(Term(term), Index(index), entry_kind, data)


def _bad_entry(term: object, index: object, kind: object, data: object) -> NoReturn:
    if type(term) is not int or not 0 <= term <= MAX_WIRE_INT:
        _bad(f"entry term {_short_repr(term)} is not a non-negative int")
    if type(index) is not int or not 1 <= index <= MAX_WIRE_INT:
        _bad(f"entry index {_short_repr(index)} is not a positive int")
    if type(data) is not bytes:
        _bad(f"entry data is {type(data).__name__}, not bytes")
    _bad(f"entry kind {_short_repr(kind)} is unknown")


def encode_snapshot_meta(meta: SnapshotMeta) -> list[Any]:
    """Return the wire form `[index, term, membership]` of a snapshot meta (the membership as
    `Membership.to_plain`: voters, learners, addresses, max_id)."""
    return [meta.index, meta.term, meta.membership.to_plain()]


def decode_snapshot_meta(obj: object) -> SnapshotMeta:
    """Build a `SnapshotMeta` from its wire form, checking every field.

    Args:
        obj: `[index, term, membership]` as decoded from CBOR.

    Raises:
        WireError: code `BAD_MESSAGE` when `obj` is not a well-formed snapshot meta.
    """
    if type(obj) is not list or len(obj) != 3:
        _bad("a snapshot meta must be [index, term, membership]")
    index, term, raw = obj
    if type(index) is not int or not 0 <= index <= MAX_WIRE_INT:
        _bad(f"snapshot index {index!r} is not a non-negative int")
    if type(term) is not int or not 0 <= term <= MAX_WIRE_INT:
        _bad(f"snapshot term {term!r} is not a non-negative int")
    try:
        membership = Membership.from_plain(raw)
    except ValueError as exc:
        _bad(f"snapshot {exc}")
    return SnapshotMeta(Index(index), Term(term), membership)


def encode_raft_message(msg: Message) -> list[Any]:
    """Return the compact wire form `[tag, field, ...]` of a Raft message.

    Args:
        msg: one of the classes in `MESSAGE_TYPES`.

    Returns:
        A list for `encode_frame`.

    Raises:
        TypeError: `msg` is not a Raft message.
    """
    schema = _SCHEMA_BY_CLASS.get(type(msg))
    if schema is None:
        raise TypeError(f"not a Raft message: {type(msg).__name__}")
    out: list[Any] = [schema.tag, *schema.get_fields(msg)]
    if type(msg) is AppendEntries:
        out[6] = [[e.term, e.index, int(e.kind), e.data] for e in msg.entries]
    elif type(msg) is InstallSnapshot:
        out[4] = encode_snapshot_meta(msg.meta)
    return out


def decode_raft_message(obj: object) -> Message:
    """Build a Raft message from its wire form, checking the type and range of every field.

    Besides types, it checks that the entries of an AppendEntries follow `prev_log_index`
    without a gap.

    Args:
        obj: a decoded frame, `[tag, field, ...]`.

    Returns:
        The message.

    Raises:
        WireError: code `BAD_MESSAGE` when `obj` is not a well-formed Raft message.
    """
    if type(obj) is not list or not obj:
        _bad("a Raft message must be a non-empty array")
    tag = obj[0]
    if type(tag) is not int or not 0 <= tag < len(_SCHEMAS):
        _bad(f"unknown message tag {tag!r}")
    schema = _SCHEMAS[tag]
    if len(obj) != schema.length:
        _bad(f"{schema.cls.__name__} needs {schema.length - 1} fields, got {len(obj) - 1}")
    by_kind = schema.by_kind
    for n in by_kind[_U]:
        value = obj[n]
        if type(value) is not int or value < 0 or value > MAX_WIRE_INT:
            _bad_field(schema, n, value)
    for n in by_kind[_ID]:
        value = obj[n]
        if type(value) is not int or value < 1 or value > MAX_WIRE_INT:
            _bad_field(schema, n, value)
    for n in by_kind[_BOOL]:
        if type(obj[n]) is not bool:
            _bad_field(schema, n, obj[n])
    for n in by_kind[_BYTES]:
        if type(obj[n]) is not bytes:
            _bad_field(schema, n, obj[n])
    args = obj[1:]
    for n in by_kind[_ENTRIES]:
        if type(obj[n]) is not list:
            _bad_field(schema, n, obj[n])
        args[n - 1] = tuple(map(decode_entry, obj[n]))
    for n in by_kind[_META]:
        args[n - 1] = decode_snapshot_meta(obj[n])
    msg: Message = schema.cls(*args)
    if type(msg) is AppendEntries:
        expected = msg.prev_log_index + 1
        for entry in msg.entries:
            if entry.index != expected:
                _bad(f"AppendEntries entry index {entry.index} where {expected} was expected")
            expected += 1
    return msg


def _bad_field(schema: _Schema, position: int, value: object) -> NoReturn:
    kind = schema.kinds[position - 1]
    _bad(
        f"{schema.cls.__name__}.{schema.names[position - 1]} = {_short_repr(value)} "
        f"is not {_KIND_NAMES[kind]}"
    )


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
