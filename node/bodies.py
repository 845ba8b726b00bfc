"""Message bodies outside the machine's state: the body store interface and its in-memory form.

The queue machine keeps per message only what its decisions need (node/machine/_state.py); the
bodies live in a body store, keyed by body key, written as the machine's `StoreBodies` effects
say, by every replica in log order. RocksDB holds them on a node (node/rocks_bodies.py, a
column family of the node's database, so that a body write and the Raft log share one
write-ahead log); `MemoryBodies` holds them in memory (tests, and the whole-node simulator's
disk, which adds losing unsynced writes on power loss).

Crash consistency: each write carries `applied_index`, the last entry whose body writes it
completes, in the same atomic write. After a restart the node rebuilds its machine state from
its latest snapshot and applies the log after it again; the body writes of entries up to the
store's `applied_index` are already in the store and are not made again (node/app.py). A store
whose `applied_index` is below the snapshot's index does not belong to that snapshot (a crash
while a snapshot from the leader was being installed): it is rebuilt from the snapshot's
bodies (`replace`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

__all__ = ["BodyStore", "FrozenBodies", "MemoryBodies"]


class FrozenBodies(Protocol):
    """A point-in-time view of a body store (what a snapshot is written from)."""

    def items(self) -> Iterator[tuple[int, bytes]]:
        """Every `(body_key, body)` of the view, in ascending key order."""
        ...

    def close(self) -> None:
        """Release the view (idempotent)."""
        ...


class BodyStore(Protocol):
    """Where message bodies live, by body key (see the module docstring)."""

    @property
    def applied_index(self) -> int:
        """The last log index whose body writes are all in the store (0 for none)."""
        ...

    def write(
        self, puts: Sequence[tuple[int, bytes]], drops: Sequence[int], applied_index: int
    ) -> None:
        """Put `puts`, then delete `drops`, and record `applied_index`: one atomic write, not
        synced (the Raft log's next synced write makes it durable; until then a crash may take
        it, and the log gives it back).

        Raises:
            StorageError: the write failed; nothing of it is in the store.
        """
        ...

    def get_many(self, keys: Sequence[int]) -> list[bytes | None]:
        """The bodies of `keys`, in order (None for a key with no body)."""
        ...

    def freeze(self) -> FrozenBodies:
        """A view of the store as it is now, unchanged by later writes. Thread-safe with
        respect to writes made meanwhile; the caller closes it."""
        ...

    def prepare(self, bodies: Iterable[tuple[int, bytes]], applied_index: int) -> int:
        """Write `bodies` (ascending keys) as the store's next content, at `applied_index`,
        without making it live: the storage switches to it atomically with the snapshot it
        belongs to (node/storage.py `persist`). May run in a worker thread while the live
        content is written and read.

        Returns:
            How many bodies were written.

        Raises:
            StorageError: a write failed (the live content stays).
        """
        ...

    def replace(self, bodies: Iterable[tuple[int, bytes]], applied_index: int) -> int:
        """Make `bodies` (ascending keys) the whole content of the store, at `applied_index`.

        Written in many batches; until the last one the store's content and `applied_index`
        are the old ones (a crash in between leaves the old store, which `applied_index`
        shows to be older than the snapshot being installed).

        Returns:
            How many bodies were written.

        Raises:
            StorageError: a write failed (the old content stays).
        """
        ...


class _FrozenDict:
    def __init__(self, by_key: dict[int, bytes]) -> None:
        self._by_key: dict[int, bytes] | None = by_key

    def items(self) -> Iterator[tuple[int, bytes]]:
        by_key = self._by_key
        assert by_key is not None, "closed"
        for key in sorted(by_key):
            yield key, by_key[key]

    def close(self) -> None:
        self._by_key = None


class MemoryBodies:
    """A body store in a dict (tests; the simulator's disk).

    What a power loss keeps is the content as of the last `sync()` (the simulated disk calls
    it when the Raft log's synced write happens, as syncing RocksDB's write-ahead log makes
    every earlier write durable); `lose_unsynced()` goes back to it. The writes since the last
    sync are kept as a journal, so a sync costs what was written, not the store's size.
    """

    def __init__(self) -> None:
        self.by_key: dict[int, bytes] = {}
        self._applied_index = 0
        self._durable: dict[int, bytes] = {}
        self._durable_applied = 0
        self._journal: list[tuple[dict[int, bytes] | None, Sequence[tuple[int, bytes]],
                                  Sequence[int], int]] = []
        self._prepared: tuple[int, dict[int, bytes]] | None = None

    @property
    def applied_index(self) -> int:
        return self._applied_index

    def write(
        self, puts: Sequence[tuple[int, bytes]], drops: Sequence[int], applied_index: int
    ) -> None:
        by_key = self.by_key
        for key, body in puts:
            by_key[key] = body
        for key in drops:
            by_key.pop(key, None)
        self._applied_index = max(self._applied_index, applied_index)
        self._journal.append((None, tuple(puts), tuple(drops), self._applied_index))

    def get_many(self, keys: Sequence[int]) -> list[bytes | None]:
        by_key = self.by_key
        return [by_key.get(k) for k in keys]

    def freeze(self) -> FrozenBodies:
        return _FrozenDict(dict(self.by_key))

    def prepare(self, bodies: Iterable[tuple[int, bytes]], applied_index: int) -> int:
        self._prepared = None
        fresh = dict(bodies)
        self._prepared = (applied_index, fresh)
        return len(fresh)

    def activate(self, applied_index: int) -> bool:
        """Make what `prepare` wrote for `applied_index` the live content (the simulated disk
        calls it when it persists that snapshot); False when none was prepared for it."""
        prepared = self._prepared
        if prepared is None or prepared[0] != applied_index:
            return False
        self._prepared = None
        self._install(prepared[1], applied_index)
        return True

    def replace(self, bodies: Iterable[tuple[int, bytes]], applied_index: int) -> int:
        fresh = dict(bodies)
        self._install(fresh, applied_index)
        return len(fresh)

    def _install(self, fresh: dict[int, bytes], applied_index: int) -> None:
        self.by_key = dict(fresh)
        self._applied_index = applied_index
        self._journal = [(fresh, (), (), applied_index)]

    def sync(self) -> None:
        """Everything written so far survives a power loss."""
        durable = self._durable
        for fresh, puts, drops, applied in self._journal:
            if fresh is not None:
                durable = dict(fresh)
            for key, body in puts:
                durable[key] = body
            for key in drops:
                durable.pop(key, None)
            self._durable_applied = applied
        self._durable = durable
        self._journal = []

    def lose_unsynced(self) -> None:
        """A power loss: back to the content of the last `sync()`."""
        self.by_key = dict(self._durable)
        self._applied_index = self._durable_applied
        self._journal = []
