"""RocksStorage (node/storage.py): the Storage read interface, persistence and corruption checks.

The read-interface tests run against both `MemoryStorage` (the reference) and `RocksStorage`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from node.raft._errors import CompactedError, UnavailableError
from node.raft._membership import Membership
from node.raft._ready import Ready
from node.raft._storage import MemoryStorage
from node.raft._types import (
    Entry,
    EntryKind,
    HardState,
    Index,
    NodeId,
    Snapshot,
    SnapshotMeta,
    Standing,
    Term,
)
from node.storage import CorruptStorageError, RocksStorage, StorageError

VOTERS = (NodeId(1), NodeId(2), NodeId(3))


def whole(snap: Snapshot) -> Snapshot:
    """The snapshot with its data in memory (RocksStorage hands out a reader of its chunks)."""
    data = snap.data if isinstance(snap.data, bytes) else snap.data.read_at(0, len(snap.data))
    return Snapshot(snap.meta, data)
CLUSTER = "cluster-a"


def ready(
    entries: tuple[Entry, ...] | list[Entry] = (),
    hard_state: HardState | None = None,
    snapshot: Snapshot | None = None,
    must_sync: bool = True,
) -> Ready:
    return Ready(
        hard_state=hard_state,
        entries=tuple(entries),
        snapshot=snapshot,
        messages=(),
        early_messages=(),
        committed_entries=(),
        soft_state=None,
        dropped=(),
        must_sync=must_sync,
    )


def ents(first: int, terms: list[int], size_bytes: int = 8) -> list[Entry]:
    """Entries from `first` with the given terms; data is determined by (index, term, size)."""
    return [
        Entry(Term(t), Index(i), EntryKind.NORMAL, (f"{i}/{t}/".encode() * size_bytes)[:size_bytes])
        for i, t in enumerate(terms, start=first)
    ]


def open_rocks(path: Path, **kwargs: Any) -> RocksStorage:
    return RocksStorage.open(path, cluster_id=CLUSTER, node_id=1, membership=VOTERS, **kwargs)


class MemoryDriver:
    """MemoryStorage with the same write surface as RocksStorage."""

    def __init__(self) -> None:
        self.store = MemoryStorage(VOTERS, Standing.JOINING)  # a new database is JOINING

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def persist(self, r: Ready) -> None:
        if r.snapshot is not None:
            self.store.apply_snapshot(r.snapshot)
        self.store.append(r.entries)
        if r.hard_state is not None:
            self.store.set_hard_state(r.hard_state)

    def save_snapshot(
        self, index: Index, data: bytes, voters: tuple[NodeId, ...], keep_entries: int = 0
    ) -> None:
        self.store.create_snapshot(index, data, voters, keep_entries)

    def reopen(self) -> MemoryDriver:
        return self

    def close(self) -> None:
        pass


class RocksDriver:
    """RocksStorage that can be closed and reopened in place."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        self.path = path
        self.kwargs = kwargs
        self.store = open_rocks(path, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def reopen(self) -> RocksDriver:
        self.store.close()
        self.store = open_rocks(self.path, **self.kwargs)
        return self

    def close(self) -> None:
        self.store.close()


@pytest.fixture(params=["memory", "rocks", "rocks-tiny-cache"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        driver: Any = MemoryDriver()
    elif request.param == "rocks":
        driver = RocksDriver(tmp_path / "db")
    else:
        driver = RocksDriver(tmp_path / "db", cache_max_bytes=100)
    yield driver
    driver.close()


# -- the read interface, on both implementations ----------------------------------------------


def test_empty_storage(store: Any) -> None:
    assert store.initial_state() == (HardState(standing=Standing.JOINING), Membership.of(VOTERS))
    assert store.first_index() == 1
    assert store.last_index() == 0
    assert store.term(0) == 0
    assert store.entries(1, 1) == []
    assert whole(store.snapshot()) == Snapshot(SnapshotMeta(Index(0), Term(0), Membership.of(VOTERS)), b"")
    with pytest.raises(UnavailableError):
        store.term(1)
    with pytest.raises(CompactedError):
        store.entries(0, 1)
    with pytest.raises(UnavailableError):
        store.entries(1, 2)


def test_append_and_read(store: Any) -> None:
    log = ents(1, [1, 1, 2, 2, 3])
    store.persist(ready(log, HardState(Term(3), NodeId(2), Index(2))))
    assert store.initial_state() == (HardState(Term(3), NodeId(2), Index(2)), Membership.of(VOTERS))
    assert (store.first_index(), store.last_index()) == (1, 5)
    assert [store.term(i) for i in range(0, 6)] == [0, 1, 1, 2, 2, 3]
    assert store.entries(1, 6) == log
    assert store.entries(2, 4) == log[1:3]
    assert store.entries(6, 6) == []
    with pytest.raises(UnavailableError):
        store.term(6)
    with pytest.raises(UnavailableError):
        store.entries(1, 7)


def test_entries_max_bytes(store: Any) -> None:
    log = ents(1, [1] * 5, size_bytes=76)  # 100 bytes each, as entry_size_bytes counts
    store.persist(ready(log))
    assert store.entries(1, 6, max_bytes=0) == log[:1]  # at least one
    assert store.entries(1, 6, max_bytes=100) == log[:1]
    assert store.entries(1, 6, max_bytes=250) == log[:2]
    assert store.entries(2, 6, max_bytes=300) == log[1:4]
    assert store.entries(1, 6, max_bytes=10_000) == log


def test_conflicting_append_truncates(store: Any) -> None:
    store.persist(ready(ents(1, [1, 1, 1, 1, 1])))
    replacement = ents(3, [2, 2], size_bytes=3)
    store.persist(ready(replacement))
    assert store.last_index() == 4
    assert [store.term(i) for i in range(1, 5)] == [1, 1, 2, 2]
    assert store.entries(1, 5) == ents(1, [1, 1]) + replacement
    store.persist(ready(ents(5, [3])))
    assert store.last_index() == 5
    store.persist(ready(ents(2, [4], size_bytes=1)))  # truncates 3..5
    assert store.last_index() == 2
    assert store.entries(1, 3) == ents(1, [1]) + ents(2, [4], size_bytes=1)


def test_gap_is_refused(store: Any) -> None:
    store.persist(ready(ents(1, [1, 1])))
    with pytest.raises(ValueError):
        store.persist(ready(ents(4, [1])))
    assert store.last_index() == 2


def test_compaction(store: Any) -> None:
    store.persist(ready(ents(1, [1, 1, 2, 2, 3, 3])))
    store.save_snapshot(Index(4), b"app state at 4", (NodeId(3), NodeId(1)))
    assert (store.first_index(), store.last_index()) == (5, 6)
    assert store.term(4) == 2
    assert whole(store.snapshot()) == Snapshot(
        SnapshotMeta(Index(4), Term(2), Membership.of((NodeId(1), NodeId(3)))), b"app state at 4"
    )
    assert store.initial_state()[1] .voters == (1, 3)
    assert store.entries(5, 7) == ents(5, [3, 3])
    with pytest.raises(CompactedError):
        store.term(3)
    with pytest.raises(CompactedError):
        store.entries(4, 7)
    store.save_snapshot(Index(3), b"older", VOTERS)  # not newer: ignored
    assert store.snapshot().meta.index == 4
    with pytest.raises(ValueError):
        store.save_snapshot(Index(7), b"", VOTERS)
    store.save_snapshot(Index(6), b"all", VOTERS)  # compacts the whole log
    assert (store.first_index(), store.last_index()) == (7, 6)
    assert store.term(6) == 3
    store.persist(ready(ents(7, [4])))
    assert store.entries(7, 8) == ents(7, [4])


def test_snapshot_from_leader_replaces_log(store: Any) -> None:
    store.persist(ready(ents(1, [1, 1, 1])))
    snap = Snapshot(SnapshotMeta(Index(10), Term(5), Membership.of(VOTERS)), b"leader state")
    store.persist(ready(ents(11, [5, 6]), HardState(Term(6), None, Index(10)), snap))
    assert (store.first_index(), store.last_index()) == (11, 12)
    assert whole(store.snapshot()) == snap
    assert store.term(10) == 5
    assert store.entries(11, 13) == ents(11, [5, 6])
    # An older snapshot in a later Ready is ignored; entries it covers are skipped.
    old = Snapshot(SnapshotMeta(Index(5), Term(2), Membership.of(VOTERS)), b"old")
    store.persist(ready(ents(9, [4, 5, 6, 7]), snapshot=old))
    assert whole(store.snapshot()) == snap
    assert store.entries(11, 13) == ents(9, [4, 5, 6, 7])[2:]


def test_unsynced_ready_is_readable(store: Any) -> None:
    store.persist(ready(ents(1, [1]), HardState(Term(1), None, Index(1)), must_sync=False))
    assert store.initial_state()[0].commit == 1
    assert store.entries(1, 2) == ents(1, [1])


# -- a random walk that both implementations must agree on -------------------------------------


def _observe(s: Any) -> dict[str, Any]:
    first, last = s.first_index(), s.last_index()
    seen: dict[str, Any] = {
        "initial": s.initial_state(),
        "first": first,
        "last": last,
        "snapshot": whole(s.snapshot()),
    }
    for i in range(max(0, first - 3), last + 3):
        try:
            seen[f"term {i}"] = s.term(Index(i))
        except (CompactedError, UnavailableError) as exc:
            seen[f"term {i}"] = type(exc).__name__
    for lo in range(max(0, first - 2), last + 3):
        for hi, max_bytes in ((last + 1, None), (last + 2, None), (lo + 2, 70), (last + 1, 100)):
            if hi < lo:
                continue
            try:
                seen[f"entries {lo} {hi} {max_bytes}"] = s.entries(Index(lo), Index(hi), max_bytes)
            except (CompactedError, UnavailableError) as exc:
                seen[f"entries {lo} {hi} {max_bytes}"] = type(exc).__name__
    return seen


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("append"),
            st.integers(-3, 1),  # start relative to last_index + 1 (1: a gap)
            st.lists(st.integers(0, 2), min_size=0, max_size=6),  # term increments
            st.integers(0, 60),  # data size
            st.booleans(),  # must_sync
        ),
        st.tuples(st.just("hard_state"), st.integers(0, 3), st.integers(0, 4)),
        st.tuples(st.just("compact"), st.integers(0, 8), st.binary(max_size=40),
                  st.sampled_from([0, 0, 2, 5])),
        st.tuples(st.just("install"), st.integers(1, 8), st.integers(0, 2)),
        st.tuples(st.just("reopen")),
    ),
    max_size=25,
)


