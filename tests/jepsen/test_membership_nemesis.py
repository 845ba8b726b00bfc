"""The membership nemesis on a stand-in cluster (no processes): what each change does, what it
records, when it is verified, and the `membership` section of the verdict."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from cluster.errors import LearnerBehind, UnknownMember
from cluster.members import Member, MemberChange, Members
from jepsen_like.faults import KINDS, Fault, FaultRecord
from jepsen_like.history import History
from jepsen_like.membership_nemesis import (
    MembershipFaultError,
    MembershipNemesis,
    check_membership,
    parse_variant,
    spare_ids_needed,
)
from jepsen_like.nemesis import Nemesis, make_schedule
from jepsen_like.procs import NodeProcess
from jepsen_like.runner import RunOptions, RunOutcome
from node.config import ClusterConfig, NodeConfig


def _entry(tmp: Path, nid: int, initial: bool = True) -> NodeConfig:
    return NodeConfig(nid, ("127.0.0.1", 7100 + nid), ("127.0.0.1", 7000 + nid),
                      tmp / f"n{nid}", dial={9: ("127.0.0.1", 9000 + nid)}, initial=initial)


class FakeCluster:
    """Node processes (pids are numbers) and the cluster's membership as `members` shows it:
    a joining node is admitted at its start, and promotes itself (unless `--learner`, or
    `self_promote` is off) at the second `members` read after that."""

    def __init__(self, tmp: Path, n: int = 3) -> None:
        self.tmp = tmp
        self.cfg = ClusterConfig("c", b"s" * 16, {i: _entry(tmp, i) for i in range(1, n + 1)})
        self.nodes = {i: NodeProcess(i, pids=[1000 + i]) for i in self.cfg.nodes}
        self.live = {i: 1000 + i for i in self.nodes}
        self.retired: set[int] = set()
        self.joining: dict[int, bool] = {}
        self.exits: dict[int, int] = {}
        self.launcher = SimpleNamespace(exit_code=lambda nid: self.exits.get(nid))
        self.voters = list(self.cfg.nodes)
        self.learners: list[int] = []
        self.leader: int | None = 1
        self.max_id = n
        self.index = 0
        self.next_pid = 2000
        self.self_promote = True
        self.refuse_join = False
        self.pending: dict[int, int] = {}  # learner -> members reads until it promotes itself
        self.retargeted: dict[int, tuple[str, int]] = {}
        self.calls: list[str] = []

    # -- NodeProcs --------------------------------------------------------------------------
    @property
    def config(self) -> ClusterConfig:
        return self.cfg

    @property
    def member_ids(self) -> list[int]:
        return sorted(set(self.nodes) - self.retired)

    def running(self, nid: int) -> bool:
        return nid in self.live

    def paused(self, nid: int) -> bool:
        return False

    def add_node(self, node: NodeConfig, *, learner: bool = False) -> None:
        self.cfg = replace(self.cfg, nodes={**self.cfg.nodes, node.id: node})
        self.nodes.setdefault(node.id, NodeProcess(node.id))
        self.joining[node.id] = learner

    def retire(self, nid: int) -> None:
        self.retired.add(nid)
        self.cfg = replace(self.cfg, nodes={k: v for k, v in self.cfg.nodes.items() if k != nid})

    async def start(self, nid: int, *, may_refuse: bool = False) -> int:
        assert nid not in self.retired
        self.next_pid += 1
        pid = self.next_pid
        self.nodes[nid].pids.append(pid)
        self.calls.append(f"start {nid}")
        if nid in self.joining and self.refuse_join:
            self.exits[nid] = 2
            return pid
        self.live[nid] = pid
        if nid in self.joining and nid not in self.voters + self.learners:
            self.learners.append(nid)
            self.max_id = max(self.max_id, nid)
            self.index += 1
            if self.self_promote and not self.joining[nid]:
                self.pending[nid] = 2
        return pid

    async def kill(self, nid: int) -> tuple[int | None, int | None]:
        pid = self.live.pop(nid, None)
        if pid is None:
            return None, None
        self.nodes[nid].killed.add(pid)
        self.calls.append(f"kill {nid}")
        if nid == self.leader:
            self.leader = next((v for v in self.voters if v in self.live), None)
        return pid, -9

    async def stop(self, nid: int) -> tuple[int | None, int | None]:
        pid = self.live.pop(nid, None)
        self.calls.append(f"stop {nid}")
        return pid, (0 if pid is not None else None)

    def output(self, nid: int, pid: int) -> str:
        return ""

    # -- the client -------------------------------------------------------------------------
    async def members(self, *, timeout_s: float | None = None) -> Members:
        for nid in list(self.pending):
            self.pending[nid] -= 1
            if self.pending[nid] <= 0:
                del self.pending[nid]
                self._promote(nid)
        if self.leader is None or self.leader not in self.live:
            self.leader = next((v for v in self.voters if v in self.live), None)
        rows = []
        for nid in sorted(self.voters + self.learners):
            nc = self.cfg.nodes.get(nid)
            client = f"{nc.client_addr[0]}:{nc.client_addr[1]}" if nc else None
            rows.append(Member(nid, "voter" if nid in self.voters else "learner", None, client,
                               10, 0, "replicate", nid in self.live, False, nid == self.leader))
        return Members(self.leader, 1, 10, self.index, self.max_id, tuple(rows))

    def _promote(self, nid: int) -> None:
        self.learners.remove(nid)
        self.voters.append(nid)
        self.index += 1

    async def promote_member(self, nid: int, *, timeout_s: float | None = None) -> MemberChange:
        if nid not in self.live:
            raise LearnerBehind(None, "not answering")
        self.calls.append(f"promote {nid}")
        self._promote(nid)
        return MemberChange(nid, self.index)

    async def remove_member(self, nid: int, *, timeout_s: float | None = None) -> MemberChange:
        if nid not in self.voters + self.learners:
            raise UnknownMember(None, f"node {nid} is not a member")
        self.calls.append(f"remove {nid}")
        (self.voters if nid in self.voters else self.learners).remove(nid)
        if nid == self.leader:  # it hands over first
            self.leader = next(v for v in self.voters if v in self.live)
        self.index += 1
        return MemberChange(nid, self.index)

    async def find_leader(self) -> int | None:
        return self.leader if self.leader in self.live else None

    # -- ProxyMesh --------------------------------------------------------------------------
    def retarget(self, dst: int, target: tuple[str, int]) -> None:
        self.retargeted[dst] = target


def _nemesis(c: FakeCluster, spare: int = 4) -> MembershipNemesis:
    ids = range(len(c.cfg.nodes) + 1, len(c.cfg.nodes) + 1 + spare)
    nem = MembershipNemesis(c, c, c, {i: _entry(c.tmp, i, initial=False) for i in ids},  # type: ignore[arg-type]
                            c.find_leader, trio.current_time, initial_size=3)
    nem.poll_s = 0.01
    nem.down_s = (0.05, 0.05)
    return nem


async def _inject(nem: MembershipNemesis, variant: str, seed: int = 1) -> FaultRecord:
    rec = FaultRecord(0, "membership", variant)
    rec.start_s = trio.current_time()
    heal = await nem.start(Fault("membership", variant, 0.0, 0.1, seed=seed), rec,
                           random.Random(seed))
    await heal()
    return rec


def test_variants_and_spare_ids() -> None:
    assert parse_variant("add") == ("add", False)
    assert parse_variant("remove-leader+kill-leader") == ("remove-leader", True)
    for bad in ("grow", "add+kill", "add+kill-leader+kill-leader"):
        with pytest.raises(ValueError, match="unknown membership variant"):
            parse_variant(bad)
    sched = make_schedule(["membership", "kill"], 60, random.Random(4))
    assert {f.variant for f in sched if f.kind == "membership"} <= set(KINDS["membership"])
    assert spare_ids_needed(sched) == sum(1 for f in sched if f.kind == "membership") > 0


async def test_add_records_the_members_before_and_after(tmp_path: Path) -> None:
    c = FakeCluster(tmp_path)
    rec = await _inject(_nemesis(c), "add")
    ev = rec.evidence
    assert rec.verified and rec.nodes == [4] and ev["added"] == 4
    assert ev["members_before"]["voters"] == [1, 2, 3] and ev["members_before"]["max_id"] == 3
    assert ev["members_after"]["voters"] == [1, 2, 3, 4]
    assert ev["changed"] == {"added": [4], "removed": [], "promoted": []}
    assert ev["promoted_by"] == "node" and "self_promotion_missing" not in ev
    assert c.cfg.nodes[4].dial == {9: ("127.0.0.1", 9004)}  # the run's proxies for id 4
    assert c.joining == {}  # a voter now: restarted without --join
    assert [s["what"] for s in ev["steps"]][1:4] == [
        "started node 4 (pid 2001) with --join", "node 4 admitted",
        "node 4 is a caught-up voter"]


async def test_remove_leader_hands_over_then_stops_it(tmp_path: Path) -> None:
    c = FakeCluster(tmp_path, 4)
    rec = await _inject(_nemesis(c), "remove-leader")
    ev = rec.evidence
    assert rec.verified and ev["removed"] == 1 and ev["removed_was_leader"]
    assert ev["members_after"]["voters"] == [2, 3, 4] and ev["members_after"]["leader"] == 2
    assert ev["stopped"] == {"pid": 1001, "exit_code": 0}
    assert c.retired == {1} and 1 not in c.cfg.nodes and not c.running(1)
    assert c.calls.index("remove 1") < c.calls.index("stop 1")  # removed, then stopped


async def test_replace_takes_the_old_addresses(tmp_path: Path) -> None:
    c = FakeCluster(tmp_path)
    (tmp_path / "n2" / "raft").mkdir(parents=True)
    (tmp_path / "n2" / "raft" / "CURRENT").write_text("x")
    nem = _nemesis(c)
    rec = None
    for seed in range(20):  # a seed that picks node 2
        c = FakeCluster(tmp_path)
        nem = _nemesis(c)
        if random.Random(seed).choice([1, 2, 3]) == 2:
            rec = await _inject(nem, "replace", seed=seed)
            break
    assert rec is not None and rec.verified, rec
    ev = rec.evidence
    assert rec.nodes == [2, 4] and ev["removed"] == 2 and ev["added"] == 4
    assert ev["stopped"]["exit_code"] == -9  # lost: SIGKILL
    assert ev["at_client_addr"] == "127.0.0.1:7002"
    assert ev["members_after"]["client_addrs"]["4"] == "127.0.0.1:7002"
    assert c.cfg.nodes[4].raft_addr == ("127.0.0.1", 7102)
    assert c.cfg.nodes[4].data_dir == tmp_path / "n2" and 2 not in c.cfg.nodes
    assert c.retargeted == {4: ("127.0.0.1", 7102)}  # the proxies towards 4 reach it there
    assert Path(ev["moved_aside"]["moved_to"], "raft", "CURRENT").exists()
    assert ev["changed"] == {"added": [4], "removed": [2], "promoted": []}


async def test_the_size_stays_between_n_and_n_plus_two(tmp_path: Path) -> None:
    c = FakeCluster(tmp_path, 5)
    rec = await _inject(_nemesis(c), "add")
    assert rec.verified and rec.evidence["change"] == "remove" and "add with 5 voters" in rec.note
    c = FakeCluster(tmp_path, 3)
    rec = await _inject(_nemesis(c), "remove")
    assert rec.verified and rec.evidence["change"] == "add"
    assert rec.evidence["requested"] == "remove"


async def test_the_leader_is_killed_between_admission_and_promotion(tmp_path: Path) -> None:
    c = FakeCluster(tmp_path)
    rec = await _inject(_nemesis(c), "add+kill-leader")
    ev = rec.evidence
    k = ev["leader_kill"]
    assert rec.verified and k["node"] == 1 and k["exit_code"] == -9
    assert ev["admitted_at_s"] <= k["at_s"] <= ev["voter_at_s"]
    assert "restarted_pid" in k and c.running(1)  # kill -9, then started again
    assert ev["promoted_by"] == "nemesis" and "promote 4" in c.calls
    assert c.calls.index("kill 1") < c.calls.index("promote 4")


async def test_the_leader_is_killed_as_the_removal_is_sent(tmp_path: Path) -> None:
    c = FakeCluster(tmp_path, 4)
    rec = await _inject(_nemesis(c), "remove+kill-leader", seed=3)
    ev = rec.evidence
    k = ev["leader_kill"]
    assert rec.verified and k["exit_code"] == -9 and k["at_s"] <= ev["removed_at_s"]
    assert ev["removed"] != k["node"] and "restarted_pid" in k


async def test_a_node_that_does_not_promote_itself_is_promoted(tmp_path: Path) -> None:
    c = FakeCluster(tmp_path)
    c.self_promote = False
    nem = _nemesis(c)
    nem.self_promote_s = 0.05
    rec = await _inject(nem, "add")
    assert rec.verified and rec.evidence["promoted_by"] == "nemesis"
    assert rec.evidence["self_promotion_missing"]


async def test_a_join_that_exits_is_not_verified(tmp_path: Path) -> None:
    c = FakeCluster(tmp_path)
    c.refuse_join = True
    nem = Nemesis(c, c, c.find_leader, trio.current_time,  # type: ignore[arg-type]
                  membership=_nemesis(c))
    await nem.run([Fault("membership", "add", 0.0, 0.01, seed=1)], trio.current_time())
    (rec,) = nem.records
    assert not rec.verified and "node 4 exited with status 2" in rec.note


async def test_removed_nodes_are_no_targets_any_more(tmp_path: Path) -> None:
    c = FakeCluster(tmp_path, 4)
    nem = Nemesis(c, c, c.find_leader, trio.current_time,  # type: ignore[arg-type]
                  membership=_nemesis(c))
    await nem.run([Fault("membership", "remove", 0.0, 0.01, seed=2)], trio.current_time())
    (gone,) = nem.records[0].nodes
    assert gone not in nem.node_ids and len(nem.node_ids) == 3
    await nem.run([Fault("kill", "all", 0.0, 0.01)], trio.current_time())
    assert nem.records[1].nodes == nem.node_ids and not c.running(gone)  # not restarted


def _outcome(faults: list[dict[str, Any]], final: dict[str, Any] | None,
             asked: list[int]) -> RunOutcome:
    out = RunOutcome(RunOptions(out_dir=Path("x")), History(), faults=faults)
    out.final_members = final
    out.final_statuses = [{"node_id": i} for i in asked]
    return out


def _fault(verified: bool, before: list[int], after: list[int]) -> dict[str, Any]:
    return {"index": 0, "kind": "membership", "variant": "add", "verified": verified,
            "note": "", "evidence": {"change": "add", "added": 4,
                                     "members_before": {"voters": before},
                                     "members_after": {"voters": after}}}


def test_check_membership() -> None:
    final = {"voters": [1, 2, 3, 4], "learners": []}
    ok = check_membership(_outcome([_fault(True, [1, 2, 3], [1, 2, 3, 4])], final, [1, 2, 3, 4]))
    assert ok["valid"] and ok["summary"] == "[1, 2, 3] -> [1, 2, 3, 4]"
    nothing = check_membership(_outcome([_fault(False, [1, 2, 3], [1, 2, 3])], final,
                                        [1, 2, 3, 4]))
    assert not nothing["valid"] and "proves nothing" in nothing["summary"]
    none = check_membership(_outcome([], final, [1, 2, 3, 4]))
    assert not none["valid"] and "no membership fault changed the members" in none["summary"]
    wrong = check_membership(_outcome([_fault(True, [1, 2, 3], [1, 2, 3, 4])], final, [1, 2, 3]))
    assert not wrong["valid"] and "are not the nodes the final checks asked" in wrong["summary"]
    learner = check_membership(_outcome([_fault(True, [1, 2, 3], [1, 2, 3])],
                                        {"voters": [1, 2, 3], "learners": [4]}, [1, 2, 3, 4]))
    assert not learner["valid"] and "learners left at the end: [4]" in learner["summary"]


async def test_a_change_that_does_not_finish_is_bounded(tmp_path: Path) -> None:
    c = FakeCluster(tmp_path)
    c.self_promote = False
    nem = _nemesis(c)
    nem.self_promote_s = 100
    nem.change_timeout_s = 0.3
    with pytest.raises(MembershipFaultError, match="did not finish within 0.3 s"):
        await _inject(nem, "add")
