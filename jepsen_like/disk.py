"""Disk damage: operations on the files of a stopped node's database, each saying what it did.

A node's data directory holds `raft/`, a RocksDB database: write-ahead logs (`NNNNNN.log`),
sorted tables (`NNNNNN.sst`), `MANIFEST-*`, `CURRENT`, `OPTIONS-*`, `LOCK`, `LOG` (RocksDB's
own text log, not a WAL). Every operation here acts on such a directory (the node's data
directory, or the database directory itself), only while no process holds the database: it
checks that RocksDB's `LOCK` file is not locked (a running node holds a POSIX lock on it).

| operation | what it does |
| --- | --- |
| `flip_bit(data_dir, rng, "wal")` | one bit of a record payload of the newest non-empty WAL (never a header) |
| `flip_bit(data_dir, rng, "sst")` | one bit in the data blocks of a random SST (before its index and meta blocks) |
| `truncate_wal(data_dir, rng, fraction)` | cut the newest non-empty WAL at a random offset, usually inside a record |
| `cut_wal_at_record_boundary(data_dir, rng, fraction)` | cut it right after the last whole logical record ending at or before `fraction` of it |
| `delete_wal(data_dir)` | delete every WAL file |
| `wipe(data_dir)` | move the data directory away, to `<data_dir>.lost-<n>` (kept for post-mortem) |

Each returns a record (a dataclass; `to_json()` gives plain data) naming the file, the offset,
the bytes before and after, the sizes; each raises `NothingToDamage` when there was nothing to
damage (no WAL with bytes, no SST, no directory), so that a caller knows whether the fault
happened.

The WAL format (RocksDB `db/log_format.h`): the file is a sequence of 32 KiB blocks; a block
holds physical records, each a header (masked CRC32C 4 bytes, payload length 2 bytes little
endian, type 1 byte; the recyclable types add a 4-byte log number) and its payload; a logical
record too long for the rest of a block is split into FIRST, MIDDLE..., LAST fragments; fewer
than 7 bytes left at the end of a block are zero padding. `parse_wal` reads that structure and
checks every record's CRC, which is what the tests use to show that a cut left only whole
records, or that a flipped bit sits inside one record's payload.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import re
import shutil
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BLOCK_SIZE",
    "BitFlip",
    "Damage",
    "DatabaseInUse",
    "DiskDamageError",
    "NothingToDamage",
    "SstRegion",
    "WalCut",
    "WalDeletion",
    "WalParse",
    "WalRecord",
    "WalTruncation",
    "Wipe",
    "crc32c",
    "cut_wal_at_record_boundary",
    "database_dir",
    "delete_wal",
    "flip_bit",
    "newest_wal",
    "parse_wal",
    "sst_data_region",
    "sst_files",
    "truncate_wal",
    "wal_files",
    "wipe",
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


class DatabaseInUse(DiskDamageError):
    """A process holds the database (its LOCK file is locked): stop the node first."""


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


# -- records -----------------------------------------------------------------------------------

@dataclass
class Damage:
    """What a damage operation did. `op` names it; `to_json()` gives plain data."""

    op: str
    data_dir: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return self.op


@dataclass
class BitFlip(Damage):
    """One bit flipped.

    Attributes:
        target: "wal" or "sst".
        file: the file (absolute path).
        file_size: its size (unchanged).
        offset: the byte's offset in the file.
        bit: the bit flipped (0 is the least significant).
        byte_before, byte_after: the byte's value before and after.
        region: [start, end) of the bytes the offset was drawn from: the record's payload
            (wal), the data blocks (sst).
        record: the WAL record whose payload holds the byte (offset, type, length,
            header_size), for a WAL.
        region_source: how the region was found (e.g. "rocksdb.data.size" from the SST's
            properties block).
    """

    target: str = ""
    file: str = ""
    file_size: int = 0
    offset: int = 0
    bit: int = 0
    byte_before: int = 0
    byte_after: int = 0
    region: list[int] = field(default_factory=list)
    record: dict[str, Any] | None = None
    region_source: str = ""

    def describe(self) -> str:
        return (f"flip bit {self.bit} of byte {self.offset} in {Path(self.file).name} "
                f"(0x{self.byte_before:02x} -> 0x{self.byte_after:02x})")


@dataclass
class WalTruncation(Damage):
    """A WAL cut short at `offset`.

    Attributes:
        file: the WAL.
        size_before, size_after: its sizes (`size_after == offset`).
        offset: where it was cut.
        removed_bytes: size_before - size_after.
        bytes_removed_head: the first (up to 16) removed bytes, hex.
        mid_record: the cut fell inside a physical record (header or payload).
        record: that record (offset, type, length, header_size), when `mid_record`.
        whole_records_before, whole_records_after: complete logical records before and after.
    """

    file: str = ""
    size_before: int = 0
    size_after: int = 0
    offset: int = 0
    removed_bytes: int = 0
    bytes_removed_head: str = ""
    mid_record: bool = False
    record: dict[str, Any] | None = None
    whole_records_before: int = 0
    whole_records_after: int = 0

    def describe(self) -> str:
        where = "inside a record" if self.mid_record else "between records"
        return (f"truncate {Path(self.file).name} {self.size_before} -> {self.size_after} "
                f"bytes ({where})")


@dataclass
class WalCut(Damage):
    """A WAL cut right after a whole logical record: records are missing, none is damaged.

    Attributes:
        file: the WAL.
        fraction: the fraction of the file asked for.
        limit: fraction * size_before, the latest the cut could be.
        size_before, size_after: its sizes (`size_after == offset`).
        offset: where it was cut (the end of the last logical record kept; 0 when none ended
            before `limit`).
        removed_bytes: size_before - size_after.
        whole_records_before, whole_records_after: complete logical records before and after.
        records_removed: whole_records_before - whole_records_after.
    """

    file: str = ""
    fraction: float = 0.0
    limit: int = 0
    size_before: int = 0
    size_after: int = 0
    offset: int = 0
    removed_bytes: int = 0
    whole_records_before: int = 0
    whole_records_after: int = 0
    records_removed: int = 0

    def describe(self) -> str:
        return (f"cut {Path(self.file).name} after record {self.whole_records_after} of "
                f"{self.whole_records_before} ({self.size_before} -> {self.size_after} bytes)")


@dataclass
class WalDeletion(Damage):
    """WAL files deleted.

    Attributes:
        files: every WAL deleted, `{"file", "size"}`.
        bytes_deleted: their total size.
    """

    files: list[dict[str, Any]] = field(default_factory=list)
    bytes_deleted: int = 0

    def describe(self) -> str:
        names = ", ".join(Path(f["file"]).name for f in self.files)
        return f"delete {names} ({self.bytes_deleted} bytes)"


@dataclass
class Wipe(Damage):
    """The data directory moved away: the node starts with nothing.

    Attributes:
        moved_to: where it went (`<data_dir>.lost-<n>`).
        files: how many files it held.
        total_bytes: their total size.
    """

    moved_to: str = ""
    files: int = 0
    total_bytes: int = 0

    def describe(self) -> str:
        return f"move {self.data_dir} to {Path(self.moved_to).name} ({self.files} files)"


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


def _check_stopped(db: Path) -> None:
    """Raise DatabaseInUse when a process holds RocksDB's LOCK on `db`."""
    lock = db / "LOCK"
    if not lock.exists():
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise DatabaseInUse(f"{db} is in use (its LOCK is held): stop the node "
                                    "first") from None
            raise
        fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


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


