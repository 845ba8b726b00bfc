"""Launcher and `raftq cluster` against real node processes on 127.0.0.1 (marked slow).

Every test stops what it started, by pid: the Launcher's context manager, or the recorded pids.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster.cli import cli
from cluster.client import Client
from cluster.launcher import (
    Launcher,
    LauncherError,
    process_matches,
    read_pids,
    stop_recorded,
)
from node.config import load, local_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]


def free_base_port(nodes: int = 3, lo: int = 20000, hi: int = 50000) -> int:
    """A base port in [lo, hi) whose client (base+1..) and raft (base+101..) ports are all free
    now (tests that run side by side draw from disjoint ranges)."""
    rng = random.Random()
    for _ in range(300):
        base = rng.randrange(lo, hi) // 10 * 10
        ports = [base + i for i in range(1, nodes + 1)] + [
            base + 100 + i for i in range(1, nodes + 1)]
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no free ports in {lo}-{hi}")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_launcher_start_kill_restart_pause(tmp_path: Path) -> None:
    cfg = local_cluster(tmp_path, 3, free_base_port())
    with Launcher(cfg) as launcher:
        assert (tmp_path / "cluster.toml").exists()
        leader = launcher.start(timeout_s=30)
        assert leader in (1, 2, 3)
        pids = launcher.pids
        assert sorted(pids) == [1, 2, 3]
        for nid, pid in pids.items():
            assert process_matches(pid, launcher.config_path, nid)
            assert not process_matches(pid, launcher.config_path, nid % 3 + 1)
        with Client(launcher.servers, timeout_s=20) as c:
            status = c.cluster_status()
            assert [n["role"] for n in status["nodes"]].count("leader") == 1
            assert status["leader_id"] == leader
            c.create_queue("q")
            c.send("q", "before")

            assert launcher.kill(leader) == -signal.SIGKILL
            assert not alive(pids[leader])
            new_leader = launcher.wait_for_leader(timeout_s=20)
            assert new_leader != leader
            c.send("q", "after")  # the client finds the new leader by itself

            launcher.start_node(leader)  # restart on the same data directory
            deadline = time.monotonic() + 20
            while c.node_status(launcher.addresses[leader])["leader_id"] != new_leader:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            follower = next(n for n in (1, 2, 3) if n not in (leader, new_leader))
            launcher.pause(follower)
            assert launcher.is_paused(follower)
            c.send("q", "while paused")  # two of three nodes are a quorum
            launcher.resume(follower)
            assert not launcher.is_paused(follower)
            got = [m.text for m in c.receive("q", max_messages=10)]
            assert got == ["before", "after", "while paused"]
            assert c.node_status(launcher.addresses[leader])["node_id"] == leader
        all_pids = list(launcher.pids.values())
    assert all(not alive(pid) for pid in all_pids + list(pids.values()))
    assert "n1" in (tmp_path / "n1.log").read_text()


def raftq(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout_s, check=False,
    )


def test_cli_cluster_up_detach_status_down(tmp_path: Path) -> None:
    base = free_base_port()
    data = tmp_path / "c"
    up = raftq("cluster", "up", "--detach", "--data-dir", str(data), "--base-port", str(base))
    recorded = read_pids(data / "pids.json")
    try:
        assert up.returncode == 0, up.stderr
        servers = ",".join(f"127.0.0.1:{base + i}" for i in (1, 2, 3))
        assert f"RAFTQ_SERVERS={servers}" in up.stdout
        assert [n.node_id for n in recorded] == [1, 2, 3]
        assert all(alive(n.pid) for n in recorded)
        runner = CliRunner()
        st = runner.invoke(cli, ["cluster", "status", "--data-dir", str(data), "--json"],
                           env={"RAFTQ_SERVERS": None})
        assert st.exit_code == 0, st.output
        rows = json.loads(st.stdout)
        assert [r["reachable"] for r in rows] == [True] * 3
        assert [r["role"] for r in rows].count("leader") == 1
        again = raftq("cluster", "up", "--detach", "--data-dir", str(data))
        assert again.returncode == 1 and "already running" in again.stderr
        # A killed node comes back with `cluster up` (the README's restart step).
        os.kill(recorded[2].pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(recorded[2].pid):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        restart = raftq("cluster", "up", "--detach", "--data-dir", str(data))
        assert restart.returncode == 0, restart.stderr
        assert "restarted node(s) 3" in restart.stderr
        now = {n.node_id: n.pid for n in read_pids(data / "pids.json")}
        assert now[1] == recorded[0].pid and now[3] != recorded[2].pid and alive(now[3])
        recorded = read_pids(data / "pids.json")
        down = runner.invoke(cli, ["cluster", "down", "--data-dir", str(data)])
        assert down.exit_code == 0, down.output
        assert down.stdout.count(": stopped") == 3
        assert all(not alive(n.pid) for n in recorded)
        assert not (data / "pids.json").exists()
        st = runner.invoke(cli, ["--timeout", "1", "cluster", "status", "--data-dir", str(data),
                                 "--json"], env={"RAFTQ_SERVERS": None})
        assert [r["reachable"] for r in json.loads(st.stdout)] == [False] * 3
    finally:
        stop_recorded([n for n in recorded if alive(n.pid)], timeout_s=5)


def test_cluster_down_never_signals_another_process(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "pids.json").write_text(json.dumps(
            {"config": str(tmp_path / "cluster.toml"), "nodes": {"1": other.pid}}))
        result = CliRunner().invoke(cli, ["cluster", "down", "--data-dir", str(tmp_path)])
        assert "runs something else (not signalled)" in result.stdout
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_cli_cluster_up_foreground_stops_on_sigterm(tmp_path: Path) -> None:
    base = free_base_port()
    data = tmp_path / "fg"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster", "cluster", "up", "--data-dir", str(data),
         "--base-port", str(base)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    recorded = []
    try:
        assert proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()

        def read_lines() -> None:
            for line in proc.stdout or ():
                lines.put(line)

        reader = threading.Thread(target=read_lines, daemon=True)
        reader.start()
        out = ""
        deadline = time.monotonic() + 40
        while "RAFTQ_SERVERS=" not in out and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                out += lines.get(timeout=0.5)
        assert "RAFTQ_SERVERS=" in out, out
        recorded = read_pids(data / "pids.json")
        assert len(recorded) == 3 and all(alive(n.pid) for n in recorded)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert all(not alive(n.pid) for n in recorded)
        assert not (data / "pids.json").exists()
        assert proc.stderr is not None
        assert "stopped: n1 status 0, n2 status 0, n3 status 0" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # its nodes run in their own sessions:
            proc.wait()
        recorded = recorded or read_pids(data / "pids.json")  # stop them by recorded pid
        stop_recorded([n for n in recorded if alive(n.pid)], timeout_s=5)


def test_launcher_writes_any_config_with_dial(tmp_path: Path) -> None:
    base = local_cluster(tmp_path / "data", 3, 7000)
    proxied = replace(
        base,
        path=None,
        nodes={
            nid: replace(n, dial={p: ("127.0.0.1", 9000 + 10 * nid + p) for p in base.nodes
                                  if p != nid})
            for nid, n in base.nodes.items()
        },
    )
    launcher = Launcher(proxied, config_path=tmp_path / "jepsen.toml", log_dir=tmp_path / "logs")
    written = load(tmp_path / "jepsen.toml")
    assert written.peer_dial_addrs(1) == {2: ("127.0.0.1", 9012), 3: ("127.0.0.1", 9013)}
    assert launcher.command(2)[-4:] == ["--config", str(tmp_path / "jepsen.toml"), "--id", "2"]
    assert launcher.log_path(3) == tmp_path / "logs" / "n3.log"
    assert launcher.servers == ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
    assert launcher.pids == {}
    with pytest.raises(LauncherError):
        Launcher(proxied)  # no file to write it to


def test_raftq_node_reports_a_bad_config(tmp_path: Path) -> None:
    result = raftq("node", "--config", str(tmp_path / "missing.toml"), "--id", "1", timeout_s=30)
    assert result.returncode == 2
    assert "cannot start" in result.stderr and "missing.toml" in result.stderr
