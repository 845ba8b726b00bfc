"""RocksDB's files, as far as the disk damage needs to know them: the WAL and SST formats.

A node's data directory holds `raft/`, a RocksDB database; `database_dir` finds it, `wal_files`,
`sst_files` and `newest_wal` its write-ahead logs (`NNNNNN.log`) and sorted tables
(`NNNNNN.sst`). `crc32c` is RocksDB's checksum. The damage operations of `jepsen_like.disk`
use these to choose what to damage; the errors they raise when there is nothing to damage
(`DiskDamageError`, `NothingToDamage`) are defined here, since finding the files raises them.

The WAL format (RocksDB `db/log_format.h`): the file is a sequence of 32 KiB blocks; a block
holds physical records, each a header (masked CRC32C 4 bytes, payload length 2 bytes little
endian, type 1 byte; the recyclable types add a 4-byte log number) and its payload; a logical
record too long for the rest of a block is split into FIRST, MIDDLE..., LAST fragments; fewer
than 7 bytes left at the end of a block are zero padding. `parse_wal` reads that structure and
checks every record's CRC, which is what the tests use to show that a cut left only whole
records, or that a flipped bit sits inside one record's payload.

An SST (a block-based table): data blocks, then meta blocks (among them the properties block),
the metaindex block and a fixed-size footer; `sst_data_region` finds where the data blocks end.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BLOCK_SIZE",
    "DiskDamageError",
    "NothingToDamage",
    "SstRegion",
    "WalParse",
    "WalRecord",
    "crc32c",
    "database_dir",
    "newest_wal",
    "parse_wal",
    "sst_data_region",
    "sst_files",
    "wal_files",
]

BLOCK_SIZE = 32 * 1024
"""RocksDB WAL block size."""

HEADER_SIZE = 7
"""Header of a legacy WAL record: crc32c (4), length (2, little endian), type (1)."""

RECYCLABLE_HEADER_SIZE = 11
"""Header of a recyclable WAL record: the legacy header and a 4-byte log number."""

ZERO, FULL, FIRST, MIDDLE, LAST = 0, 1, 2, 3, 4
RECYCLABLE_FULL, RECYCLABLE_FIRST, RECYCLABLE_MIDDLE, RECYCLABLE_LAST = 5, 6, 7, 8
SET_COMPRESSION = 9
USER_TIMESTAMP_SIZE = 10
RECYCLABLE_USER_TIMESTAMP_SIZE = 11
PREDECESSOR_WAL_INFO = 130
RECYCLABLE_PREDECESSOR_WAL_INFO = 131

_RECYCLABLE = {RECYCLABLE_FULL, RECYCLABLE_FIRST, RECYCLABLE_MIDDLE, RECYCLABLE_LAST,
               RECYCLABLE_USER_TIMESTAMP_SIZE, RECYCLABLE_PREDECESSOR_WAL_INFO}
_STANDALONE = {FULL, RECYCLABLE_FULL, SET_COMPRESSION, USER_TIMESTAMP_SIZE,
               RECYCLABLE_USER_TIMESTAMP_SIZE, PREDECESSOR_WAL_INFO,
               RECYCLABLE_PREDECESSOR_WAL_INFO}
_TYPE_NAMES = {ZERO: "ZERO", FULL: "FULL", FIRST: "FIRST", MIDDLE: "MIDDLE", LAST: "LAST",
               RECYCLABLE_FULL: "RECYCLABLE_FULL", RECYCLABLE_FIRST: "RECYCLABLE_FIRST",
               RECYCLABLE_MIDDLE: "RECYCLABLE_MIDDLE", RECYCLABLE_LAST: "RECYCLABLE_LAST",
               SET_COMPRESSION: "SET_COMPRESSION", USER_TIMESTAMP_SIZE: "USER_TIMESTAMP_SIZE",
               RECYCLABLE_USER_TIMESTAMP_SIZE: "RECYCLABLE_USER_TIMESTAMP_SIZE",
               PREDECESSOR_WAL_INFO: "PREDECESSOR_WAL_INFO",
               RECYCLABLE_PREDECESSOR_WAL_INFO: "RECYCLABLE_PREDECESSOR_WAL_INFO"}
_FIRSTS = {FIRST, RECYCLABLE_FIRST}
_MIDDLES = {MIDDLE, RECYCLABLE_MIDDLE}
_LASTS = {LAST, RECYCLABLE_LAST}

_WAL_NAME = re.compile(r"^(\d+)\.log$")
_SST_NAME = re.compile(r"^(\d+)\.sst$")

_SST_MAGIC = 0x88E241B785F4CFF7
_SST_LEGACY_MAGIC = 0xDB4775248B80FB57
_SST_FOOTER_SIZE = 53  # format_version >= 1: checksum type 1, part 2 40, version 4, magic 8
_SST_EXTENDED_MAGIC = b"\x3e\x00\x7a\x00"
_BLOCK_TRAILER_SIZE = 5  # compression type 1, checksum 4


class DiskDamageError(Exception):
    """A damage operation could not be applied."""


class NothingToDamage(DiskDamageError):
    """There was nothing to damage: no database, no WAL with bytes, no SST, no record."""


# -- CRC32C ------------------------------------------------------------------------------------

def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC32C (Castagnoli), as RocksDB's `crc32c::Value`."""
    c = crc ^ 0xFFFFFFFF
    t = _CRC_TABLE
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _unmask(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# -- WAL ---------------------------------------------------------------------------------------

@dataclass
class WalRecord:
    """One physical WAL record.

    Attributes:
        offset: of its header in the file.
        type: the record type (FULL 1, FIRST 2, MIDDLE 3, LAST 4, ...).
        length: of its payload.
        header_size: 7, or 11 for the recyclable types.
    """

    offset: int
    type: int
    length: int
    header_size: int

    @property
    def payload_offset(self) -> int:
        return self.offset + self.header_size

    @property
    def end(self) -> int:
        return self.offset + self.header_size + self.length

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.type, f"TYPE_{self.type}")

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "type": self.type_name, "length": self.length,
                "header_size": self.header_size}


