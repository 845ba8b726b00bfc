"""Writing a snapshot to the database piece by piece, and reading it back as a stream.

A snapshot's data is stored as chunks in the `snapshot` column family under its index
(node/storage_format.py). `SnapshotStage` writes the chunks of a snapshot that is not the
node's snapshot yet (each chunk as it fills, in a batch of its own, not synced), so that a large
snapshot never exists whole in memory; `RocksStorage.commit_snapshot` then makes it the node's
snapshot in one small synced batch (its meta record, the older chunks deleted, the log
compacted). A stage touches only its own keys, so it may run in a worker thread while the loop
uses the storage; a stage that is never committed (a crash, or a newer snapshot from the
leader) leaves chunks that the next commit or open deletes.

`StoredSnapshot` reads a stored snapshot's data at any offset, one chunk in memory at a time,
each checked against its checksum (node/snapshots.py `DataFile` makes it a file for cbor2).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rocksdict import ColumnFamily, Rdict, WriteBatch, WriteOptions

from node import storage_format as fmt
from node.loop_api import StagedSnapshot
from node.raft._types import Index
from node.storage_format import CorruptStorageError, StorageError

__all__ = ["SnapshotStage", "StagedSnapshot", "StoredSnapshot"]


def chunk_range(index: int) -> tuple[bytes, bytes]:
    """The keys of every chunk of snapshot `index`: [lo, hi)."""
    return fmt.CHUNK_KEY.pack(index, 0), fmt.CHUNK_KEY.pack(index + 1, 0)


class SnapshotStage:
    """Writes snapshot data under `index` in chunks of `chunk_bytes` (see the module docstring).

    Raises (write, finish):
        StorageError: RocksDB failed to write.
    """

    def __init__(
        self, db: Rdict, h_snapshot: ColumnFamily, path: Path, index: Index, chunk_bytes: int
    ) -> None:
        self._db = db
        self._h = h_snapshot
        self._path = path
        self.index = index
        self._chunk_bytes = chunk_bytes
        self._buffer = bytearray()
        self._chunk_count = 0
        self._size_bytes = 0
        self._wo = WriteOptions()
        lo, hi = chunk_range(index)
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(lo, hi, h_snapshot)  # what an earlier stage of this index left
        self._write(batch)

    def write(self, data: bytes) -> None:
        """Add `data` to the snapshot."""
        buffer = self._buffer
        buffer += data
        self._size_bytes += len(data)
        step = self._chunk_bytes
        if len(buffer) >= step:
            view = memoryview(buffer)
            start = 0
            while len(buffer) - start >= step:
                self._put(view[start : start + step])
                start += step
            view.release()
            del buffer[:start]

    def _put(self, chunk: bytes | memoryview) -> None:
        key = fmt.CHUNK_KEY.pack(self.index, self._chunk_count)
        batch = WriteBatch(raw_mode=True)
        batch.put(key, fmt.CRC.pack(fmt.crc(key, chunk)) + bytes(chunk), self._h)
        self._write(batch)
        self._chunk_count += 1

    def finish(self) -> StagedSnapshot:
        """Write what is left; the snapshot is then ready for `commit_snapshot`."""
        if self._buffer:
            self._put(bytes(self._buffer))
            self._buffer = bytearray()
        return StagedSnapshot(self.index, self._size_bytes, self._chunk_count)

    def abort(self) -> None:
        """Delete what was written (best effort: a later commit or open deletes it too)."""
        lo, hi = chunk_range(self.index)
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(lo, hi, self._h)
        try:
            self._write(batch)
        except StorageError:
            pass

    def _write(self, batch: WriteBatch) -> None:
        try:
            self._db.write(batch, self._wo)
        except Exception as exc:
            raise StorageError(f"database {self._path}: snapshot write failed: {exc}") from exc


class StoredSnapshot:
    """A stored snapshot's data as `SnapshotData` (node/raft/_types.py): its size, and pieces
    read at any offset, one stored chunk in memory at a time (what a leader sends from).

    Every chunk but the last has the size of the first (as `SnapshotStage` and a follower's
    assembly write them).

    Args:
        index: the snapshot's index (its chunks' keys).
        read_chunk: returns the checked bytes of chunk `n` (raises CorruptStorageError).
        size_bytes: the data's size.
        chunk_count: its number of chunks.
    """

    def __init__(
        self, index: int, read_chunk: Callable[[int], bytes], size_bytes: int, chunk_count: int
    ) -> None:
        self.index = index
        self._read_chunk = read_chunk
        self._size_bytes = size_bytes
        self._chunk_count = chunk_count
        self._step = 0
        self._cached: tuple[int, bytes] | None = None

    def __len__(self) -> int:
        return self._size_bytes

    def _chunk(self, n: int) -> bytes:
        cached = self._cached
        if cached is None or cached[0] != n:
            cached = (n, self._read_chunk(n))
            self._cached = cached
        return cached[1]

    def read_at(self, offset: int, size: int) -> bytes:
        """The bytes [offset, offset + size) (fewer at the end)."""
        end = min(offset + size, self._size_bytes)
        if offset >= end:
            return b""
        if not self._step:
            self._step = len(self._chunk(0))
        step = self._step
        parts: list[bytes] = []
        at = offset
        while at < end:
            n, start = divmod(at, step)
            chunk = self._chunk(n)
            piece = chunk[start : start + end - at]
            if not piece:
                raise CorruptStorageError(f"snapshot {self.index}: chunk {n} is short")
            parts.append(piece)
            at += len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)
