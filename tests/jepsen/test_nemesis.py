"""Faults as data: schedules drawn from a seed, and the grudges of the partition variants."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio

from jepsen_like import disk
from jepsen_like.generator import Generator, Workload
from jepsen_like.nemesis import DISK_OPS, KINDS, Fault, Nemesis, grudge_for, make_schedule
from jepsen_like.procs import NodeProcess


def test_schedule_is_a_function_of_the_seed() -> None:
    kinds = ["kill", "pause", "partition", "restart-all"]
    a = make_schedule(kinds, 60, random.Random(7))
    b = make_schedule(kinds, 60, random.Random(7))
    c = make_schedule(kinds, 60, random.Random(8))
    assert a == b and a != c
    assert {f.kind for f in a} == set(kinds)
    for f in a:
        assert f.variant in KINDS[f.kind]
        assert f.at_s >= 2.0 and f.at_s + f.duration_s <= 58.0
    starts = [f.at_s for f in a]
    assert starts == sorted(starts)
    for x, y in zip(a, a[1:], strict=False):
        assert x.at_s + x.duration_s < y.at_s  # one after another


def test_short_runs_still_get_a_fault() -> None:
    for kind in KINDS:
        sched = make_schedule([kind], 8, random.Random(1))
        assert len(sched) >= 1, kind


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown nemesis"):
        make_schedule(["flood"], 10, random.Random(1))


def _hears(grudge: dict[int, set[int]], nodes: list[int]) -> dict[int, set[int]]:
    return {i: set(nodes) - grudge[i] for i in nodes}


@pytest.mark.parametrize("n", [3, 5])
def test_ring_every_node_hears_a_different_majority(n: int) -> None:
    nodes = list(range(1, n + 1))
    grudge, _ = grudge_for("ring", nodes, None, random.Random(3))
    hears = _hears(grudge, nodes)
    for i in nodes:
        assert i in hears[i] and len(hears[i]) == n // 2 + 1
    assert len({frozenset(h) for h in hears.values()}) == n
    if n == 5:  # a real ring: links are symmetric, each node has two neighbours
        for i in nodes:
            for j in hears[i] - {i}:
                assert i in hears[j]


def test_halves_bridge_link_leader() -> None:
    nodes = [1, 2, 3, 4, 5]
    rng = random.Random(5)
    grudge, half = grudge_for("halves", nodes, None, rng)
    other = set(nodes) - set(half)
    for i in half:
        assert grudge[i] == other
    for i in other:
        assert grudge[i] == set(half)
    grudge, half = grudge_for("halves-leader", nodes, 3, rng)
    assert 3 in half and len(half) == 2 and grudge[3] == set(nodes) - set(half)
    grudge, (bridge,) = grudge_for("bridge", nodes, None, rng)
    assert grudge[bridge] == set()
    assert all(bridge not in g for g in grudge.values())
    assert sum(len(g) for g in grudge.values()) == 8  # 2 x 2 nodes cut both ways
    grudge, pair = grudge_for("link", nodes, None, rng)
    assert sum(len(g) for g in grudge.values()) == 2 and grudge[pair[0]] == {pair[1]}
    grudge, (x, y) = grudge_for("one-way", nodes, None, rng)
    assert grudge[y] == {x} and sum(len(g) for g in grudge.values()) == 1
    grudge, (lead,) = grudge_for("leader", nodes, 4, rng)
    assert lead == 4 and grudge[4] == {1, 2, 3, 5}
    assert all(grudge[i] == {4} for i in nodes if i != 4)


def test_generator_is_deterministic_per_process() -> None:
    g1, g2 = Generator(Workload(), 11), Generator(Workload(), 11)
    a = [g1.enqueue(0) for _ in range(20)]
    b = [g2.enqueue(0) for _ in range(20)]
    assert a == b
    assert len({op.value for op in a}) == 20
    assert all(op.dedup_id == f"v{op.value}" for op in a)
    assert all((op.group is not None) == (op.queue == "jqf") for op in a)


# -- disk faults, on stand-in processes ---------------------------------------------------------

class FakeProcs:
    """Node processes without processes: pids are numbers, data directories are real."""

    def __init__(self, tmp: Path, n: int, refuse: bool = False) -> None:
        self.nodes = {i: NodeProcess(i, pids=[1000 + i]) for i in range(1, n + 1)}
        self.live = {i: 1000 + i for i in self.nodes}
        self.exited: dict[int, int] = {}
        self.lines: dict[int, str] = {}
        self.refuse = refuse
        self.tmp = tmp
        self.next_pid = 2000
        self.applied = dict.fromkeys(self.nodes, 50)
        for i in self.nodes:
            (self.data_dir(i) / "raft").mkdir(parents=True)
            (self.data_dir(i) / "raft" / "CURRENT").write_text("MANIFEST-000005\n")

    def data_dir(self, nid: int) -> Path:
        return self.tmp / f"n{nid}"

    @property
    def member_ids(self) -> list[int]:
        return sorted(self.nodes)

    def running(self, nid: int) -> bool:
        return nid in self.live

    def paused(self, nid: int) -> bool:
        return False

    def pid(self, nid: int) -> int | None:
        return self.live.get(nid)

    async def kill(self, nid: int) -> tuple[int | None, int | None]:
        pid = self.live.pop(nid, None)
        if pid is None:
            return None, None
        self.nodes[nid].killed.add(pid)
        return pid, -9

    async def start(self, nid: int, *, may_refuse: bool = False) -> int:
        self.next_pid += 1
        pid = self.next_pid
        self.nodes[nid].pids.append(pid)
        if may_refuse and self.refuse:
            self.exited[pid] = 2
            self.lines[pid] = f"raftq node {nid}: cannot start: database {nid}: bad record"
        else:
            self.live[nid] = pid
            self.applied[nid] = 0  # it starts over and must be repaired
            (self.data_dir(nid) / "raft").mkdir(parents=True, exist_ok=True)  # as a node does
        return pid

    def exit_code(self, nid: int, pid: int) -> int | None:
        return self.exited.get(pid)

    def refusal_line(self, nid: int, pid: int) -> str | None:
        return self.lines.get(pid)

    def output(self, nid: int, pid: int) -> str:
        return self.lines.get(pid, "n1 raftq.node WARNING lost state: repairing") + "\n"

    async def ensure_running(self) -> list[int]:
        return []

    async def status(self, nid: int) -> dict[str, Any] | None:
        if nid not in self.live:
            return None
        return {"node_id": nid, "pid": self.live[nid], "role": "follower", "commit_index": 50,
                "last_index": 50, "applied_index": self.applied[nid]}


def _nemesis(procs: FakeProcs) -> Nemesis:
    return Nemesis(procs, None, _no_leader, trio.current_time,  # type: ignore[arg-type]
                   status_of=procs.status)


async def _no_leader() -> int | None:
    return None


async def test_disk_loss_kills_wipes_and_starts_the_node(tmp_path: Path) -> None:
    procs = FakeProcs(tmp_path, 3)
    nem = _nemesis(procs)
    await nem.run([Fault("disk-loss", "wipe", 0.0, 0.01, seed=3)], trio.current_time())
    (rec,) = nem.records
    (nid,) = rec.nodes
    assert rec.verified and rec.pids == [1000 + nid]
    ev = rec.evidence
    assert ev["exit_codes"] == {str(nid): -9} and ev["op"] == "wipe"
    assert ev["damage"]["op"] == "wipe" and ev["damage"]["data_dir"] == str(procs.data_dir(nid))
    assert Path(ev["damage"]["moved_to"], "raft", "CURRENT").exists()
    assert not (procs.data_dir(nid) / "raft" / "CURRENT").exists()  # started afresh
    assert ev["outcome"] == "running" and ev["restarted_pids"] == [procs.live[nid]]
    assert ev["running_at_heal"] and ev["mark_index"] == 50
    assert ev["node_warnings"] == ["n1 raftq.node WARNING lost state: repairing"]
    assert list(nem.damaged) == [nid]  # applied 0 < 50: not repaired yet
    procs.applied[nid] = 60
    assert await nem.refresh_repairs() == []
    assert "repair_seen_after_s" in rec.evidence


async def test_disk_faults_never_damage_a_majority(tmp_path: Path) -> None:
    procs = FakeProcs(tmp_path, 3)
    nem = _nemesis(procs)
    nem.repair_wait_s = 0.3
    await nem.run([Fault("disk-loss", "wipe", 0.0, 0.01, seed=3),
                   Fault("disk-loss", "wipe", 0.05, 0.01, seed=4)], trio.current_time())
    first, second = nem.records
    assert first.verified and second.verified
    assert second.nodes == first.nodes  # the only node that may be damaged: the same one
    assert second.evidence["damaged_not_repaired"] == first.nodes
    # That node down and not repaired: no other node may be damaged.
    await procs.kill(first.nodes[0])
    await nem.run([Fault("disk-loss", "wipe", 0.0, 0.01, seed=5)], trio.current_time())
    third = nem.records[-1]
    assert not third.verified and third.nodes == [] and "not injected" in third.note
    assert sorted(procs.live) == sorted(set(procs.nodes) - set(first.nodes))


async def test_five_nodes_allow_two_damaged(tmp_path: Path) -> None:
    procs = FakeProcs(tmp_path, 5)
    nem = _nemesis(procs)
    nem.repair_wait_s = 0.2
    faults = [Fault("disk-loss", "wipe", 0.05 * k, 0.01, seed=k) for k in range(6)]
    await nem.run(faults, trio.current_time())
    assert all(r.verified for r in nem.records)
    assert len({r.nodes[0] for r in nem.records}) == 2
    assert nem.damage_budget == 2


async def test_one_node_allows_no_disk_fault(tmp_path: Path) -> None:
    procs = FakeProcs(tmp_path, 1)
    nem = _nemesis(procs)
    await nem.run([Fault("disk-loss", "wipe", 0.0, 0.01)], trio.current_time())
    assert not nem.records[0].verified and procs.running(1)


async def test_a_node_that_refuses_its_data_is_wiped_and_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    procs = FakeProcs(tmp_path, 3, refuse=True)
    done: list[Path] = []

    def fake_flip(d: Path, rng: random.Random) -> disk.Damage:
        done.append(d)
        return disk.BitFlip("flip_bit", str(d), target="wal", file=str(d / "raft/9.log"),
                            offset=7, bit=1, byte_before=0, byte_after=2)

    monkeypatch.setitem(DISK_OPS, "flip-wal", fake_flip)
    nem = _nemesis(procs)
    await nem.run([Fault("disk-corruption", "flip-wal", 0.0, 0.01, seed=1)], trio.current_time())
    (rec,) = nem.records
    (nid,) = rec.nodes
    ev = rec.evidence
    assert rec.verified and done == [procs.data_dir(nid)]
    assert ev["damage"]["op"] == "flip_bit" and ev["damage"]["offset"] == 7
    assert ev["outcome"] == "refused"
    assert ev["refusal"] == f"raftq node {nid}: cannot start: database {nid}: bad record"
    assert ev["start"]["exit_code"] == 2
    assert Path(ev["operator_wipe"]["moved_to"]).name == f"n{nid}.lost-1"
    assert ev["outcome_after_wipe"] == "running"
    refused, restarted = ev["restarted_pids"]
    assert refused in procs.exited and procs.live[nid] == restarted


async def test_a_corruption_with_nothing_to_damage_does_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    procs = FakeProcs(tmp_path, 3)

    def no_sst(d: Path, rng: random.Random) -> disk.Damage:
        raise disk.NothingToDamage(f"{d}: no SST file")

    def cut(d: Path, rng: random.Random) -> disk.Damage:
        return disk.WalCut("cut_wal_at_record_boundary", str(d), size_before=10, size_after=5)

    monkeypatch.setitem(DISK_OPS, "flip-sst", no_sst)
    for op in ("flip-wal", "truncate-wal", "cut-wal", "delete-wal"):
        monkeypatch.setitem(DISK_OPS, op, cut)
    nem = _nemesis(procs)
    await nem.run([Fault("disk-corruption", "flip-sst", 0.0, 0.01, seed=2)], trio.current_time())
    (rec,) = nem.records
    assert rec.verified and rec.evidence["op"] != "flip-sst"
    assert "no SST" in rec.evidence["skipped_ops"]["flip-sst"]
    assert rec.evidence["outcome"] == "running" and "nothing to damage" in rec.note
