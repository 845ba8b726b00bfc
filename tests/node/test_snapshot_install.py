"""A snapshot from the leader, streamed to a new follower: chunks written as they arrive, the
install prepared off the follower's event loop (which answers node_status meanwhile), a
snapshot that does not decode refused and fetched again, digests equal afterwards.

In-process nodes (tests/node/inproc.py: real TCP on 127.0.0.1, real RocksDB); every wait is
bounded.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import trio

from node import machine
from node.main import Node

from .inproc import Conn, make_config, wait_leader

MESSAGES = 3000
BODY_BYTES = 1024


async def _until(check: Any, timeout_s: float = 30) -> None:
    with trio.fail_after(timeout_s):
        while not check():
            await trio.sleep(0.02)


async def _three_then_two(nursery: trio.Nursery, cfg: Any) -> dict[int, Node]:
    """Start nodes 1 to 3 (a new cluster forms only with all three), then stop node 3; return
    nodes 1 and 2, running in `nursery`."""
    nodes = {i: Node(cfg, i) for i in (1, 2)}
    first3 = Node(cfg, 3)
    for n in nodes.values():
        await nursery.start(n.run)
    scope3 = trio.CancelScope()

    async def run_first3(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope3:
            await first3.run(task_status=task_status)

    await nursery.start(run_first3)
    await wait_leader({**nodes, 3: first3})
    scope3.cancel()
    await _until(lambda: first3.storage._db is None)
    return nodes


async def test_refused_snapshot_is_fetched_again_then_installed_off_the_loop(
    tmp_path: Path,
) -> None:
    cfg = make_config(tmp_path, snapshot_entries=10, log_margin_entries=0)
    async with trio.open_nursery() as nursery:
        nodes = await _three_then_two(nursery, cfg)
        shutil.rmtree(cfg.node(3).data_dir)  # node 3 went, and its disk with it
        leader = await wait_leader(nodes)
        conn = await Conn.open(cfg.node(leader.node_id).client_addr)
        assert (await conn.call("create_queue", {"name": "q"}))["ok"]
        for _ in range(MESSAGES // 100):
            batch = [{"body": os.urandom(BODY_BYTES)} for _n in range(100)]
            reply = await conn.call("enqueue_batch", {"queue": "q", "messages": batch})
            assert reply["ok"], reply
        await _until(lambda: leader.storage.snapshot_meta().index > 0)  # the log is compacted

        n3 = Node(cfg, 3)  # an empty disk: it needs the leader's snapshot
        prepare = n3.app.prepare_restore
        attempts: list[int] = []
        in_install = threading.Event()
        go_on = threading.Event()

        def planted(data: Any, index: int) -> None:
            attempts.append(index)
            assert n3.storage.snapshot_meta().index == 0  # nothing installed so far
            if len(attempts) == 1:
                raise machine.SnapshotError("planted: this snapshot does not decode")
            in_install.set()
            assert go_on.wait(20)
            prepare(data, index)

        n3.app.prepare_restore = planted  # type: ignore[method-assign]
        await nursery.start(n3.run)
        assert await trio.to_thread.run_sync(in_install.wait, 30)
        # The install is being prepared in a worker thread: the node answers meanwhile.
        with trio.fail_after(2):
            status = await n3.server.node_status()
        assert status["applied_index"] == 0 and n3.loop.stats["snapshots_refused"] == 1
        assert n3.storage.snapshot_meta().index == 0
        go_on.set()
        await _until(lambda: n3.loop.applied_index >= leader.loop.applied_index)
        assert n3.loop.stats["snapshots_installed"] == 1
        assert len(attempts) == 2 and attempts[1] >= attempts[0] > 0
        assert n3.storage.snapshot_meta().index >= attempts[1]
        # Everything arrived: same state and bodies everywhere.
        reply = await conn.call("enqueue", {"queue": "q", "body": b"after"})
        assert reply["ok"], reply
        everyone = [*nodes.values(), n3]
        await _until(lambda: len({n.loop.applied_index for n in everyone}) == 1)
        digests = {(await n.server.node_status(digest=True))["digest"] for n in everyone}
        assert len(digests) == 1
        assert n3.app.bodies.applied_index == n3.loop.applied_index
        await conn.aclose()
        nursery.cancel_scope.cancel()


async def test_a_follower_a_little_behind_catches_up_from_the_log_margin(tmp_path: Path) -> None:
    """Snapshots compact the log only up to `log_margin_entries` before their index, so a
    follower that missed fewer entries than that gets entries, not a snapshot."""
    cfg = make_config(tmp_path, snapshot_entries=10, log_margin_entries=1000)
    async with trio.open_nursery() as nursery:
        nodes = await _three_then_two(nursery, cfg)  # node 3 stopped; its disk stays
        leader = await wait_leader(nodes)
        conn = await Conn.open(cfg.node(leader.node_id).client_addr)
        assert (await conn.call("create_queue", {"name": "q"}))["ok"]
        for n in range(300):  # one entry each: 30 times snapshot_entries
            assert (await conn.call("enqueue", {"queue": "q", "body": b"m%d" % n}))["ok"]
        await _until(lambda: leader.storage.snapshot_meta().index > 200)
        assert leader.storage.first_index() < 100  # the margin: older entries stay in the log
        n3 = Node(cfg, 3)
        await nursery.start(n3.run)
        await _until(lambda: n3.loop.applied_index >= leader.loop.applied_index)
        assert n3.loop.stats["snapshots_installed"] == 0  # caught up from the log
        everyone = [*nodes.values(), n3]
        digests = {(await n.server.node_status(digest=True))["digest"] for n in everyone}
        assert len(digests) == 1
        await conn.aclose()
        nursery.cancel_scope.cancel()
