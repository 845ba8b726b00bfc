"""raftq as a benchmark system: a local three-node cluster, as a user would run it.

The nodes are started by `cluster.launcher.Launcher` (one `python -m node` process each, data
in a temporary directory, ports chosen free on 127.0.0.1) and driven by `cluster.client
.AsyncClient` from this process. Every figure is of confirmed operations: a send counts when
its reply came, which means committed on a majority, fsynced and applied.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import trio

from bench_peers.common import (
    BODY_BYTES,
    RssSampler,
    body,
    latency_figures,
    pick_base_port,
    random_body,
    rate_window,
)
from cluster.client import AsyncClient
from cluster.errors import RaftqError
from cluster.launcher import Launcher
from node.config import local_cluster

RECEIVE_BATCH = 100
"""Messages per `receive` and receipts per `ack` when draining (the protocol's maximum)."""

REPAIR_LOG_EVENTS = (
    "serving clients", "lost durable state", "standing ", "installed snapshot",
    "state restored", "snapshot at index", "cannot start",
)
"""Lines of the repaired node's log shown in its repair timeline (substrings)."""


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
        self, n: int, in_flight: int = 1000, producers: int = 16, consumers: int = 4,
        random_bodies: bool = False,
    ) -> dict[str, Any]:
        """Workload 4: enqueue `n` messages (as workload 2), then drain them (as workload 3).

        Args:
            random_bodies: every body random bytes of its own (incompressible); else one
                body for all.

        Returns:
            enqueue_rate_per_s, drain_rate_per_s, peak resident memory of each node in MiB
            (`rss_mib`, sampled every 0.25 s during both phases), and each node's resident
            memory with all `n` queued (`rss_at_depth_mib`, 2 s after the last send).
        """
        with RssSampler(self.node_pids()) as rss:
            out = trio.run(self._backlog, n, in_flight, producers, consumers, random_bodies,
                           rss)
        out["rss_mib"] = rss.peak_mib()
        out["rss_peak_mib"] = max(out["rss_mib"].values())
        return out

    async def _backlog(self, n: int, in_flight: int, producers: int, consumers: int,
                       random_bodies: bool, rss: RssSampler) -> dict[str, Any]:
        async with self._client() as admin:
            q = await self._new_queue(admin, "w4")
            clients = [self._client() for _ in range(producers)]
            payload = body(0)
            make = random_body if random_bodies else (lambda: payload)
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
                            await c.send(q, make())
                        except RaftqError:  # not enqueued, or unknown: send another
                            sent -= 1

                async with trio.open_nursery() as nursery:
                    for i in range(in_flight):
                        nursery.start_soon(worker, clients[i % producers])
            enqueue_s = time.monotonic() - start
            print(f"    raftq: {n:,} enqueued in {enqueue_s:.0f} s; draining", flush=True)
            depth = (await admin.queue_stats(q)).get("ready")
            await trio.sleep(2.0)
            at_depth = rss.current_mib()
            children = rss.children()  # a snapshot child running counts in `at_depth`
            drain_rate, failed = await self._drain(q, n, consumers)
            with trio.move_on_after(60):
                await admin.delete_queue(q)
        return {
            "enqueue_rate_per_s": n / enqueue_s,
            "drain_rate_per_s": drain_rate,
            "n": n,
            "depth_at_peak": depth,
            "rss_at_depth_mib": at_depth,
            "children_at_depth": children,
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

    # -- repair of a wiped follower -------------------------------------------------------

    def fill(self, n: int, mode: str = "batch") -> dict[str, Any]:
        """Enqueue `n` messages into a new queue and leave them there, as the backlog for
        `repair`.

        Args:
            n: messages.
            mode: "batch": `send_batch` of 100 from 8 tasks (workload 3's fill, the fastest;
                one log entry per 100 messages, so the log stays short of `snapshot_entries`
                and the leader keeps no snapshot); "single": one `send` per message, not
                coalesced, 1,000 outstanding over 16 clients (one log entry per message: the
                leader compacts its log into snapshots, and a repair installs one).

        Returns:
            queue (its name), n, mode, fill_rate_per_s.
        """
        if mode not in ("batch", "single"):
            raise ValueError(f"unknown fill mode {mode!r}")
        return trio.run(self._fill_new, n, mode)

    async def _fill_new(self, n: int, mode: str) -> dict[str, Any]:
        async with self._client() as c:
            q = await self._new_queue(c, "repair")
            if n <= 0:
                rate = None
            elif mode == "batch":
                rate = await self._fill(c, q, n)
            else:
                rate = await self._fill_single(q, n)
        return {"queue": q, "n": n, "mode": mode, "fill_rate_per_s": rate}

    async def _fill_single(
        self, q: str, n: int, in_flight: int = 1000, producers: int = 16
    ) -> float:
        """Enqueue `n` messages one `send` each (no coalescing); returns messages/s."""
        assert self.launcher is not None
        left = n
        start = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    AsyncClient(self.launcher.servers, timeout_s=60.0, coalesce_sends=False))
                for _ in range(producers)
            ]

            async def worker(c: AsyncClient) -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    try:
                        await c.send(q, body(n - left))
                    except RaftqError:  # not enqueued, or unknown: send another
                        left += 1

            async with trio.open_nursery() as nursery:
                for i in range(in_flight):
                    nursery.start_soon(worker, clients[i % producers])
        return n / (time.monotonic() - start)

    def repair(
        self,
        queue: str | None = None,
        exclude: Collection[int] = (),
        load_in_flight: int = 0,
        producers: int = 16,
        timeout_s: float = 600.0,
    ) -> dict[str, Any]:
        """Repair of a wiped follower: SIGKILL a follower, move its data directory away
        (`<data_dir>` -> `<data_dir>.lost`), start it again with the same id, and time it until
        its `node_status` shows `standing` "voter" and its `applied_index` reaches the
        leader's (read just before it, so that with producers running it is the leader's
        index of that moment).

        Args:
            queue: the backlog's queue (from `fill`), for the number of messages it holds.
            exclude: node ids not to pick (e.g. the follower repaired before).
            load_in_flight: sends kept outstanding by `producers` clients from 1 s before the
                kill until the node is repaired (0: no load).
            producers: clients sharing `load_in_flight`.
            timeout_s: give up after this long from the restart (`timed_out` is then True).

        Returns:
            node (id), leader (id at the end), timed_out, repair_s (restart to voter and
            caught up), serving_s (first status answer), voter_s (first status with standing
            voter), caught_up_s (first with the leader's applied index), standings (standing
            -> first seen, s), entries (the leader's applied index then), messages (the
            queue's `messages`), lost_bytes (size of the moved directory), new_bytes (size of
            the new one when repaired), received_bytes (what its peers sent it since the
            restart: TCP `bytes_received` of the connections to its Raft port, from `ss`,
            when repaired; None without `ss`), entries_per_s, messages_per_s, bytes_per_s
            (received_bytes over repair_s), leader_snapshot_index and leader_snapshot_bytes
            (the leader's last snapshot, from its log), snapshot_installed (the node logged
            "installed snapshot"), final_status, events (its log lines after the restart that
            say what it did, as [seconds after the restart, text]);
            with load also sends and sends_per_s during the repair and the load's errors.
        """
        return trio.run(self._repair, queue, exclude, load_in_flight, producers, timeout_s)

    async def _wait_in_sync(self, c: AsyncClient, timeout_s: float) -> None:
        """Wait until every node has applied the leader's commit index."""
        assert self.launcher is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader = await self.leader_id()
            target = (await c.node_status(self.launcher.addresses[leader]))["commit_index"]
            applied = []
            for addr in self.launcher.servers:
                with contextlib.suppress(RaftqError):
                    applied.append((await c.node_status(addr, timeout_s=5.0))["applied_index"])
            if len(applied) == len(self.launcher.servers) and min(applied) >= target:
                return
            await trio.sleep(0.2)
        raise RuntimeError(f"nodes not in sync after {timeout_s:g} s")

    async def _repair(
        self,
        queue: str | None,
        exclude: Collection[int],
        load_in_flight: int,
        producers: int,
        timeout_s: float,
    ) -> dict[str, Any]:
        launcher = self.launcher
        assert launcher is not None
        payload = body(0)
        sends: list[float] = []
        errors: list[str] = []
        stop_load = trio.Event()
        async with contextlib.AsyncExitStack() as stack:
            c = await stack.enter_async_context(self._client())
            probe = await stack.enter_async_context(AsyncClient(
                launcher.servers, timeout_s=5.0, request_timeout_s=1.0, backoff_max_s=0.1))
            await self._wait_in_sync(c, 120.0)
            leader = await self.leader_id()
            candidates = [n for n in launcher.node_ids if n != leader and n not in exclude]
            follower = candidates[0] if candidates else None
            if follower is None:
                raise RuntimeError(f"no follower to repair (leader {leader}, excluded {exclude})")
            addr = launcher.addresses[follower]
            before = await c.node_status(launcher.addresses[leader])
            data_dir = launcher.config.node(follower).data_dir
            lost = data_dir.with_name(data_dir.name + ".lost")
            if lost.exists():
                raise RuntimeError(f"{lost} exists already")
            clients = [self._client() for _ in range(producers if load_in_flight else 0)]
            for pc in clients:
                await stack.enter_async_context(pc)
            load_q = await self._new_queue(c, "repair-load") if load_in_flight else None
            nursery = await stack.enter_async_context(trio.open_nursery())

            for i in range(load_in_flight):
                assert load_q is not None
                nursery.start_soon(keep_sending, clients[i % producers], load_q, payload,
                                   stop_load, sends, errors)
            if load_in_flight:
                await trio.sleep(1.0)
            launcher.kill(follower)
            await trio.to_thread.run_sync(shutil.move, str(data_dir), str(lost))  # mv
            log_offset = launcher.log_path(follower).stat().st_size
            wall0 = time.time()
            t0 = time.monotonic()
            launcher.start_node(follower)
            raft_port = launcher.config.node(follower).raft_addr[1]
            received: int | None = None
            standings: dict[str, float] = {}
            serving_s = caught_up_s = voter_s = None
            leader_addr = launcher.addresses[leader]
            lead: dict[str, Any] = before
            st: dict[str, Any] = {}
            while time.monotonic() - t0 < timeout_s:
                try:
                    lead = await probe.node_status(leader_addr, timeout_s=2.0)
                    if lead.get("role") != "leader":  # an election: ask who leads now
                        leader = await self.leader_id()
                        leader_addr = launcher.addresses[leader]
                        continue
                    st = await probe.node_status(addr, timeout_s=1.0)
                except RaftqError:
                    await trio.sleep(0.05)
                    continue
                now = time.monotonic() - t0
                serving_s = now if serving_s is None else serving_s
                standings.setdefault(str(st.get("standing")), now)
                if st.get("standing") == "voter" and voter_s is None:
                    voter_s = now
                if st["applied_index"] >= lead["applied_index"] and caught_up_s is None:
                    caught_up_s = now
                if st.get("standing") == "voter" and st["applied_index"] >= lead["applied_index"]:
                    received = await trio.to_thread.run_sync(tcp_bytes_received, raft_port)
                    break
                await trio.sleep(0.05)
            repair_s = time.monotonic() - t0
            timed_out = repair_s >= timeout_s
            stop_load.set()
            nursery.cancel_scope.cancel()
        messages = None
        if queue is not None:
            with contextlib.suppress(RaftqError):
                async with self._client() as c:
                    messages = (await c.queue_stats(queue)).get("messages")
        lost_bytes = await trio.to_thread.run_sync(dir_bytes, lost)
        new_bytes = await trio.to_thread.run_sync(dir_bytes, data_dir)
        events = log_events(launcher.log_path(follower), log_offset, wall0, REPAIR_LOG_EVENTS)
        taken = log_events(launcher.log_path(leader), 0, wall0, ("snapshot at index",), limit=10**6)
        snapshot_bytes = None
        if taken:  # "snapshot at index 80012 (91234567 bytes)": the leader's last one
            words = taken[-1][1].replace("(", " ").split()
            with contextlib.suppress(ValueError, IndexError):
                snapshot_bytes = int(words[words.index("bytes)") - 1])
        during = [s for s in sends if t0 <= s < t0 + repair_s]
        installed = any("installed snapshot" in text for _, text in events)
        out: dict[str, Any] = {
            "node": follower,
            "leader": leader,
            "timed_out": timed_out,
            "repair_s": repair_s,
            "serving_s": serving_s,
            "voter_s": voter_s,
            "caught_up_s": caught_up_s,
            "standings": standings,
            "entries": lead.get("applied_index"),
            "messages": messages,
            "lost_bytes": lost_bytes,
            "new_bytes": new_bytes,
            "entries_per_s": (lead.get("applied_index") or 0) / repair_s,
            "messages_per_s": messages / repair_s if messages is not None else None,
            "received_bytes": received,
            "bytes_per_s": received / repair_s if received is not None else None,
            "leader_snapshot_index": lead.get("snapshot_index"),
            "leader_snapshot_bytes": snapshot_bytes,
            "snapshot_installed": installed,
            "final_status": {k: st.get(k) for k in ("standing", "applied_index", "repair_reason")},
            "events": events,
        }
        if load_in_flight:
            out.update({"load_in_flight": load_in_flight, "sends": len(during),
                        "sends_per_s": len(during) / repair_s, "errors": len(errors)})
        return out


