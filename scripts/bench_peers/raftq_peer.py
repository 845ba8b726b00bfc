"""raftq as a benchmark system: a local three-node cluster, as a user would run it.

The nodes are started by `cluster.launcher.Launcher` (one `python -m node` process each, data
in a temporary directory, ports chosen free on 127.0.0.1) and driven by `cluster.client
.AsyncClient` from this process. Every figure is of confirmed operations: a send counts when
its reply came, which means committed on a majority, fsynced and applied.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench_peers.common import (
    BODY_BYTES,
    RssSampler,
    body,
    latency_figures,
    pick_base_port,
    rate_window,
)
from cluster.client import AsyncClient
from cluster.errors import RaftqError
from cluster.launcher import Launcher
from node.config import local_cluster

RECEIVE_BATCH = 100
"""Messages per `receive` and receipts per `ack` when draining (the protocol's maximum)."""


class RaftqSystem:
    """A local three-node raftq cluster under benchmark.

    Args:
        nodes: number of nodes (3).
        keep_data: leave the temporary directory (config, logs, data) after `stop`.
    """

    name = "raftq"

    def __init__(self, nodes: int = 3, keep_data: bool = False) -> None:
        self.nodes = nodes
        self.keep_data = keep_data
        self.dir: Path | None = None
        self.launcher: Launcher | None = None
        self._queue_no = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the cluster and wait for a leader.

        Raises:
            cluster.launcher.LauncherError: a node did not start or no leader came.
        """
        self.dir = Path(tempfile.mkdtemp(prefix="raftq-bench-"))
        base = pick_base_port([i for n in range(1, self.nodes + 1) for i in (n, 100 + n)])
        cfg = local_cluster(self.dir, nodes=self.nodes, base_port=base)
        self.launcher = Launcher(cfg)
        self.launcher.start(timeout_s=30.0)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL by pid) and remove the data."""
        if self.launcher is not None:
            self.launcher.stop(timeout_s=10.0)
            self.launcher = None
        if self.dir is not None and not self.keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def describe(self) -> str:
        """One line: what runs where."""
        assert self.launcher is not None
        return f"raftq {self.nodes} nodes, {', '.join(self.launcher.servers)}, data in {self.dir}"

    def node_pids(self) -> dict[str, int]:
        """Node name ("n1") -> pid of each running node."""
        assert self.launcher is not None
        return {f"n{nid}": pid for nid, pid in self.launcher.pids.items()}

    def _client(self) -> AsyncClient:
        assert self.launcher is not None
        return AsyncClient(self.launcher.servers, timeout_s=60.0)

    async def _new_queue(self, client: AsyncClient, label: str) -> str:
        self._queue_no += 1
        name = f"bench-{label}-{self._queue_no}"
        await client.create_queue(name, visibility_timeout_ms=300_000)
        return name

    async def leader_id(self) -> int:
        """The current leader's node id (asks the cluster)."""
        async with self._client() as c:
            for _ in range(100):
                status = await c.cluster_status()
                if isinstance(status.get("leader_id"), int):
                    return int(status["leader_id"])
                await trio.sleep(0.1)
        raise RuntimeError("no leader")

    def leader_pid(self) -> int:
        """The pid of the current leader."""
        assert self.launcher is not None
        return self.launcher.pids[trio.run(self.leader_id)]

    # -- workloads ------------------------------------------------------------------------

    def one_at_a_time(self, seconds: float) -> dict[str, Any]:
        """Workload 1: one producer, one confirmed send at a time, for `seconds`."""
        return trio.run(self._one_at_a_time, seconds)

    async def _one_at_a_time(self, seconds: float) -> dict[str, Any]:
        async with self._client() as c:
            q = await self._new_queue(c, "w1")
            payload = body(0)
            for _ in range(20):  # warm the connection and the queue's actor
                await c.send(q, payload)
            lat: list[float] = []
            start = time.perf_counter()
            deadline = start + seconds
            while (t0 := time.perf_counter()) < deadline:
                await c.send(q, payload)
                lat.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            await c.delete_queue(q)
        return {"rate_per_s": len(lat) / elapsed, "n": len(lat), **latency_figures(lat)}

    def in_flight(
        self, in_flight: int, seconds: float, producers: int = 16, kill_leader_at_s: float | None = None
    ) -> dict[str, Any]:
        """Workload 2 (and 5): `producers` clients keeping `in_flight` sends outstanding.

        Args:
            in_flight: sends outstanding at any time, over all producers.
            seconds: length of the measurement in seconds.
            producers: number of clients (one connection each to the leader).
            kill_leader_at_s: when set, SIGKILL the leader this many seconds in (workload 5).

        Returns:
            rate_per_s, p50_ms, p99_ms, n; with a kill also the failover figures.
        """
        return trio.run(self._in_flight, in_flight, seconds, producers, kill_leader_at_s)

    async def _in_flight(
        self, in_flight: int, seconds: float, producers: int, kill_leader_at_s: float | None
    ) -> dict[str, Any]:
        clients = [self._client() for _ in range(producers)]
        starts: list[float] = []
        dones: list[float] = []
        errors: list[str] = []
        payload = body(0)
        async with AsyncClient(self.launcher.servers if self.launcher else [], timeout_s=60.0) as admin:
            q = await self._new_queue(admin, "w2" if kill_leader_at_s is None else "w5")
            kill_at: list[float] = []
            async with contextlib.AsyncExitStack() as stack:
                for c in clients:
                    await stack.enter_async_context(c)
                for c in clients:  # connect each to the leader before the clock starts
                    await c.send(q, payload)
                start = time.monotonic()
                deadline = start + seconds

                async def worker(c: AsyncClient) -> None:
                    while (t0 := time.monotonic()) < deadline:
                        try:
                            await c.send(q, payload)
                        except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                            errors.append(type(exc).__name__)
                            continue
                        starts.append(t0)
                        dones.append(time.monotonic())

                async with trio.open_nursery() as nursery:
                    for i in range(in_flight):
                        nursery.start_soon(worker, clients[i % producers])
                    if kill_leader_at_s is not None:
                        await trio.sleep(kill_leader_at_s)
                        leader = int((await admin.cluster_status())["leader_id"])
                        assert self.launcher is not None
                        kill_at.append(time.monotonic())
                        self.launcher.kill(leader)
                end = time.monotonic()
            with trio.move_on_after(30):
                await admin.delete_queue(q)
        lat = [d - s for s, d in zip(starts, dones, strict=True)]
        out: dict[str, Any] = {
            "rate_per_s": len(dones) / (end - start),
            "n": len(dones),
            "errors": len(errors),
            **latency_figures(lat),
        }
        if kill_at:
            out.update(failover_figures(starts, dones, kill_at[0], start, end))
        return out

    def drain(self, backlog: int, consumers: int = 4) -> dict[str, Any]:
        """Workload 3: fill a queue with `backlog` messages, then receive + ack them all.

        Receives take up to 100 messages and each batch is acked with one `ack` call.

        Returns:
            rate_per_s (messages received and acked per second), fill_rate_per_s, n.
        """
        return trio.run(self._drain_only, backlog, consumers)

    async def _fill(self, c: AsyncClient, q: str, n: int, tasks: int = 8) -> float:
        """Enqueue `n` messages with batches of 100 from `tasks` tasks; returns messages/s."""
        batches = math.ceil(n / RECEIVE_BATCH)
        counter = iter(range(batches))
        start = time.monotonic()

        async def filler() -> None:
            for b in counter:
                size = min(RECEIVE_BATCH, n - b * RECEIVE_BATCH)
                await c.send_batch(q, [body(b * RECEIVE_BATCH + i) for i in range(size)])

        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(filler)
        return n / (time.monotonic() - start)

    async def _drain(self, q: str, n: int, consumers: int) -> tuple[float, int]:
        """Receive + ack `n` messages from `q` with `consumers` clients.

        A receive or ack whose outcome is unknown (an election during the drain) is counted
        and the consumer goes on; the messages of a lost ack come back after their 60 s lease.

        Returns:
            (messages acked per second, number of failed calls).
        """
        acked = 0
        failed = 0
        start = time.monotonic()

        async def consumer() -> None:
            nonlocal acked, failed
            async with self._client() as c:
                while acked < n:
                    try:
                        msgs = await c.receive(q, max_messages=RECEIVE_BATCH, wait_s=0.5,
                                               visibility_timeout_ms=60_000)
                        if msgs:
                            res = await c.ack(q, [m.receipt for m in msgs])
                            acked += res.acked
                    except RaftqError:
                        failed += 1
                        await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            for _ in range(consumers):
                nursery.start_soon(consumer)
        return acked / (time.monotonic() - start), failed

    async def _drain_only(self, backlog: int, consumers: int) -> dict[str, Any]:
        async with self._client() as c:
            q = await self._new_queue(c, "w3")
            fill_rate = await self._fill(c, q, backlog)
            rate, failed = await self._drain(q, backlog, consumers)
            await c.delete_queue(q)
        return {"rate_per_s": rate, "fill_rate_per_s": fill_rate, "n": backlog,
                "failed_calls": failed}

    def backlog(
        self, n: int, in_flight: int = 1000, producers: int = 16, consumers: int = 4
    ) -> dict[str, Any]:
        """Workload 4: enqueue `n` messages (as workload 2), then drain them (as workload 3).

        Returns:
            enqueue_rate_per_s, drain_rate_per_s, peak resident memory of each node in MiB
            (`rss_mib`, sampled every 0.25 s during both phases).
        """
        with RssSampler(self.node_pids()) as rss:
            out = trio.run(self._backlog, n, in_flight, producers, consumers)
        out["rss_mib"] = rss.peak_mib()
        out["rss_peak_mib"] = max(out["rss_mib"].values())
        return out

    async def _backlog(self, n: int, in_flight: int, producers: int, consumers: int) -> dict[str, Any]:
        async with self._client() as admin:
            q = await self._new_queue(admin, "w4")
            clients = [self._client() for _ in range(producers)]
            payload = body(0)
            sent = 0
            start = time.monotonic()
            async with contextlib.AsyncExitStack() as stack:
                for c in clients:
                    await stack.enter_async_context(c)

                async def worker(c: AsyncClient) -> None:
                    nonlocal sent
                    while sent < n:
                        sent += 1
                        try:
                            await c.send(q, payload)
                        except RaftqError:  # not enqueued, or unknown: send another
                            sent -= 1

                async with trio.open_nursery() as nursery:
                    for i in range(in_flight):
                        nursery.start_soon(worker, clients[i % producers])
            enqueue_s = time.monotonic() - start
            print(f"    raftq: {n:,} enqueued in {enqueue_s:.0f} s; draining", flush=True)
            depth = (await admin.queue_stats(q)).get("ready")
            drain_rate, failed = await self._drain(q, n, consumers)
            with trio.move_on_after(60):
                await admin.delete_queue(q)
        return {
            "enqueue_rate_per_s": n / enqueue_s,
            "drain_rate_per_s": drain_rate,
            "n": n,
            "depth_at_peak": depth,
            "failed_drain_calls": failed,
        }

    def paced(self, rate_per_s: float, seconds: float) -> dict[str, Any]:
        """Confirm latency at a fixed offered rate (open loop: a send starts every 1/rate s).

        Latency is counted from the time the send was due, so a stall is not hidden
        (no coordinated omission).

        Returns:
            offered_per_s, achieved_per_s, p50_ms, p99_ms, max_ms, n.
        """
        return trio.run(self._paced, rate_per_s, seconds)

    async def _paced(self, rate_per_s: float, seconds: float) -> dict[str, Any]:
        lat: list[float] = []
        payload = body(0)
        async with self._client() as c:
            q = await self._new_queue(c, "paced")
            for _ in range(50):
                await c.send(q, payload)

            async def one(due: float) -> None:
                await c.send(q, payload)
                lat.append(trio.current_time() - due)

            period_s = 1.0 / rate_per_s
            start = trio.current_time()  # trio's clock: the one sleep_until uses
            count = int(seconds * rate_per_s)
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    due = start + i * period_s
                    await trio.sleep_until(due)
                    nursery.start_soon(one, due)
            elapsed = trio.current_time() - start
            await c.delete_queue(q)
        return {
            "offered_per_s": rate_per_s,
            "achieved_per_s": len(lat) / elapsed,
            "n": len(lat),
            **latency_figures(lat),
        }


def failover_figures(
    starts: list[float], dones: list[float], kill_s: float, run_start_s: float, run_end_s: float
) -> dict[str, Any]:
    """Failover figures from per-operation start and confirm times (monotonic seconds).

    Args:
        starts: when each confirmed operation was started.
        dones: when it was confirmed (same order).
        kill_s: when the leader was sent SIGKILL.
        run_start_s: start of the measurement.
        run_end_s: end of the measurement.

    Returns:
        failover_ms: from the kill to the first confirm of an operation started after it;
        gap_ms: the longest time without any confirm around the kill; rate_before_per_s and
        rate_after_per_s: confirms per second before the kill and after the first post-kill
        confirm (to the end of the run).
    """
    after = [d for s, d in zip(starts, dones, strict=True) if s >= kill_s]
    first_s = min(after) if after else None
    ordered = sorted(dones)
    before = [d for d in ordered if d < kill_s]
    seq = before[-1:] + [d for d in ordered if d >= kill_s]
    gaps = [b - a for a, b in zip(seq, seq[1:], strict=False)]
    return {
        "failover_ms": (first_s - kill_s) * 1000 if first_s is not None else None,
        "gap_ms": max(gaps) * 1000 if gaps else None,
        "rate_before_per_s": rate_window(dones, run_start_s, kill_s),
        "rate_after_per_s": rate_window(dones, first_s, run_end_s) if first_s else None,
        "body_bytes": BODY_BYTES,
    }
