"""`raftq cluster add-node`, `members`, `remove-node` and `replace-node` against real node
processes on 127.0.0.1 (marked slow): the procedures of docs/operations.md, "Membership", step
by step as that section shows them.

Every wait is bounded; every process started is stopped by its recorded pid (`stop_recorded`
checks the command line first).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cluster.cli import cli
from cluster.client import Client
from cluster.launcher import RecordedNode, read_pids, stop_recorded
from node.config import load
from tests.client.test_launcher import alive, free_base_port
from tests.client.test_launcher import raftq as raftq_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


class _Done:
    def __init__(self, r: Result) -> None:
        self.returncode, self.stdout, self.stderr = r.exit_code, r.stdout, r.stderr


def raftq(*args: str) -> _Done:
    """Run a raftq command in this process (as `raftq ARGS` would run; no interpreter start)."""
    return _Done(CliRunner().invoke(cli, list(args), env={"RAFTQ_SERVERS": None},
                                    catch_exceptions=False))


def members(data: Path) -> dict[str, object]:
    r = raftq("--timeout", "10", "cluster", "members", "--data-dir", str(data), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def roles(view: dict[str, object]) -> dict[int, str]:
    return {m["id"]: m["role"] for m in view["members"]}  # type: ignore[attr-defined, index]


class Started:
    """Every node pid recorded at any point, to stop whatever still runs at the end."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.seen: dict[int, RecordedNode] = {}

    def note(self) -> dict[int, int]:
        now = {n.pid: n for n in read_pids(self.data / "pids.json")}
        self.seen.update(now)
        return {n.node_id: n.pid for n in now.values()}

    def stop_all(self) -> None:
        self.note()
        stop_recorded([n for n in self.seen.values() if alive(n.pid)], timeout_s=5)


