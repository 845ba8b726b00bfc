"""Message bodies in the node's RocksDB database: `RocksBodies` (the `BodyStore` of node/bodies.py).

Bodies live in the `bodies` column family of the same database as the Raft log, so a body
write and a log write go through one write-ahead log: the log's next synced write makes every
earlier body write durable, and after a crash RocksDB recovers a prefix of the writes. Keys are
a 4-byte generation and the 8-byte body key (node/storage_format.py); the meta record
`b"bodies"` names the live generation and the applied index of the last write, in the same
batch as the bodies. `replace` (installing a snapshot's bodies) writes a new generation in many
batches and switches to it with the last one; older generations are then deleted, and open
deletes any generation that is not live (left by a crash during `replace`).

Writes are buffered: each apply step's goes into the storage's next write (the Raft log's
next append or commit index, node/storage.py `persist`), so the node makes one RocksDB write
where it made two, in the worker thread when that write is large; a body is read from memory
until then. The order of the writes and the applied index in each keep the rule above.

Reads: a small cache of the newest bodies (most deliveries are of recent messages), then one
multi-get for the rest. A frozen view for a snapshot is a RocksDB checkpoint (hard links of
the database's files, in a directory beside it), opened read-only and iterated in key order:
rocksdict's point-in-time `Snapshot` does not hold for iterators (observed with rocksdict
0.3.29: an iterator of a snapshot sees deletions made after it).
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import cast

import cbor2
from rocksdict import AccessType, Checkpoint, Rdict, WriteBatch, WriteOptions

from node import rocks_io as rio
from node import storage_format as fmt
from node.bodies import FrozenBodies
from node.storage_format import StorageError

__all__ = ["DEFAULT_BODY_CACHE_BYTES", "RocksBodies"]

DEFAULT_BODY_CACHE_BYTES = 8 * 1024 * 1024
"""Budget of the cache of the newest bodies written."""

REPLACE_BATCH_BYTES = 4 * 1024 * 1024
"""Bytes of bodies per write batch of `replace`."""

BUFFER_MAX_BYTES = 8 * 1024 * 1024
"""Bodies buffered for the storage's next write beyond which `write` writes them at once."""

_Step = tuple[Sequence[tuple[int, bytes]], Sequence[int], int]
"""One apply step's body writes: puts, drops, applied index."""

_KEYS_END = b"\xff" * (fmt.BODY_KEY.size + 1)  # sorts after every body key


def _key(generation: int, body_key: int) -> bytes:
    return fmt.BODY_KEY.pack(generation, body_key)


class _Checkpoint:
    """A frozen view: a checkpoint of the database, opened read-only."""

    def __init__(self, db: Rdict, path: Path, generation: int) -> None:
        shutil.rmtree(path, ignore_errors=True)
        Checkpoint(db).create_checkpoint(str(path))
        self._path = path
        self._generation = generation
        self._db: Rdict | None = Rdict(
            str(path), rio.db_options(), column_families=rio.family_options(),
            access_type=AccessType.read_only(),
        )

    def items(self) -> Iterator[tuple[int, bytes]]:
        db = self._db
        assert db is not None, "closed"
        family = db.get_column_family(fmt.CF_BODIES)
        lo = _key(self._generation, 0)
        ro = rio.read_options()

        def fail(last: bytes | None, exc: BaseException) -> StorageError:
            return StorageError(f"checkpoint {self._path}: bodies unreadable: {rio.one_line(exc)}")

        for key, value in rio.scan(family, ro, fail, lo):
            generation, body_key = fmt.BODY_KEY.unpack(key)
            if generation != self._generation:
                return
            try:
                yield body_key, bytes(fmt.unseal(key, value))
            except fmt.Bad as exc:
                raise StorageError(f"checkpoint {self._path}: body {body_key}: {exc}") from None

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()
            shutil.rmtree(self._path, ignore_errors=True)


