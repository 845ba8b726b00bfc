"""Damaged RocksDB files under RocksStorage (node/storage.py): what is detected at open.

Each test damages the files of a database no process has open, then opens it, and checks the
outcome RocksDB (9.8, rocksdict 0.3.29) and RocksStorage actually give; each first checks that
the damage was applied (the byte differs, the file shrank, the file is gone).

A cleanly closed database has an empty write-ahead log (closing flushes the memtables to SST
files), so WAL damage only matters after a crash. The WAL tests use a crash image: a copy of
the directory of a database that is still open, taken after its last synced write, which is
what `kill -9` leaves on disk.

Observed (tests below):

- (a) a bit flipped inside a WAL record in the middle of the log (payload or header): refused,
  naming the WAL file (RocksDB gives no offset); RocksDB's default recovery mode
  (point-in-time) opened the same files with the first half of the entries, silently.
- (b) the WAL cut inside its last record (a torn write, never acknowledged): opens without
  exactly that record's batch. Zeros after the last record are ignored. A last record with
  wrong bytes in place (same size; zeros or a flipped bit) is refused: RocksDB cannot tell it
  from a damaged record.
- (c) the WAL cut at 30 % (or at a record boundary): opens with the whole batches before the
  cut. RocksDB cannot tell this from a torn tail; detecting the loss is the durability mark's
  job (node/raft/_durability.py), not RocksDB's.
- (d) a bit flipped in an SST data block: RocksDB opens; RocksStorage's open reads every log
  entry, the iterator stops at the block and its status says why: refused, naming the entry,
  the SST file and the block's offset. A flipped bit in an SST's index block, an SST cut
  short or deleted: RocksDB refuses the open, naming the file.
- (e) the WAL deleted: opens with what the SST files hold (entries written since the last
  flush are gone). A database whose data was all in the WAL (never flushed: not reopened
  since its creation) opens as a new, empty database, JOINING. RocksDB cannot see the loss.
- (f) MANIFEST flipped, cut inside its first records or deleted; CURRENT garbled, empty,
  naming another MANIFEST, or deleted: refused with CorruptStorageError naming the file. A
  MANIFEST cut in the middle is not detected: RocksDB opens the version before the cut, and
  deletes the SST files added after it.

Every refusal is checked twice: a refused open leaves the files as they were, so a restarted
node refuses again.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from rocksdict import DBRecoveryMode, Options, Rdict

from node.raft._types import Entry, HardState, Index, NodeId, Standing, Term
from node.storage import CorruptStorageError, RocksStorage, StorageError
from tests.io.test_storage import ents, open_rocks, ready

ENTRIES = 3000
BATCH = 10  # entries per persist: one WAL record each
ENTRY_BYTES = 150  # about 1.8 KiB a batch, 540 KiB of WAL in all
BLOCK = 32 * 1024  # WAL and MANIFEST block size
FAMILIES = ("meta", "log", "snapshot", "bodies")


def write_log(store: RocksStorage, first: int, last: int) -> None:
    """Persist entries first..last (term 1) in synced batches of BATCH, with a hard state."""
    for start in range(first, last + 1, BATCH):
        batch = ents(start, [1] * min(BATCH, last + 1 - start), size_bytes=ENTRY_BYTES)
        store.persist(ready(batch, HardState(Term(1), NodeId(1), Index(0))))


def expected_entries(first: int, last: int) -> list[Entry]:
    out: list[Entry] = []
    for start in range(first, last + 1, BATCH):
        out += ents(start, [1] * min(BATCH, last + 1 - start), size_bytes=ENTRY_BYTES)
    return out


def crash_image(live: Path, image: Path) -> None:
    """Copy the directory of an open database: the files a killed process leaves."""
    shutil.copytree(live, image)


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A crash image whose ENTRIES entries are all in one WAL (nothing flushed yet)."""
    root = tmp_path_factory.mktemp("crashed")
    store = open_rocks(root / "live")
    try:
        write_log(store, 1, ENTRIES)
        crash_image(root / "live", root / "image")
    finally:
        store.close()
    return root / "image"