def _apply(s: Any, model: MemoryDriver, op: tuple[Any, ...]) -> None:
    """Apply `op` to `s`, choosing its arguments from the state of `model` (before the op).

    Arguments stay within what Raft can ask: no truncation at or below the commit index, no
    snapshot install at or below it, terms that never decrease along the log.
    """
    kind = op[0]
    last = model.last_index()
    commit = model.initial_state()[0].commit
    if kind == "append":
        _, rel, increments, size, sync = op
        start = max(1, commit + 1, last + 1 + rel)
        if start <= model.snapshot().meta.index:
            prev_term = model.snapshot().meta.term  # the covered entries are skipped anyway
        else:
            prev_term = model.term(Index(min(start - 1, last)))
        terms = []
        for inc in increments:
            prev_term += inc
            terms.append(prev_term)
        if start > last + 1 and terms:
            with pytest.raises(ValueError, match="gap"):
                s.persist(ready(ents(start, terms, size), must_sync=sync))
        else:
            s.persist(ready(ents(start, terms, size), must_sync=sync))
    elif kind == "hard_state":
        _, term_inc, commit_back = op
        hs = model.initial_state()[0]
        new = HardState(
            Term(hs.term + term_inc),
            NodeId(2) if term_inc else hs.vote,
            Index(max(commit, last - commit_back)),
        )
        s.persist(ready(hard_state=new, must_sync=bool(term_inc)))
    elif kind == "compact":
        _, back, data, keep = op  # keep: a trailing margin of log the snapshot covers
        index = max(model.snapshot().meta.index, last - back)
        s.save_snapshot(Index(index), data, VOTERS, keep)
    elif kind == "install":
        _, ahead, term_inc = op
        meta = model.snapshot().meta
        index = max(meta.index, commit) + ahead
        term = max(meta.term, model.term(Index(last))) + term_inc
        snap = Snapshot(SnapshotMeta(Index(index), Term(term), Membership.of(VOTERS)), bytes([ahead]) * ahead)
        s.persist(ready(hard_state=HardState(Term(term), None, Index(index)), snapshot=snap))
    elif kind == "reopen" and isinstance(s, RocksDriver):
        s.reopen()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations, cache_max_bytes=st.sampled_from([0, 150, 1 << 20]))