# -- operations --------------------------------------------------------------------------------

def _flip(path: Path, offset: int, bit: int) -> tuple[int, int]:
    with open(path, "r+b") as f:
        f.seek(offset)
        before = f.read(1)[0]
        after = before ^ (1 << bit)
        f.seek(offset)
        f.write(bytes([after]))
        f.flush()
        os.fsync(f.fileno())
    return before, after


def flip_bit(data_dir: Path | str, rng: random.Random, target: str = "wal") -> BitFlip:
    """Flip one random bit of a stopped node's newest non-empty WAL or of one of its SSTs.

    In a WAL the byte is drawn uniformly from the payloads of its well-formed records (never a
    header, never padding); in an SST from its data blocks (`sst_data_region`).

    Args:
        data_dir: the node's data directory (or its database directory).
        rng: source of the choices.
        target: "wal" or "sst".

    Raises:
        NothingToDamage: no WAL with a record payload, or no SST.
        DatabaseInUse: a process holds the database.
        ValueError: an unknown target.
    """
    if target not in ("wal", "sst"):
        raise ValueError(f"unknown flip target {target!r}: 'wal' or 'sst'")
    db = database_dir(data_dir)
    _check_stopped(db)
    bit = rng.randrange(8)
    if target == "wal":
        path = newest_wal(db)
        parsed = parse_wal(path)
        payloads = [r for r in parsed.records if r.length > 0]
        total = sum(r.length for r in payloads)
        if total == 0:
            raise NothingToDamage(f"{path}: no WAL record with a payload "
                                  f"({parsed.problem or 'empty'})")
        k = rng.randrange(total)
        for rec in payloads:
            if k < rec.length:
                break
            k -= rec.length
        offset = rec.payload_offset + k
        before, after = _flip(path, offset, bit)
        return BitFlip("flip_bit", str(data_dir), target="wal", file=str(path),
                       file_size=parsed.size, offset=offset, bit=bit, byte_before=before,
                       byte_after=after, region=[rec.payload_offset, rec.end],
                       record=rec.to_json(), region_source="record payload")
    ssts = [p for p in sst_files(db) if p.stat().st_size > 0]
    if not ssts:
        raise NothingToDamage(f"{db}: no SST file")
    path = rng.choice(ssts)
    region = sst_data_region(path)
    offset = rng.randrange(region.start, region.end)
    before, after = _flip(path, offset, bit)
    return BitFlip("flip_bit", str(data_dir), target="sst", file=str(path),
                   file_size=path.stat().st_size, offset=offset, bit=bit, byte_before=before,
                   byte_after=after, region=[region.start, region.end],
                   region_source=region.source)


