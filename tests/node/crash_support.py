"""Support for tests/node/test_crash_battery.py: kill -9 of real node processes at seeded
instants, and what proves where a kill landed.

- `new_cluster`: a three-node cluster on 127.0.0.1 (ticks of 20 ms, ports from
  `PORT_RANGE`), its nodes importing this checkout (`PYTHONPATH`, whatever the venv's
  editable install points at); its `Launcher` stops every node it started, by pid.
- `Load`: producers sending `enqueue_batch`es of `BATCH` bodies of `BODY_BYTES` bytes, each
  body named by its deduplication id; a batch whose outcome is unknown is sent again with the
  same ids (as a producer must), so `confirmed` grows and nothing may be enqueued twice.
- `inspect_db`: a killed node's database read as the kill left it (RocksDB opened read-only,
  so nothing is replayed into it or cleaned up): its committed snapshot, the snapshot chunks
  staged above it (one being written, or received from the leader), the body generations.
- `converge`, `drain`, `check_delivery`: after a kill and a restart, every node at one
  machine index with one digest, then every confirmed message there exactly once.

Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import trio
from rocksdict import AccessType, Options, Rdict

from cluster.client import AsyncClient
from cluster.errors import RaftqError
from cluster.launcher import Launcher
from node import config as config_mod
from node import storage_format as fmt
from tests.client import test_launcher as launcher_tests

ROOT = Path(__file__).resolve().parents[2]
PORT_RANGE = (5100, 9800)
"""Base ports of these tests (client ports base+1.., peer ports base+101..): below the
kernel's ephemeral range, apart from the other real-process tests' ranges."""
BODY_BYTES = 1024
BATCH = 100
"""Messages per enqueue_batch (the most one may hold)."""
QUEUE = "q"


def observe(tag: str, **facts: Any) -> None:
    """Print one line of what a test saw (pytest -s shows them)."""
    print(f"OBSERVED {tag} " + json.dumps(facts, sort_keys=True, default=str), flush=True)


def new_cluster(tmp: Path, **overrides: Any) -> Launcher:
    """A three-node cluster in `tmp` (logs `tmp/n<id>.log`, data `tmp/n<id>/`), not started;
    the caller stops it (`Launcher.stop`, or use it as a context manager)."""
    base = launcher_tests.free_base_port(3, *PORT_RANGE)
    cfg = config_mod.local_cluster(tmp, 3, base)
    cfg = dataclasses.replace(cfg, tick_ms=20, **overrides)
    return Launcher(cfg, env={**os.environ, "PYTHONPATH": str(ROOT)})


def db_path(launcher: Launcher, nid: int) -> Path:
    return launcher.config.node(nid).data_dir / "raft"


def checkpoint_path(launcher: Launcher, nid: int) -> Path:
    """Where a node's body store keeps the frozen view of a snapshot being written: it exists
    from the start of the snapshot's machine part to the end of its bodies."""
    return db_path(launcher, nid).with_name("raft.checkpoint")


def children(pid: int) -> list[int]:
    """The child processes of `pid` now (a node forks one to write a snapshot's machine part,
    where it does so)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(p) for p in Path(task.path, "children").read_text().split()]
    return out


def dir_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns


class WalMeter:
    """Bytes a node's RocksDB appended to its write-ahead logs since the meter was made (a
    node writes a snapshot it receives, and then its bodies, there as they come); files that
    RocksDB deletes after a flush keep counting with the size they were last seen at."""

    def __init__(self, db: Path) -> None:
        self._db = db
        self._seen: dict[str, int] = {}
        self._base = self._sizes()
        self._seen.update(self._base)

    def _sizes(self) -> dict[str, int]:
        out = {}
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._db):
                if entry.name.endswith(".log") and entry.name[:-4].isdigit():
                    with contextlib.suppress(OSError):
                        out[entry.name] = entry.stat().st_size
        return out

    def grown(self) -> int:
        for name, size in self._sizes().items():
            self._seen[name] = max(size, self._seen.get(name, 0))
        return sum(size - self._base.get(name, 0) for name, size in self._seen.items())


_SNAPSHOT_LINE = re.compile(rb"snapshot at index (\d+) \((\d+) bytes\)")


def last_snapshot_logged(log: Path) -> tuple[int, int] | None:
    """(index, bytes) of the last snapshot a node's log says it took."""
    try:
        found = _SNAPSHOT_LINE.findall(log.read_bytes())
    except OSError:
        return None
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def log_has(log: Path, text: str, offset: int) -> bool:
    """Whether `text` is in `log` after byte `offset`."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            return text.encode() in f.read()
    except OSError:
        return False


# -- statuses ------------------------------------------------------------------------------

async def status(c: AsyncClient, launcher: Launcher, nid: int, *, timeout_s: float = 2.0,
                 digest: bool = False) -> dict[str, Any] | None:
    """The node's node_status, or None when it is not running or does not answer in time."""
    if not launcher.is_running(nid):
        return None
    try:
        return await c.node_status(launcher.addresses[nid], timeout_s=timeout_s, digest=digest)
    except RaftqError:
        return None


