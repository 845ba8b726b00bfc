"""Issue 12's real-process proofs, judged by jepsen_like's checker (nothing acknowledged lost,
nothing unexpected, every duplicate explained, the final members' digests equal):

(a) a cluster grown 3 -> 5 -> 3 while producers and consumers run, the leader SIGKILLed (and
    started again) during each change: the `membership-grow-shrink` scenario of
    jepsen_like/scenarios.py, whose membership nemesis makes the changes;
(b) a node replaced with `raftq cluster replace-node` catches up, and the cluster then survives
    the loss of another original node;
(c) grown to five with `raftq cluster add-node`, the cluster survives the loss of two of the
    original three.

(b) and (c) run against a local cluster of `raftq cluster up --detach` (its data directory in
the test's tmp_path, its tick 20 ms), with jepsen_like's workload and checker attached to it
(`jepsen_like.external.ExternalRun`) and the operator's commands run as processes, as an
operator runs them. Nodes killed stay down through the drain (so the survivors alone hand out
every message), then `raftq cluster up --detach` starts them again for the final comparison.

Real processes on 127.0.0.1 only; every wait is bounded; every process is stopped by its pid
(`stop_recorded` checks each pid's command line first). The short forms run in CI (each under
about 20 s); `-m extended` runs longer ones.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from cluster.launcher import RecordedNode, process_matches, read_pids, stop_recorded, write_config
from jepsen_like import report
from jepsen_like import scenarios as sc
from jepsen_like.external import ExternalRun
from jepsen_like.faults import FaultRecord
from jepsen_like.runner import RunOptions, RunOutcome, run_sync
from node.config import local_cluster
from tests.client.test_launcher import ROOT, alive, free_base_port

pytestmark = [pytest.mark.slow, pytest.mark.jepsen, pytest.mark.timeout(240)]

LONG = pytest.mark.extended


def _seed(default: int) -> int:
    return int(os.environ.get("RAFTQ_JEPSEN_SEED", default))


def _explain(out: RunOutcome) -> str:
    chk = out.check
    parts = [f"seed {out.options.seed}, failed: {chk.get('failed_checks')}, error {out.error}"]
    for name in chk.get("failed_checks", []):
        parts.append(f"{name}: {json.dumps(chk[name], default=str)[:2000]}")
    parts.append(f"results in {out.options.out_dir}")
    return "\n".join(parts)


def _assert_nothing_lost(out: RunOutcome) -> None:
    assert out.valid, _explain(out)
    tq = out.check["total_queue"]
    assert tq["lost_count"] == 0 and tq["unexpected_count"] == 0
    assert tq["acknowledged_count"] > 300, tq["acknowledged_count"]


# -- (a) ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("rounds", [1, pytest.param(3, marks=[LONG])])
def test_grown_3_5_3_under_load_with_the_leader_killed_in_each_change(
    tmp_path: Path, rounds: int
) -> None:
    """3 -> 4 -> 5 -> 4 -> 3 voters (`rounds` times over), the leader SIGKILLed while each
    change is in flight and started again; the checker's verdict over the whole history is
    valid, and the final digests are equal on the final members (removed nodes excluded)."""
    opts = sc.options_for("membership-grow-shrink", tmp_path / "a", seed=_seed(41),
                          progress=False)
    faults = list(opts.schedule or [])
    script = [replace(f, at_s=f.at_s + k * 10.0, seed=f.seed + 10 * k)
              for k in range(rounds) for f in faults]
    out = run_sync(replace(opts, plots=False, schedule=script,
                           duration_s=opts.duration_s + (rounds - 1) * 10.0))
    _assert_nothing_lost(out)
    sec = out.check["membership_grow_shrink"]
    if rounds == 1:
        assert sec["voters"] == [3, 4, 5, 4, 3] and sec["leader_kills_inside_changes"] == 4
    changes = out.check["membership"]["changes"]
    assert [len(c["voters_after"]) for c in changes] == [4, 5, 4, 3] * rounds
    assert all(c["leader_kill"] is not None for c in changes)
    removed = {r for f in out.faults for r in f["evidence"]["changed"]["removed"]}
    final = {int(s["node_id"]) for s in out.final_statuses or []}
    assert len(final) == 3 and not final & removed
    for f in out.faults:  # every change was seen by the clients, under load
        assert f["evidence"]["clients_told"] > 0


# -- a local cluster of `raftq cluster up --detach` ------------------------------------------------

class LocalCluster:
    """A cluster of `raftq cluster up --detach` in `data`; `raftq ...` commands run as
    processes. Every pid it ever saw in pids.json is stopped at the end."""

    def __init__(self, tmp: Path, nodes: int = 3, spare: int = 3) -> None:
        self.data = tmp / "cluster"
        self.base = free_base_port(nodes=nodes + spare)
        cfg = local_cluster(self.data, nodes, self.base)
        write_config(replace(cfg, tick_ms=20), self.data / "cluster.toml")
        self.seen: dict[int, RecordedNode] = {}
        self.commands: list[dict[str, Any]] = []

    def addr(self, nid: int) -> str:
        return f"127.0.0.1:{self.base + nid}"

    async def raftq(self, *args: str, timeout_s: float = 90.0) -> dict[str, Any]:
        """Run `raftq ARGS` (`python -m cluster`, as the `raftq` script does); returns its
        command, exit status, output and duration."""
        env = {k: v for k, v in os.environ.items() if k != "RAFTQ_SERVERS"}
        t = time.monotonic()
        with trio.fail_after(timeout_s):
            r = await trio.run_process([sys.executable, "-m", "cluster", *args], cwd=ROOT,
                                       env=env, capture_stdout=True, capture_stderr=True,
                                       check=False)
        done = {"command": ["raftq", *args], "exit_code": r.returncode,
                "stdout": r.stdout.decode(errors="replace"),
                "stderr": r.stderr.decode(errors="replace"),
                "took_s": round(time.monotonic() - t, 2)}
        self.commands.append(done)
        self.pids()
        return done

    async def up(self) -> None:
        r = await self.raftq("cluster", "up", "--detach", "--data-dir", str(self.data))
        assert r["exit_code"] == 0, r

    def pids(self) -> dict[int, int]:
        now = read_pids(self.data / "pids.json")
        self.seen.update({n.pid: n for n in now})
        return {n.node_id: n.pid for n in now}

    async def kill9(self, rec: FaultRecord, nodes: list[int]) -> None:
        """SIGKILL the nodes (by their recorded pids, after checking each pid's command line)
        and wait until they are gone; the record gets the pids and the evidence."""
        pids = self.pids()
        for nid in nodes:
            pid = pids[nid]
            assert process_matches(pid, self.data / "cluster.toml", nid)
            os.kill(pid, signal.SIGKILL)
            rec.pids.append(pid)
        t = time.monotonic()
        with trio.move_on_after(10):
            while any(alive(p) for p in rec.pids):
                await trio.sleep(0.02)
        gone = not any(alive(p) for p in rec.pids)
        rec.evidence.update(signal="SIGKILL", gone=gone,
                            gone_after_s=round(time.monotonic() - t, 3))
        rec.verified = gone

    def stop_all(self) -> None:
        self.pids()
        stop_recorded([n for n in self.seen.values() if alive(n.pid)], timeout_s=5)


def _opts(out_dir: Path, seed: int) -> RunOptions:
    return RunOptions(out_dir=out_dir, duration_s=0, rate=200, concurrency=6, seed=seed,
                      progress=False, plots=False, op_timeout_s=4.0)


async def _heal(cluster: LocalCluster, run: ExternalRun, rec: FaultRecord) -> None:
    """Start the nodes that are down (`raftq cluster up --detach`), closing the kill's fault."""
    await cluster.up()
    run.close_fault(rec)
    rec.evidence["restarted_by"] = "raftq cluster up --detach"


def _finish(run: ExternalRun, out: RunOutcome) -> None:
    out.timings_s["total"] = sum(out.timings_s.values())
    report.write_all(out, plots=False)
    _assert_nothing_lost(out)
    assert out.check["membership"]["valid"], out.check["membership"]


# -- (b) ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("after_s", [0.0, pytest.param(8.0, marks=LONG)])
async def test_replaced_node_catches_up_and_the_cluster_survives_losing_another(
    tmp_path: Path, after_s: float
) -> None:
    """A follower is lost (SIGKILL) and replaced with `raftq cluster replace-node` while the
    workload runs; then another original node is killed: the two voters left (the other
    original and the replacement) go on committing, which they can only do if the
    replacement holds the log; nothing acknowledged is lost."""
    cluster = LocalCluster(tmp_path)
    lost: dict[str, FaultRecord] = {}

    async def during(run: ExternalRun) -> None:
        await run.wait_enqueues(100)
        leader = (await run.read_members()).leader_id
        victim = next(n for n in (1, 2, 3) if n != leader)
        async with run.fault("kill", "one", [victim]) as rec:
            await cluster.kill9(rec, [victim])
        async with run.membership_change("replace-node") as rec:
            r = await cluster.raftq("cluster", "replace-node", str(victim), "--data-dir",
                                    str(cluster.data), "--timeout", "60")
            rec.evidence["command"] = r
            rec.verified = (r["exit_code"] == 0 and f"node {victim} replaced by node 4 at "
                            f"{cluster.addr(victim)}" in r["stdout"])
        view = await run.read_members()
        assert [m.id for m in view.voters] == sorted({1, 2, 3, 4} - {victim})
        assert view.get(4) is not None and view.get(4).client_addr == cluster.addr(victim)
        await run.wait_enqueues(100)
        originals = [n for n in (1, 2, 3) if n != victim]
        other = view.leader_id if view.leader_id in originals else originals[0]
        rec = run.open_fault("kill", "another-original", [other])
        lost["rec"] = rec
        await cluster.kill9(rec, [other])
        rec.evidence["enqueues_ok_after"] = await run.wait_enqueues(200, timeout_s=20)
        await trio.sleep(after_s)

    try:
        await cluster.up()
        run = ExternalRun(_opts(tmp_path / "run", _seed(42)), [cluster.addr(i) for i in (1, 2, 3)])
        out = await run.execute_script(during, lambda r: _heal(cluster, r, lost["rec"]))
        _finish(run, out)
    finally:
        cluster.stop_all()
    rep = next(f for f in out.faults if f["kind"] == "membership")
    assert rep["verified"] and rep["evidence"]["changed"]["added"] == [4]
    assert lost["rec"].evidence["enqueues_ok_after"] >= 200  # committed without `other`
    assert sorted(int(s["node_id"]) for s in out.final_statuses or []) == sorted(
        {1, 2, 3, 4} - set(rep["evidence"]["changed"]["removed"]))
    assert out.check["consistency"]["valid"]  # the replacement's digest equals the others'


# -- (c) ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("after_s", [0.0, pytest.param(8.0, marks=LONG)])
async def test_grown_to_five_survives_losing_two_of_the_original_three(
    tmp_path: Path, after_s: float
) -> None:
    """Two nodes added with `raftq cluster add-node` while the workload runs; then two of the
    original three are killed at once (the leader among them): the three left (one original,
    the two new nodes) go on committing and hand out every acknowledged message."""
    cluster = LocalCluster(tmp_path)
    lost: dict[str, FaultRecord] = {}

    async def during(run: ExternalRun) -> None:
        await run.wait_enqueues(100)
        for new in (4, 5):
            async with run.membership_change("add-node") as rec:
                r = await cluster.raftq("cluster", "add-node", "--data-dir", str(cluster.data),
                                        "--timeout", "60")
                rec.evidence["command"] = r
                rec.verified = (r["exit_code"] == 0 and f"node {new} added as a voter at "
                                f"{cluster.addr(new)}" in r["stdout"])
        view = await run.read_members()
        assert [m.id for m in view.voters] == [1, 2, 3, 4, 5]
        await run.wait_enqueues(50)
        leader = view.leader_id
        victims = ([leader] if leader in (1, 2, 3) else []) + [1, 2, 3]
        victims = list(dict.fromkeys(victims))[:2]
        rec = run.open_fault("kill", "two-originals", victims)
        lost["rec"] = rec
        rec.evidence["leader_among_them"] = leader in victims
        await cluster.kill9(rec, victims)
        rec.evidence["enqueues_ok_after"] = await run.wait_enqueues(200, timeout_s=20)
        await trio.sleep(after_s)

    try:
        await cluster.up()
        run = ExternalRun(_opts(tmp_path / "run", _seed(43)), [cluster.addr(i) for i in (1, 2, 3)])
        out = await run.execute_script(during, lambda r: _heal(cluster, r, lost["rec"]))
        _finish(run, out)
    finally:
        cluster.stop_all()
    adds = [f for f in out.faults if f["kind"] == "membership"]
    assert [f["evidence"]["changed"]["added"] for f in adds] == [[4], [5]]
    kill = lost["rec"]
    assert kill.verified and len(kill.nodes) == 2 and set(kill.nodes) <= {1, 2, 3}
    assert kill.evidence["enqueues_ok_after"] >= 200
    assert sorted(int(s["node_id"]) for s in out.final_statuses or []) == [1, 2, 3, 4, 5]
