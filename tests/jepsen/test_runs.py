"""Short real runs: each nemesis, and every named scenario, against real node processes.

Budget: the whole file takes about 4 to 5 minutes on 2 cores (the two disk runs about 1
minute of it). To keep it there, two runs
carry two scenarios each (their workloads and checks merged): `consumer-crash` with
`stale-ack`, and the `restart-all` nemesis with the `restart-all` and `poison` scenarios. Each
scenario also runs alone by name (`scripts/jepsen --scenario NAME`); `scripts/test -m extended
tests/jepsen` runs every one of them alone here too (not part of the default suite). `RAFTQ_JEPSEN_SEED` changes the
seed (default: fixed per test, so a failure can be replayed).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from jepsen_like import scenarios as sc
from jepsen_like.generator import Workload
from jepsen_like.nemesis import Fault
from jepsen_like.runner import RunOptions, RunOutcome, run_sync

pytestmark = [pytest.mark.slow, pytest.mark.jepsen, pytest.mark.timeout(180)]

NEMESIS_S = 20.0


def _seed(default: int) -> int:
    return int(os.environ.get("RAFTQ_JEPSEN_SEED", default))


def _explain(out: RunOutcome) -> str:
    chk = out.check
    parts = [f"seed {out.options.seed}, failed: {chk.get('failed_checks')}, error {out.error}"]
    for name in chk.get("failed_checks", []):
        sec = chk[name]
        parts.append(f"{name}: {json.dumps(sec, default=str)[:2000]}")
    parts.append(f"results in {out.options.out_dir}")
    return "\n".join(parts)


def _run_valid(opts: RunOptions) -> RunOutcome:
    # Sync tests, each run in its own trio loop (`run_sync`).
    out = run_sync(opts)
    assert out.valid, _explain(out)
    assert (opts.out_dir / "results.json").exists()
    assert (opts.out_dir / "history.jsonl").exists()
    return out


@pytest.mark.parametrize("kind,seed", [("kill", 11), ("pause", 12), ("partition", 13)])
def test_nemesis_short_run(tmp_path: Path, kind: str, seed: int) -> None:
    out = _run_valid(RunOptions(
        out_dir=tmp_path / kind, nemeses=(kind,), duration_s=NEMESIS_S, seed=_seed(seed),
        progress=False, plots=kind == "kill",
    ))
    kinds = {f["kind"] for f in out.faults}
    assert kinds == {kind}
    assert all(f["verified"] for f in out.faults)
    assert out.check["total_queue"]["acknowledged_count"] > 500
    if kind == "kill":
        res = json.loads((tmp_path / kind / "results.json").read_text())
        assert res["valid"] and res["plots"] == ["latency.png", "throughput.png"]
        assert (tmp_path / kind / "latency.png").stat().st_size > 10_000


def test_restart_all_nemesis_with_restart_all_and_poison_scenarios(tmp_path: Path) -> None:
    """The restart-all nemesis, with the poison workload; checks of both scenarios."""
    out = _run_valid(RunOptions(
        out_dir=tmp_path / "restart-all", nemeses=("restart-all",), duration_s=NEMESIS_S,
        seed=_seed(14), progress=False, plots=False, workload=sc.POISON_WORKLOAD,
        tick_ms=30, extra_checks=(sc.check_restart_all, sc.check_poison),
    ))
    assert len(out.faults) >= 3
    assert out.check["poison"]["poison_sent"] > 0
    assert out.check["delivery_limit"]["dead_letters_by_reason"].get("delivery_limit", 0) > 0


def _assert_disk_fault(f: dict[str, Any], out_dir: Path) -> None:
    """The records show the damage and the restart (and the operator's wipe on a refusal)."""
    ev = f["evidence"]
    (nid,) = f["nodes"]
    assert f["verified"], f
    assert ev["exit_codes"] == {str(nid): -9}
    d = ev["damage"]
    assert d["data_dir"] == str(out_dir / "data" / f"n{nid}")
    if d["op"] == "flip_bit":
        assert d["byte_before"] ^ d["byte_after"] == 1 << d["bit"]
        assert d["region"][0] <= d["offset"] < d["region"][1] <= d["file_size"]
    elif d["op"] in ("truncate_wal", "cut_wal_at_record_boundary"):
        assert d["size_after"] == d["offset"] < d["size_before"]
    elif d["op"] == "delete_wal":
        assert d["files"] and d["bytes_deleted"] > 0
    else:
        assert d["op"] == "wipe" and d["files"] > 0
        assert Path(d["moved_to"]).is_dir()  # kept for post-mortem
    assert ev["restarted_pids"] and ev["running_at_heal"]
    assert ev["outcome"] in ("running", "refused"), ev
    if ev["outcome"] == "refused":
        assert re.match(rf"raftq node {nid}: cannot start: .*database", ev["refusal"])
        assert ev["start"]["exit_code"] == 2
        assert Path(ev["operator_wipe"]["moved_to"]).is_dir()
        assert len(ev["restarted_pids"]) == 2 and ev["outcome_after_wipe"] == "running"
    else:
        assert ev["start"]["status"]["commit_index"] >= 0  # it answered node_status
    # Never more than one node of three damaged and not yet repaired.
    assert set(ev.get("damaged_not_repaired", [])) <= {nid}


def test_disk_corruption_run(tmp_path: Path) -> None:
    """Every corruption once (the SST flip on a node restarted before, so it has SSTs)."""
    def corrupt(variant: str, at_s: float, seed: int, nodes_from: int | None = None) -> Fault:
        return Fault("disk-corruption", variant, at_s, 1.5, nodes_from=nodes_from,
                     seed=_seed(seed) * 10 + seed)

    schedule = [corrupt("flip-wal", 2, 1), corrupt("truncate-wal", 7, 2),
                corrupt("flip-sst", 12, 3, nodes_from=1), corrupt("cut-wal", 17, 4),
                corrupt("delete-wal", 22, 5)]
    out = _run_valid(RunOptions(
        out_dir=tmp_path / "dc", schedule=schedule, duration_s=26.0, seed=_seed(15),
        progress=False, plots=False,
    ))
    assert [f["variant"] for f in out.faults] == [f.variant for f in schedule]
    for f in out.faults:
        _assert_disk_fault(f, tmp_path / "dc")
    ops = [f["evidence"]["op"] for f in out.faults]
    assert len(set(ops)) >= 4, ops  # flip-sst may fall back if its node had no SST
    outcomes = Counter(f["evidence"]["outcome"] for f in out.faults)
    print(f"disk-corruption outcomes: {dict(outcomes)}; ops {ops}")


def test_disk_loss_run(tmp_path: Path) -> None:
    out = _run_valid(RunOptions(
        out_dir=tmp_path / "dl", nemeses=("disk-loss",), duration_s=NEMESIS_S, seed=_seed(16),
        progress=False, plots=False,
    ))
    assert out.faults and {(f["kind"], f["variant"]) for f in out.faults} == {("disk-loss", "wipe")}
    for f in out.faults:
        _assert_disk_fault(f, tmp_path / "dl")
        assert f["evidence"]["outcome"] == "running"
    assert out.check["total_queue"]["acknowledged_count"] > 500


def _assert_membership_faults(out: RunOutcome) -> None:
    """Every membership fault changed the members as its record says, and the final checks
    asked exactly the final members."""
    fs = [f for f in out.faults if f["kind"] == "membership"]
    assert fs and all(f["verified"] for f in fs), fs
    for f in fs:
        ev = f["evidence"]
        before = set(ev["members_before"]["voters"])
        after = set(ev["members_after"]["voters"])
        assert after - before == set(ev["changed"]["added"])
        assert before - after == set(ev["changed"]["removed"])
        if ev["change"] in ("add", "replace"):
            assert ev["added"] in after and ev["added"] not in before
        if ev["change"] != "add":
            assert ev["removed"] in before and ev["removed"] not in after
            assert str(ev["removed"]) in out.pids  # it ran, and was stopped
    final = out.check["membership"]["final_members"]
    assert final["voters"] == fs[-1]["evidence"]["members_after"]["voters"]
    assert sorted(int(s["node_id"]) for s in out.final_statuses or []) == final["voters"]
    assert out.check["consistency"]["valid"] and out.check["membership"]["valid"]


def test_membership_nemesis_short_run(tmp_path: Path) -> None:
    """Nodes join, leave and are replaced while the workload runs (seed 10 draws an add, a
    replace and a removal); the final checks are over the final members."""
    out = _run_valid(RunOptions(
        out_dir=tmp_path / "membership", nemeses=("membership",), duration_s=NEMESIS_S,
        seed=_seed(10), progress=False, plots=False,
    ))
    _assert_membership_faults(out)
    if "RAFTQ_JEPSEN_SEED" not in os.environ:
        assert [f["evidence"]["change"] for f in out.faults] == ["add", "replace", "remove"]
    assert out.check["total_queue"]["acknowledged_count"] > 500


@pytest.mark.extended  # CI time: the short membership run above covers added nodes' links
def test_partitions_cut_the_links_of_added_nodes(tmp_path: Path) -> None:
    """A node added (or put in another's place) during the run is reached through the run's
    proxies: partitions cut its links as any other's."""
    schedule = [
        Fault("membership", "add", 1.0, 0.3, seed=1),
        Fault("partition", "halves", 5.0, 2.5, seed=2),
        Fault("membership", "replace", 8.5, 0.3, seed=3),
        Fault("partition", "halves", 13.0, 2.5, seed=5),
    ]
    out = _run_valid(RunOptions(
        out_dir=tmp_path / "mp", schedule=schedule, duration_s=17.0, seed=_seed(17),
        progress=False, plots=False,
    ))
    _assert_membership_faults(out)
    added = [f["evidence"]["added"] for f in out.faults if f["kind"] == "membership"]
    parts = [f for f in out.faults if f["kind"] == "partition"]
    assert len(parts) == 2 and all(p["verified"] for p in parts)
    for p, new in zip(parts, added, strict=True):
        assert any(new in link for link in p["links"]), (new, p["links"])  # its links cut
    links = out.proxies["links"]
    for new in added:  # its traffic went through the proxies both ways
        assert sum(v["accepted"] for k, v in links.items() if k.startswith(f"{new}->")) > 0
        assert sum(v["accepted"] for k, v in links.items() if k.endswith(f"->{new}")) > 0


@pytest.mark.extended
def test_membership_with_every_other_nemesis(tmp_path: Path) -> None:
    out = _run_valid(RunOptions(
        out_dir=tmp_path / "mall", nemeses=("membership", "kill", "pause", "partition"),
        duration_s=60.0, seed=_seed(18), progress=False, plots=False,
    ))
    _assert_membership_faults(out)


@pytest.mark.parametrize("name", ["partition-halves", "isolate-then-kill-leader",
                                  "kill-leader-mid-send", "ring"])
def test_scenario(tmp_path: Path, name: str) -> None:
    opts = sc.options_for(name, tmp_path / name, seed=_seed(21), progress=False)
    out = _run_valid(replace(opts, plots=False))
    assert out.check[name.replace("-", "_")]["valid"]


def test_consumer_crash_and_stale_ack_scenarios(tmp_path: Path) -> None:
    """consumer-crash's faults with both workloads; checks of both scenarios."""
    opts = sc.options_for("consumer-crash", tmp_path / "crash-stale", seed=_seed(22),
                          progress=False)
    wl = Workload(p_crash=0.25, p_nack=0.02, p_stale=0.2, stale_lease_ms=300, stale_hold_s=0.8)
    out = _run_valid(replace(
        opts, workload=wl, plots=False,
        extra_checks=(sc.check_consumer_crash, sc.check_stale_ack),
    ))
    assert out.check["consumer_crash"]["abandoned"] > 0
    assert out.check["stale_ack"]["rejected_after_redelivery"] > 0


@pytest.mark.extended
@pytest.mark.parametrize("name", sorted(sc.SCENARIOS))
def test_every_scenario_alone(tmp_path: Path, name: str) -> None:
    opts = sc.options_for(name, tmp_path / name, seed=_seed(31), progress=False)
    _run_valid(replace(opts, plots=False))
