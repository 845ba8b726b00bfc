"""Reads under load for `scripts/bench cluster` (`--only reads`): queue_stats latency while an
open-loop producer offers a fixed rate of sends to the same queue.

Kept apart from `raftq_peer` (already long); it drives a started `RaftqSystem`'s cluster
through `cluster.client.AsyncClient`, as `RaftqSystem.paced` does.
"""

from __future__ import annotations

import itertools
from typing import Any

import trio

from bench_peers.common import body, latency_figures
from bench_peers.raftq_peer import RaftqSystem
from cluster.client import AsyncClient
from cluster.errors import RaftqError

_queue_no = itertools.count(1)
"""Numbers the queues this module creates (one per measurement)."""


def stats_under_load(system: RaftqSystem, rate_per_s: float, seconds_s: float) -> dict[str, Any]:
    """queue_stats latency at `rate_per_s` sends/s offered, for `seconds_s` seconds.

    The producer is `RaftqSystem.paced`'s (one client, a send of 1 KiB started every
    1/`rate_per_s` s, latency counted from the time each send was due). Meanwhile one reader,
    on its own client (so its own connection to the leader), calls `queue_stats` on the same
    queue one at a time (closed loop) from the producer's start until its last send is due.

    Args:
        system: a started `RaftqSystem`.
        rate_per_s: sends offered per second.
        seconds_s: length of the measurement in seconds.

    Returns:
        stats_n (queue_stats calls answered), stats_per_s, stats_errors, stats_p50_ms,
        stats_p99_ms, stats_max_ms; offered_per_s, sends_n, sends_per_s (achieved, as in
        `paced`: confirmed sends over the time until the last one was confirmed),
        sends_p50_ms, sends_p99_ms, sends_max_ms; messages (the queue's `messages` at the end).
    """
    assert system.launcher is not None
    return trio.run(_stats_under_load, list(system.launcher.servers), rate_per_s, seconds_s)


def _prefixed(prefix: str, figures: dict[str, float | None]) -> dict[str, float | None]:
    return {f"{prefix}_{k}": v for k, v in figures.items()}


async def _stats_under_load(
    servers: list[str], rate_per_s: float, seconds_s: float
) -> dict[str, Any]:
    send_lat_s: list[float] = []
    stats_lat_s: list[float] = []
    stats_errors = 0
    payload = body(0)
    async with AsyncClient(servers, timeout_s=60.0) as producer, \
            AsyncClient(servers, timeout_s=60.0) as reader:
        q = f"bench-reads-{next(_queue_no)}"
        await producer.create_queue(q, visibility_timeout_ms=300_000)
        for _ in range(50):  # warm both connections and the queue's actor, as `paced` does
            await producer.send(q, payload)
        for _ in range(20):
            await reader.queue_stats(q)

        period_s = 1.0 / rate_per_s
        count = int(seconds_s * rate_per_s)
        start_s = trio.current_time()  # trio's clock: the one sleep_until uses
        last_due_s = start_s + (count - 1) * period_s

        async def one_send(due_s: float) -> None:
            await producer.send(q, payload)
            send_lat_s.append(trio.current_time() - due_s)

        async def read_loop() -> None:
            nonlocal stats_errors
            while (t0_s := trio.current_time()) < last_due_s:
                try:
                    await reader.queue_stats(q)
                except RaftqError:  # counted; the reader goes on
                    stats_errors += 1
                    continue
                stats_lat_s.append(trio.current_time() - t0_s)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_loop)
            for i in range(count):
                due_s = start_s + i * period_s
                await trio.sleep_until(due_s)
                nursery.start_soon(one_send, due_s)
        elapsed_s = trio.current_time() - start_s
        read_s = max(last_due_s - start_s, 1e-9)
        messages = (await reader.queue_stats(q)).get("messages")
        with trio.move_on_after(30):
            await producer.delete_queue(q)
    return {
        "stats_n": len(stats_lat_s),
        "stats_per_s": len(stats_lat_s) / read_s,
        "stats_errors": stats_errors,
        **_prefixed("stats", latency_figures(stats_lat_s)),
        "offered_per_s": rate_per_s,
        "sends_n": len(send_lat_s),
        "sends_per_s": len(send_lat_s) / elapsed_s,
        **_prefixed("sends", latency_figures(send_lat_s)),
        "messages": messages,
    }