def test_rocks_agrees_with_memory_storage(ops: list[tuple[Any, ...]], cache_max_bytes: int) -> None:
    model = MemoryDriver()
    with tempfile.TemporaryDirectory() as tmp:
        rocks = RocksDriver(Path(tmp) / "db", cache_max_bytes=cache_max_bytes)
        try:
            for op in ops:
                _apply(rocks, model, op)
                _apply(model, model, op)
                assert _observe(rocks) == _observe(model), op
            rocks.reopen()
            assert _observe(rocks) == _observe(model)
        finally:
            rocks.close()


# -- persistence ------------------------------------------------------------------------------


def test_reopen_recovers_everything(tmp_path: Path) -> None:
    path = tmp_path / "db"
    snap = Snapshot(SnapshotMeta(Index(10), Term(3), Membership.of(VOTERS)), b"snapshot data" * 1000)
    log = ents(11, [3, 4, 4, 5], size_bytes=500)
    hs = HardState(Term(5), NodeId(3), Index(12))
    with open_rocks(path, snapshot_chunk_bytes=1000) as s:
        s.persist(ready(log, hs, snap))
    with open_rocks(path, cache_max_bytes=1000) as s:
        assert s.initial_state() == (hs, Membership.of(VOTERS))
        assert whole(s.snapshot()) == snap
        assert (s.first_index(), s.last_index()) == (11, 14)
        assert s.entries(Index(11), Index(15)) == log
        assert s.entries(Index(11), Index(15), max_bytes=1100) == log[:2]
        assert [s.term(Index(i)) for i in range(10, 15)] == [3, 3, 4, 4, 5]
        # Appends after reopen, truncating across the cached and uncached part.
        s.persist(ready(ents(12, [6])))
        assert s.entries(Index(11), Index(13)) == log[:1] + ents(12, [6])
    with open_rocks(path) as s:
        assert s.entries(Index(11), Index(13)) == log[:1] + ents(12, [6])