@dataclass
class WalParse:
    """The structure of a WAL file, as far as it is well formed.

    Attributes:
        size: of the file.
        records: every well-formed physical record, in order (each CRC checked).
        logical_ends: the end offset of every whole logical record (a FULL record, the LAST
            fragment of a FIRST..LAST run, or a standalone metadata record), in order.
        end: where well-formed data stops (`size` when the whole file is well formed).
        problem: why parsing stopped before `size` (a torn record, a checksum mismatch, ...),
            or why the file does not end with a whole logical record (a FIRST without its
            LAST); None when the file holds only whole records and padding.
        problem_offset: where that problem is, or None.
    """

    size: int
    records: list[WalRecord] = field(default_factory=list)
    logical_ends: list[int] = field(default_factory=list)
    end: int = 0
    problem: str | None = None
    problem_offset: int | None = None

    @property
    def whole_records(self) -> int:
        return len(self.logical_ends)

    def record_at(self, offset: int) -> WalRecord | None:
        """The physical record whose header or payload holds byte `offset`."""
        for r in self.records:
            if r.offset <= offset < r.end:
                return r
        return None


def parse_wal(data: bytes | Path) -> WalParse:
    """Parse a WAL into physical records (checking each CRC32C) and logical record ends.

    Follows RocksDB's `log::Reader`: a block's last < 7 bytes are padding; a zero header (type
    0, length 0) means the rest of the block is padding (preallocated space). Parsing stops at
    the first record that is torn (its header or payload runs past the end of the file or of
    its block), fails its checksum, or has fragments out of order.
    """
    if isinstance(data, Path):
        data = data.read_bytes()
    size = len(data)
    out = WalParse(size)
    off = 0
    open_fragment: int | None = None  # offset of the FIRST fragment of an unfinished record

    def stop(problem: str, at: int) -> WalParse:
        out.end = at
        out.problem = problem
        out.problem_offset = at
        return out

    while off < size:
        block_end = (off // BLOCK_SIZE + 1) * BLOCK_SIZE
        left = block_end - off
        if left < HEADER_SIZE:
            tail = data[off : min(block_end, size)]
            if tail.strip(b"\0"):
                return stop(f"non-zero bytes in the block trailer at {off}", off)
            off = min(block_end, size)
            continue
        if size - off < HEADER_SIZE:
            return stop(f"torn header at {off}: {size - off} of {HEADER_SIZE} bytes", off)
        masked, length, rtype = struct.unpack_from("<IHB", data, off)
        if rtype == ZERO and length == 0:
            rest = data[off : min(block_end, size)]
            if rest.strip(b"\0"):
                return stop(f"zero record followed by data at {off}", off)
            off = min(block_end, size)
            continue
        hs = RECYCLABLE_HEADER_SIZE if rtype in _RECYCLABLE else HEADER_SIZE
        if off + hs + length > size:
            return stop(f"torn record at {off}: type {_TYPE_NAMES.get(rtype, rtype)}, "
                        f"{hs + length} bytes, {size - off} left in the file", off)
        if hs + length > left:
            return stop(f"record at {off} ({hs + length} bytes) crosses its block end", off)
        if crc32c(data[off + 6 : off + hs + length]) != _unmask(masked):
            return stop(f"checksum mismatch in the record at {off} "
                        f"(type {_TYPE_NAMES.get(rtype, rtype)}, {length} bytes)", off)
        rec = WalRecord(off, rtype, length, hs)
        if rtype in _STANDALONE or (rtype & 0x80):
            if open_fragment is not None:
                return stop(f"record at {off} interrupts the fragmented record at "
                            f"{open_fragment}", off)
            out.records.append(rec)
            out.logical_ends.append(rec.end)
        elif rtype in _FIRSTS:
            if open_fragment is not None:
                return stop(f"FIRST at {off} inside the record at {open_fragment}", off)
            open_fragment = off
            out.records.append(rec)
        elif rtype in _MIDDLES or rtype in _LASTS:
            if open_fragment is None:
                return stop(f"{_TYPE_NAMES[rtype]} fragment at {off} without a FIRST", off)
            out.records.append(rec)
            if rtype in _LASTS:
                open_fragment = None
                out.logical_ends.append(rec.end)
        else:
            return stop(f"unknown record type {rtype} at {off}", off)
        off = rec.end
    out.end = size
    if open_fragment is not None:
        out.problem = f"the file ends inside the record that starts at {open_fragment}"
        out.problem_offset = open_fragment
    return out


# -- files -------------------------------------------------------------------------------------

def database_dir(data_dir: Path | str) -> Path:
    """The RocksDB directory of a node's data directory: `data_dir/raft`, or `data_dir`
    itself when it is a database (holds `CURRENT`).

    Raises:
        NothingToDamage: neither exists.
    """
    d = Path(data_dir)
    if (d / "raft").is_dir():
        return d / "raft"
    if (d / "CURRENT").exists():
        return d
    raise NothingToDamage(f"{d} holds no RocksDB database (no raft/, no CURRENT)")


def _numbered(db: Path, pattern: re.Pattern[str]) -> list[Path]:
    found = []
    for p in db.iterdir():
        m = pattern.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def wal_files(data_dir: Path | str) -> list[Path]:
    """The WAL files (`NNNNNN.log`), oldest first."""
    return _numbered(database_dir(data_dir), _WAL_NAME)


def sst_files(data_dir: Path | str) -> list[Path]:
    """The SST files (`NNNNNN.sst`), oldest first."""
    return _numbered(database_dir(data_dir), _SST_NAME)


def newest_wal(data_dir: Path | str) -> Path:
    """The newest WAL that holds bytes.

    Raises:
        NothingToDamage: no WAL holds any byte.
    """
    wals = [p for p in wal_files(data_dir) if p.stat().st_size > 0]
    if not wals:
        raise NothingToDamage(f"{database_dir(data_dir)}: no WAL holds any byte")
    return wals[-1]


# -- SST ---------------------------------------------------------------------------------------

@dataclass
class SstRegion:
    """The data blocks of an SST: bytes [start, end); `source` says how `end` was found."""

    start: int
    end: int
    source: str


def _varint(b: bytes, p: int) -> tuple[int, int]:
    r = shift = 0
    while True:
        if p >= len(b) or shift > 63:
            raise ValueError("bad varint")
        c = b[p]
        p += 1
        r |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return r, p


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise ValueError("block too short")
    restarts = struct.unpack_from("<I", block, len(block) - 4)[0] & 0x7FFFFFFF
    limit = len(block) - 4 - 4 * restarts
    if limit < 0:
        raise ValueError("bad restart count")
    out = []
    p = 0
    key = b""
    while p < limit:
        shared, p = _varint(block, p)
        non_shared, p = _varint(block, p)
        vlen, p = _varint(block, p)
        key = key[:shared] + block[p : p + non_shared]
        p += non_shared
        out.append((key, block[p : p + vlen]))
        p += vlen
    return out


def sst_data_region(path: Path) -> SstRegion:
    """Where an SST's data blocks are: from 0 to `rocksdb.data.size` (read from its
    properties block through the footer and the metaindex block); falls back to the offset of
    the first meta block, then to the first half of the file, when the format is not one this
    reads (block-based tables, format_version 1 to 6)."""
    data = path.read_bytes()
    size = len(data)
    try:
        if size < _SST_FOOTER_SIZE + _BLOCK_TRAILER_SIZE:
            raise ValueError("too short")
        magic = struct.unpack_from("<Q", data, size - 8)[0]
        if magic != _SST_MAGIC:
            raise ValueError(f"magic 0x{magic:016x}")
        footer = size - _SST_FOOTER_SIZE
        part2 = data[footer + 1 : footer + 41]
        if part2[:4] == _SST_EXTENDED_MAGIC:  # format_version >= 6
            meta_size = struct.unpack_from("<I", part2, 12)[0]
            meta_off = footer - meta_size - _BLOCK_TRAILER_SIZE
        else:
            meta_off, p = _varint(part2, 0)
            meta_size, p = _varint(part2, p)
        if not 0 <= meta_off < footer or meta_off + meta_size > footer:
            raise ValueError("metaindex handle out of range")
        if data[meta_off + meta_size] != 0:
            raise ValueError("compressed metaindex block")
        handles = {}
        for k, v in _block_entries(data[meta_off : meta_off + meta_size]):
            o, q = _varint(v, 0)
            s, _ = _varint(v, q)
            handles[k] = (o, s)
        first_meta = min([o for o, _ in handles.values()] + [meta_off])
        props = handles.get(b"rocksdb.properties")
        if props is not None and data[props[0] + props[1]] == 0:
            for k, v in _block_entries(data[props[0] : props[0] + props[1]]):
                if k == b"rocksdb.data.size":
                    end, _ = _varint(v, 0)
                    if 0 < end <= first_meta:
                        return SstRegion(0, end, "rocksdb.data.size")
        if first_meta > 0:
            return SstRegion(0, first_meta, "first meta block")
        raise ValueError("no data region")
    except (ValueError, IndexError, struct.error) as exc:
        return SstRegion(0, max(1, size // 2), f"first half of the file ({exc})")
