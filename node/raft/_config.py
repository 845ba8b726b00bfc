"""`Config`: the tuning of one Raft node (times in ticks; the driver decides a tick's length)."""

from __future__ import annotations

from dataclasses import dataclass

from ._types import NodeId


@dataclass(frozen=True, slots=True)
class Config:
    """Tuning of one node. Times are in ticks; the driver decides how long a tick is.

    The defaults are the tuning raftq runs with: the one place it is written. The cluster
    configuration (node/config.py) takes its `election_ticks` and `heartbeat_ticks` defaults
    from here and may override them per cluster; a tick's length (`tick_ms`) is the driver's.

    Attributes:
        id: this node's id.
        election_ticks: base election timeout; the randomized timeout lies in
            [election_ticks, 2 * election_ticks). Also the check-quorum period.
        heartbeat_ticks: ticks between leader heartbeats; must be < election_ticks.
        max_append_entries: most entries in one AppendEntries.
        max_append_bytes: about the most entry bytes in one AppendEntries (at least one entry).
        max_inflight_appends: AppendEntries outstanding per follower in REPLICATE state.
        max_snapshot_chunk_bytes: bytes of snapshot data per InstallSnapshot message.
        max_committed_bytes_per_ready: about the most entry bytes in one Ready's committed_entries.
        pre_vote: run the pre-vote phase before an election (thesis 9.6).
        check_quorum: a leader steps down when it has not heard from a majority for an election
            timeout, and followers that heard from a leader within one ignore votes (thesis 6.2).
        max_promote_lag_entries: a learner is promoted to voter only once its match index is
            at most this many entries behind the commit index (thesis 4.2.1).
    """

    id: NodeId
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    max_append_entries: int = 4096
    max_append_bytes: int = 4 << 20
    max_inflight_appends: int = 64
    max_snapshot_chunk_bytes: int = 1 << 20
    max_committed_bytes_per_ready: int = 8 << 20
    pre_vote: bool = True
    check_quorum: bool = True
    max_promote_lag_entries: int = 1000

    def __post_init__(self) -> None:
        if self.id <= 0:
            raise ValueError("node id must be positive")
        if not 0 < self.heartbeat_ticks < self.election_ticks:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks")
        if self.max_append_entries < 1 or self.max_inflight_appends < 1:
            raise ValueError("max_append_entries and max_inflight_appends must be >= 1")
        if self.max_snapshot_chunk_bytes < 1:
            raise ValueError("max_snapshot_chunk_bytes must be >= 1")