async def keep_sending(
    client: AsyncClient,
    queue: str,
    payload: bytes,
    stop: trio.Event,
    done_at_s: list[float],
    errors: list[str],
) -> None:
    """Send `payload` to `queue` one at a time until `stop` is set: the background load of
    the repair and catch-up measurements. Each confirmed send's time (monotonic seconds) goes
    to `done_at_s`; a failed one's error class name to `errors` (the load goes on)."""
    while not stop.is_set():
        try:
            await client.send(queue, payload)
        except RaftqError as exc:
            errors.append(type(exc).__name__)
            continue
        done_at_s.append(time.monotonic())


def tcp_bytes_received(port: int) -> int | None:
    """Bytes received so far on the established TCP connections whose local port is `port`
    (the kernel's `bytes_received` per connection, from `ss -tin`); None without `ss`."""
    try:
        proc = subprocess.run(
            ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
            capture_output=True, text=True, check=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(int(m) for m in re.findall(r"\bbytes_received:(\d+)", proc.stdout))


def dir_bytes(path: Path) -> int:
    """Bytes in the files under `path` (apparent sizes, like `du -sb`); 0 when it is missing."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def log_events(
    path: Path, offset: int, wall0_s: float, patterns: Collection[str], limit: int = 30
) -> list[tuple[float, str]]:
    """Lines of a node log written after byte `offset` that contain one of `patterns`, as
    (seconds after `wall0_s`, the message after the level name). Log lines start with
    `%(asctime)s` (local time, "2026-12-01 09:52:47,123")."""
    out: list[tuple[float, str]] = []
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        if not any(p in line for p in patterns):
            continue
        try:
            at = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        text = line[24:].split(" ", 3)[-1] if line.count(" ") >= 4 else line[24:]
        out.append((round(at - wall0_s, 3), text[:160]))
        if len(out) >= limit:
            break
    return out


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
