"""The read-only storage interface the Raft core reads, and an in-memory implementation.

The core never writes storage. The driver (node/raft_loop.py, or the simulator) writes what a
`Ready` asks for and then calls `advance`; from then on the core reads those entries back here.
Shape after etcd-io/raft `storage.go`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ._errors import CompactedError, UnavailableError
from ._membership import Membership
from ._types import (
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


class Storage(Protocol):
    """What the core may read from durable storage.

    Indexes: the log holds entries `first_index() .. last_index()` inclusive, and the term of
    the entry just before `first_index()` is known. That entry is the snapshot's
    (`snapshot().meta`), or an older one when the storage keeps a trailing margin of entries
    the snapshot covers; the log then reaches at least to the snapshot's index.
    """

    def initial_state(self) -> tuple[HardState, Membership]:
        """Return the persisted hard state and the membership of the latest snapshot (for a
        new database: the membership it was created with)."""
        ...

    def config_entries(self) -> list[Entry]:
        """Every CONFIG entry in the log after the snapshot's index, in index order.

        Read once, when the core starts, to find the membership in effect (thesis 4.1).
        """
        ...

    def entries(self, lo: Index, hi: Index, max_bytes: int | None = None) -> list[Entry]:
        """Return entries with index in [lo, hi), at least one, then stop before `max_bytes`.

        Raises:
            CompactedError: lo < first_index().
            UnavailableError: hi > last_index() + 1.
        """
        ...

    def term(self, index: Index) -> Term:
        """Return the term of the entry at `index` (first_index() - 1 answers too).

        Raises:
            CompactedError: index < first_index() - 1.
            UnavailableError: index > last_index().
        """
        ...

    def first_index(self) -> Index:
        """Index of the first entry in the log (snapshot index + 1, or lower with a margin)."""
        ...

    def last_index(self) -> Index:
        """Index of the last entry in the log (the snapshot index when the log is empty)."""
        ...

    def snapshot(self) -> Snapshot:
        """The latest snapshot (an empty one at index 0 when there is none); cheap: its data
        may be a `SnapshotData` that reads from disk."""
        ...


def entry_size_bytes(entry: Entry) -> int:
    """Approximate size of an entry on the wire, for batching limits: data plus 24 bytes."""
    return len(entry.data) + 24


class MemoryStorage:
    """A `Storage` held in memory, with the write methods a driver needs.

    Used by tests and the simulator; a crash there is modelled by keeping this object (it is the
    "disk") and dropping the core. `entries_list[0]` is a dummy entry at the snapshot index.
    """

    def __init__(
        self,
        voters: tuple[NodeId, ...] | Membership,
        standing: Standing = Standing.VOTER,
    ) -> None:
        membership = voters if isinstance(voters, Membership) else Membership.of(voters)
        self.hard_state = HardState(standing=standing)
        self.snap = Snapshot(SnapshotMeta(Index(0), Term(0), membership), b"")
        self.log: list[Entry] = [Entry(Term(0), Index(0))]
        self.incoming: tuple[SnapshotMeta, bytearray] | None = None  # being received

    # -- reads -----------------------------------------------------------------------------
    def initial_state(self) -> tuple[HardState, Membership]:
        return self.hard_state, self.snap.meta.membership

    def config_entries(self) -> list[Entry]:
        after = self.snap.meta.index
        return [e for e in self.log[1:] if e.kind is EntryKind.CONFIG and e.index > after]

    def first_index(self) -> Index:
        return Index(self.log[0].index + 1)

    def last_index(self) -> Index:
        return Index(self.log[0].index + len(self.log) - 1)

    def term(self, index: Index) -> Term:
        offset = self.log[0].index
        if index < offset:
            raise CompactedError(index)
        if index - offset >= len(self.log):
            raise UnavailableError(index)
        return self.log[index - offset].term

    def entries(self, lo: Index, hi: Index, max_bytes: int | None = None) -> list[Entry]:
        offset = self.log[0].index
        if lo <= offset:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        out = self.log[lo - offset : hi - offset]
        if max_bytes is not None and len(out) > 1:
            total = 0
            for n, e in enumerate(out):
                total += entry_size_bytes(e)
                if total > max_bytes and n > 0:
                    return out[:n]
        return out

    def snapshot(self) -> Snapshot:
        return self.snap

    # -- writes (driver only) ---------------------------------------------------------------
    def set_hard_state(self, hs: HardState) -> None:
        """Persist the hard state."""
        self.hard_state = hs

    def append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """Append entries, first truncating any entries at or after `entries[0].index`."""
        if not entries:
            return
        offset = self.log[0].index
        first = entries[0].index
        if first <= offset:
            # Entries already covered by the snapshot: keep only the rest.
            entries = [e for e in entries if e.index > offset]
            if not entries:
                return
            first = entries[0].index
        if first > self.last_index() + 1:
            raise ValueError(f"gap in log: append at {first} after {self.last_index()}")
        del self.log[first - offset :]
        self.log.extend(entries)

    def stage_snapshot(self, chunks: Sequence[SnapshotChunk]) -> None:
        """Assemble the pieces of a snapshot being received (`Ready.snapshot_chunks`)."""
        for c in chunks:
            if c.offset_bytes == 0:
                self.incoming = (c.meta, bytearray())
            incoming = self.incoming
            if incoming is not None and incoming[0] == c.meta and len(incoming[1]) == c.offset_bytes:
                incoming[1].extend(c.data)
            else:
                self.incoming = None  # a piece missing: the core asks for the snapshot again

    def staged_snapshot(self, meta: SnapshotMeta) -> bytes | None:
        """The assembled bytes of `meta`'s snapshot (`Ready.snapshot_received`), or None."""
        incoming = self.incoming
        if incoming is None or incoming[0] != meta:
            return None
        return bytes(incoming[1])

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the log with a snapshot received from the leader."""
        if snap.meta.index <= self.snap.meta.index:
            return
        self.snap = snap
        self.log = [Entry(snap.meta.term, snap.meta.index)]

    def create_snapshot(
        self,
        index: Index,
        data: bytes,
        membership: Membership | tuple[NodeId, ...],
        keep_entries: int = 0,
    ) -> None:
        """Record a snapshot of the application at applied `index` and compact the log to
        `index - keep_entries` (a trailing margin the log keeps; never past what it has).

        `membership` is the one in effect at `index` (`RaftNode.membership_at(index)`), or
        just its voters.

        Raises:
            ValueError: index is not in the log or is older than the current snapshot.
        """
        offset = self.log[0].index
        if index <= self.snap.meta.index:
            return
        if index > self.last_index():
            raise ValueError(f"snapshot index {index} past last index {self.last_index()}")
        term = self.log[index - offset].term
        if not isinstance(membership, Membership):
            membership = Membership.of(membership)
        self.snap = Snapshot(SnapshotMeta(index, term, membership), data)
        cut = max(offset, index - max(0, keep_entries))
        self.log = self.log[cut - offset :]
        self.log[0] = Entry(self.log[0].term, Index(cut))
