"""Opening and reading RocksDB so that damage is reported, not skipped (for node/storage.py).

The options every node's database is opened with, the mapping of RocksDB's errors at open to
`StorageError` / `CorruptStorageError` (one line naming the database, the file and what to
do), and `scan`, an iteration that checks the iterator's status when it stops (RocksDB ends an
iteration at an unreadable block as if the data ended there). What each kind of damage does
is in node/storage.py's docstring (observed; tests/io/test_disk_damage.py).
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from rocksdict import BlockBasedOptions, Cache, DBRecoveryMode, Options, Rdict, ReadOptions

from node.storage_format import (
    CF_BODIES,
    CF_LOG,
    CF_META,
    CF_SNAPSHOT,
    CorruptStorageError,
    StorageError,
)

DAMAGED = (
    "the node's disk is damaged: move its data directory away and restart it, "
    'see docs/operations.md "Recovery"'
)
NAMES_A_FILE = re.compile(r"\d{6}\.(?:sst|log|blob)\b|MANIFEST-\d+")


def one_line(exc: BaseException) -> str:
    """A RocksDB error (some span lines) as one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def wal_damage_in_info_log(path: Path) -> str:
    """Where RocksDB's own text log (`LOG`) says the WAL replay of the failed open hit damage.

    RocksDB's error for a damaged WAL record ("Corruption: checksum mismatch") names no file
    and no offset; its `LOG` (rewritten by each open) has a line "<wal>: dropping N bytes;
    <problem>" for it (N: from the damaged record to the end of its 32 KiB block, not an
    offset). Returns " in write-ahead log <wal>" for the first such line, or "" (best effort).
    """
    try:
        text = (path / "LOG").read_text(errors="replace")
    except OSError:
        return ""
    found = re.search(rf"({re.escape(str(path))}/\d+\.log): dropping \d+ bytes; ", text)
    return f" in write-ahead log {found[1]}" if found else ""


def open_error(path: Path, exc: BaseException) -> StorageError:
    """The StorageError for an exception of `Rdict(...)` opening the database at `path`.

    RocksDB's "Corruption" errors, and files of the database it cannot find, are damage
    (CorruptStorageError, with what to do); anything else (e.g. the lock held by another
    process) is a StorageError.
    """
    message = one_line(exc)
    missing_file = "No such file or directory" in message and str(path) in message
    if "Corruption" not in message and not missing_file:
        return StorageError(f"cannot open database {path}: {message}")
    if "CURRENT" in message and str(path) not in message:
        message += f" in {path / 'CURRENT'}"
    elif not NAMES_A_FILE.search(message):
        message += wal_damage_in_info_log(path)
    return CorruptStorageError(f"database {path}: RocksDB refused to open: {message} ({DAMAGED})")


def check_current_file(path: Path) -> None:
    """Refuse a database directory that lost its `CURRENT` file but still holds data.

    Without `CURRENT` RocksDB (create_if_missing) would create a new, empty database in the
    directory (it only refuses while a non-empty WAL is there) and the node would start as new.
    """
    if (path / "CURRENT").exists():
        return
    data = sorted(
        entry.name
        for entry in path.iterdir()
        if entry.suffix == ".sst" or (entry.suffix == ".log" and entry.stat().st_size > 0)
    )
    if data:
        shown = ", ".join(data[:3]) + (f" and {len(data) - 3} more" if len(data) > 3 else "")
        raise CorruptStorageError(
            f"database {path}: file {path / 'CURRENT'} is missing but the directory holds "
            f"database files ({shown}) ({DAMAGED})"
        )


def db_options() -> Options:
    """Database options: what RocksDB checks when it opens the database and reads it."""
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    # Replaying the WAL, tolerate only an incomplete last record (a write cut off by a crash,
    # never acknowledged); any other damaged record refuses the open. The default
    # (point-in-time) silently drops every record after a damaged one.
    options.set_wal_recovery_mode(DBRecoveryMode.tolerate_corrupted_tail_records())
    # RocksDB's default, made explicit: at open every live SST file must exist with the size
    # the MANIFEST records, and an error in a write or in background work stops the database
    # instead of being skipped. (Opening also reads the footer and index block of every live
    # SST, checksummed: damage there refuses the open.)
    options.set_paranoid_checks(True)
    # Memory: every column family's memtables together stay under one budget (RocksDB's write
    # buffer manager flushes the largest when they reach it); the defaults would allow
    # 2 x 64 MiB per family.
    options.set_db_write_buffer_size(MEMTABLES_BYTES)
    return options


MEMTABLES_BYTES = 48 * 1024 * 1024
"""Budget of all the column families' memtables together."""

MEMTABLE_BYTES = {CF_META: 4 << 20, CF_LOG: 16 << 20, CF_SNAPSHOT: 8 << 20, CF_BODIES: 16 << 20}
"""Size of one memtable of each column family (RocksDB's `write_buffer_size`, default 64 MiB)."""

BLOCK_CACHE_BYTES = 16 * 1024 * 1024
"""Budget of the cache of uncompressed SST blocks, shared by the column families (by default
each family would get its own 32 MiB). Index blocks stay outside it, read when a file is
opened (so that damage there refuses the open, node/storage.py): about 0.5 % of the data."""

_block_cache: Cache | None = None


def family_options() -> dict[str, Options]:
    """The column families' options: memtable sizes and one shared block cache (see above)."""
    global _block_cache
    if _block_cache is None:
        _block_cache = Cache(BLOCK_CACHE_BYTES)
    out = {}
    for name, memtable_bytes in MEMTABLE_BYTES.items():
        options = Options(raw_mode=True)
        options.set_write_buffer_size(memtable_bytes)
        table = BlockBasedOptions()
        table.set_block_cache(_block_cache)
        options.set_block_based_table_factory(table)
        out[name] = options
    return out


def read_options() -> ReadOptions:
    read_opt = ReadOptions()
    read_opt.set_verify_checksums(True)  # every block read from an SST is checked
    return read_opt


def clear_frames(exc: BaseException) -> None:
    """Clear the local variables of the frames `exc` (and the exceptions it chains) holds.

    They may hold iterators and column families, which keep RocksDB (and its lock) alive after
    `close` for as long as the exception lives: a caller could not open the database again.
    """
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)
        pending += (current.__cause__, current.__context__)


def named(record: str) -> Callable[[bytes | None], str]:
    return lambda _last: record


def scan(
    family: Rdict,
    read_opt: ReadOptions,
    fail: Callable[[bytes | None, BaseException], StorageError],
    from_key: bytes | None = None,
) -> Iterator[tuple[bytes, bytes]]:
    """Iterate a raw-mode column family (keys and values are bytes) from `from_key` on.

    RocksDB ends an iteration early, as if the data ended there, when it cannot read a block (a
    checksum mismatch in an SST, an I/O error); only the iterator's status tells. So the status
    is checked when the iteration stops, and a bad one raises `fail(last key yielded or None,
    error)`.
    """
    it = family.iter(read_opt)
    if from_key is None:
        it.seek_to_first()
    else:
        it.seek(from_key)
    valid, key, value, step = it.valid, it.key, it.value, it.next
    last: bytes | None = None
    while valid():
        last = key()
        yield last, value()
        step()
    try:
        it.status()
    except Exception as exc:
        error = exc
    else:
        return
    del it, valid, key, value, step, family  # they keep RocksDB open while the error lives
    raise fail(last, error) from None
