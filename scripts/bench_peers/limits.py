"""The machine's limits, measured in the same run: fsync, synced RocksDB batches, trio loopback.

These bound what any replicated queue can do here: a confirmed send one at a time needs at
least one fsync on the leader and one on a follower; a pipelined send shares its fsync with
others (group commit) but still crosses the loopback twice between nodes and once each way to
the client.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench_peers.common import BODY_BYTES


def fsync_per_s(directory: Path, seconds: float, size_bytes: int = BODY_BYTES) -> float:
    """Appends of `size_bytes` each followed by `os.fsync`, per second, in `directory`."""
    path = directory / "fsync.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    data = b"f" * size_bytes
    n = 0
    try:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            os.write(fd, data)
            os.fsync(fd)
            n += 1
        return n / (time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def rocksdb_synced_batches(
    directory: Path, rows_per_batch: int, seconds: float, row_bytes: int = BODY_BYTES
) -> dict[str, float]:
    """Synced `WriteBatch` writes of `rows_per_batch` rows of `row_bytes` in a fresh RocksDB.

    Keys are big-endian indexes, as raftq's log. Returns batches_per_s and rows_per_s.
    """
    from rocksdict import Options, Rdict, WriteBatch, WriteOptions

    path = directory / f"rocks-{rows_per_batch}"
    db = Rdict(str(path), Options(raw_mode=True))
    wo = WriteOptions()
    wo.sync = True
    value = b"r" * row_bytes
    index = 0
    batches = 0
    try:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            wb = WriteBatch(raw_mode=True)
            for _ in range(rows_per_batch):
                index += 1
                wb.put(index.to_bytes(8, "big"), value)
            db.write(wb, wo)
            batches += 1
        elapsed = time.perf_counter() - start
    finally:
        db.close()
        Rdict.destroy(str(path))
        shutil.rmtree(path, ignore_errors=True)
    return {"batches_per_s": batches / elapsed, "rows_per_s": batches * rows_per_batch / elapsed}


async def _loopback(seconds: float, frame_bytes: int, coalesce: int) -> dict[str, float]:
    """trio over 127.0.0.1: one-way frames/s with `coalesce` frames per send_all, and round trips/s."""
    received = 0
    frame = (frame_bytes).to_bytes(4, "big") + b"l" * frame_bytes
    chunk = frame * coalesce

    async def sink(stream: trio.SocketStream) -> None:
        nonlocal received
        while data := await stream.receive_some(1 << 20):
            received += len(data)

    async def echo(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, sink, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        sent = 0
        while trio.current_time() - start < seconds:
            await stream.send_all(chunk)
            sent += len(chunk)
        while received < sent:
            await trio.sleep(0.001)
        frames_per_s = sent / len(frame) / (trio.current_time() - start)
        await stream.aclose()

        listeners2 = await nursery.start(functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
        port2 = listeners2[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port2)
        ping = b"p" * 100
        trips = 0
        start = trio.current_time()
        while trio.current_time() - start < seconds:
            await stream.send_all(ping)
            got = 0
            while got < len(ping):
                got += len(await stream.receive_some(65536))
            trips += 1
        round_trips_per_s = trips / (trio.current_time() - start)
        await stream.aclose()
        nursery.cancel_scope.cancel()
    return {
        "frames_per_s": frames_per_s,
        "mib_per_s": frames_per_s * len(frame) / 2**20,
        "round_trips_per_s": round_trips_per_s,
    }


def measure(directory: Path | None, seconds: float) -> dict[str, Any]:
    """Every limit, each measured for `seconds`, on the disk of `directory` (a temp dir)."""
    tmp = Path(tempfile.mkdtemp(prefix="raftq-limits-", dir=directory))
    try:
        out: dict[str, Any] = {"fsync_per_s": fsync_per_s(tmp, seconds)}
        one = rocksdb_synced_batches(tmp, 1, seconds)
        hundred = rocksdb_synced_batches(tmp, 100, seconds)
        out["rocksdb_sync_1row_per_s"] = one["batches_per_s"]
        out["rocksdb_sync_100rows_batches_per_s"] = hundred["batches_per_s"]
        out["rocksdb_sync_100rows_rows_per_s"] = hundred["rows_per_s"]
        loop = trio.run(_loopback, seconds, BODY_BYTES, 64)
        out["trio_frames_per_s"] = loop["frames_per_s"]
        out["trio_mib_per_s"] = loop["mib_per_s"]
        out["trio_round_trips_per_s"] = loop["round_trips_per_s"]
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
