"""The record format of a node's RocksDB database: keys, values, checksums, errors.

On-disk layout (one RocksDB database per node, raw bytes keys and values, four column families):

- `meta`: `b"identity"` -> CBOR `{"format": 2, "cluster_id": str, "node_id": int}`;
  `b"hard_state"` -> CBOR `[term, vote | null, commit, standing]` (format 1 databases written
  before standing existed hold 3 items: a VOTER);
  `b"snapshot"` -> CBOR `[index, term, [voter, ...], size_bytes, chunk_count]`;
  `b"bodies"` -> CBOR `[applied_index, generation]` (node/rocks_bodies.py);
  `b"log_start"` -> CBOR `[index, term]` of the entry just before the first one the log keeps,
  when the log keeps entries the snapshot covers (a trailing margin); absent: the snapshot's.
- `log`: key = 8-byte big-endian log index; value = 8-byte big-endian term, 1-byte kind, data.
- `snapshot`: key = 8-byte big-endian snapshot index + 4-byte big-endian chunk number;
  value = up to `snapshot_chunk_bytes` of snapshot data.
- `bodies`: key = 4-byte big-endian generation + 8-byte big-endian body key; value = the
  message body (node/rocks_bodies.py). Only the generation named in `b"bodies"` is live.

Every value starts with a 4-byte big-endian CRC32 (zlib) of the key followed by the rest of the
value, so a flipped bit, or a value under the wrong key, is caught (`unseal` raises `Bad`).
Used by node/storage.py (`RocksStorage`); pure functions, no RocksDB.
"""

from __future__ import annotations

import zlib
from struct import Struct
from typing import Any

import cbor2

from node.raft._membership import Membership
from node.raft._types import (
    Entry,
    EntryKind,
    HardState,
    Index,
    NodeId,
    SnapshotMeta,
    Standing,
    Term,
)

FORMAT_VERSION = 2
"""Version of the on-disk layout, recorded in the identity record (2: message bodies in their
own column family, snapshots as a stream of items)."""
CF_META = "meta"
CF_LOG = "log"
CF_SNAPSHOT = "snapshot"
CF_BODIES = "bodies"
K_IDENTITY = b"identity"
K_HARD_STATE = b"hard_state"
K_SNAPSHOT = b"snapshot"
K_BODIES = b"bodies"
K_LOG_START = b"log_start"
CRC = Struct(">I")
LOG_KEY = Struct(">Q")
ENTRY_HEAD = Struct(">IQB")  # crc, term, kind
CHUNK_KEY = Struct(">QI")  # snapshot index, chunk number
BODY_KEY = Struct(">IQ")  # generation, body key
MAX_INDEX = 2**63 - 1
LOG_KEY_END = LOG_KEY.pack(MAX_INDEX + 1)  # sorts after every log key
KINDS = {kind.value: kind for kind in EntryKind}
STANDINGS = {standing.value: standing for standing in Standing}


class StorageError(Exception):
    """The node's database cannot be used (wrong identity, locked, unreadable, ...).

    Attributes:
        code: stable error code.
    """

    code = "STORAGE_ERROR"


class CorruptStorageError(StorageError):
    """A record in the database fails its checks; the message names the path and the record."""

    code = "CORRUPT_STORAGE"


class Bad(Exception):
    """A record failed a check; turned into CorruptStorageError with the path and record name."""


def crc(key: bytes, body: bytes | memoryview) -> int:
    return zlib.crc32(body, zlib.crc32(key))


def seal(key: bytes, body: bytes) -> bytes:
    return CRC.pack(crc(key, body)) + body


def log_key(index: int) -> bytes:
    return LOG_KEY.pack(index)


def encode_entry_value(key: bytes, entry: Entry) -> bytes:
    data = entry.data
    head = ENTRY_HEAD.pack(0, entry.term, entry.kind)
    crc = zlib.crc32(data, zlib.crc32(memoryview(head)[4:], zlib.crc32(key)))
    return ENTRY_HEAD.pack(crc, entry.term, entry.kind) + data


def unseal(key: bytes, value: bytes) -> memoryview:
    if len(value) < CRC.size:
        raise Bad(f"value of {len(value)} bytes is too short for its checksum")
    body = memoryview(value)[CRC.size :]
    stored = CRC.unpack_from(value)[0]
    actual = crc(key, body)
    if stored != actual:
        raise Bad(f"checksum mismatch (stored {stored:#010x}, computed {actual:#010x})")
    return body


def decode_entry_value(index: int, key: bytes, value: bytes) -> Entry:
    if len(value) < ENTRY_HEAD.size:
        raise Bad(f"value of {len(value)} bytes is shorter than an entry header")
    unseal(key, value)
    _, term, kind = ENTRY_HEAD.unpack_from(value)
    entry_kind = KINDS.get(kind)
    if entry_kind is None:
        raise Bad(f"unknown entry kind {kind}")
    return Entry(Term(term), Index(index), entry_kind, value[ENTRY_HEAD.size :])


def is_uint(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_INDEX


def decode_cbor(body: memoryview) -> Any:
    try:
        return cbor2.loads(bytes(body))
    except Exception as exc:
        raise Bad(f"undecodable CBOR ({exc})") from exc


def decode_hard_state(body: memoryview) -> HardState:
    obj = decode_cbor(body)
    if (
        type(obj) is not list
        or len(obj) not in (3, 4)
        or not is_uint(obj[0])
        or not (obj[1] is None or (is_uint(obj[1]) and obj[1] > 0))
        or not is_uint(obj[2])
        or (len(obj) == 4 and obj[3] not in STANDINGS)
    ):
        raise Bad(f"malformed hard state {obj!r:.80}")
    standing = STANDINGS[obj[3]] if len(obj) == 4 else Standing.VOTER
    return HardState(
        Term(obj[0]), None if obj[1] is None else NodeId(obj[1]), Index(obj[2]), standing
    )


def encode_hard_state(hs: HardState) -> bytes:
    return cbor2.dumps([hs.term, hs.vote, hs.commit, int(hs.standing)])


def decode_snapshot_record(body: memoryview) -> tuple[SnapshotMeta, int, int]:
    """[index, term, membership, size_bytes, chunk_count]; a list of voter ids in place of
    the membership is the record of databases written before memberships could change."""
    obj = decode_cbor(body)
    if (
        type(obj) is not list
        or len(obj) != 5
        or not all(is_uint(v) for v in (obj[0], obj[1], obj[3], obj[4]))
    ):
        raise Bad(f"malformed snapshot meta {obj!r:.80}")
    raw = obj[2]
    try:
        if type(raw) is list:
            if not all(is_uint(v) and v > 0 for v in raw):
                raise ValueError(f"voters {raw!r:.80}")
            membership = Membership.of([NodeId(v) for v in raw])
        else:
            membership = Membership.from_plain(raw)
    except ValueError as exc:
        raise Bad(f"malformed snapshot meta: {exc}") from None
    return SnapshotMeta(Index(obj[0]), Term(obj[1]), membership), obj[3], obj[4]


def encode_snapshot_record(meta: SnapshotMeta, size_bytes: int, chunk_count: int) -> bytes:
    return cbor2.dumps([meta.index, meta.term, meta.membership.to_plain(), size_bytes, chunk_count])
