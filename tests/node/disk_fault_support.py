"""Support for tests/node/test_disk_faults_e2e.py: real node processes on 127.0.0.1.

- `local_test_cluster`: a three-node cluster (fast ticks) whose ports come from 10000-19999, a
  range no other test uses (the other e2e tests draw from 20000-50000, in-process clusters from
  the kernel's ephemeral range); the `Launcher` stops every node it started, by pid.
- damage that proves itself: each function reads the file (or directory) before and after and
  returns what changed; an operation that changed nothing fails the test. The WAL structure
  comes from jepsen_like/disk.py (`parse_wal`, `newest_wal`); the cuts and flips are done here,
  at the offsets the tests ask for, and checked here.
- bounded waits: starting a damaged node and watching whether it refuses or runs, waiting for
  a node to be a caught-up voter, waiting for the whole cluster to converge.
- `Producer`: a background thread with its own client that keeps sending (bounded).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.client import Client
from cluster.errors import RaftqError
from cluster.launcher import Launcher
from jepsen_like import disk
from node import config as config_mod
from tests.client import test_launcher as launcher_tests

PORT_RANGE = (10000, 19800)
"""Base ports of these tests: client ports base+1.., peer ports base+101.."""


def free_base_port(nodes: int = 3) -> int:
    """A base port in PORT_RANGE whose client and peer ports are all free now."""
    return launcher_tests.free_base_port(nodes, *PORT_RANGE)


@contextlib.contextmanager
def local_test_cluster(tmp: Path, **overrides: Any) -> Iterator[Launcher]:
    """A three-node cluster in `tmp` (config `tmp/cluster.toml`, logs `tmp/n<id>.log`, data
    `tmp/n<id>/`), ticks of 20 ms; every node is stopped (by pid) on exit."""
    cfg = config_mod.local_cluster(tmp, 3, free_base_port())
    cfg = dataclasses.replace(cfg, tick_ms=20, **overrides)
    with Launcher(cfg) as launcher:
        yield launcher


def observe(tag: str, **facts: Any) -> None:
    """Print one line of what a test saw (run pytest with -s to read them)."""
    print(f"OBSERVED {tag} " + json.dumps(facts, sort_keys=True, default=str), flush=True)


# -- status --------------------------------------------------------------------------------

def status(c: Client, launcher: Launcher, nid: int, timeout_s: float = 1.0,
           digest: bool = False) -> dict[str, Any] | None:
    """The node's node_status, or None when it does not answer in time (or is not running)."""
    if not launcher.is_running(nid) or launcher.is_paused(nid):
        return None
    try:
        return c.node_status(launcher.addresses[nid], timeout_s=timeout_s, digest=digest)
    except RaftqError:
        return None


def brief(st: dict[str, Any] | None) -> dict[str, Any] | None:
    """The fields of a node_status worth printing."""
    if st is None:
        return None
    keys = ("node_id", "role", "term", "leader_id", "standing", "repair_reason",
            "commit_index", "applied_index", "last_index", "snapshot_index")
    out = {k: st.get(k) for k in keys}
    peers = st.get("peers") or {}
    if st.get("role") == "leader":
        out["peers"] = {p: {k: v.get(k) for k in ("match_index", "repairing", "repair_target")}
                        for p, v in peers.items()}
    return out


def find_leader(c: Client, launcher: Launcher) -> int | None:
    """The id of a running node that says it leads (None: none does now)."""
    for nid in launcher.node_ids:
        st = status(c, launcher, nid, timeout_s=0.5)
        if st is not None and st.get("role") == "leader":
            return nid
    return None