@pytest.fixture
def db(crashed: Path, tmp_path: Path) -> Path:
    """A private copy of the crash image."""
    path = tmp_path / "db"
    shutil.copytree(crashed, path)
    return path


@pytest.fixture
def closed_db(tmp_path: Path) -> Path:
    """A cleanly closed database (its data in SST files, its WAL empty)."""
    path = tmp_path / "closed"
    with open_rocks(path) as store:
        write_log(store, 1, ENTRIES)
    return path


def only_wal(path: Path) -> Path:
    wals = [p for p in path.glob("*.log") if p.stat().st_size > 0]
    assert len(wals) == 1, wals
    return wals[0]


def fragments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(header offset, payload offset, payload length) of each physical record of a WAL or
    MANIFEST (RocksDB db/log_format.h: 32 KiB blocks; 7-byte headers, 11 for recyclable types;
    fewer than 7 bytes at a block's end are padding)."""
    offset = 0
    while offset + 7 <= len(data):
        left = BLOCK - offset % BLOCK
        if left < 7:
            offset += left
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, offset)
        if kind == 0 and length == 0:  # zeroed (preallocated) rest of a block
            offset += left
            continue
        header = 11 if kind >= 5 else 7
        yield offset, offset + header, length
        offset += header + length


def flip_bit(file: Path, offset: int, mask: int = 0x10) -> None:
    data = bytearray(file.read_bytes())
    before = data[offset]
    data[offset] ^= mask
    file.write_bytes(bytes(data))
    assert file.read_bytes()[offset] == before ^ mask != before


def truncate(file: Path, size: int) -> None:
    before = file.stat().st_size
    assert 0 <= size < before
    os.truncate(file, size)
    assert file.stat().st_size == size


def open_error(path: Path) -> StorageError:
    """The error opening `path` raises; a second attempt (a restarted node) raises it again."""
    errors = []
    for _ in range(2):
        with pytest.raises(StorageError) as info:
            open_rocks(path).close()
        errors.append(info.value)
    message = str(errors[0])
    assert "\n" not in message
    assert message.startswith(f"database {path}: ")
    assert (type(errors[1]), str(errors[1])) == (type(errors[0]), message)
    return errors[0]


DAMAGE_HINT = (
    "(the node's disk is damaged: move its data directory away and restart it, "
    'see docs/operations.md "Recovery")'
)


def assert_names_damage(error: StorageError, path: Path, file: Path | str) -> None:
    assert isinstance(error, CorruptStorageError)
    assert error.code == "CORRUPT_STORAGE"
    assert str(file) in str(error), str(error)
    assert str(error).endswith(DAMAGE_HINT)
    assert path.exists()  # nothing was created or deleted in its place


def log_keys_with_default_recovery(path: Path) -> int:
    """How many log entries RocksDB with its default WAL recovery mode would keep."""
    options = Options(raw_mode=True)
    options.set_wal_recovery_mode(DBRecoveryMode.point_in_time())
    db = Rdict(str(path), options, column_families={n: Options(raw_mode=True) for n in FAMILIES})
    try:
        log = db.get_column_family("log")
        count = sum(1 for _ in log.keys())
        del log
        return count
    finally:
        db.close()


def test_crash_image_opens_with_everything(db: Path) -> None:
    assert only_wal(db).stat().st_size > 400 * 1024
    assert not list(db.glob("*.sst"))  # all in the WAL
    with open_rocks(db) as store:
        assert store.last_index() == ENTRIES
        assert store.entries(Index(1), Index(ENTRIES + 1)) == expected_entries(1, ENTRIES)


# -- (a) a flipped bit in the middle of the WAL -----------------------------------------------


