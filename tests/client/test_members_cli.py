"""`raftq cluster members/add-node/remove-node/replace-node` against the fake cluster (their
arguments, output and errors), and the launcher's local-configuration helpers. The real-process
run of add-node, members and remove-node is in tests/client/test_members_e2e.py."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster.cli import cli
from cluster.launcher import (
    MAX_LOCAL_ID,
    LauncherError,
    local_base_port,
    needs_join,
    new_local_node,
    with_node,
    without_node,
    write_config,
)
from node.config import ClusterConfig, NodeConfig, load, local_cluster
from tests.client.fake import FakeCluster
from tests.client.test_cli import run, servers
from tests.client.test_launcher import free_base_port


def fake_local(fake: FakeCluster, data: Path) -> Path:
    """A local cluster.toml in `data` whose client addresses are the fake nodes'."""
    cfg = ClusterConfig(
        cluster_id="t", secret=b"x" * 16,
        nodes={n.id: NodeConfig(n.id, ("127.0.0.1", 20000 + n.id), ("127.0.0.1", n.port),
                                data / f"n{n.id}") for n in fake.nodes.values()},
    )
    return write_config(cfg, data / "cluster.toml").path  # type: ignore[return-value]


async def test_members_table_and_json(fake: FakeCluster) -> None:
    fake.member_addrs[4] = ("127.0.0.1:29104", "127.0.0.1:29004")
    fake.roles[4], fake.max_id = "learner", 4
    fake.behind.add(4)
    r = await run([*servers(fake), "cluster", "members", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["max_id"] == 4 and out["leader_id"] == 1
    assert [(m["id"], m["role"], m["leader"]) for m in out["members"]] == [
        (1, "voter", True), (2, "voter", False), (3, "voter", False), (4, "learner", False)]
    r = await run([*servers(fake), "cluster", "members"])
    assert r.exit_code == 0
    for text in ("client address", "raft address", "match index", "lag", "learner", "leader",
                 "127.0.0.1:29004", fake.addr(3)):
        assert text in r.stdout, text


async def test_cluster_status_shows_a_learner(fake: FakeCluster) -> None:
    fake.roles[3] = "learner"
    r = await run([*servers(fake), "cluster", "status"])
    assert r.exit_code == 0
    [row3] = [line for line in r.stdout.splitlines() if fake.addr(3) in line]
    assert "learner" in row3
    assert "no majority" not in r.stderr  # two voters of two answer


async def test_remove_node_errors_have_stable_codes(fake: FakeCluster, tmp_path: Path) -> None:
    s = servers(fake)
    r = await run([*s, "cluster", "remove-node", "9", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1
    assert r.stderr == "error: UNKNOWN_MEMBER: node 9 is not a member\n"
    fake.faults["remove_member"] = ["change_in_progress"] * 10_000
    r = await run([*s, "--timeout", "1", "cluster", "remove-node", "2",
                   "--data-dir", str(tmp_path)])
    assert r.exit_code == 1
    assert r.stderr.startswith("error: CHANGE_IN_PROGRESS: remove_member: fake change_in_progress")
    assert "not executed" in r.stderr and len(r.stderr.splitlines()) == 1
    fake.faults.clear()
    for nid in (2, 3):
        r = await run([*s, "cluster", "remove-node", str(nid), "--data-dir", str(tmp_path)])
        assert r.exit_code == 0, r.output
        assert f"removed node {nid} from the cluster (membership index" in r.stdout
        assert "stop its process yourself" in r.stdout  # no local cluster.toml there
    r = await run([*s, "cluster", "remove-node", "1", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1
    assert r.stderr.startswith("error: LAST_VOTER: node 1 is the last voter")
    r = await run([*s, "cluster", "remove-node", "0"])
    assert r.exit_code == 2  # click: ID must be >= 1


async def test_remove_node_of_a_local_cluster_edits_its_config(
    fake: FakeCluster, tmp_path: Path
) -> None:
    path = fake_local(fake, tmp_path)
    (tmp_path / "n3").mkdir()
    r = await run(["cluster", "remove-node", "3", "--data-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert sorted(load(path).nodes) == [1, 2] and 3 not in fake.roles
    assert f"its data directory {tmp_path / 'n3'} is left in place" in r.stdout
    assert (tmp_path / "n3").is_dir()
    # The fake node 3 still listens, and no pid was recorded for it: said, not signalled.
    assert "still listens on" in r.stderr
    # Done again (say, after an interrupted remove-node): the cluster says UNKNOWN_MEMBER, and
    # only an id that is still in cluster.toml has a local part left to finish.
    r = await run(["cluster", "remove-node", "3", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and "UNKNOWN_MEMBER" in r.stderr
    write_config(with_node(load(path), NodeConfig(3, ("127.0.0.1", 1), ("127.0.0.1", 2),
                                                  tmp_path / "n3")), path)
    r = await run(["cluster", "remove-node", "3", "--data-dir", str(tmp_path)])
    assert r.exit_code == 0 and "not a member (removed before)" in r.stdout
    assert sorted(load(path).nodes) == [1, 2]
    # --servers naming another cluster: its nodes are not this directory's to stop.
    other = tmp_path / "other"
    write_config(local_cluster(other, 3, 41000), other / "cluster.toml")
    r = await run([*servers(fake), "cluster", "remove-node", "2", "--data-dir", str(other)])
    assert r.exit_code == 1 and "is not the local cluster of" in r.stderr
    assert 2 in fake.roles


async def test_add_and_replace_need_a_local_cluster(fake: FakeCluster, tmp_path: Path) -> None:
    s = servers(fake)
    r = await run([*s, "cluster", "add-node", "--data-dir", str(tmp_path / "none")])
    assert r.exit_code == 1 and "no local cluster in" in r.stderr
    r = await run([*s, "cluster", "replace-node", "2", "--data-dir", str(tmp_path / "none")])
    assert r.exit_code == 1 and "no local cluster in" in r.stderr
    # The fake's addresses follow no local port scheme: add-node says so before changing anything.
    path = fake_local(fake, tmp_path)
    before = path.read_text()
    r = await run(["cluster", "add-node", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and "is not a local cluster's" in r.stderr, r.output
    assert path.read_text() == before and fake.ops("add_member") == []
    r = await run(["cluster", "replace-node", "7", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and "node 7 is not in" in r.stderr


async def test_replace_node_refuses_before_stopping_anything(
    fake: FakeCluster, tmp_path: Path
) -> None:
    path = fake_local(fake, tmp_path)
    fake.silent.add(3)  # node 3 does not answer the leader: without node 2, no majority
    r = await run(["cluster", "replace-node", "2", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1
    assert r.stderr.startswith("error: NO_QUORUM: without node 2, 1 of the 2 voters left")
    assert fake.ops("remove_member") == [] and sorted(load(path).nodes) == [1, 2, 3]
    fake.roles[4], fake.max_id = "voter", 4  # a member not in cluster.toml
    fake.member_addrs[4] = ("127.0.0.1:29104", "127.0.0.1:29004")
    fake.silent.clear()
    del fake.roles[3]
    r = await run(["cluster", "replace-node", "3", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and r.stderr.startswith("error: UNKNOWN_MEMBER: node 3 is not a member")
    # The node still runs at its address without a recorded pid: refused, nothing removed.
    r = await run(["cluster", "replace-node", "2", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and "still listens on" in r.stderr
    assert fake.ops("remove_member") == [] and 2 in fake.roles


async def test_node_learner_needs_join(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["node", "--config", str(tmp_path / "c.toml"), "--id", "1",
                                 "--learner"])
    assert r.exit_code == 2 and "--learner applies only with --join" in r.output


def test_local_config_helpers(tmp_path: Path) -> None:
    cfg = write_config(local_cluster(tmp_path, 3, 31000), tmp_path / "cluster.toml")
    assert local_base_port(cfg) == 31000
    new = new_local_node(cfg, 4, check_free=False)
    assert (new.client_addr, new.raft_addr) == (("127.0.0.1", 31004), ("127.0.0.1", 31104))
    assert new.data_dir == tmp_path / "n4" and new.initial is False
    grown = write_config(with_node(cfg, new), tmp_path / "cluster.toml")
    again = load(tmp_path / "cluster.toml")
    assert again.nodes[4].initial is False and again.nodes[1].initial is True
    assert "initial = false" in (tmp_path / "cluster.toml").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.toml"]  # no temporary file left
    # Created anew (no database anywhere), a node added later must join; else none needs to.
    assert needs_join(grown) == [4] and needs_join(cfg) == []
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.toml"]  # nothing was created
    # A replaced node keeps its predecessor's ports under a new id: the base still shows.
    replaced = with_node(without_node(grown, 2), replace(grown.nodes[2], id=5, initial=False))
    assert local_base_port(replaced) == 31000
    assert new_local_node(replaced, 6, check_free=False).client_addr == ("127.0.0.1", 31006)
    # Node 5 holds id 2's ports (31002, 31102): a new node 2 gets the lowest free pair instead.
    moved = new_local_node(replaced, 2, check_free=False)
    assert (moved.client_addr, moved.raft_addr) == (("127.0.0.1", 31005), ("127.0.0.1", 31105))
    busy = with_node(replaced, new_local_node(replaced, 6, check_free=False))
    assert new_local_node(busy, 7, check_free=False).client_addr == ("127.0.0.1", 31007)
    # A member joined from elsewhere (not in the file) holding id 7's ports counts as taken too.
    elsewhere = [("127.0.0.1", 31007), ("127.0.0.1", 31107)]
    assert new_local_node(
        busy, 7, check_free=False, members_addrs=elsewhere
    ).client_addr == ("127.0.0.1", 31005)
    with pytest.raises(LauncherError, match="already in"):
        new_local_node(replaced, 5, check_free=False)
    with pytest.raises(LauncherError, match=f"over {MAX_LOCAL_ID}"):
        new_local_node(cfg, MAX_LOCAL_ID + 1, check_free=False)
    dialled = replace(cfg, nodes={
        **cfg.nodes, 1: replace(cfg.nodes[1], dial={2: ("127.0.0.1", 9), 3: ("127.0.0.1", 8)})})
    assert without_node(dialled, 2).nodes[1].dial == {3: ("127.0.0.1", 8)}
    with pytest.raises(LauncherError, match="only node"):
        without_node(without_node(without_node(cfg, 1), 2), 3)
    two_hosts = replace(cfg, nodes={**cfg.nodes, 2: replace(cfg.nodes[2],
                                                           client_addr=("10.0.0.2", 31002))})
    with pytest.raises(LauncherError, match="not a local cluster's"):
        local_base_port(two_hosts)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_add_node_refused_takes_its_entry_out_again(
    fake: FakeCluster, tmp_path: Path
) -> None:
    """A real node process asks the fake to admit it, is refused, exits: add-node undoes it."""
    base = free_base_port(4)
    nodes = {n: NodeConfig(n, ("127.0.0.1", base + 100 + n), ("127.0.0.1", base + n),
                           tmp_path / f"n{n}") for n in (2, 3)}
    # Node 1 is the fake's leader (its port is the fake's); 2 and 3 follow the port scheme.
    nodes[1] = NodeConfig(1, ("127.0.0.1", 20001), ("127.0.0.1", fake.nodes[1].port),
                          tmp_path / "n1")
    path = write_config(ClusterConfig("t", b"x" * 16, nodes), tmp_path / "cluster.toml").path
    assert path is not None
    fake.faults["add_member"] = ["error:ID_RETIRED"]
    r = await run(["--timeout", "10", "cluster", "add-node", "--data-dir", str(tmp_path),
                   "--timeout", "30"])
    assert r.exit_code == 1
    assert f"added node 4 to {path}" in r.stderr
    assert f"joining through {fake.addr(1)}" in r.stderr
    assert "node 4 exited with status 2: raftq node 4: cannot join the cluster at" in r.stderr
    assert "ID_RETIRED: fake ID_RETIRED" in r.stderr
    assert "Node 4 was not admitted: stopped it and took its entry out of" in r.stderr
    assert sorted(load(path).nodes) == [1, 2, 3] and 4 not in fake.roles
    assert not (tmp_path / "pids.json").exists()
    assert [a for _, a in fake.ops("add_member")] == [{
        "id": 4, "raft_addr": f"127.0.0.1:{base + 104}", "client_addr": f"127.0.0.1:{base + 4}"}]
