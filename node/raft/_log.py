"""The Raft log as the core sees it: durable entries in `Storage` plus an unstable tail.

After etcd-io/raft `log.go` and `log_unstable.go`. Entries the core appended but the driver has
not yet persisted live in the unstable tail (`unstable_entries`, starting at `unstable_offset`);
`stable_to` moves them to storage's side once a Ready that carried them was persisted. A snapshot
received from the leader is held as `unstable_snapshot` until persisted.

Indexes: the log spans `first_index() .. last_index()`; the term of `first_index() - 1` is still
known (paper section 7). That is the snapshot's index, or an older one when the storage keeps a
trailing margin of entries the snapshot covers (so that a follower a little behind catches up
from the log): the application's state then starts at the snapshot's index, not before it.

The log also knows where its CONFIG entries are: a node uses the latest membership in its log,
committed or not, and falls back to the one before when a conflicting leader truncates an
uncommitted CONFIG entry away (thesis 4.1).
"""

from __future__ import annotations

from ._errors import CompactedError, UnavailableError
from ._membership import Membership
from ._storage import Storage, entry_size_bytes
from ._types import Entry, EntryKind, Index, Snapshot, Term


class RaftLog:
    """Durable log plus the unstable tail, with the commit index and the applied index.

    Args:
        storage: what the driver persisted.
        committed: the persisted commit index.
        membership: the membership of storage's snapshot (`Storage.initial_state`).

    Attributes:
        committed: highest index known to be committed.
        applied: highest index handed to the application (in a Ready's committed_entries).
        configs: (index, membership) of the snapshot and of every CONFIG entry after it that
            may still matter, in index order: the first is the latest at or below `applied`
            (older ones are pruned), the last is the membership in effect.
    """

    __slots__ = (
        "storage",
        "unstable_entries",
        "unstable_offset",
        "unstable_snapshot",
        "committed",
        "applied",
        "configs",
    )

    def __init__(self, storage: Storage, committed: Index, membership: Membership) -> None:
        self.storage = storage
        self.unstable_entries: list[Entry] = []
        self.unstable_offset = Index(storage.last_index() + 1)
        self.unstable_snapshot: Snapshot | None = None
        first = storage.first_index()
        # The state starts from the snapshot (a margin of log before it is already in it).
        self.applied = Index(max(first - 1, storage.snapshot().meta.index))
        last = storage.last_index()
        if committed > last:
            raise ValueError(f"persisted commit index {committed} is past the last index {last}")
        self.committed = max(committed, self.applied)
        self.configs: list[tuple[Index, Membership]] = [(self.applied, membership)]
        self._note_configs([e for e in storage.config_entries() if e.index > self.applied])

    # -- membership (thesis 4.1) ----------------------------------------------------------
    def membership(self) -> Membership:
        """The membership in effect: the latest in the log, committed or not."""
        return self.configs[-1][1]

    def membership_index(self) -> Index:
        """Index of the entry (or snapshot) the membership in effect comes from."""
        return self.configs[-1][0]

    def membership_at(self, index: Index) -> Membership:
        """The membership in effect at `index` (for a snapshot taken there).

        Raises:
            ValueError: `index` is below the oldest membership kept (before `applied`).
        """
        for at, m in reversed(self.configs):
            if at <= index:
                return m
        raise ValueError(f"no membership known at index {index} (oldest kept: {self.configs[0][0]})")

    def _note_configs(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        for e in entries:
            if e.kind is EntryKind.CONFIG:
                self.configs.append((e.index, Membership.decode(e.data)))

    def prune_configs(self) -> None:
        """Forget memberships older than the latest at or below `applied`: no truncation or
        snapshot can reach back past `applied`."""
        keep = 0
        for n, (at, _) in enumerate(self.configs):
            if at <= self.applied:
                keep = n
        if keep:
            del self.configs[:keep]

    # -- positions ------------------------------------------------------------------------
    def first_index(self) -> Index:
        if self.unstable_snapshot is not None:
            return Index(self.unstable_snapshot.meta.index + 1)
        return self.storage.first_index()

    def snapshot_index(self) -> Index:
        """Index of the latest snapshot (received and not yet persisted, or stored)."""
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.meta.index
        return self.storage.snapshot().meta.index

    def last_index(self) -> Index:
        if self.unstable_entries:
            return Index(self.unstable_offset + len(self.unstable_entries) - 1)
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.meta.index
        return self.storage.last_index()

    def term(self, index: Index) -> Term:
        """Term of the entry at `index`.

        Raises:
            CompactedError: index is before the snapshot index.
            UnavailableError: index is past the last index.
        """
        offset = self.unstable_offset
        if index >= offset:
            n = index - offset
            if n < len(self.unstable_entries):
                return self.unstable_entries[n].term
            raise UnavailableError(index)
        snap = self.unstable_snapshot
        if snap is not None:
            if index == snap.meta.index:
                return snap.meta.term
            raise CompactedError(index) if index < snap.meta.index else UnavailableError(index)
        return self.storage.term(index)

    def last_term(self) -> Term:
        return self.term(self.last_index())

    def match_term(self, index: Index, term: Term) -> bool:
        """True when the log has an entry at `index` with `term` (False if compacted/absent)."""
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: Index, last_term: Term) -> bool:
        """Raft paper 5.4.1: is a log ending at (last_index, last_term) at least as up to date?"""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    # -- reads ------------------------------------------------------------------------------
    def entries(self, lo: Index, hi: Index, max_bytes: int | None = None) -> list[Entry]:
        """Entries in [lo, hi), at least one when lo < hi, stopping before `max_bytes`.

        Raises:
            CompactedError: lo is before the first index.
            UnavailableError: hi is past last index + 1.
        """
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        offset = self.unstable_offset
        out: list[Entry] = []
        if lo < offset:
            out = self.storage.entries(lo, Index(min(hi, offset)), max_bytes)
            if len(out) < min(hi, offset) - lo:
                return out  # size limit reached inside storage
        if hi > offset:
            tail = self.unstable_entries[max(lo, offset) - offset : hi - offset]
            if max_bytes is None:
                out = out + tail if out else tail
            else:
                total = sum(entry_size_bytes(e) for e in out)
                for e in tail:
                    total += entry_size_bytes(e)
                    if total > max_bytes and out:
                        break
                    out.append(e)
        return out

    def next_committed_entries(self, max_bytes: int) -> list[Entry]:
        """Committed entries not yet handed to the application, up to about `max_bytes`."""
        lo = Index(max(self.applied + 1, self.first_index()))
        hi = Index(self.committed + 1)
        if lo >= hi:
            return []
        return self.entries(lo, hi, max_bytes)

    def has_next_committed_entries(self) -> bool:
        return self.committed > self.applied and self.unstable_snapshot is None

    # -- writes ---------------------------------------------------------------------------
    def append(self, entries: list[Entry]) -> None:
        """Append entries to the unstable tail, truncating anything at or after the first one.

        Raises:
            ValueError: the entries would leave a gap or overwrite a committed entry.
        """
        if not entries:
            return
        after = entries[0].index
        if after <= self.committed:
            raise ValueError(f"refusing to overwrite committed index {after} <= {self.committed}")
        offset = self.unstable_offset
        end = offset + len(self.unstable_entries)
        if after == end:
            self.unstable_entries.extend(entries)
        elif after <= offset:
            if after > self.last_index() + 1:
                raise ValueError(f"gap: append at {after} after {self.last_index()}")
            # Replaces (part of) the durable log: the driver truncates storage when persisting.
            self.unstable_offset = after
            self.unstable_entries = list(entries)
        elif after < end:
            del self.unstable_entries[after - offset :]
            self.unstable_entries.extend(entries)
        else:
            raise ValueError(f"gap: append at {after} after {end - 1}")
        while len(self.configs) > 1 and self.configs[-1][0] >= after:
            self.configs.pop()  # an uncommitted membership truncated away: the one before holds
        self._note_configs(entries)

    def find_conflict(self, entries: tuple[Entry, ...]) -> Index:
        """Index of the first entry that is not in the log with the same term, or 0 if none.

        Raft paper Figure 2, AppendEntries rule 3: an existing entry that conflicts with a new
        one (same index, different term) is deleted together with all that follow it.
        """
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return Index(0)

    def maybe_append(
        self, prev_index: Index, prev_term: Term, leader_commit: Index, entries: tuple[Entry, ...]
    ) -> Index | None:
        """Follower side of AppendEntries (paper Figure 2, receiver rules 2 to 5).

        Returns:
            The index of the last new entry when the log matched at (prev_index, prev_term), or
            None when it did not (the caller rejects). The commit index moves to
            `min(leader_commit, last new entry)`, never past what this message proved.
        """
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = Index(prev_index + len(entries))
        conflict = self.find_conflict(entries)
        if conflict:
            self.append(list(entries[conflict - prev_index - 1 :]))
        self.commit_to(min(leader_commit, last_new))
        return last_new

    def find_conflict_by_term(self, index: Index, term: Term) -> tuple[Index, Term]:
        """Largest index <= `index` whose term is <= `term`, with that term.

        Used for fast back-off on rejection (thesis 5.4.2; etcd-io/raft findConflictByTerm).
        Returns (index, 0) when the term at `index` is unknown (compacted).
        """
        while index > 0:
            try:
                t = self.term(index)
            except (CompactedError, UnavailableError):
                return index, Term(0)
            if t <= term:
                return index, t
            index = Index(index - 1)
        return Index(0), Term(0)

    def commit_to(self, index: Index) -> None:
        """Raise the commit index to `index` (never lowers it).

        Raises:
            ValueError: index is past the last index (a bug: it would commit unknown entries).
        """
        if index > self.committed:
            if index > self.last_index():
                raise ValueError(f"commit {index} past last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: Index, term: Term) -> bool:
        """Leader: commit `index` if it is newer and its entry is of `term` (paper Figure 8)."""
        if index > self.committed and self.match_term(index, term):
            self.committed = index
            return True
        return False

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log with a snapshot received from the leader (paper section 7)."""
        self.committed = snapshot.meta.index
        self.configs = [(snapshot.meta.index, snapshot.meta.membership)]
        self.unstable_snapshot = snapshot
        self.unstable_entries = []
        self.unstable_offset = Index(snapshot.meta.index + 1)

    def stable_to(self, index: Index, term: Term) -> None:
        """The driver persisted entries up to (index, term): drop them from the unstable tail."""
        if index < self.unstable_offset or not self.unstable_entries:
            return
        n = index - self.unstable_offset
        if n >= len(self.unstable_entries) or self.unstable_entries[n].term != term:
            return  # the tail was replaced since that Ready; keep it
        del self.unstable_entries[: n + 1]
        self.unstable_offset = Index(index + 1)

    def stable_snapshot_to(self, index: Index) -> None:
        """The driver persisted the unstable snapshot at `index`."""
        if self.unstable_snapshot is not None and self.unstable_snapshot.meta.index == index:
            self.unstable_snapshot = None
