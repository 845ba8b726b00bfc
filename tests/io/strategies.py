"""Hypothesis strategies for Raft data, shared by the I/O tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from node.codec import MAX_WIRE_INT
from node.raft._ids import NodeId
from node.raft._membership import Membership
from node.raft._types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    Index,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    Term,
    TimeoutNow,
)

u64: st.SearchStrategy[Any] = st.one_of(st.integers(0, 1000), st.integers(0, MAX_WIRE_INT))
node_ids: st.SearchStrategy[Any] = st.one_of(st.integers(1, 7), st.integers(1, MAX_WIRE_INT))
small_bytes = st.binary(max_size=64)


@st.composite
def append_entries(draw: st.DrawFn) -> AppendEntries:
    prev = draw(st.integers(0, 10_000))
    count = draw(st.integers(0, 5))
    entries = tuple(
        Entry(
            Term(draw(u64)),
            Index(prev + 1 + i),
            draw(st.sampled_from(EntryKind)),
            draw(small_bytes),
        )
        for i in range(count)
    )
    return AppendEntries(
        draw(u64), draw(node_ids), draw(node_ids), Index(prev), draw(u64), entries, draw(u64)
    )


def _memberships(ids: list[int]) -> Membership:
    voters, learners = ids[: len(ids) // 2 + 1], ids[len(ids) // 2 + 1 :]
    m = Membership.of(tuple(NodeId(i) for i in voters), tuple(NodeId(i) for i in learners))
    return m.with_addresses({NodeId(i): (f"h{i}:1", f"h{i}:2") for i in ids[::2]})


memberships = st.lists(node_ids, max_size=5, unique=True).map(_memberships)
snapshot_metas = st.builds(SnapshotMeta, u64, u64, memberships)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(RequestVote, u64, node_ids, node_ids, u64, u64, st.booleans(), st.booleans()),
    st.builds(RequestVoteResponse, u64, node_ids, node_ids, st.booleans(), st.booleans()),
    append_entries(),
    st.builds(AppendEntriesResponse, u64, node_ids, node_ids, st.booleans(), u64, u64, u64, u64),
    st.builds(Heartbeat, u64, node_ids, node_ids, u64),
    st.builds(HeartbeatResponse, u64, node_ids, node_ids),
    st.builds(
        InstallSnapshot, u64, node_ids, node_ids, snapshot_metas, u64, small_bytes, st.booleans(),
        u64, st.integers(0, 2**32 - 1)
    ),
    st.builds(InstallSnapshotResponse, u64, node_ids, node_ids, u64, u64, st.booleans()),
    st.builds(TimeoutNow, u64, node_ids, node_ids),
)
