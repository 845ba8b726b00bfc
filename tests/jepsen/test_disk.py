"""Disk damage operations (`jepsen_like.disk`) on real RocksDB databases.

Each database is written by a child process that puts thousands of synced values (random
sizes, so that some WAL records are split into FIRST/LAST fragments), flushes once halfway (an
SST), and exits without closing, as a SIGKILLed node does: its WAL keeps the second half.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from jepsen_like import disk

pytestmark = pytest.mark.timeout(60)

IN_SST = 1500
IN_WAL = 1500

_WRITER = textwrap.dedent("""
    import os, random, sys
    import rocksdict
    path, flush = sys.argv[1], sys.argv[2] == "1"
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    db = rocksdict.Rdict(path, options)
    w = rocksdict.WriteOptions()
    w.sync = True
    rng = random.Random(7)
    for i in range({n_sst}):
        db.put(b"k%06d" % i, rng.randbytes(rng.randrange(10, 3000)), w)
    if flush:
        db.flush()
    for i in range({n_sst}, {n_sst} + {n_wal}):
        db.put(b"k%06d" % i, rng.randbytes(rng.randrange(10, 3000)), w)
    if len(sys.argv) > 3:  # hold the database open until stdin closes
        print("ready", flush=True)
        sys.stdin.read()
    os._exit(0)  # no close: the WAL keeps what was written after the flush
""").format(n_sst=IN_SST, n_wal=IN_WAL)


def _write_db(path: Path, flush: bool = True) -> None:
    subprocess.run([sys.executable, "-c", _WRITER, str(path), "1" if flush else "0"],
                   check=True, timeout=60)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node-like data directory: `<dir>/raft` is the database."""
    d = tmp_path_factory.mktemp("disk") / "n1"
    _write_db(d / "raft")
    return d


@pytest.fixture
def data_dir(template: Path, tmp_path: Path) -> Path:
    d = tmp_path / "n1"
    shutil.copytree(template, d)
    return d


def _keys(db: Path) -> list[bytes]:
    """Every key of the database, as RocksDB recovers it (point-in-time WAL recovery)."""
    import rocksdict

    rd = rocksdict.Rdict(str(db), rocksdict.Options(raw_mode=True))
    try:
        return list(rd.keys())
    finally:
        rd.close()


def _diff(a: bytes, b: bytes) -> list[int]:
    assert len(a) == len(b)
    return [i for i in range(len(a)) if a[i] != b[i]]


def test_a_fresh_wal_parses_into_whole_records(data_dir: Path) -> None:
    wal = disk.newest_wal(data_dir)
    parsed = disk.parse_wal(wal)
    assert parsed.problem is None and parsed.end == parsed.size == wal.stat().st_size
    assert parsed.whole_records == IN_WAL  # one put, one logical record
    types = Counter(r.type_name for r in parsed.records)
    assert types["FIRST"] > 10 and types["FIRST"] == types["LAST"]
    assert parsed.logical_ends[-1] == parsed.size
    assert disk.database_dir(data_dir) == data_dir / "raft"
    assert [p.name for p in disk.sst_files(data_dir)] != []
    region = disk.sst_data_region(disk.sst_files(data_dir)[0])
    assert region.source == "rocksdb.data.size"
    assert 0 < region.end < disk.sst_files(data_dir)[0].stat().st_size


def test_flip_bit_in_a_wal_record_payload(data_dir: Path) -> None:
    wal = disk.newest_wal(data_dir)
    before = wal.read_bytes()
    rec = disk.flip_bit(data_dir, random.Random(3), "wal")
    after = wal.read_bytes()
    assert rec.op == "flip_bit" and rec.target == "wal" and rec.file == str(wal)
    assert _diff(before, after) == [rec.offset]
    assert before[rec.offset] == rec.byte_before and after[rec.offset] == rec.byte_after
    assert rec.byte_before ^ rec.byte_after == 1 << rec.bit
    assert rec.record is not None
    payload = rec.record["offset"] + rec.record["header_size"]
    assert rec.region == [payload, payload + rec.record["length"]]
    assert payload <= rec.offset < payload + rec.record["length"]  # not in a header
    reparsed = disk.parse_wal(wal)
    assert reparsed.problem is not None and "checksum mismatch" in reparsed.problem
    assert reparsed.problem_offset == rec.record["offset"]
    json.dumps(rec.to_json())


def test_flip_bit_in_the_data_blocks_of_an_sst(data_dir: Path) -> None:
    rec = disk.flip_bit(data_dir, random.Random(4), "sst")
    sst = Path(rec.file)
    assert sst.suffix == ".sst" and rec.region_source == "rocksdb.data.size"
    assert rec.region[0] <= rec.offset < rec.region[1] < rec.file_size
    assert sst.read_bytes()[rec.offset] == rec.byte_after
    assert rec.byte_before ^ rec.byte_after == 1 << rec.bit
    import rocksdict

    rd = rocksdict.Rdict(str(data_dir / "raft"), rocksdict.Options(raw_mode=True))
    errors = []
    try:  # the damaged block fails its checksum when read (iteration just stops there)
        for i in range(IN_SST):
            try:
                rd.get(b"k%06d" % i)
            except Exception as exc:
                errors.append(str(exc))
    finally:
        rd.close()
    assert errors and all("Corruption" in e and sst.name in e for e in errors)


def test_flip_bit_in_an_sst_needs_an_sst(tmp_path: Path) -> None:
    d = tmp_path / "n1"
    _write_db(d / "raft", flush=False)
    assert disk.sst_files(d) == []
    with pytest.raises(disk.NothingToDamage, match="no SST"):
        disk.flip_bit(d, random.Random(1), "sst")
    with pytest.raises(ValueError, match="target"):
        disk.flip_bit(d, random.Random(1), "manifest")


