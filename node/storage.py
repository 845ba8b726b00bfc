"""Durable Raft storage on RocksDB (rocksdict): `RocksStorage`.

It serves the read-only `Storage` interface the Raft core reads (`node/raft/_storage.py`, same
semantics as `MemoryStorage`) and the two writes of the driver: `persist(ready)` (step 1 of the
`Ready` contract: one atomic `WriteBatch`, synced when `ready.must_sync`) and
`save_snapshot(index, data, membership)` (the application's snapshot, which compacts the log).

The record format (column families, keys, values, a CRC32 on every value) is in
node/storage_format.py; opening RocksDB so that damage is reported is in node/rocks_io.py.
`open` verifies every record (identity, hard state, snapshot meta and chunks, each log entry),
that the log has no gap after the snapshot and that its terms never decrease, and raises
`CorruptStorageError` naming the database path and the record rather than start with silently
lost data.

Damage to RocksDB's own files is caught where RocksDB sees it (observed with RocksDB 9.8 through
rocksdict 0.3.29; tests/io/test_disk_damage.py). Every message is one line naming the
database and the damage, and what to do:

- WAL (`NNNNNN.log`, replayed at open after a crash; a clean close leaves it empty): it is
  replayed in `tolerate_corrupted_tail_records` mode. A damaged record (checksum or length)
  anywhere refuses the open, naming the WAL file (taken from RocksDB's `LOG`: its error names
  none, nor an offset). RocksDB's default mode (point-in-time) would instead silently drop that
  record and everything after it. A file cut inside its last record (a torn write, never
  acknowledged) opens without that record's batch; zeros after the last record are ignored;
  but a last record whose bytes are wrong in place (not cut off) is refused like any damage.
- Not detected by RocksDB, which cannot tell them from a torn tail or a legitimate state: a WAL
  cut anywhere else (at 30 % it opens with the first 30 % of the entries), a deleted WAL (it
  opens with what the SST files hold; a database never flushed, i.e. not reopened since it was
  created, then looks empty and is created again as a new node), a MANIFEST cut after its first
  records (the SST files added after the cut are forgotten, and RocksDB deletes them). Those
  lose whole records, not bytes: detecting that is the job of the durability mark kept outside
  the database (node/raft/_durability.py), and of the checks above (a gap in the log, a commit
  index past the last entry).
- SST files: opening reads every live SST's footer and index block and checks each file's size
  against the MANIFEST (`paranoid_checks`), so damage there, or a missing or truncated SST,
  refuses the open with RocksDB's message (file and offset). A damaged data block is found
  when read (`verify_checksums`); open reads every record, so it refuses the open: RocksDB ends
  an iteration at such a block as if the data ended there, and every iteration here checks the
  iterator's status when it stops (`_scan`), naming the SST file and the block's offset.
- MANIFEST flipped or deleted, CURRENT garbled or naming a missing MANIFEST: RocksDB refuses
  the open (CorruptStorageError naming the file). CURRENT deleted: RocksDB would create a new,
  empty database over the old files, so `open` refuses first when the directory holds SST or
  non-empty WAL files but no CURRENT.

A refused open changes nothing: the node refuses again on every restart.

Reads of recent entries and of any term cost no disk I/O: the terms of the whole log (8 bytes an
entry) and the entries of its tail (up to `cache_max_bytes`) are kept in memory; older entries
are read from the database.

Not thread-safe: calls must be serialised (the driver runs each call, in a worker thread through
`trio.to_thread.run_sync`, one at a time, and does not step the core while a write is running).
"""

from __future__ import annotations

import collections
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import cast

import cbor2
from rocksdict import Rdict, WriteBatch, WriteOptions

from node import rocks_io as rio
from node import storage_format as fmt
from node.raft._errors import CompactedError, UnavailableError
from node.raft._membership import Membership
from node.raft._ready import Ready
from node.raft._storage import entry_size_bytes
from node.raft._types import (
    Entry,
    EntryKind,
    HardState,
    Index,
    NodeId,
    Snapshot,
    SnapshotChunk,
    SnapshotMeta,
    Standing,
    Term,
)
from node.rocks_bodies import RocksBodies
from node.snapshot_store import (
    SnapshotStage,
    StagedSnapshot,
    StoredSnapshot,
    chunk_range,
)
from node.snapshots import DataFile
from node.storage_format import FORMAT_VERSION, CorruptStorageError, StorageError

__all__ = [
    "DEFAULT_CACHE_MAX_BYTES",
    "DEFAULT_SNAPSHOT_CHUNK_BYTES",
    "FORMAT_VERSION",
    "CorruptStorageError",
    "NoDatabase",
    "RocksStorage",
    "StorageError",
]


class NoDatabase(StorageError):
    """`RocksStorage.open(..., membership=None)` found no database to open (nothing was
    created: a node joining a running cluster learns its membership first)."""


DEFAULT_CACHE_MAX_BYTES = 16 * 1024 * 1024
"""Default budget of the in-memory cache of the log tail (sizes as `entry_size_bytes`)."""