def test_compaction_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with open_rocks(path) as s:
        s.persist(ready(ents(1, [1] * 20)))
        s.save_snapshot(Index(15), b"at 15", VOTERS)
    with open_rocks(path) as s:
        assert (s.first_index(), s.last_index()) == (16, 20)
        assert whole(s.snapshot()).data == b"at 15"
        with pytest.raises(CompactedError):
            s.entries(Index(15), Index(16))


def test_wrong_cluster_or_node_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db"
    open_rocks(path).close()
    with pytest.raises(StorageError, match="belongs to cluster 'cluster-a' node 1") as info:
        RocksStorage.open(path, cluster_id="cluster-b", node_id=1, membership=VOTERS)
    assert str(path) in str(info.value)
    with pytest.raises(StorageError, match="not cluster 'cluster-a' node 2"):
        RocksStorage.open(path, cluster_id=CLUSTER, node_id=2, membership=VOTERS)
    open_rocks(path).close()  # still fine with the right identity


def test_second_open_is_refused_while_open(tmp_path: Path) -> None:
    with open_rocks(tmp_path / "db"):
        with pytest.raises(StorageError, match="cannot open database"):
            open_rocks(tmp_path / "db")
    open_rocks(tmp_path / "db").close()


def test_closed_storage_refuses_writes(tmp_path: Path) -> None:
    s = open_rocks(tmp_path / "db")
    s.close()
    s.close()
    with pytest.raises(StorageError, match="closed"):
        s.persist(ready(ents(1, [1])))


