"""The body store on RocksDB: writes with their applied index, reads, a replace that a failure
cuts short, checkpoints, and kill -9 at seeded instants of a writing process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import storage_format as fmt
from node.bodies import MemoryBodies
from node.raft import Entry, EntryKind, HardState, Index, Ready, Term
from node.rocks_bodies import BUFFER_MAX_BYTES
from node.storage import RocksStorage, StorageError

VOTERS = (1, 2, 3)


def open_rocks(path: Path) -> RocksStorage:
    return RocksStorage.open(path, cluster_id="c", node_id=1, membership=VOTERS)


def test_writes_reads_and_applied_index_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with open_rocks(path) as s:
        b = s.bodies
        assert b.applied_index == 0 and b.get_many([1]) == [None]
        b.write([(1, b"one"), (2, b"two"), (3, b"three")], [], 5)
        b.write([(4, b"four")], [2], 7)
        b.reads = 0
        assert b.get_many([1, 3, 4]) == [b"one", b"three", b"four"]
        assert b.reads == 0  # all from the cache of newest bodies
        assert b.get_many([2]) == [None] and b.reads == 1
    with open_rocks(path) as s:
        b = s.bodies
        assert b.applied_index == 7
        assert b.get_many([4, 1, 2]) == [b"four", b"one", None]
        assert b.reads == 3  # read from the database this time
        frozen = b.freeze()
        b.write([(5, b"five")], [1], 8)
        assert list(frozen.items()) == [(1, b"one"), (3, b"three"), (4, b"four")]
        frozen.close()
        assert not path.with_name("db.checkpoint").exists()


def _in_database(s: RocksStorage, body_key: int) -> bytes | None:
    """The stored value of a body, read past the store's buffer and cache."""
    b = s.bodies
    return b._family.get(_db_key(b.generation, body_key))  # type: ignore[no-any-return]


def _db_key(generation: int, body_key: int) -> bytes:
    return fmt.BODY_KEY.pack(generation, body_key)


def _append(i: int, must_sync: bool = True) -> Ready:
    e = Entry(Term(1), Index(i), EntryKind.NORMAL, b"e%d" % i)
    return Ready(HardState(Term(1), None, Index(i - 1)), (e,), None, (), (), (), None, (),
                 must_sync=must_sync)


def test_body_writes_wait_for_the_storages_next_write_and_are_read_meanwhile(
    tmp_path: Path,
) -> None:
    with open_rocks(tmp_path / "db") as s:
        b = s.bodies
        s.persist(_append(1))
        b.write([(1, b"one"), (2, b"two")], [], 1)
        b.write([(3, b"three")], [2], 1)  # put and dropped before any write
        assert _in_database(s, 1) is None  # buffered, not written
        assert b.get_many([1, 2, 3]) == [b"one", None, b"three"] and b.reads == 1
        with pytest.raises(ValueError, match="gap"):
            s.persist(_append(5))  # refused: nothing written, the bodies stay buffered
        assert _in_database(s, 1) is None
        s.persist(_append(2))  # the log's next write carries them
        assert _in_database(s, 1) is not None and _in_database(s, 3) is not None
        assert _in_database(s, 2) is None
        b.write([(4, b"four")], [], 2)
        frozen = b.freeze()  # a checkpoint writes what is buffered first
        assert [k for k, _ in frozen.items()] == [1, 3, 4]
        frozen.close()
    with open_rocks(tmp_path / "db") as s:
        assert s.bodies.applied_index == 2
        assert s.bodies.get_many([1, 2, 3, 4]) == [b"one", None, b"three", b"four"]


def test_a_large_buffer_is_written_at_once(tmp_path: Path) -> None:
    with open_rocks(tmp_path / "db") as s:
        big = os.urandom(1024 * 1024)
        n = BUFFER_MAX_BYTES // len(big) + 1
        for k in range(1, n + 1):
            s.bodies.write([(k, big)], [], k)
        assert all(_in_database(s, k) is not None for k in range(1, n + 1))


def _failing(n: int) -> Iterator[tuple[int, bytes]]:
    for key in range(1, n + 1):
        yield key, os.urandom(64 * 1024)
    raise StorageError("the snapshot being installed turned out corrupt")


def test_a_replace_cut_short_leaves_the_old_bodies(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with open_rocks(path) as s:
        b = s.bodies
        b.write([(7, b"old")], [], 3)
        with pytest.raises(StorageError):
            b.replace(_failing(200), 50)  # 12 MiB: several batches were written
        assert (b.applied_index, b.get_many([7, 1])) == (3, [b"old", None])
    with open_rocks(path) as s:  # the half-written generation is deleted at open
        b = s.bodies
        assert (b.applied_index, b.generation, b.get_many([7, 1])) == (3, 0, [b"old", None])
        assert b.replace(iter([(1, b"new")]), 60) == 1
        assert (b.applied_index, b.generation, b.get_many([7, 1])) == (60, 1, [None, b"new"])
    with open_rocks(path) as s:
        assert (s.bodies.applied_index, s.bodies.get_many([7, 1])) == (60, [None, b"new"])


def test_memory_bodies_lose_what_was_not_synced() -> None:
    b = MemoryBodies()
    b.write([(1, b"a")], [], 1)
    b.sync()
    b.write([(2, b"b")], [1], 2)
    b.lose_unsynced()
    assert (b.applied_index, b.get_many([1, 2])) == (1, [b"a", None])
    b.replace(iter([(9, b"z")]), 5)
    b.sync()
    b.write([(10, b"y")], [], 6)
    b.lose_unsynced()
    assert (b.applied_index, b.by_key) == (5, {9: b"z"})


WRITER = """
import sys
from node.storage import RocksStorage
from node.raft import Entry, EntryKind, HardState, Index, Ready, Term
s = RocksStorage.open(sys.argv[1], cluster_id="c", node_id=1, membership=(1, 2, 3))
i = s.bodies.applied_index
print("ready", flush=True)
while True:
    i += 1
    # The loop's order: the entry is durable (synced) first, then its bodies (not synced).
    e = Entry(Term(1), Index(i), EntryKind.NORMAL, b"e%d" % i)
    s.persist(Ready(HardState(Term(1), None, Index(i - 1)), (e,), None, (), (), (), None, (),
                    must_sync=True))
    s.bodies.write([(i, b"body %d " % i * 500)], [i - 10] if i > 10 else [], i)
"""


@pytest.mark.parametrize("seed", range(4))
def test_kill_9_at_any_instant_leaves_bodies_that_match_their_applied_index(
    tmp_path: Path, seed: int
) -> None:
    """A process writing log entries and their bodies is killed at a seeded instant; the
    reopened store holds exactly the bodies of its applied index (each write made bodies i
    and dropped i - 10), and the log reaches it."""
    rng = random.Random(seed)
    path = tmp_path / "db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for _ in range(2):  # killed twice: the second run goes on from the first one's store
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env,
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.05, 0.4))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        with open_rocks(path) as s:
            a = s.bodies.applied_index
            assert a > 0, "nothing was written before the kill"
            assert s.last_index() >= a
            expected = {i: b"body %d " % i * 500 for i in range(max(1, a - 9), a + 1)}
            got = s.bodies.get_many(list(range(1, a + 3)))
            assert {k: v for k, v in zip(range(1, a + 3), got, strict=True) if v} == expected
