"""Regression tests for node bugs the fault-injection runs found (black box: a process, a
socket). Each started as a strict xfail reproduction and became a plain test with the fix;
the two membership ones at the end too.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest

from cluster.client import Client
from cluster.errors import RaftqError
from cluster.launcher import Launcher
from jepsen_like.runner import _free_ports
from node.config import ClusterConfig, NodeConfig, write

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def _frame(obj: object) -> bytes:
    body = cbor2.dumps(obj)
    return struct.pack(">I", len(body)) + body


def test_node_survives_a_client_that_closes_with_replies_pending(tmp_path: Path) -> None:
    """Two long-poll receives on an empty queue, then the client closes its socket.

    Fixed in 28a0c73. Before: the node wrote the first reply into the closed connection (the client's kernel answers
    with RST); writing the second raises BrokenResourceError (EPIPE) in `_writer`, inside the
    connection's nursery, so it leaves as an ExceptionGroup that `_handle_connection`'s
    `except (trio.BrokenResourceError, trio.ClosedResourceError)` does not catch; it reaches
    `serve_tcp` and the node process exited with status 1. In the runs, the client closed a
    connection to a paused node (no answer to its ping) and the node died on SIGCONT.
    """
    raft_port, client_port = _free_ports(2)
    cfg = write(ClusterConfig(
        cluster_id="epipe", secret=b"s" * 32,
        nodes={1: NodeConfig(1, ("127.0.0.1", raft_port), ("127.0.0.1", client_port),
                             tmp_path / "n1")},
    ), tmp_path / "cluster.toml")
    with Launcher(cfg, log_dir=tmp_path) as launcher:
        launcher.start(timeout_s=30)
        with Client(launcher.servers, timeout_s=10) as c:
            c.create_queue("q")
        s = socket.create_connection(("127.0.0.1", client_port))
        for i, wait_ms in ((1, 300), (2, 600)):
            s.sendall(_frame({"id": i, "op": "receive",
                              "args": {"queue": "q", "consumer": "x", "wait_ms": wait_ms}}))
        time.sleep(0.05)
        s.close()
        time.sleep(1.5)
        code = launcher.exit_code(1)
        assert code is None, f"node exited with status {code}: " + "\n".join(
            launcher.log_path(1).read_text().splitlines()[-3:])


# -- membership: found by the membership nemesis (issue 12) -----------------------------------

def _five_slots(tmp_path: Path) -> ClusterConfig:
    """Nodes 1 to 3 start the cluster; 4 and 5 join later (`initial = false`)."""
    ports = _free_ports(10)
    return write(ClusterConfig(
        cluster_id="joins", secret=b"s" * 32, tick_ms=20,
        nodes={i: NodeConfig(i, ("127.0.0.1", ports[2 * i - 2]), ("127.0.0.1", ports[2 * i - 1]),
                             tmp_path / f"n{i}", initial=i <= 3) for i in range(1, 6)},
    ), tmp_path / "cluster.toml")


def _until(what: str, check: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout_s:g} s (last: {last!r:.300})")


def _caught_up(c: Client, nid: int, voter: bool) -> Any:
    try:
        m = c.members(timeout_s=2).get(nid)
    except RaftqError:
        return None
    return m if m is not None and (m.is_voter or not voter) and m.caught_up(100) else None


def _log_older_membership(launcher: Launcher, c: Client) -> int:
    """A removal (a membership entry without the nodes added later), then more than 4 MiB of
    messages: a node that joins afterwards is sent that entry in its first AppendEntries
    (`max_append_bytes`), and the entry that admitted it only in a later one."""
    c.create_queue("q", max_message_bytes=1 << 20)
    view = c.members()
    gone = next(m.id for m in view.voters if not m.leader)
    c.remove_member(gone)
    launcher.stop_node(gone)
    body = b"x" * (200 << 10)
    for _ in range(30):
        c.send("q", body)
    return gone


@pytest.mark.timeout(120)
def test_a_joined_node_promotes_itself_after_replaying_older_memberships(
    tmp_path: Path,
) -> None:
    """`raftq node --join` (without `--learner`) asks for its own promotion until it is a
    voter. Found by the membership nemesis: the joined node catches up from the start of the
    log, so it passes through the membership entries written before its admission, in which it
    is absent; `promote_until_voter` then logs "node N is not a learner of its membership ...:
    not asking to be promoted" and returns, and when the entry that admitted it arrives it
    stays a learner for good (in a 60 s `membership,kill` run, 3 of 4 joins after the first).
    Fixed: it asks until the cluster makes it a voter or refuses for good (node/join.py)."""
    with Launcher(_five_slots(tmp_path), log_dir=tmp_path) as launcher:
        for nid in (1, 2, 3):
            launcher.start_node(nid)
        launcher.wait_for_leader(timeout_s=30)
        with Client(launcher.servers[:3], timeout_s=30) as c:
            gone = _log_older_membership(launcher, c)
            addr = next(a for n, a in launcher.addresses.items() if n not in (gone, 4, 5))
            launcher.start_node(4, join=addr)
            _until("node 4 is a caught-up learner", lambda: _caught_up(c, 4, False), 30)
            _until("node 4 promotes itself", lambda: _caught_up(c, 4, True), 15)


@pytest.mark.timeout(120)
def test_a_joining_node_answers_a_leader_its_older_membership_does_not_name(
    tmp_path: Path,
) -> None:
    """A node that joins replays the log from its start; found by the membership nemesis
    (the `membership-grow-shrink` scenario three times over): the first AppendEntries of a new
    leader held an older membership entry that did not name that leader; the node then dialled
    only that entry's members (node/loop_members.py `linked_ids`; a node sends only on the
    connections it dials), so its answers never reached the leader, which kept probing it with
    the same AppendEntries: no progress for 44 s, until a node that entry names was elected.
    Here: node 4 joins and is made leader; node 5 joins, and its first AppendEntries holds the
    removal written before node 4 existed. Fixed: a node dials the leader it follows, learning
    its address from the cluster's `members` when no membership it holds names it, and accepts
    every node a membership ever named (node/main.py `_follow_leader`)."""
    with Launcher(_five_slots(tmp_path), log_dir=tmp_path) as launcher:
        for nid in (1, 2, 3):
            launcher.start_node(nid)
        launcher.wait_for_leader(timeout_s=30)
        with Client(launcher.servers[:3], timeout_s=30) as c:
            gone = _log_older_membership(launcher, c)
            addr = next(a for n, a in launcher.addresses.items() if n not in (gone, 4, 5))
            launcher.start_node(4, join=addr)
            _until("node 4 is a caught-up learner", lambda: _caught_up(c, 4, False), 30)
            if not _caught_up(c, 4, True):  # the other bug may keep it a learner
                _until("node 4 promoted", lambda: _promoted(c, 4), 15)
            c.transfer_leadership(to=4)
            _until("node 4 leads", lambda: c.members(timeout_s=2).leader_id == 4, 10)
            launcher.start_node(5, join=launcher.addresses[4])
            _until("node 5 is a caught-up learner", lambda: _caught_up(c, 5, False), 20)


def _promoted(c: Client, nid: int) -> bool:
    try:
        c.promote_member(nid, timeout_s=3)
    except RaftqError:
        return False
    return True
