"""Durable-state loss: the durability mark, how it is kept, and what a restarted node concludes.

A node's database can lose records without a damaged byte left behind: a write-ahead log cut at
a record boundary, a deleted WAL, an old backup put back. RocksDB cannot see that, and Raft's
safety assumes it never happens (a node that forgot its vote votes twice; one that forgot
acknowledged entries helps elect a leader without them). So each node also keeps a small
*durability mark* outside its database (node/marker.py writes it to a file of its own):

- its term, vote and standing, rewritten (synced) whenever one of them changes, after the
  database write and before any message that depends on it is sent: it is never behind what
  the node told anyone about its term and vote;
- one log position (index, term) that was durable in the log, refreshed now and then (not on
  every write, so it costs no fsync on the hot path; it may lag the log's tail by one refresh
  interval), and lowered *before* a write that legitimately removes entries at or below it
  (a conflicting suffix replaced by a new leader's entries, or a snapshot installed over them).

On restart `assess_durability` compares the database with the mark: a term or vote behind the
mark is taken from the mark (it is exact); a log that no longer holds the marked position lost
acknowledged entries, so the node starts REPAIRING: it grants no vote and does not count
towards a quorum until a leader has repaired it (`RaftNode`, docs/architecture.md "Storage
faults"). The idea is protocol-aware recovery (Alagappan et al., FAST 2018).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import CompactedError, UnavailableError
from ._ready import Ready
from ._storage import Storage
from ._types import HardState, Index, NodeId, Standing, Term


@dataclass(frozen=True, slots=True)
class DurabilityMark:
    """What a node recorded, outside its database, about its durable state.

    Attributes:
        term: the node's term (never behind what it told a peer).
        vote: its vote in `term`, or None.
        standing: VOTER, JOINING or REPAIRING.
        index: a log index whose entry was durable (0: none yet).
        index_term: the term of the entry at `index` (0 with index 0).
    """

    term: Term = Term(0)
    vote: NodeId | None = None
    standing: Standing = Standing.VOTER
    index: Index = Index(0)
    index_term: Term = Term(0)


def mark_of(hard: HardState, index: Index, index_term: Term) -> DurabilityMark:
    """The mark for hard state `hard` and durable log position (`index`, `index_term`)."""
    return DurabilityMark(hard.term, hard.vote, hard.standing, index, index_term)


def lower_mark_before(mark: DurabilityMark, rd: Ready, storage: Storage) -> DurabilityMark | None:
    """The mark to write *before* persisting `rd`, or None when `rd` removes nothing it marks.

    A Ready removes durable entries when its first entry's index is at or below the marked
    index (the log is truncated there) or when it installs a snapshot below the marked index
    (the log is replaced). The mark then moves down to a position the write keeps.

    Args:
        mark: the mark as last written.
        rd: the Ready about to be persisted.
        storage: the storage as it is before the write (read only).
    """
    if rd.snapshot is not None and rd.snapshot.meta.index < mark.index:
        meta = rd.snapshot.meta
        return DurabilityMark(mark.term, mark.vote, mark.standing, meta.index, meta.term)
    if rd.entries and rd.entries[0].index <= mark.index:
        keep = Index(rd.entries[0].index - 1)
        try:
            keep_term = storage.term(keep)
        except (CompactedError, UnavailableError):
            keep, keep_term = Index(0), Term(0)
        return DurabilityMark(mark.term, mark.vote, mark.standing, keep, keep_term)
    return None


def raise_mark_after(
    mark: DurabilityMark,
    hard: HardState,
    last: tuple[Index, Term],
    refresh: bool,
) -> DurabilityMark | None:
    """The mark to write *after* a persist, or None when the written one still holds.

    Args:
        mark: the mark as last written.
        hard: the hard state now durable.
        last: (index, term) of the last durable log entry.
        refresh: the refresh interval has passed: move the log position to `last`.

    Returns:
        A new mark when term, vote or standing changed (this write must finish before a
        message that depends on them is sent), or when `refresh` and the position moved.
    """
    changed = (hard.term, hard.vote, hard.standing) != (mark.term, mark.vote, mark.standing)
    moved = refresh and (last[0], last[1]) != (mark.index, mark.index_term)
    if not changed and not moved:
        return None
    index, term = (last if moved else (mark.index, mark.index_term))
    return DurabilityMark(hard.term, hard.vote, hard.standing, Index(index), Term(term))


def assess_durability(
    hard: HardState, storage: Storage, mark: DurabilityMark | None
) -> tuple[HardState, str | None]:
    """Compare a database just opened with the node's durability mark.

    Args:
        hard: the hard state the database holds.
        storage: the database (read only), for its log positions.
        mark: the mark file's contents, or None when there is none (a database created before
            marks existed, or a node that lost its whole data directory: then the database is
            new and JOINING already).

    Returns:
        (hard state to run with, why the node lost durable state or None). The hard state takes
        term and vote from the mark when the database's are behind (the mark is exact for
        them), keeps the stricter standing of the two, and is REPAIRING when the log no longer
        holds the marked position (unless the node never joined: JOINING stays JOINING).
    """
    if mark is None:
        return hard, None
    reasons: list[str] = []
    term, vote, standing = hard.term, hard.vote, hard.standing
    if mark.term > term:
        reasons.append(f"its term {term} is behind term {mark.term} it had durably reached")
        term, vote = mark.term, mark.vote
    elif mark.term == term and mark.vote is not None and vote != mark.vote:
        reasons.append(f"its vote in term {term} was lost")
        vote = mark.vote
    snapshot_index = storage.first_index() - 1
    if mark.index > snapshot_index:
        try:
            held = storage.term(mark.index)
        except (CompactedError, UnavailableError):
            held = None
        if held != mark.index_term:
            reasons.append(
                f"its log ends at index {storage.last_index()} but held entry {mark.index} "
                f"(term {mark.index_term}) before"
                if held is None
                else f"entry {mark.index} has term {held}, not the durable term {mark.index_term}"
            )
    if reasons:
        # A mark of a node that never joined proves nothing was acknowledged; any other mark
        # proves the cluster exists and this node forgot part of what it told it.
        standing = Standing.JOINING if mark.standing is Standing.JOINING else Standing.REPAIRING
    else:
        standing = max(standing, mark.standing, key=_strictness)
    fixed = HardState(term, vote, hard.commit, standing)
    return fixed, ("; ".join(reasons) or None)


def _strictness(standing: Standing) -> int:
    return {Standing.VOTER: 0, Standing.JOINING: 1, Standing.REPAIRING: 2}[standing]