def brief(st: dict[str, Any] | None) -> dict[str, Any] | None:
    if st is None:
        return None
    keys = ("role", "term", "standing", "commit_index", "applied_index", "machine_index",
            "last_index", "first_index", "snapshot_index")
    return {k: st.get(k) for k in keys}


async def leader_of(c: AsyncClient, launcher: Launcher, timeout_s: float = 20.0) -> int:
    with trio.fail_after(timeout_s):
        while True:
            for nid in launcher.node_ids:
                st = await status(c, launcher, nid, timeout_s=0.5)
                if st is not None and st["role"] == "leader":
                    return nid
            await trio.sleep(0.05)


async def converge(c: AsyncClient, launcher: Launcher, *, timeout_s: float = 60.0
                   ) -> dict[int, dict[str, Any]]:
    """Send one fence message (so that every node applies after its restart's replay), then
    wait until every node runs as a voter at one machine index and one applied index; return
    their statuses with digests. Digests taken at one machine index must be equal: a
    difference fails at once."""
    fence = f"fence-{time.monotonic_ns()}"
    await c.send(QUEUE, fence.encode(), dedup_id=fence)
    last: dict[int, Any] = {}
    with trio.move_on_after(timeout_s):
        while True:
            st = {nid: await status(c, launcher, nid) for nid in launcher.node_ids}
            last = {nid: brief(s) for nid, s in st.items()}
            good = [s for s in st.values() if s is not None]
            if (len(good) == len(st) and {s["standing"] for s in good} == {"voter"}
                    and len({s["machine_index"] for s in good}) == 1
                    and len({s["applied_index"] for s in good}) == 1):
                dg = {nid: await status(c, launcher, nid, digest=True, timeout_s=10.0)
                      for nid in launcher.node_ids}
                if all(s is not None for s in dg.values()):
                    full = cast("dict[int, dict[str, Any]]", dg)
                    if len({s["machine_index"] for s in full.values()}) == 1:
                        digests = {nid: s["digest"] for nid, s in full.items()}
                        assert len(set(digests.values())) == 1, (
                            f"digests differ at machine index "
                            f"{next(iter(full.values()))['machine_index']}: {digests}")
                        return full
            await trio.sleep(0.1)
    raise AssertionError(f"nodes did not converge within {timeout_s} s: {last}")


async def wait_for(check: Any, timeout_s: float, what: str, step_s: float = 0.02) -> None:
    with trio.move_on_after(timeout_s):
        while not check():
            await trio.sleep(step_s)
        return
    raise AssertionError(f"{what}: not within {timeout_s} s")


# -- load ----------------------------------------------------------------------------------

def body_of(msg_id: str, rng: random.Random) -> bytes:
    head = msg_id.encode() + b"|"
    return head + rng.randbytes(BODY_BYTES - len(head))


def id_of(body: bytes) -> str:
    return body.split(b"|", 1)[0].decode()


@dataclass
class Load:
    """Producers of batches of `BATCH` messages (see the module docstring).

    `confirmed`: ids whose batch returned; `unknown`: ids of batches that still had no
    definite answer after `tries` attempts (they may or may not be in the queue);
    `confirm_times`: time.monotonic() of each batch confirmed.
    """

    client: AsyncClient
    tag: str
    rng: random.Random
    tries: int = 4
    confirmed: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    confirm_times: list[float] = field(default_factory=list)
    _next: int = 0

    def _batch(self) -> list[dict[str, Any]]:
        n, self._next = self._next, self._next + 1
        out = []
        for i in range(BATCH):
            mid = f"{self.tag}-{n}-{i}"
            out.append({"body": body_of(mid, self.rng), "dedup_id": mid})
        return out

    async def send_one(self) -> None:
        batch = self._batch()
        ids = [m["dedup_id"] for m in batch]
        for attempt in range(self.tries):
            try:
                results = await self.client.send_batch(QUEUE, batch)
            except RaftqError as exc:  # unknown outcome, or none reached in time: again
                self.errors.append(f"{ids[0]} try {attempt}: {type(exc).__name__}: {exc}")
                continue
            assert [r.dedup_id for r in results] == ids
            self.confirmed.update(ids)
            self.confirm_times.append(time.monotonic())
            return
        self.unknown.update(ids)

    async def run(self, batches: int, producers: int = 3,
                  stop: trio.Event | None = None) -> None:
        """Send `batches` batches from `producers` concurrent tasks (fewer when `stop` is set)."""
        left = [batches]

        async def producer() -> None:
            while left[0] > 0 and not (stop is not None and stop.is_set()):
                left[0] -= 1
                await self.send_one()

        async with trio.open_nursery() as nursery:
            for _ in range(producers):
                nursery.start_soon(producer)

    @property
    def messages(self) -> int:
        return len(self.confirmed)


