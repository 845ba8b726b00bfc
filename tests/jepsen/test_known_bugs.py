"""Regression tests for node bugs the fault-injection runs found (black box: a process, a
socket). Each started as a strict xfail reproduction and became a plain test with the fix.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import cbor2
import pytest

from cluster.client import Client
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
