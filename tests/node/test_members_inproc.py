"""Membership operations at live nodes in one process (issue 12's node side): the protocol's
results and error codes, the status fields, the transport following the membership, and the
configuration's `initial` flag. The real-process proofs are in test_members_e2e.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from node import config as config_mod
from node.config import ConfigError, NodeConfig, format_addr
from node.main import Node
from node.raft import NodeId
from node.server import RequestError

from .inproc import Conn, free_ports, make_config, running_cluster, wait_leader


def new_addrs() -> dict[str, str]:
    """Addresses of a node that does not run (a learner that never answers)."""
    raft, client = free_ports(2)
    return {"raft_addr": f"127.0.0.1:{raft}", "client_addr": f"127.0.0.1:{client}"}


def error(reply: dict[str, Any]) -> dict[str, Any]:
    assert not reply["ok"], reply
    return reply["error"]


async def at(node: Node) -> Conn:
    return await Conn.open(node.cfg.node(node.node_id).client_addr)


# -- configuration ---------------------------------------------------------------------------


def test_initial_flag_round_trips_and_keeps_later_nodes_out_of_a_new_membership(
    tmp_path: Path,
) -> None:
    cfg = make_config(tmp_path, 3)
    later = NodeConfig(4, ("127.0.0.1", 9104), ("127.0.0.1", 9004), tmp_path / "n4",
                       initial=False)
    cfg = config_mod.ClusterConfig(cfg.cluster_id, cfg.secret, {**cfg.nodes, 4: later})
    text = config_mod.dumps(cfg)
    assert text.count("initial = false") == 1 and "initial = true" not in text
    written = config_mod.write(cfg, tmp_path / "c.toml")
    loaded = config_mod.load(written.path or tmp_path / "c.toml")
    assert [n.initial for _, n in sorted(loaded.nodes.items())] == [True, True, True, False]
    m = loaded.initial_membership()
    assert m.voters == (1, 2, 3) and m.learners == () and m.address(NodeId(4)) is None
    assert m.address(NodeId(1)) == (format_addr(cfg.nodes[1].raft_addr),
                                    format_addr(cfg.nodes[1].client_addr))
    bad = text.replace("initial = false", 'initial = "no"')
    (tmp_path / "bad.toml").write_text(bad)
    with pytest.raises(ConfigError, match="initial must be true or false"):
        config_mod.load(tmp_path / "bad.toml")


# -- the operations ---------------------------------------------------------------------------


async def test_add_promote_remove_members_and_status(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, 3)
    async with running_cluster(cfg) as nodes:
        leader = await wait_leader(nodes)
        lid = leader.node_id
        c = await at(leader)
        four = new_addrs()
        r = await c.call("add_member", four)
        assert r["ok"], r
        assert r["result"]["node_id"] == 4 and r["result"]["index"] > 0
        index = r["result"]["index"]
        # A retry with the same addresses (with or without the id) adds nothing.
        again = await c.call("add_member", {**four, "id": 4})
        assert again["ok"] and again["result"] == {"node_id": 4, "index": index}, again
        assert (await c.call("add_member", four))["result"]["node_id"] == 4
        # members: a linearizable read on the leader, one row per member.
        m = (await c.call("members"))["result"]
        assert (m["leader_id"], m["membership_index"], m["max_id"]) == (lid, index, 4)
        assert m["commit_index"] >= index and m["term"] >= 1
        rows = {row["id"]: row for row in m["members"]}
        assert [row["id"] for row in m["members"]] == [1, 2, 3, 4]
        assert rows[4]["role"] == "learner" and rows[4]["raft_addr"] == four["raft_addr"]
        assert rows[4]["client_addr"] == four["client_addr"]
        assert rows[lid]["leader"] and rows[lid]["lag"] == 0 and rows[lid]["role"] == "voter"
        assert rows[lid]["client_addr"] == format_addr(cfg.node(lid).client_addr)
        assert set(rows[4]) == {"id", "role", "raft_addr", "client_addr", "match_index", "lag",
                                "state", "recent_active", "repairing", "leader"}
        # node_status says who votes and who learns; the peer row says so too.
        st = (await c.call("node_status"))["result"]
        assert st["voters"] == [1, 2, 3] and st["learners"] == [4]
        assert st["membership_index"] == index and st["peers"]["4"]["learner"] is True
        assert st["peers"][str(lid)]["learner"] is False
        # Every node dials the new member at the membership's address, and accepts it.
        with trio.fail_after(5):
            while not all("4" in n.transport.stats()["peers"] for n in nodes.values()):
                await trio.sleep(0.02)
        for n in nodes.values():
            assert n.transport.stats()["peers"]["4"] == four["raft_addr"]
            assert 4 in n.transport.accepted()
        # A follower's NOT_LEADER lists the members' client addresses, the learner's too.
        follower = next(n for nid, n in nodes.items() if nid != lid)
        f = await at(follower)
        err = error(await f.call("members"))
        assert err["code"] == "NOT_LEADER" and err["retryable"] is True
        assert four["client_addr"] in err["nodes"] and len(err["nodes"]) == 4
        assert err["leader"] == format_addr(cfg.node(lid).client_addr)
        # cluster_status asks every member and says which role each has in the membership.
        cs = (await f.call("cluster_status"))["result"]
        assert [(n["node_id"], n["membership_role"]) for n in cs["nodes"]] == [
            (1, "voter"), (2, "voter"), (3, "voter"), (4, "learner")]
        assert "error" in cs["nodes"][3] and cs["leader_id"] == lid
        # A learner that never answered is not promoted (retryable); removing it works.
        err = error(await c.call("promote_member", {"id": 4}))
        assert err["code"] == "LEARNER_BEHIND" and err["retryable"] is True
        r = await c.call("remove_member", {"id": 4})
        assert r["ok"] and r["result"]["node_id"] == 4 and r["result"]["index"] > index, r
        with trio.fail_after(5):
            while any("4" in n.transport.stats()["peers"] for n in nodes.values()):
                await trio.sleep(0.02)
        # Its id is retired: never given again.
        err = error(await c.call("add_member", {**four, "id": 4}))
        assert err["code"] == "ID_RETIRED" and err["retryable"] is False
        r = await c.call("add_member", four)
        assert r["ok"] and r["result"]["node_id"] == 5, r


async def test_refusals_have_stable_codes(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, 3)
    async with running_cluster(cfg) as nodes:
        leader = await wait_leader(nodes)
        c = await at(leader)
        for op, args in [
            ("add_member", {"raft_addr": "127.0.0.1:1"}),  # no client_addr
            ("add_member", {"raft_addr": "nowhere", "client_addr": "127.0.0.1:2"}),
            ("add_member", {**new_addrs(), "id": "5"}),
            ("add_member", {**new_addrs(), "id": 0}),
            ("add_member", {**new_addrs(), "bogus": 1}),
            ("add_member", {"raft_addr": 7101, "client_addr": "127.0.0.1:2"}),
            ("promote_member", {}),
            ("promote_member", {"id": True}),
            ("remove_member", {"id": -1}),
            ("members", {"all": True}),
        ]:
            err = error(await c.call(op, args))
            assert err["code"] == "BAD_REQUEST" and err["retryable"] is False, (op, args, err)
        cases = [
            ("remove_member", {"id": 9}, "UNKNOWN_MEMBER"),
            ("promote_member", {"id": 9}, "UNKNOWN_MEMBER"),
            ("promote_member", {"id": 2}, "NOT_LEARNER"),
            ("add_member", {**new_addrs(), "id": 2}, "ALREADY_MEMBER"),
            ("add_member", {"raft_addr": format_addr(cfg.node(2).raft_addr),
                            "client_addr": "127.0.0.1:3"}, "ALREADY_MEMBER"),
            ("add_member", {**new_addrs(), "id": 1, "client_addr": "127.0.0.1:4"},
             "ALREADY_MEMBER"),
        ]
        for op, args, code in cases:
            err = error(await c.call(op, args))
            assert err["code"] == code and err["retryable"] is False, (op, args, err)
        # Writes of the membership go to the leader only.
        follower = next(n for nid, n in nodes.items() if nid != leader.node_id)
        f = await at(follower)
        for op, args in [("add_member", new_addrs()), ("remove_member", {"id": 2}),
                         ("promote_member", {"id": 2})]:
            assert error(await f.call(op, args))["code"] == "NOT_LEADER"
        assert len((await c.call("members"))["result"]["members"]) == 3


async def test_a_second_change_while_one_is_in_flight_is_refused(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, 3)
    async with running_cluster(cfg) as nodes:
        leader = await wait_leader(nodes)
        c = await at(leader)
        assert (await c.call("members"))["ok"]  # the leader has committed in its term
        results: list[dict[str, Any]] = []

        async def add() -> None:
            try:
                result = await leader.server.dispatch("add_member", new_addrs())
            except RequestError as exc:
                results.append({"ok": False, "error": exc.to_wire()})
            else:
                results.append({"ok": True, "result": result})

        async with trio.open_nursery() as nursery:  # both reach the loop in one batch
            nursery.start_soon(add)
            nursery.start_soon(add)
        ok = [r for r in results if r["ok"]]
        refused = [r["error"] for r in results if not r["ok"]]
        assert len(ok) == 1 and len(refused) == 1, results
        assert refused[0]["code"] == "CHANGE_IN_PROGRESS" and refused[0]["retryable"] is True
        assert "one change at a time" in refused[0]["message"]


async def test_the_leader_hands_over_before_its_removal(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, 3)
    async with running_cluster(cfg) as nodes:
        leader = await wait_leader(nodes)
        c = await at(leader)
        assert (await c.call("members"))["ok"]
        err = error(await c.call("remove_member", {"id": leader.node_id}))
        assert err["code"] == "NOT_LEADER" and "handed leadership over" in err["message"], err
        assert not leader.loop.is_leader
        new = nodes[leader.loop.view.leader_id or 0]
        assert new.node_id != leader.node_id and err["leader"] == format_addr(
            cfg.node(new.node_id).client_addr)
        n = await at(new)
        with trio.fail_after(5):
            while True:  # the new leader takes changes once it committed in its term
                r = await n.call("remove_member", {"id": leader.node_id})
                if r["ok"] or r["error"]["code"] != "CHANGE_IN_PROGRESS":
                    break
                await trio.sleep(0.05)
        assert r["ok"], r
        m = (await n.call("members"))["result"]
        assert [row["id"] for row in m["members"]] == sorted(set(nodes) - {leader.node_id})
        # The last two: removing one more leaves one voter; the last voter cannot go.
        other = next(i for i in nodes if i not in (leader.node_id, new.node_id))
        assert (await n.call("remove_member", {"id": other}))["ok"]
        err = error(await n.call("remove_member", {"id": new.node_id}))
        assert err["code"] == "LAST_VOTER"