def wait_leader(c: Client, launcher: Launcher, timeout_s: float = 15.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        lid = find_leader(c, launcher)
        if lid is not None:
            return lid
        assert time.monotonic() < deadline, f"no leader within {timeout_s} s"
        time.sleep(0.05)


@dataclass
class CaughtUp:
    """A node seen as a caught-up voter: `after_s` from `since`; the statuses that showed it."""

    after_s: float
    leader: int
    follower_status: dict[str, Any]
    leader_status: dict[str, Any]
    standings_seen: list[str]


def wait_caught_up_voter(c: Client, launcher: Launcher, nid: int, *, since: float,
                         timeout_s: float) -> CaughtUp:
    """Wait until `nid` is a voter that applied at least what the leader had committed when
    asked just before it, and the leader no longer counts it as repairing.

    With writes going on, "equal to the leader's" is checked this way: the leader's status is
    read first, then the follower's; the follower's applied index must reach the leader's
    commit index (and its last index the leader's commit too).

    Raises:
        AssertionError: not within `timeout_s` of `since` (with the last statuses seen).
    """
    deadline = since + timeout_s
    standings: list[str] = []
    last: tuple[Any, Any] = (None, None)
    lid: int | None = None
    while True:
        if lid is None or lid == nid:
            lid = find_leader(c, launcher)
        ls = status(c, launcher, lid, timeout_s=0.5) if lid is not None and lid != nid else None
        fs = status(c, launcher, nid, timeout_s=0.5)
        if fs is not None and (not standings or standings[-1] != fs.get("standing")):
            standings.append(str(fs.get("standing")))
        last = (brief(ls), brief(fs))
        if ls is not None and ls.get("role") != "leader":
            lid = None
        elif ls is not None and fs is not None:
            peer = (ls.get("peers") or {}).get(str(nid), {})
            if (
                fs.get("standing") == "voter"
                and fs["applied_index"] >= ls["commit_index"]
                and fs["last_index"] >= ls["commit_index"]
                and not peer.get("repairing", True)
                and lid is not None
            ):
                return CaughtUp(time.monotonic() - since, lid, fs, ls, standings)
        assert time.monotonic() < deadline, (
            f"node {nid} not a caught-up voter within {timeout_s} s of its start; standings "
            f"seen {standings}; last leader status {last[0]}; last node status {last[1]}"
        )
        time.sleep(0.05)


def wait_converged(
    c: Client, launcher: Launcher, timeout_s: float = 20.0
) -> dict[int, dict[str, Any]]:
    """Wait until every configured node runs, is a voter, one leads, and all applied the same
    index with the same state digest."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = {nid: status(c, launcher, nid, timeout_s=1.0, digest=True)
              for nid in launcher.node_ids}
        good = [s for s in st.values() if s is not None]
        if (
            len(good) == len(st)
            and {s["standing"] for s in good} == {"voter"}
            and [s["role"] for s in good].count("leader") == 1
            and len({s["applied_index"] for s in good}) == 1
            and len({s["last_index"] for s in good}) == 1
            and len({s["digest"] for s in good}) == 1
        ):
            return {n: s for n, s in st.items() if s is not None}
        assert time.monotonic() < deadline, (
            f"cluster did not converge within {timeout_s} s: "
            f"{ {n: brief(s) for n, s in st.items()} }"
        )
        time.sleep(0.1)


# -- starting a damaged node ---------------------------------------------------------------

@dataclass
class StartOutcome:
    """What a (re)started node did: "refused" (it exited by itself) or "running" (it answers).

    Attributes:
        outcome: "refused" or "running".
        after_s: seconds from the start to the exit or the first answer.
        exit_code: the exit status when refused.
        refusal_lines: the `raftq node N: cannot start: ...` lines of this start's log.
        log_tail: the last lines of this start's log (refused) for the report.
        status: the first node_status (running).
        started_at: time.monotonic() of the start.
    """

    outcome: str
    after_s: float
    started_at: float
    exit_code: int | None = None
    refusal_lines: list[str] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)
    status: dict[str, Any] | None = None


def start_and_observe(c: Client, launcher: Launcher, nid: int,
                      timeout_s: float = 10.0) -> StartOutcome:
    """Start node `nid` and wait (bounded) until it exits or answers node_status."""
    log = launcher.log_path(nid)
    offset = log.stat().st_size if log.exists() else 0
    started = time.monotonic()
    launcher.start_node(nid)
    while True:
        code = launcher.exit_code(nid)
        if code is not None:
            text = log.read_bytes()[offset:].decode(errors="replace")
            lines = text.splitlines()
            prefix = f"raftq node {nid}: cannot start:"
            launcher.stop_node(nid)  # reaped; marks the exit as expected for the launcher
            return StartOutcome("refused", time.monotonic() - started, started, code,
                                [ln for ln in lines if ln.startswith(prefix)], lines[-5:])
        st = status(c, launcher, nid, timeout_s=0.5)
        if st is not None:
            return StartOutcome("running", time.monotonic() - started, started, status=st)
        assert time.monotonic() - started < timeout_s, (
            f"node {nid} neither exited nor answered within {timeout_s} s")
        time.sleep(0.05)


def check_refusal(launcher: Launcher, nid: int, out: StartOutcome) -> None:
    """A refusal must be exit status 2 within a few seconds, with one line naming the database."""
    db = launcher.config.node(nid).data_dir / "raft"
    assert out.exit_code == 2, f"node {nid} exited with {out.exit_code}: {out.log_tail}"
    assert out.after_s < 5.0, f"node {nid} took {out.after_s:.1f} s to refuse"
    assert len(out.refusal_lines) == 1, out.log_tail
    assert out.refusal_lines[0].startswith(
        f"raftq node {nid}: cannot start: database {db}"), out.refusal_lines


def kill(launcher: Launcher, nid: int) -> None:
    """SIGKILL a node (by pid) and check it is gone."""
    pid = launcher.pids[nid]
    assert launcher.kill(nid) == -signal.SIGKILL
    assert not Path(f"/proc/{pid}").exists() or _zombie_or_gone(pid)


def _zombie_or_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


# -- damage ----------------------------------------------------------------------------------

def _file_state(path: Path) -> tuple[int, bytes]:
    data = path.read_bytes()
    return len(data), data


def flip_wal_bit_at(data_dir: Path, fraction: float, rng: random.Random) -> dict[str, Any]:
    """Flip one bit of a record payload of the newest non-empty WAL, at about `fraction` of
    the file (the first payload byte at or after that offset). Returns what changed."""
    wal = disk.newest_wal(data_dir)
    size, before = _file_state(wal)
    parsed = disk.parse_wal(before)
    payloads = [r for r in parsed.records if r.length > 0]
    assert payloads, f"{wal}: no record with a payload ({parsed.problem})"
    target = int(size * fraction)
    rec = next((r for r in payloads if r.end > target), payloads[-1])
    offset = min(max(target, rec.payload_offset), rec.end - 1)
    bit = rng.randrange(8)
    with open(wal, "r+b") as f:
        f.seek(offset)
        f.write(bytes([before[offset] ^ (1 << bit)]))
        f.flush()
        os.fsync(f.fileno())
    size_after, after = _file_state(wal)
    diff = [i for i in range(size) if before[i] != after[i]]
    assert size_after == size and diff == [offset], "the bit flip did not land"
    last_record = payloads[-1] is rec
    return {"op": "flip_bit", "file": wal.name, "size": size, "offset": offset, "bit": bit,
            "byte_before": before[offset], "byte_after": after[offset],
            "record": rec.to_json(), "records": len(parsed.records),
            "record_is_last": last_record, "at_fraction": round(offset / size, 3)}


def truncate_wal_at(data_dir: Path, fraction: float) -> dict[str, Any]:
    """Cut the newest non-empty WAL at `fraction` of its size. Returns what changed."""
    wal = disk.newest_wal(data_dir)
    size, before = _file_state(wal)
    offset = int(size * fraction)
    assert 0 < offset < size
    parsed = disk.parse_wal(before)
    rec = parsed.record_at(offset)
    with open(wal, "r+b") as f:
        f.truncate(offset)
        f.flush()
        os.fsync(f.fileno())
    size_after, after = _file_state(wal)
    assert size_after == offset < size and after == before[:offset], "the cut did not land"
    return {"op": "truncate_wal", "file": wal.name, "size_before": size, "size_after": offset,
            "mid_record": rec is not None and rec.offset < offset,
            "whole_records_before": parsed.whole_records,
            "whole_records_after": sum(1 for e in parsed.logical_ends if e <= offset)}


def cut_wal_at_boundary(data_dir: Path, fraction: float) -> dict[str, Any]:
    """Cut the newest non-empty WAL right after the last whole logical record ending at or
    before `fraction` of it: whole records are gone, none is torn. Returns what changed."""
    wal = disk.newest_wal(data_dir)
    size, before = _file_state(wal)
    parsed = disk.parse_wal(before)
    kept = [e for e in parsed.logical_ends if e <= int(size * fraction)]
    assert kept, f"{wal}: no whole record ends before {fraction} of it"
    offset = kept[-1]
    assert offset < size
    with open(wal, "r+b") as f:
        f.truncate(offset)
        f.flush()
        os.fsync(f.fileno())
    size_after, after = _file_state(wal)
    assert size_after == offset and after == before[:offset], "the cut did not land"
    reparsed = disk.parse_wal(after)
    assert reparsed.problem is None and reparsed.whole_records == len(kept), reparsed.problem
    return {"op": "cut_wal_at_record_boundary", "file": wal.name, "size_before": size,
            "size_after": offset, "whole_records_before": parsed.whole_records,
            "whole_records_after": len(kept),
            "records_removed": parsed.whole_records - len(kept)}


def delete_wals(data_dir: Path) -> dict[str, Any]:
    """Delete every WAL file of the database. Returns what was deleted."""
    db = data_dir / "raft"
    wals = sorted(p for p in db.glob("*.log") if p.name[:-4].isdigit())
    sizes = {p.name: p.stat().st_size for p in wals}
    assert sum(sizes.values()) > 0, f"{db}: no WAL holds any byte"
    for p in wals:
        p.unlink()
    assert not any(p.exists() for p in wals)
    return {"op": "delete_wal", "files": sizes, "bytes_deleted": sum(sizes.values())}


def move_data_dir_away(data_dir: Path) -> dict[str, Any]:
    """The operator procedure (and the "wipe" fault): move the data directory away."""
    assert data_dir.is_dir()
    n = 1
    while (dest := data_dir.with_name(f"{data_dir.name}.lost-{n}")).exists():
        n += 1
    files = sum(len(names) for _, _, names in os.walk(data_dir))
    shutil.move(str(data_dir), str(dest))
    assert not data_dir.exists() and (dest / "raft").is_dir()
    return {"op": "wipe", "moved_to": dest.name, "files": files}


# -- messages ------------------------------------------------------------------------------

def drain(c: Client, queue: str, timeout_s: float = 30.0) -> dict[bytes, int]:
    """Receive and ack everything in `queue`: body -> times received.

    Leases are short (5 s): a receive whose reply was lost leaves its messages leased, and they
    come back; the drain ends when the queue holds no message at all (queue_stats).
    """
    got: dict[bytes, int] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        assert time.monotonic() < deadline, (
            f"queue {queue} not drained within {timeout_s} s: {c.queue_stats(queue)}")
        try:
            msgs = c.receive(queue, max_messages=100, visibility_timeout_ms=5000)
        except RaftqError:
            time.sleep(0.1)
            continue
        if not msgs:
            stats = c.queue_stats(queue)
            if stats["messages"] == 0:
                return got
            time.sleep(0.2)
            continue
        for m in msgs:
            got[m.body] = got.get(m.body, 0) + 1
        c.ack(queue, [m.receipt for m in msgs])


class Producer:
    """A thread with its own client sending `<tag>-<n>` bodies to `queue` until stopped.

    Bounded: at most `max_sends` sends, each with the client's deadline (`timeout_s`).
    `confirmed` holds the bodies whose send returned; `unknown` those whose send raised (they
    may or may not be in the queue).
    """

    def __init__(self, servers: list[str], queue: str, tag: str, *, interval_s: float = 0.01,
                 max_sends: int = 5000, timeout_s: float = 10.0) -> None:
        self.servers = servers
        self.queue = queue
        self.tag = tag
        self.interval_s = interval_s
        self.max_sends = max_sends
        self.timeout_s = timeout_s
        self.confirmed: list[bytes] = []
        self.unknown: list[bytes] = []
        self.errors: list[str] = []
        self.confirm_times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"producer-{tag}", daemon=True)

    def start(self) -> Producer:
        self._thread.start()
        return self

    def _run(self) -> None:
        with Client(self.servers, timeout_s=self.timeout_s, connect_timeout_s=0.5) as c:
            for i in range(self.max_sends):
                if self._stop.is_set():
                    return
                body = f"{self.tag}-{i}".encode()
                try:
                    c.send(self.queue, body, dedup_id=body.decode())
                except Exception as exc:  # noqa: BLE001 - recorded, judged by the test
                    self.unknown.append(body)
                    self.errors.append(f"{body.decode()}: {type(exc).__name__}: {exc}")
                else:
                    self.confirmed.append(body)
                    self.confirm_times.append(time.monotonic())
                time.sleep(self.interval_s)

    def wait_confirmed(self, count: int, timeout_s: float) -> None:
        """Wait until `count` sends in all were confirmed."""
        deadline = time.monotonic() + timeout_s
        while len(self.confirmed) < count:
            assert self._thread.is_alive(), f"producer ended early: {self.errors[-3:]}"
            assert time.monotonic() < deadline, (
                f"only {len(self.confirmed)} of {count} sends confirmed within {timeout_s} s; "
                f"errors {self.errors[-3:]}")
            time.sleep(0.02)

    def stop(self, timeout_s: float = 20.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "producer did not stop"