DEFAULT_SNAPSHOT_CHUNK_BYTES = 4 * 1024 * 1024
"""Default size of the values snapshot data is split into."""


def _limit_bytes(entries: Iterable[Entry], max_bytes: int | None) -> list[Entry]:
    """Collect entries, stopping before the one that takes the total past `max_bytes`.

    The first entry is always kept (as `MemoryStorage.entries` does).
    """
    if max_bytes is None:
        return entries if type(entries) is list else list(entries)
    out: list[Entry] = []
    total = 0
    for entry in entries:
        total += entry_size_bytes(entry)
        if total > max_bytes and out:
            break
        out.append(entry)
    return out


class RocksStorage:
    """A node's durable Raft state (hard state, log, snapshot) in a RocksDB database.

    Create with `RocksStorage.open(...)`; close with `close()` or use it as a context manager.
    Reads follow `node.raft._storage.Storage` (and `MemoryStorage`) exactly. Blocking: run
    `persist` and `save_snapshot` in a worker thread, one call at a time.
    """

    def __init__(
        self,
        db: Rdict,
        path: Path,
        *,
        cache_max_bytes: int,
        snapshot_chunk_bytes: int,
    ) -> None:
        """Wrap an open database; use `RocksStorage.open` instead."""
        self._db: Rdict | None = db
        self._path = path
        self._cache_max_bytes = cache_max_bytes
        self._snapshot_chunk_bytes = snapshot_chunk_bytes
        self._meta = db.get_column_family(fmt.CF_META)
        self._log = db.get_column_family(fmt.CF_LOG)
        self._snapshot_cf = db.get_column_family(fmt.CF_SNAPSHOT)
        self._h_meta = db.get_column_family_handle(fmt.CF_META)
        self._h_log = db.get_column_family_handle(fmt.CF_LOG)
        self._h_snapshot = db.get_column_family_handle(fmt.CF_SNAPSHOT)
        self._wo_sync = WriteOptions()
        self._wo_sync.sync = True
        self._wo_nosync = WriteOptions()
        self._ro = rio.read_options()
        # In-memory state, rebuilt by _load and kept equal to the database by every write.
        self._hard_state = HardState()
        self._snap_meta = SnapshotMeta()
        # The entry just before the first one the log holds: the snapshot's, or an older one
        # when the log keeps a margin of entries the snapshot covers (commit_snapshot).
        self._log_start: tuple[int, int] = (0, 0)
        # A snapshot being received: its meta, chunks and bytes written so far.
        self._incoming: tuple[SnapshotMeta, int, int] | None = None
        self._snap_size_bytes = 0
        self._terms = array("q")  # terms of entries snap_meta.index + 1 .. last_index
        self._cache: list[Entry] = []  # the last len(_cache) entries of the log
        self._cache_bytes = 0
        self._configs: dict[int, Entry] = {}  # the CONFIG entries after the snapshot, by index
        self._snap_chunk_count = 0
        self._bodies: RocksBodies | None = None
        self.created = False
        """True when `open` created the database (it held nothing)."""

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        cluster_id: str,
        node_id: int,
        membership: Membership | tuple[int, ...] | None,
        cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
        snapshot_chunk_bytes: int = DEFAULT_SNAPSHOT_CHUNK_BYTES,
    ) -> RocksStorage:
        """Open the node's database at `path`, creating it on first use, and verify it.

        Args:
            path: directory of the database (created with its parents if missing).
            cluster_id: the cluster this node belongs to; recorded on creation, checked after.
            node_id: this node's id (>= 1); recorded on creation, checked after.
            membership: the initial cluster membership (or its voters), used only when the
                database is created (it then lives in the snapshot meta at index 0); None to
                open only a database that exists (`NoDatabase` otherwise).
            cache_max_bytes: budget of the in-memory log tail cache (`entry_size_bytes` units).
            snapshot_chunk_bytes: size of the values snapshot data is stored in.

        Returns:
            The open storage.

        Raises:
            NoDatabase: `membership` is None and the database holds nothing yet.
            StorageError: RocksDB cannot open the database (e.g. another process holds it), or
                it belongs to another cluster or node, or has an unknown format.
            CorruptStorageError: RocksDB finds damage (a WAL record, an SST block, the
                MANIFEST or CURRENT), or a record fails its checksum or checks, or the log has
                a gap. The message is one line naming the database and the damage.
        """
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            rio.check_current_file(path)
        except OSError as exc:
            raise StorageError(f"cannot open database {path}: {exc}") from exc
        try:
            db = Rdict(str(path), rio.db_options(), column_families=rio.family_options())
        except Exception as exc:
            raise rio.open_error(path, exc) from exc
        try:
            self = cls(
                db, path, cache_max_bytes=cache_max_bytes, snapshot_chunk_bytes=snapshot_chunk_bytes
            )
        except BaseException:
            db.close()
            raise
        try:
            self._load(cluster_id, node_id, None if membership is None else _membership(membership))
            self._bodies = RocksBodies(db, path)
        except BaseException as exc:
            self.close()
            rio.clear_frames(exc)
            raise
        return self

    def close(self) -> None:
        """Close the database (idempotent).

        Afterwards writes, and reads that need the database, raise `StorageError`.
        """
        db = self._db
        if db is None:
            return
        self._db = None
        # Column family objects keep RocksDB open: drop them before closing it.
        if self._bodies is not None:
            self._bodies.close()
            self._bodies = None
        del self._meta, self._log, self._snapshot_cf, self._h_meta, self._h_log, self._h_snapshot
        db.close()

    def __enter__(self) -> RocksStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def path(self) -> Path:
        """Directory of the database."""
        return self._path

    @property
    def bodies(self) -> RocksBodies:
        """The message bodies (node/rocks_bodies.py), in this database.

        Raises:
            StorageError: the database is closed.
        """
        if self._bodies is None:
            raise StorageError(f"database {self._path} is closed")
        return self._bodies

    def flush(self) -> None:
        """Write the memtables of every column family to SST files, and wait.

        Never needed for durability (every write is in the WAL); tests and tools use it to put
        the data in SST files.

        Raises:
            StorageError: the database is closed, or RocksDB failed.
        """
        self._require_open()
        try:
            for family in (self._meta, self._log, self._snapshot_cf):
                family.flush()
        except Exception as exc:
            raise StorageError(f"database {self._path}: flush failed: {rio.one_line(exc)}") from exc

    def _corrupt(self, record: str, problem: str) -> CorruptStorageError:
        return CorruptStorageError(f"database {self._path}: {record}: {problem}")

    def _read_error(self, record: str, exc: BaseException) -> StorageError:
        """The error for RocksDB failing to read `record` (damage when it says Corruption)."""
        message = rio.one_line(exc)
        if "Corruption" in message:
            return CorruptStorageError(
                f"database {self._path}: {record}: unreadable: {message} ({rio.DAMAGED})"
            )
        return StorageError(f"database {self._path}: {record}: read failed: {message}")

    def _scan(
        self,
        family: Rdict,
        record: Callable[[bytes | None], str],
        from_key: bytes | None = None,
    ) -> Iterator[tuple[bytes, bytes]]:
        """`rio.scan` on `family`; a read error names `record(last key read, or None)`."""
        return rio.scan(
            family, self._ro, lambda last, exc: self._read_error(record(last), exc), from_key
        )

    def _scan_log(self, first: int, *, whole: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """`rio.scan` of the log from entry `first` (or every key when `whole`, first expected).

        A read error names the entry after the last one read.
        """

        def record(last: bytes | None) -> str:
            if last is None or len(last) != fmt.LOG_KEY.size:
                return f"log entry {first}"
            return f"log entry {fmt.LOG_KEY.unpack(last)[0] + 1}"

        return self._scan(self._log, record, None if whole else fmt.log_key(first))

    def _scan_snapshot(self, index: int, *, whole: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """`rio.scan` of the chunks of snapshot `index` (or every key when `whole`).

        A read error names the chunk after the last one read.
        """

        def record(last: bytes | None) -> str:
            if last is None or len(last) != fmt.CHUNK_KEY.size:
                return f"snapshot {index} chunk 0"
            last_index, number = fmt.CHUNK_KEY.unpack(last)
            return f"snapshot {last_index} chunk {number + 1}"

        return self._scan(self._snapshot_cf, record, None if whole else fmt.CHUNK_KEY.pack(index, 0))

    def _get_meta(self, key: bytes, record: str) -> bytes | None:
        try:
            return cast("bytes | None", self._meta.get(key, None, self._ro))
        except Exception as exc:
            raise self._read_error(record, exc) from None

    def _load(self, cluster_id: str, node_id: int, membership: Membership | None) -> None:
        identity_value = self._get_meta(fmt.K_IDENTITY, "identity record")
        if identity_value is None:
            if membership is None:
                raise NoDatabase(f"database {self._path} holds nothing yet")
            self._create(cluster_id, node_id, membership)
            return
        try:
            identity = fmt.decode_cbor(fmt.unseal(fmt.K_IDENTITY, identity_value))
        except fmt.Bad as exc:
            raise self._corrupt("identity record", str(exc)) from None
        if type(identity) is not dict or identity.get("format") != FORMAT_VERSION:
            raise StorageError(
                f"database {self._path}: unknown format {identity!r:.80} "
                f"(this version reads format {FORMAT_VERSION})"
            )
        stored = (identity.get("cluster_id"), identity.get("node_id"))
        if stored != (cluster_id, node_id):
            raise StorageError(
                f"database {self._path} belongs to cluster {stored[0]!r} node {stored[1]!r}, "
                f"not cluster {cluster_id!r} node {node_id!r}"
            )
        self._hard_state = self._load_hard_state()
        self._snap_meta = self._load_snapshot()
        self._log_start = self._load_log_start()
        self._load_log()
        if self.last_index() < self._snap_meta.index:
            raise self._corrupt(
                f"log entry {self.last_index() + 1}",
                f"missing: the log keeps entries from {self._log_start[0] + 1} up to the "
                f"snapshot index {self._snap_meta.index}",
            )
        if self._hard_state.commit > self.last_index():
            raise self._corrupt(
                "hard state",
                f"commit index {self._hard_state.commit} is past the last log index "
                f"{self.last_index()} (log entries lost?)",
            )

    def _create(self, cluster_id: str, node_id: int, membership: Membership) -> None:
        families = {fmt.CF_META: self._meta, fmt.CF_LOG: self._log, fmt.CF_SNAPSHOT: self._snapshot_cf}
        for name, family in families.items():
            for key, _ in self._scan(family, rio.named(f"column family {name!r}")):
                raise self._corrupt(
                    "identity record", f"missing, but column family {name!r} holds {key!r:.40}"
                )
        identity = {"format": FORMAT_VERSION, "cluster_id": cluster_id, "node_id": node_id}
        meta = SnapshotMeta(Index(0), Term(0), membership)
        batch = WriteBatch(raw_mode=True)
        batch.put(fmt.K_IDENTITY, fmt.seal(fmt.K_IDENTITY, cbor2.dumps(identity)), self._h_meta)
        batch.put(
            fmt.K_HARD_STATE,
            fmt.seal(fmt.K_HARD_STATE, fmt.encode_hard_state(HardState(standing=Standing.JOINING))),
            self._h_meta,
        )
        batch.put(
            fmt.K_SNAPSHOT, fmt.seal(fmt.K_SNAPSHOT, fmt.encode_snapshot_record(meta, 0, 0)), self._h_meta
        )
        self._write(batch, sync=True)
        self._snap_meta = meta
        self._log_start = (0, 0)
        self._hard_state = HardState(standing=Standing.JOINING)
        self.created = True

    def _load_log_start(self) -> tuple[int, int]:
        snap = self._snap_meta
        value = self._get_meta(fmt.K_LOG_START, "log start")
        if value is None:
            return snap.index, snap.term
        try:
            item = fmt.decode_cbor(fmt.unseal(fmt.K_LOG_START, value))
        except fmt.Bad as exc:
            raise self._corrupt("log start", str(exc)) from None
        if not (
            type(item) is list
            and len(item) == 2
            and all(fmt.is_uint(v) for v in item)
            and item[0] <= snap.index
            and item[1] <= snap.term
        ):
            raise self._corrupt("log start", f"malformed {item!r:.60} for snapshot {snap.index}")
        return int(item[0]), int(item[1])

    def _load_hard_state(self) -> HardState:
        value = self._get_meta(fmt.K_HARD_STATE, "hard state")
        if value is None:
            raise self._corrupt("hard state", "missing")
        try:
            return fmt.decode_hard_state(fmt.unseal(fmt.K_HARD_STATE, value))
        except fmt.Bad as exc:
            raise self._corrupt("hard state", str(exc)) from None

    def _load_snapshot(self) -> SnapshotMeta:
        value = self._get_meta(fmt.K_SNAPSHOT, "snapshot meta")
        if value is None:
            raise self._corrupt("snapshot meta", "missing")
        try:
            meta, size_bytes, chunk_count = fmt.decode_snapshot_record(fmt.unseal(fmt.K_SNAPSHOT, value))
        except fmt.Bad as exc:
            raise self._corrupt("snapshot meta", str(exc)) from None
        # Read every chunk once to check it; the data is loaded again on first snapshot().
        # Chunks under another index were left by a snapshot being written when the node
        # stopped (node/snapshot_store.py): they are deleted, if their checksums hold.
        seen = total = 0
        leftovers: set[int] = set()
        for key, value in self._scan_snapshot(meta.index, whole=True):
            record = f"snapshot {meta.index} chunk {seen}"
            if len(key) != fmt.CHUNK_KEY.size:
                raise self._corrupt(record, f"malformed key {key!r:.40}")
            index, number = fmt.CHUNK_KEY.unpack(key)
            if index != meta.index:
                try:
                    fmt.unseal(key, value)
                except fmt.Bad as exc:
                    raise self._corrupt(f"snapshot {index} chunk {number}", str(exc)) from None
                leftovers.add(index)
                continue
            if number >= chunk_count:
                raise self._corrupt(f"snapshot {index} chunk {number}", "stray chunk")
            if number != seen:
                raise self._corrupt(record, "missing")
            try:
                total += len(fmt.unseal(key, value))
            except fmt.Bad as exc:
                raise self._corrupt(record, str(exc)) from None
            seen += 1
        if seen != chunk_count:
            raise self._corrupt(f"snapshot {meta.index} chunk {seen}", "missing")
        if total != size_bytes:
            raise self._corrupt(
                f"snapshot {meta.index}", f"data is {total} bytes, meta says {size_bytes}"
            )
        if leftovers:
            batch = WriteBatch(raw_mode=True)
            for index in leftovers:
                batch.delete_range(*chunk_range(index), self._h_snapshot)
            self._write(batch, sync=False)
        self._snap_chunk_count = chunk_count
        self._snap_size_bytes = size_bytes
        return meta

    def _load_log(self) -> None:
        start, prev_term = self._log_start
        expected = start + 1
        terms = array("q")
        configs: dict[int, Entry] = {}
        cache: collections.deque[Entry] = collections.deque()
        cache_bytes = 0
        for key, value in self._scan_log(expected, whole=True):
            if len(key) != fmt.LOG_KEY.size:
                raise self._corrupt(f"log entry {expected}", f"malformed key {key!r:.40}")
            index = fmt.LOG_KEY.unpack(key)[0]
            if index < expected:
                raise self._corrupt(
                    f"log entry {index}",
                    f"left behind at or below the log's start {start} (snapshot index "
                    f"{self._snap_meta.index})",
                )
            if index > expected:
                raise self._corrupt(
                    f"log entry {expected}", f"missing (the next entry stored is {index})"
                )
            try:
                entry = fmt.decode_entry_value(index, key, value)
            except fmt.Bad as exc:
                raise self._corrupt(f"log entry {index}", str(exc)) from None
            if entry.term < prev_term:
                raise self._corrupt(
                    f"log entry {index}",
                    f"term {entry.term} is lower than the term {prev_term} before it",
                )
            if entry.kind is EntryKind.CONFIG:
                try:
                    Membership.decode(entry.data)
                except ValueError as exc:
                    raise self._corrupt(f"log entry {index}", str(exc)) from None
                if index > self._snap_meta.index:  # the snapshot has the ones it covers
                    configs[index] = Entry(entry.term, entry.index, entry.kind, bytes(entry.data))
            prev_term = entry.term
            terms.append(entry.term)
            cache.append(entry)
            cache_bytes += entry_size_bytes(entry)
            while cache_bytes > self._cache_max_bytes and len(cache) > 1:
                cache_bytes -= entry_size_bytes(cache.popleft())
            expected += 1
        self._terms = terms
        self._configs = configs
        self._cache = list(cache)
        self._cache_bytes = cache_bytes

    # -- reads (the Storage protocol) ---------------------------------------------------------

    def initial_state(self) -> tuple[HardState, Membership]:
        """Return the persisted hard state and the membership of the latest snapshot."""
        return self._hard_state, self._snap_meta.membership

    def config_entries(self) -> list[Entry]:
        """The CONFIG entries after the snapshot, in index order (kept in memory)."""
        return [self._configs[i] for i in sorted(self._configs)]

    def first_index(self) -> Index:
        """Index of the first entry in the log (snapshot index + 1)."""
        return Index(self._log_start[0] + 1)

    def last_index(self) -> Index:
        """Index of the last entry in the log (the snapshot index when the log is empty)."""
        return Index(self._log_start[0] + len(self._terms))

    def term(self, index: Index) -> Term:
        """Return the term of the entry at `index` (the snapshot's term at its index).

        Raises:
            CompactedError: index < first_index() - 1.
            UnavailableError: index > last_index().
        """
        offset, offset_term = self._log_start
        if index < offset:
            raise CompactedError(index)
        if index - offset > len(self._terms):
            raise UnavailableError(index)
        if index == offset:
            return Term(offset_term)
        return Term(self._terms[index - offset - 1])

    def entries(self, lo: Index, hi: Index, max_bytes: int | None = None) -> list[Entry]:
        """Return entries with index in [lo, hi): at least one, then stop before `max_bytes`.

        Args:
            lo: first index wanted, >= first_index().
            hi: one past the last index wanted, <= last_index() + 1.
            max_bytes: budget in `entry_size_bytes` units, or None for no limit.

        Returns:
            The entries, in index order (empty when lo >= hi).

        Raises:
            CompactedError: lo < first_index().
            UnavailableError: hi > last_index() + 1.
            CorruptStorageError: an older entry read from the database fails its checks.
        """
        if lo <= self._log_start[0]:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        if lo >= hi:
            return []
        cache_first = self.last_index() + 1 - len(self._cache)
        if lo >= cache_first:
            return _limit_bytes(self._cache[lo - cache_first : hi - cache_first], max_bytes)
        older = self._read_log(lo, min(hi, cache_first))
        if hi <= cache_first:
            return _limit_bytes(older, max_bytes)
        return _limit_bytes(
            _chain(older, self._cache[: hi - cache_first]),
            max_bytes,
        )

    def _read_log(self, lo: int, hi: int) -> Iterator[Entry]:
        """Yield entries lo .. hi - 1 from the database, checking each."""
        self._require_open()
        if lo >= hi:
            return
        expected = lo
        for key, value in self._scan_log(lo):
            index = fmt.LOG_KEY.unpack(key)[0]
            if index != expected:
                raise self._corrupt(f"log entry {expected}", "missing")
            try:
                entry = fmt.decode_entry_value(index, key, value)
            except fmt.Bad as exc:
                raise self._corrupt(f"log entry {index}", str(exc)) from None
            yield entry
            expected += 1
            if expected == hi:
                return  # before the iterator reads past what was asked
        raise self._corrupt(f"log entry {expected}", "missing")

    def snapshot(self) -> Snapshot:
        """The latest snapshot (an empty one at index 0 when there is none).

        Its data stays on disk: a `StoredSnapshot` reads it a chunk at a time.
        """
        meta = self._snap_meta
        if not self._snap_chunk_count:
            return Snapshot(meta, b"")
        return Snapshot(meta, self._stored(meta.index, self._snap_size_bytes,
                                           self._snap_chunk_count))

    def _stored(self, index: int, size_bytes: int, chunk_count: int) -> StoredSnapshot:
        def read_chunk(number: int) -> bytes:
            self._require_open()
            key = fmt.CHUNK_KEY.pack(index, number)
            try:
                value = cast("bytes | None", self._snapshot_cf.get(key, None, self._ro))
            except Exception as exc:
                raise self._read_error(f"snapshot {index} chunk {number}", exc) from None
            if value is None:
                raise self._corrupt(f"snapshot {index} chunk {number}", "missing")
            try:
                return bytes(fmt.unseal(key, value))
            except fmt.Bad as exc:
                raise self._corrupt(f"snapshot {index} chunk {number}", str(exc)) from None

        return StoredSnapshot(index, read_chunk, size_bytes, chunk_count)

    def incoming_snapshot(self, meta: SnapshotMeta) -> StoredSnapshot | None:
        """The data of the snapshot being received from the leader, when every chunk of
        `meta`'s snapshot so far was written here (`Ready.snapshot_chunks`), else None."""
        incoming = self._incoming
        if incoming is None or incoming[0] != meta:
            return None
        return self._stored(meta.index, incoming[2], incoming[1])

    def _stage_incoming(
        self, batch: WriteBatch, chunks: tuple[SnapshotChunk, ...]
    ) -> tuple[SnapshotMeta, int, int] | None:
        """Add the chunks of a snapshot being received to `batch`; return the new assembly."""
        incoming = self._incoming
        for c in chunks:
            index = c.meta.index
            if c.offset_bytes == 0:
                batch.delete_range(*chunk_range(index), self._h_snapshot)
                incoming = (c.meta, 0, 0)
            if incoming is None or incoming[0] != c.meta or incoming[2] != c.offset_bytes:
                incoming = None  # a piece missing: the core asks for the snapshot again
                continue
            key = fmt.CHUNK_KEY.pack(index, incoming[1])
            batch.put(key, fmt.CRC.pack(fmt.crc(key, c.data)) + c.data, self._h_snapshot)
            incoming = (c.meta, incoming[1] + 1, incoming[2] + len(c.data))
        return incoming

    def snapshot_meta(self) -> SnapshotMeta:
        """Index, term and membership of the latest snapshot, without its data."""
        return self._snap_meta

    # -- writes (driver only) -----------------------------------------------------------------

    def persist(self, ready: Ready) -> None:
        """Write what `ready` asks to persist, in one atomic batch (Ready contract, step 1).

        In order: `ready.snapshot` if newer than the current one (it replaces the whole log),
        `ready.entries` (entries at or after `entries[0].index` are deleted first; entries the
        snapshot covers are skipped), then `ready.hard_state`. Synced when `ready.must_sync`.
        When it returns, reads reflect the write.

        Args:
            ready: the Ready being handled.

        Raises:
            ValueError: the entries are not contiguous, would leave a gap after the last index,
                or would make terms decrease; or the hard state's commit index is past the
                last index. Nothing is written then.
            StorageError: RocksDB failed to write; the in-memory state is unchanged.
        """
        self._require_open()
        snap = ready.snapshot
        if snap is not None and snap.meta.index <= self._snap_meta.index:
            snap = None
        entries = ready.entries
        hard_state = ready.hard_state
        if snap is None and not entries and hard_state is None and not ready.snapshot_chunks:
            return
        snap_meta = snap.meta if snap is not None else self._snap_meta
        # The log after this write starts after `start` (a snapshot replaces the whole log).
        start, start_term = (snap_meta.index, snap_meta.term) if snap is not None else self._log_start
        kept = len(self._terms) if snap is None else 0  # entries kept, before truncation

        batch = WriteBatch(raw_mode=True)
        # The bodies' buffered writes go first (before a switch of their generation).
        with self.bodies.buffered_into(batch):
            incoming = self._stage_incoming(batch, ready.snapshot_chunks)
            snap_record: tuple[int, int] | None = None  # size and chunks of a new snapshot
            switch_bodies = False
            if snap is not None:
                batch.delete_range(fmt.log_key(0), fmt.LOG_KEY_END, self._h_log)
                batch.delete(fmt.K_LOG_START, self._h_meta)  # the log starts at the snapshot
                data = snap.data
                if isinstance(data, StoredSnapshot):
                    # The snapshot assembled here from the leader's chunks: it becomes the node's,
                    # with the bodies its install prepared (node/rocks_bodies.py), atomically.
                    if incoming is None or incoming[0] != snap_meta:
                        raise ValueError(f"snapshot {snap_meta.index} was not assembled here")
                    _, count, size = incoming
                    lo, hi = chunk_range(snap_meta.index)
                    batch.delete_range(b"", lo, self._h_snapshot)
                    batch.delete_range(hi, b"\xff" * (fmt.CHUNK_KEY.size + 1), self._h_snapshot)
                    record = fmt.encode_snapshot_record(snap_meta, size, count)
                    batch.put(fmt.K_SNAPSHOT, fmt.seal(fmt.K_SNAPSHOT, record), self._h_meta)
                    snap_record = (size, count)
                    incoming = None
                    switch_bodies = self.bodies.add_switch(batch, snap_meta.index)
                else:
                    if not isinstance(data, bytes):
                        data = data.read_at(0, len(data))
                    count = self._put_snapshot(batch, snap_meta, data)
                    snap_record = (len(data), count)
            if entries and entries[0].index <= start:
                entries = tuple(e for e in entries if e.index > start)
            if entries:
                first = entries[0].index
                last = start + kept
                if first > last + 1:
                    raise ValueError(f"gap in log: append at {first} after {last}")
                prev_term: int
                if first == start + 1:
                    prev_term = start_term
                else:
                    prev_term = self._terms[first - start - 2]
                for n, entry in enumerate(entries):
                    if entry.index != first + n:
                        raise ValueError(f"entries not contiguous: {entry.index} after {first + n - 1}")
                    if entry.term < prev_term:
                        raise ValueError(
                            f"entry {entry.index} has term {entry.term} below the previous {prev_term}"
                        )
                    prev_term = entry.term
                if first <= last:
                    batch.delete_range(fmt.log_key(first), fmt.log_key(last + 1), self._h_log)
                h_log = self._h_log
                for entry in entries:
                    key = fmt.log_key(entry.index)
                    batch.put(key, fmt.encode_entry_value(key, entry), h_log)
                kept = first - start - 1 + len(entries)
            if hard_state is not None:
                if hard_state.commit > start + kept:
                    raise ValueError(
                        f"commit index {hard_state.commit} past last index {start + kept}"
                    )
                value = fmt.seal(fmt.K_HARD_STATE, fmt.encode_hard_state(hard_state))
                batch.put(fmt.K_HARD_STATE, value, self._h_meta)

            self._write(batch, sync=ready.must_sync or snap is not None)

        self._incoming = incoming
        if switch_bodies:
            self.bodies.switched()
        if snap is not None and snap_record is not None:
            self._snap_meta = snap_meta
            self._log_start = (start, start_term)
            self._snap_size_bytes, self._snap_chunk_count = snap_record
            self._terms = array("q")
            self._cache = []
            self._cache_bytes = 0
            self._configs = {}
        if entries:
            self._append_in_memory(entries)
        if hard_state is not None:
            self._hard_state = hard_state

    def _append_in_memory(self, entries: tuple[Entry, ...]) -> None:
        offset = self._log_start[0]
        first = entries[0].index
        cache_first = offset + len(self._terms) + 1 - len(self._cache)
        # Truncate at `first`, then append.
        del self._terms[first - offset - 1 :]
        self._terms.extend(e.term for e in entries)
        configs = self._configs
        for i in [i for i in configs if i >= first]:
            del configs[i]
        for e in entries:
            if e.kind is EntryKind.CONFIG:
                configs[e.index] = e
        if first <= cache_first:
            self._cache = []
            self._cache_bytes = 0
        else:
            dropped = self._cache[first - cache_first :]
            del self._cache[first - cache_first :]
            self._cache_bytes -= sum(map(entry_size_bytes, dropped))
        self._cache.extend(entries)
        self._cache_bytes += sum(map(entry_size_bytes, entries))
        self._trim_cache()

    def _trim_cache(self) -> None:
        if self._cache_bytes <= self._cache_max_bytes:
            return
        # Evict down to 3/4 of the budget at once, so eviction is amortized over appends.
        target = self._cache_max_bytes * 3 // 4
        total = self._cache_bytes
        cut = 0
        cache = self._cache
        while total > target and cut < len(cache) - 1:
            total -= entry_size_bytes(cache[cut])
            cut += 1
        del cache[:cut]
        self._cache_bytes = total

    def save_snapshot(
        self,
        index: Index,
        data: bytes,
        membership: Membership | tuple[NodeId, ...],
        keep_entries: int = 0,
    ) -> None:
        """Store the application's snapshot at applied `index` and compact the log up to it
        (less a margin of `keep_entries`).

        `begin_snapshot(index)`, the data written, then `commit_snapshot` (see there).

        Raises:
            ValueError: index > last_index().
            StorageError: RocksDB failed to write; the in-memory state is unchanged.
        """
        self._require_open()
        if index <= self._snap_meta.index:
            return
        if index > self.last_index():
            raise ValueError(f"snapshot index {index} past last index {self.last_index()}")
        stage = self.begin_snapshot(index)
        stage.write(data)
        self.commit_snapshot(stage.finish(), membership, keep_entries)

    def begin_snapshot(self, index: Index) -> SnapshotStage:
        """Start writing the data of a snapshot at applied `index` (node/snapshot_store.py).

        The stage touches only its own keys: it may be written from a worker thread while the
        loop goes on using this storage.

        Raises:
            StorageError: the database is closed, or RocksDB failed.
        """
        self._require_open()
        assert self._db is not None
        return SnapshotStage(self._db, self._h_snapshot, self._path, index,
                             self._snapshot_chunk_bytes)

    def commit_snapshot(
        self,
        staged: StagedSnapshot,
        membership: Membership | tuple[NodeId, ...],
        keep_entries: int = 0,
    ) -> None:
        """Make a staged snapshot the node's snapshot and compact the log up to its index,
        less a trailing margin.

        Entries <= `staged.index - keep_entries` are deleted (so that a follower a little
        behind still catches up from the log, as etcd keeps `SnapshotCatchUpEntries`); the
        snapshot meta keeps the term of its index.
        One synced batch (which also makes the stage's unsynced chunk writes durable). When
        `staged.index` is not newer than the current snapshot (a snapshot from the leader came
        meanwhile), the staged chunks are deleted instead.

        Args:
            staged: what `SnapshotStage.finish` returned.
            membership: the cluster membership in effect at `staged.index`
                (`RaftNode.membership_at(index)`), or just its voters.
            keep_entries: the margin of entries at or below `staged.index` the log keeps.

        Raises:
            ValueError: `staged.index` > last_index().
            StorageError: RocksDB failed to write; the in-memory state is unchanged.
        """
        self._require_open()
        index = staged.index
        offset = self._snap_meta.index
        if index <= offset:
            if index != offset:
                batch = WriteBatch(raw_mode=True)
                batch.delete_range(*chunk_range(index), self._h_snapshot)
                self._write(batch, sync=False)
            return
        if index > self.last_index():
            raise ValueError(f"snapshot index {index} past last index {self.last_index()}")
        meta = SnapshotMeta(index, self.term(index), _membership(membership))
        old_start = self._log_start[0]
        cut = max(old_start, index - max(0, keep_entries))  # the new log start
        start = (cut, int(self.term(Index(cut))))
        batch = WriteBatch(raw_mode=True)
        record = fmt.encode_snapshot_record(meta, staged.size_bytes, staged.chunk_count)
        batch.put(fmt.K_SNAPSHOT, fmt.seal(fmt.K_SNAPSHOT, record), self._h_meta)
        # The older snapshots' chunks go; a snapshot being received from the leader (a
        # higher index) stays.
        batch.delete_range(b"", chunk_range(index)[0], self._h_snapshot)
        batch.delete_range(fmt.log_key(0), fmt.log_key(cut + 1), self._h_log)
        if cut == index:
            batch.delete(fmt.K_LOG_START, self._h_meta)
        else:
            batch.put(fmt.K_LOG_START, fmt.seal(fmt.K_LOG_START, cbor2.dumps(list(start))),
                      self._h_meta)
        self._write(batch, sync=True)

        self._snap_meta = meta
        self._log_start = start
        self._snap_size_bytes = staged.size_bytes
        self._snap_chunk_count = staged.chunk_count
        del self._terms[: cut - old_start]
        for i in [i for i in self._configs if i <= index]:
            del self._configs[i]
        cache_first = self.last_index() + 1 - len(self._cache)
        if cache_first <= cut:
            dropped = self._cache[: cut + 1 - cache_first]
            del self._cache[: cut + 1 - cache_first]
            self._cache_bytes -= sum(map(entry_size_bytes, dropped))

    def snapshot_reader(self) -> DataFile:
        """A file reading the latest snapshot's data from the database, a chunk at a time.

        Raises (when read):
            CorruptStorageError: a chunk fails its checksum or is missing.
        """
        self._require_open()
        meta = self._snap_meta
        return DataFile(self._stored(meta.index, self._snap_size_bytes, self._snap_chunk_count))

    def _put_snapshot(self, batch: WriteBatch, meta: SnapshotMeta, data: bytes) -> int:
        """Add a snapshot (meta and data chunks, replacing any older one) to `batch`."""
        h_snapshot = self._h_snapshot
        batch.delete_range(b"", chunk_range(meta.index)[1], h_snapshot)
        view = memoryview(data)
        step = self._snapshot_chunk_bytes
        chunk_count = 0
        for start in range(0, len(data), step):
            key = fmt.CHUNK_KEY.pack(meta.index, chunk_count)
            chunk = view[start : start + step]
            batch.put(key, fmt.CRC.pack(fmt.crc(key, chunk)) + chunk, h_snapshot)
            chunk_count += 1
        record = fmt.encode_snapshot_record(meta, len(data), chunk_count)
        batch.put(fmt.K_SNAPSHOT, fmt.seal(fmt.K_SNAPSHOT, record), self._h_meta)
        return chunk_count

    def _require_open(self) -> None:
        if self._db is None:
            raise StorageError(f"database {self._path} is closed")

    def _write(self, batch: WriteBatch, *, sync: bool) -> None:
        db = self._db
        assert db is not None
        try:
            db.write(batch, self._wo_sync if sync else self._wo_nosync)
        except Exception as exc:
            raise StorageError(f"database {self._path}: write failed: {exc}") from exc


def _membership(m: Membership | tuple[int, ...]) -> Membership:
    return m if isinstance(m, Membership) else Membership.of([NodeId(v) for v in m])


def _chain(first: Iterator[Entry], second: list[Entry]) -> Iterator[Entry]:
    yield from first
    yield from second
