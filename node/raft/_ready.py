"""`Ready`: everything the core wants done, handed to the driver in one batch.

After etcd-io/raft's Ready (README, "Usage"). The contract, in this order:

0. **Send early** every message in `early_messages`, before or while persisting: they are a
   leader's AppendEntries, heartbeats, snapshot chunks and TimeoutNow, which depend only on
   state that is already durable or that the leader does not count until it is (Ongaro's
   thesis, 10.2.1: the leader writes its log in parallel with replicating it).
1. **Persist**: write `snapshot_chunks` (pieces of a snapshot being received) where that
   snapshot is assembled, write `snapshot` (if any), then `entries` (truncating the log from
   `entries[0].index` first), then `hard_state` (if any) to durable storage, in one atomic write,
   synced (fsync) when `must_sync` is True. When `snapshot_received` is set, start preparing
   its install (the driver reports the outcome with `snapshot_prepared`; it may take long, the
   core goes on meanwhile). Term and vote MUST be durable before any of
   `messages` is sent: a vote or an AppendEntries success is never sent for state that could be
   lost in a crash (PySyncObj#84).
2. **Send** every message in `messages` (any order; they may be dropped, the core retries):
   votes and AppendEntries responses, which must never leave before step 1 is durable.
3. **Apply**: if `snapshot` is set, restore the state machine from it first; then apply
   `committed_entries` in order. They are durable on a majority; a client may be answered once
   its entry is applied.
4. Tell the proposers of `dropped` that the outcome of their proposal is unknown (it may or may
   not commit: the leader lost office). Answer each read of `read_states` once the application
   has applied up to its `index` (its leadership is confirmed: node/raft/_read_index.py); tell
   the readers of `dropped_reads` that this node no longer leads. Neither depends on step 1.
5. Call `advance(ready)` with this same object.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._membership import Membership
from ._types import (
    Entry,
    HardState,
    Index,
    Message,
    NodeId,
    Role,
    Snapshot,
    SnapshotChunk,
    SnapshotMeta,
    Standing,
    Term,
)


@dataclass(frozen=True, slots=True)
class SoftState:
    """State an operator or the driver may want to see change: role, leader, term, standing."""

    role: Role
    leader_id: NodeId | None
    term: Term
    standing: Standing = Standing.VOTER


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read whose leadership check passed (ReadIndex, thesis 6.4).

    Attributes:
        ctx: the id the driver gave `RaftNode.read_index`.
        index: the read index: answer once the application has applied up to it.
    """

    ctx: int
    index: Index


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work for the driver. See the module docstring for the order of the steps.

    Attributes:
        hard_state: term, vote and commit index to persist, or None if unchanged.
        entries: entries to append to the log (after truncating from `entries[0].index`).
        snapshot: a snapshot received from the leader, to persist and restore, or None.
        messages: messages to send once the above is durable.
        early_messages: leader messages that may be sent before the persist (step 0).
        committed_entries: entries to apply to the state machine, in log order.
        soft_state: role, leader and term when they changed since the last Ready, else None.
        dropped: log indexes of proposals whose outcome became unknown (leader stepped down).
        must_sync: True when `entries` or term/vote changed (fsync needed); a commit-only change
            may be written without sync.
        read_states: reads confirmed since the last Ready, in the order they were asked.
        dropped_reads: the `ctx` of reads that will never be confirmed (the leader lost office).
        membership: the membership in effect when it changed since the last Ready (a CONFIG
            entry was appended, truncated away or came with a snapshot), else None; the driver
            connects to new members and lets removed ones go.
        snapshot_chunks: pieces of a snapshot being received, to write (step 1) where it is
            assembled (one at offset 0 starts it afresh); unsynced writes are enough.
        snapshot_received: a snapshot whose every chunk is in `snapshot_chunks` so far: the
            driver prepares its install (decodes it, off the event loop) and then calls
            `RaftNode.snapshot_prepared(meta, data)`, with `data` reading what it assembled, or
            None to refuse it. Until then the core goes on (heartbeats, votes).
    """

    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    messages: tuple[Message, ...]
    early_messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    soft_state: SoftState | None
    dropped: tuple[Index, ...]
    must_sync: bool
    read_states: tuple[ReadState, ...] = ()
    dropped_reads: tuple[int, ...] = ()
    membership: Membership | None = None
    snapshot_chunks: tuple[SnapshotChunk, ...] = ()
    snapshot_received: SnapshotMeta | None = None