def truncate_wal(
    data_dir: Path | str, rng: random.Random, fraction: float | None = None
) -> WalTruncation:
    """Cut a stopped node's newest non-empty WAL at a random offset in [1, size) (or at
    `fraction` of its size): usually inside a record, as a torn write leaves it.

    Raises:
        NothingToDamage: no WAL holds any byte, or `fraction` leaves it whole.
        DatabaseInUse: a process holds the database.
        ValueError: `fraction` outside [0, 1).
    """
    if fraction is not None and not 0 <= fraction < 1:
        raise ValueError(f"fraction {fraction} outside [0, 1)")
    db = database_dir(data_dir)
    _check_stopped(db)
    path = newest_wal(db)
    data = path.read_bytes()
    size = len(data)
    if fraction is not None:
        offset = int(size * fraction)
    else:
        offset = rng.randrange(1, size) if size > 1 else 0
    if offset >= size:
        raise NothingToDamage(f"{path}: cutting at {offset} of {size} bytes removes nothing")
    parsed = parse_wal(data)
    rec = parsed.record_at(offset)
    mid = rec is not None and rec.offset < offset
    _truncate(path, offset)
    return WalTruncation(
        "truncate_wal", str(data_dir), file=str(path), size_before=size, size_after=offset,
        offset=offset, removed_bytes=size - offset, bytes_removed_head=data[offset:offset + 16].hex(),
        mid_record=mid, record=rec.to_json() if mid and rec is not None else None,
        whole_records_before=parsed.whole_records,
        whole_records_after=sum(1 for e in parsed.logical_ends if e <= offset),
    )


def cut_wal_at_record_boundary(
    data_dir: Path | str, rng: random.Random, fraction: float | None = None
) -> WalCut:
    """Cut a stopped node's newest non-empty WAL right after the last whole logical record
    (a FULL record, or the LAST fragment of a split one) that ends at or before `fraction` of
    the file (drawn from [0.1, 0.9) when None): records are missing, none is torn.

    Raises:
        NothingToDamage: no WAL holds any byte, or the cut would remove nothing.
        DatabaseInUse: a process holds the database.
        ValueError: `fraction` outside [0, 1].
    """
    if fraction is None:
        fraction = rng.uniform(0.1, 0.9)
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction {fraction} outside [0, 1]")
    db = database_dir(data_dir)
    _check_stopped(db)
    path = newest_wal(db)
    data = path.read_bytes()
    size = len(data)
    parsed = parse_wal(data)
    limit = int(size * fraction)
    kept = [e for e in parsed.logical_ends if e <= limit]
    offset = kept[-1] if kept else 0
    if offset >= size:
        raise NothingToDamage(f"{path}: the last whole record before {limit} ends the file")
    _truncate(path, offset)
    return WalCut(
        "cut_wal_at_record_boundary", str(data_dir), file=str(path), fraction=round(fraction, 6),
        limit=limit, size_before=size, size_after=offset, offset=offset,
        removed_bytes=size - offset, whole_records_before=parsed.whole_records,
        whole_records_after=len(kept), records_removed=parsed.whole_records - len(kept),
    )


def delete_wal(data_dir: Path | str) -> WalDeletion:
    """Delete every WAL file of a stopped node.

    Raises:
        NothingToDamage: no WAL holds any byte (deleting empty ones would lose nothing).
        DatabaseInUse: a process holds the database.
    """
    db = database_dir(data_dir)
    _check_stopped(db)
    wals = wal_files(db)
    sizes = [(p, p.stat().st_size) for p in wals]
    if not any(s for _, s in sizes):
        raise NothingToDamage(f"{db}: no WAL holds any byte")
    for p, _ in sizes:
        p.unlink()
    _fsync_dir(db)
    return WalDeletion("delete_wal", str(data_dir),
                       files=[{"file": str(p), "size": s} for p, s in sizes],
                       bytes_deleted=sum(s for _, s in sizes))


def wipe(data_dir: Path | str) -> Wipe:
    """Move a stopped node's data directory away, to `<data_dir>.lost-<n>` (the first n from
    1 not taken), as an operator would; the node then starts with nothing.

    Raises:
        NothingToDamage: the data directory does not exist.
        DatabaseInUse: a process holds the database.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise NothingToDamage(f"{d} does not exist")
    with contextlib.suppress(NothingToDamage):
        _check_stopped(database_dir(d))
    n = 1
    while (dest := d.with_name(f"{d.name}.lost-{n}")).exists():
        n += 1
    files = 0
    total = 0
    for root, _, names in os.walk(d):
        for name in names:
            files += 1
            with contextlib.suppress(OSError):
                total += (Path(root) / name).stat().st_size
    try:
        d.rename(dest)
    except OSError:
        shutil.move(str(d), str(dest))
    _fsync_dir(d.parent)
    return Wipe("wipe", str(d), moved_to=str(dest), files=files, total_bytes=total)