def test_decreasing_terms_and_commit_past_end_are_refused(tmp_path: Path) -> None:
    with open_rocks(tmp_path / "db") as s:
        s.persist(ready(ents(1, [2, 2])))
        with pytest.raises(ValueError, match="term"):
            s.persist(ready(ents(3, [1])))
        with pytest.raises(ValueError, match="term"):
            s.persist(ready(ents(3, [3, 2])))
        with pytest.raises(ValueError, match="contiguous"):
            s.persist(ready([*ents(3, [3]), *ents(5, [3])]))
        with pytest.raises(ValueError, match="commit"):
            s.persist(ready(hard_state=HardState(Term(2), None, Index(3))))
        assert s.last_index() == 2
        assert s.initial_state()[0] == HardState(standing=Standing.JOINING)


def test_large_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "db"
    data = os.urandom(1 << 20) * 110  # 110 MiB
    with open_rocks(path) as s:
        s.persist(ready(ents(1, [1, 1, 1])))
        s.save_snapshot(Index(2), data, VOTERS)
        assert whole(s.snapshot()).data == data  # read back from its chunks
    with open_rocks(path) as s:
        assert s.snapshot().meta == SnapshotMeta(Index(2), Term(1), Membership.of(VOTERS))
        assert whole(s.snapshot()).data == data
        # Replaced by a smaller snapshot: no stray chunks remain.
        s.persist(ready(snapshot=Snapshot(SnapshotMeta(Index(7), Term(2), Membership.of(VOTERS)), b"small")))
    with open_rocks(path) as s:
        assert whole(s.snapshot()).data == b"small"


# -- corruption -------------------------------------------------------------------------------


@contextlib.contextmanager
def raw_db(path: Path) -> Iterator[dict[str, Rdict]]:
    """Open the node's database directly, to damage it."""
    families = {name: Options(raw_mode=True) for name in ("meta", "log", "snapshot", "bodies")}
    db = Rdict(str(path), Options(raw_mode=True), column_families=families)
    cfs = {name: db.get_column_family(name) for name in families}
    try:
        yield cfs
    finally:
        cfs.clear()
        db.close()


def flip_byte(family: Rdict, key: bytes, position: int = -1) -> None:
    stored = family[key]
    assert isinstance(stored, bytes)
    value = bytearray(stored)
    value[position] ^= 0x01
    family[key] = bytes(value)


def log_key(index: int) -> bytes:
    return index.to_bytes(8, "big")


@pytest.fixture
def populated(tmp_path: Path) -> Path:
    path = tmp_path / "db"
    with open_rocks(path, snapshot_chunk_bytes=100) as s:
        s.persist(ready(ents(1, [1] * 30, size_bytes=20), HardState(Term(1), NodeId(1), Index(25))))
        s.save_snapshot(Index(10), b"s" * 350, VOTERS)  # 4 chunks
    return path


def test_populated_database_opens(populated: Path) -> None:
    with open_rocks(populated) as s:
        assert (s.first_index(), s.last_index()) == (11, 30)


@pytest.mark.parametrize(
    ("family", "key", "position", "record"),
    [
        ("log", log_key(20), -1, "log entry 20"),
        ("log", log_key(11), 6, "log entry 11"),  # in the term
        ("log", log_key(30), 1, "log entry 30"),  # in the checksum itself
        ("meta", b"hard_state", -1, "hard state"),
        ("meta", b"snapshot", -1, "snapshot meta"),
        ("meta", b"identity", -1, "identity record"),
        ("snapshot", (10).to_bytes(8, "big") + (2).to_bytes(4, "big"), -1, "snapshot 10 chunk 2"),
    ],
)
def test_flipped_byte_is_detected(
    populated: Path, family: str, key: bytes, position: int, record: str
) -> None:
    with raw_db(populated) as cfs:
        flip_byte(cfs[family], key, position)
    with pytest.raises(CorruptStorageError) as info:
        open_rocks(populated)
    message = str(info.value)
    assert str(populated) in message
    assert record in message
    assert "checksum mismatch" in message
    assert info.value.code == "CORRUPT_STORAGE"