def test_truncate_wal_at_a_random_offset(data_dir: Path) -> None:
    wal = disk.newest_wal(data_dir)
    size = wal.stat().st_size
    rec = disk.truncate_wal(data_dir, random.Random(5))
    assert rec.file == str(wal) and rec.size_before == size
    assert wal.stat().st_size == rec.size_after == rec.offset and 0 < rec.offset < size
    assert rec.removed_bytes == size - rec.offset
    reparsed = disk.parse_wal(wal)
    if rec.mid_record:  # a torn record at the end
        assert reparsed.problem is not None
        assert rec.record is not None and rec.record["offset"] < rec.offset
    assert reparsed.whole_records == rec.whole_records_after < rec.whole_records_before
    # RocksDB recovers every whole record before the cut, nothing after it.
    assert len(_keys(data_dir / "raft")) == IN_SST + rec.whole_records_after


def test_truncate_wal_at_a_fraction(data_dir: Path) -> None:
    size = disk.newest_wal(data_dir).stat().st_size
    rec = disk.truncate_wal(data_dir, random.Random(5), fraction=0.5)
    assert rec.offset == size // 2
    with pytest.raises(ValueError):
        disk.truncate_wal(data_dir, random.Random(5), fraction=1.0)


def test_cut_wal_at_record_boundary_leaves_only_whole_records(data_dir: Path) -> None:
    wal = disk.newest_wal(data_dir)
    size = wal.stat().st_size
    rec = disk.cut_wal_at_record_boundary(data_dir, random.Random(6), 0.5)
    assert rec.limit == int(size * 0.5) and rec.offset <= rec.limit
    assert wal.stat().st_size == rec.size_after == rec.offset
    assert 0 < rec.whole_records_after < rec.whole_records_before == IN_WAL
    assert rec.records_removed == IN_WAL - rec.whole_records_after
    reparsed = disk.parse_wal(wal)
    assert reparsed.problem is None and reparsed.end == reparsed.size == rec.offset
    assert reparsed.whole_records == rec.whole_records_after
    assert reparsed.logical_ends[-1] == rec.offset
    assert len(_keys(data_dir / "raft")) == IN_SST + rec.whole_records_after


def test_cut_inside_a_fragmented_record_keeps_none_of_it(data_dir: Path) -> None:
    wal = disk.newest_wal(data_dir)
    parsed = disk.parse_wal(wal)
    first = next(r for r in parsed.records[len(parsed.records) // 2 :] if r.type_name == "FIRST")
    last = next(r for r in parsed.records if r.offset > first.offset and r.type_name == "LAST")
    fraction = (last.offset + 3) / parsed.size  # inside the record's LAST fragment header
    rec = disk.cut_wal_at_record_boundary(data_dir, random.Random(6), fraction)
    assert rec.offset <= first.offset
    assert rec.offset == max(e for e in parsed.logical_ends if e <= first.offset)
    reparsed = disk.parse_wal(wal)
    assert reparsed.problem is None
    assert all(r.end <= rec.offset for r in reparsed.records)


def test_delete_wal(data_dir: Path) -> None:
    wals = disk.wal_files(data_dir)
    sizes = {str(p): p.stat().st_size for p in wals}
    rec = disk.delete_wal(data_dir)
    assert {f["file"]: f["size"] for f in rec.files} == sizes
    assert rec.bytes_deleted == sum(sizes.values()) > 0
    assert disk.wal_files(data_dir) == []
    with pytest.raises(disk.NothingToDamage, match="no WAL"):
        disk.delete_wal(data_dir)
    with pytest.raises(disk.NothingToDamage, match="no WAL"):
        disk.truncate_wal(data_dir, random.Random(1))
    assert len(_keys(data_dir / "raft")) == IN_SST  # what the WAL held is gone


def test_wipe_moves_the_data_directory_away(data_dir: Path) -> None:
    files = sum(1 for p in data_dir.rglob("*") if p.is_file())
    rec = disk.wipe(data_dir)
    assert not data_dir.exists()
    moved = Path(rec.moved_to)
    assert moved == data_dir.with_name("n1.lost-1") and (moved / "raft" / "CURRENT").exists()
    assert rec.files == files and rec.total_bytes > 0
    data_dir.mkdir()
    (data_dir / "x").write_text("again")
    assert Path(disk.wipe(data_dir).moved_to).name == "n1.lost-2"
    with pytest.raises(disk.NothingToDamage, match="does not exist"):
        disk.wipe(data_dir)
    with pytest.raises(disk.NothingToDamage, match="no RocksDB"):
        disk.flip_bit(data_dir, random.Random(1))
    json.dumps(rec.to_json())


def test_a_database_in_use_is_not_touched(tmp_path: Path) -> None:
    d = tmp_path / "n1"
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(d / "raft"), "0", "hold"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        wal = disk.newest_wal(d)
        before = wal.read_bytes()
        for op in (lambda: disk.flip_bit(d, random.Random(1)),
                   lambda: disk.truncate_wal(d, random.Random(1)),
                   lambda: disk.delete_wal(d), lambda: disk.wipe(d)):
            with pytest.raises(disk.DatabaseInUse, match="in use"):
                op()
        assert wal.read_bytes() == before
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    disk.truncate_wal(d, random.Random(1))  # stopped: now it may


def test_crc32c() -> None:
    assert disk.crc32c(b"123456789") == 0xE3069283
    assert disk.crc32c(b"") == 0
