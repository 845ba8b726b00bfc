"""pysyncobj as a benchmark peer: `ReplQueue` on three local processes, with a password.

Each process is `bench_peers/syncobj_node.py` (a replica plus a TCP front end), started here
with its own Raft port, client port and journal file in a temporary directory, all on
127.0.0.1, and the same password (without one pysyncobj unpickles network input). The client
is asyncio with many requests outstanding per connection. `ReplQueue` has no receipts: a
"receive + ack" is one replicated `get` (one log entry, where raftq and RabbitMQ need a
receive and an ack). pysyncobj does not fsync its journal.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_peers.common import (
    RssSampler,
    body,
    ensure_packages,
    latency_figures,
    pick_base_port,
    wait_port,
)
from bench_peers.raftq_peer import failover_figures

NODE_SCRIPT = Path(__file__).resolve().parent / "syncobj_node.py"
CALL_TIMEOUT_S = 30.0
"""A put or get unanswered for this long counts as lost (seen under a 1,000,000 backlog)."""
STALL_S = 120.0
"""A drain that takes nothing for this long stops and reports what it took."""


class _Conn:
    """One client connection: requests with ids, many outstanding, replies by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, port: int) -> _Conn:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        return cls(reader, writer)

    async def _read(self) -> None:
        try:
            while True:
                header = await self.reader.readexactly(4)
                frame = await self.reader.readexactly(struct.unpack(">I", header)[0])
                fut = self.waiting.pop(struct.unpack(">I", frame[:4])[0], None)
                if fut is not None and not fut.done():
                    fut.set_result(frame[4:])
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection lost"))
            self.waiting.clear()

    async def call(self, op: bytes, data: bytes = b"", timeout_s: float = CALL_TIMEOUT_S) -> bytes:
        """Send one request; returns the reply payload (status byte first).

        Raises:
            ConnectionError: the connection was lost.
            TimeoutError: no reply within `timeout_s` (pysyncobj lost the callback).
        """
        if self.task.done():
            raise ConnectionError("connection lost")
        rid = next(self.ids)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        self.writer.write(struct.pack(">I", 5 + len(data)) + op + struct.pack(">I", rid) + data)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self.waiting.pop(rid, None)

    async def put(self, data: bytes) -> bool:
        return (await self.call(b"P", data))[:1] == b"\x00"

    async def get(self) -> bytes | None:
        """The item taken, b"" when the queue was empty, None on failure."""
        reply = await self.call(b"G")
        return reply[1:] if reply[:1] == b"\x00" else None

    async def status(self) -> dict[str, Any]:
        status: dict[str, Any] = json.loads((await self.call(b"S"))[1:])
        return status

    async def close(self) -> None:
        self.writer.close()
        self.task.cancel()