def wait_dead(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still runs"
        time.sleep(0.05)


def test_add_node_members_remove_node(tmp_path: Path) -> None:
    base = free_base_port(nodes=4)
    data = tmp_path / "c"
    started = Started(data)
    try:
        up = raftq_process("cluster", "up", "--detach", "--data-dir", str(data),
                           "--base-port", str(base))
        assert up.returncode == 0, up.stderr
        started.note()
        servers = [f"127.0.0.1:{base + i}" for i in (1, 2, 3)]
        with Client(servers, timeout_s=20) as c:
            c.create_queue("q")
            for i in range(10):
                c.send_batch("q", [f"m{i}-{j}" for j in range(100)])

        add = raftq("cluster", "add-node", "--data-dir", str(data), "--timeout", "60")
        assert add.returncode == 0, add.stderr
        assert f"node 4 added as a voter at 127.0.0.1:{base + 4}" in add.stdout
        assert "added node 4 to" in add.stderr and "joining through" in add.stderr
        cfg = load(data / "cluster.toml")
        assert sorted(cfg.nodes) == [1, 2, 3, 4] and cfg.nodes[4].initial is False
        assert cfg.nodes[4].client_addr == ("127.0.0.1", base + 4)
        assert cfg.nodes[4].raft_addr == ("127.0.0.1", base + 104)
        pids = started.note()
        assert sorted(pids) == [1, 2, 3, 4] and alive(pids[4])

        view = members(data)
        assert roles(view) == {1: "voter", 2: "voter", 3: "voter", 4: "voter"}
        assert view["max_id"] == 4
        [new] = [m for m in view["members"] if m["id"] == 4]  # type: ignore[attr-defined]
        assert new["client_addr"] == f"127.0.0.1:{base + 4}" and new["lag"] <= 100
        table = raftq("cluster", "members", "--data-dir", str(data))
        assert table.returncode == 0 and f"127.0.0.1:{base + 104}" in table.stdout

        # The new node holds the data written before it joined (a read through it redirects
        # to the leader; its own applied index shows it caught up).
        with Client([f"127.0.0.1:{base + 4}"], timeout_s=20) as c:
            assert c.queue_stats("q")["messages"] == 1000
            st = c.node_status(f"127.0.0.1:{base + 4}")
            assert st["applied_index"] >= view["commit_index"]  # type: ignore[operator]

        remove = raftq("cluster", "remove-node", "4", "--data-dir", str(data))
        assert remove.returncode == 0, remove.stderr
        assert "removed node 4 from the cluster (membership index" in remove.stdout
        assert f"node 4: stopped (pid {pids[4]})" in remove.stdout
        assert "left in place" in remove.stdout
        wait_dead(pids[4])
        assert sorted(load(data / "cluster.toml").nodes) == [1, 2, 3]
        assert sorted(started.note()) == [1, 2, 3]
        assert (data / "n4").is_dir()
        assert roles(members(data)) == {1: "voter", 2: "voter", 3: "voter"}

        again = raftq("cluster", "remove-node", "4", "--data-dir", str(data))
        assert again.returncode == 1
        assert again.stderr.startswith("error: UNKNOWN_MEMBER: ")
        with Client(servers, timeout_s=20) as c:
            c.send("q", "after")
            assert c.queue_stats("q")["messages"] == 1001

        # Removing the leader: it hands leadership over first, then the new leader removes it.
        leader = members(data)["leader_id"]
        remove = raftq("cluster", "remove-node", str(leader), "--data-dir", str(data))
        assert remove.returncode == 0, remove.stderr
        assert f"removed node {leader} from the cluster" in remove.stdout
        view = members(data)
        assert view["leader_id"] not in (None, leader) and len(roles(view)) == 2
        assert leader not in started.note()
        with Client(servers, timeout_s=20) as c:
            c.send("q", "after the leader left")
            assert c.queue_stats("q")["messages"] == 1002
    finally:
        started.stop_all()


def test_replace_node_after_a_lost_disk(tmp_path: Path) -> None:
    base = free_base_port(nodes=4)
    data = tmp_path / "c"
    started = Started(data)
    try:
        up = raftq_process("cluster", "up", "--detach", "--data-dir", str(data),
                           "--base-port", str(base))
        assert up.returncode == 0, up.stderr
        pids = started.note()
        servers = [f"127.0.0.1:{base + i}" for i in (1, 2, 3)]
        with Client(servers, timeout_s=20) as c:
            c.create_queue("q")
            c.send_batch("q", [f"m{j}" for j in range(100)])
            leader = c.cluster_status()["leader_id"]
        victim = next(n for n in (1, 2, 3) if n != leader)
        os.kill(pids[victim], signal.SIGKILL)  # it broke (or lost its disk)
        wait_dead(pids[victim])

        rep = raftq("cluster", "replace-node", str(victim), "--data-dir", str(data),
                    "--timeout", "60")
        assert rep.returncode == 0, rep.stderr
        addr = f"127.0.0.1:{base + victim}"
        assert f"node {victim} replaced by node 4 at {addr}" in rep.stdout
        assert f"removed node {victim} from the cluster" in rep.stdout
        [aside] = [p for p in data.iterdir() if p.name.startswith(f"n{victim}.replaced-node")]
        assert f"aside to {aside}" in rep.stdout and (aside / "raft").is_dir()
        cfg = load(data / "cluster.toml")
        assert sorted(cfg.nodes) == sorted({1, 2, 3, 4} - {victim})
        assert cfg.nodes[4].client_addr == ("127.0.0.1", base + victim)
        assert cfg.nodes[4].data_dir == data / f"n{victim}" and not cfg.nodes[4].initial
        assert roles(members(data)) == {n: "voter" for n in {1, 2, 3, 4} - {victim}}
        pids = started.note()
        assert sorted(pids) == sorted({1, 2, 3, 4} - {victim})

        # The cluster now survives the loss of another original node: kill the third one.
        other = next(n for n in (1, 2, 3) if n not in (victim, leader))
        os.kill(pids[other], signal.SIGKILL)
        with Client(servers, timeout_s=30) as c:
            c.send("q", "after")
            assert c.queue_stats("q")["messages"] == 101
    finally:
        started.stop_all()
