"""Throughput figures for the I/O layer (not a test): `python -m tests.io.bench_io [part ...]`.

Parts: `codec`, `storage`, `transport` (default: all). Prints one line per figure.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import trio

from node.codec import FrameDecoder, decode_raft_message, encode_frame, encode_raft_message
from node.raft._ready import Ready
from node.raft._types import (
    AppendEntries,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    Index,
    Message,
    NodeId,
    Term,
)
from node.storage import RocksStorage
from node.transport import Transport


def _ae(entries: int, size_bytes: int) -> AppendEntries:
    batch = tuple(
        Entry(Term(2), Index(11 + i), EntryKind.NORMAL, b"x" * size_bytes) for i in range(entries)
    )
    return AppendEntries(Term(2), NodeId(1), NodeId(2), Index(10), Term(2), batch, Index(9))


def bench_codec() -> None:
    for name, msg, n in (
        ("Heartbeat", Heartbeat(Term(5), NodeId(1), NodeId(2), Index(9)), 200_000),
        ("AppendEntries 1 x 200 B", _ae(1, 200), 100_000),
        ("AppendEntries 64 x 1 KiB", _ae(64, 1024), 3_000),
    ):
        start = time.perf_counter()
        frames = [encode_frame(encode_raft_message(msg)) for _ in range(n)]
        encoded = time.perf_counter()
        decoder = FrameDecoder()
        decoder.feed(b"".join(frames))
        joined = time.perf_counter()
        count = 0
        while (frame := decoder.next_frame()) is not None:
            decode_raft_message(frame)
            count += 1
        decoded = time.perf_counter()
        assert count == n
        print(
            f"codec {name} ({len(frames[0])} B/frame): encode {n / (encoded - start):,.0f}/s, "
            f"decode {n / (decoded - joined):,.0f}/s"
        )


def _ready(first: int, entries: int, size_bytes: int, sync: bool) -> Ready:
    batch = tuple(
        Entry(Term(1), Index(first + i), EntryKind.NORMAL, b"x" * size_bytes)
        for i in range(entries)
    )
    return Ready(
        hard_state=HardState(Term(1), NodeId(1), Index(max(0, first - 1))),
        entries=batch,
        snapshot=None,
        messages=(),
        early_messages=(),
        committed_entries=(),
        soft_state=None,
        dropped=(),
        must_sync=sync,
    )


def bench_storage() -> None:
    for entries, size_bytes, sync, seconds in (
        (64, 1024, True, 3.0),
        (1, 100, True, 2.0),
        (64, 1024, False, 2.0),
    ):
        with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
            with RocksStorage.open(tmp, cluster_id="bench", node_id=1, membership=(1,)) as storage:
                next_index = 1
                count = 0
                start = time.perf_counter()
                while time.perf_counter() - start < seconds:
                    storage.persist(_ready(next_index, entries, size_bytes, sync))
                    next_index += entries
                    count += 1
                elapsed = time.perf_counter() - start
                reads = 0
                read_start = time.perf_counter()
                last = storage.last_index()
                for i in range(100_000):
                    storage.term(Index(last - i % min(1000, last)))
                    reads += 1
                read_elapsed = time.perf_counter() - read_start
        print(
            f"storage persist {entries} x {size_bytes} B, sync={sync}: {count / elapsed:,.0f} "
            f"batches/s ({count * entries / elapsed:,.0f} entries/s, "
            f"{count * entries * size_bytes / elapsed / 2**20:,.1f} MiB/s); "
            f"term() {reads / read_elapsed:,.0f}/s"
        )


async def _bench_transport(messages: list[Message], label: str) -> None:
    secret = b"s" * 32
    send_a, recv_a = trio.open_memory_channel[Message](10_000)
    send_b, recv_b = trio.open_memory_channel[Message](10_000)
    a = Transport(1, "bench", secret, ("127.0.0.1", 0), {}, send_a)
    b = Transport(2, "bench", secret, ("127.0.0.1", 0), {}, send_b)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        await a.update_peers({2: b.listen_address})
        await b.update_peers({1: a.listen_address})
        await a.wait_connected(2)
        total = 0
        start = time.perf_counter()
        deadline = start + 2.0
        while time.perf_counter() < deadline:
            for msg in messages:
                a.send(msg)
            received = 0
            while received < len(messages):
                await recv_b.receive()
                received += 1
                while received < len(messages):  # drain without a scheduling round each
                    try:
                        recv_b.receive_nowait()
                    except trio.WouldBlock:
                        break
                    received += 1
            total += len(messages)
        elapsed = time.perf_counter() - start
        print(f"transport {label}: {total / elapsed:,.0f} msgs/s delivered (one direction)")
        nursery.cancel_scope.cancel()


def bench_transport() -> None:
    hb: Message = Heartbeat(Term(5), NodeId(1), NodeId(2), Index(9))
    small: Message = _ae(1, 200)
    large: Message = _ae(64, 1024)
    trio.run(_bench_transport, [hb] * 1000, "Heartbeat, 1000 queued per round")
    trio.run(_bench_transport, [small] * 1000, "AppendEntries 1 x 200 B, 1000 per round")
    trio.run(_bench_transport, [large] * 50, "AppendEntries 64 x 1 KiB, 50 per round")


if __name__ == "__main__":
    parts = sys.argv[1:] or ["codec", "storage", "transport"]
    for part in parts:
        {"codec": bench_codec, "storage": bench_storage, "transport": bench_transport}[part]()