async def drain(c: AsyncClient, *, consumers: int = 3, timeout_s: float = 120.0
                ) -> dict[str, set[int]]:
    """Receive and ack everything in the queue: id -> the message ids it was delivered as."""
    got: dict[str, set[int]] = {}
    deliveries = [0]

    async def consumer(done: trio.Event) -> None:
        while not done.is_set():
            try:
                msgs = await c.receive(QUEUE, max_messages=BATCH, visibility_timeout_ms=20_000)
            except RaftqError:
                await trio.sleep(0.1)
                continue
            if not msgs:
                stats = await c.queue_stats(QUEUE)
                if stats["messages"] == 0:
                    done.set()
                else:
                    await trio.sleep(0.2)
                continue
            for m in msgs:
                got.setdefault(id_of(m.body), set()).add(m.message_id)
            deliveries[0] += len(msgs)
            with contextlib.suppress(RaftqError):
                await c.ack(QUEUE, [m.receipt for m in msgs])

    with trio.fail_after(timeout_s):
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(consumers):
                nursery.start_soon(consumer, done)
    return got


def check_delivery(loads: list[Load], got: dict[str, set[int]]) -> dict[str, int]:
    """Every confirmed message arrived, nothing arrived that was not sent, and no id was
    enqueued twice (two message ids for one deduplication id)."""
    confirmed = set().union(*(ld.confirmed for ld in loads))
    unknown = set().union(*(ld.unknown for ld in loads))
    got = {k: v for k, v in got.items() if not k.startswith("fence-")}
    lost = confirmed - got.keys()
    assert not lost, f"{len(lost)} confirmed messages lost, e.g. {sorted(lost)[:5]}"
    unexpected = got.keys() - confirmed - unknown
    assert not unexpected, f"messages nobody sent: {sorted(unexpected)[:5]}"
    twice = {k: sorted(v) for k, v in got.items() if len(v) > 1}
    assert not twice, f"enqueued twice under one deduplication id: {dict(list(twice.items())[:5])}"
    return {"confirmed": len(confirmed), "unknown": len(unknown), "received": len(got),
            "unknown_received": len(got.keys() & unknown)}


# -- a killed node's database ---------------------------------------------------------------

@dataclass(frozen=True)
class DbState:
    """A database as a kill left it.

    Attributes:
        snapshot_index: the committed snapshot's index (0: none).
        chunk_indexes: the snapshot indexes with chunks stored (the committed one's and any
            staged: being written by this node, or received from the leader).
        staged: those above the committed snapshot: a snapshot not committed yet.
        generation, bodies_applied: the body store's live generation and its applied index.
        other_generations: body generations present besides the live one (a snapshot's bodies
            written for an install not switched in yet).
        last_index: the last log index (0: empty log).
    """

    snapshot_index: int
    chunk_indexes: tuple[int, ...]
    generation: int
    bodies_applied: int
    other_generations: tuple[int, ...]
    last_index: int

    @property
    def staged(self) -> tuple[int, ...]:
        return tuple(i for i in self.chunk_indexes if i > self.snapshot_index)


def _distinct_prefixes(family: Rdict, width: int, unpack: Any) -> list[int]:
    """The distinct leading numbers of `family`'s keys (one seek per distinct one)."""
    out = []
    it = family.iter()
    it.seek_to_first()
    while it.valid():
        first = unpack(it.key())[0]
        out.append(first)
        it.seek((first + 1).to_bytes(width, "big"))
    del it
    return out


def inspect_db(path: Path) -> DbState:
    """Read a stopped node's database without changing it (RocksDB read-only)."""
    names = (fmt.CF_META, fmt.CF_LOG, fmt.CF_SNAPSHOT, fmt.CF_BODIES)
    db = Rdict(str(path), Options(raw_mode=True),
               column_families={n: Options(raw_mode=True) for n in names},
               access_type=AccessType.read_only())
    try:
        cfs = {n: db.get_column_family(n) for n in names}
        raw = cfs[fmt.CF_META].get(fmt.K_SNAPSHOT)
        snap = 0
        if raw is not None:
            snap = fmt.decode_snapshot_record(fmt.unseal(fmt.K_SNAPSHOT, raw))[0].index
        raw = cfs[fmt.CF_META].get(fmt.K_BODIES)
        applied, generation = (0, 0)
        if raw is not None:
            applied, generation = fmt.decode_cbor(fmt.unseal(fmt.K_BODIES, raw))
        chunks = _distinct_prefixes(cfs[fmt.CF_SNAPSHOT], 8, fmt.CHUNK_KEY.unpack)
        gens = _distinct_prefixes(cfs[fmt.CF_BODIES], 4, fmt.BODY_KEY.unpack)
        it = cfs[fmt.CF_LOG].iter()
        it.seek_to_last()
        last = fmt.LOG_KEY.unpack(it.key())[0] if it.valid() else 0
        del it
        cfs.clear()
    finally:
        db.close()
    return DbState(snap, tuple(chunks), int(generation), int(applied),
                   tuple(g for g in gens if g != generation), last)