def test_value_moved_to_another_key_is_detected(populated: Path) -> None:
    with raw_db(populated) as cfs:
        cfs["log"][log_key(20)] = cfs["log"][log_key(21)]
    with pytest.raises(CorruptStorageError, match="log entry 20: checksum mismatch"):
        open_rocks(populated)


@pytest.mark.parametrize(("index", "missing"), [(15, 15), (11, 11)])
def test_missing_log_entry_is_detected(populated: Path, index: int, missing: int) -> None:
    with raw_db(populated) as cfs:
        del cfs["log"][log_key(index)]
    with pytest.raises(CorruptStorageError, match=f"log entry {missing}: missing") as info:
        open_rocks(populated)
    assert str(populated) in str(info.value)


def test_lost_log_tail_under_commit_is_detected(populated: Path) -> None:
    with raw_db(populated) as cfs:
        for index in range(24, 31):
            del cfs["log"][log_key(index)]
    with pytest.raises(CorruptStorageError, match="commit index 25 is past the last log index 23"):
        open_rocks(populated)


def test_entry_below_snapshot_is_detected(populated: Path) -> None:
    with open_rocks(populated) as s:
        stale = s.entries(Index(11), Index(12))[0]
    with raw_db(populated) as cfs:
        # A well-formed entry (valid checksum for its key) that compaction should have deleted.
        from node.storage_format import encode_entry_value as _encode_entry_value

        cfs["log"][log_key(5)] = _encode_entry_value(
            log_key(5), Entry(Term(1), Index(5), stale.kind)
        )
    with pytest.raises(CorruptStorageError, match="log entry 5: left behind"):
        open_rocks(populated)


def test_missing_snapshot_chunk_is_detected(populated: Path) -> None:
    with raw_db(populated) as cfs:
        del cfs["snapshot"][(10).to_bytes(8, "big") + (1).to_bytes(4, "big")]
    with pytest.raises(CorruptStorageError, match="snapshot 10 chunk 1: missing"):
        open_rocks(populated)


def test_missing_hard_state_is_detected(populated: Path) -> None:
    with raw_db(populated) as cfs:
        del cfs["meta"][b"hard_state"]
    with pytest.raises(CorruptStorageError, match="hard state: missing"):
        open_rocks(populated)


def test_missing_identity_with_data_is_detected(populated: Path) -> None:
    with raw_db(populated) as cfs:
        del cfs["meta"][b"identity"]
    with pytest.raises(CorruptStorageError, match="identity record: missing"):
        open_rocks(populated)


def test_corruption_after_open_is_detected_on_read(tmp_path: Path) -> None:
    with open_rocks(tmp_path / "db", cache_max_bytes=0) as s:
        s.persist(ready(ents(1, [1] * 10)))
        # Damage through the open handle (the database is locked to other openers).
        flip_byte(s._log, log_key(3))
        del s._log[log_key(5)]
        assert s.entries(Index(1), Index(3)) == ents(1, [1, 1])
        with pytest.raises(CorruptStorageError, match="log entry 3: checksum mismatch"):
            s.entries(Index(1), Index(4))
        with pytest.raises(CorruptStorageError, match="log entry 5: missing"):
            s.entries(Index(4), Index(6))


def test_rocks_storage_satisfies_the_storage_protocol(tmp_path: Path) -> None:
    from node.raft._storage import Storage

    def as_storage(s: RocksStorage) -> Storage:  # checked by mypy
        return s

    with open_rocks(tmp_path / "db") as s:
        assert as_storage(s).last_index() == 0