class SyncObjSystem:
    """Three pysyncobj `ReplQueue` processes under benchmark."""

    name = "pysyncobj"

    def __init__(self, nodes: int = 3, tick_s: float = 0.001) -> None:
        self.nodes = nodes
        self.tick_s = tick_s
        self.dir: Path | None = None
        self.base = 0
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def raft_port(self, i: int) -> int:
        return self.base + 10 + i

    def client_port(self, i: int) -> int:
        return self.base + i

    def start(self) -> None:
        """Install pysyncobj (and cryptography, for the password) if needed; start 3 nodes."""
        ensure_packages({"pysyncobj": "pysyncobj", "cryptography": "cryptography"})
        import pysyncobj

        self.version = getattr(pysyncobj, "__version__", None) or _dist_version("pysyncobj")
        self.dir = Path(tempfile.mkdtemp(prefix="syncobj-bench-"))
        self.base = pick_base_port([*range(1, self.nodes + 1), *range(11, 11 + self.nodes)])
        password = self.dir / "password"
        password.write_text(secrets.token_hex(16))
        password.chmod(0o600)
        for i in range(1, self.nodes + 1):
            self._start_node(i)
        for i in range(1, self.nodes + 1):
            if not wait_port(self.client_port(i), 30):
                raise RuntimeError(f"pysyncobj node {i} did not start (log in {self.dir})")
        asyncio.run(self._wait_leader(30))

    def _start_node(self, i: int) -> None:
        assert self.dir is not None
        partners = ",".join(f"127.0.0.1:{self.raft_port(j)}"
                            for j in range(1, self.nodes + 1) if j != i)
        log = open(self.dir / f"n{i}.log", "wb")  # noqa: SIM115 - handed to the process
        self.procs[i] = subprocess.Popen(
            [sys.executable, str(NODE_SCRIPT), "--self", f"127.0.0.1:{self.raft_port(i)}",
             "--partners", partners, "--client-port", str(self.client_port(i)),
             "--journal", str(self.dir / f"n{i}.journal"),
             "--password-file", str(self.dir / "password"), "--tick-s", str(self.tick_s)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    async def _wait_leader(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i in self.live_nodes():
                try:
                    c = await _Conn.open(self.client_port(i))
                    st = await asyncio.wait_for(c.status(), 2)
                    await c.close()
                except (TimeoutError, OSError, ConnectionError):
                    continue
                if st["leader"] and st["has_quorum"]:
                    c = await _Conn.open(self.client_port(i))
                    ok = await asyncio.wait_for(c.put(b"warm-up"), 5)
                    await c.get()
                    await c.close()
                    if ok:
                        return i
            await asyncio.sleep(0.1)
        raise RuntimeError("pysyncobj: no leader")

    def stop(self) -> None:
        """SIGTERM each node by pid, SIGKILL after 10 s; remove the directory."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def describe(self) -> str:
        ports = ", ".join(str(self.client_port(i)) for i in self.procs)
        return (f"pysyncobj {self.version} ReplQueue, {self.nodes} processes, password set, "
                f"tick {self.tick_s * 1000:g} ms, clients on 127.0.0.1:{ports}")

    def live_nodes(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    def node_pids(self) -> dict[str, int]:
        return {f"n{i}": p.pid for i, p in self.procs.items() if p.poll() is None}

    def leader(self) -> int:
        return asyncio.run(self._wait_leader(30))

    def leader_pid(self) -> int:
        return self.procs[self.leader()].pid

    # -- workloads ------------------------------------------------------------------------

    def one_at_a_time(self, seconds: float) -> dict[str, Any]:
        """Workload 1: one connection to the leader, one put at a time."""
        return asyncio.run(self._one_at_a_time(seconds))

    async def _one_at_a_time(self, seconds: float) -> dict[str, Any]:
        leader = await self._wait_leader(30)
        c = await _Conn.open(self.client_port(leader))
        payload = body(0)
        lat: list[float] = []
        start = time.perf_counter()
        deadline = start + seconds
        while (t0 := time.perf_counter()) < deadline:
            if await c.put(payload):
                lat.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        await c.close()
        await self._empty()
        return {"rate_per_s": len(lat) / elapsed, "n": len(lat), **latency_figures(lat)}

    async def _empty(self) -> None:
        """Take everything left in the queue (between workloads)."""
        leader = await self._wait_leader(30)
        c = await _Conn.open(self.client_port(leader))
        qsize = (await c.status())["qsize"]
        while qsize > 0:
            got = await asyncio.gather(*(c.get() for _ in range(min(qsize, 1000))))
            qsize -= sum(1 for g in got if g)
            if not any(got):
                break
        await c.close()

    def in_flight(
        self, in_flight: int, seconds: float, producers: int = 16,
        kill_leader_at_s: float | None = None,
    ) -> dict[str, Any]:
        """Workload 2 (and 5): `producers` connections spread over the 3 nodes (followers
        forward to the leader), `in_flight` puts outstanding in all; optionally SIGKILL the
        leader (producers that lose their node reconnect to the next)."""
        return asyncio.run(self._in_flight(in_flight, seconds, producers, kill_leader_at_s))

    async def _producers(
        self, in_flight: int, producers: int, *, seconds: float | None = None,
        total: int | None = None, kill_leader_at_s: float | None = None,
        spread: bool = True,
    ) -> dict[str, Any]:
        leader = await self._wait_leader(30)
        payload = body(0)
        starts: list[float] = []
        dones: list[float] = []
        errors = 0
        lost = 0
        published = 0
        kill_at: list[float] = []
        start = time.monotonic()
        deadline = start + seconds if seconds is not None else float("inf")
        per = [in_flight // producers + (1 if p < in_flight % producers else 0)
               for p in range(producers)]

        last_confirm = [start]
        stalled = [False]

        def finished() -> bool:
            if time.monotonic() - (dones[-1] if dones else last_confirm[0]) > STALL_S:
                stalled[0] = True  # nothing confirmed for 2 min: stop with what we have
            return (time.monotonic() >= deadline or stalled[0]
                    or (total is not None and published >= total))

        async def producer(p: int) -> None:
            nonlocal errors, published
            node = (p % self.nodes + 1) if spread else leader
            while not finished():
                try:
                    c = await _Conn.open(self.client_port(node))
                except (TimeoutError, OSError):
                    errors += 1
                    node = node % self.nodes + 1
                    await asyncio.sleep(0.05)
                    continue

                async def one(c: _Conn = c) -> None:
                    nonlocal errors, published, lost
                    while not finished():
                        published += 1
                        t0 = time.monotonic()
                        try:
                            ok = await c.put(payload)
                        except TimeoutError:
                            ok = False
                            lost += 1
                        if ok:
                            starts.append(t0)
                            dones.append(time.monotonic())
                        else:
                            published -= 1
                            errors += 1
                            await asyncio.sleep(0.01)

                try:
                    await asyncio.gather(*(one() for _ in range(per[p])))
                except ConnectionError:
                    errors += 1
                    node = node % self.nodes + 1
                finally:
                    await c.close()

        async def killer() -> None:
            assert kill_leader_at_s is not None
            await asyncio.sleep(kill_leader_at_s)
            kill_at.append(time.monotonic())
            self.procs[leader].send_signal(signal.SIGKILL)

        tasks = [producer(p) for p in range(producers)]
        if kill_leader_at_s is not None:
            tasks.append(killer())
        await asyncio.gather(*tasks)
        end = time.monotonic()
        lat = [d - s for s, d in zip(starts, dones, strict=True)]
        out: dict[str, Any] = {"rate_per_s": len(dones) / (end - start), "n": len(dones),
                               "errors": errors, "lost_replies": lost, "stalled": stalled[0],
                               **latency_figures(lat)}
        if kill_at:
            self.procs[leader].wait()
            out.update(failover_figures(starts, dones, kill_at[0], start, end))
            out["killed_node"] = leader
        return out

    async def _in_flight(
        self, in_flight: int, seconds: float, producers: int, kill_leader_at_s: float | None
    ) -> dict[str, Any]:
        out = await self._producers(in_flight, producers, seconds=seconds,
                                    kill_leader_at_s=kill_leader_at_s)
        if kill_leader_at_s is None:
            await self._empty()
        return out

    async def _drain(self, n: int, in_flight: int = 1000) -> dict[str, Any]:
        """Take `n` items with `in_flight` gets outstanding on one connection to the leader.

        Returns:
            rate_per_s (items taken per second), taken, lost_replies (gets unanswered for
            30 s), stalled (True when nothing was taken for 120 s and the drain gave up).
        """
        leader = await self._wait_leader(30)
        c = await _Conn.open(self.client_port(leader))
        got = 0
        lost = 0
        last_progress = start = time.monotonic()
        stalled = False

        async def one() -> None:
            nonlocal got, lost, last_progress, stalled
            while got < n and not stalled:
                try:
                    item = await c.get()
                except TimeoutError:
                    lost += 1
                    item = None
                if item:
                    got += 1
                    last_progress = time.monotonic()
                elif time.monotonic() - last_progress > STALL_S:
                    stalled = True
                elif item == b"":
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(one() for _ in range(in_flight)))
        await c.close()
        end = last_progress if stalled else time.monotonic()
        return {"rate_per_s": got / (end - start), "taken": got, "lost_replies": lost,
                "stalled": stalled}

    def drain(self, backlog: int, consumers: int = 4) -> dict[str, Any]:
        """Workload 3: put `backlog` items (1,000 outstanding), then take them all with
        1,000 gets outstanding (a get is receive and ack in one)."""
        return asyncio.run(self._drain_only(backlog))

    async def _drain_only(self, backlog: int) -> dict[str, Any]:
        fill = await self._producers(1000, 4, total=backlog, spread=False)
        drained = await self._drain(fill["n"])
        return {"rate_per_s": drained["rate_per_s"], "fill_rate_per_s": fill["rate_per_s"],
                "n": fill["n"], "drain_lost_replies": drained["lost_replies"],
                "drain_stalled": drained["stalled"]}

    def backlog(
        self, n: int, in_flight: int = 1000, producers: int = 16, consumers: int = 4
    ) -> dict[str, Any]:
        """Workload 4: put `n` (as workload 2), then take them all (as workload 3)."""
        with RssSampler(self.node_pids()) as rss:
            out = asyncio.run(self._backlog(n, in_flight, producers))
        out["rss_mib"] = rss.peak_mib()
        out["rss_peak_mib"] = max(out["rss_mib"].values())
        return out

    async def _backlog(self, n: int, in_flight: int, producers: int) -> dict[str, Any]:
        fill = await self._producers(in_flight, producers, total=n)
        print(f"    pysyncobj: {fill['n']:,} put at {fill['rate_per_s']:,.0f}/s "
              f"({fill['lost_replies']} replies lost); draining", flush=True)
        drained = await self._drain(fill["n"])
        return {"enqueue_rate_per_s": fill["rate_per_s"], "drain_rate_per_s": drained["rate_per_s"],
                "n": fill["n"], "enqueue_lost_replies": fill["lost_replies"],
                "enqueue_stalled": fill["stalled"],
                "drained": drained["taken"], "drain_lost_replies": drained["lost_replies"],
                "drain_stalled": drained["stalled"]}


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"
