"""Storage faults against real node processes on 127.0.0.1 (started, paused and killed by pid).

A node that lost durable state (a WAL cut or deleted, a wiped data directory) must start as a
non-voter and be repaired by the leader before it votes or counts towards a quorum; a node
whose database has damaged bytes must refuse to start (exit 2, one line naming the database),
and after the operator procedure (move the data directory away, start it again) rejoin.

Every test checks that its fault was injected (the bytes or sizes changed, the directory moved,
the process was paused or gone), bounds every wait, and prints what it saw as `OBSERVED` lines
(`pytest -s`). Ports: 10000-19999 (tests/node/disk_fault_support.py).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cluster.client import Client
from cluster.launcher import Launcher
from node.marker import MARK_FILE_NAME, MarkerFile
from node.raft import DurabilityMark
from tests.node.disk_fault_support import (
    Producer,
    StartOutcome,
    brief,
    check_refusal,
    cut_wal_at_boundary,
    delete_wals,
    drain,
    flip_wal_bit_at,
    kill,
    local_test_cluster,
    move_data_dir_away,
    observe,
    start_and_observe,
    status,
    truncate_wal_at,
    wait_caught_up_voter,
    wait_converged,
    wait_leader,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

ROOT = Path(__file__).resolve().parents[2]


def _params(kinds: list[str], seeds: range, extended_seeds: range) -> list[Any]:
    out = [pytest.param(k, s, id=f"{k}-seed{s}") for k in kinds for s in seeds]
    out += [pytest.param(k, s, id=f"{k}-seed{s}", marks=pytest.mark.extended)
            for k in kinds for s in extended_seeds]
    return out


# ---------------------------------------------------------------------------------------------
# 1. The five-step scenario: a damaged follower and a stale follower must not elect a leader
#    that lacks what the leader and the damaged follower confirmed.
# ---------------------------------------------------------------------------------------------

def confirm_400_with_b_paused(
    c: Client, launcher: Launcher, seed: int, rng: random.Random
) -> tuple[int, int, int, dict[bytes, int], dict[str, Any]]:
    """Start the cluster, pause follower B, send 400 messages (confirmed by L and A only).

    Returns (leader L, follower A, follower B, body -> send number, A's status after).
    """
    launcher.start()
    leader = wait_leader(c, launcher)
    a, b = (n for n in launcher.node_ids if n != leader)
    c.create_queue("q", visibility_timeout_ms=60_000)
    wait_converged(c, launcher)
    launcher.pause(b)
    assert launcher.is_paused(b)
    sent: dict[bytes, int] = {}
    for i in range(400):
        body = f"s{seed}-m{i}:".encode() + rng.randbytes(rng.randrange(16, 160))
        c.send("q", body, dedup_id=f"s{seed}-m{i}")
        sent[body] = i
    sa = status(c, launcher, a)
    sl = status(c, launcher, leader)
    assert sa is not None and sl is not None
    assert sa["last_index"] >= sl["commit_index"], (brief(sa), brief(sl))
    assert launcher.is_paused(b)  # B confirmed none of them
    return leader, a, b, sent, sa


@pytest.mark.parametrize(("fault", "seed"), _params(["flip", "truncate"], range(1, 3),
                                                    range(3, 11)))
def test_five_steps_nothing_confirmed_is_lost(tmp_path: Path, fault: str, seed: int) -> None:
    rng = random.Random(seed)
    with local_test_cluster(tmp_path) as launcher, Client(
        launcher.servers, timeout_s=20, connect_timeout_s=0.5
    ) as c:
        # (1) B paused; 400 sends confirmed by L and A only.
        leader, a, b, sent, sa = confirm_400_with_b_paused(c, launcher, seed, rng)

        # (2) A killed, its newest WAL damaged at ~30 %.
        kill(launcher, a)
        a_dir = launcher.config.node(a).data_dir
        fraction = 0.3 + rng.uniform(-0.03, 0.03)
        if fault == "flip":
            damage = flip_wal_bit_at(a_dir, fraction, rng)
        else:
            damage = truncate_wal_at(a_dir, fraction)

        # (3) L killed (disk intact); A restarted, B resumed.
        kill(launcher, leader)
        first = start_and_observe(c, launcher, a)
        wiped: dict[str, Any] | None = None
        second: StartOutcome | None = None
        if first.outcome == "refused":
            check_refusal(launcher, a, first)
            wiped = move_data_dir_away(a_dir)  # the operator procedure
            second = start_and_observe(c, launcher, a)
            assert second.outcome == "running", second.log_tail
        launcher.resume(b)
        assert not launcher.is_paused(b)
        # A and B alone: A neither votes nor leads, so nobody may lead without the 400 messages.
        t_quiet = time.monotonic()
        a_standings: list[str] = []
        a_reason = None
        while time.monotonic() - t_quiet < 1.5:  # several election timeouts (0.2-0.4 s)
            for nid in (a, b):
                st = status(c, launcher, nid, timeout_s=0.5)
                assert st is None or st["role"] != "leader", (
                    f"node {nid} leads without the old leader: {brief(st)}")
                if st is not None and nid == a:
                    if not a_standings or a_standings[-1] != st["standing"]:
                        a_standings.append(st["standing"])
                    a_reason = st.get("repair_reason") or a_reason
            time.sleep(0.05)
        assert a_standings and a_standings[-1] in ("joining", "repairing"), a_standings
        assert a_reason, "a non-voter without a repair_reason"

        # (4) L restarted: it leads, repairs A, and everything confirmed is there.
        t_l = time.monotonic()
        launcher.start_node(leader)
        caught = wait_caught_up_voter(c, launcher, a, since=t_l, timeout_s=15)
        converged = wait_converged(c, launcher, timeout_s=20)
        assert converged[a]["standing"] == "voter"
        stats = c.queue_stats("q")
        assert stats["messages"] == 400, stats
        got = drain(c, "q")
        lost = sorted(i for body, i in sent.items() if body not in got)
        assert not lost, f"confirmed but lost: {len(lost)} messages, e.g. {lost[:10]}"
        assert set(got) == set(sent), "messages that were never sent"
        assert set(got.values()) == {1}, "a message delivered twice"
        observe(
            "five_steps", fault=fault, seed=seed, damage=damage,
            a_outcome=first.outcome, a_refusal=first.refusal_lines, wiped=wiped,
            a_after_wipe=brief(second.status) if second is not None else None,
            a_standings_while_l_down=a_standings, a_repair_reason=a_reason,
            a_voter_after_l_restart_s=round(caught.after_s, 2),
            applied={n: s["applied_index"] for n, s in converged.items()},
            leader_after=caught.leader,
        )


# ---------------------------------------------------------------------------------------------
# 2. Each kind of damage on a follower under load: refused or repaired; then it counts.
# ---------------------------------------------------------------------------------------------

FAULTS = ["flip", "truncate-mid", "cut-boundary", "delete-wal", "wipe"]


def _damage(fault: str, data_dir: Path, rng: random.Random) -> dict[str, Any]:
    if fault == "flip":
        return flip_wal_bit_at(data_dir, rng.uniform(0.2, 0.6), rng)
    if fault == "truncate-mid":
        return truncate_wal_at(data_dir, rng.uniform(0.3, 0.7))
    if fault == "cut-boundary":
        return cut_wal_at_boundary(data_dir, rng.uniform(0.3, 0.7))
    if fault == "delete-wal":
        return delete_wals(data_dir)
    return move_data_dir_away(data_dir)


@pytest.mark.parametrize(("fault", "seed"), _params(FAULTS, range(1, 2), range(2, 5)))
def test_damaged_follower_refuses_or_is_repaired_then_counts(
    tmp_path: Path, fault: str, seed: int
) -> None:
    rng = random.Random(seed)
    with local_test_cluster(tmp_path) as launcher, Client(
        launcher.servers, timeout_s=20, connect_timeout_s=0.5
    ) as c:
        launcher.start()
        leader = wait_leader(c, launcher)
        victim, other = (n for n in launcher.node_ids if n != leader)
        c.create_queue("q", visibility_timeout_ms=60_000)
        producer = Producer(launcher.servers, "q", f"p{seed}").start()
        try:
            producer.wait_confirmed(150, timeout_s=20)
            kill(launcher, victim)
            n_kill = len(producer.confirmed)
            producer.wait_confirmed(n_kill + 50, timeout_s=10)  # the victim misses these
            damage = _damage(fault, launcher.config.node(victim).data_dir, rng)

            first = start_and_observe(c, launcher, victim)
            last = first
            wiped = None
            if first.outcome == "refused":
                check_refusal(launcher, victim, first)
                wiped = move_data_dir_away(launcher.config.node(victim).data_dir)
                last = start_and_observe(c, launcher, victim)
                assert last.outcome == "running", last.log_tail
            caught = wait_caught_up_voter(c, launcher, victim, since=last.started_at,
                                          timeout_s=10)

            # The repaired node now counts: with the other follower gone, sends still confirm.
            kill(launcher, other)
            n_other = len(producer.confirmed)
            t_other = time.monotonic()
            producer.wait_confirmed(n_other + 50, timeout_s=10)
            after_other_s = time.monotonic() - t_other
            c.send("q", b"after-the-other-follower-died", dedup_id="after-other")
            assert status(c, launcher, leader) is not None
        finally:
            producer.stop()
        assert len(producer.confirmed) >= n_other + 50

        got = drain(c, "q")
        confirmed = set(producer.confirmed) | {b"after-the-other-follower-died"}
        lost = sorted(confirmed - set(got))
        assert not lost, f"{len(lost)} confirmed messages lost, e.g. {lost[:10]}"
        extra = set(got) - confirmed - set(producer.unknown)
        assert not extra, f"messages never sent: {sorted(extra)[:10]}"
        assert set(got.values()) == {1}, "a message enqueued twice"

        launcher.start_node(other)
        converged = wait_converged(c, launcher, timeout_s=20)
        observe(
            "follower_fault", fault=fault, seed=seed, damage=damage,
            outcome=first.outcome, refusal=first.refusal_lines, refused_after_s=(
                round(first.after_s, 2) if first.outcome == "refused" else None),
            wiped=wiped, first_status=brief(last.status),
            standings_seen=caught.standings_seen,
            voter_after_last_start_s=round(caught.after_s, 2),
            confirmed=len(producer.confirmed), unknown=len(producer.unknown),
            errors=producer.errors[:3], sends_confirmed_without_other_after_s=round(
                after_other_s, 2),
            applied={n: s["applied_index"] for n, s in converged.items()},
        )


# ---------------------------------------------------------------------------------------------
# 3. The standing is visible: node_status and `raftq cluster status`.
# ---------------------------------------------------------------------------------------------

def _raftq(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("raftq")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                           "from cluster.cli import main; main()"]
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout_s,
                          env=env, cwd=ROOT, check=False)


def test_repairing_standing_shows_in_node_status_and_cli(tmp_path: Path) -> None:
    with local_test_cluster(tmp_path) as launcher, Client(
        launcher.servers, timeout_s=20, connect_timeout_s=0.5
    ) as c:
        launcher.start()
        leader = wait_leader(c, launcher)
        victim, other = (n for n in launcher.node_ids if n != leader)
        c.create_queue("q")
        for i in range(50):
            c.send("q", f"m{i}")
        wait_converged(c, launcher)
        kill(launcher, victim)
        wiped = move_data_dir_away(launcher.config.node(victim).data_dir)

        # With the leader paused nobody can repair the wiped node: it stays a non-voter.
        launcher.pause(leader)
        assert launcher.is_paused(leader)
        t0 = time.monotonic()
        launcher.start_node(victim)
        launcher.record()  # pids.json, as `raftq cluster up` keeps it
        seen: list[tuple[float, str, str | None]] = []
        while True:
            st = status(c, launcher, victim, timeout_s=0.5)
            if st is not None and (not seen or seen[-1][1:] != (st["standing"],
                                                                st["repair_reason"])):
                seen.append((round(time.monotonic() - t0, 2), st["standing"],
                             st["repair_reason"]))
            if st is not None and st["standing"] == "repairing":
                break
            assert time.monotonic() - t0 < 10, f"not repairing within 10 s: {seen}"
            time.sleep(0.02)
        assert seen[-1][1] == "repairing" and seen[-1][2], seen
        assert all(s in ("joining", "repairing") and r for _, s, r in seen), seen
        assert f"node {other} says the cluster exists" in seen[-1][2], seen

        as_json = _raftq("cluster", "status", "--data-dir", str(tmp_path), "--json")
        assert as_json.returncode == 0, as_json.stderr
        rows = {r.get("node_id"): r for r in json.loads(as_json.stdout)
                if r.get("reachable")}
        assert rows[victim]["standing"] == "repairing" and rows[victim]["repair_reason"]
        assert rows[other]["standing"] == "voter"
        table = _raftq("cluster", "status", "--data-dir", str(tmp_path))
        assert table.returncode == 0, table.stderr
        flat = " ".join(table.stdout.split())
        expected = f"node {victim} is repairing: {' '.join(seen[-1][2].split())}"
        assert expected in flat, table.stdout
        assert "it does not vote until a leader has repaired it" in flat, table.stdout

        # The leader resumes and repairs it; the status says so.
        t1 = time.monotonic()
        launcher.resume(leader)
        caught = wait_caught_up_voter(c, launcher, victim, since=t1, timeout_s=10)
        wait_converged(c, launcher)
        table2 = _raftq("cluster", "status", "--data-dir", str(tmp_path))
        assert table2.returncode == 0, table2.stderr
        assert "is repairing" not in table2.stdout and "is joining" not in table2.stdout
        assert c.queue_stats("q")["messages"] == 50
        observe("standing_visible", wiped=wiped, standings_seen=seen,
                cli_line=expected, voter_after_leader_resumed_s=round(caught.after_s, 2),
                cli_table=table.stdout.splitlines())


# ---------------------------------------------------------------------------------------------
# 4. Beyond the brief: the five steps with a WAL cut at a record boundary that removes only the
#    newest records, those written after the durability mark's last refresh (at most 0.25 s of
#    writes; docs/architecture.md "What is not covered"). Extended, and failing today: the cut
#    node starts as a voter (its log still holds the marked entry), it and the stale follower
#    elect it, the confirmed entries past its cut are lost, and the old leader, restarted,
#    keeps its divergent tail (the new leader records its match beyond its own last index).
# ---------------------------------------------------------------------------------------------

def _read_mark(launcher: Launcher, nid: int) -> DurabilityMark:
    """The node's durability mark, read (and checked) as the node reads it."""
    cfg = launcher.config
    mark = MarkerFile(cfg.node(nid).data_dir / MARK_FILE_NAME, cfg.cluster_id, nid).load()
    assert mark is not None
    return mark


@pytest.mark.extended
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_five_steps_wal_tail_cut_inside_the_mark_window(tmp_path: Path, seed: int) -> None:
    """The documented limit (docs/architecture.md, "What is not covered"), measured.

    A WAL cut exactly at a record boundary that removes only entries written since the last
    durability-mark refresh is invisible to the node; with the leader down and the third node
    behind, the cut node can lead without them. This checks the bound we promise for that
    case: only messages of that window can be lost, and the old leader, when it returns with
    the lost entries, is reported as diverged (not silently counted).
    """
    from jepsen_like import disk

    rng = random.Random(seed)
    with local_test_cluster(tmp_path) as launcher, Client(
        launcher.servers, timeout_s=20, connect_timeout_s=0.5
    ) as c:
        leader, a, b, sent, sa = confirm_400_with_b_paused(c, launcher, seed, rng)
        kill(launcher, a)
        a_dir = launcher.config.node(a).data_dir
        mark = _read_mark(launcher, a)
        behind = sa["last_index"] - mark.index
        if behind < 2:
            pytest.skip(f"the mark was refreshed {behind} entries before the tail: no window")
        # Each entry is at least one WAL record: dropping behind // 2 records keeps the marked
        # entry, so the node cannot see the loss by itself.
        parsed = disk.parse_wal(disk.newest_wal(a_dir))
        drop = behind // 2
        damage = cut_wal_at_boundary(a_dir, parsed.logical_ends[-1 - drop] / parsed.size)
        kill(launcher, leader)
        first = start_and_observe(c, launcher, a)
        launcher.resume(b)
        seen: set[tuple[Any, ...]] = set()
        t_quiet = time.monotonic()
        while time.monotonic() - t_quiet < 1.5:
            for nid in (a, b):
                st = status(c, launcher, nid, timeout_s=0.5)
                if st is not None:
                    seen.add((nid, st["role"], st["standing"], st["term"], st["last_index"]))
            time.sleep(0.1)
        launcher.start_node(leader)
        time.sleep(3.0)
        after_restart = {n: brief(status(c, launcher, n)) for n in launcher.node_ids}
        got = drain(c, "q")
        lost = sorted(i for body, i in sent.items() if body not in got)
        # Write past the old leader's tail: what does it do with the new leader's entries?
        more_ok = 0
        with Client(launcher.servers, timeout_s=5, connect_timeout_s=0.5) as c5:
            for i in range(30):
                try:
                    c5.send("q", f"more-{i}")
                    more_ok += 1
                except Exception:  # noqa: BLE001 - recorded
                    break
        time.sleep(1.0)
        final = {n: brief(status(c, launcher, n)) for n in launcher.node_ids}
        exits = {n: launcher.exit_code(n) for n in launcher.node_ids}
        observe("tail_cut", seed=seed, a=a, l=leader, b=b, a_last_index_before_kill=sa[
            "last_index"], mark_index=mark.index, records_dropped=drop, damage=damage,
            a_outcome=first.outcome, a_first_status=brief(first.status),
            seen_while_l_down=sorted(seen), after_l_restart=after_restart, lost=lost,
            after_more_sends=final, more_sends_confirmed=more_ok, exit_codes=exits)
        window_first = len(sent) - behind  # the last `behind` sends are past the mark
        assert all(i >= window_first for i in lost), (
            f"lost messages outside the mark's window (from {window_first}): {lost}"
        )
        if lost:
            reports = [brief(status(c, launcher, n)) for n in launcher.node_ids]
            leader_rows = [
                st for n in launcher.node_ids
                if (st := status(c, launcher, n)) is not None and st["role"] == "leader"
            ]
            assert any(
                (row.get("peers") or {}).get(str(leader), {}).get("diverged")
                for row in leader_rows
            ), f"the old leader holds lost entries but is not reported diverged: {reports}"
        else:
            wait_converged(c, launcher, timeout_s=10)


# ---------------------------------------------------------------------------------------------
# 4. A majority lost its disks: nobody is elected; `--force-voter` is the documented way out.
# ---------------------------------------------------------------------------------------------

def test_majority_lost_elects_nobody_until_an_operator_forces_a_voter(tmp_path: Path) -> None:
    with local_test_cluster(tmp_path) as launcher, Client(
        launcher.servers, timeout_s=20, connect_timeout_s=0.5
    ) as c:
        launcher.start()
        leader = wait_leader(c, launcher)
        c.create_queue("q", visibility_timeout_ms=60_000)
        bodies = {f"m{i}".encode() for i in range(200)}
        for body in sorted(bodies):
            c.send("q", body)
        wait_converged(c, launcher)
        lost = [n for n in launcher.node_ids if n != leader]
        for nid in lost:  # both followers lose their disks; the leader keeps everything
            kill(launcher, nid)
            moved = move_data_dir_away(launcher.config.node(nid).data_dir)
            assert moved["moved_to"]
        for nid in lost:
            launcher.start_node(nid)
        # No majority of voters: the leader steps down, nobody is elected.
        t0 = time.monotonic()
        seen_leaders: set[int] = set()
        standings: dict[int, str] = {}
        while time.monotonic() - t0 < 3.0:
            for nid in launcher.node_ids:
                st = status(c, launcher, nid, timeout_s=0.5)
                if st is None:
                    continue
                if st["role"] == "leader" and time.monotonic() - t0 > 1.5:
                    seen_leaders.add(nid)
                if nid in lost:
                    standings[nid] = st["standing"]
            time.sleep(0.1)
        assert not seen_leaders, f"a leader with a majority of lost disks: {seen_leaders}"
        assert all(s in ("joining", "repairing") for s in standings.values()), standings
        # The operator accepts the loss of what only the lost disks held: one forced voter.
        forced = lost[0]
        kill(launcher, forced)
        launcher.start_node(forced, ["--force-voter"])
        new_leader = wait_leader(c, launcher, timeout_s=15.0)
        assert new_leader == leader  # the survivor holds the longest log
        log = launcher.log_path(forced).read_text(errors="replace")
        assert "--force-voter" in log
        wait_converged(c, launcher, timeout_s=20.0)  # the other one was repaired meanwhile
        got = drain(c, "q")
        assert set(got) == bodies
        observe("majority_lost", leader=leader, lost=lost, standings=standings)