def test_wal_bit_flip_in_the_middle_refuses_to_open(db: Path, tmp_path: Path) -> None:
    wal = only_wal(db)
    data = wal.read_bytes()
    _, payload, length = next(f for f in fragments(data) if f[1] > len(data) // 2)
    assert length > 100
    pristine = tmp_path / "pristine"
    shutil.copytree(db, pristine)
    flip_bit(wal, payload + length // 2)
    shutil.copytree(db, tmp_path / "default-mode")

    error = open_error(db)

    assert_names_damage(error, db, wal)
    assert "RocksDB refused to open: Corruption: checksum mismatch" in str(error)
    assert f"in write-ahead log {wal} " in str(error)
    # RocksDB's default recovery mode (point-in-time) would have opened, silently keeping
    # only the entries before the damaged record.
    kept = log_keys_with_default_recovery(tmp_path / "default-mode")
    assert 0 < kept < ENTRIES // 2 + BATCH
    assert log_keys_with_default_recovery(pristine) == ENTRIES


def test_wal_header_bit_flip_refuses_to_open(db: Path) -> None:
    wal = only_wal(db)
    data = wal.read_bytes()
    header, _, _ = next(f for f in fragments(data) if f[1] > len(data) // 3)
    flip_bit(wal, header + 4, 0x01)  # the payload length

    assert_names_damage(open_error(db), db, wal)


# -- (b) a torn last record ---------------------------------------------------------------------


def test_wal_torn_inside_its_last_record_opens_without_that_batch(db: Path) -> None:
    wal = only_wal(db)
    _, payload, length = list(fragments(wal.read_bytes()))[-1]
    truncate(wal, payload + length // 2)

    with open_rocks(db) as store:
        # Observed: exactly the last batch (the torn write, never acknowledged) is missing.
        assert store.last_index() == ENTRIES - BATCH
        assert store.entries(Index(1), Index(ENTRIES - BATCH + 1)) == expected_entries(
            1, ENTRIES - BATCH
        )
        assert store.initial_state()[0] == HardState(Term(1), NodeId(1), Index(0))


def test_wal_torn_inside_its_last_header_opens_without_that_batch(db: Path) -> None:
    wal = only_wal(db)
    header, _, _ = list(fragments(wal.read_bytes()))[-1]
    truncate(wal, header + 3)

    with open_rocks(db) as store:
        assert store.last_index() == ENTRIES - BATCH


def test_wal_last_record_garbled_in_place_refuses_to_open(db: Path) -> None:
    """A torn write that left wrong bytes (not a short file) is refused, like any damage."""
    wal = only_wal(db)
    data = bytearray(wal.read_bytes())
    _, payload, length = list(fragments(bytes(data)))[-1]
    size = len(data)
    data[payload + length // 2 :] = bytes(size - payload - length // 2)
    assert bytes(data) != wal.read_bytes()
    wal.write_bytes(bytes(data))
    assert wal.stat().st_size == size

    assert_names_damage(open_error(db), db, wal)


def test_zeros_after_the_last_wal_record_are_ignored(db: Path) -> None:
    wal = only_wal(db)
    size = wal.stat().st_size
    with wal.open("ab") as f:
        f.write(bytes(10_000))  # preallocated, never written
    assert wal.stat().st_size == size + 10_000

    with open_rocks(db) as store:
        assert store.last_index() == ENTRIES


# -- (c) a WAL cut far from its end ------------------------------------------------------------


def test_wal_cut_at_30_percent_opens_with_fewer_entries(db: Path) -> None:
    """RocksDB alone cannot tell a cut WAL from a torn tail: it opens with what is left.

    Do not rely on RocksDB here: detecting the loss of acknowledged entries is the job of the
    durability mark kept outside the database (node/raft/_durability.py).
    """
    wal = only_wal(db)
    truncate(wal, wal.stat().st_size * 3 // 10)

    with open_rocks(db) as store:
        kept = store.last_index()
        assert 0 < kept < ENTRIES * 35 // 100
        assert kept % BATCH == 0  # whole batches: a WAL record is all or nothing
        assert store.entries(Index(1), Index(kept + 1)) == expected_entries(1, kept)


def test_wal_cut_at_a_record_boundary_opens_with_fewer_entries(db: Path) -> None:
    wal = only_wal(db)
    records = list(fragments(wal.read_bytes()))
    header, _, _ = records[len(records) // 2]
    truncate(wal, header)

    with open_rocks(db) as store:
        assert 0 < store.last_index() < ENTRIES // 2 + BATCH


# -- (d) a flipped bit in an SST ---------------------------------------------------------------


def log_sst(path: Path) -> tuple[Path, int]:
    """The single SST file of the log column family of a closed database, and the size of its
    data blocks (they come first in the file, before the index and meta blocks)."""
    db = Rdict(
        str(path),
        Options(raw_mode=True),
        column_families={n: Options(raw_mode=True) for n in FAMILIES},
    )
    try:
        files = [f for f in db.live_files() if len(f["start_key"]) == 8]
        log = db.get_column_family("log")
        properties = log.property_value("rocksdb.aggregated-table-properties") or ""
        del log
    finally:
        db.close()
    assert len(files) == 1, files
    found = re.search(r"data block size=(\d+)", properties)
    assert found, properties
    return path / files[0]["name"].lstrip("/"), int(found[1])


@pytest.fixture
def flushed_db(tmp_path: Path) -> Path:
    path = tmp_path / "flushed"
    with open_rocks(path) as store:
        write_log(store, 1, ENTRIES)
        store.flush()
    return path


def test_flush_puts_the_data_in_sst_files(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with open_rocks(path) as store:
        write_log(store, 1, 100)
        assert not list(path.glob("*.sst"))
        store.flush()
        assert len(list(path.glob("*.sst"))) >= 2  # meta and log
        assert all(p.stat().st_size == 0 for p in path.glob("*.log"))
    with open_rocks(path) as store:
        assert store.last_index() == 100


def test_sst_data_block_bit_flip_refuses_to_open(flushed_db: Path) -> None:
    sst, data_bytes = log_sst(flushed_db)
    assert sst.stat().st_size > data_bytes > 50_000
    flip_bit(sst, data_bytes // 2, 0x04)

    error = open_error(flushed_db)

    assert_names_damage(error, flushed_db, sst)
    message = str(error)
    # Open reads every log entry; RocksDB ends the iteration at the bad block (its status says
    # why, and the file and offset).
    assert re.search(r": log entry \d+: unreadable: Corruption: block checksum mismatch", message)
    found = re.search(rf"in {re.escape(str(sst))} offset (\d+) size (\d+)", message)
    assert found, message
    offset, size = int(found[1]), int(found[2])
    assert offset <= data_bytes // 2 < offset + size + 5  # 5: the block trailer


def test_sst_index_block_bit_flip_refuses_to_open(flushed_db: Path) -> None:
    sst, data_bytes = log_sst(flushed_db)
    flip_bit(sst, data_bytes + 100, 0x04)

    error = open_error(flushed_db)

    assert_names_damage(error, flushed_db, sst)
    assert "RocksDB refused to open: Corruption:" in str(error)


def test_sst_truncated_refuses_to_open(flushed_db: Path) -> None:
    sst, _ = log_sst(flushed_db)
    truncate(sst, sst.stat().st_size // 2)

    error = open_error(flushed_db)

    assert_names_damage(error, flushed_db, sst)
    assert "Sst file size mismatch" in str(error)


def test_sst_deleted_refuses_to_open(flushed_db: Path) -> None:
    sst, _ = log_sst(flushed_db)
    sst.unlink()
    assert not sst.exists()

    assert_names_damage(open_error(flushed_db), flushed_db, sst)


class FailingIter:
    """An RdictIter over `items` that then stops as RocksDB does on a bad block."""

    def __init__(self, items: list[tuple[bytes, bytes]], error: str) -> None:
        self.items, self.error, self.at = items, error, 0

    def seek(self, key: bytes) -> None:
        self.at = next((n for n, (k, _) in enumerate(self.items) if k >= key), len(self.items))

    def seek_to_first(self) -> None:
        self.at = 0

    def valid(self) -> bool:
        return self.at < len(self.items)

    def key(self) -> bytes:
        return self.items[self.at][0]

    def value(self) -> bytes:
        return self.items[self.at][1]

    def next(self) -> None:
        self.at += 1

    def status(self) -> None:
        raise Exception(self.error)


class FailingFamily:
    def __init__(self, family: Rdict, stop_after: int, error: str) -> None:
        self.items = cast("list[tuple[bytes, bytes]]", list(family.items())[:stop_after])
        self.error = error

    def iter(self, read_opt: object = None) -> FailingIter:
        return FailingIter(self.items, self.error)


@pytest.mark.parametrize(
    ("error", "corrupt"),
    [
        (
            "Corruption: block checksum mismatch: stored = 1, computed = 2, type = 4 "
            "in /x/000012.sst offset 4096 size 3975",
            True,
        ),
        ("IO error: While pread offset 4096 len 3975: /x/000012.sst: Input/output error", False),
    ],
)
def test_read_of_older_entries_checks_the_iterator_status(
    tmp_path: Path, error: str, corrupt: bool
) -> None:
    """A read that RocksDB ends early (bad block) raises, naming the entry; it never returns
    fewer entries. (A real bad block read after open depends on RocksDB's block cache, so the
    iterator is simulated here; the open-time tests above use real damage.)"""
    path = tmp_path / "db"
    with open_rocks(path, cache_max_bytes=1000) as store:
        write_log(store, 1, 100)
        store._log = FailingFamily(store._log, 42, error)  # type: ignore[assignment]
        assert store.entries(Index(1), Index(43)) == expected_entries(1, 42)
        with pytest.raises(StorageError) as info:
            store.entries(Index(1), Index(101))
        store._log = store._db.get_column_family("log")  # type: ignore[union-attr]
    message = str(info.value)
    assert message.startswith(f"database {path}: log entry 43: ")
    assert error in message
    assert isinstance(info.value, CorruptStorageError) is corrupt
    assert message.endswith(DAMAGE_HINT) is corrupt


# -- (e) a deleted WAL --------------------------------------------------------------------------


def test_deleted_wal_of_a_never_flushed_database_opens_as_a_new_one(db: Path) -> None:
    """All data was in the WAL: without it the directory holds an empty database.

    RocksDB cannot see the loss; RocksStorage takes it for a database created but never
    written and creates it again (a new node, JOINING). The durability mark must catch this.
    """
    wal = only_wal(db)
    wal.unlink()
    assert not wal.exists()

    with open_rocks(db) as store:
        assert store.created
        assert store.last_index() == 0
        assert store.initial_state()[0] == HardState(standing=Standing.JOINING)


def test_deleted_wal_opens_with_what_the_sst_files_hold(tmp_path: Path) -> None:
    live, image = tmp_path / "live", tmp_path / "image"
    store = open_rocks(live)
    try:
        write_log(store, 1, 1000)
        store.flush()
        write_log(store, 1001, 2000)
        crash_image(live, image)
    finally:
        store.close()
    wal = only_wal(image)
    wal.unlink()

    with open_rocks(image) as restarted:
        # Observed: the entries written since the flush are gone, silently.
        assert not restarted.created
        assert restarted.last_index() == 1000


def test_deleted_empty_wal_of_a_closed_database_loses_nothing(closed_db: Path) -> None:
    wals = list(closed_db.glob("*.log"))
    assert wals and all(p.stat().st_size == 0 for p in wals)
    for wal in wals:
        wal.unlink()

    with open_rocks(closed_db) as store:
        assert store.last_index() == ENTRIES


# -- (f) MANIFEST and CURRENT -----------------------------------------------------------------


def manifest(path: Path) -> Path:
    current = (path / "CURRENT").read_text().strip()
    assert re.fullmatch(r"MANIFEST-\d{6}", current)
    return path / current


def test_manifest_bit_flip_refuses_to_open(closed_db: Path) -> None:
    file = manifest(closed_db)
    _, payload, length = max(fragments(file.read_bytes()), key=lambda f: f[2])
    flip_bit(file, payload + length // 2)

    error = open_error(closed_db)

    assert_names_damage(error, closed_db, file)
    assert "Corruption: checksum mismatch" in str(error)


def test_manifest_cut_after_its_first_record_refuses_to_open(closed_db: Path) -> None:
    file = manifest(closed_db)
    records = list(fragments(file.read_bytes()))
    assert len(records) > 5
    truncate(file, records[1][0])

    error = open_error(closed_db)

    assert_names_damage(error, closed_db, file)
    assert "entry in MANIFEST" in str(error)


def test_manifest_cut_in_the_middle_opens_without_the_files_it_forgot(closed_db: Path) -> None:
    """Not detected: RocksDB reads a cut MANIFEST as one whose last write was torn.

    It opens with the version before the cut: the SST files added after it are unknown to it,
    and it deletes them. Here that is all the data, so RocksStorage sees an empty database and
    creates it again (a new, JOINING node). Detecting the loss is the durability mark's job.
    """
    file = manifest(closed_db)
    truncate(file, file.stat().st_size // 2)
    ssts = sorted(closed_db.glob("*.sst"))
    assert ssts

    with open_rocks(closed_db) as store:
        assert store.last_index() < ENTRIES
        assert store.created
    assert not any(sst.exists() for sst in ssts)  # deleted by RocksDB at open


def test_manifest_deleted_refuses_to_open(closed_db: Path) -> None:
    file = manifest(closed_db)
    file.unlink()

    error = open_error(closed_db)

    assert_names_damage(error, closed_db, file)
    assert "No such file or directory" in str(error)


def test_current_garbled_refuses_to_open(closed_db: Path) -> None:
    (closed_db / "CURRENT").write_bytes(b"MANIFEST-00x005\n")

    error = open_error(closed_db)

    assert_names_damage(error, closed_db, closed_db / "CURRENT")
    assert "CURRENT file corrupted" in str(error)


def test_current_truncated_refuses_to_open(closed_db: Path) -> None:
    truncate(closed_db / "CURRENT", 0)

    assert_names_damage(open_error(closed_db), closed_db, closed_db / "CURRENT")


def test_current_naming_another_manifest_refuses_to_open(closed_db: Path) -> None:
    file = manifest(closed_db)
    other = file.with_name("MANIFEST-" + f"{int(file.name[9:]) + 100:06d}")
    assert not other.exists()
    (closed_db / "CURRENT").write_text(other.name + "\n")

    assert_names_damage(open_error(closed_db), closed_db, other)


def test_current_deleted_refuses_to_open_and_creates_nothing(closed_db: Path) -> None:
    """Without CURRENT RocksDB would create a new, empty database over the old files."""
    (closed_db / "CURRENT").unlink()
    before = sorted(p.name for p in closed_db.iterdir())

    error = open_error(closed_db)  # twice: a restarted node keeps refusing
    assert_names_damage(error, closed_db, closed_db / "CURRENT")
    assert "is missing but the directory holds database files" in str(error)
    assert sorted(p.name for p in closed_db.iterdir()) == before


def test_current_deleted_in_a_crash_image_refuses_to_open(db: Path) -> None:
    (db / "CURRENT").unlink()

    assert_names_damage(open_error(db), db, db / "CURRENT")


def test_an_empty_directory_is_a_new_database(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.mkdir()
    with open_rocks(path) as store:
        assert store.created


def test_lock_held_is_not_damage(closed_db: Path) -> None:
    with open_rocks(closed_db):
        with pytest.raises(StorageError) as info:
            open_rocks(closed_db)
    assert not isinstance(info.value, CorruptStorageError)
    assert "the node's disk is damaged" not in str(info.value)


def test_a_refused_open_releases_the_database(tmp_path: Path) -> None:
    """After a refused open nothing keeps RocksDB (and its lock) alive: it can be opened again
    at once, in the same process, while the exception is still referenced."""
    path = tmp_path / "db"
    with open_rocks(path) as store:
        write_log(store, 1, 100)
    db = Rdict(
        str(path),
        Options(raw_mode=True),
        column_families={n: Options(raw_mode=True) for n in FAMILIES},
    )
    meta = db.get_column_family("meta")
    del meta[b"identity"]
    del meta
    db.close()

    error = open_error(path)  # twice

    assert isinstance(error, CorruptStorageError)
    assert "identity record: missing, but column family 'meta' holds" in str(error)
    Rdict(
        str(path),
        Options(raw_mode=True),
        column_families={n: Options(raw_mode=True) for n in FAMILIES},
    ).close()
