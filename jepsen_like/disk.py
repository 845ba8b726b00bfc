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

The file formats (the WAL's blocks and records, an SST's footer, properties and data region,
CRC32C) and finding a database's files are `jepsen_like.rocksdb_files`'s job; the names this
module has always exported from there (`parse_wal`, `newest_wal`, `crc32c`, ...) are importable
from here too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jepsen_like.rocksdb_files import (
    BLOCK_SIZE,
    DiskDamageError,
    NothingToDamage,
    SstRegion,
    WalParse,
    WalRecord,
    crc32c,
    database_dir,
    newest_wal,
    parse_wal,
    sst_data_region,
    sst_files,
    wal_files,
)

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


class DatabaseInUse(DiskDamageError):
    """A process holds the database (its LOCK file is locked): stop the node first."""


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


# -- the stopped database, synced writes -------------------------------------------------------

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
