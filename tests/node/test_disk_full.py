"""The free-disk alarm on a small filesystem (a tmpfs of 96 MiB mounted by the test): below
`disk_free_limit_bytes` sends are refused with the retryable DISK_FULL within a second, while
receives and acks go on; once space returns, sends are taken again.

In-process nodes (tests/node/inproc.py) whose data directories are on the tmpfs; every wait is
bounded. Needs root (mount), as CI has.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from .inproc import Conn, make_config, running_cluster, wait_leader

LIMIT_BYTES = 40 << 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"cannot mount a tmpfs (this test needs root): {done.stderr}"
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def _fill_until_free_below(fs: Path, free_bytes: int) -> Path:
    filler = fs / "filler"
    with filler.open("ab") as f:
        while shutil.disk_usage(fs).free >= free_bytes:
            f.write(b"\xa5" * (1 << 20))
            f.flush()
    return filler


async def _until(check: Any, timeout_s: float) -> float:
    start = trio.current_time()
    with trio.fail_after(timeout_s):
        while not await check():
            await trio.sleep(0.05)
    return trio.current_time() - start


async def test_sends_are_refused_while_the_disk_is_nearly_full_and_resume(
    small_fs: Path,
) -> None:
    cfg = make_config(small_fs, disk_free_limit_bytes=LIMIT_BYTES)
    async with running_cluster(cfg) as nodes:
        leader = await wait_leader(nodes)
        conn = await Conn.open(cfg.node(leader.node_id).client_addr)
        assert (await conn.call("create_queue", {"name": "q"}))["ok"]
        for n in range(5):
            assert (await conn.call("enqueue", {"queue": "q", "body": b"m%d" % n}))["ok"]
        got = await conn.call("receive", {"queue": "q", "consumer": "t", "max_messages": 2})
        receipts = [m["receipt"] for m in got["result"]["messages"]]
        assert len(receipts) == 2

        filler = _fill_until_free_below(small_fs, LIMIT_BYTES - (4 << 20))
        refused: dict[str, Any] = {}

        async def send_refused() -> bool:
            reply = await conn.call("enqueue", {"queue": "q", "body": b"late"})
            if not reply["ok"]:
                refused.update(reply["error"])
            return not reply["ok"]

        took_s = await _until(send_refused, 5)
        assert took_s < 2  # the alarm looks every 0.5 s
        assert refused["code"] == "DISK_FULL" and refused["retryable"] is True
        assert "disk_free_limit_bytes" in refused["message"]
        batch = await conn.call("enqueue_batch", {"queue": "q", "messages": [{"body": b"b"}]})
        assert not batch["ok"] and batch["error"]["code"] == "DISK_FULL"
        status = await conn.call("node_status")
        assert status["result"]["disk_alarm"] is True
        # What frees space goes on: acks and receives.
        acked = await conn.call("ack", {"queue": "q", "receipts": receipts})
        assert acked["ok"] and acked["result"]["acked"] == 2, acked
        again = await conn.call("receive", {"queue": "q", "consumer": "t", "max_messages": 10})
        assert again["ok"] and len(again["result"]["messages"]) >= 3  # the 5, less 2 acked

        filler.unlink()  # space returns

        async def send_taken() -> bool:
            return bool((await conn.call("enqueue", {"queue": "q", "body": b"back"}))["ok"])

        await _until(send_taken, 5)
        status = await conn.call("node_status")
        assert status["result"]["disk_alarm"] is False
        await conn.aclose()