class RocksBodies:
    """The body store in a RocksDB database (see the module docstring).

    Args:
        db: the open database (its `bodies` and `meta` column families).
        path: the database's directory (for messages, and the checkpoint beside it).
        cache_bytes: budget of the cache of newest bodies.

    Raises:
        CorruptStorageError: the meta record fails its checks.
    """

    def __init__(self, db: Rdict, path: Path, cache_bytes: int = DEFAULT_BODY_CACHE_BYTES) -> None:
        self._db = db
        self._path = path
        self._family = db.get_column_family(fmt.CF_BODIES)
        self._meta = db.get_column_family(fmt.CF_META)
        self._h_bodies = db.get_column_family_handle(fmt.CF_BODIES)
        self._h_meta = db.get_column_family_handle(fmt.CF_META)
        self._wo = WriteOptions()
        self._ro = rio.read_options()
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._cache_bytes = 0
        self._cache_max_bytes = cache_bytes
        self.reads = 0  # bodies read from the database (cache misses)
        self._prepared: tuple[int, int] | None = None  # generation, applied index
        self._generation, self._applied_index = self._load()
        # Apply steps' writes not in the database yet (see `write`), and their bodies.
        self._buffer: list[_Step] = []
        self._unwritten: dict[int, bytes] = {}
        # Bytes of bodies buffered, ever, and written since: each has one writer (`write` in
        # the loop, `_written` under the lock, maybe in a worker thread).
        self._bytes_in = 0
        self._bytes_out = 0
        self._lock = threading.Lock()
        self._drop_other_generations()

    def _load(self) -> tuple[int, int]:
        value = cast("bytes | None", self._meta.get(fmt.K_BODIES, None, self._ro))
        if value is None:
            return 0, 0
        try:
            item = fmt.decode_cbor(fmt.unseal(fmt.K_BODIES, value))
        except fmt.Bad as exc:
            raise fmt.CorruptStorageError(
                f"database {self._path}: bodies record: {exc}"
            ) from None
        if not (type(item) is list and len(item) == 2 and all(fmt.is_uint(v) for v in item)):
            raise fmt.CorruptStorageError(
                f"database {self._path}: bodies record: malformed {item!r:.60}"
            )
        return int(item[1]), int(item[0])

    def _record(self, applied_index: int, generation: int) -> bytes:
        return fmt.seal(fmt.K_BODIES, cbor2.dumps([applied_index, generation]))

    def _drop_other_generations(self) -> None:
        """Delete the bodies of generations other than the live one (a `replace` that a crash
        cut short, or one not finished before the switch); write nothing when there are none."""
        g = self._generation
        it = self._family.iter(self._ro)
        it.seek_to_first()
        below = it.valid() and it.key() < _key(g, 0)
        it.seek(_key(g + 1, 0))
        above = it.valid()
        del it
        if not (below or above):
            return
        batch = WriteBatch(raw_mode=True)
        if below:
            batch.delete_range(_key(0, 0), _key(g, 0), self._h_bodies)
        if above:
            batch.delete_range(_key(g + 1, 0), _KEYS_END, self._h_bodies)
        self._write(batch)

    @property
    def applied_index(self) -> int:
        return self._applied_index

    @property
    def generation(self) -> int:
        """The live generation (grows by one with each `replace`)."""
        return self._generation

    def write(
        self, puts: Sequence[tuple[int, bytes]], drops: Sequence[int], applied_index: int
    ) -> None:
        """Buffer one apply step's body writes (see `BodyStore.write`): they go into the
        storage's next write (`buffered_into`, node/storage.py `persist`), a RocksDB write the
        node makes anyway, in its worker thread when large; or into `flush`'s. Until then
        `get_many` reads them from memory. Flushed at once beyond `BUFFER_MAX_BYTES`."""
        applied = max(self._applied_index, applied_index)
        self._buffer.append((puts, drops, applied))  # atomic: a writer may be taking steps
        self._applied_index = applied
        unwritten = self._unwritten
        size = 0
        for body_key, body in puts:
            unwritten[body_key] = body
            size += len(body)
        for body_key in drops:  # body keys are never reused
            unwritten.pop(body_key, None)
        self._bytes_in += size
        if self._bytes_in - self._bytes_out > BUFFER_MAX_BYTES:
            self.flush()

    @contextlib.contextmanager
    def buffered_into(self, batch: WriteBatch) -> Iterator[None]:
        """Add every buffered body write to `batch`, in order, with the applied index of the
        last; the caller writes `batch` inside the block. When the block ends without an
        exception they count as written; else they stay buffered.

        One writer at a time (a lock): so the database receives the body writes in order,
        and no write is taken twice. Writes buffered meanwhile wait for the next one.
        """
        with self._lock:
            steps = self._buffer[:]
            if steps:
                g = self._generation
                h = self._h_bodies
                seal = fmt.seal
                for puts, drops, _ in steps:
                    for body_key, body in puts:
                        key = _key(g, body_key)
                        batch.put(key, seal(key, body), h)
                    for body_key in drops:
                        batch.delete(_key(g, body_key), h)
                batch.put(fmt.K_BODIES, self._record(steps[-1][2], g), self._h_meta)
            yield
            if steps:
                self._written(steps)

    def _written(self, steps: list[_Step]) -> None:
        del self._buffer[: len(steps)]
        unwritten = self._unwritten
        cache = self._cache
        put_bytes = 0
        dropped_bytes = 0
        for puts, drops, _ in steps:
            for body_key, body in puts:
                unwritten.pop(body_key, None)
                cache[body_key] = body
                put_bytes += len(body)
            for body_key in drops:
                dropped = cache.pop(body_key, None)
                if dropped is not None:
                    dropped_bytes += len(dropped)
        self._bytes_out += put_bytes
        self._cache_bytes += put_bytes - dropped_bytes
        while self._cache_bytes > self._cache_max_bytes and cache:
            self._cache_bytes -= len(cache.popitem(last=False)[1])

    def flush(self) -> None:
        """Write the buffered body writes now, in a batch of their own.

        Raises:
            StorageError: the write failed (they stay buffered).
        """
        if not self._buffer:
            return
        batch = WriteBatch(raw_mode=True)
        with self.buffered_into(batch):
            self._write(batch)

    def get_many(self, keys: Sequence[int]) -> list[bytes | None]:
        cache = self._cache
        unwritten = self._unwritten
        out: list[bytes | None] = []
        for k in keys:
            found = unwritten.get(k)
            out.append(cache.get(k) if found is None else found)
        missing = [i for i, body in enumerate(out) if body is None]
        if not missing:
            return out
        g = self._generation
        db_keys: list[str | int | float | bytes | bool] = [_key(g, keys[i]) for i in missing]
        try:
            values = cast("list[bytes | None]", self._family.get(db_keys, None, self._ro))
        except Exception as exc:
            raise StorageError(
                f"database {self._path}: reading bodies failed: {rio.one_line(exc)}"
            ) from exc
        self.reads += len(missing)
        for i, key, value in zip(missing, db_keys, values, strict=True):
            if value is not None:
                assert type(key) is bytes
                try:
                    out[i] = bytes(fmt.unseal(key, value))
                except fmt.Bad as exc:
                    raise fmt.CorruptStorageError(
                        f"database {self._path}: body {keys[i]}: {exc} ({rio.DAMAGED})"
                    ) from None
        return out

    def freeze(self) -> FrozenBodies:
        self.flush()  # the checkpoint holds every write made so far
        try:
            return _Checkpoint(self._db, self._path.with_name(self._path.name + ".checkpoint"),
                               self._generation)
        except Exception as exc:
            raise StorageError(
                f"database {self._path}: checkpoint failed: {rio.one_line(exc)}"
            ) from exc

    def replace(self, bodies: Iterable[tuple[int, bytes]], applied_index: int) -> int:
        self.flush()
        count = self.prepare(bodies, applied_index)
        batch = WriteBatch(raw_mode=True)
        self.add_switch(batch, applied_index)
        self._write(batch)
        self.switched()
        return count

    def prepare(self, bodies: Iterable[tuple[int, bytes]], applied_index: int) -> int:
        """Write `bodies` as the next generation, not live yet (see `add_switch`).

        May run in a worker thread while `write` and `get_many` go on in the loop (they use
        the live generation). Returns how many bodies were written.

        Raises:
            StorageError: a write failed.
        """
        new = self._generation + 1
        h = self._h_bodies
        count = 0
        size = 0
        self._prepared = None
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(_key(new, 0), _key(new + 1, 0), h)  # what an earlier attempt left
        for body_key, body in bodies:
            key = _key(new, body_key)
            batch.put(key, fmt.seal(key, body), h)
            count += 1
            size += len(body)
            if size >= REPLACE_BATCH_BYTES:
                self._write(batch)
                batch = WriteBatch(raw_mode=True)
                size = 0
        self._write(batch)
        self._prepared = (new, applied_index)
        return count

    def add_switch(self, batch: WriteBatch, applied_index: int) -> bool:
        """Add to `batch` the switch to the generation `prepare` wrote for `applied_index`
        (and the deletion of the older ones); False (nothing added) when none was prepared
        for it. Call `switched()` once the batch is written."""
        prepared = self._prepared
        if prepared is None or prepared[1] != applied_index:
            return False
        new = prepared[0]
        batch.put(fmt.K_BODIES, self._record(applied_index, new), self._h_meta)
        batch.delete_range(_key(0, 0), _key(new, 0), self._h_bodies)
        return True

    def switched(self) -> None:
        """The batch of `add_switch` is written: the prepared generation is live."""
        prepared = self._prepared
        assert prepared is not None
        self._generation, self._applied_index = prepared
        self._prepared = None
        self._cache.clear()
        self._cache_bytes = 0
        # What is still buffered was of the old generation, for entries the snapshot covers.
        with self._lock:
            self._bytes_out += sum(len(b) for puts, _, _ in self._buffer for _, b in puts)
            self._buffer.clear()
            self._unwritten.clear()

    def _write(self, batch: WriteBatch) -> None:
        try:
            self._db.write(batch, self._wo)
        except Exception as exc:
            raise StorageError(f"database {self._path}: write failed: {exc}") from exc

    def close(self) -> None:
        """Write what is buffered (best effort: the log gives it back after a restart
        otherwise), then drop the column family objects (they keep RocksDB open); the storage
        closes the database."""
        try:
            self.flush()
        except StorageError:
            pass
        del self._family, self._meta, self._h_bodies, self._h_meta
